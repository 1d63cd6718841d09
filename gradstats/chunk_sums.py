r"""One pass over a chunk of per-draw gradients: the sums :class:`~gradstats.GradientStats` keeps.

A chunk ``x`` (``[B, n]``, float32 or float64, read as it is: no float64 copy) of one parameter group
is reduced, against a fixed per-coordinate ``shift`` ``a``, to six column sums in float64,

.. math:: \textstyle S_k = \sum_i (x_i - a)^k \; (k = 1..4), \qquad P = \#\{x_i > 0\}, \qquad N = \#\{x_i < 0\},

added to running sums, and to two per-draw sums, :math:`\langle x_i, g\rangle` and
:math:`\lVert x_i \rVert^2`, with the reference ``g`` (for the per-draw cosines and descent). Where
``torch.compile`` works on the device the column sums are one fused kernel that reads the chunk once
(and the per-draw sums a second); otherwise the same arithmetic runs eagerly over cache-sized blocks.

:func:`central_moments` turns the running sums into mean and centred moments (with :math:`d = S_1/n`:
:math:`M_2 = S_2 - n d^2`, :math:`M_3 = S_3 - 3 d S_2 + 2 n d^3`,
:math:`M_4 = S_4 - 4 d S_3 + 6 d^2 S_2 - 3 n d^4`), the summary that merges with the pairwise update of
:mod:`gradstats.accumulators`. :class:`~gradstats.GradientStats` takes as shift the per-coordinate
median of its first chunk, which lies within a spread of the mean however heavy the tails, so :math:`d` is
of the order of a standard deviation and the differences lose little to cancellation (the shifted-data
algorithm of Chan, Golub & LeVeque 1983, "Algorithms for computing the sample variance: analysis and
recommendations", The American Statistician 37(3)).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

NUM_SUMS = 6   # S1, S2, S3, S4, count of x > 0, count of x < 0

_BLOCK_ELEMENTS = 2**15   # eager path: elements of a block (256 KB in float64), which stays in the cache


def _column_sums(x: Tensor, shift: Tensor, running: Tensor) -> Tensor:
    """``running + [S1, S2, S3, S4, P, N]`` of ``x`` (``[B, n]``) about ``shift``, ``[6, n]`` float64."""
    c = x.to(torch.float64) - shift
    c2 = c * c
    return running + torch.stack([c.sum(0), c2.sum(0), (c2 * c).sum(0), (c2 * c2).sum(0),
                                  (x > 0).sum(0, dtype=torch.float64), (x < 0).sum(0, dtype=torch.float64)])


def _batched_column_sums(x: Tensor, shift: Tensor) -> Tensor:
    """``[k, 6, n]``: the column sums of each of ``k`` batches ``x[i]`` (``[k, b, n]``) about ``shift``."""
    c = x.to(torch.float64) - shift
    c2 = c * c
    return torch.stack([c.sum(1), c2.sum(1), (c2 * c).sum(1), (c2 * c2).sum(1),
                        (x > 0).sum(1, dtype=torch.float64), (x < 0).sum(1, dtype=torch.float64)], 1)


def _row_sums(x: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Per draw, ``<x_i, g>`` and ``|x_i|^2`` in float64 (``[B]`` each)."""
    xd = x.to(torch.float64)
    return (xd * reference).sum(1), (xd * xd).sum(1)


def _eager_column_sums(x: Tensor, shift: Tensor, running: Tensor) -> Tensor:
    """:func:`_column_sums` over blocks of rows and columns that stay in the cache."""
    rows, cols = x.shape
    col_step = min(cols, 4096)
    row_step = max(1, _BLOCK_ELEMENTS // col_step)
    out = running.clone()
    for c0 in range(0, cols, col_step):
        block_shift = shift[c0:c0 + col_step]
        for r0 in range(0, rows, row_step):
            block = x[r0:r0 + row_step, c0:c0 + col_step]
            out[:, c0:c0 + col_step] = _column_sums(block, block_shift, out[:, c0:c0 + col_step])
    return out


def _eager_row_sums(x: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    if x.dtype == torch.float64:
        return x @ reference, torch.linalg.vecdot(x, x)
    return _row_sums(x, reference)


_EAGER = (_eager_column_sums, _eager_row_sums, _batched_column_sums)


class ChunkSums:
    """The two reductions of a chunk, compiled per device where ``torch.compile`` works.

    ``mode``: ``"auto"`` compiles and falls back to the eager blocks (with one warning) where compiling fails,
    for instance on a machine without a C++ compiler; ``"compiled"`` raises instead; ``"eager"`` never compiles."""

    MODES = ("auto", "compiled", "eager")

    def __init__(self, mode: str = "auto"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self._compiled: dict[str, tuple] = {}

    def _kernels(self, device: torch.device):
        if self.mode == "eager":
            return _EAGER
        key = device.type
        if key not in self._compiled:
            self._compiled[key] = tuple(torch.compile(f, dynamic=True)
                                        for f in (_column_sums, _row_sums, _batched_column_sums))
        return self._compiled[key]

    def _run(self, which: int, *args):
        kernel = self._kernels(args[0].device)[which]
        try:
            return kernel(*args)
        except Exception as err:   # torch.compile's failures have no common type (a missing compiler, a backend)
            if self.mode != "auto" or kernel in _EAGER:
                raise
            warnings.warn(f"GradientStats: torch.compile failed on {args[0].device.type} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); the statistics run eagerly from now on "
                          "(the same numbers, slower)", RuntimeWarning, stacklevel=4)
            self.mode = "eager"
            return self._kernels(args[0].device)[which](*args)

    def columns(self, x: Tensor, shift: Tensor, running: Tensor) -> Tensor:
        """``running`` (``[6, n]`` float64) plus the column sums of ``x`` (``[B, n]``) about ``shift``."""
        return self._run(0, x, shift, running)

    def rows(self, x: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """``(<x_i, g>, |x_i|^2)`` per draw, float64."""
        return self._run(1, x, reference)

    def batches(self, x: Tensor, shift: Tensor) -> Tensor:
        """``[k, 6, n]``: the column sums of ``k`` whole batches ``x`` (``[k, b, n]``) about ``shift``."""
        return self._run(2, x, shift)


def central_moments(count: int, shift: Tensor, sums: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean and centred second, third and fourth moments (sums over draws) from ``count`` draws' shifted sums
    ``[S1, S2, S3, S4, ...]`` about ``shift``."""
    s1, s2, s3, s4 = sums[0], sums[1], sums[2], sums[3]
    d = s1 / count
    m2 = (s2 - s1 * d).clamp_min(0.0)   # rounding can leave -1 ulp of S2 where every draw is equal
    m3 = s3 - 3 * d * s2 + 2 * count * d**3
    m4 = (s4 - 4 * d * s3 + 6 * d * d * s2 - 3 * count * d**4).clamp_min(0.0)
    return shift + d, m2, m3, m4
