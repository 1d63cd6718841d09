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

Estimators of later work (definitions and references in
:mod:`gradstats.estimators.later_work`), on one layer of units:

* :func:`gumbel_sigmoid` and :func:`st_gumbel` (relaxed sample; hard sample with
  the relaxed backward pass), :func:`reinmax` (hard sample, ReinMax backward);
* :func:`arm`, :func:`disarm`, :func:`reinforce_loo`, :func:`local_expectation`:
  they evaluate the loss at several samples, so they take ``loss_fn`` and return ``(h, surrogate)``, a
  scalar whose gradient with respect to ``a`` is the estimate (summed over rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .numerics import safe_divide
from .units import (
    BINARY,
    STS,
    antithetic,
    binary_residual,
    check_temperature,
    flip_each,
    local_derivative_like,
    noise_quantile,
    reinmax_local_derivative,
    relaxed_local_derivative,
    relaxed_with_derivative,
    sigmoid_derivative,
    sts_local_derivative,
)

__all__ = ["straight_through", "sts", "noisy_rectifier", "reinforce", "RunningBaseline", "gumbel_sigmoid",
           "st_gumbel", "reinmax", "arm", "disarm", "reinforce_loo", "local_expectation", "pathwise"]


def _uniforms(a: Tensor, u: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if u is not None:
        if u.shape != a.shape:
            raise ValueError(f"u must have a's shape {tuple(a.shape)}, got {tuple(u.shape)}")
        return u.to(a)
    return torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)


def _with_local_derivative(value: Tensor, a: Tensor, local: Tensor) -> Tensor:
    """``value`` forward; backward ``dL/da = dL/dh * local`` (``local`` computed in a stable form, held fixed)."""
    return value.detach() + (a - a.detach()) * local.detach()


def straight_through(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                     variant: str = "identity") -> Tensor:
    """Binary sample with the straight-through backward pass (``variant`` ``"identity"`` or ``"sigmoid"``)."""
    if variant not in ("identity", "sigmoid"):
        raise ValueError(f"variant must be 'identity' or 'sigmoid', got {variant!r}")
    hard = BINARY.sample(a.detach(), _uniforms(a, u, generator))[1]
    if variant == "identity":
        return hard + (a - a.detach())
    return _with_local_derivative(hard, a, sigmoid_derivative(a.detach()))


def sts(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """STS sample ``b * sqrt(sigmoid(a))``, ``b ~ Bernoulli(sqrt(sigmoid(a)))`` detached."""
    ad = a.detach()
    b = STS.sample(ad, _uniforms(a, u, generator))[0]
    return _with_local_derivative(STS.value(ad, b), a, sts_local_derivative(ad, b))


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
        bar = torch.as_tensor(baseline, dtype=a.dtype, device=a.device)
        if bar.ndim > 1 or (bar.ndim == 1 and bar.shape[0] != h.shape[-1]):
            raise ValueError(f"baseline must be a number or {h.shape[-1]} numbers (one per unit), got shape {tuple(bar.shape)}")
        centred = loss.detach()[..., None] - bar
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
        return safe_divide(self.numerator, self.denominator)

    def update(self, h: Tensor, p: Tensor, loss: Tensor) -> RunningBaseline:
        """Fold in a minibatch: ``h``, ``p`` are ``[B, n]``, ``loss`` is ``[B]``."""
        sq = (h.detach() - p.detach()).to(torch.float64).square()
        num = (sq * loss.detach().to(torch.float64)[:, None]).mean(0)
        d = self.decay
        return RunningBaseline(d * self.numerator + (1 - d) * num.cpu(),
                               d * self.denominator + (1 - d) * sq.mean(0).cpu(), d)


def gumbel_sigmoid(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                   temperature: float = 1.0) -> Tensor:
    """Relaxed sample ``sigmoid((a + l) / temperature)``, ``l = log(1 - u) - log(u)``, differentiable in ``a``."""
    temperature = check_temperature(temperature)
    h, derivative = relaxed_with_derivative(a.detach(), _uniforms(a, u, generator), temperature)
    return _with_local_derivative(h, a, derivative)


def st_gumbel(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
              temperature: float = 1.0) -> Tensor:
    """Hard sample ``1[u < sigmoid(a)]`` forward, the relaxed sample's gradient backward."""
    temperature = check_temperature(temperature)
    uu, ad = _uniforms(a, u, generator), a.detach()
    return _with_local_derivative(BINARY.sample(ad, uu)[1], a, relaxed_local_derivative(ad, uu, temperature))


def reinmax(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
            temperature: float = 1.0) -> Tensor:
    r"""Hard sample forward; backward :math:`dL/db\,(2r(1 - r) - p(1 - p)/2)`, :math:`r = (b + \sigma(a/\tau))/2`."""
    temperature = check_temperature(temperature)
    ad = a.detach()
    b = BINARY.sample(ad, _uniforms(a, u, generator))[1]
    return _with_local_derivative(b, a, reinmax_local_derivative(ad, b, temperature))


def _surrogate(a: Tensor, delta: Tensor) -> Tensor:
    return (delta.detach() * a).sum()


def _check_rows(loss: Tensor, h: Tensor) -> Tensor:
    if loss.shape != h.shape[:-1]:
        raise ValueError(f"loss_fn must return one value per row of h, shape {tuple(h.shape[:-1])}; got {tuple(loss.shape)}")
    return loss.detach()


def arm(a: Tensor, loss_fn: Callable[[Tensor], Tensor], *, u: Tensor | None = None,
        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """ARM: sample ``b`` and a surrogate with gradient ``(f(b~) - f(b)) (u - 1/2)``, ``b~ = 1[1 - u < p]``."""
    uu = _uniforms(a, u, generator)
    ad = a.detach()
    b, b_anti = BINARY.sample(ad, uu)[1], antithetic(ad, uu)
    main, anti = _check_rows(loss_fn(b), b), _check_rows(loss_fn(b_anti), b)
    return b, _surrogate(a, (anti - main)[..., None] * (uu - 0.5))


def disarm(a: Tensor, loss_fn: Callable[[Tensor], Tensor], *, u: Tensor | None = None,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """DisARM: sample ``b`` and a surrogate with gradient ``(f(b) - f(b~))/2 (-1)^b~ 1[b != b~] sigmoid(|a|)``."""
    uu = _uniforms(a, u, generator)
    ad = a.detach()
    b, b_anti = BINARY.sample(ad, uu)[1], antithetic(ad, uu)
    main, anti = _check_rows(loss_fn(b), b), _check_rows(loss_fn(b_anti), b)
    sign = torch.where(b_anti > 0.5, -1.0, 1.0).to(a.dtype)
    delta = 0.5 * (main - anti)[..., None] * sign * (b != b_anti).to(a.dtype) * torch.sigmoid(ad.abs())
    return b, _surrogate(a, delta)


def reinforce_loo(a: Tensor, loss_fn: Callable[[Tensor], Tensor], k: int = 2, *, u: Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Leave-one-out REINFORCE: ``k`` samples ``[k, *a.shape]`` and a surrogate with gradient
    ``1/(k-1) sum_j (f_j - mean f) (b_j - p)`` (``u``, if given, has shape ``[k, *a.shape]``)."""
    if not (isinstance(k, int) and k >= 2):
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    shape = (k, *a.shape)
    if u is not None and u.shape != shape:
        raise ValueError(f"u must have shape {shape}, got {tuple(u.shape)}")
    uu = u.to(a) if u is not None else torch.rand(shape, generator=generator, dtype=a.dtype, device=a.device)
    b = BINARY.sample(a.detach().expand(shape), uu)[1]
    loss = _check_rows(loss_fn(b), b)
    centred = (loss - loss.mean(0, keepdim=True)) / (k - 1)
    delta = (binary_residual(a.detach().expand(shape), b) * centred[..., None]).sum(0)
    return b, _surrogate(a, delta)


def local_expectation(a: Tensor, loss_fn: Callable[[Tensor], Tensor], *, u: Tensor | None = None,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Local expectation: sample ``b`` and a surrogate with gradient ``sigma'(a_i) (f(b_i = 1) - f(b_i = 0))``,
    the rest of ``b`` held fixed. ``loss_fn`` is called once on ``b`` and once on ``[N, *a.shape]``
    (row ``i`` with unit ``i`` flipped): ``1 + N`` loss evaluations per example."""
    ad = a.detach()
    b = BINARY.sample(ad, _uniforms(a, u, generator))[1]
    flipped = flip_each(b, axis=0)                                              # [N, *a.shape]
    main, flips = _check_rows(loss_fn(b), b), _check_rows(loss_fn(flipped), flipped)
    difference = (1 - 2 * b) * (torch.movedim(flips, 0, -1) - main[..., None])   # f(b_i = 1) - f(b_i = 0)
    return b, _surrogate(a, sigmoid_derivative(ad) * difference)


def pathwise(a: Tensor, local_derivative: Callable[[Tensor, Tensor], Tensor | float], *, u: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """The drop-in of a :func:`gradstats.estimators.pathwise` estimator: the hard sample ``b = 1[u < sigmoid(a)]``,
    whose backward pass multiplies ``dL/db`` by ``local_derivative(a, b)`` (held fixed)."""
    ad = a.detach()
    b = BINARY.sample(ad, _uniforms(a, u, generator))[1]
    return _with_local_derivative(b, a, local_derivative_like(local_derivative(ad, b), a))
