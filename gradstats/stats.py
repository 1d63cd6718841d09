r"""Hypothesis tests on Monte Carlo moments: unbiasedness and sign, with multiple-comparison control,
and a verdict that says when the draws cannot tell.

Per coordinate, :math:`t_j = (\bar g_j - g_j) / \mathrm{se}_j` is compared with Student's
``t`` with ``n - 1`` degrees of freedom (or the normal law, where the standard error is known:
below). The family of ``D`` coordinates is controlled with Holm's step-down procedure (Holm
1979, "A simple sequentially rejective multiple test procedure"), whose global test (reject if
any adjusted p-value is below alpha) controls the family-wise error rate whatever the
dependence between coordinates. The Hotelling :math:`T^2` test, :math:`T^2 = n\,d^\top S^{+} d`
with :math:`d = \bar g - g` and ``S`` the sample covariance restricted to its numerical range
of rank ``r``, uses the dependence: under the null and normality
:math:`\frac{n - r}{r (n - 1)} T^2 \sim F(r, n - r)`.

When the draws cannot tell. Estimators of binary units draw from skewed, discrete laws: a
score-function estimator of a unit that is on with probability ``q`` takes a value of order
``1/q`` times its usual one in a fraction ``q`` of the draws. Until such draws have come many
times, the sample standard error is far too small (on ``sbn([4, 3, 3], weight_scale=3)``: 2e-4
against the true 3.6e-3) and Student's ``t`` rejects a true null almost always. No test built on
the draws alone can see events it has not drawn (Bahadur & Savage 1956, "The nonexistence of
certain statistical procedures in nonparametric problems"), so the tests do two things:

* **Exact moments where they exist.** Moments computed by :func:`gradstats.moments` know their
  problem and estimator; where the estimator's noise is discrete and its outcomes can be
  enumerated (``exact="auto"``), its exact variance gives the standard errors (the normal law
  then gives the p-values) and its exact skewness and kurtosis the check below.
* **A sample size the skewness allows.** The one-term Edgeworth expansion of the studentised
  mean (Hall 1987, "Edgeworth expansion for Student's t statistic under minimal moment
  conditions"; Boos & Hughes-Oliver 2000, "How large does n have to be for Z and t
  intervals?"), :math:`P(T \le x) = \Phi(x) + n^{-1/2}\gamma (2x^2 + 1)\phi(x)/6`, changes a
  tail of the normal law by the relative amount :math:`\gamma (2x^2 + 1)\phi(x) / (6\sqrt{n}\,
  \bar\Phi(x))`. A coordinate is *reliable* when that is at most :data:`EDGEWORTH_TOLERANCE`
  (one half) at the decision threshold ``x`` (Holm's first step, :math:`\bar\Phi^{-1}(\alpha/2m)`
  over the ``m`` tested coordinates), and when the kurtosis term of the next order,
  :math:`x\,|\kappa - 3|\,|x^2 - 3|\,\phi(x)/(12 n \bar\Phi(x))`, is too: that is, when ``n`` is at
  least the coordinate's ``required_draws``. The skewness and kurtosis are the exact ones where
  exact moments are used, else the draws' own (accumulated in float64, :mod:`gradstats.accumulators`).

The verdict is ``"rejected"`` when a reliable coordinate is rejected after Holm (Hotelling: the
global test rejects and every tested coordinate is reliable), ``"inconclusive"`` when the only
rejections rest on unreliable coordinates (the result then says how many draws would make them
reliable, :attr:`TestResult.draws_needed`), else ``"not rejected"``. From the draws alone
(``exact=False``, or moments of a model whose outcomes cannot be enumerated) the check sees only
tails that have been drawn: a rare event not yet seen leaves the sample light-tailed. The
The guarantees page (``docs/guarantees.md``) and ``tests/test_calibration.py`` give the measured rates.

Calibration. On REINFORCE without a baseline on random networks of 20 to 30 parameters, 200
seeded repetitions at alpha = 0.05 gave Holm rejection rates of up to 0.36 at n = 50, so the tests
refuse fewer than :data:`MIN_SAMPLES` = 200 draws, and Hotelling fewer than
:data:`HOTELLING_SAMPLES_PER_RANK` = 100 per rank, with a ValueError rather than a miscalibrated
p-value. Holm's procedure controls the family-wise error at most at alpha: its rate may lie
below alpha.

A coordinate (for Hotelling: a direction) in which all ``n`` draws are equal carries no
information on its variance: it could be an estimator that never varies there, or rare
variation not yet seen. It is *untested* (p-value 1, flagged in ``TestResult.untested``)
unless its mean equals the reference exactly; a global verdict never rests on it. With exact
moments a coordinate of zero variance is known to be constant: it is rejected (p-value 0) when
its mean is off the reference beyond rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps
from torch import Tensor

from .accumulators import Moments
from .metrics import signs
from .numerics import coordinate_labels, float64_vector, summary_text

__all__ = ["TestResult", "holm", "unbiasedness_test", "sign_test", "required_draws", "MIN_SAMPLES",
           "HOTELLING_SAMPLES_PER_RANK", "EDGEWORTH_TOLERANCE", "VERDICTS"]

MIN_SAMPLES = 200
HOTELLING_SAMPLES_PER_RANK = 100
EDGEWORTH_TOLERANCE = 0.5
VERDICTS = ("rejected", "not rejected", "inconclusive")
_ROUNDING = 1e-12   # a constant coordinate's mean equals the reference up to this fraction of the scale


@dataclass(frozen=True)
class TestResult:
    """Per-coordinate and global outcome of a test.

    Attributes
    ----------
    statistic
        Per-coordinate t values ``[D]`` (``n - 1`` degrees of freedom; z values where the
        standard errors are known).
    p_values
        Per-coordinate p-values ``[D]``.
    adjusted
        Holm-adjusted p-values ``[D]``.
    rejected
        Coordinates rejected at ``alpha`` after Holm ``[D]`` (bool), reliable or not.
    global_p
        The global p-value (Holm's smallest adjusted p, or Hotelling's).
    global_method
        ``"holm"`` or ``"hotelling"``.
    alpha
        The level.
    untested
        Coordinates whose draws were all equal, off the reference ``[D]`` (bool):
        not tested (see the module's note); for Hotelling, ``untested_directions`` counts
        such directions of the covariance's null space.
    verdict
        ``"rejected"``, ``"not rejected"`` or ``"inconclusive"`` (see the module's docstring).
    reliable
        Coordinates whose ``n`` draws are at least their ``required_draws`` ``[D]`` (bool).
    required_draws
        Per coordinate, the draws that its skewness and kurtosis need ``[D]`` (float; 0 for an
        untested or constant coordinate).
    skewness, kurtosis
        Per coordinate, those the check used ``[D]`` (NaN where the variance is 0).
    moments_used
        ``"sample"`` (the draws' own variance, skewness and kurtosis) or ``"exact"`` (the
        estimator's exact ones, by enumeration).
    num_samples
        The draws tested.
    diagnostic
        In words: why the verdict is inconclusive, or what it rests on.
    """

    statistic: Tensor
    p_values: Tensor
    adjusted: Tensor
    rejected: Tensor
    global_p: float
    global_method: str
    alpha: float
    untested: Tensor | None = None
    untested_directions: int = 0
    verdict: str = "not rejected"
    reliable: Tensor | None = None
    required_draws: Tensor | None = None
    skewness: Tensor | None = None
    kurtosis: Tensor | None = None
    moments_used: str = "sample"
    num_samples: int = 0
    diagnostic: str = ""

    @property
    def reject(self) -> bool:
        """Whether the verdict is ``"rejected"`` (the global null rejected on reliable coordinates)."""
        return self.verdict == "rejected"

    @property
    def inconclusive(self) -> bool:
        """Whether the draws cannot tell (rejections only where the standard error is unreliable)."""
        return self.verdict == "inconclusive"

    @property
    def draws_needed(self) -> int | None:
        """Where inconclusive: the draws that would make every rejected coordinate reliable; else ``None``."""
        if not self.inconclusive or self.required_draws is None:
            return None
        unreliable = self.rejected & ~self.reliable
        return int(math.ceil(float(self.required_draws[unreliable].max()))) if bool(unreliable.any()) else None

    @property
    def pvalue(self) -> float:
        """The global p-value (``global_p``), under scipy's name."""
        return self.global_p

    def __repr__(self) -> str:
        return (f"TestResult(verdict={self.verdict!r}, global_method={self.global_method!r}, pvalue={self.global_p:.4g}, "
                f"alpha={self.alpha:g}, rejected={int(self.rejected.sum())} of {self.rejected.numel()} coordinates, "
                f"moments_used={self.moments_used!r})")

    def summary(self, coordinate_names: list[str] | None = None, max_rows: int = 20) -> str:
        """A readable account: the verdict and why, how many coordinates were rejected, unreliable and
        untested, then :meth:`to_frame` (at most ``max_rows`` rows). Print it: ``print(result.summary())``."""
        dim = self.statistic.numel()
        untested = int(self.untested.sum()) if self.untested is not None else 0
        unreliable = int((~self.reliable).sum()) if self.reliable is not None else 0
        directions = f", {self.untested_directions} untested directions" if self.untested_directions else ""
        lines = [f"Global test ({self.global_method}): p = {self.global_p:.4g}, {self.verdict} at alpha = {self.alpha:g}",
                 f"{int(self.rejected.sum())} of {dim} coordinates rejected after Holm, {unreliable} below the draws "
                 f"their tails need, {untested} untested{directions}; {self.moments_used} variance, skewness and kurtosis"]
        if self.diagnostic:
            lines.append(self.diagnostic)
        return summary_text(lines, self.to_frame(coordinate_names), max_rows)

    def to_frame(self, coordinate_names: list[str] | None = None):
        """One row per coordinate: ``coordinate, statistic, p_value, adjusted, rejected, untested, reliable,
        required_draws, skewness, kurtosis``."""
        import pandas as pd

        dim = self.statistic.numel()

        def column(values, default):
            return values.tolist() if values is not None else [default] * dim

        return pd.DataFrame({"coordinate": coordinate_labels(coordinate_names, dim), "statistic": self.statistic.tolist(),
                             "p_value": self.p_values.tolist(), "adjusted": self.adjusted.tolist(),
                             "rejected": self.rejected.tolist(), "untested": column(self.untested, False),
                             "reliable": column(self.reliable, True), "required_draws": column(self.required_draws, 0.0),
                             "skewness": column(self.skewness, math.nan), "kurtosis": column(self.kurtosis, math.nan)})


def holm(p_values: Tensor) -> Tensor:
    """Holm step-down adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(p_values.cpu(), dtype=np.float64)
    order = np.argsort(p)
    m = len(p)
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted_sorted
    return torch.from_numpy(out)


def required_draws(skewness: Tensor, kurtosis: Tensor, threshold: float,
                   tolerance: float = EDGEWORTH_TOLERANCE) -> Tensor:
    r"""Per coordinate, the draws at which the Edgeworth terms of the studentised mean change the normal
    tail at ``threshold`` by at most ``tolerance`` of itself (see the module's docstring):
    :math:`\max\{(\gamma (2x^2 + 1) r / 6\epsilon)^2,\ x\,|\kappa - 3|\,|x^2 - 3|\, r / 12\epsilon\}` with
    :math:`r = \phi(x)/\bar\Phi(x)`; 0 where the skewness is NaN (a coordinate without variance)."""
    x = float(threshold)
    ratio = math.exp(sps.norm.logpdf(x) - sps.norm.logsf(x))
    skew = (skewness.abs() * (2 * x * x + 1) * ratio / (6 * tolerance)).square()
    kurt = x * (kurtosis - 3).abs() * abs(x * x - 3) * ratio / (12 * tolerance)
    return torch.nan_to_num(torch.maximum(skew, kurt), nan=0.0)


def _check(moments: Moments, reference: Tensor, alpha: float) -> Tensor:
    if not isinstance(moments, Moments):
        raise ValueError(f"moments must be gs.Moments, got {type(moments).__name__}")
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if moments.method == "mc" and moments.num_samples < MIN_SAMPLES:
        raise ValueError(f"the tests need at least {MIN_SAMPLES} draws to be calibrated on the skewed laws of binary "
                         f"units, got num_samples = {moments.num_samples}")
    return float64_vector("reference", reference, moments.mean.shape[0])


def _exact_moments(moments: Moments, exact, full_covariance: bool = False) -> Moments | None:
    """The estimator's exact moments where the test is to use them (``exact``: ``"auto"``, True, False or Moments)."""
    if isinstance(exact, Moments):
        if exact.method != "exact" or exact.mean.shape != moments.mean.shape:
            raise ValueError(f"exact must be exact Moments of the same {moments.mean.numel()} coordinates "
                             f"(gs.exact_moments), got method={exact.method!r} with {exact.mean.numel()}")
        return exact
    if exact not in ("auto", True, False):
        raise ValueError(f"exact must be 'auto', True, False or exact Moments, got {exact!r}")
    if exact is False or moments.method == "exact":
        return None
    from .enumeration import DEFAULT_MAX_STATES
    from .exact import exact_moments

    source = moments.source
    possible = source is not None and source[1].exact_possible(source[0], source[2], DEFAULT_MAX_STATES)
    if not possible:
        if exact is True:
            raise ValueError("exact=True: these moments' estimator has no exact moments here (continuous noise, a "
                             "stateful estimator, too many outcomes, or moments that do not know their problem)")
        return None
    problem, est, options = source
    return exact_moments(problem, est, full_covariance=full_covariance, **options)


@dataclass(frozen=True)
class _Spread:
    """What a test's statistics rest on: standard errors, the law of the p-values, and the tails."""

    stderr: Tensor
    known: bool                 # standard errors known (exact variance or an estimated reference): normal law
    constant: Tensor            # coordinates of zero variance known to be constant (exact moments)
    skewness: Tensor
    kurtosis: Tensor
    used: str


def _spread(moments: Moments, exact: Moments | None, reference_stderr: Tensor | None) -> _Spread:
    n = moments.num_samples
    source = exact if exact is not None else moments
    var = exact.var if exact is not None else moments.var
    se2 = var / n if moments.method == "mc" else torch.zeros_like(var)
    if reference_stderr is not None:
        se2 = se2 + reference_stderr.square()
    constant = (se2 == 0) & (exact is not None or moments.method == "exact")
    return _Spread(se2.sqrt(), exact is not None or reference_stderr is not None or moments.method == "exact", constant,
                   source.skewness, source.kurtosis, "exact" if exact is not None or moments.method == "exact" else "sample")


def _t(diff: Tensor, spread: _Spread, scale: float) -> tuple[Tensor, Tensor]:
    """``t`` per coordinate and the untested mask (zero standard error, mean off the reference, not known constant);
    a known-constant coordinate gets ``t`` 0 on the reference (up to rounding) and infinity off it."""
    se = spread.stderr
    zero = se == 0
    off = diff.abs() > _ROUNDING * scale
    t = diff / torch.where(zero, 1.0, se)
    t = torch.where(zero, torch.where(spread.constant & off, diff.sign() * torch.inf, 0.0), t)
    return t, zero & off & ~spread.constant


def _p_two_sided(t: Tensor, n: int, known: bool) -> Tensor:
    law = sps.norm if known else sps.t(max(n - 1, 1))
    return torch.from_numpy(2 * law.sf(np.abs(t.numpy())))


def unbiasedness_test(moments: Moments, reference: Tensor, alpha: float = 0.05, global_test: str = "holm", *,
                      reference_stderr: Tensor | None = None, exact="auto") -> TestResult:
    """Test H0: ``E[g_hat] = reference``, per coordinate (two-sided, Holm) and globally; the verdict says when the
    draws cannot tell (see the module's docstring).

    Parameters
    ----------
    moments
        Monte Carlo moments (at least :data:`MIN_SAMPLES` draws), or exact ones (then the bias is known:
        a coordinate is rejected, with p-value 0, when its mean is off the reference beyond rounding, or
        beyond the reference's own error).
    reference
        The gradient ``[D]`` the estimator claims to estimate.
    alpha
        The family-wise level.
    global_test
        ``"holm"`` (the smallest Holm-adjusted p-value) or ``"hotelling"`` (needs the full covariance,
        ``full_covariance=True``, and ``n >= HOTELLING_SAMPLES_PER_RANK * r`` for its rank ``r``).
    reference_stderr
        The reference's standard error where it is itself an estimate (independent of the draws): added
        to each coordinate's standard error in quadrature (the p-values then use the normal law).
    exact
        ``"auto"`` (the estimator's exact moments where they exist: discrete noise, outcomes within
        :data:`~gradstats.enumeration.DEFAULT_MAX_STATES`, moments from :func:`gradstats.moments`), ``True``
        (require them), ``False`` (the draws alone) or exact :class:`Moments` of the same estimator.
    """
    reference = _check(moments, reference, alpha)
    if global_test not in ("hotelling", "holm"):
        raise ValueError(f"global_test must be 'hotelling' or 'holm', got {global_test!r}")
    if global_test == "hotelling" and moments.method != "mc":
        raise ValueError("global_test='hotelling' tests Monte Carlo moments; exact moments give the bias itself")
    if reference_stderr is not None:
        reference_stderr = float64_vector("reference_stderr", reference_stderr, moments.mean.shape[0])
        if bool((reference_stderr < 0).any()):
            raise ValueError("reference_stderr must be >= 0")
    exact_m = _exact_moments(moments, exact, full_covariance=global_test == "hotelling")
    spread = _spread(moments, exact_m, reference_stderr)
    n = moments.num_samples or 0
    diff = moments.mean - reference
    scale = max(float(reference.abs().max()), float(moments.mean.abs().max()), 1e-300)
    t, untested = _t(diff, spread, scale)
    p = _p_two_sided(t, n, spread.known)
    adjusted = holm(p)
    tested = int((spread.stderr > 0).sum()) or 1
    needed = required_draws(spread.skewness, spread.kurtosis, sps.norm.isf(alpha / (2 * tested)))
    reliable = needed <= n if moments.method == "mc" else torch.ones_like(untested)
    rejected = adjusted < alpha
    directions = 0
    if global_test == "holm":
        global_p = float(adjusted.min())
        rejects, rests_on = bool((rejected & reliable).any()), rejected & ~reliable
    else:
        cov = moments.cov if exact_m is None else exact_m.cov
        if cov is None:
            raise ValueError("global_test='hotelling' needs the full covariance: compute moments with full_covariance=True")
        global_p, directions = _hotelling(diff, cov, n, known=exact_m is not None, reference_var=
                                          None if reference_stderr is None else reference_stderr.square())
        tested_mask = spread.stderr > 0
        rests_on = tested_mask & ~reliable if global_p < alpha else torch.zeros_like(reliable)
        rejects = global_p < alpha and not bool(rests_on.any())
    verdict, diagnostic = _verdict(rejects, rests_on, global_p < alpha if global_test == "hotelling" else bool(
        rejected.any()), needed, spread, n)
    return TestResult(t, p, adjusted, rejected, global_p, global_test, alpha, untested, directions, verdict, reliable,
                      needed, spread.skewness, spread.kurtosis, spread.used, n, diagnostic)


def _verdict(rejects: bool, rests_on: Tensor, any_rejection: bool, needed: Tensor, spread: _Spread, n: int
             ) -> tuple[str, str]:
    if rejects:
        return "rejected", ""
    if not any_rejection:
        return "not rejected", ""
    count = int(rests_on.sum())
    worst = float(needed[rests_on].max())
    skew = float(spread.skewness[rests_on].abs().max())
    kurt = float(spread.kurtosis[rests_on].max())
    return "inconclusive", (
        f"inconclusive: heavy tails, n too small: the rejection rests on {count} coordinate(s) whose {spread.used} "
        f"skewness (up to {skew:.3g}) and kurtosis (up to {kurt:.3g}) make the normal approximation unreliable below "
        f"{math.ceil(worst):,} draws (Edgeworth terms over {EDGEWORTH_TOLERANCE:g} of the tail at the decision "
        f"threshold); {n:,} draws were given")


def _hotelling(diff: Tensor, cov: Tensor, n: int, known: bool = False, reference_var: Tensor | None = None
               ) -> tuple[float, int]:
    """Hotelling's p-value on the covariance's range (chi-square where the covariance is known), and the directions
    off it where the mean is off the reference."""
    spread = cov / n if n else cov
    if reference_var is not None:
        spread = spread + torch.diag(reference_var)
    evals, evecs = torch.linalg.eigh(spread)
    tol = evals.abs().max() * spread.shape[0] * torch.finfo(torch.float64).eps if evals.numel() else 0.0
    keep = evals > tol
    r = int(keep.sum())
    proj = evecs.T @ diff
    off_range = proj[~keep].abs() > 1e-12 * max(1.0, float(diff.abs().max()))
    if r == 0:
        return 1.0, int(off_range.sum())
    if not known and n < HOTELLING_SAMPLES_PER_RANK * r:
        raise ValueError(f"Hotelling's T^2 is calibrated here from about {HOTELLING_SAMPLES_PER_RANK} draws per "
                         f"dimension of the covariance's range: {HOTELLING_SAMPLES_PER_RANK * r:,} draws for rank {r}, "
                         f"got {n:,}; use global_test='holm' or more draws")
    t2 = float((proj[keep].square() / evals[keep]).sum())
    if known or reference_var is not None:
        return float(sps.chi2.sf(t2, r)), int(off_range.sum())
    f = (n - r) / (r * (n - 1)) * t2
    return float(sps.f.sf(f, r, n - r)), int(off_range.sum())


def sign_test(moments: Moments, reference: Tensor, alpha: float = 0.05, alternative: str = "wrong", *,
              exact="auto") -> TestResult:
    """One-sided per-coordinate test of the sign of ``E[g_hat_j]`` against ``sign(reference_j)``.

    ``alternative="wrong"``: H0 ``E[g_hat_j] sign(g_j) >= 0``, rejected when the
    mean points the wrong way; ``"right"``: H0 ``E[g_hat_j] sign(g_j) <= 0``,
    rejected when the right sign is established. Coordinates with ``g_j = 0``
    (up to :data:`~gradstats.numerics.SIGN_TOLERANCE` of the largest) are not
    tested. The global p-value is Holm's smallest adjusted one; the verdict and ``exact`` are as in
    :func:`unbiasedness_test` (the threshold of the tail check is one-sided).
    """
    reference = _check(moments, reference, alpha)
    if alternative not in ("wrong", "right"):
        raise ValueError(f"alternative must be 'wrong' or 'right', got {alternative!r}")
    exact_m = _exact_moments(moments, exact)
    spread = _spread(moments, exact_m, None)
    n = moments.num_samples or 0
    s = signs(reference)   # rounding-level coordinates count as 0 and are not tested
    scale = max(float(moments.mean.abs().max()), 1e-300)
    t, untested = _t(moments.mean * s, spread, scale)
    law = sps.norm if spread.known else sps.t(max(n - 1, 1))
    tail = law.cdf if alternative == "wrong" else law.sf
    p = torch.from_numpy(tail(t.numpy()))
    p = torch.where((s == 0) | untested, 1.0, p)
    adjusted = holm(p)
    tested = int(((s != 0) & (spread.stderr > 0)).sum()) or 1
    needed = required_draws(spread.skewness, spread.kurtosis, sps.norm.isf(alpha / tested))
    reliable = needed <= n if moments.method == "mc" else torch.ones_like(untested)
    rejected = adjusted < alpha
    rejects = bool((rejected & reliable).any())
    verdict, diagnostic = _verdict(rejects, rejected & ~reliable, bool(rejected.any()), needed, spread, n)
    return TestResult(t, p, adjusted, rejected, float(adjusted.min()), "holm", alpha, untested & (s != 0), 0, verdict,
                      reliable, needed, spread.skewness, spread.kurtosis, spread.used, n, diagnostic)
