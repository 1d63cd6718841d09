r"""Weighted streaming statistics of per-draw gradients, in float64, and the :class:`Moments` result.

A chunk of per-draw gradients (weights: the probabilities of enumerated
outcomes, or ones for Monte Carlo draws) is reduced to a :class:`Summary`:
total weight, mean, centred second moments (per coordinate, and the full
covariance when asked), centred third and fourth moments per coordinate (the
skewness and kurtosis that say whether a standard error can be trusted,
:mod:`gradstats.stats`), and, against each reference gradient ``g``, the sums
of the per-draw metrics of :mod:`gradstats.metrics`: ``1[sign g_hat_j = sign g_j]``
per coordinate, ``cos(g_hat, g)`` and ``1[<g_hat, g> > 0]`` (overall and per
layer), and ``cos`` of the mean of ``M`` consecutive draws. Summaries merge
with the pairwise update of Chan, Golub & LeVeque (1979),

.. math:: \delta = m_b - m_a,\quad m = m_a + \delta\,w_b / w,\quad
          M_2 = M_{2,a} + M_{2,b} + \delta\delta^\top w_a w_b / w,

and its extension to the third and fourth moments (Pébay 2008, "Formulas for
robust, one-pass parallel computation of covariances and arbitrary-order
statistical moments", Sandia report SAND2008-6212, Eqs. 2.1-2.2),

.. math:: M_3 = M_{3,a} + M_{3,b} + \delta^3 \frac{w_a w_b (w_a - w_b)}{w^2}
              + 3\delta \frac{w_a M_{2,b} - w_b M_{2,a}}{w},

.. math:: M_4 = M_{4,a} + M_{4,b} + \delta^4 \frac{w_a w_b (w_a^2 - w_a w_b + w_b^2)}{w^3}
              + 6\delta^2 \frac{w_a^2 M_{2,b} + w_b^2 M_{2,a}}{w^2}
              + 4\delta \frac{w_a M_{3,b} - w_b M_{3,a}}{w},

so no large sums of powers are ever differenced.

Structure is used, not materialised: a weight gradient ``delta (x) x`` whose
input ``x`` is the same for every draw (a network's first layer) has mean
``mean(delta) (x) x``, centred ``k``-th moments ``Mk(delta) (x) x^k``, sign
agreement from the sign counts of ``delta``, and inner product
``delta . (G x)`` with the reference, all at the cost of the ``delta``s.
Conventions: ``sign(0) = 0`` (a zero estimate agrees only with a zero
gradient); the cosine of a zero vector is 0.
"""

from __future__ import annotations

