r"""Relaxation-based control variates: REBAR and RELAX, unbiased for the binary network.

Notation: logits ``a``, :math:`p = \sigma(a)`, uniforms ``u``, logistic noise
:math:`\ell = \log(1 - u) - \log u`, :math:`z = a + \ell`, binary sample :math:`b = 1[z > 0] = 1[u < p]` (the
binary neuron's, common random numbers), and :math:`\tilde z` the noise drawn again *given* ``b`` from a
second uniform ``v`` (:func:`~gradstats.units.conditional_logistic_noise`). Both estimators are one rule
(:func:`relax_rule`) with a control :math:`c(z)` that is differentiable in ``z``:

.. math::

    \hat g = (f(b) - c(\tilde z))\,\partial_a \log P(b) + \partial_a c(z) - \partial_a c(\tilde z),

where :math:`\partial_a c(\tilde z)` differentiates through the conditional sampler. It is unbiased for any
``c``: :math:`E[\partial_a c(z)] = \partial_a E[c(z)]` (reparameterisation), and
:math:`E[c(\tilde z)\,\partial_a \log P(b) + \partial_a c(\tilde z)] = \partial_a E_b E[c(\tilde z) \mid b]
= \partial_a E[c(z)]`, so the two cancel. REBAR's control is the relaxed network,
:math:`c(z) = \eta f(\sigma(z/\lambda))`; RELAX adds a learned network, :math:`c(z) = \eta f(\sigma(z/\lambda)) +
r_\rho(z)`.

Networks, layer by layer (as ARM, :mod:`.score_function`): for layer ``t`` the layers below are the draw's
sample, ``f(b)`` is the draw's loss (the layers above sampled from the draw's uniforms), and the control is
the *relaxed* network above layer ``t``, driven by the same uniforms, so that ``c`` is smooth in
:math:`z_t` (a hard layer above would make it piecewise constant, and its pathwise derivative biased). With the
uniforms above ``t`` held fixed, the argument above holds for layer ``t``'s logits, so every layer's estimate is
unbiased. Cost: ``1 + 2L`` loss evaluations (and ``2L`` of their gradients) for ``L`` stochastic layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..numerics import positive_int
from ..problems import FactoredGradient, Problem, Trajectory
from ..units import (
    BINARY,
    binary_residual,
    check_temperature,
    conditional_logistic_noise,
    conditional_noise_slope,
    logistic_noise,
    sigmoid_derivative,
)
from .base import Estimator, sample_trajectory

__all__ = [
    "relax_rule",
    "relaxed_pass",
    "ControlNetwork",
    "train_control",
    "REBAR",
    "RELAX",
]


# ---- the rule --------------------------------------------------------------------------------------

def relax_rule(a: Tensor, b: Tensor, loss: Tensor, control_conditional: Tensor, pathwise: Tensor,
               pathwise_conditional: Tensor) -> Tensor:
    r"""RELAX for binary units (Grathwohl, Choi, Wu, Roeder & Duvenaud 2018, Eq. 8 in sec. 3.2, with
    :math:`\partial_a \log P(b) = b - p`; REBAR of Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017 is its
    special case :math:`c(z) = \eta f(\sigma_\lambda(z))`, Grathwohl et al.'s sec. 3.3 and 4):
    :math:`\hat g = (f(b) - c(\tilde z))(b - p) + \partial_a c(z) - \partial_a c(\tilde z)`.

    ``loss`` is :math:`f(b)` and ``control_conditional`` :math:`c(\tilde z)` per row (``[...]``, values held
    fixed); ``pathwise`` and ``pathwise_conditional`` are :math:`\partial c/\partial a` per unit at ``z`` and at
    :math:`\tilde z` (the latter through the conditional sampler). Unbiased for any differentiable control
    (module docstring).
    """
    return (loss - control_conditional)[..., None] * binary_residual(a, b) + pathwise - pathwise_conditional


# ---- the relaxed network above a layer --------------------------------------------------------------

def relaxed_pass(problem: Problem, layer: int, h: Tensor, parts: list[Tensor], temperature: float,
                 parameters: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    r"""The relaxed network above ``layer``: from layer ``layer``'s relaxed values ``h`` ``[B, n]``, every layer
    above is :math:`\sigma((a_l + \ell_l)/\lambda)` on its uniforms ``parts[l]``; returns the loss ``[B]`` and its
    gradient with respect to ``h`` (the chain rule through the relaxed layers)."""
    local = []
    for upper in range(layer + 1, problem.num_layers):
        z = (problem.logits(upper, h, parameters) + logistic_noise(parts[upper])) / temperature
        h = torch.sigmoid(z)
        local.append(h * torch.sigmoid(-z) / temperature)
    loss, upstream = problem.loss.value_and_grad(h)
    for upper in reversed(range(layer + 1, problem.num_layers)):
        delta = upstream * local[upper - layer - 1]
        upstream = delta @ parameters[problem.layers[upper].weight]
    return loss, upstream


@dataclass
class _Relaxations:
    """One layer's relaxed control at ``z`` and at the conditional ``z~``: values ``[B]`` and ``dc/da`` ``[B, n]``."""

    control: Tensor
    control_conditional: Tensor
    pathwise: Tensor
    pathwise_conditional: Tensor
    z: Tensor
    z_conditional: Tensor
    slope_conditional: Tensor


def _relaxations(problem: Problem, traj: Trajectory, layer: int, parts: list[Tensor], v: Tensor,
                 temperature: float, scale: float, parameters: Mapping[str, Tensor]) -> _Relaxations:
    """REBAR's control ``scale * f(relaxed network)`` at ``z`` and ``z~`` for ``layer``, with ``dc/da``."""
    a, b = traj.logits[layer], traj.indicators[layer]
    z = a + logistic_noise(parts[layer])
    z_conditional = a + conditional_logistic_noise(a, b, v)
    slope = conditional_noise_slope(a, b, v)
    values, derivatives = [], []
    for zz in (z, z_conditional):
        h = torch.sigmoid(zz / temperature)
        loss, grad = relaxed_pass(problem, layer, h, parts, temperature, parameters)
        values.append(scale * loss)
        derivatives.append(scale * grad * h * torch.sigmoid(-zz / temperature) / temperature)
    return _Relaxations(values[0], values[1], derivatives[0], derivatives[1] * slope, z, z_conditional, slope)


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale (the control's weight eta) must be a finite number, got {scale!r}")
    return float(scale)


# ---- REBAR -----------------------------------------------------------------------------------------

def _prepare_rebar(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    check_temperature(options["temperature"])
    _check_scale(options["scale"])
    if not problem.loss.differentiable:
        raise ValueError(f"rebar and relax evaluate the loss on relaxed values and need its gradient; loss "
                         f"{problem.loss.name!r} is not differentiable")
    return options


def _rebar_draw(problem: Problem, u: Tensor, temperature: float, scale: float) -> FactoredGradient:
    """Per-draw REBAR, layer by layer: the sample and the relaxations on ``u[:, 0]``, the conditional noise on
    ``u[:, 1]``."""
    traj = sample_trajectory(problem, BINARY, u[:, 0])
    parts, second = problem.split_units(u[:, 0]), problem.split_units(u[:, 1])
    parameters = {k: v.to(u) for k, v in problem.parameters.items()}
    loss = problem.loss(traj.output)
    deltas = []
    for layer in range(problem.num_layers):
        r = _relaxations(problem, traj, layer, parts, second[layer], temperature, scale, parameters)
        deltas.append(relax_rule(traj.logits[layer], traj.indicators[layer], loss, r.control_conditional,
                                 r.pathwise, r.pathwise_conditional))
    return FactoredGradient(deltas, list(traj.inputs))


def _one_plus_two_per_layer(problem: Problem, options) -> int:
    return 1 + 2 * problem.num_layers


REBAR = Estimator(
    name="rebar",
    summary="(f(b) - eta f~(z~)) (b - p) + eta d f~(z)/da - eta d f~(z~)/da, f~ the relaxed network at temperature",
    draw=_rebar_draw,
    noise="continuous",
    unbiased=True,
    needs_loss_gradient=True,
    defaults={"temperature": 0.5, "scale": 1.0},
    prepare=_prepare_rebar,
    loss_evals=_one_plus_two_per_layer,
    noise_per_unit=lambda options: 2,
    reference="Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017, REBAR: Low-variance, unbiased gradient "
              "estimates for discrete latent variable models (NeurIPS), sec. 3",
)


# ---- RELAX: REBAR plus a learned network ------------------------------------------------------------

class ControlNetwork(torch.nn.Module):
    r"""RELAX's free-form part :math:`r_\rho(z)` for one layer of ``n`` units: one hidden layer of ``hidden``
    tanh units on :math:`\sigma(z)` (bounded, so an infinite ``z`` from ``u = 0`` is harmless), one output.
    Float64. Its weights start from ``seed`` (PyTorch's default initialisation on a private generator)."""

    def __init__(self, n: int, hidden: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.hidden = torch.nn.Linear(n, hidden, dtype=torch.float64)
        self.out = torch.nn.Linear(hidden, 1, dtype=torch.float64)
        with torch.no_grad():
            for linear in (self.hidden, self.out):
                bound = 1 / math.sqrt(linear.in_features)
                linear.weight.uniform_(-bound, bound, generator=generator)
                linear.bias.uniform_(-bound, bound, generator=generator)

    def head(self, x: Tensor) -> Tensor:
        r"""The network on its input :math:`x = \sigma(z)` ``[B, n]``: ``[B]``."""
        return self.out(torch.tanh(self.hidden(x))).squeeze(-1)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(torch.sigmoid(z))


def _network_terms(network: ControlNetwork, z: Tensor, z_conditional: Tensor, slope: Tensor, create_graph: bool
                   ) -> tuple[Tensor, Tensor, Tensor]:
    r"""``r(z~)`` and ``dr/da`` at ``z`` and at ``z~`` (through the conditional sampler: times ``slope``). Each row's
    output depends on its own row only, so one gradient of the sum gives every row's. The network's input
    :math:`x = \sigma(z)` is differentiated by hand (:math:`\sigma(z)\sigma(-z)`), as autograd's
    :math:`x(1 - x)` loses the digits of a saturated ``z``. The network runs in its own dtype (float64 for
    :class:`ControlNetwork`) on draws of any: its input is converted to it, and its terms back to ``z``'s.
    Training (``create_graph``) takes the derivatives by autograd, to be differentiated again; a draw by
    ``torch.func.vjp``, which ``torch.compile`` traces into the fused path's graph (``autograd.grad`` breaks it)."""
    head = getattr(network, "head", None)
    dtype = next((w.dtype for w in network.parameters() if w.is_floating_point()), z.dtype)
    if head is None:                                    # a user's module of z: autograd all the way
        head = network
        x, x_conditional = (v.detach().to(dtype) for v in (z, z_conditional))
        outer = outer_conditional = 1.0
    else:
        x, x_conditional = (torch.sigmoid(v).to(dtype) for v in (z, z_conditional))
        outer, outer_conditional = sigmoid_derivative(z), sigmoid_derivative(z_conditional)
    if create_graph:
        x, x_conditional = x.requires_grad_(True), x_conditional.requires_grad_(True)
        with torch.enable_grad():
            r, r_conditional = head(x), head(x_conditional)
            d, d_conditional = torch.autograd.grad((r.sum(), r_conditional.sum()), (x, x_conditional),
                                                   create_graph=True)
    else:
        (r, r_conditional), pull_back = torch.func.vjp(lambda a, b: (head(a), head(b)), x, x_conditional)
        d, d_conditional = pull_back((torch.ones_like(r), torch.ones_like(r_conditional)))
    return (r_conditional.to(z.dtype), (d * outer).to(z.dtype),
            (d_conditional * outer_conditional * slope).to(z.dtype))


def _relax_deltas(problem: Problem, u: Tensor, temperature: float, scale: float, networks, create_graph: bool
                  ) -> FactoredGradient:
    traj = sample_trajectory(problem, BINARY, u[:, 0])
    parts, second = problem.split_units(u[:, 0]), problem.split_units(u[:, 1])
    parameters = {k: v.to(u) for k, v in problem.parameters.items()}
    loss = problem.loss(traj.output)
    deltas = []
    for layer, network in enumerate(networks):
        network = network.to(u.device)
        r = _relaxations(problem, traj, layer, parts, second[layer], temperature, scale, parameters)
        learned, d, d_conditional = _network_terms(network, r.z, r.z_conditional, r.slope_conditional, create_graph)
        deltas.append(relax_rule(traj.logits[layer], traj.indicators[layer], loss,
                                 r.control_conditional + learned, r.pathwise + d, r.pathwise_conditional + d_conditional))
    return FactoredGradient(deltas, list(traj.inputs))


def _relax_draw(problem: Problem, u: Tensor, temperature: float, scale: float, networks, **construction
                ) -> FactoredGradient:
    """Per-draw RELAX with the prepared ``networks`` (``construction``: the options that built and trained them)."""
    with torch.no_grad():
        return _relax_deltas(problem, u, temperature, scale, networks, create_graph=False)


def train_control(problem: Problem, networks, *, temperature: float, scale: float, steps: int, draws: int,
                  learning_rate: float, seed: int) -> list[float]:
    r"""RELAX's own training loop: Adam on the networks' weights to minimise the estimate's mean squared norm over
    ``draws`` fresh draws a step (its mean does not depend on the weights, so this is its variance plus a
    constant; Grathwohl et al. 2018, Eq. 6 in sec. 3.1). The draws come from a generator seeded with ``seed``, apart from
    any measurement's stream. Returns the objective at each step."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam([w for net in networks for w in net.parameters()], lr=learning_rate)
    history = []
    for _ in range(steps):
        u = torch.rand(draws, 2, problem.num_units, dtype=torch.float64, generator=generator)
        gradient = _relax_deltas(problem, u, temperature, scale, networks, create_graph=True).dense()
        objective = gradient.square().sum(1).mean()
        optimiser.zero_grad()
        objective.backward()
        optimiser.step()
        history.append(float(objective.detach()))
    return history


def _prepare_relax(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    options = _prepare_rebar(problem, options)
    hidden = positive_int("hidden", options["hidden"])
    seed = options["control_seed"]
    if isinstance(seed, bool) or not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"control_seed (the control network's initial weights) must be an integer >= 0, got {seed!r}")
    steps, draws = options["train_steps"], options["train_draws"]
    if isinstance(steps, bool) or not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"train_steps must be an integer >= 0, got {steps!r}")
    positive_int("train_draws", draws)
    rate = options["learning_rate"]
    if isinstance(rate, bool) or not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"learning_rate must be a finite positive number, got {rate!r}")
    networks = options["networks"]
    if networks is None:
        networks = [ControlNetwork(size, hidden, seed + layer) for layer, size in enumerate(problem.layer_sizes)]
        if steps:
            train_control(problem, networks, temperature=options["temperature"], scale=options["scale"],
                          steps=steps, draws=draws, learning_rate=rate, seed=seed)
    elif not (isinstance(networks, (list, tuple)) and len(networks) == problem.num_layers
              and all(callable(net) for net in networks)):
        raise ValueError(f"networks must be None or one module per stochastic layer ({problem.num_layers}), each "
                         "mapping z [B, n] to [B]")
    for net in networks:
        net.requires_grad_(False)
    return {**options, "networks": list(networks)}


RELAX = Estimator(
    name="relax",
    summary="REBAR with the control eta f~(z) + r(z), r a small network (trained for train_steps to cut the variance)",
    draw=_relax_draw,
    noise="continuous",
    unbiased=True,
    needs_loss_gradient=True,
    defaults={"temperature": 0.5, "scale": 1.0, "hidden": 16, "control_seed": 0, "train_steps": 0, "train_draws": 256,
              "learning_rate": 0.01, "networks": None},
    prepare=_prepare_relax,
    loss_evals=_one_plus_two_per_layer,
    noise_per_unit=lambda options: 2,
    reference="Grathwohl, Choi, Wu, Roeder & Duvenaud 2018, Backpropagation through the Void: Optimizing control "
              "variates for black-box gradient estimation (ICLR), Eq. 8 (sec. 3.2), the control of sec. 3.3, "
              "the conditional sampler of appendix B",
)
