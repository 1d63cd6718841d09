r"""Gradient statistics of any model: a streaming, mergeable accumulator that needs no :class:`Problem`.

Feed :class:`GradientStats` per-draw gradients (``[B, D]``, or a dict parameter name ->
``[B, *shape]``, on any device) and read the metrics of :mod:`gradstats.metrics` against
a reference, with the same names, definitions and delete-one-batch jackknife standard
errors as ``gs.evaluate``. Every statistic is accumulated in float64; memory is ``O(D)``
per batch, 48 bytes a coordinate while streaming and 88 once the metrics have been read (the full covariance,
``O(D^2)``, only when asked).

Batches for the jackknife are contiguous runs of draws of one size ``s``, a power of two:
when a new chunk would make more than ``2 num_batches`` of them, neighbours are merged
pairwise and ``s`` doubles, so between ``num_batches`` and ``2 num_batches`` batches
remain once there are enough draws, however the draws arrive. Each chunk is read once on a
CPU for its column sums (power sums to the fourth about a common shift, the per-coordinate
median of the first chunk's first eight draws, and sign counts, per batch) and its per-draw inner products and
norms (:mod:`gradstats.chunk_sums`: a C kernel built on first use; elsewhere compiled where
``torch.compile`` works, in two reads), so batches of such sums merge by addition; they become central moments only when
read, and summaries from elsewhere (a merge, a stored state) merge by the pairwise update
of Chan, Golub & LeVeque (1979).

:func:`per_draw_gradients` turns a loss closure over parameters and explicit uniforms
into batched per-draw gradients (``torch.func.vmap`` of ``torch.func.grad``, no loop of
backward passes); :func:`gradient_stats` streams them into a :class:`GradientStats`, and
:func:`estimate_reference` gives a high-precision reference with its standard error from
an unbiased estimator where the model is too large to enumerate.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .accumulators import (
    SAFE_NORM2,
    GradientAccumulator,
    Moments,
    Summary,
    cosines_by_layer,
    layer_scaled,
    reference_by_layer,
    unit_scaled,
)
from .checkpoint import PeriodicSaver, content_checksum, saving
from .chunk_sums import ChunkSums, central_moments, cosines_from_dots, underflowed
from .metrics import MetricValue, compute_metrics, nonzero_coordinates
from .noise import uniforms_as
from .numerics import lower_median8, positive_finite, positive_int, seed_value, signs
from .problems import FactoredGradient
from .vmap_refusals import explained

__all__ = ["GradientStats", "ParameterLayout", "per_draw_gradients", "gradient_stats", "estimate_reference"]

_REFERENCE = "reference"
_DIRECTION_METRICS = ("relative_bias", "cosine_mean", "cosine_draw", "cosine_m", "sign_agreement_mean",
                      "sign_agreement_draw", "descent", "snr")
_INTEGER_TYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
STATE_VERSION = 3          # 3: adds the group cosines (ms), the cost per draw and the budgets; 2 is still read


class ParameterLayout:
    """How the ``D`` flat coordinates split into named groups (parameter tensors), in order.

    It is the part of the Problem protocol that the accumulators and the metrics read:
    ``num_parameters``, ``num_layers`` (here: groups), ``layer_slices``,
    ``coordinate_layers`` and ``coordinate_names``.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]):
        if not shapes:
            raise ValueError("a gradient needs at least one parameter tensor")
        bad = [k for k in shapes if not isinstance(k, str)]
        if bad:
            raise ValueError(f"parameter names must be strings (as in model.named_parameters()), got "
                             f"{', '.join(f'{k!r} ({type(k).__name__})' for k in bad)}")
        self.shapes = {k: tuple(int(n) for n in v) for k, v in shapes.items()}
        self.names = list(self.shapes)
        self.sizes = [math.prod(s) for s in self.shapes.values()]
        self.num_parameters = sum(self.sizes)
        if self.num_parameters == 0:
            raise ValueError(f"a gradient needs at least one coordinate, got the shapes {self.shapes}")
        self.num_layers = len(self.names)
        self.description = f"{self.num_parameters} coordinates in {self.num_layers} group(s)"
        starts = [0]
        for size in self.sizes:
            starts.append(starts[-1] + size)
        self._slices = [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]

    @classmethod
    def of(cls, value: Tensor | Mapping[str, Tensor], batched: bool, name: str | None = None) -> ParameterLayout:
        """The layout of a flat tensor (one group, ``"all"``) or a dict of tensors (leading draw axis if ``batched``);
        a ValueError names ``name`` where one is given."""
        if name is not None:
            try:
                return cls.of(value, batched)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        if isinstance(value, Tensor):
            if value.ndim != (2 if batched else 1):
                raise ValueError(f"expected a tensor of shape {'[B, D]' if batched else '[D]'}, got {tuple(value.shape)}")
            return cls({"all": (value.shape[-1],)})
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(v, Tensor) or (batched and v.ndim < 1):
                    raise ValueError(f"{k!r}: expected a tensor{' with a leading draw axis' if batched else ''}, "
                                     f"got {type(v).__name__ if not isinstance(v, Tensor) else tuple(v.shape)}")
            return cls({k: tuple(v.shape[1:] if batched else v.shape) for k, v in value.items()})
        raise ValueError(f"expected a tensor or a dict name -> tensor, got {type(value).__name__}")

    def __eq__(self, other) -> bool:
        """The same names and shapes in the same order (the flat coordinates line up)."""
        return isinstance(other, ParameterLayout) and list(self.shapes.items()) == list(other.shapes.items())

    def matches(self, other: ParameterLayout) -> bool:
        """The same names and shapes, in any order (the statistics can be merged by name)."""
        return isinstance(other, ParameterLayout) and self.shapes == other.shapes

    def difference(self, other: ParameterLayout, theirs: str, mine: str = "the layout") -> str:
        """How ``other`` (called ``theirs``) differs from this layout (``mine``): names it lacks or adds, shapes."""
        missing = [k for k in self.names if k not in other.shapes]
        extra = [k for k in other.names if k not in self.shapes]
        reshaped = [f"{k} is {other.shapes[k]} in {theirs}, {self.shapes[k]} in {mine}" for k in self.names
                    if k in other.shapes and other.shapes[k] != self.shapes[k]]
        return "; ".join([f"{theirs} lacks {missing}"] * bool(missing)
                         + [f"{theirs} has {extra}, which {mine} lacks"] * bool(extra) + reshaped)

    def order_from(self, other: ParameterLayout) -> tuple[Tensor, Tensor]:
        """For a layout that :meth:`matches` this one: the flat coordinates of ``other`` in this one's order, and
        its groups likewise (index 0, all coordinates, first), as index tensors."""
        starts = dict(zip(other.names, (s.start for s in other._slices)))
        coords = torch.cat([torch.arange(starts[k], starts[k] + n) for k, n in zip(self.names, self.sizes)])
        groups = torch.tensor([0] + [1 + other.names.index(k) for k in self.names])
        return coords, groups

    def layer_slices(self) -> list[tuple[None, slice]]:
        return [(None, s) for s in self._slices]

    def coordinate_layers(self) -> Tensor:
        return torch.cat([torch.full((n,), i + 1) for i, n in enumerate(self.sizes)])

    def coordinate_names(self) -> list[str]:
        names = []
        for name, shape in self.shapes.items():
            if len(self.names) == 1 and name == "all":
                names += [str(i) for i in range(self.num_parameters)]
                continue
            for index in torch.cartesian_prod(*[torch.arange(n) for n in shape]).reshape(math.prod(shape), -1):
                names.append(f"{name}[{','.join(str(int(i)) for i in index)}]")
        return names

    def split(self, value: Tensor | Mapping[str, Tensor], name: str, batched: bool = True) -> list[Tensor]:
        """``value`` as one view per group, ``[B, size]`` (``batched``) or ``[size]``, checked against the layout
        (a ValueError naming ``name``)."""
        if batched and isinstance(value, Mapping) and len(value) == len(self.names):   # as laid out: no new layout
            parts = [value.get(k) for k in self.names]
            if all(isinstance(p, Tensor) and p.ndim >= 1 and p.shape[1:] == self.shapes[k] and p.shape[0] == parts[0].shape[0]
                   for k, p in zip(self.names, parts)):
                return [p.reshape(p.shape[0], -1) for p in parts]
        layout = ParameterLayout.of(value, batched, name)
        if isinstance(value, Tensor):
            if len(self.names) != 1 or self.num_parameters != value.shape[-1]:
                raise ValueError(f"{name} has {value.shape[-1]} coordinates; expected {self.description} "
                                 f"({', '.join(self.names)})")
            return list(value.split(self.sizes, -1))
        if not layout.matches(self):
            raise ValueError(f"{name} has parameters {layout.shapes}; expected {self.shapes} "
                             f"({self.difference(layout, name)})")
        if not batched:
            return [value[k].reshape(-1) for k in self.names]
        parts = [value[k].reshape(value[k].shape[0], -1) for k in self.names]
        if len({p.shape[0] for p in parts}) != 1:
            raise ValueError(f"{name}: every tensor needs the same number of draws, got {sorted({p.shape[0] for p in parts})}")
        return parts

    def flatten(self, value: Tensor | Mapping[str, Tensor], name: str) -> Tensor:
        """One ``[D]`` gradient (a tensor or a dict), checked against the layout."""
        return torch.cat(self.split(value, name, batched=False))

    def unflatten(self, flat: Tensor) -> Tensor | dict[str, Tensor]:
        """``[D]`` back to a dict of tensors (or the tensor itself for one unnamed group)."""
        if self.names == ["all"]:
            return flat
        return {k: flat[s].reshape(self.shapes[k]) for k, s in zip(self.names, self._slices)}


