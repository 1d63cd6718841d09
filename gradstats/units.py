r"""Stochastic neurons as functions of explicit noise.

Every unit takes its pre-activation ``a`` and uniforms ``u`` in [0, 1) of the
same shape, so that units driven by the same ``u`` share their randomness
(common random numbers) and a run replays exactly from its uniforms.

Units of Bengio, Léonard & Courville (2013), "Estimating or Propagating
Gradients Through Stochastic Neurons for Conditional Computation",
arXiv:1308.3432:

* binary stochastic neuron (sec. 3, Eq. 3): :math:`h = 1[u < \sigma(a)]`, so
  :math:`P(h = 1) = \sigma(a)`. The paper prints :math:`1[z > \mathrm{sigm}(a)]`,
  which would give :math:`P(h = 1) = 1 - \sigma(a)`; its proofs use
  :math:`P(h = 1) = \sigma(a)`, so the printed inequality is a typo and we use
  the one the proofs need.
* stochastic times smooth, STS (sec. 2.2, Eq. 2): :math:`p = \sigma(a)`,
  :math:`b = 1[u < \sqrt{p}]`, :math:`h = b \sqrt{p}`.
* noisy rectifier (sec. 2.1): :math:`h = \max(0, a + z)` with zero-mean noise
  :math:`z = s F^{-1}(u)`, ``F`` the standard Gaussian or logistic CDF.

The two discrete units are also described by a :class:`BernoulliUnit` (the law
of the indicator ``b`` and the value ``h(a, b)``), which the exact engine uses
to enumerate states.

Categorical units (:class:`CategoricalUnit`) take ``K`` logits each, laid out
unit-major in the last dimension (``[..., N * K]``), and give a one-hot ``h``:
the Gumbel-max sample :math:`h = \mathrm{onehot}(\arg\max_c\, a_c + G_c)`,
:math:`G_c = -\log(-\log u_c)`, is class ``c`` with probability
:math:`\mathrm{softmax}(a)_c` (Gumbel 1954; Maddison, Tarlow & Minka 2014), so
every estimator of a categorical unit draws its sample from the same ``K``
uniforms (common random numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "BernoulliUnit",
    "CategoricalUnit",
    "gumbel_noise",
    "grouped_softmax",
    "softmax_jvp",
    "BINARY",
    "STS",
    "binary",
    "sts",
    "noisy_rectifier",
    "noise_quantile",
    "NOISES",
    "binary_residual",
    "check_temperature",
    "relaxed",
    "sigmoid_derivative",
    "sqrt_sigmoid",
    "antithetic",
    "logistic_noise",
    "sts_local_derivative",
    "relaxed_local_derivative",
    "relaxed_with_derivative",
    "conditional_logistic_noise",
    "conditional_noise_slope",
    "local_derivative_like",
    "flip_each",
    "one_hot_of",
]


def binary(a: Tensor, u: Tensor) -> Tensor:
    r"""Binary stochastic neuron :math:`h = 1[u < \sigma(a)]` (Eq. 3, corrected)."""
    return BINARY.sample(a, u)[1]


def sts(a: Tensor, u: Tensor) -> Tensor:
    r"""STS unit (Eq. 2): :math:`h = 1[u < \sqrt{\sigma(a)}]\,\sqrt{\sigma(a)}`.

    The indicator is treated as a constant by backpropagation, so
    :math:`\partial h / \partial a = b\,\sqrt{p}\,(1 - p) / 2`.
    """
    return STS.sample(a, u)[1]


def local_derivative_like(value: Tensor | float, a: Tensor) -> Tensor:
    """A surrogate derivative returned as a tensor or a number, as a tensor of ``a``'s shape, dtype and device."""
    return torch.as_tensor(value, dtype=a.dtype, device=a.device).expand_as(a)


def flip_each(h: Tensor, axis: int) -> Tensor:
    """Binary ``h [..., n]`` with one unit flipped at a time (``h_i -> 1 - h_i``): the ``n`` flips stacked along a
    new dimension at ``axis`` (``0`` gives ``[n, ..., n]``; ``-2`` gives ``[..., n, n]``)."""
    n = h.shape[-1]
    stacked = h.unsqueeze(axis)
    shape = [1] * stacked.ndim
    shape[axis], shape[-1] = n, n
    eye = torch.eye(n, dtype=h.dtype, device=h.device).reshape(shape)
    return stacked + eye - 2 * stacked * eye


def binary_residual(a: Tensor, h: Tensor) -> Tensor:
    r""":math:`h - \sigma(a)` for binary ``h``, as :math:`h\,\sigma(-a) - (1 - h)\,\sigma(a)`.

    The plain difference rounds :math:`1 - \sigma(a)` to 0 for large ``a``; this
    form keeps every digit (it is also :math:`d \log P(h \mid a) / da`).
    """
    return torch.where(h > 0.5, torch.sigmoid(-a), -torch.sigmoid(a))