import math
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
    m3: Tensor | None   # None (with m4) in the summaries the jackknife merges: its metrics need two moments
    m4: Tensor | None
    comoment: Tensor | None = None
    sign_agree: dict[str, Tensor] = field(default_factory=dict)
    cosine: dict[str, Tensor] = field(default_factory=dict)
    descent: dict[str, Tensor] = field(default_factory=dict)
    cosine_m: dict[str, dict[int, Tensor]] = field(default_factory=dict)
    groups: dict[int, int] = field(default_factory=dict)

    @staticmethod
    def empty(dim: int, full_covariance: bool, device=None) -> Summary:
        """No draws: the four moments are one zero vector (a summary is never written in place; each jackknife
        batch of a :class:`~gradstats.GradientStats` starts from one, so this is a quarter of the memory)."""
        z = torch.zeros(dim, dtype=torch.float64, device=device)
        return Summary(0.0, 0, z, z, z, z,
                       torch.zeros(dim, dim, dtype=torch.float64, device=device) if full_covariance else None)

    def merged(self, other: Summary) -> Summary:
        """The summary of both sets of draws."""
        if other.weight == 0:
            return self
        if self.weight == 0:
            return other
        wa, wb = self.weight, other.weight
        total = wa + wb
        delta = other.mean - self.mean
        factor = wa * wb / total
        d2 = delta.square()
        comoment = None
        if self.comoment is not None and other.comoment is not None:
            comoment = self.comoment + other.comoment + torch.outer(delta, delta) * factor

        def add(a: dict, b: dict) -> dict:
            return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}

        higher = self.m3 is not None and other.m3 is not None
        return Summary(
            weight=total,
            count=self.count + other.count,
            mean=self.mean + delta * (wb / total),
            m2=self.m2 + other.m2 + d2 * factor,
            m3=self.m3 + other.m3 + d2 * delta * (factor * (wa - wb) / total)
            + 3 * delta * (wa * other.m2 - wb * self.m2) / total if higher else None,
            m4=self.m4 + other.m4 + d2.square() * (factor * (wa * wa - wa * wb + wb * wb) / total**2)
            + 6 * d2 * (wa * wa * other.m2 + wb * wb * self.m2) / total**2
            + 4 * delta * (wa * other.m3 - wb * self.m3) / total if higher else None,
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
                "m3": self.m3, "m4": self.m4, "comoment": self.comoment, "sign_agree": dict(self.sign_agree),
                "cosine": dict(self.cosine),
                "descent": dict(self.descent), "cosine_m": {k: dict(v) for k, v in self.cosine_m.items()},
                "groups": dict(self.groups)}

    @staticmethod
    def from_state(state: dict, dim: int, full_covariance: bool, where: str = "summary",
                   unweighted: bool = True) -> Summary:
        """The inverse of :meth:`to_state`, checking every shape against ``dim`` and every invariant
        (:meth:`check`; ``unweighted``: Monte Carlo draws, whose weight is their count), a ValueError naming
        ``where``."""
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
            count, weight = state["count"], state["weight"]
            if isinstance(count, bool) or not isinstance(count, int):
                raise ValueError(f"{where}: count must be an integer, got {count!r}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"{where}: weight must be a number, got {weight!r}")
            summary = Summary(
                weight=float(weight), count=count,
                mean=tensor(state["mean"], (dim,), "mean"), m2=tensor(state["m2"], (dim,), "m2"),
                m3=tensor(state["m3"], (dim,), "m3"), m4=tensor(state["m4"], (dim,), "m4"), comoment=comoment,
                sign_agree={str(k): tensor(v, (dim,), "sign_agree") for k, v in state["sign_agree"].items()},
                cosine={str(k): v for k, v in state["cosine"].items()},
                descent={str(k): v for k, v in state["descent"].items()},
                cosine_m={str(k): {int(m): c for m, c in v.items()} for k, v in state["cosine_m"].items()},
                groups={int(k): v for k, v in state["groups"].items()})
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            if isinstance(err, ValueError) and str(err).startswith(where):
                raise
            raise ValueError(f"{where}: not a stored summary ({type(err).__name__}: {err})") from err
        summary.check(where, unweighted)
        return summary

    def check(self, where: str = "summary", unweighted: bool = True) -> None:
        """The invariants of a summary that was stored or sent, a ValueError naming ``where`` and the first that
        fails: a count >= 0 (the weight equal to it for ``unweighted`` draws), a finite weight >= 0, finite
        moments, second and fourth moments >= 0 (and the covariance's diagonal), per-draw sums within what
        ``weight`` draws allow (sign agreement and descent in ``[0, weight]``, cosines in ``[-weight, weight]``),
        and group counts >= 0."""
        def fail(what: str):
            raise ValueError(f"{where}: {what}; refused (a damaged or altered record)")

        if self.count < 0:
            fail(f"count {self.count} < 0")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            fail(f"weight {self.weight!r} is not a finite number >= 0")
        if unweighted and self.weight != self.count:
            fail(f"weight {self.weight!r} differs from the count {self.count} of unweighted draws")
        slack = 1e-9 * max(self.weight, 1.0)
        for name in ("mean", "m2", "m3", "m4"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                fail(f"{name} is not finite")
        for name in ("m2", "m4"):
            value = getattr(self, name)
            if bool((value < -1e-9 * value.abs().max().clamp_min(1e-300)).any()):
                fail(f"{name} has negative entries (a negative variance)")
        if self.comoment is not None:
            diagonal = self.comoment.diagonal()
            if not bool(torch.isfinite(self.comoment).all()) or bool((diagonal < -1e-9 * diagonal.abs().max()).any()):
                fail("the covariance is not finite or has a negative diagonal")
        if self.count == 0 and (self.weight != 0 or bool(self.m2.any())):
            fail("no draws, yet nonzero statistics")
        for name, sums in (("sign_agree", self.sign_agree), ("cosine", self.cosine), ("descent", self.descent)):
            low = -self.weight - slack if name == "cosine" else -slack
            for ref, value in sums.items():
                value = torch.as_tensor(value, dtype=torch.float64)
                if not bool(torch.isfinite(value).all()) or bool((value < low).any() or (value > self.weight + slack).any()):
                    fail(f"{name}[{ref!r}] lies outside what {self.weight:g} draws allow")
        for m, groups in self.groups.items():
            if isinstance(groups, bool) or not isinstance(groups, int) or groups < 0:
                fail(f"groups[{m}] must be an integer >= 0, got {groups!r}")
        for ref, by_m in self.cosine_m.items():
            for m, value in by_m.items():
                count = self.groups.get(m, 0)
                value = torch.as_tensor(value, dtype=torch.float64)
                if not bool(torch.isfinite(value).all()) or bool((value.abs() > count + slack).any()):
                    fail(f"cosine_m[{ref!r}][{m}] lies outside what {count} groups allow")

    def permuted(self, coordinates: Tensor, groups: Tensor) -> Summary:
        """The same summary with its coordinates (``[D]`` indices) and per-group sums (``[L + 1]`` indices, 0 first)
        reordered: the statistics of the same draws under another order of the parameters."""
        def coords(t):
            return t[coordinates.to(t.device)]

        def by_group(t):
            return t[groups.to(t.device)] if isinstance(t, Tensor) and t.ndim == 1 else t

        return Summary(self.weight, self.count, coords(self.mean), coords(self.m2), coords(self.m3), coords(self.m4),
                       None if self.comoment is None else self.comoment[coordinates][:, coordinates],
                       {k: coords(v) for k, v in self.sign_agree.items()},
                       {k: by_group(v) for k, v in self.cosine.items()},
                       {k: by_group(v) for k, v in self.descent.items()},
                       {k: {m: by_group(v) for m, v in by_m.items()} for k, by_m in self.cosine_m.items()},
                       dict(self.groups))

    def to(self, device) -> Summary:
        """The same summary with its tensors on ``device``."""
        def mv(d):
            return {k: (mv(v) if isinstance(v, dict) else v.to(device)) for k, v in d.items()}

        return Summary(self.weight, self.count, self.mean.to(device), self.m2.to(device), self.m3.to(device),
                       self.m4.to(device), None if self.comoment is None else self.comoment.to(device),
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
    source
        What computed them, ``(problem, estimator, options)``, where known (:func:`gradstats.moments`):
        :func:`gradstats.stats.unbiasedness_test` uses it to find the estimator's exact moments.
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
    source: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def trace(self) -> float:
        """``trace(Cov[g_hat])``."""
        return float(self.var.sum())

    def _central(self, k: int) -> Tensor:
        s = self.statistics
        return {2: s.m2, 3: s.m3, 4: s.m4}[k] / s.weight

    @property
    def skewness(self) -> Tensor:
        r"""Per coordinate, :math:`\gamma = \mu_3 / \mu_2^{3/2}` (the plug-in ``g1`` for Monte Carlo draws); NaN where
        the variance is 0."""
        m2 = self._central(2)
        return torch.where(m2 > 0, self._central(3) / m2.clamp_min(torch.finfo(m2.dtype).tiny).pow(1.5), torch.nan)

    @property
    def kurtosis(self) -> Tensor:
        r"""Per coordinate, :math:`\kappa = \mu_4 / \mu_2^2` (3 for a normal law; the plug-in ``b2`` for Monte
        Carlo draws); NaN where the variance is 0."""
        m2 = self._central(2)
        return torch.where(m2 > 0, self._central(4) / m2.clamp_min(torch.finfo(m2.dtype).tiny).square(), torch.nan)

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
                     batches: tuple[Summary, ...] = (), seconds: float = float("nan"), source: tuple | None = None
                     ) -> Moments:
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
            statistics=summary, batches=tuple(b.cpu() for b in batches), seconds=seconds, source=source,
        )


SAFE_NORM2 = (2.0**-900, 2.0**900)   # squared norms in here lost nothing to underflow or overflow


def _times_power_of_two(x: Tensor, exponent: Tensor) -> Tensor:
    """``x * 2^exponent``, exact, in two halves so that no factor overflows (``2^1074`` is not a float64, and a
    subnormal's exponent asks for it)."""
    half = torch.div(exponent, 2, rounding_mode="floor")
    return x * torch.pow(2.0, half.to(x.dtype)) * torch.pow(2.0, (exponent - half).to(x.dtype))


def cosines_by_layer(inner: Tensor, norm2: Tensor, exponent: Tensor | None, ref_norm2: Tensor,
                     ref_exponent: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, ``cos(x, g)`` and ``<x, g>`` up to a positive factor, ``[B, L + 1]`` (column 0: all layers), from
    each layer's ``<x_l, g_l>`` and ``|x_l|^2`` (``[B, L]``) computed at ``x_l 2^-exponent`` and ``g_l
    2^-ref_exponent`` (``exponent [B, L]``, ``ref_exponent [L]``: integral float64), with ``|g_l 2^-ref_exponent|^2``
    (``ref_norm2 [L]``): each layer's cosine at its own scale, so that a layer whose squares would underflow beside
    another's keeps it; the whole row's at one power of two per row (its largest nonzero layer's) and one for the
    reference, where a layer too small to count rounds away. A layer that is 0 has no scale: its power of two (0,
    as :func:`layer_scaled` gives it) takes no part in the whole row's, and it is not scaled to it. The cosine of
    a zero vector is 0. The whole row's ``<x, g>`` is taken at the power of two of its largest layer term, not at the
    one the norms meet at: where the draw is 0 in the reference's largest layer, its other layers' terms there can
    be below the least subnormal (and its cosine about 1e-323), while their sum's sign is that of ``<x, g>``.
    ``exponent=None`` says that every one is 0 (no layer of any row was rescaled: the eager paths' common case),
    and spares the passes over ``[B, L]`` that give the same numbers."""
    cos = safe_divide(inner, norm2.sqrt() * ref_norm2.sqrt())
    ref_shift = _shift_to_largest(ref_exponent, ref_norm2 > 0)   # [L]
    if exponent is None:   # every row's layers meet at the power 0 already: its shift is 0
        powers, norm2_all = ref_shift, norm2.sum(1, keepdim=True)
    else:
        shift = _shift_to_largest(exponent, norm2 > 0)         # [B, L]
        powers, norm2_all = shift + ref_shift, _times_power_of_two(norm2, 2 * shift).sum(1, keepdim=True)
    inner_all = _times_power_of_two(inner, powers).sum(1, keepdim=True)
    ref_all = _times_power_of_two(ref_norm2, 2 * ref_shift).sum()
    cos_all = safe_divide(inner_all, norm2_all.sqrt() * ref_all.sqrt())
    # only a row whose sum is 0 can have lost its terms below the least subnormal: its sign is taken again there, at
    # its largest term's power. Eagerly for those rows alone (two more powers of two on every row cost the eager
    # Monte Carlo path about 70 ns a draw); compiled for every row, then picked: selecting the rows is a
    # data-dependent shape, which would break the graph and leave the whole fused statistics eager
    if torch.compiler.is_compiling():
        again = _times_power_of_two(inner, _shift_to_largest(powers, inner != 0)).sum(1, keepdim=True)
        inner_all = torch.where(inner_all == 0, again, inner_all)
    else:
        lost = (inner_all[:, 0] == 0).nonzero().flatten()
        if lost.numel():
            terms = powers if exponent is None else powers[lost]
            again = _times_power_of_two(inner[lost], _shift_to_largest(terms, inner[lost] != 0))
            inner_all = inner_all.index_copy(0, lost, again.sum(1, keepdim=True))
    return torch.cat([cos_all, cos], 1), torch.cat([inner_all, inner], 1)


def _shift_to_largest(exponent: Tensor, nonzero: Tensor) -> Tensor:
    """``exponent`` minus its largest over the last dimension where ``nonzero`` (<= 0 there: a scaling by it is
    exact or rounds a negligible layer away), and 0 where not: a zero layer is not scaled at all, for its shift,
    up to +1074 from a subnormal layer's power, doubled for a square, would overflow ``2^1024`` and make 0 times
    it NaN."""
    top = torch.where(nonzero, exponent, -math.inf).amax(-1, keepdim=True)
    return torch.where(nonzero, exponent - top, 0.0)


def layer_scaled(vectors: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """Each of ``vectors`` (``[..., n_l]``: a reference's layers, or rows of each layer's entries) times the power of
    two that brings its largest magnitude near 1 (per row), and those powers, ``[..., L]`` float64 (0 for a zero
    vector): exact, for :func:`cosines_by_layer`."""
    top = torch.stack([v.abs().amax(-1) if v.shape[-1] else v.new_zeros(v.shape[:-1]) for v in vectors], -1)
    exponent = torch.where(top > 0, _exponent_of(top), 0.0)
    return [_times_power_of_two(v, -exponent[..., i, None]) for i, v in enumerate(vectors)], exponent


def reference_by_layer(layers: list[Tensor]) -> tuple[list[Tensor], Tensor, Tensor]:
    """A reference's layers, each scaled by its own power of two (:func:`layer_scaled`), those powers ``[L]`` and the
    scaled layers' squared norms ``[L]``: what :func:`cosines_by_layer` compares rows with, computed once."""
    scaled, exponent = layer_scaled(layers)
    return scaled, exponent, torch.stack([v.square().sum() for v in scaled])


def _exponent_of(top: Tensor) -> Tensor:
    """Per entry of ``top > 0``, a power of two ``e`` (float64, integral) with ``top / 2^e`` in [1/2, 1), or within a
    factor of 2 of it where ``log2`` rounds across an integer: what brings ``top`` near 1 (``frexp``'s integer
    exponent does not compile on every CPU)."""
    return torch.floor(torch.log2(top)) + 1


def unit_scaled(x: Tensor) -> Tensor:
    """``x`` times the power of two that brings ``max |x|`` into [1/2, 1) (``x`` itself when it is zero): exact."""
    top = x.abs().max() if x.numel() else x.new_zeros(())
    return _times_power_of_two(x, torch.where(top > 0, -torch.frexp(top).exponent, 0))


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


_BLOCK_BYTES = 2**18   # eager column reductions run over blocks of this size, which stay in the cache


def _column_reduce(v: Tensor, terms, w: Tensor | None, columns: Tensor | None = None) -> Tensor:
    """``[m, cols]``: the column sums (``w``-weighted where given) of the ``m`` tensors ``terms(block, columns)``
    makes of a block of ``v``'s rows and columns (``columns``: per-column values that go with it, sliced alike;
    booleans are summed as float64 counts). Eager code walks ``v`` in cache-sized blocks (several sums for about
    the memory traffic of one); compiled code reduces it whole, which the compiler fuses."""
    def reduce(block: Tensor, extra: Tensor | None, weights: Tensor | None) -> Tensor:
        made = terms(block, extra)
        if weights is None:
            return torch.stack([_column_sums(t) for t in made])
        return torch.stack([weights @ t.to(torch.float64) for t in made])

    if torch.compiler.is_compiling():
        return reduce(v, columns, w)
    rows, cols = v.shape
    col_step = min(cols, 4096)
    row_step = max(1, _BLOCK_BYTES // (8 * col_step))
    out = None
    for c0 in range(0, cols, col_step):
        extra = None if columns is None else columns[c0:c0 + col_step]
        for r0 in range(0, rows, row_step):
            part = reduce(v[r0:r0 + row_step, c0:c0 + col_step], extra, None if w is None else w[r0:r0 + row_step])
            if out is None:
                out = torch.zeros(part.shape[0], cols, dtype=torch.float64, device=v.device)
            out[:, c0:c0 + col_step] += part
    return out


def _central_powers(block: Tensor, mean: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    c = block - mean
    c2 = c * c
    return c2, c2 * c, c2 * c2


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

    def row_max(self) -> Tensor:
        """Per draw, the largest magnitude of these columns."""
        top = self.values.abs().amax(1)
        return top if self.x is None else top * self.x.abs().max()

    def norm2(self) -> Tensor:
        """Per draw, the squared norm of these columns."""
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
        self.ref_layers = {k: self._by_layer(v) for k, v in self.refs.items()}
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
    def _by_layer(self, ref: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``ref`` ``[D]`` with each layer scaled by its own power of two, those powers ``[L]`` and the scaled layers'
        squared norms ``[L]`` (:func:`reference_by_layer`; a layer's coordinates, its weights then its biases, are
        contiguous, and the layers lie in order)."""
        bounds = [(c.start if w is None else w.start, c.stop) for w, c in self.problem.layer_slices()]
        scaled, exponent, norm2 = reference_by_layer([ref[a:b] for a, b in bounds])
        return torch.cat(scaled), exponent, norm2

    def _inner_and_norm(self, layers: list[list[_Part]], ref: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per draw and per layer: ``<g_hat_l, ref_l>``, ``|g_hat_l|^2`` and the exponent ``e`` (each ``[B, L]``) such
        that they are those of ``g_hat_l`` times ``2^-e``. A layer of a draw whose squared norm is nonzero and leaves
        :data:`SAFE_NORM2` (entries below about 1e-135, where squares start to underflow, or above 1e135) is scaled
        first by the power of two that brings its largest entry into [1/2, 1) (``e`` is that power; 0 elsewhere):
        exact, and a layer's cosine and the sign of its inner product are scale-invariant. Eager code rescales only
        when a chunk has such a layer (``e`` is None when it has none: every power is 0); compiled code computes
        both and picks (no data-dependent branch)."""
        def sums(parts_of: list[list[_Part]]) -> tuple[Tensor, Tensor]:
            return (torch.stack([sum(p.inner(ref[p.cols]) for p in parts) for parts in parts_of], 1),
                    torch.stack([sum(p.norm2() for p in parts) for parts in parts_of], 1))

        inner, norm2 = sums(layers)
        safe = (norm2 >= SAFE_NORM2[0]) & (norm2 <= SAFE_NORM2[1])   # false for a NaN too
        compiling = torch.compiler.is_compiling()
        if not compiling and bool(safe.all()):
            return inner, norm2, None
        top = torch.stack([torch.stack([p.row_max() for p in parts], 1).amax(1) for parts in layers], 1)   # [B, L]
        unsafe = ~safe & (top > 0)   # a layer that is 0 in a draw is safe
        exponent = torch.where(unsafe, _exponent_of(top), 0.0)
        if not compiling and not bool(unsafe.any()):
            return inner, norm2, None
        scaled = [[_Part(p.cols, _times_power_of_two(p.values, -exponent[:, layer, None]), p.x) for p in parts]
                  for layer, parts in enumerate(layers)]
        inner_scaled, norm2_scaled = sums(scaled)
        return torch.where(unsafe, inner_scaled, inner), torch.where(unsafe, norm2_scaled, norm2), exponent

    def _cosines(self, layers, name: str) -> tuple[Tensor, Tensor]:
        """``cos(g_hat, g)`` and ``<g_hat, g>`` up to a positive factor, per draw, ``[B, L + 1]`` (column 0: all
        layers), against the reference ``name``. Each layer of the reference (:meth:`_by_layer`, once) and of each
        draw (:meth:`_inner_and_norm`) is brought into range by its own power of two (:func:`cosines_by_layer`)."""
        scaled_ref, ref_exponent, ref_norm2 = self.ref_layers[name]
        inner, norm2, exponent = self._inner_and_norm(layers, scaled_ref)
        return cosines_by_layer(inner, norm2, exponent, ref_norm2, ref_exponent)

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
        """A chunk's sums as tensors only, ``(mean, m2, m3, m4, comoment, {name: (sign_agree, cosine, descent)})``: no
        synchronisation with the device, so a compiled caller (:mod:`gradstats.montecarlo`'s fused path) can
        fuse it with the draws."""
        parts = [p for ps in layers for p in ps]
        mean = torch.empty(self.dim, dtype=torch.float64, device=self.device)
        m2, m3, m4 = torch.empty_like(mean), torch.empty_like(mean), torch.empty_like(mean)
        for p in parts:
            v = p.values
            mv = _column_means(v) if w is None else (w @ v) / total
            sums = _column_reduce(v, _central_powers, w, mv)
            if p.x is None:
                mean[p.cols] = mv
                m2[p.cols], m3[p.cols], m4[p.cols] = sums
            else:
                mean[p.cols] = torch.outer(mv, p.x).reshape(-1)
                for out, s, k in zip((m2, m3, m4), sums, (2, 3, 4)):
                    out[p.cols] = torch.outer(s, p.x.pow(k)).reshape(-1)
        comoment = None
        if self.full:
            dense = torch.cat([p.dense() for p in parts], 1) - mean
            comoment = (dense.T * w) @ dense if w is not None else dense.T @ dense
        metrics = {}
        for name in self.refs:
            agree = torch.empty_like(mean)
            ref_sign = self.ref_signs[name]
            for p in parts:
                agree[p.cols] = self._sign_agreement(p, w, ref_sign[p.cols], total)
            cos, inner = self._cosines(layers, name)
            positive = (inner > 0).to(torch.float64)
            metrics[name] = (agree, _column_sums(cos) if w is None else w @ cos,
                             _column_sums(positive) if w is None else w @ positive)
        return mean, m2, m3, m4, comoment, metrics

    def draw_statistics(self, gradient: FactoredGradient | Tensor) -> tuple:
        """:meth:`statistics` of a chunk of unweighted draws."""
        layers = _parts(self.problem, gradient)
        return self.statistics(layers, None, layers[0][0].values.shape[0])

    def add_statistics(self, count: int, total: float, statistics: tuple) -> None:
        """Merge the output of :meth:`statistics` for ``count`` draws of total weight ``total``."""
        mean, m2, m3, m4, comoment, metrics = statistics
        chunk = Summary(total, count, mean, m2, m3, m4, comoment)
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
            for name in self.refs:
                cos = self._cosines(means, name)[0] if count else torch.zeros(len(layers) + 1, device=self.device)
                sums_m = self.summary.cosine_m.setdefault(name, {})
                sums_m[m] = sums_m.get(m, 0) + cos.reshape(-1, len(layers) + 1).sum(0).to(torch.float64)
            self.summary.groups[m] = self.summary.groups.get(m, 0) + count
