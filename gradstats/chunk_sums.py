r"""One pass over a chunk of per-draw gradients: the sums :class:`~gradstats.GradientStats` keeps.

A chunk ``x`` (``[B, n]``, float32 or float64, read as it is: no float64 copy) of one parameter group
is reduced, against a fixed per-coordinate ``shift`` ``a``, to six column sums in float64,

.. math:: \textstyle S_k = \sum_i (x_i - a)^k \; (k = 1..4), \qquad P = \#\{x_i > 0\}, \qquad N = \#\{x_i < 0\},

added to running sums, and to two per-draw sums, :math:`\langle x_i, g\rangle` and
:math:`\lVert x_i \rVert^2`, with the reference ``g``, and from them each draw's cosine with ``g`` and whether
it descends, summed per piece. On a CPU all of them come from one read of the chunk, by a C kernel built on
first use (:mod:`gradstats.native`, ``gradstats/chunk_sums.c``); elsewhere, or where no C compiler is at hand,
by torch's kernels, so that a chunk costs a fixed handful of kernel launches however many parameter groups it
has: where ``torch.compile`` works, one compiled call for the column sums of every group and a second for the
per-draw sums; else eagerly, on the groups copied side by side into one ``[B, D]`` block (on a CPU over
cache-sized blocks), the per-draw sums of every group as two matrix products with the groups' indicator.

:func:`central_moments` turns the running sums into mean and centred moments (with :math:`d = S_1/n`:
:math:`M_2 = S_2 - n d^2`, :math:`M_3 = S_3 - 3 d S_2 + 2 n d^3`,
:math:`M_4 = S_4 - 4 d S_3 + 6 d^2 S_2 - 3 n d^4`), the summary that merges with the pairwise update of
:mod:`gradstats.accumulators`. :class:`~gradstats.GradientStats` takes as shift the per-coordinate
median of its first chunk's first eight draws, which lies within a spread of the mean however heavy the tails, so :math:`d` is
of the order of a standard deviation and the differences lose little to cancellation (the shifted-data
algorithm of Chan, Golub & LeVeque 1983, "Algorithms for computing the sample variance: analysis and
recommendations", The American Statistician 37(3)).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import itertools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from . import native
from .numerics import safe_divide

NUM_SUMS = 6   # S1, S2, S3, S4, count of x > 0, count of x < 0

# eager path on a CPU: elements of a block (1 MB in float64: 32 rows of 4,096 columns). Each block is a handful of
# torch operations, whose fixed costs smaller blocks multiply: at 2**15 the update alone in `python
# benchmarks/byom.py --sums eager --draws 2048 --chunk 256` ran at 2/3 of this rate on a two-core EPYC
_BLOCK_ELEMENTS = 2**17


def _sums(x: Tensor, shift: Tensor, axis: int) -> Tensor:
    """``[S1, S2, S3, S4, P, N]`` of ``x`` about ``shift`` over ``axis`` (stacked at ``axis``), float64."""
    c = x.to(torch.float64) - shift
    c2 = c * c
    return torch.stack([c.sum(axis), c2.sum(axis), (c2 * c).sum(axis), (c2 * c2).sum(axis),
                        (x > 0).sum(axis, dtype=torch.float64), (x < 0).sum(axis, dtype=torch.float64)], axis)


def _groups(parts: list[Tensor], offsets: tuple[int, ...]):
    """Each group with its first and last column (group ``g``: the columns ``offsets[g]:offsets[g + 1]``)."""
    return zip(parts, offsets, offsets[1:])


def _column_sums(parts: list[Tensor], shift: Tensor, running: Tensor, offsets: tuple[int, ...]) -> Tensor:
    """``running + [S1, S2, S3, S4, P, N]`` of the groups ``parts`` (``[B, n_g]`` each; side by side, the ``D``
    columns) about ``shift``, ``[6, D]`` float64: a reduction per group, fused by ``torch.compile`` into one call
    for every group."""
    return running + torch.cat([_sums(x, shift[a:b], 0) for x, a, b in _groups(parts, offsets)], 1)


def _batched_column_sums(parts: list[Tensor], shift: Tensor, offsets: tuple[int, ...]) -> Tensor:
    """``[k, 6, D]``: the column sums of each of ``k`` batches (``parts``: ``[k, b, n_g]`` each) about ``shift``."""
    return torch.cat([_sums(x, shift[a:b], 1) for x, a, b in _groups(parts, offsets)], 2)


def cosines_from_dots(inner: Tensor, norm2: Tensor, reference_norms: Tensor) -> tuple[Tensor, Tensor]:
    """From per-row, per-group ``<x, g>`` and ``|x|^2`` (``[G, L]``) and the reference's norms (``[L + 1]``, index 0:
    all groups): ``cos(x, g)`` and ``<x, g>``, each ``[G, L + 1]`` (column 0: all groups); the cosine of a zero
    vector is 0."""
    inner_all = torch.cat([inner.sum(1, keepdim=True), inner], 1)
    norm_all = torch.cat([norm2.sum(1, keepdim=True), norm2], 1).sqrt()
    return safe_divide(inner_all, norm_all * reference_norms), inner_all


def _per_draw(inner: Tensor, norm2: Tensor, reference_norms: Tensor | None, safe: tuple[float, float] | None):
    """``(inner, norm2)``, and with ``reference_norms`` also each draw's ``cos(x_i, g)`` and ``1[<x_i, g> > 0]``
    (``[B, L + 1]``, :func:`cosines_from_dots`) and how many nonzero squared norms of a group of a draw leave
    ``safe`` (a 0-d tensor; None: not checked, 0; a squared norm of 0 the caller checks)."""
    if reference_norms is None:
        return inner, norm2
    cos, inner_all = cosines_from_dots(inner, norm2, reference_norms)
    if safe is None:
        unsafe = norm2.new_zeros((), dtype=torch.int64)
    else:
        unsafe = ((norm2 != 0) & ~((norm2 >= safe[0]) & (norm2 <= safe[1]))).sum()   # a NaN is not inside either
    return inner, norm2, cos, (inner_all > 0).to(torch.float64), unsafe


def _row_sums(parts: list[Tensor], reference: Tensor, offsets: tuple[int, ...], reference_norms: Tensor | None = None,
              safe: tuple[float, float] | None = None):
    """Per draw and group, ``<x_i, g>`` and ``|x_i|^2`` in float64 (``[B, L]`` each); with ``reference_norms``, the
    per-draw cosines, descent indicators and unsafe count of :func:`_per_draw` too (compiled: in the same call)."""
    inner, norm2 = [], []
    for x, a, b in _groups(parts, offsets):
        xd = x.to(torch.float64)
        inner.append((xd * reference[a:b]).sum(1))
        norm2.append((xd * xd).sum(1))
    return _per_draw(torch.stack(inner, 1), torch.stack(norm2, 1), reference_norms, safe)


def _side_by_side(parts: list[Tensor]) -> Tensor:
    """The groups as one block (their last axes joined; one copy, unless there is one group): eagerly, a chunk then
    costs a fixed handful of kernel launches however many groups it has (on an accelerator, launches are the
    cost)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