_CHUNK_SUMS = ChunkSums()
SHIFT_DRAWS = 8   # the running sums' shift: the median of the first chunk's first SHIFT_DRAWS draws


class _UnsafeNorms(Exception):
    """A group of a float64 draw whose squared norm leaves float64's safe range, or a group of the reference that
    small beside another: the chunk takes the accumulators' path, which scales each group of each draw alone."""


class _Batch:
    """A contiguous jackknife batch: a folded :class:`Summary` (``base``, of draws that came through a merge or a
    stored state) and the running sums of the draws added since (:mod:`gradstats.chunk_sums`: power sums about the
    statistics' common shift and sign counts, per group; ``per_draw``, the sums of the per-draw cosines and the
    descent counts, ``[2, L + 1]``). Batches of running sums alone merge by adding them."""

    def __init__(self, base: Summary):
        self.base = base
        self.running = 0
        self.sums: Tensor | None = None
        self.per_draw: Tensor | None = None
        self._folded: Summary | None = None

    @property
    def count(self) -> int:
        return self.base.count + self.running

    def copy(self) -> _Batch:
        out = _Batch(self.base)
        out.running, out.sums, out.per_draw, out._folded = self.running, self.sums, self.per_draw, self._folded
        return out

    def folded(self, shift: Tensor | None, reference_signs: Tensor | None) -> Summary:
        """The batch as one :class:`Summary` (the running sums turned into central moments and merged with the
        base; with the sign agreement against ``reference_signs``). Cached until the batch changes."""
        if self.running == 0:
            return self.base
        if self._folded is None:
            sums = self.sums
            mean, m2, m3, m4 = central_moments(self.running, shift, sums)
            n = float(self.running)
            running = Summary(n, self.running, mean, m2, m3, m4)
            if reference_signs is not None:
                positive, negative = sums[4], sums[5]
                running.sign_agree[_REFERENCE] = torch.where(reference_signs > 0, positive, torch.where(
                    reference_signs < 0, negative, n - positive - negative))
                running.cosine[_REFERENCE], running.descent[_REFERENCE] = self.per_draw
            self._folded = self.base.merged(running)
        return self._folded

    def fold(self, shift: Tensor | None, reference_signs: Tensor | None) -> None:
        """Make the folded summary the base (before a summary computed elsewhere is merged into it)."""
        self.base = self.folded(shift, reference_signs)
        self.running, self.sums, self.per_draw, self._folded = 0, None, None, None

    def joined(self, other: _Batch, shift: Tensor | None, reference_signs: Tensor | None) -> _Batch:
        """This batch and the next one as one: their sums added where both are running sums alone, else their
        folded summaries merged pairwise."""
        if self.base.count or other.base.count or not (self.running and other.running):
            return _Batch(self.folded(shift, reference_signs).merged(other.folded(shift, reference_signs)))
        out = _Batch(self.base)
        out.running = self.running + other.running
        out.sums = self.sums + other.sums
        if self.per_draw is not None:
            out.per_draw = self.per_draw + other.per_draw
        return out


@dataclasses.dataclass
class _PieceSums:
    """A batch's running sums with one more piece of draws, computed but not yet committed."""

    rows: int
    sums: Tensor
    per_draw: Tensor | None

    def commit(self, batch: _Batch) -> None:
        batch.sums, batch._folded = self.sums, None
        if self.per_draw is not None:
            batch.per_draw = self.per_draw if batch.per_draw is None else batch.per_draw + self.per_draw
        batch.running += self.rows


class GroupCosines:
    r"""The cosine with the reference of the mean of ``M`` draws, :math:`\cos(\bar g_M, g)`, over disjoint groups of
    ``M`` consecutive draws (per group of parameters, and over all: ``[L + 1]`` columns, 0 first): how many groups
    are complete, the sum of their cosines and of their squares (the groups are independent, so the standard
    error of the mean cosine is their standard deviation over ``sqrt(groups)``), and the float64 sum of the group
    not yet complete, carried from chunk to chunk."""

    def __init__(self, m: int, layout: ParameterLayout, device=None):
        self.m = m
        self.layout = layout
        self.pending = [torch.zeros(n, dtype=torch.float64, device=device) for n in layout.sizes]
        self.pending_count = 0
        self.groups = 0
        self.total = torch.zeros(layout.num_layers + 1, dtype=torch.float64, device=device)
        self.total_sq = torch.zeros_like(self.total)

    def add(self, parts: list[Tensor], reference: tuple[list[Tensor], Tensor, Tensor]) -> None:
        """Fold in a chunk's draws (``parts``: ``[B, size]`` per parameter group, in draw order) against the
        reference (each group scaled alone, the powers of two and the squared norms:
        :meth:`GradientStats._reference_views`): at
        most three column reductions (the rows that complete the pending group, whole groups, the rows left over)."""
        rows, m = parts[0].shape[0], self.m
        head = min(rows, (m - self.pending_count) % m)
        whole = (rows - head) // m
        for i, p in enumerate(parts):
            self.pending[i] = self.pending[i] + p[:head].sum(0, dtype=torch.float64)
        sums = []
        if head and self.pending_count + head == m:
            sums.append([q[None] for q in self.pending])
            self.pending = [torch.zeros_like(q) for q in self.pending]
        self.pending_count = (self.pending_count + head) % m
        if whole:
            sums.append([p[head:head + whole * m].reshape(whole, m, -1).sum(1, dtype=torch.float64) for p in parts])
        if head + whole * m < rows:
            self.pending = [q + p[head + whole * m:].sum(0, dtype=torch.float64) for q, p in zip(self.pending, parts)]
            self.pending_count += rows - head - whole * m
        for group_sums in sums:
            cos = group_cosines(group_sums, *reference)
            self.groups += cos.shape[0]
            self.total = self.total + cos.sum(0)
            self.total_sq = self.total_sq + cos.square().sum(0)

    def to(self, device) -> GroupCosines:
        """Accumulate on ``device`` from now on (moving what is stored); returns ``self``."""
        self.pending = [q.to(device) for q in self.pending]
        self.total, self.total_sq = self.total.to(device), self.total_sq.to(device)
        return self

    def mean_and_stderr(self) -> tuple[Tensor, Tensor]:
        """The mean cosine ``[L + 1]`` and its standard error (NaN with fewer than two groups)."""
        n = self.groups
        mean = self.total / n if n else torch.full_like(self.total, math.nan)
        if n < 2:
            return mean, torch.full_like(self.total, math.nan)
        var = ((self.total_sq - n * mean.square()) / (n - 1)).clamp_min(0)
        return mean, (var / n).sqrt()

    def merged(self, other: GroupCosines) -> GroupCosines:
        """Both sets of complete groups; this one's pending group is kept, ``other``'s (fewer than ``M`` draws of
        another stream) is not carried."""
        out = GroupCosines(self.m, self.layout, self.total.device)
        out.pending, out.pending_count = [q.clone() for q in self.pending], self.pending_count
        out.groups = self.groups + other.groups
        out.total = self.total + other.total.to(self.total.device)
        out.total_sq = self.total_sq + other.total_sq.to(self.total.device)
        return out

    def state(self) -> dict:
        return {"m": self.m, "pending": [q.cpu() for q in self.pending], "pending_count": self.pending_count,
                "groups": self.groups, "total": self.total.cpu(), "total_sq": self.total_sq.cpu()}

    @staticmethod
    def from_state(state: Mapping, layout: ParameterLayout, order=None) -> GroupCosines:
        """The inverse of :meth:`state`, checked (a ValueError says what is wrong); ``order`` (from
        :meth:`ParameterLayout.order_from`) puts a stored layout's groups in this one's order."""
        m, groups, count = state["m"], state["groups"], state["pending_count"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (m, groups, count)) or m < 2 \
                or groups < 0 or not 0 <= count < m:
            raise ValueError(f"group cosines: bad counts (M {m!r}, groups {groups!r}, pending {count!r})")
        out = GroupCosines(m, layout)
        total, total_sq, pending = state["total"], state["total_sq"], list(state["pending"])
        if order is not None:
            total, total_sq = total[order[1]], total_sq[order[1]]
            pending = [pending[int(i) - 1] for i in order[1][1:]]
        for name, value, shape in (("total", total, (layout.num_layers + 1,)),
                                   ("total_sq", total_sq, (layout.num_layers + 1,))):
            if not (isinstance(value, Tensor) and tuple(value.shape) == shape and value.dtype == torch.float64
                    and bool(torch.isfinite(value).all())):
                raise ValueError(f"group cosines of M = {m}: {name} is not a finite float64 tensor of shape {shape}")
        if len(pending) != layout.num_layers or any(
                not (isinstance(q, Tensor) and q.dtype == torch.float64 and q.numel() == n and bool(torch.isfinite(q).all()))
                for q, n in zip(pending, layout.sizes)):
            raise ValueError(f"group cosines of M = {m}: the pending group's sums do not match the parameters")
        if bool((total.abs() > groups + 1e-9 * max(groups, 1)).any()) or bool((total_sq < 0).any()) \
                or bool((total_sq > groups + 1e-9 * max(groups, 1)).any()):
            raise ValueError(f"group cosines of M = {m}: sums outside what {groups} groups allow; refused")
        out.pending, out.pending_count, out.groups = [q.reshape(-1) for q in pending], count, groups
        out.total, out.total_sq = total, total_sq
        return out


