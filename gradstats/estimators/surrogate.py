r"""Pathwise estimators: back-propagation through a sample, with the unit's derivative replaced by a surrogate.

Notation: logits ``a``, :math:`p = \sigma(a)`, uniforms ``u``, binary sample
:math:`b = 1[u < p]` (Eq. 3 of arXiv:1308.3432 with its inequality corrected, see
:mod:`gradstats.units`). Each estimator is defined once below as its *per-unit
rule*: the local derivative :math:`s \approx dh/da` that the backward pass uses,
held fixed (detached); the chain rule through the layers
(:func:`~gradstats.estimators.base.backpropagate`) does the rest:
:math:`\delta_l = (\delta_{l+1} W_{l+1}) \odot s_l`. All need ``dL/dh`` and cost one loss
evaluation and its gradient a draw.

* Hard-sample rules ``s(a, b)`` (st, st_sigmoid, sts, reinmax): the forward pass is the
  discrete sample, so exact moments enumerate it; each is registered through
  :func:`~gradstats.estimators.base.pathwise`, as a user's rule would be.
* Sampled rules ``(a, u) -> (b, h, s)`` (noisy_rectifier, gumbel, st_gumbel, gumbel_rao): the
  value or the derivative depends on the continuous ``u``, so their moments are Monte Carlo (on one
  layer, :func:`gumbel_rao_exact_moments` gives st_gumbel's and gumbel_rao's by quadrature).

Common random numbers: every rule reads ``u[:, 0]``; the relaxations' logistic noise is
:math:`\ell = \log(1 - u) - \log u`, so :math:`1[a + \ell > 0] = b`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import enumeration
from ..numerics import positive_int
from ..problems import FactoredGradient, Problem
from ..units import (
    BINARY,
    NOISES,
    STS,
    check_temperature,
    conditional_logistic_noise,
    noise_quantile,
    relaxed_local_derivative,
    relaxed_with_derivative,
    sigmoid_derivative,
    sts_local_derivative,
)
from .base import Estimator, backpropagate_loss, make_pathwise

__all__ = [
    "straight_through_derivative",
    "sigmoid_derivative_variant",
    "sts_derivative",
    "reinmax_derivative",
    "noisy_rectifier_rule",
    "gumbel_rule",
    "st_gumbel_rule",
    "gumbel_rao_rule",
    "conditional_moments",
    "prepare_temperature",
    "prepare_gumbel_rao",
    "gumbel_rao_exact_moments",
    "ST",
    "ST_SIGMOID",
    "STS_ESTIMATOR",
    "REINMAX",
    "NOISY_RECTIFIER",
    "GUMBEL",
    "ST_GUMBEL",
    "GUMBEL_RAO",
]

PAPER = "Bengio, Léonard & Courville 2013, arXiv:1308.3432"


# ---- hard-sample rules s(a, b) ------------------------------------------------------------------

def straight_through_derivative(a: Tensor, b: Tensor) -> Tensor:
    r"""Straight-through (sec. 4, Eq. 13 of arXiv:1308.3432, after Hinton 2012, lecture 15b): :math:`s = 1`, so
    ``dL/db`` is copied to ``dL/da``, the hard threshold treated as the identity. Biased in general (its sign
    is right on one layer only for losses multilinear or sign-consistent in each unit); any depth."""
    return torch.ones_like(a)


def sigmoid_derivative_variant(a: Tensor, b: Tensor) -> Tensor:
    r"""Straight-through's variant of appendix A.4 of arXiv:1308.3432: :math:`s = \sigma'(a)`. Biased in
    general; on one layer with a loss multilinear in ``h`` its mean is the exact gradient."""
    return sigmoid_derivative(a)


def sts_derivative(a: Tensor, b: Tensor) -> Tensor:
    r"""Stochastic times smooth (sec. 2.2, Eq. 2 and Proposition 2 of arXiv:1308.3432): the STS unit
    :math:`h = b\sqrt{p}` with :math:`b \sim \mathrm{Bernoulli}(\sqrt p)` held fixed, so
    :math:`s = \partial h/\partial a = b\sqrt{p}\,\sigma(-a)/2`. Its mean is right "to first order"; exact
    moments enumerate ``b`` under the STS unit's law, against the STS network's own objective."""
    return sts_local_derivative(a, b)


def reinmax_derivative(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    r"""ReinMax for two categories (Liu, Dong, Liu, Yu & Gao 2023):
    :math:`s = 2 r (1 - r) - \sigma'(a)/2`, :math:`r = (b + \sigma(a/\tau))/2`, computed as
    :math:`(b + \sigma(a/\tau))(1 - b + \sigma(-a/\tau))/2 - \sigma(a)\sigma(-a)/2` so that :math:`1 - r` is
    never formed by subtraction (the plain form has the wrong sign from ``a`` of about 35 in float64).
    Second-order accurate: on one layer its mean is the exact gradient for quadratic losses at
    :math:`\tau = 1`. On deeper networks the rule is applied at every layer, the way the drop-in
    :func:`gradstats.functional.reinmax` is used in a model; second-order accuracy is a one-layer statement."""
    return (b + torch.sigmoid(a / temperature)) * (1 - b + torch.sigmoid(-a / temperature)) / 2 - sigmoid_derivative(a) / 2


def prepare_temperature(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    """Options with a ``temperature``, checked (every relaxation's and ReinMax's, binary or categorical)."""
    check_temperature(options["temperature"])
    return options


ST = make_pathwise("st", straight_through_derivative,
                   summary="dL/dh copied to dL/da (hard threshold treated as the identity)",
                   reference=f"{PAPER}, sec. 4, Eq. 13 (after Hinton 2012, lecture 15b)")
ST_SIGMOID = make_pathwise("st_sigmoid", sigmoid_derivative_variant, summary="dL/dh * sigmoid'(a)",
                           reference=f"{PAPER}, sec. 4 and appendix A.4")
STS_ESTIMATOR = make_pathwise("sts", sts_derivative, unit=STS, objective="sts",
                              summary="backprop through h = b sqrt(p), b ~ Bernoulli(sqrt p) held fixed",
                              reference=f"{PAPER}, sec. 2.2, Eq. 2, Proposition 2")
REINMAX = make_pathwise("reinmax", reinmax_derivative,
                        summary="dL/db * (2 r (1 - r) - p (1 - p)/2), r = (b + sigmoid(a / tau))/2",
                        defaults={"temperature": 1.0}, prepare=prepare_temperature,
                        reference="Liu, Dong, Liu, Yu & Gao 2023, Bridging Discrete and Backpropagation: "
                                  "Straight-Through and Beyond (NeurIPS); ReinMax for two categories")


# ---- sampled rules (a, u) -> (indicator, value, s) ----------------------------------------------

def noisy_rectifier_rule(a: Tensor, u: Tensor, noise: str = "gaussian", scale: float = 1.0
                         ) -> tuple[Tensor, Tensor, Tensor]:
    r"""Noisy rectifier (sec. 2.1 and Proposition 1 of arXiv:1308.3432): :math:`h = \max(0, a + z)`,
    :math:`z = \mathrm{scale}\,F^{-1}(u)` (Gaussian or logistic), back-propagated exactly:
    :math:`s = 1[a + z > 0]`. Unbiased for its own (noisy-rectifier) network's objective; a different
    unit from the binary neuron. Returns ``(1[a + z > 0], h, s)``."""
    pre = a + noise_quantile(u, noise, scale)
    on = (pre > 0).to(a.dtype)
    return on, torch.relu(pre), on    # relu, not pre * on: u = 0 gives z = -inf, and -inf * 0 is NaN


def gumbel_rule(a: Tensor, u: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    r"""Gumbel-sigmoid / binary Concrete (Maddison, Mnih & Teh 2017; Jang, Gu & Poole 2017): the relaxed
    sample :math:`h = \sigma((a + \ell)/\tau)` forward and its exact derivative
    :math:`s = h\,\sigma(-(a + \ell)/\tau)/\tau`. Unbiased for the relaxed network, biased for the binary
    one (the bias vanishes as :math:`\tau \to 0` while the variance grows). Returns ``(h, h, s)``."""
    h, derivative = relaxed_with_derivative(a, u, temperature)
    return h, h, derivative


def st_gumbel_rule(a: Tensor, u: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    r"""Straight-through Gumbel (Jang, Gu & Poole 2017): the hard sample :math:`b = 1[a + \ell > 0]` forward,
    the relaxed sample's derivative :math:`s = \partial \sigma((a + \ell)/\tau)/\partial a` backward. Biased
    for the binary network. Returns ``(b, b, s)``."""
    b, value = BINARY.sample(a, u)
    return b, value, relaxed_local_derivative(a, u, temperature)


def gumbel_rao_rule(a: Tensor, u: Tensor, v: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    r"""Gumbel-Rao (Paulus, Maddison & Krause 2021, sec. 3, the Monte Carlo estimator GR-MCK) for two classes: the
    hard sample :math:`b = 1[a + \ell > 0]` forward; backward, st_gumbel's derivative averaged over ``K``
    logistic noises drawn *given* ``b``:
    :math:`s = \frac1K \sum_k \partial\sigma((a + \tilde\ell_k)/\tau)/\partial a`, each
    :math:`\tilde\ell_k` held fixed (:func:`~gradstats.units.conditional_logistic_noise`; ``v`` ``[K, ...]``).

    :math:`E[s \mid b]` is st_gumbel's derivative given ``b``, so the two estimators have the same mean and
    Gumbel-Rao's variance is lower by :math:`(1 - 1/K)\,E[(\partial L/\partial b)^2 \mathrm{Var}(s \mid b)]`
    on one layer (Rao-Blackwellisation); ``K = 1`` has st_gumbel's law. Cost: one loss evaluation.
    Returns ``(b, b, s)``."""
    b, value = BINARY.sample(a, u)
    z = (a + conditional_logistic_noise(a, b, v)) / temperature
    s = (torch.sigmoid(z) * torch.sigmoid(-z)).mean(0) / temperature
    return b, value, s


def conditional_moments(a: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    r"""The mean and variance of st_gumbel's local derivative :math:`s = \sigma'(z/\tau)/\tau`,
    :math:`z = a + \ell`, given ``b = 1[z > 0]``, for ``b = 0`` and ``b = 1``: two ``[2, n]`` tensors (row ``b``)
    for logits ``a`` ``[n]``.

    Given ``b = 1`` the density of ``z`` is the logistic density :math:`\sigma'(z - a)` on :math:`z > 0`
    divided by :math:`p = \sigma(a)` (``b = 0``: on :math:`z < 0`, divided by :math:`1 - p`); each moment is a
    one-dimensional integral, done by ``scipy.integrate.quad`` to a relative tolerance of 1e-12, split at
    :math:`40\tau` where the relaxation's derivative has died off.
    """
    from scipy import integrate

    def density(z: float, logit: float) -> float:
        return math.exp(-abs(z - logit)) / (1 + math.exp(-abs(z - logit))) ** 2

    def derivative(z: float) -> float:
        return math.exp(-abs(z) / temperature) / (1 + math.exp(-abs(z) / temperature)) ** 2 / temperature

    def integral(fn, logit: float, side: float) -> float:
        cut = 40 * temperature
        pieces = [(0.0, cut), (cut, math.inf)]
        return sum(integrate.quad(lambda t: fn(side * t) * density(side * t, logit), lo, hi,
                                  epsabs=0.0, epsrel=1e-12, limit=400)[0] for lo, hi in pieces)

    means = torch.empty(2, a.numel(), dtype=torch.float64)
    variances = torch.empty_like(means)
    for i, logit in enumerate(a.reshape(-1).tolist()):
        for bit, side in ((0, -1.0), (1, 1.0)):
            mass = integral(lambda z: 1.0, logit, side)
            m1 = integral(derivative, logit, side) / mass
            m2 = integral(lambda z: derivative(z) ** 2, logit, side) / mass
            means[bit, i], variances[bit, i] = m1, max(m2 - m1 * m1, 0.0)
    return means.to(a), variances.to(a)


def gumbel_rao_exact_moments(problem: Problem, *, temperature: float = 1.0, k: int = 1,
                             chunk_size: int = enumeration.DEFAULT_CHUNK_SIZE,
                             max_states: int = enumeration.DEFAULT_MAX_STATES) -> tuple[Tensor, Tensor]:
    r"""Exact per-coordinate mean and variance of gumbel_rao with ``k`` inner samples on one stochastic layer;
    ``k = 1`` gives st_gumbel's.

    Given the binary state ``b`` (enumerated), unit ``i``'s estimate is :math:`g_i(b)\,\bar s_i` with
    :math:`g = \partial L/\partial b` and :math:`\bar s_i` the mean of ``k`` conditionally independent draws of
    :math:`s_i` (:func:`conditional_moments`: mean :math:`m_i(b_i)`, variance :math:`v_i(b_i)`), so
    :math:`E[\hat g_i] = \sum_b P(b) g_i(b) m_i(b_i)` and
    :math:`E[\hat g_i^2] = \sum_b P(b) g_i(b)^2 (m_i(b_i)^2 + v_i(b_i)/k)`; a weight's coordinate multiplies
    both by its input (and its square). Exact up to the quadrature (about 1e-12).
    """
    if problem.num_layers != 1:
        raise ValueError(f"gumbel_rao's exact moments are over one stochastic layer's states; {problem.description} "
                         f"has {problem.num_layers}")
    check_temperature(temperature)
    k = positive_int("k", k)
    n = problem.num_units
    x = None if problem.x is None else problem.x.expand(1, -1)
    a = problem.logits(0, x, batch_size=1).reshape(-1)
    m, v = conditional_moments(a, temperature)
    cols = torch.arange(n)
    first = torch.zeros(n, dtype=torch.float64)
    second = torch.zeros(n, dtype=torch.float64)
    for traj in enumeration.trajectories(problem, BINARY, chunk_size=chunk_size, max_states=max_states):
        w = traj.log_prob.exp()
        b = traj.output
        _, g = problem.loss.value_and_grad(b)
        bits = b.long()
        mean_s, var_s = m[bits, cols], v[bits, cols]
        first += w @ (g * mean_s)
        second += w @ (g.square() * (mean_s.square() + var_s / k))
    if problem.x is None:
        return first, second - first.square()
    mean = torch.cat([torch.outer(first, problem.x).reshape(-1), first])
    second_all = torch.cat([torch.outer(second, problem.x.square()).reshape(-1), second])
    return mean, second_all - mean.square()


def _gumbel_rao_draw(problem: Problem, u: Tensor, temperature: float, k: int) -> FactoredGradient:
    """Per-draw gradients of Gumbel-Rao: the sample from ``u[:, 0]``, the ``k`` conditional noises from
    ``u[:, 1:]`` (common random numbers with st_gumbel's sample)."""
    parts = problem.split_units(u[:, 0])
    inner = problem.split_units(u[:, 1:].movedim(1, 0))      # per layer [k, B, n]
    local = []

    def step(layer: int, a: Tensor):
        indicator, value, derivative = gumbel_rao_rule(a, parts[layer], inner[layer], temperature)
        local.append(derivative)
        return indicator, value

    return backpropagate_loss(problem, problem.forward(step, u.shape[0], dtype=u.dtype, device=u.device), local)


def prepare_gumbel_rao(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    """Gumbel-Rao's options, checked: the temperature, and ``k`` an integer >= 1 (binary or categorical)."""
    check_temperature(options["temperature"])
    k = options["k"]
    if isinstance(k, bool) or not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k (the conditional samples a unit averages) must be an integer >= 1, got {k!r}")
    return options


def _sampled_pathwise_draw(rule: Callable[..., tuple[Tensor, Tensor, Tensor]]):
    """Per-draw gradients of a sampled rule: the forward pass records each layer's ``s``, then the chain rule."""

    def draw(problem: Problem, u: Tensor, **options) -> FactoredGradient:
        parts = problem.split_units(u[:, 0])
        local = []   # each layer's s, in layer order

        def step(layer: int, a: Tensor):
            indicator, value, derivative = rule(a, parts[layer], **options)
            local.append(derivative)
            return indicator, value

        return backpropagate_loss(problem, problem.forward(step, u.shape[0], dtype=u.dtype, device=u.device), local)

    return draw


def _prepare_noisy_rectifier(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    if options["noise"] not in NOISES:
        raise ValueError(f"noise must be one of {sorted(NOISES)}, got {options['noise']!r}")
    scale = options["scale"]
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    return options


def _sampled(name: str, rule, *, summary: str, objective: str, defaults: dict[str, Any], prepare, reference: str
             ) -> Estimator:
    return Estimator(name=name, summary=summary, draw=_sampled_pathwise_draw(rule), noise="continuous",
                     needs_loss_gradient=True, objective=objective, defaults=defaults, prepare=prepare,
                     reference=reference)


NOISY_RECTIFIER = _sampled("noisy_rectifier", noisy_rectifier_rule, objective="noisy_rectifier",
                           summary="backprop through h = max(0, a + z), z = scale * F^-1(u)",
                           defaults={"noise": "gaussian", "scale": 1.0}, prepare=_prepare_noisy_rectifier,
                           reference=f"{PAPER}, sec. 2.1, Proposition 1")
GUMBEL = _sampled("gumbel", gumbel_rule, objective="relaxed",
                  summary="backprop through h = sigmoid((a + l) / tau), l logistic (relaxed network)",
                  defaults={"temperature": 1.0}, prepare=prepare_temperature,
                  reference="Maddison, Mnih & Teh 2017 (Concrete, ICLR); Jang, Gu & Poole 2017 (Gumbel-softmax, ICLR)")
ST_GUMBEL = _sampled("st_gumbel", st_gumbel_rule, objective="binary",
                     summary="hard b forward; backward dL/db * d sigmoid((a + l) / tau)/da",
                     defaults={"temperature": 1.0}, prepare=prepare_temperature,
                     reference="Jang, Gu & Poole 2017 (ICLR), straight-through Gumbel-softmax; Bengio et al. 2013 for ST")
GUMBEL_RAO = Estimator(name="gumbel_rao", draw=_gumbel_rao_draw, noise="continuous", needs_loss_gradient=True,
                       summary="hard b forward; backward dL/db * mean of k st_gumbel derivatives with the noise drawn given b",
                       defaults={"temperature": 1.0, "k": 10}, prepare=prepare_gumbel_rao,
                       noise_per_unit=lambda options: 1 + options["k"],
                       reference="Paulus, Maddison & Krause 2021, Rao-Blackwellizing the Straight-Through Gumbel-Softmax "
                                 "Gradient Estimator (ICLR), sec. 3 (GR-MCK) for two classes")