@functools.lru_cache(maxsize=1)   # a stream's layout does not change
def _indicator(offsets: tuple[int, ...], device: str) -> Tensor:
    """``[D, L]`` float64: column ``g`` is 1 on the columns ``offsets[g]:offsets[g + 1]``."""
    groups = torch.zeros(offsets[-1], len(offsets) - 1, dtype=torch.float64, device=device)
    for g, (start, stop) in enumerate(zip(offsets, offsets[1:])):
        groups[start:stop, g] = 1.0
    return groups


def _eager_row_sums(parts: list[Tensor], reference: Tensor, offsets: tuple[int, ...],
                    reference_norms: Tensor | None = None, safe: tuple[float, float] | None = None):
    """:func:`_row_sums` of the groups side by side: two matrix products with the groups' indicator."""
    groups = _indicator(offsets, str(reference.device))
    xd = _side_by_side(parts).to(torch.float64)
    return _per_draw(xd @ (groups * reference.unsqueeze(1)), (xd * xd) @ groups, reference_norms, safe)


def _eager_batched_column_sums(parts: list[Tensor], shift: Tensor, offsets: tuple[int, ...]) -> Tensor:
    """:func:`_batched_column_sums` of the groups side by side: on an accelerator at once, on a CPU batch by batch
    over the blocks of :func:`_eager_column_sums` (at once, each of its five temporaries is as large as the chunk:
    the update alone in ``python benchmarks/byom.py --sums eager --draws 512 --chunk 256``, whose chunks are four
    batches each, ran at 1/3 of this rate on a two-core EPYC)."""
    if parts[0].device.type != "cpu":
        return _sums(_side_by_side(parts), shift, 1)
    zeros = torch.zeros(NUM_SUMS, shift.shape[0], dtype=torch.float64)
    return torch.stack([_eager_column_sums([x[i] for x in parts], shift, zeros, offsets) for i in range(parts[0].shape[0])])


