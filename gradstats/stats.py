r"""Hypothesis tests on Monte Carlo moments: unbiasedness and sign, with multiple-comparison control.

Per coordinate, :math:`z_j = (\bar g_j - g_j) / \mathrm{se}_j` is compared with the
standard normal (the central limit theorem for ``n`` i.i.d. draws). The
family of ``D`` coordinates is controlled with Holm's step-down procedure
(Holm 1979, "A simple sequentially rejective multiple test procedure"), whose
global test (reject if any adjusted p-value is below alpha) controls the
family-wise error rate whatever the dependence between coordinates. The
Hotelling :math:`T^2` test, :math:`T^2 = n\,d^\top S^{+} d` with
:math:`d = \bar g - g` and ``S`` the sample covariance restricted to its
numerical range of rank ``r``, uses the dependence: under the null and
normality :math:`\frac{n - r}{r (n - 1)} T^2 \sim F(r, n - r)`. A component of
``d`` outside the range of ``S`` (a coordinate the estimator never varies,
off its reference) rejects with p = 0.

Coordinates with zero sample variance and zero error are not tested (p = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps
from torch import Tensor

from .accumulators import Moments

__all__ = ["TestResult", "holm", "unbiasedness_test", "sign_test"]


@dataclass(frozen=True)
class TestResult:
    """Per-coordinate and global outcome of a test.

    Attributes:
        statistic: per-coordinate z values ``[D]``.
        p_values: per-coordinate p-values ``[D]``.
        adjusted: Holm-adjusted p-values ``[D]``.
        rejected: coordinates rejected at ``alpha`` after Holm ``[D]`` (bool).
        global_p: the global p-value (Holm's smallest adjusted p, or Hotelling's).
        global_method: ``"holm"`` or ``"hotelling"``.
        alpha: the level.
    """

    statistic: Tensor
    p_values: Tensor
    adjusted: Tensor
    rejected: Tensor
    global_p: float
    global_method: str
    alpha: float

    @property
    def reject(self) -> bool:
        """Whether the global null is rejected at ``alpha``."""
        return self.global_p < self.alpha


def holm(p_values: Tensor) -> Tensor:
    """Holm step-down adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(p_values.cpu(), dtype=np.float64)
    order = np.argsort(p)
    m = len(p)
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted_sorted
    return torch.from_numpy(out)


def _check(moments: Moments, reference: Tensor, alpha: float) -> Tensor:
    if moments.method != "mc" or moments.mean_stderr is None:
        raise ValueError("statistical tests need Monte Carlo moments (method='mc'); exact moments need no test")
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    reference = torch.as_tensor(reference, dtype=torch.float64)
    if reference.shape != moments.mean.shape:
        raise ValueError(f"reference must have shape {tuple(moments.mean.shape)}, got {tuple(reference.shape)}")
    return reference


def _z(diff: Tensor, se: Tensor) -> Tensor:
    zero = se == 0
    z = diff / torch.where(zero, 1.0, se)
    return torch.where(zero, torch.where(diff == 0, 0.0, diff.sign() * torch.inf), z)


def unbiasedness_test(moments: Moments, reference: Tensor, alpha: float = 0.05, global_test: str = "hotelling"
                      ) -> TestResult:
    """Test H0: ``E[g_hat] = reference``, per coordinate (two-sided z, Holm) and globally.

    ``global_test="hotelling"`` needs the full covariance (``full_covariance=True``);
    ``"holm"`` uses the smallest Holm-adjusted p-value.
    """
    reference = _check(moments, reference, alpha)
    if global_test not in ("hotelling", "holm"):
        raise ValueError(f"global_test must be 'hotelling' or 'holm', got {global_test!r}")
    diff = moments.mean - reference
    z = _z(diff, moments.mean_stderr)
    p = torch.from_numpy(2 * sps.norm.sf(np.abs(z.numpy())))
    adjusted = holm(p)
    if global_test == "holm":
        global_p = float(adjusted.min())
    else:
        if moments.cov is None:
            raise ValueError("global_test='hotelling' needs the full covariance: compute moments with full_covariance=True")
        global_p = _hotelling(diff, moments.cov, moments.num_samples)
    return TestResult(z, p, adjusted, adjusted < alpha, global_p, global_test, alpha)


def _hotelling(diff: Tensor, cov: Tensor, n: int) -> float:
    evals, evecs = torch.linalg.eigh(cov)
    tol = evals.abs().max() * cov.shape[0] * torch.finfo(torch.float64).eps if evals.numel() else 0.0
    keep = evals > tol
    r = int(keep.sum())
    proj = evecs.T @ diff
    off_range = proj[~keep]
    if off_range.numel() and float(off_range.abs().max()) > 1e-12 * max(1.0, float(diff.abs().max())):
        return 0.0
    if r == 0 or n <= r:
        return 1.0
    t2 = n * float((proj[keep].square() / evals[keep]).sum())
    f = (n - r) / (r * (n - 1)) * t2
    return float(sps.f.sf(f, r, n - r))


def sign_test(moments: Moments, reference: Tensor, alpha: float = 0.05, alternative: str = "wrong") -> TestResult:
    """One-sided per-coordinate test of the sign of ``E[g_hat_j]`` against ``sign(reference_j)``.

    ``alternative="wrong"``: H0 ``E[g_hat_j] sign(g_j) >= 0``, rejected when the
    mean points the wrong way; ``"right"``: H0 ``E[g_hat_j] sign(g_j) <= 0``,
    rejected when the right sign is established. Coordinates with ``g_j = 0``
    are not tested. The global p-value is Holm's smallest adjusted one.
    """
    reference = _check(moments, reference, alpha)
    if alternative not in ("wrong", "right"):
        raise ValueError(f"alternative must be 'wrong' or 'right', got {alternative!r}")
    s = reference.sign()
    z = _z(moments.mean * s, moments.mean_stderr)
    tail = sps.norm.cdf if alternative == "wrong" else sps.norm.sf
    p = torch.from_numpy(tail(z.numpy()))
    p = torch.where(s == 0, 1.0, p)
    adjusted = holm(p)
    return TestResult(z, p, adjusted, adjusted < alpha, float(adjusted.min()), "holm", alpha)