def sigmoid_derivative(a: Tensor) -> Tensor:
    r""":math:`\sigma'(a) = \sigma(a)\,\sigma(-a)`, accurate for saturated ``a`` (``torch.sigmoid``'s
    backward pass, :math:`y (1 - y)`, is 0 from ``a`` of about 37 in float64 and 17 in float32)."""
    return torch.sigmoid(a) * torch.sigmoid(-a)


def sqrt_sigmoid(a: Tensor) -> Tensor:
    r""":math:`\sqrt{\sigma(a)} = \exp(\log\sigma(a) / 2)`: finite, with a finite derivative
    :math:`\sqrt{\sigma(a)}\,\sigma(-a)/2`, where :math:`\sigma(a)` itself underflows."""
    return torch.exp(0.5 * F.logsigmoid(a))


def antithetic(a: Tensor, u: Tensor) -> Tensor:
    r"""The antithetic sample :math:`\tilde b = 1[1 - u < \sigma(a)] = 1[u > \sigma(-a)]` (ARM, DisARM),
    written with :math:`\sigma(-a)` so that no :math:`1 - \sigma(a)` is rounded."""
    return (u > torch.sigmoid(-a)).to(a.dtype)


def logistic_noise(u: Tensor) -> Tensor:
    r""":math:`\ell = \log(1 - u) - \log u`, logistic, so that :math:`1[a + \ell > 0] = 1[u < \sigma(a)]`."""
    return torch.log1p(-u) - torch.log(u)