def _eager_column_sums(parts: list[Tensor], shift: Tensor, running: Tensor, offsets: tuple[int, ...]) -> Tensor:
    """:func:`_column_sums` of the groups side by side, on a CPU over blocks of rows and columns that stay in its
    cache; on an accelerator over the whole chunk at once (there each block would be another handful of kernel
    launches: a chunk of 256 draws of 117,000 coordinates makes about 230 blocks)."""
    x = _side_by_side(parts)
    if x.device.type != "cpu":
        return running + _sums(x, shift, 0)
    rows, cols = x.shape
    col_step = min(cols, 4096)
    row_step = max(1, _BLOCK_ELEMENTS // col_step)
    out = running.clone()
    for c0 in range(0, cols, col_step):
        block_shift = shift[c0:c0 + col_step]
        for r0 in range(0, rows, row_step):
            block = x[r0:r0 + row_step, c0:c0 + col_step]
            out[:, c0:c0 + col_step] += _sums(block, block_shift, 0)
    return out


_EAGER = (_eager_column_sums, _eager_row_sums, _eager_batched_column_sums)


@dataclasses.dataclass
class ChunkResult:
    """What :meth:`ChunkSums.chunk` gives: per piece, the new running sums (``sums``, ``[6, D]`` float64 each);
    ``check``, the total of every piece's fourth power sums, finite exactly when every sum is (an overflow of the
    total alone is a false alarm); with a reference, per draw and group, ``<x_i, g>`` and ``|x_i|^2`` (:attr:`inner`,
    :attr:`norm2`: ``[B, L]``, made on demand by ``dots``; else None); and, given the reference's norms and every
    draw's groups with squared norms within ``safe`` and none underflowed (:func:`underflowed`), per piece the sums
    over its draws of ``cos(x_i, g)`` and the counts of ``<x_i, g> > 0``, over all groups and per group
    (``per_draw``: ``[pieces, 2, L + 1]``, also as :attr:`cosines` and :attr:`descent`; else None), on every path."""

    sums: list[Tensor]
    check: float
    dots: Callable[[], tuple[Tensor, Tensor]] | None = None
    per_draw: Tensor | None = None

    @property
    def inner(self) -> Tensor | None:
        return None if self.dots is None else self.dots()[0]

    @property
    def norm2(self) -> Tensor | None:
        return None if self.dots is None else self.dots()[1]

    @property
    def cosines(self) -> Tensor | None:
        return None if self.per_draw is None else self.per_draw[:, 0]

    @property
    def descent(self) -> Tensor | None:
        return None if self.per_draw is None else self.per_draw[:, 1]


def underflowed(parts: list[Tensor], norm2: Tensor) -> bool:
    """Whether a group of a draw whose squared norm (``norm2 [B, L]``) is 0 is not 0: every square of it underflowed,
    and its cosine is lost at this scale."""
    zero = norm2 == 0
    if not bool(zero.any()):
        return False
    return any(bool(rows.any()) and x.shape[1] > 0 and bool((x[rows] != 0).any()) for x, rows in zip(parts, zero.T))


def _native_chunk(lib, parts: list[Tensor], offsets: tuple[int, ...], shift: Tensor, running: list[Tensor | None],
                  bounds: list[int], reference: Tensor | None, out: list[Tensor | None], reference_norms: Tensor | None,
                  safe: tuple[float, float] | None) -> ChunkResult:
    """:meth:`ChunkSums.chunk` by the C kernel: one read of every group, in one call (group ``g`` holds the
    columns ``offsets[g]:offsets[g + 1]``), and the per-draw cosines in the same call. Its small outputs share one
    buffer, addressed by pointers: after a read of the whole chunk every torch operation starts from a cold cache
    (tens of microseconds each), so views of it are made only where they are read."""
    rows, groups, pieces = parts[0].shape[0], len(parts), len(running)
    threads = max(1, torch.get_num_threads())
    out = [new_sums(shift.shape[0]) if o is None else o for o in out]
    size = threads * groups * rows   # the threads' partial dots, then their partial squared norms
    scratch = torch.empty(2 * size + pieces * 2 * (groups + 1), dtype=torch.float64)
    base = scratch.data_ptr()
    check = ctypes.c_double()
    pointers = ctypes.c_void_p * pieces
    norms = None if reference is None else reference_norms
    status = lib.gradstats_chunk_sums(
        groups, (ctypes.c_void_p * groups)(*[x.data_ptr() for x in parts]),
        (ctypes.c_int * groups)(*[int(x.dtype == torch.float32) for x in parts]), (ctypes.c_int64 * (groups + 1))(*offsets),
        rows, shift.data_ptr(), pointers(*[None if r is None else r.data_ptr() for r in running]),
        pointers(*[o.data_ptr() for o in out]),
        (ctypes.c_int64 * (2 * pieces))(*[t.stride(0) if t is not None else 0 for pair in zip(running, out) for t in pair]),
        (ctypes.c_int64 * len(bounds))(*bounds), pieces,
        None if reference is None else reference.data_ptr(), base, base + 8 * size, threads,
        None if norms is None else norms.data_ptr(), None if safe is None else (ctypes.c_double * 2)(*safe),
        base + 16 * size, ctypes.byref(check))
    if reference is None:
        return ChunkResult(out, check.value)

    def dots() -> tuple[Tensor, Tensor]:   # the threads' partial sums, added by the kernel into the first's
        return tuple(scratch[:2 * size].view(2, threads, groups, rows)[:, 0].transpose(1, 2))

    if norms is None or status != 0:
        return ChunkResult(out, check.value, dots)
    return ChunkResult(out, check.value, dots, scratch[2 * size:].view(pieces, 2, groups + 1))


def _fits(t: Tensor | None, dtypes=(torch.float64,)) -> bool:
    """None, or a contiguous CPU tensor of one of ``dtypes``: what the C kernel reads as it is."""
    return t is None or (t.device.type == "cpu" and t.dtype in dtypes and t.is_contiguous())


def _sums_fit(t: Tensor | None) -> bool:
    """None, or float64 CPU sums ``[6, D]`` whose rows are each contiguous (:func:`new_sums`' padded rows, or a
    contiguous tensor): what the C kernel reads and writes as they are, given each row's stride."""
    return t is None or (t.device.type == "cpu" and t.dtype == torch.float64 and t.dim() == 2
                         and (t.stride(1) == 1 or t.shape[1] <= 1) and t.stride(0) >= t.shape[1])


def new_sums(dim: int) -> Tensor:
    """An uninitialised ``[6, dim]`` float64 buffer for a chunk's sums, each row starting on a 64-byte boundary
    (rows of ``dim`` rounded up to a multiple of 8 values, of which a view): where the C kernel streams its sums
    past the cache, it can only do so to whole aligned vectors."""
    return torch.empty(NUM_SUMS, -(-dim // 8) * 8, dtype=torch.float64)[:, :dim]


def _native_ready(parts: list[Tensor], shift: Tensor, running: list[Tensor | None], reference: Tensor | None,
                  reference_norms: Tensor | None) -> bool:
    """Whether the C kernel takes these arguments as they are (CPU, contiguous; float64 sums whose rows are)."""
    return (all(_fits(x, (torch.float32, torch.float64)) and x.dim() == 2 for x in parts) and _fits(shift)
            and all(_sums_fit(r) for r in running) and _fits(reference) and _fits(reference_norms))


class ChunkSums:
    """The reductions of a chunk: by the C kernel on a CPU, compiled per device where ``torch.compile`` works.

    ``mode``: ``"auto"`` takes the C kernel for CPU chunks where it builds, else ``torch.compile``, and falls back
    to the eager blocks (with one warning) where compiling fails, for instance on a machine without a C++
    compiler; ``"native"`` takes the C kernel and raises where it cannot be built (or the chunk is not a
    CPU tensor); ``"compiled"`` takes ``torch.compile`` alone and raises where it fails; ``"eager"`` never
    compiles."""

    MODES = ("auto", "native", "compiled", "eager")

    def __init__(self, mode: str = "auto"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self._compiled: dict[str, tuple] = {}
        self._native = None     # the loaded library; False once it could not be built

    def _native_lib(self):
        if self.mode not in ("auto", "native"):
            return None
        if self._native is None:
            try:
                self._native = native.load()
            except native.NativeUnavailable as err:
                if self.mode == "native":
                    raise
                warnings.warn(f"GradientStats: the C kernel could not be built ({err}); the statistics take "
                              "torch's kernels (the same numbers, slower)", RuntimeWarning, stacklevel=5)
                self._native = False
        return self._native or None

    def chunk(self, parts: list[Tensor], shift: Tensor, running: list[Tensor | None], bounds: list[int],
              reference: Tensor | None, out: list[Tensor | None] | None = None, reference_norms: Tensor | None = None,
              safe: tuple[float, float] | None = None) -> ChunkResult:
        """The sums of a chunk of ``parts`` (one ``[B, n_g]`` block per parameter group; side by side they are the
        chunk's ``D`` columns) cut into pieces at ``bounds`` (``bounds[0] = 0 < ... = B``): per piece, its
        ``running`` sums (``[6, D]`` float64; None: none yet) plus its rows' column sums about ``shift`` (``[D]``),
        in new tensors or, where the C kernel runs, in the piece's ``out`` buffer where one is given (``[6, D]``
        float64, each row contiguous, such as :func:`new_sums`' buffers; not the running sums of another piece; its
        contents are overwritten); and, with a ``reference`` (``[D]``), the per-draw ``<x_i, g>`` and ``|x_i|^2``
        of each group. Where ``reference_norms`` (``[L + 1]``: over all groups, then per group) is given, the
        per-draw cosines and descent counts come summed per piece too (from the call that reads the chunk for the
        dots), unless a group of a draw has a squared norm that is not 0 and leaves ``safe`` (a pair ``(low,
        high)``; None: not checked), or, with ``safe``, one that is 0 while the group is not (:func:`underflowed`).
        See :class:`ChunkResult`."""
        lib = self._native_lib() if parts[0].device.type == "cpu" else None
        ready = lib is not None and _native_ready(parts, shift, running, reference, reference_norms)
        offsets = (0, *itertools.accumulate(x.shape[1] for x in parts))   # group g: columns offsets[g]:offsets[g + 1]
        if self.mode == "native" and not ready:
            raise ValueError("ChunkSums('native') takes contiguous CPU chunks (float32 or float64) with float64 "
                             f"sums; got {[x.dtype for x in parts]} on {parts[0].device}")
        if ready:
            out = [None] * len(running) if out is None else out
            if not all(o is None or (o.shape == (NUM_SUMS, shift.shape[0]) and _sums_fit(o)) for o in out):
                raise ValueError(f"out: expected [{NUM_SUMS}, {shift.shape[0]}] float64 CPU buffers, each row "
                                 "contiguous")
            return _native_chunk(lib, parts, offsets, shift, running, bounds, reference, out, reference_norms, safe)
        # torch's kernels: compiled, one call per kernel for every group; eager, the groups side by side (one copy,
        # read by both kernels)
        blocks = [_side_by_side(parts)] if self.mode == "eager" else parts
        sums = self._pieces(blocks, shift, running, bounds, offsets)
        check = torch.stack([s[3].sum() for s in sums]).sum()
        if reference is None:
            return ChunkResult(sums, float(check))
        if reference_norms is None:
            inner, norm2 = self.rows(blocks, reference, offsets)
            return ChunkResult(sums, float(check), lambda: (inner, norm2))
        inner, norm2, cos, descent, unsafe = self.rows(blocks, reference, offsets, reference_norms, safe)
        check, unsafe = torch.stack([check, unsafe.to(torch.float64)]).tolist()   # one wait for the device
        if unsafe or (safe is not None and underflowed(parts, norm2)):
            return ChunkResult(sums, check, lambda: (inner, norm2))
        both = torch.stack([cos, descent], 1)
        return ChunkResult(sums, check, lambda: (inner, norm2),
                           torch.stack([both[a:b].sum(0) for a, b in zip(bounds, bounds[1:])]))

    def _pieces(self, blocks: list[Tensor], shift: Tensor, running: list[Tensor | None], bounds: list[int],
                offsets: tuple[int, ...]) -> list[Tensor]:
        """Each piece's running sums plus its rows' column sums, by torch's kernels."""
        sums: list[Tensor | None] = [None] * len(running)
        i = 0
        while i < len(running):
            size = bounds[i + 1] - bounds[i]
            j = i
            while j < len(running) and running[j] is None and bounds[j + 1] - bounds[j] == size:
                j += 1
            if j - i >= 2:   # whole fresh pieces of one size: one call for all of them
                pieces = [x[bounds[i]:bounds[j]].reshape(j - i, size, -1) for x in blocks]
                sums[i:j] = list(self.batches(pieces, shift, offsets).unbind(0))
                i = j
                continue
            start = running[i] if running[i] is not None else torch.zeros(NUM_SUMS, shift.shape[0],
                                                                          dtype=torch.float64, device=shift.device)
            sums[i] = self.columns([x[bounds[i]:bounds[i + 1]] for x in blocks], shift, start, offsets)
            i += 1
        return sums

    def _kernels(self, device: torch.device):
        if self.mode in ("eager", "native"):
            return _EAGER
        key = device.type
        if key not in self._compiled:
            self._compiled[key] = tuple(torch.compile(f, dynamic=True)
                                        for f in (_column_sums, _row_sums, _batched_column_sums))
        return self._compiled[key]

    def _run(self, which: int, parts: list[Tensor], *args):
        device = parts[0].device
        kernel = self._kernels(device)[which]
        try:
            return kernel(parts, *args)
        except Exception as err:   # torch.compile's failures have no common type (a missing compiler, a backend)
            if self.mode != "auto" or kernel in _EAGER:
                raise
            warnings.warn(f"GradientStats: torch.compile failed on {device.type} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); the statistics run eagerly from now on "
                          "(the same numbers, slower)", RuntimeWarning, stacklevel=4)
            self.mode = "eager"
            return self._kernels(device)[which](parts, *args)

    def columns(self, parts: list[Tensor], shift: Tensor, running: Tensor, offsets: tuple[int, ...]) -> Tensor:
        """``running`` (``[6, D]`` float64) plus the column sums of the groups ``parts`` (``[B, n_g]`` each; group
        ``g``: the columns ``offsets[g]:offsets[g + 1]``) about ``shift``."""
        return self._run(0, parts, shift, running, offsets)

    def rows(self, parts: list[Tensor], reference: Tensor, offsets: tuple[int, ...],
             reference_norms: Tensor | None = None, safe: tuple[float, float] | None = None) -> tuple[Tensor, ...]:
        """``(<x_i, g>, |x_i|^2)`` per draw and group, ``[B, L]`` float64 each; with ``reference_norms`` (``[L + 1]``)
        also, from the same call, each draw's ``cos(x_i, g)`` and ``1[<x_i, g> > 0]`` (``[B, L + 1]``, column 0: all
        groups) and how many draws' squared norms leave ``safe`` (a 0-d tensor)."""
        return self._run(1, parts, reference, offsets, reference_norms, safe)

    def batches(self, parts: list[Tensor], shift: Tensor, offsets: tuple[int, ...]) -> Tensor:
        """``[k, 6, D]``: the column sums of ``k`` whole batches (``parts``: ``[k, b, n_g]`` each) about ``shift``."""
        return self._run(2, parts, shift, offsets)


def central_moments(count: int, shift: Tensor, sums: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean and centred second, third and fourth moments (sums over draws) from ``count`` draws' shifted sums
    ``[S1, S2, S3, S4, ...]`` about ``shift``."""
    s1, s2, s3, s4 = sums[0], sums[1], sums[2], sums[3]
    d = s1 / count
    m2 = (s2 - s1 * d).clamp_min(0.0)   # rounding can leave -1 ulp of S2 where every draw is equal
    m3 = s3 - 3 * d * s2 + 2 * count * d**3
    m4 = (s4 - 4 * d * s3 + 6 * d * d * s2 - 3 * count * d**4).clamp_min(0.0)
    return shift + d, m2, m3, m4
