r"""Weighted streaming statistics of per-draw gradients, in float64, and the :class:`Moments` result.

A chunk of per-draw gradients (weights: the probabilities of enumerated
outcomes, or ones for Monte Carlo draws) is reduced to a :class:`Summary`:
total weight, mean, centred second moments (per coordinate, and the full
covariance when asked), and, against each reference gradient ``g``, the sums
of the per-draw metrics of :mod:`gradstats.metrics`: ``1[sign g_hat_j = sign g_j]``
per coordinate, ``cos(g_hat, g)`` and ``1[<g_hat, g> > 0]`` (overall and per
layer), and ``cos`` of the mean of ``M`` consecutive draws. Summaries merge
with the pairwise update of Chan, Golub & LeVeque (1979),

.. math:: \delta = m_b - m_a,\quad m = m_a + \delta\,w_b / w,\quad
          M_2 = M_{2,a} + M_{2,b} + \delta\delta^\top w_a w_b / w,

so no large sums of squares are ever differenced.

Structure is used, not materialised: a weight gradient ``delta (x) x`` whose
input ``x`` is the same for every draw (a network's first layer) has mean
``mean(delta) (x) x``, centred second moment ``M2(delta) (x) x^2``, sign
agreement from the sign counts of ``delta``, and inner product
``delta . (G x)`` with the reference, all at the cost of the ``delta``s.
Conventions: ``sign(0) = 0`` (a zero estimate agrees only with a zero
gradient); the cosine of a zero vector is 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .numerics import coordinate_labels, safe_divide, signs, summary_text
from .problems import FactoredGradient, Problem

__all__ = ["Moments", "Summary", "GradientAccumulator"]


@dataclass
class Summary:
    """Mergeable sufficient statistics of a set of weighted per-draw gradients.

    Per reference name: ``sign_agree`` ``[D]``, ``cosine`` and ``descent``
    ``[L + 1]`` (index 0: all coordinates; ``l``: layer ``l``) are weighted sums
    over draws; ``cosine_m[name][M]`` sums over complete groups of ``M``
    consecutive draws, ``groups[M]`` counts them.
    """

    weight: float
    count: int
    mean: Tensor
    m2: Tensor
    comoment: Tensor | None = None
    sign_agree: dict[str, Tensor] = field(default_factory=dict)
    cosine: dict[str, Tensor] = field(default_factory=dict)
    descent: dict[str, Tensor] = field(default_factory=dict)
    cosine_m: dict[str, dict[int, Tensor]] = field(default_factory=dict)
    groups: dict[int, int] = field(default_factory=dict)

    @staticmethod
    def empty(dim: int, full_covariance: bool, device=None) -> Summary:
        z = torch.zeros(dim, dtype=torch.float64, device=device)
        return Summary(0.0, 0, z, z.clone(), torch.zeros(dim, dim, dtype=torch.float64, device=device)
                       if full_covariance else None)

    def merged(self, other: Summary) -> Summary:
        """The summary of both sets of draws."""
        if other.weight == 0:
            return self
        if self.weight == 0:
            return other
        total = self.weight + other.weight
        delta = other.mean - self.mean
        factor = self.weight * other.weight / total
        comoment = None
        if self.comoment is not None and other.comoment is not None:
            comoment = self.comoment + other.comoment + torch.outer(delta, delta) * factor

        def add(a: dict, b: dict) -> dict:
            return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}

        return Summary(
            weight=total,
            count=self.count + other.count,
            mean=self.mean + delta * (other.weight / total),
            m2=self.m2 + other.m2 + delta.square() * factor,
            comoment=comoment,
            sign_agree=add(self.sign_agree, other.sign_agree),
            cosine=add(self.cosine, other.cosine),
            descent=add(self.descent, other.descent),
            cosine_m={r: add(self.cosine_m.get(r, {}), other.cosine_m.get(r, {}))
                      for r in set(self.cosine_m) | set(other.cosine_m)},
            groups=add(self.groups, other.groups),
        )

    def to_state(self) -> dict:
        """Plain tensors, numbers and dicts (what a checkpoint stores)."""
        return {"weight": float(self.weight), "count": int(self.count), "mean": self.mean, "m2": self.m2,
                "comoment": self.comoment, "sign_agree": dict(self.sign_agree), "cosine": dict(self.cosine),
                "descent": dict(self.descent), "cosine_m": {k: dict(v) for k, v in self.cosine_m.items()},
                "groups": dict(self.groups)}

    @staticmethod
    def from_state(state: dict, dim: int, full_covariance: bool, where: str = "summary") -> Summary:
        """The inverse of :meth:`to_state`, checking every shape against ``dim`` (a ValueError naming ``where``)."""
        def tensor(value, shape, name):
            if not (isinstance(value, Tensor) and tuple(value.shape) == shape and value.dtype == torch.float64):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{where}: {name} must be a float64 tensor of shape {shape}, got {got}")
            return value

        try:
            comoment = state["comoment"]
            if full_covariance:
                tensor(comoment, (dim, dim), "comoment")
            elif comoment is not None:
                raise ValueError(f"{where}: a covariance was stored, none was asked for")
            return Summary(
                weight=float(state["weight"]), count=int(state["count"]),
                mean=tensor(state["mean"], (dim,), "mean"), m2=tensor(state["m2"], (dim,), "m2"), comoment=comoment,
                sign_agree={k: tensor(v, (dim,), "sign_agree") for k, v in state["sign_agree"].items()},
                cosine=dict(state["cosine"]), descent=dict(state["descent"]),
                cosine_m={k: dict(v) for k, v in state["cosine_m"].items()},
                groups={int(k): int(v) for k, v in state["groups"].items()})
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{where}: not a stored summary ({type(err).__name__}: {err})") from err

    def to(self, device) -> Summary:
        """The same summary with its tensors on ``device``."""
        def mv(d):
            return {k: (mv(v) if isinstance(v, dict) else v.to(device)) for k, v in d.items()}

        return Summary(self.weight, self.count, self.mean.to(device), self.m2.to(device),
                       None if self.comoment is None else self.comoment.to(device),
                       mv(self.sign_agree), mv(self.cosine), mv(self.descent), mv(self.cosine_m), dict(self.groups))

    def cpu(self) -> Summary:
        return self.to("cpu")


@dataclass(frozen=True)
class Moments:
    """First and second moments of one estimator's per-draw gradient.

    Attributes
    ----------
    mean
        ``E[g_hat]``, ``[D]`` float64.
    var
        Per-coordinate variance, ``[D]`` (``n - 1`` denominator for Monte Carlo).
    cov
        Full covariance ``[D, D]`` (``None`` when not asked for or D is large).
    num_samples
        Monte Carlo draws used; ``None`` for exact moments.
    mean_stderr
        Standard error of ``mean`` (Monte Carlo only).
    loss_evals_per_draw
        Loss evaluations one draw needs.
    method
        ``"exact"`` or ``"mc"``.
    estimator
        The estimator's name.
    num_outcomes
        Enumerated outcomes (exact only).
    statistics
        The accumulated statistics all of the above come from, with
        the per-draw metrics against each reference that was given.
    batches
        Monte Carlo only: summaries of contiguous batches of draws
        (for jackknife standard errors of any metric).
    seconds
        Wall time.
    """

    mean: Tensor
    var: Tensor
    cov: Tensor | None
    num_samples: int | None
    mean_stderr: Tensor | None
    loss_evals_per_draw: int
    method: str
    estimator: str
    num_outcomes: int | None = None
    statistics: Summary | None = None
    batches: tuple[Summary, ...] = ()
    seconds: float = float("nan")

    @property
    def trace(self) -> float:
        """``trace(Cov[g_hat])``."""
        return float(self.var.sum())

    def __repr__(self) -> str:
        size = f"num_samples={self.num_samples:,}" if self.method == "mc" else f"num_outcomes={self.num_outcomes:,}"
        return (f"Moments(estimator={self.estimator!r}, method={self.method!r}, D={self.mean.numel()}, {size}, "
                f"|mean|={float(self.mean.norm()):.6g}, trace={self.trace:.6g}, seconds={self.seconds:.3g})")

    def summary(self, coordinate_names: list[str] | None = None, max_rows: int = 20) -> str:
        """A readable account: how the moments were computed, ``|mean|`` and ``trace(Cov)``, then
        :meth:`to_frame` (at most ``max_rows`` rows). Print it: ``print(moments.summary())``."""
        how = (f"Monte Carlo, {self.num_samples:,} draws" if self.method == "mc"
               else f"exact, over {self.num_outcomes:,} outcomes")
        evals = f"{self.loss_evals_per_draw} loss evaluation{'s' * (self.loss_evals_per_draw != 1)} per draw"
        return summary_text([f"Moments of {self.estimator!r}: {how}, {evals}, {self.seconds:.3g} s",
                             f"D = {self.mean.numel()}, |mean| = {float(self.mean.norm()):.6g}, "
                             f"trace(Cov) = {self.trace:.6g}"], self.to_frame(coordinate_names), max_rows)

    def to_frame(self, coordinate_names: list[str] | None = None):
        """One row per coordinate: ``coordinate, mean, var, mean_stderr`` (NaN for exact moments, which have
        none). ``coordinate_names`` (such as ``problem.coordinate_names()``) label the rows; default 0..D-1."""
        import pandas as pd

        dim = self.mean.numel()
        stderr = self.mean_stderr.tolist() if self.mean_stderr is not None else [float("nan")] * dim
        return pd.DataFrame({"coordinate": coordinate_labels(coordinate_names, dim), "mean": self.mean.tolist(),
                             "var": self.var.tolist(), "mean_stderr": stderr})

    @staticmethod
    def from_summary(summary: Summary, *, method: str, estimator: str, loss_evals_per_draw: int,
                     batches: tuple[Summary, ...] = (), seconds: float = float("nan")) -> Moments:
        summary = summary.cpu()
        if method == "exact":
            var, cov_den, n, stderr = summary.m2 / summary.weight, summary.weight, None, None
        else:
            n = summary.count
            den = n - 1 if n > 1 else float("nan")
            var, cov_den = summary.m2 / den, den
            stderr = (var / n).sqrt()
        return Moments(
            mean=summary.mean, var=var,
            cov=None if summary.comoment is None else summary.comoment / cov_den,
            num_samples=n, mean_stderr=stderr, loss_evals_per_draw=loss_evals_per_draw, method=method,
            estimator=estimator, num_outcomes=summary.count if method == "exact" else None,
            statistics=summary, batches=tuple(b.cpu() for b in batches), seconds=seconds,
        )


_SPLIT_ROWS = 2**12   # rows per block of a compiled column sum's first stage


def _two_stage(x: Tensor) -> bool:
    """Whether column sums of ``x`` are written in two stages: when compiled for a GPU (eager code, and compiled
    CPU code whose reductions already split over threads, keep torch's own reduction)."""
    return x.device.type == "cuda" and torch.compiler.is_compiling()


def _column_sums(x: Tensor) -> Tensor:
    """``x.sum(0)`` over draws (float64 counts of a boolean ``x``); in two stages where :func:`_two_stage`, so
    that the compiled kernel spreads a chunk's draws over the device however few columns there are."""
    if _two_stage(x):
        return _blocked_column_sums(x)
    return torch.count_nonzero(x, dim=0).to(torch.float64) if x.dtype == torch.bool else x.sum(0)


def _blocked_column_sums(x: Tensor) -> Tensor:
    """``x.sum(0)`` in two stages: zero rows pad ``x`` to whole blocks of :data:`_SPLIT_ROWS` rows, each block
    is summed, then the blocks (booleans are summed as float64 counts)."""
    x = x.to(torch.float64) if x.dtype == torch.bool else x
    x = torch.nn.functional.pad(x, (0, 0) * (x.ndim - 1) + (0, (-x.shape[0]) % _SPLIT_ROWS))
    return x.reshape(-1, _SPLIT_ROWS, *x.shape[1:]).sum(1).sum(0)


def _column_means(x: Tensor) -> Tensor:
    return _blocked_column_sums(x) / x.shape[0] if _two_stage(x) else x.mean(0)


@dataclass
class _Part:
    """Columns ``cols`` of per-draw gradients: dense ``values [B, k]``, or ``values [B, n] (x) x`` for constant ``x``."""

    cols: slice
    values: Tensor
    x: Tensor | None = None

    def dense(self) -> Tensor:
        if self.x is None:
            return self.values
        return (self.values[:, :, None] * self.x).flatten(1)

    def inner(self, ref: Tensor) -> Tensor:
        if self.x is None:
            return self.values @ ref
        return self.values @ (ref.reshape(self.values.shape[1], -1) @ self.x)

    def norm2(self) -> Tensor:
        if self.x is None:
            return self.values.square().sum(1)
        return self.values.square().sum(1) * self.x.square().sum()

    def segment_sums(self, segment: Tensor, num_segments: int) -> _Part:
        out = torch.zeros(num_segments, self.values.shape[1], dtype=self.values.dtype, device=self.values.device)
        return _Part(self.cols, out.index_add_(0, segment, self.values), self.x)


def _parts(problem: Problem, gradient: FactoredGradient | Tensor) -> list[list[_Part]]:
    """Per layer, the parts that make up the per-draw gradients (no outer product materialised for constant inputs)."""
    layers = []
    for (w_cols, c_cols), delta, inp in zip(problem.layer_slices(), *(
            (gradient.deltas, gradient.inputs) if isinstance(gradient, FactoredGradient)
            else ([None] * problem.num_layers, [None] * problem.num_layers))):
        if delta is not None and delta.ndim == 3:  # k passes per draw: sum them
            if inp is not None and inp.stride(0) == 0 and inp.stride(1) == 0:
                delta, inp = delta.sum(1), inp[:, 0]
            else:
                w_part = None if inp is None else _Part(w_cols, torch.einsum("bki,bkj->bij", delta, inp).flatten(1))
                layers.append([p for p in (w_part, _Part(c_cols, delta.sum(1))) if p is not None])
                continue
        if delta is None:  # dense gradient: slice its columns
            parts = [_Part(c, gradient[:, c]) for c in (w_cols, c_cols) if c is not None]
        elif inp is None:
            parts = [_Part(c_cols, delta)]
        elif inp.shape[0] == 1 or inp.stride(0) == 0:
            parts = [_Part(w_cols, delta, inp[0].to(delta)), _Part(c_cols, delta)]
        else:
            parts = [_Part(w_cols, (delta[:, :, None] * inp[:, None, :]).flatten(1)), _Part(c_cols, delta)]
        layers.append(parts)
    # per-draw arithmetic may be float32; every statistic is accumulated in float64
    return [[_Part(p.cols, p.values.to(torch.float64), None if p.x is None else p.x.to(torch.float64)) for p in parts]
            for parts in layers]


class GradientAccumulator:
    """Streams chunks of per-draw gradients into a :class:`Summary`.

    Parameters
    ----------
    problem
        Gives the parameter layout.
    references
        Name -> reference gradient ``[D]`` for the per-draw metrics.
    full_covariance
        Also accumulate the ``[D, D]`` covariance.
    ms
        Group sizes ``M`` for the cosine of the mean of ``M`` consecutive draws
        (unweighted draws only; groups are aligned to the first draw added).
    """

    def __init__(self, problem: Problem, references: dict[str, Tensor] | None = None, full_covariance: bool = False,
                 ms: tuple[int, ...] = (), device=None):
        self.problem = problem
        self.dim = problem.num_parameters
        self.device = device
        self.refs = {k: v.to(device=device, dtype=torch.float64) for k, v in (references or {}).items()}
        self.ref_signs = {k: signs(v) for k, v in self.refs.items()}
        self.full = full_covariance
        self.ms = tuple(m for m in ms if m > 1)
        self.summary = Summary.empty(self.dim, full_covariance, device)
        self.position = 0
        self._pending: dict[int, list[list[_Part]]] = {}

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume this accumulator: plain tensors, numbers and dicts."""
        pending = {m: [[{"start": p.cols.start, "stop": p.cols.stop, "values": p.values, "x": p.x} for p in parts]
                       for parts in layers] for m, layers in self._pending.items()}
        return {"summary": self.summary.to_state(), "position": self.position, "pending": pending}

    def load_state_dict(self, stored: dict, where: str = "accumulator") -> None:
        """Resume from :meth:`state_dict`'s output, checking its shapes (a ValueError naming ``where``)."""
        try:
            summary = Summary.from_state(stored["summary"], self.dim, self.full, where)
            position = int(stored["position"])
            pending = {int(m): [[_Part(slice(int(p["start"]), int(p["stop"])), p["values"], p["x"]) for p in parts]
                                for parts in layers] for m, layers in stored["pending"].items()}
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{where}: not a stored accumulator ({type(err).__name__}: {err})") from err
        if position != summary.count or set(pending) - set(self.ms):
            raise ValueError(f"{where}: inconsistent stored accumulator")
        self.summary, self.position, self._pending = summary, position, pending

    # ---- per-draw metrics against one reference -----------------------------------
    def _inner_and_norm(self, layers: list[list[_Part]], ref: Tensor) -> tuple[Tensor, Tensor]:
        """Per draw and per layer: ``<g_hat_l, g_l>`` and ``|g_hat_l|^2``, each ``[B, L]``."""
        inner = torch.stack([sum(p.inner(ref[p.cols]) for p in parts) for parts in layers], 1)
        norm2 = torch.stack([sum(p.norm2() for p in parts) for parts in layers], 1)
        return inner, norm2

    def _cosines(self, layers, ref: Tensor) -> tuple[Tensor, Tensor]:
        """``cos(g_hat, g)`` and ``<g_hat, g>`` per draw, ``[B, L + 1]`` (column 0: all layers)."""
        inner, norm2 = self._inner_and_norm(layers, ref)
        ref_norm = torch.stack([sum(ref[p.cols].square().sum() for p in parts) for parts in layers]).sqrt()
        inner_all = torch.cat([inner.sum(1, keepdim=True), inner], 1)
        norm_all = torch.cat([norm2.sum(1, keepdim=True), norm2], 1).sqrt()
        ref_all = torch.cat([ref_norm.square().sum().sqrt().reshape(1), ref_norm])
        return safe_divide(inner_all, norm_all * ref_all), inner_all

    @staticmethod
    def _sign_agreement(part: _Part, w: Tensor | None, s: Tensor, total: float) -> Tensor:
        """Per coordinate, the weight of draws whose raw sign equals the reference's sign ``s`` (-1, 0, 1)."""
        if part.x is None:
            agree = part.values.sign() == s
            return _column_sums(agree) if w is None else w @ agree.to(torch.float64)
        d = part.values
        if w is None:
            pos, neg = _column_sums(d > 0), _column_sums(d < 0)
        else:
            pos, neg = w @ (d > 0).to(torch.float64), w @ (d < 0).to(torch.float64)
        zero = total - pos - neg
        s = s.reshape(d.shape[1], -1)
        t = s * part.x.sign()
        out = torch.where(t > 0, pos[:, None], torch.where(t < 0, neg[:, None], zero[:, None]))
        out = torch.where(part.x == 0, (s == 0).to(torch.float64) * total, out)
        return out.reshape(-1)

    # ---- adding a chunk ----------------------------------------------------------------
    def add(self, gradient: FactoredGradient | Tensor, weights: Tensor | None = None) -> None:
        """Merge a chunk of per-draw gradients (``weights [B]``: probabilities; ``None``: ones)."""
        layers = _parts(self.problem, gradient)
        b = layers[0][0].values.shape[0]
        w = None if weights is None else weights.to(torch.float64)
        total = float(b) if w is None else float(w.sum())
        if total == 0.0:
            return
        self.add_statistics(b, total, self.statistics(layers, w, total))
        if w is None and self.ms and self.refs:
            self._add_groups(layers, b)

    def statistics(self, layers: list[list[_Part]], w: Tensor | None, total) -> tuple:
        """A chunk's sums as tensors only, ``(mean, m2, comoment, {name: (sign_agree, cosine, descent)})``: no
        synchronisation with the device, so a compiled caller (:mod:`gradstats.montecarlo`'s fused path) can
        fuse it with the draws."""
        parts = [p for ps in layers for p in ps]
        mean = torch.empty(self.dim, dtype=torch.float64, device=self.device)
        m2 = torch.empty_like(mean)
        for p in parts:
            v = p.values
            mv = _column_means(v) if w is None else (w @ v) / total
            c = (v - mv).square()
            sv = _column_sums(c) if w is None else w @ c
            if p.x is None:
                mean[p.cols], m2[p.cols] = mv, sv
            else:
                mean[p.cols], m2[p.cols] = torch.outer(mv, p.x).reshape(-1), torch.outer(sv, p.x.square()).reshape(-1)
        comoment = None
        if self.full:
            dense = torch.cat([p.dense() for p in parts], 1) - mean
            comoment = (dense.T * w) @ dense if w is not None else dense.T @ dense
        metrics = {}
        for name, ref in self.refs.items():
            agree = torch.empty_like(mean)
            ref_sign = self.ref_signs[name]
            for p in parts:
                agree[p.cols] = self._sign_agreement(p, w, ref_sign[p.cols], total)
            cos, inner = self._cosines(layers, ref)
            positive = (inner > 0).to(torch.float64)
            metrics[name] = (agree, _column_sums(cos) if w is None else w @ cos,
                             _column_sums(positive) if w is None else w @ positive)
        return mean, m2, comoment, metrics

    def draw_statistics(self, gradient: FactoredGradient | Tensor) -> tuple:
        """:meth:`statistics` of a chunk of unweighted draws."""
        layers = _parts(self.problem, gradient)
        return self.statistics(layers, None, layers[0][0].values.shape[0])

    def add_statistics(self, count: int, total: float, statistics: tuple) -> None:
        """Merge the output of :meth:`statistics` for ``count`` draws of total weight ``total``."""
        mean, m2, comoment, metrics = statistics
        chunk = Summary(total, count, mean, m2, comoment)
        for name, (agree, cos, descent) in metrics.items():
            chunk.sign_agree[name], chunk.cosine[name], chunk.descent[name] = agree, cos, descent
        self.position += count
        self.summary = self.summary.merged(chunk)

    def _add_groups(self, layers: list[list[_Part]], b: int) -> None:
        """Cosines of the means of complete groups of ``M`` draws (the ``b`` just added), carrying a partial group
        to the next chunk."""
        position = self.position - b
        for m in self.ms:
            first = position // m
            segment = (torch.arange(position, position + b, device=layers[0][0].values.device) // m) - first
            num = int(segment[-1]) + 1
            sums = [[p.segment_sums(segment, num) for p in parts] for parts in layers]
            if m in self._pending:
                for parts, prev in zip(sums, self._pending.pop(m)):
                    for p, q in zip(parts, prev):
                        p.values[0] += q.values[0]
            sizes = torch.bincount(segment, minlength=num)
            if position % m:
                sizes[0] += position % m
            complete = sizes == m
            if not bool(complete[-1]):
                self._pending[m] = [[_Part(p.cols, p.values[-1:].clone(), p.x) for p in parts] for parts in sums]
            means = [[_Part(p.cols, p.values[complete] / m, p.x) for p in parts] for parts in sums]
            count = int(complete.sum())
            for name, ref in self.refs.items():
                cos = self._cosines(means, ref)[0] if count else torch.zeros(len(layers) + 1, device=self.device)
                sums_m = self.summary.cosine_m.setdefault(name, {})
                sums_m[m] = sums_m.get(m, 0) + cos.reshape(-1, len(layers) + 1).sum(0).to(torch.float64)
            self.summary.groups[m] = self.summary.groups.get(m, 0) + count
