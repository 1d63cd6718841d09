r"""Drop-in torch functions: a sample whose backward pass is the estimator.

For training code. Each takes pre-activations ``a`` and either explicit
uniforms ``u`` (same shape) or a ``torch.Generator``; none touches the global
RNG unless neither is given. Estimators of arXiv:1308.3432 (Bengio, Léonard &
Courville 2013):

* :func:`straight_through` (sec. 4, Eq. 13; A.4 for ``variant="sigmoid"``):
  forward :math:`h = 1[u < \sigma(a)]`, backward :math:`dL/da = dL/dh` (or
  times :math:`\sigma'(a)`); written as ``hard + (soft - soft.detach())``.
* :func:`sts` (sec. 2.2, Eq. 2): :math:`h = b\sqrt{\sigma(a)}`, ``b`` detached.
* :func:`noisy_rectifier` (sec. 2.1): :math:`h = \max(0, a + z)`.
* :func:`reinforce` (sec. 3, Theorem 1): the sample and a surrogate whose
  gradient is :math:`(h - p)(L - \bar L)`; REINFORCE needs the loss, so its
  backward pass starts from ``surrogate(loss)``, not from ``h``.
* :class:`RunningBaseline`: the paper's two running averages per unit for
  Eq. 10, as a pure state object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .units import BINARY, STS, noise_quantile

__all__ = ["straight_through", "sts", "noisy_rectifier", "reinforce", "RunningBaseline"]


def _uniforms(a: Tensor, u: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if u is not None:
        if u.shape != a.shape:
            raise ValueError(f"u must have a's shape {tuple(a.shape)}, got {tuple(u.shape)}")
        return u.to(a)
    return torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)


def straight_through(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                     variant: str = "identity") -> Tensor:
    """Binary sample with the straight-through backward pass (``variant`` ``"identity"`` or ``"sigmoid"``)."""
    if variant not in ("identity", "sigmoid"):
        raise ValueError(f"variant must be 'identity' or 'sigmoid', got {variant!r}")
    hard = BINARY.sample(a.detach(), _uniforms(a, u, generator))[1]
    soft = a if variant == "identity" else torch.sigmoid(a)
    return hard + (soft - soft.detach())


def sts(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """STS sample ``b * sqrt(sigmoid(a))``, ``b ~ Bernoulli(sqrt(sigmoid(a)))`` detached."""
    b = STS.sample(a.detach(), _uniforms(a, u, generator))[0]
    return STS.value(a, b)


def noisy_rectifier(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                    noise: str = "gaussian", scale: float = 1.0) -> Tensor:
    """``max(0, a + z)`` with ``z = scale * F^-1(u)``, ``F`` Gaussian or logistic."""
    return F.relu(a + noise_quantile(_uniforms(a, u, generator), noise, scale))


def reinforce(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Callable[..., Tensor]]:
    r"""Binary sample ``h`` (no gradient) and ``surrogate(loss, baseline=0.0)``.

    ``loss`` has shape ``h.shape[:-1]`` (one value per row); ``baseline`` is a
    number or one per unit (last dimension). The surrogate is
    :math:`\sum (\log P(h \mid a)) (L - \bar L)` with ``L`` detached, so its
    gradient with respect to ``a`` is :math:`(h - \sigma(a))(L - \bar L)`,
    summed over rows.
    """
    h = BINARY.sample(a.detach(), _uniforms(a, u, generator))[1]

    def surrogate(loss: Tensor, baseline: float | Tensor = 0.0) -> Tensor:
        if loss.shape != h.shape[:-1]:
            raise ValueError(f"loss must have shape {tuple(h.shape[:-1])} (one value per row of h), got {tuple(loss.shape)}")
        centred = loss.detach()[..., None] - torch.as_tensor(baseline, dtype=a.dtype, device=a.device)
        return (BINARY.log_prob(a, h) * centred).sum()

    return h, surrogate


@dataclass(frozen=True)
class RunningBaseline:
    r"""The paper's running averages for Eq. 10 (sec. 3): per unit, exponential moving
    averages of :math:`(h_i - p_i)^2 L` and of :math:`(h_i - p_i)^2`; the baseline is
    their ratio (0 before any update). Pure: :meth:`update` returns a new state.
    """

    numerator: Tensor
    denominator: Tensor
    decay: float

    @classmethod
    def zeros(cls, num_units: int, decay: float = 0.99) -> RunningBaseline:
        if not (isinstance(decay, (int, float)) and math.isfinite(decay) and 0 <= decay < 1):
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        z = torch.zeros(num_units, dtype=torch.float64)
        return cls(z, z.clone(), float(decay))

    def value(self) -> Tensor:
        den = self.denominator
        return torch.where(den > 0, self.numerator / torch.where(den > 0, den, 1.0), 0.0)

    def update(self, h: Tensor, p: Tensor, loss: Tensor) -> RunningBaseline:
        """Fold in a minibatch: ``h``, ``p`` are ``[B, n]``, ``loss`` is ``[B]``."""
        sq = (h.detach() - p.detach()).to(torch.float64).square()
        num = (sq * loss.detach().to(torch.float64)[:, None]).mean(0)
        d = self.decay
        return RunningBaseline(d * self.numerator + (1 - d) * num.cpu(),
                               d * self.denominator + (1 - d) * sq.mean(0).cpu(), d)
