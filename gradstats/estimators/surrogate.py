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
* Sampled rules ``(a, u) -> (b, h, s)`` (noisy_rectifier, gumbel, st_gumbel): the value or
  the derivative depends on the continuous ``u``, so their moments are Monte Carlo.

Common random numbers: every rule reads ``u[:, 0]``; the relaxations' logistic noise is
:math:`\ell = \log(1 - u) - \log u`, so :math:`1[a + \ell > 0] = b`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..problems import FactoredGradient, Problem
from ..units import (
    BINARY,
    NOISES,
    STS,
    check_temperature,
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
    "ST",
    "ST_SIGMOID",
    "STS_ESTIMATOR",
    "REINMAX",
    "NOISY_RECTIFIER",
    "GUMBEL",
    "ST_GUMBEL",
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


def _prepare_temperature(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
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
                        defaults={"temperature": 1.0}, prepare=_prepare_temperature,
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
                  defaults={"temperature": 1.0}, prepare=_prepare_temperature,
                  reference="Maddison, Mnih & Teh 2017 (Concrete, ICLR); Jang, Gu & Poole 2017 (Gumbel-softmax, ICLR)")
ST_GUMBEL = _sampled("st_gumbel", st_gumbel_rule, objective="binary",
                     summary="hard b forward; backward dL/db * d sigmoid((a + l) / tau)/da",
                     defaults={"temperature": 1.0}, prepare=_prepare_temperature,
                     reference="Jang, Gu & Poole 2017 (ICLR), straight-through Gumbel-softmax; Bengio et al. 2013 for ST")