def sts_local_derivative(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\partial (b \sqrt{\sigma(a)}) / \partial a = b\,\sqrt{\sigma(a)}\,\sigma(-a) / 2` with ``b`` held fixed
    (the STS unit's backward pass, sec. 2.2 of arXiv:1308.3432)."""
    return b * sqrt_sigmoid(a) * torch.sigmoid(-a) / 2


def relaxed_with_derivative(a: Tensor, u: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    r"""The binary Concrete unit :math:`\sigma(z)`, :math:`z = (a + \ell) / \tau`, and its derivative
    :math:`\partial \sigma(z) / \partial a = \sigma(z)\,\sigma(-z) / \tau`, in a form that stays exact when
    :math:`\sigma(z)` rounds to 1."""
    z = (a + logistic_noise(u)) / temperature
    h = torch.sigmoid(z)
    return h, h * torch.sigmoid(-z) / temperature


def relaxed_local_derivative(a: Tensor, u: Tensor, temperature: float) -> Tensor:
    r""":math:`\partial \sigma(z) / \partial a` of :func:`relaxed_with_derivative` alone."""
    return relaxed_with_derivative(a, u, temperature)[1]


def conditional_logistic_noise(a: Tensor, b: Tensor, v: Tensor) -> Tensor:
    r"""Logistic noise :math:`\tilde\ell` drawn given the binary sample ``b``, reparameterised by uniforms ``v``.

    ``b = 1[a + \ell > 0]`` for :math:`\ell = \log(1 - u) - \log u`, so given ``b`` the uniform ``u`` is uniform
    on :math:`[0, p)` (``b = 1``) or :math:`[p, 1)` (``b = 0``): :math:`\tilde u = v p` or :math:`p + v(1 - p)`
    (Tucker et al. 2017, REBAR, appendix; Grathwohl et al. 2018, appendix B, "Bernoulli", with their uniform
    :math:`1 - u`; the conditional Gumbel of Paulus et al. 2021 for two classes), and
    :math:`\tilde\ell = \log(1 - \tilde u) - \log \tilde u`. Neither :math:`1 - p` nor :math:`1 - \tilde u` is
    formed by subtraction: :math:`1 - \tilde u` is :math:`(1 - v) + v(1 - p)` or :math:`(1 - v)(1 - p)`. Holding
    ``v`` fixed, :math:`a + \tilde\ell` has the law of :math:`z = a + \ell` given ``b``; its derivative in ``a``
    is :func:`conditional_noise_slope`.
    """
    p, q = torch.sigmoid(a), torch.sigmoid(-a)
    on = b > 0.5
    rest = torch.where(on, (1 - v) + v * q, (1 - v) * q)        # 1 - u~
    drawn = torch.where(on, v * p, p + v * q)                    # u~
    return torch.log(rest) - torch.log(drawn)


def conditional_noise_slope(a: Tensor, b: Tensor, v: Tensor) -> Tensor:
    r""":math:`\partial \tilde z / \partial a` of :math:`\tilde z = a + \tilde\ell(a, b, v)`
    (:func:`conditional_logistic_noise`), ``v`` fixed, in closed form: :math:`p(1 - v)/((1 - v) + v(1 - p))` for
    ``b = 1`` and :math:`(1 - p)v/(p + v(1 - p))` for ``b = 0`` (REBAR's reparameterisation of the conditional
    sample through the logits)."""
    p, q = torch.sigmoid(a), torch.sigmoid(-a)
    return torch.where(b > 0.5, p * (1 - v) / ((1 - v) + v * q), q * v / (p + v * q))


def check_temperature(temperature) -> float:
    """A relaxation temperature: a finite number of at least float32's smallest normal (1.2e-38, so
    that ``1 / temperature`` is finite in float32 and float64 alike), else a ValueError naming it."""
    tiny = torch.finfo(torch.float32).tiny
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                             and temperature >= tiny):
        raise ValueError(f"temperature must be a finite number >= {tiny:.3g}, got {temperature!r}")
    return float(temperature)


def relaxed(a: Tensor, u: Tensor, temperature: float) -> Tensor:
    r"""Binary Concrete / Gumbel-sigmoid unit: :math:`\sigma((a + \ell)/\tau)`,
    :math:`\ell = \log(1 - u) - \log u` logistic, so that :math:`1[a + \ell > 0] = 1[u < \sigma(a)]`,
    the binary neuron's sample (Maddison et al. 2017; Jang et al. 2017)."""
    return torch.sigmoid((a + logistic_noise(u)) / temperature)


def _gaussian_quantile(u: Tensor) -> Tensor:
    if u.dtype in (torch.float16, torch.bfloat16):     # torch's ndtri has no half-precision kernel on a CPU
        return torch.special.ndtri(u.float()).to(u.dtype)
    return torch.special.ndtri(u)


def _logistic_quantile(u: Tensor) -> Tensor:
    return torch.logit(u)


NOISES: dict[str, Callable[[Tensor], Tensor]] = {
    "gaussian": _gaussian_quantile,
    "logistic": _logistic_quantile,
}


def noise_quantile(u: Tensor, noise: str = "gaussian", scale: float = 1.0) -> Tensor:
    """Zero-mean noise ``scale * F^{-1}(u)`` for ``noise`` in :data:`NOISES`."""
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {sorted(NOISES)}, got {noise!r}")
    # checked eagerly only: compiled code meets ``scale`` as a symbolic float, whose test would break the graph (the
    # noisy rectifier estimator checks its options before anything is compiled)
    if not torch.compiler.is_compiling() and not (
            isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    return scale * NOISES[noise](u)


def noisy_rectifier(a: Tensor, u: Tensor, noise: str = "gaussian", scale: float = 1.0) -> Tensor:
    r"""Noisy rectifier (sec. 2.1): :math:`h = \max(0, a + z)`, :math:`z = s F^{-1}(u)`.

    With logistic noise of scale 1, Proposition 1 states
    :math:`P(h > 0) = \sigma(a)` and :math:`E[h] = \mathrm{softplus}(a)`.
    """
    return F.relu(a + noise_quantile(u, noise, scale))


@dataclass(frozen=True)
class BernoulliUnit:
    r"""A unit whose only randomness is an indicator :math:`b \sim \mathrm{Bernoulli}(q(a))`.

    ``log_q(a)`` and ``log_1mq(a)`` give :math:`\log q` and :math:`\log(1 - q)` in
    forms that stay finite for saturated logits; ``value(a, b)`` gives ``h``.
    """

    name: str
    q: Callable[[Tensor], Tensor]
    log_q: Callable[[Tensor], Tensor]
    log_1mq: Callable[[Tensor], Tensor]
    value: Callable[[Tensor, Tensor], Tensor]

    def sample(self, a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Indicator ``b = 1[u < q(a)]`` and value ``h(a, b)``."""
        b = (u < self.q(a)).to(a.dtype)
        return b, self.value(a, b)

    def log_prob(self, a: Tensor, b: Tensor) -> Tensor:
        """Elementwise :math:`\\log P(b \\mid a)`."""
        return torch.where(b > 0.5, self.log_q(a), self.log_1mq(a))

    def mode(self, a: Tensor) -> Tensor:
        """The most likely indicator, ``1[q(a) > 1/2]``."""
        return (self.log_q(a) > self.log_1mq(a)).to(a.dtype)


class _BinaryUnit(BernoulliUnit):
    def log_prob(self, a: Tensor, b: Tensor) -> Tensor:
        r""":math:`\log P(b \mid a) = b a + \log\sigma(-a)` (as :math:`\log\sigma(a) = a + \log\sigma(-a)`): one
        log-sigmoid per unit instead of two and a select, which is what enumeration spends its time on (once per
        unit where every row is one view of the same logits: a first layer's, its input shared)."""
        if a.ndim == 2 and a.shape[0] > 1 and a.stride(0) == 0:
            return b * a + F.logsigmoid(-a[:1])
        return b * a + F.logsigmoid(-a)


BINARY = _BinaryUnit(
    name="binary",
    q=torch.sigmoid,
    log_q=F.logsigmoid,
    log_1mq=lambda a: F.logsigmoid(-a),
    value=lambda a, b: b,
)

# 1 - sqrt(p) = (1 - p) / (1 + sqrt(p)) keeps log(1 - sqrt(p)) finite as p -> 1; sqrt(p) = exp(log(p) / 2)
# keeps the value and its derivative finite where p underflows (a < -745).
STS = BernoulliUnit(
    name="sts",
    q=sqrt_sigmoid,
    log_q=lambda a: 0.5 * F.logsigmoid(a),
    log_1mq=lambda a: F.logsigmoid(-a) - torch.log1p(sqrt_sigmoid(a)),
    value=lambda a, b: b * sqrt_sigmoid(a),
)


def gumbel_noise(u: Tensor) -> Tensor:
    r"""Standard Gumbel noise :math:`G = -\log(-\log u)` from uniforms in [0, 1) (``u = 0`` gives
    :math:`-\infty`: that class is never the argmax)."""
    return -torch.log(-torch.log(u))


def grouped_softmax(a: Tensor, num_classes: int, log: bool = False) -> Tensor:
    """Softmax (or log-softmax) over each unit's ``num_classes`` logits of ``a [..., N * K]``, same shape."""
    grouped = a.reshape(*a.shape[:-1], -1, num_classes)
    out = F.log_softmax(grouped, dim=-1) if log else F.softmax(grouped, dim=-1)
    return out.reshape(a.shape)


def softmax_jvp(probs: Tensor, v: Tensor, num_classes: int) -> Tensor:
    r"""The softmax Jacobian times ``v``, unit by unit: :math:`(\mathrm{diag}(\pi) - \pi\pi^\top) v
    = \pi \odot (v - \pi^\top v)` for each unit's ``K`` probabilities ``pi`` (symmetric, so it is also
    the vector-Jacobian product back-propagation needs)."""
    shape = probs.shape
    pi = probs.reshape(*shape[:-1], -1, num_classes)
    w = v.reshape(*v.shape[:-1], -1, num_classes)
    return (pi * (w - (pi * w).sum(-1, keepdim=True))).reshape(torch.broadcast_shapes(shape, v.shape))


def one_hot_of(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``index [...]`` (classes 0 to ``num_classes - 1``) as one-hot ``[..., num_classes]`` of ``dtype``, by
    comparison with ``arange(num_classes)``: torch's ``one_hot`` reads the indices to check them, which
    ``vmap`` cannot batch under ``grad``. Nothing is checked here, for the same reason: an index outside the
    classes gives a row of zeros."""
    return (index.unsqueeze(-1) == torch.arange(num_classes, device=index.device)).to(dtype)


@dataclass(frozen=True)
class CategoricalUnit:
    r"""``N`` categorical units of ``num_classes`` classes each, their logits ``a [..., N * K]`` unit-major.

    The indicator is the one-hot class, and so is the value: :math:`P(h \mid a) = \prod_i
    \mathrm{softmax}(a_i)_{c_i}`. ``sample`` takes ``K`` uniforms a unit (Gumbel-max).
    """

    num_classes: int
    name: str = "categorical"

    def __post_init__(self):
        if not (type(self.num_classes) is int and self.num_classes >= 2):
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")

    def probs(self, a: Tensor) -> Tensor:
        return grouped_softmax(a, self.num_classes)

    def one_hot(self, a: Tensor, scores: Tensor) -> Tensor:
        """The one-hot argmax of ``scores`` per unit, shaped and typed like ``a``."""
        k = self.num_classes
        index = scores.reshape(*scores.shape[:-1], -1, k).argmax(-1)
        return one_hot_of(index, k, a.dtype).reshape(scores.shape)

    def sample(self, a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """One-hot Gumbel-max sample from ``K`` uniforms a unit; the value is the indicator."""
        b = self.one_hot(a, a + gumbel_noise(u.to(a.dtype)))
        return b, b

    def value(self, a: Tensor, b: Tensor) -> Tensor:
        return b

    def log_prob(self, a: Tensor, b: Tensor) -> Tensor:
        r"""``b * log softmax(a)`` elementwise: summed over the last dimension, :math:`\log P(b \mid a)`."""
        return b * grouped_softmax(a, self.num_classes, log=True)

    def mode(self, a: Tensor) -> Tensor:
        """The most likely class of each unit, one-hot."""
        return self.one_hot(a, a)