def _group_sizes(ms, budgets: tuple[int, ...], loss_evals_per_draw: int | None) -> tuple[int, ...]:
    """The sorted ``M > 1`` of ``ms`` and of ``budgets`` (``M = budget // loss_evals_per_draw``), checked."""
    sizes = {positive_int("ms entries", m) for m in ms}
    if budgets and loss_evals_per_draw is None:
        raise ValueError("budgets are in loss evaluations: give loss_evals_per_draw too (what one draw costs)")
    for budget in budgets:
        if budget < loss_evals_per_draw:
            raise ValueError(f"budget {budget} is below the cost of one draw ({loss_evals_per_draw} loss evaluations)")
        sizes.add(budget // loss_evals_per_draw)
    return tuple(sorted(m for m in sizes if m > 1))


def group_cosines(group_sums: list[Tensor], reference: list[Tensor], reference_exponent: Tensor,
                  reference_norm2: Tensor) -> Tensor:
    """``[G, L + 1]``: the cosine of each of ``G`` vectors (given as sums, ``[G, size]`` per parameter group: cosines
    do not depend on the scale) with the reference (each group scaled alone, its powers of two ``[L]`` and squared
    norms ``[L]``: :func:`~gradstats.accumulators.reference_by_layer`). Each group of each vector is scaled alone
    too, so no square underflows or overflows, and the groups meet at one scale for the whole vector's cosine
    (:func:`~gradstats.accumulators.cosines_by_layer`)."""
    rows, exponent = layer_scaled(group_sums)
    inner = torch.stack([x @ r for x, r in zip(rows, reference)], 1)
    norm2 = torch.stack([x.square().sum(1) for x in rows], 1)
    return cosines_by_layer(inner, norm2, exponent, reference_norm2, reference_exponent)[0]


def _free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``: CUDA's free memory, or Linux's ``MemAvailable`` for the CPU; None
    where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_covariance_fits(dim: int, device: torch.device) -> None:
    """``full_covariance`` keeps a ``[D, D]`` float64 comoment and computes each chunk's beside it: a ValueError
    where two such arrays exceed the memory free on ``device``, before anything is changed."""
    need, free = 2 * 8 * dim * dim, _free_memory(device)
    if free is not None and need > free:
        raise ValueError(f"full_covariance: the [D, D] covariance of D = {dim:,} coordinates needs at least "
                         f"{need / 1e9:.1f} GB (two float64 [D, D] arrays), and {free / 1e9:.1f} GB is free on "
                         f"{device}; leave it off (only the Hotelling test needs it; the metrics do not) or measure fewer "
                         "parameters")


class GradientStats:
    """Streaming, mergeable statistics of per-draw gradients, and their metrics against a reference.

    Parameters
    ----------
    reference
        The gradient the draws estimate, ``[D]`` or a dict name -> tensor (one per
        parameter tensor); ``None`` for moments alone.
    reference_stderr
        The reference's standard error where it is itself an estimate (same shape);
        the bias, its norm and the MSE then carry it (the other metrics are conditional on the reference).
    full_covariance
        Also accumulate the ``[D, D]`` covariance (``O(D^2)`` memory).
    num_batches
        The fewest contiguous batches the jackknife standard errors use (at most twice as
        many are kept).
    ms
        Group sizes ``M > 1`` for ``cosine_m``, the cosine of the mean of ``M`` draws (accumulated over disjoint
        groups of consecutive draws as they arrive; needs a reference).
    loss_evals_per_draw
        What one draw costs in loss evaluations (1 for ST, 2 for ARM or DisARM, ``K`` for leave-one-out with
        ``K`` samples): the frame then gives each ``M``-draw row its cost, ``loss_evals``, so estimators of
        different cost are compared at equal cost.
    budgets
        Costs in loss evaluations to compare at: each adds ``M = budget // loss_evals_per_draw`` to ``ms`` and to
        the frame's ``mse`` rows.

    ``update(grads)`` folds in a chunk of draws: a tensor ``[B, D]`` or a dict name -> ``[B, *shape]``
    (such as per-draw gradients of ``model.named_parameters()``).
    """

    def __init__(self, reference: Tensor | Mapping[str, Tensor] | None = None,
                 reference_stderr: Tensor | Mapping[str, Tensor] | None = None, full_covariance: bool = False,
                 num_batches: int = 20, ms: tuple[int, ...] = (), loss_evals_per_draw: int | None = None,
                 budgets: tuple[int, ...] = ()):
        if loss_evals_per_draw is not None:
            loss_evals_per_draw = positive_int("loss_evals_per_draw", loss_evals_per_draw)
        self.loss_evals_per_draw = loss_evals_per_draw
        self.budgets = tuple(positive_int("budgets entries", b) for b in budgets)
        self.ms = _group_sizes(ms, self.budgets, loss_evals_per_draw)
        if self.ms and reference is None:
            raise ValueError(f"ms (or budgets) asks for the cosine of the mean of {self.ms[0]} draws, which needs a "
                             "reference: GradientStats(reference=...)")
        if not isinstance(full_covariance, bool):
            raise ValueError(f"full_covariance must be True or False, got {full_covariance!r}")
        self.num_batches = positive_int("num_batches", num_batches)
        if self.num_batches < 2:
            raise ValueError(f"num_batches must be at least 2 (the jackknife leaves one batch out), got {num_batches}")
        if reference_stderr is not None and reference is None:
            raise ValueError("reference_stderr was given without a reference")
        self.full_covariance = full_covariance
        self._device = None
        self._given_reference, self._given_stderr = reference, reference_stderr
        self.layout: ParameterLayout | None = None
        self.reference: Tensor | None = None
        self.reference_stderr: Tensor | None = None
        self._groups: dict[int, GroupCosines] = {}
        self._scaled_reference: list[Tensor] | None = None   # per group: views of _scaled_flat
        self._scaled_flat: Tensor | None = None
        self._reference_norms: Tensor | None = None   # the scaled reference's norm over all groups, then per group
        self._reference_in_range = True     # whether each group's part of _scaled_flat keeps its squares
        self._group_reference: tuple[list[Tensor], Tensor, Tensor] | None = None   # reference_by_layer's
        self._reference_signs: Tensor | None = None
        self._shift: Tensor | None = None     # per coordinate: what the running power sums are taken about
        if reference is not None:
            self._set_layout(ParameterLayout.of(reference, batched=False, name="reference"))
        self._batches: list[GradientAccumulator] = []
        self._batch_size = 1
        self._full: GradientAccumulator | None = None
        self._spare: list[Tensor] = []   # running sums a commit replaced, free to be written again (no page faults)
        self._empty: Summary | None = None   # the empty summary every new batch starts from (_empty_batch)

    # ---- layout and reference --------------------------------------------------------------
    def _set_layout(self, layout: ParameterLayout) -> None:
        self.layout = layout
        self._groups = {m: GroupCosines(m, layout, self._device) for m in self.ms}
        if self._given_reference is not None:
            self.reference = self._vector(self._given_reference, "reference")
        if self._given_stderr is not None:
            self.reference_stderr = self._vector(self._given_stderr, "reference_stderr")
            if bool((self.reference_stderr < 0).any()):
                raise ValueError("reference_stderr must be >= 0")

    def _vector(self, value, name: str) -> Tensor:
        flat = self.layout.flatten(value, name).detach()
        if flat.is_complex() or not (flat.is_floating_point() or flat.dtype in _INTEGER_TYPES):
            raise ValueError(f"{name} must be real numbers, got dtype {flat.dtype}")
        flat = flat.to("cpu", torch.float64)
        if not bool(torch.isfinite(flat).all()):
            raise ValueError(f"{name} must be finite")
        return flat

    def _accumulator(self, full: bool = False) -> GradientAccumulator:
        refs = {} if full or self.reference is None else {_REFERENCE: self.reference}
        return GradientAccumulator(self.layout, refs, full_covariance=full, device=self._device)

    def _empty_batch(self) -> _Batch:
        """A batch of no draws yet. Every batch starts from one shared empty summary (a summary is never written in
        place), so that a batch holds its running sums alone while streaming, and no new zero vector is allocated
        for each."""
        if self._empty is None:
            self._empty = Summary.empty(self.layout.num_parameters, False, self._device)
        return _Batch(self._empty)

    def _reference_views(self) -> None:
        """What each chunk is compared with, on the accumulating device: the reference scaled by a power of two
        (cosines do not depend on it; no square underflows or overflows), its norm per group (index 0: all), and
        its signs (:func:`~gradstats.numerics.signs`, as the accumulators take them)."""
        if self.reference is None:
            self._scaled_reference = self._scaled_flat = self._reference_norms = self._group_reference = None
            self._reference_in_range = True
            return
        reference = self.reference.to(self._device)
        scaled = self._scaled_flat = unit_scaled(reference).contiguous()
        self._scaled_reference = [scaled[cols] for _, cols in self.layout.layer_slices()]
        norms2 = torch.stack([r.square().sum() for r in self._scaled_reference])
        self._reference_norms = torch.cat([norms2.sum().reshape(1), norms2]).sqrt()
        # a group far smaller than the largest (about 1e-135 of it) has squares that underflow at one scale: the
        # chunks then take the accumulators' path, which scales each group alone
        self._group_reference = reference_by_layer([reference[cols] for _, cols in self.layout.layer_slices()])
        in_range = (norms2 >= SAFE_NORM2[0]) & (norms2 <= SAFE_NORM2[1])
        # a group is 0 if it is 0 before the scaling: one below about 2.5e-324 of the largest is 0 after it, not in range
        zero = torch.stack([(reference[cols] == 0).all() for _, cols in self.layout.layer_slices()])
        self._reference_in_range = bool((in_range | zero).all())
        self._reference_signs = signs(reference)

    # ---- folding in draws ------------------------------------------------------------------
    def update(self, grads: Tensor | Mapping[str, Tensor]) -> GradientStats:
        """Fold in a chunk of per-draw gradients ``[B, D]`` or a dict name -> ``[B, *shape]``; returns ``self``.

        The chunk is read once for the column sums of each piece that falls in one jackknife batch and for
        its per-draw inner products and norms (:mod:`gradstats.chunk_sums`: on a CPU a C kernel; elsewhere
        compiled where ``torch.compile`` works, in two reads), as it is (float32 draws are not copied to
        float64; every sum is float64). A chunk with a non-finite value (NaN or infinity) is refused whole, with
        the draw named, and the statistics are left as they were."""
        if self.layout is None:
            self._set_layout(ParameterLayout.of(grads, batched=True, name="grads"))
        try:
            parts = [p.detach() for p in self.layout.split(grads, "grads")]
        except ValueError:   # the first chunk against a reference's layout: say how the two differ
            if self.count or self._given_reference is None or not isinstance(grads, Mapping):
                raise
            diff = self.layout.difference(ParameterLayout.of(grads, True, "grads"), "grads", "the reference")
            if not diff:
                raise
            raise ValueError(f"grads and the reference differ ({diff}): the reference is over the parameters "
                             "measured, with their shapes") from None
        if not all(p.is_floating_point() for p in parts):
            raise ValueError(f"grads must be floating point, got {[p.dtype for p in parts]}")
        if self._device is None:
            self._adopt(parts[0].device)
        parts = [p.to(self._device) for p in parts]
        parts = [p if p.is_contiguous() else p.contiguous() for p in parts]
        rows = parts[0].shape[0]
        if rows == 0:
            return self
        if self.full_covariance and self._full is None:
            _check_covariance_fits(self.layout.num_parameters, self._device)
        # what a refused chunk restores: the list of batches and a copy of the last, the only one a chunk changes
        # (merging neighbours makes new batches; a chunk's pieces go to the last batch and to new ones)
        saved = (list(self._batches), self._batches[-1].copy() if self._batches else None, self._batch_size,
                 None if self._full is None else self._full.summary, self._shift)
        if self._shift is None:
            # the per-coordinate median of the first chunk's first (at most) eight draws: within a spread of the mean
            # however heavy the tails (the power sums about it lose no more to cancellation than the two-pass
            # formulas); more draws cost more (of 117,000 coordinates, Tensor.median takes 50 ms over 32 draws, 10 ms
            # over 8; the sorting network of lower_median8, 3 ms)
            self._shift = torch.cat([lower_median8(p[:SHIFT_DRAWS].to(torch.float64)).nan_to_num(0.0, 0.0, 0.0)
                                     for p in parts])
        while math.ceil((self.count + rows) / self._batch_size) > 2 * self.num_batches:
            self._halve_batches()
        pieces, start = [], 0
        filled = self._batches[-1].count if self._batches else self._batch_size
        while start < rows:
            if filled == self._batch_size:
                self._batches.append(self._empty_batch())
                filled = 0
            take = min(self._batch_size - filled, rows - start)
            pieces.append((self._batches[-1], start, start + take))
            start += take
            filled += take
        try:
            updates, check = self._chunk_sums(parts, pieces)
        except _UnsafeNorms:
            updates = check = None
        finite = updates is not None and math.isfinite(check)
        if not finite:
            if not all(bool(torch.isfinite(p).all()) for p in parts):
                self._restore(saved)
                rows_bad = torch.nonzero(~torch.stack([torch.isfinite(p).all(1) for p in parts]).all(0)).flatten()
                bad = int(rows_bad[0])
                raise ValueError(f"grads has a non-finite value (NaN or infinity) in draw {bad} of this chunk "
                                 f"(draw {self.count + bad} overall); the chunk was not added")
            # finite draws whose sums overflow, or whose squared norms leave float64's safe range: the accumulators'
            # path, which rescales each draw, merges each piece by the pairwise update (and refuses an overflow)
            for batch, a, b in pieces:
                batch.fold(self._shift, self._reference_signs)
                acc = self._accumulator()
                acc.add(self._piece(parts, a, b))
                batch.base = batch.base.merged(acc.summary)
            touched = [batch.base for batch, _, _ in pieces]
            if not all(bool(torch.isfinite(t.mean).all() and torch.isfinite(t.m2).all()) for t in touched):
                self._restore(saved)
                raise ValueError("grads: the chunk's statistics overflow float64 (values near 1e77 or beyond); "
                                 "the chunk was not added")
            retired = []
        else:
            retired = [batch.sums for batch, _, _ in pieces if batch.sums is not None]
            for (batch, _, _), piece in zip(pieces, updates):
                piece.commit(batch)
        if self.full_covariance:
            if self._full is None:
                self._full = self._accumulator(full=True)
            self._full.add(self._piece(parts, 0, rows))
            if not bool(torch.isfinite(self._full.summary.comoment).all()):
                self._restore(saved)
                raise ValueError("grads: the chunk's covariance overflows float64; the chunk was not added")
        for groups in self._groups.values():
            groups.add(parts, self._group_reference)
        # the chunk is in: the sums it replaced are referenced by nothing live (the saved copies go with this call)
        self._spare = (self._spare + retired)[-2:]
        return self

    def _chunk_sums(self, parts: list[Tensor], pieces: list[tuple[_Batch, int, int]]) -> tuple[list[_PieceSums], float]:
        """Each piece's batch's new running sums (not yet committed), from one call of
        :meth:`~gradstats.chunk_sums.ChunkSums.chunk` for every group and piece and the per-draw dots, and the
        chunk's check value (:class:`~gradstats.chunk_sums.ChunkResult`: finite exactly when every sum is)."""
        if not self._reference_in_range:
            raise _UnsafeNorms
        bounds = [0] + [b for _, _, b in pieces]
        spare = [self._spare.pop() if self._spare else None for _ in pieces]
        safe = SAFE_NORM2 if any(x.dtype == torch.float64 for x in parts) else None
        result = _CHUNK_SUMS.chunk(parts, self._shift, [batch.sums for batch, _, _ in pieces], bounds,
                                   self._scaled_flat, spare, self._reference_norms, safe)
        if self.reference is None:
            per_draw = [None] * len(pieces)
        elif result.per_draw is not None:   # summed per piece where the dots were taken
            per_draw = list(result.per_draw)
        else:   # a group of a draw has a squared norm outside the safe range, or one that underflowed
            cos, positive = self._per_draw_sums(parts, *result.dots(), safe)
            per_draw = [torch.stack([cos[a:b].sum(0), positive[a:b].sum(0)]) for _, a, b in pieces]
        return [_PieceSums(b - a, s, d) for s, (_, a, b), d in zip(result.sums, pieces, per_draw)], result.check

    def _per_draw_sums(self, parts: list[Tensor], inner: Tensor, norm2: Tensor,
                       safe: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
        """Per draw of the chunk, from its dots with the reference and squared norms per group (``[B, L]``),
        ``cos(g_hat, g)`` and ``1[<g_hat, g> > 0]``, ``[B, L + 1]`` (column 0: all groups).
        :class:`_UnsafeNorms` where a group of a draw has a squared norm outside ``safe`` (float64 chunks; None: not
        checked), 0 included unless the group is 0 in that draw (:func:`~gradstats.chunk_sums.underflowed`)."""
        if safe is not None:
            inside = (norm2 >= safe[0]) & (norm2 <= safe[1])
            if not bool((inside | (norm2 == 0)).all()) or underflowed(parts, norm2):
                raise _UnsafeNorms
        cos, inner_all = cosines_from_dots(inner, norm2, self._reference_norms)
        return cos, (inner_all > 0).to(torch.float64)

    def _piece(self, parts: list[Tensor], start: int, stop: int) -> FactoredGradient:
        """Rows ``start:stop`` of the chunk, one dense block per group (the accumulator's layer parts)."""
        return FactoredGradient([p[start:stop] for p in parts], [None] * len(parts))

    def _restore(self, saved) -> None:
        batches, last, batch_size, full, shift = saved
        if last is not None:
            batches[-1] = last
        self._batches, self._batch_size, self._shift = batches, batch_size, shift
        if self._full is not None:
            if full is None:
                self._full = None
            else:
                self._full.summary, self._full.position = full, full.count

    def _folded(self) -> list[Summary]:
        """Every batch as one :class:`Summary` (what every reader starts from); the batches are left as they are."""
        return [b.folded(self._shift, self._reference_signs) for b in self._batches]

    def _adopt(self, device) -> None:
        """Accumulate on ``device`` from now on, moving what is stored there (after a load or a merge)."""
        summaries = self._folded()
        self._device = device
        if self.reference is not None:
            self.reference = self.reference.to(device)
        self._batches = [_Batch(summary.to(device)) for summary in summaries]
        self._shift = None   # set anew from the next chunk (running sums start again)
        self._spare, self._empty = [], None
        if self._full is not None:
            full, self._full = self._full, self._accumulator(full=True)
            self._full.summary = full.summary.to(device)
        for groups in self._groups.values():
            groups.to(device)
        self._reference_views()

    def _held_bytes(self) -> int:
        """The bytes of the tensor storages the jackknife batches hold (running sums, base and folded summaries),
        each counted once (what ``docs/guides/own_model.rst`` says a batch costs; ``benchmarks/memory.py``)."""
        seen, total = set(), 0
        for batch in self._batches:
            tensors = [batch.sums]
            for summary in (batch.base, batch._folded):
                if summary is not None:
                    tensors += [summary.mean, summary.m2, summary.m3, summary.m4, *summary.sign_agree.values()]
            for t in tensors:
                if t is not None and t.untyped_storage().data_ptr() not in seen:
                    seen.add(t.untyped_storage().data_ptr())
                    total += t.untyped_storage().nbytes()
        return total

    def _expect(self, num_draws) -> GradientStats:
        """A fresh stream of ``num_draws`` draws (a run of known length): its jackknife batches start at the size
        they reach by its end, so that none is merged on the way (the same batches; their sums are added in
        another order). Returns ``self``."""
        if self.count == 0 and isinstance(num_draws, int) and num_draws > 0:
            while math.ceil(num_draws / self._batch_size) > 2 * self.num_batches:
                self._batch_size *= 2
        return self

    def _halve_batches(self) -> None:
        """Merge neighbouring batches pairwise; the batch size doubles."""
        merged = []
        for i in range(0, len(self._batches), 2):
            pair = self._batches[i:i + 2]
            merged.append(pair[0] if len(pair) == 1 else pair[0].joined(pair[1], self._shift, self._reference_signs))
        self._batches = merged
        self._batch_size *= 2

    # ---- results ---------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Draws folded in so far."""
        return sum(b.count for b in self._batches)

    def _summary(self) -> Summary:
        if not self._batches:
            raise ValueError("no draws yet: call update(grads) first")
        summaries = self._folded()
        total = summaries[0]
        for summary in summaries[1:]:
            total = total.merged(summary)
        if self._full is not None:
            total = dataclasses.replace(total, comoment=self._full.summary.comoment)
        return total

    @property
    def moments(self) -> Moments:
        """The :class:`~gradstats.Moments` of the draws (``method="mc"``; ``loss_evals_per_draw`` 0: unknown here)."""
        return Moments.from_summary(self._summary(), method="mc", estimator="GradientStats", loss_evals_per_draw=0,
                                    batches=tuple(self._folded()))

    def unbiasedness_test(self, alpha: float = 0.05, **options):
        """:func:`gradstats.stats.unbiasedness_test` of the draws against this object's reference, with the
        reference's own standard error where it has one (an estimated reference whose error were left out
        would make an unbiased estimator look biased); ``options`` go to that function (``global_test``)."""
        from .stats import unbiasedness_test

        if self.reference is None:
            raise ValueError("unbiasedness_test needs a reference: GradientStats(reference=...)")
        return unbiasedness_test(self.moments, self.reference.cpu(), alpha, exact=False,
                                 reference_stderr=None if self.reference_stderr is None else self.reference_stderr.cpu(),
                                 **options)

    @property
    def mean(self) -> Tensor | dict[str, Tensor]:
        """The mean gradient, shaped like the input (``[D]`` or a dict)."""
        moments = self.moments
        return self.layout.unflatten(moments.mean)

    @property
    def var(self) -> Tensor | dict[str, Tensor]:
        """Per-coordinate variance of one draw (``n - 1`` denominator)."""
        moments = self.moments
        return self.layout.unflatten(moments.var)

    @property
    def mean_stderr(self) -> Tensor | dict[str, Tensor]:
        """Standard error of :attr:`mean`."""
        moments = self.moments
        return self.layout.unflatten(moments.mean_stderr)

    def to_frame(self, ms: tuple[int, ...] = (1, 10, 100, 1000), per_coordinate: bool = False,
                 structural_zeros: str = "exclude") -> pd.DataFrame:
        """Tidy metrics: columns ``metric, group, M, value, stderr, count, loss_evals, n_excluded`` (and
        ``coordinate`` when ``per_coordinate``). ``group`` is ``"all"`` for every coordinate and the parameter's
        name for its part; metric names and definitions are those of ``gs.evaluate`` (:mod:`gradstats.metrics`),
        with jackknife standard errors. ``squared_bias`` and ``relative_squared_bias`` are the headline measures
        of bias (debiased: an unbiased estimator's value covers 0 within its error).

        ``mse`` is given for ``M`` in ``ms`` and in this object's ``ms`` and ``budgets``; ``cosine_m`` for ``M = 1``
        and the ``ms`` accumulated as the draws came (its error: the standard deviation of the groups' cosines
        over the root of their number, the groups being independent). With ``loss_evals_per_draw`` known,
        ``loss_evals`` is what the mean of ``M`` draws costs, ``M`` times it: compare estimators on rows of equal
        ``loss_evals``. ``n_excluded``: on the sign-agreement rows, the coordinates left out of them
        (``structural_zeros="exclude"``, the default: those 0 in the reference and in every draw, which would
        agree for free; ``"count"`` keeps them). Without a reference only ``variance_trace`` (and per coordinate
        ``variance``) is given.

        A parameter tensor that got no gradient in any draw (:attr:`no_gradient`) is reported, not scored:
        its rows of the metrics that compare directions (relative bias, cosines, sign agreement, descent)
        are NaN, ``frame.attrs["no_gradient"]`` lists it, and a warning says so."""
        ms = tuple(sorted({positive_int("ms entries", m) for m in ms} | set(self.ms)
                          | {b // self.loss_evals_per_draw for b in self.budgets}))
        moments = self.moments
        reference = self.reference.cpu() if self.reference is not None else torch.zeros(self.layout.num_parameters,
                                                                                      dtype=torch.float64)
        rows = compute_metrics(moments, self.layout, reference, _REFERENCE, ms, reference_stderr=self.reference_stderr,
                               structural_zeros=structural_zeros, per_coordinate=per_coordinate)
        if self.reference is None:
            rows = [r for r in rows if r.metric in ("variance_trace", "variance")]
        else:
            layers = range(self.layout.num_layers + 1) if self.layout.num_layers > 1 else (0,)
            for m, groups in self._groups.items():
                mean, stderr = (v.cpu().tolist() for v in groups.mean_and_stderr())
                rows += [MetricValue("cosine_m", mean[layer], stderr[layer], layer, "", m) for layer in layers]
        # rows of layer 0 are the aggregate; a coordinate's row carries its group (1-based), "all" for one group
        groups = ["all", *self.layout.names] if self.layout.num_layers > 1 else ["all", "all"]
        evals = self.loss_evals_per_draw
        frame = pd.DataFrame([{"metric": r.metric, "group": groups[r.layer], "M": r.m, "value": r.value,
                               "stderr": r.stderr, "count": moments.num_samples,
                               "loss_evals": None if evals is None or r.m is None else r.m * evals,
                               "n_excluded": r.excluded,
                               **({"coordinate": r.coordinate} if per_coordinate else {})} for r in rows])
        for column in ("M", "loss_evals", "n_excluded"):
            frame[column] = frame[column].astype("Int64")
        missing = self._without_gradient(moments.statistics)
        if missing:
            groups_without = set(missing) | ({"all"} if len(missing) == self.layout.num_layers else set())
            unscored = frame.group.isin(groups_without) & frame.metric.isin(_DIRECTION_METRICS)
            frame.loc[unscored, ["value", "stderr"]] = math.nan
            warnings.warn(f"{', '.join(missing)} got no gradient in any of the {moments.num_samples:,} draws (unused by "
                          "the loss, or detached): not scored (NaN) in the metrics that compare directions",
                          RuntimeWarning, stacklevel=2)
        frame.attrs["no_gradient"] = missing
        return frame

    @property
    def no_gradient(self) -> list[str]:
        """The parameter tensors whose every draw was exactly 0 in every coordinate (unused by the loss, or
        detached from it)."""
        return self._without_gradient(self._summary())

    def _without_gradient(self, summary: Summary) -> list[str]:
        reference = None if self.reference is None else self.reference.to(summary.mean.device)
        nonzero = nonzero_coordinates(summary, reference, None if reference is None else _REFERENCE)
        return [name for name, (_, cols) in zip(self.layout.names, self.layout.layer_slices())
                if not bool(nonzero[cols].any())]

    # ---- combining and storing ---------------------------------------------------------------
    def _order_of(self, layout: ParameterLayout | None) -> tuple[Tensor, Tensor] | None:
        """``None`` where ``layout``'s coordinates line up with this one's; else the index tensors that put statistics
        of ``layout`` in this one's order (merged by name). A ValueError where the names or shapes differ."""
        if self.layout is None or layout is None or layout == self.layout:
            return None
        if not layout.matches(self.layout):
            raise ValueError(f"cannot combine gradients of different parameters: {layout.shapes} and {self.layout.shapes}")
        return self.layout.order_from(layout)

    @staticmethod
    def _in_order(value: Tensor | None, order) -> Tensor | None:
        return value if value is None or order is None else value[order[0]]

    def _check_compatible(self, other: GradientStats):
        """The order that puts ``other``'s statistics in this one's (see :meth:`_order_of`), after checking that the
        two can be merged."""
        if not isinstance(other, GradientStats):
            raise ValueError(f"can only merge another GradientStats, got {type(other).__name__}")
        if self.full_covariance != other.full_covariance:
            raise ValueError("cannot merge statistics with and without a full covariance")
        for name in ("ms", "loss_evals_per_draw", "budgets"):
            if getattr(self, name) != getattr(other, name):
                raise ValueError(f"cannot merge statistics of different {name}: {getattr(self, name)!r} and "
                                 f"{getattr(other, name)!r}")
        order = self._order_of(other.layout)
        for name in ("reference", "reference_stderr"):
            a, b = getattr(self, name), self._in_order(getattr(other, name), order)
            if (a is None) != (b is None) or (a is not None and not torch.equal(a.cpu(), b.cpu())):
                raise ValueError(f"cannot merge statistics against different {name}s")
        return order

    def merge(self, other: GradientStats) -> GradientStats:
        """A new GradientStats holding the draws of both (the work of several processes or devices). Parameters are
        matched by name: ``other`` may list the same tensors in another order."""
        order = self._check_compatible(other)
        out = GradientStats(self._given_reference, self._given_stderr, self.full_covariance, self.num_batches,
                            self.ms, self.loss_evals_per_draw, self.budgets)
        out.load_state_dict(self.state_dict())
        if other.count == 0:
            return out
        if out.layout is None:
            out._set_layout(other.layout)

        def aligned(summary: Summary) -> Summary:
            summary = summary.cpu()
            return summary if order is None else summary.permuted(*order)

        out._batches += [_Batch(aligned(summary)) for summary in other._folded()]
        out._batch_size = max(out._batch_size, other._batch_size)
        while len(out._batches) > 2 * out.num_batches:
            out._halve_batches()
        if other._full is not None:
            if out._full is None:
                out._full = out._accumulator(full=True)
            out._full.summary = out._full.summary.merged(aligned(other._full.summary))
        for m, groups in other._groups.items():
            out._groups[m] = out._groups[m].merged(GroupCosines.from_state(groups.state(), out.layout, order))
        return out

    def state_dict(self) -> dict:
        """Plain tensors (on the CPU), numbers and dicts: what :meth:`load_state_dict` restores, with a SHA-256
        checksum of the content, so that a record altered after it was made (a flipped bit) is refused."""
        state = {"version": STATE_VERSION, "layout": None if self.layout is None else dict(self.layout.shapes),
                 "batch_size": self._batch_size, "num_batches": self.num_batches,
                 "full_covariance": self.full_covariance,
                 "reference": None if self.reference is None else self.reference.cpu(),
                 "reference_stderr": None if self.reference_stderr is None else self.reference_stderr.cpu(),
                 "batches": [summary.cpu().to_state() for summary in self._folded()],
                 "full": None if self._full is None else self._full.summary.cpu().to_state(),
                 "ms": list(self.ms), "loss_evals_per_draw": self.loss_evals_per_draw, "budgets": list(self.budgets),
                 "groups": [g.state() for g in self._groups.values()]}
        return {**state, "checksum": content_checksum(state)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`'s output into this (empty or not) GradientStats, checking it first: its
        checksum, its version, its parameters (matched by name, in any order) and reference, and every invariant
        of the stored statistics (:meth:`Summary.check`: counts >= 0 and within the batch size, the batches' counts
        adding up to the covariance's, finite values, second moments >= 0). A ValueError says what failed and
        nothing is changed."""
        try:
            if not isinstance(state, Mapping):
                raise TypeError(f"expected a dict, got {type(state).__name__}")
            if state["version"] not in (2, STATE_VERSION):
                raise ValueError(f"a stored GradientStats of version {state['version']!r}; this gradstats reads versions "
                                 f"2 and {STATE_VERSION} (recompute it)")
            stored_sum = state["checksum"]
            if stored_sum != content_checksum({k: v for k, v in state.items() if k != "checksum"}):
                raise ValueError("the stored GradientStats fails its checksum: it was altered after it was stored (a "
                                 "flipped bit, an edit); refused")
            if state["full_covariance"] != self.full_covariance:
                raise ValueError("a stored GradientStats of another covariance setting")
            stored = {"ms": (), "loss_evals_per_draw": None, "budgets": ()} if state["version"] == 2 else \
                {"ms": tuple(state["ms"]), "loss_evals_per_draw": state["loss_evals_per_draw"],
                 "budgets": tuple(state["budgets"])}
            for name, value in stored.items():
                if value != getattr(self, name):
                    raise ValueError(f"a stored GradientStats of {name} {value!r}; this one has {getattr(self, name)!r}")
            layout = None if state["layout"] is None else ParameterLayout(state["layout"])
            order = self._order_of(layout)
            for name in ("reference", "reference_stderr"):
                mine, stored = getattr(self, name), self._in_order(state[name], order)
                if (mine is None) != (stored is None) or (mine is not None and not torch.equal(mine.cpu(), stored)):
                    raise ValueError(f"the stored {name} differs from this one's")
            batch_size = state["batch_size"]
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
            dim = 0 if layout is None else layout.num_parameters
            summaries = [Summary.from_state(s, dim, False, f"batch {i}") for i, s in enumerate(state["batches"])]
            for i, summary in enumerate(summaries):
                if not 1 <= summary.count <= batch_size:
                    raise ValueError(f"batch {i}: {summary.count} draws, outside 1..{batch_size} (the batch size); refused")
            full = None if state["full"] is None else Summary.from_state(state["full"], dim, True, "full covariance")
            stored_groups = [] if state["version"] == 2 or layout is None else [
                GroupCosines.from_state(g, self.layout or layout, order) for g in state["groups"]]
            if layout is not None and [g.m for g in stored_groups] != list(self.ms):
                raise ValueError(f"the stored group cosines are of M = {[g.m for g in stored_groups]}, expected "
                                 f"{list(self.ms)}; refused")
            if full is not None and full.count != sum(s.count for s in summaries):
                raise ValueError(f"the full covariance counts {full.count} draws, the batches "
                                 f"{sum(s.count for s in summaries)}; refused")
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a stored GradientStats ({type(err).__name__}: {err})") from err
        if layout is not None and self.layout is None:
            self._set_layout(layout)
        if order is not None:
            summaries = [s.permuted(*order) for s in summaries]
            full = None if full is None else full.permuted(*order)
        self._device = None
        self._batches = []
        self._batches = [_Batch(s) for s in summaries]
        self._batch_size = batch_size
        while len(self._batches) > 2 * self.num_batches:
            self._halve_batches()
        self._full = None
        if full is not None:
            self._full = self._accumulator(full=True)
            self._full.summary = full
        if layout is not None:
            self._groups = {g.m: g for g in stored_groups}

    def __repr__(self) -> str:
        layout = "no draws yet" if self.layout is None else self.layout.description
        return (f"GradientStats({self.count} draws, {layout}, reference={'yes' if self.reference is not None else 'no'}, "
                f"{len(self._batches)} batches)")


# ---- per-draw gradients of a user's model ------------------------------------------------------

def per_draw_gradients(loss: Callable[..., Tensor], params: Mapping[str, Tensor], num_draws: int, *,
                       noise_shape: tuple[int, ...] | Mapping[str, tuple[int, ...]], chunk_size: int = 256,
                       seed: int = 0, dtype: torch.dtype | None = None, start: int = 0) -> Iterator[dict[str, Tensor]]:
    r"""Per-draw gradients of ``loss(params, u)`` with respect to ``params``, a chunk of draws at a time.

    ``loss(params, u)`` returns one draw's scalar loss (a surrogate whose gradient is the estimate, for
    the score-function drop-ins) given explicit uniforms ``u`` of ``noise_shape`` (a tuple, or a dict
    name -> tuple for several noise tensors), for example a model built with :mod:`gradstats.functional`
    drop-ins that take ``u=``. Draw ``i`` gets its own uniforms; the chunk's gradients come from one
    ``torch.func.vmap`` of ``torch.func.grad`` (no loop of backward passes), on the parameters' device.
    The uniforms come from a ``torch.Generator`` seeded with ``seed`` on the CPU, in draw order, so a run
    is the same for any ``chunk_size`` and device (in float32 they are rounded down to its grid, so none
    is 1). Yields dicts name -> ``[b, *shape]``.

    Randomness the loss draws itself from torch's global generator (dropout in training mode,
    ``torch.bernoulli``, ``torch.rand``) differs from draw to draw (``randomness="different"``) and is
    routed too: each chunk runs with torch's generators forked (``torch.random.fork_rng``, so the
    caller's state is left as it was) and seeded from ``(seed, first draw of the chunk)``, so the same
    seed and ``chunk_size`` give the same numbers. A frozen ``nn.Parameter`` (``requires_grad=False``)
    is left out of the gradients; plain tensors are all measured.

    ``start`` (a multiple of ``chunk_size``) skips the chunks before that draw (their uniforms are drawn and
    discarded), so that the chunks from there on are those of a run from draw 0: what a run resumed from a
    saved :meth:`GradientStats.state_dict` needs.
    """
    from torch.func import grad, vmap

    num_draws = positive_int("num_draws", num_draws)
    chunk_size = positive_int("chunk_size", chunk_size)
    seed = seed_value("seed", seed)
    start = chunk_start("start", start, num_draws, chunk_size)
    if not isinstance(params, Mapping) or not params or not all(isinstance(v, Tensor) for v in params.values()):
        raise ValueError("params must be a non-empty dict name -> tensor (e.g. dict(model.named_parameters()))")
    if not callable(loss):
        raise ValueError(f"loss must be a function (params, u) -> scalar, got {type(loss).__name__}")
    shapes = noise_shape if isinstance(noise_shape, Mapping) else {None: noise_shape}
    for k, shape in shapes.items():
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 1 for n in shape)):
            raise ValueError(f"noise_shape{'' if k is None else f'[{k!r}]'} must be a tuple of positive integers, "
                             f"got {shape!r}")
    measured = {k: v.detach() for k, v in params.items() if not _frozen(v)}
    if not measured:
        raise ValueError("every parameter in params is frozen (requires_grad=False): nothing to measure")
    not_real = [f"{k!r} ({v.dtype})" for k, v in measured.items() if not v.is_floating_point()]
    if not_real:
        raise ValueError(f"params must be real floating-point tensors (those measured): {', '.join(not_real)} "
                         f"{'is' if len(not_real) == 1 else 'are'} not; hold such tensors in the loss's closure, or "
                         "pass them as frozen nn.Parameters")
    fixed = {k: v.detach() for k, v in params.items() if k not in measured}
    first = next(iter(measured.values()))
    dtype = dtype or first.dtype

    def with_fixed(free, u):
        return loss({**free, **fixed}, u)

    per_draw = vmap(grad(with_fixed if fixed else loss), in_dims=(None, 0), randomness="different")

    def chunk(noise, rows: int) -> dict[str, Tensor]:
        try:
            return per_draw(measured, noise)
        except RuntimeError as err:
            refusal = explained(err, "loss")
            if refusal is None:
                raise
            raise refusal from err

    yield from draw_chunks(chunk, num_draws, noise_shapes=shapes, chunk_size=chunk_size, seed=seed, dtype=dtype,
                           device=first.device, start=start)


def chunk_start(name: str, value, num_draws: int, chunk_size: int) -> int:
    """``value``, the draw a stream of chunks starts from, checked: a multiple of ``chunk_size`` in
    ``[0, num_draws]``, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= num_draws or \
            (value % chunk_size and value != num_draws):
        raise ValueError(f"{name} must be a multiple of chunk_size ({chunk_size}) in [0, num_draws = {num_draws}], "
                         f"got {value!r}")
    return value


def forked_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose generators ``torch.random.fork_rng`` must fork for work on ``device`` (none on a CPU;
    the CPU's generator is always forked)."""
    return [device.index or 0] if device.type == "cuda" else []


def draw_chunks(per_draw: Callable[[Tensor | dict[str, Tensor], int], dict[str, Tensor]], num_draws: int, *,
                noise_shapes: Mapping, chunk_size: int, seed: int, dtype: torch.dtype, device,
                start: int = 0) -> Iterator:
    """``per_draw(noise, rows)`` for each chunk of ``rows`` draws from draw ``start`` on (a multiple of
    ``chunk_size``; the chunks before it have their uniforms drawn and discarded), with the chunk's uniforms (a
    tensor for the key ``None``, else a dict) drawn from one CPU generator seeded with ``seed``, and torch's own
    generators forked and seeded from ``(seed, first draw of the chunk)`` (see :func:`per_draw_gradients`).

    A chunk is let go of before the next is computed, so that a caller that lets go of it too never holds two:
    the next chunk's gradients then reuse its memory. On a CPU, holding the previous chunk made the gradients of
    ``benchmarks/byom.py`` 15% slower (fresh memory for every chunk)."""
    generator = torch.Generator().manual_seed(seed)
    devices = forked_devices(device)
    for first in range(0, num_draws, chunk_size):
        rows = min(chunk_size, num_draws - first)
        uniforms = {k: torch.rand((rows, *shape), generator=generator, dtype=torch.float64)
                    for k, shape in noise_shapes.items()}
        if first < start:
            continue
        noise = {k: uniforms_as(u, dtype).to(device) for k, u in uniforms.items()}
        chunk_seed = int(np.random.SeedSequence((seed, first)).generate_state(1, dtype=np.uint64)[0] >> 1)
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(chunk_seed)
            if devices:
                torch.cuda.default_generators[devices[0]].manual_seed(chunk_seed)
            gradients = per_draw(noise[None] if None in noise else noise, rows)
        yield gradients
        del gradients   # before the next chunk is computed (see above)


def _frozen(value: Tensor) -> bool:
    return isinstance(value, torch.nn.Parameter) and not value.requires_grad


def gradient_stats(loss: Callable[..., Tensor], params: Mapping[str, Tensor], num_draws: int, *,
                   noise_shape, chunk_size: int = 256, seed: int = 0, dtype: torch.dtype | None = None,
                   progress: bool = False, checkpoint: str | Path | None = None, checkpoint_seconds: float = 30.0,
                   **stats_options) -> GradientStats:
    """:func:`per_draw_gradients` streamed into a :class:`GradientStats` (``stats_options``: its arguments).

    ``checkpoint``: a file the statistics are saved to (atomically, at most every ``checkpoint_seconds`` and when
    the run is interrupted by an exception, Ctrl-C or SIGTERM), and resumed from by a run of the same loss,
    parameters, noise stream, options and library, which then computes only the chunks left; the file is removed
    when the run completes (:func:`stream_into`)."""
    stats = GradientStats(**stats_options)._expect(num_draws)

    def chunks_from(start: int) -> Iterator:
        return per_draw_gradients(loss, params, num_draws, noise_shape=noise_shape, chunk_size=chunk_size, seed=seed,
                                  dtype=dtype, start=start)

    identity = dict(kind="gradient_stats", loss=loss, params=dict(params), num_draws=num_draws,
                    noise_shape=noise_shape, chunk_size=chunk_size, seed=seed, dtype=str(dtype), options=stats_options)
    return stream_into(stats, chunks_from, num_draws, chunk_size, progress, checkpoint, checkpoint_seconds, identity)


def stream_into(stats: GradientStats, chunks_from: Callable[[int], Iterator], num_draws: int, chunk_size: int,
                progress: bool, checkpoint: str | Path | None = None, checkpoint_seconds: float = 30.0,
                identity: Mapping | None = None) -> GradientStats:
    """``stats`` (fresh) updated with every chunk ``chunks_from(start)`` yields, the chunks of draws ``start`` to
    ``num_draws`` (a tqdm bar when ``progress``).

    With a ``checkpoint`` path (claimed up front: :class:`gradstats.checkpoint.PeriodicSaver`, signed by
    ``identity``, everything the run's result depends on), ``stats.state_dict()`` and the draws done are saved
    there at most every ``checkpoint_seconds`` and after an interruption, after whole chunks only; a run that
    finds its own checkpoint there resumes from it (the same statistics as an uninterrupted run, to float64
    rounding), and the file is removed when the run completes."""
    saver = None if checkpoint is None else PeriodicSaver(
        checkpoint, positive_finite("checkpoint_seconds", checkpoint_seconds, " of seconds"), **dict(identity or {}))

    start = None     # set once the checkpoint (if any) is read: nothing is saved before

    def state() -> dict | None:
        return None if start is None or stats.count == 0 else {"position": stats.count, "stats": stats.state_dict()}

    with saving(saver, state):
        start = 0 if saver is None else _resume(saver, stats, num_draws, chunk_size)
        for chunk in with_progress(chunks_from(start), math.ceil((num_draws - start) / chunk_size), progress):
            stats.update(chunk)
            del chunk   # before the next chunk is computed (draw_chunks)
            if saver is not None:
                saver.maybe_save(state)
    return stats


def _resume(saver: PeriodicSaver, stats: GradientStats, num_draws: int, chunk_size: int) -> int:
    """The draw a checkpointed run starts from: 0, or the position saved in its checkpoint, whose statistics are
    loaded into ``stats`` (a ValueError names the file, left in place, where the record does not hold together)."""
    record = saver.load("cpu")
    if record is None:
        return 0
    where = f"checkpoint {str(saver.path)!r}"
    position = record.get("position")
    try:
        chunk_start("position", position, num_draws, chunk_size)
        stats.load_state_dict(record.get("stats"))
    except ValueError as err:
        raise ValueError(f"{where} is damaged ({err}); it was left in place: remove it or pass another path") from err
    if stats.count != position:
        raise ValueError(f"{where} is damaged: its statistics hold {stats.count} draws, its position says {position}; "
                         "it was left in place: remove it or pass another path")
    return position


def with_progress(chunks: Iterator, num_chunks: int, progress: bool) -> Iterator:
    """``chunks`` itself, or passed through a tqdm bar over ``num_chunks`` chunks when ``progress`` (which, unlike
    iterating tqdm itself, holds no chunk while the next is computed: see :func:`draw_chunks`)."""
    if not progress:
        return chunks
    from tqdm.auto import tqdm
    return _counted(chunks, tqdm(total=num_chunks, unit="chunk"))


def _counted(chunks: Iterator, bar) -> Iterator:
    with bar:
        for chunk in chunks:
            bar.update()
            yield chunk
            del chunk


def estimate_reference(loss: Callable[..., Tensor], params: Mapping[str, Tensor], num_draws: int, *,
                       noise_shape, chunk_size: int = 256, seed: int = 0, dtype: torch.dtype | None = None,
                       progress: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    r"""A high-precision reference gradient where enumeration is impossible: the mean of ``num_draws`` draws
    of an *unbiased* estimator and its standard error, ``(mean, stderr)`` as dicts name -> tensor.

    ``loss(params, u)`` must be the surrogate of an unbiased estimator of the gradient wanted, e.g. built with
    :func:`gradstats.functional.reinforce_loo` or :func:`gradstats.functional.disarm` (whose surrogates'
    gradients are unbiased for the binary network), so that the mean converges to the true gradient at the
    rate its standard error states. Pass both to ``GradientStats(reference=mean, reference_stderr=stderr)``:
    the bias, its norm and the MSE then carry the reference's error; use a seed the estimators under test do
    not use.
    """
    chunks = with_progress(per_draw_gradients(loss, params, num_draws, noise_shape=noise_shape, chunk_size=chunk_size,
                                              seed=seed, dtype=dtype), math.ceil(num_draws / chunk_size), progress)
    # the mean and its standard error alone: each chunk's mean and centred sum of squares in float64, merged by
    # the pairwise update of Chan, Golub & LeVeque (1979) (a GradientStats would also keep what a reference
    # does not need: higher moments, jackknife batches)
    count, mean, m2, layout = 0, None, None, None
    for chunk in chunks:
        if layout is None:
            layout = ParameterLayout.of(chunk, batched=True)
        flat = torch.cat(layout.split(chunk, "gradient"), 1).to(torch.float64)
        if not bool(torch.isfinite(flat).all()):
            raise ValueError(f"the estimator's draws are not finite in the chunk after draw {count}")
        var, chunk_mean = torch.var_mean(flat, 0, correction=0)
        rows = flat.shape[0]
        del chunk, flat   # before the next chunk is computed (draw_chunks)
        if mean is None:
            count, mean, m2 = rows, chunk_mean, var * rows
            continue
        total = count + rows
        delta = chunk_mean - mean
        mean = mean + delta * (rows / total)
        m2 = m2 + var * rows + delta.square() * (count * rows / total)
        count = total
    stderr = (m2 / (count - 1) / count).sqrt() if count > 1 else torch.full_like(mean, math.nan)
    return layout.unflatten(mean.cpu()), layout.unflatten(stderr.cpu())
