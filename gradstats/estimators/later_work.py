r"""Estimators of later work for binary stochastic units, on the same uniforms as the seed paper's.

Notation as in :mod:`.seed_paper`: logits ``a``, :math:`p = \sigma(a)`, uniforms
``u``, the binary sample :math:`b = 1[u < p]`. Noise mapping (common random
numbers): every estimator below takes its binary sample from ``u[:, 0]``
exactly as the binary neuron does; the antithetic sample of ARM and DisARM is
:math:`\tilde b = 1[1 - u < p]`; the logistic noise of the relaxations is
:math:`\ell = \log(1 - u) - \log u`, so that :math:`1[a + \ell > 0] = b`;
leave-one-out's ``k`` samples use ``u[:, 0], ..., u[:, k-1]``.

On networks, ARM and DisARM are applied layer by layer (as Yin & Zhou 2019
do for multiple stochastic layers): for layer ``t`` the main pass gives ``f(b)``, and a second pass
with layer ``t`` replaced by its antithetic sample and the layers above it
resampled with the *same* uniforms gives ``f(b~)``; any coupling of the two
branches keeps the estimate unbiased, and sharing the uniforms reduces its
variance. That costs ``1 + L`` loss evaluations for ``L`` layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import enumeration
from ..numerics import positive_int
from ..problems import FactoredGradient, Problem, Trajectory
from ..units import (
    BINARY,
    antithetic,
    binary_residual,
    check_temperature,
    flip_each,
    reinmax_local_derivative,
    relaxed_local_derivative,
    relaxed_with_derivative,
    sigmoid_derivative,
)
from . import seed_paper  # noqa: F401  (the seed paper's estimators register first)
from .base import Estimator, backpropagate, pathwise, register, sample_trajectory

__all__ = ["antithetic_losses"]


def _prepare_temperature(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    check_temperature(options["temperature"])
    return options


# ---- Gumbel-sigmoid / binary Concrete ------------------------------------------------------

def _gumbel_draw(problem: Problem, u: Tensor, temperature: float) -> FactoredGradient:
    parts = problem.split_units(u[:, 0])
    local = []   # each layer's dh/da, computed with h in the forward pass (layer order)

    def step(layer: int, a: Tensor):
        h, derivative = relaxed_with_derivative(a, parts[layer], temperature)
        local.append(derivative)
        return h, h

    traj = problem.forward(step, u.shape[0], dtype=u.dtype, device=u.device)
    _, top = problem.loss.value_and_grad(traj.output)
    return backpropagate(problem, traj, top, local)


GUMBEL = register(Estimator(
    name="gumbel",
    summary="backprop through h = sigmoid((a + l) / tau), l logistic (relaxed network)",
    draw=_gumbel_draw,
    noise="continuous",
    needs_loss_gradient=True,
    objective="relaxed",
    defaults={"temperature": 1.0},
    prepare=_prepare_temperature,
    reference="Maddison, Mnih & Teh 2017 (Concrete, ICLR); Jang, Gu & Poole 2017 (Gumbel-softmax, ICLR)",
))


def _st_gumbel_draw(problem: Problem, u: Tensor, temperature: float) -> FactoredGradient:
    parts = problem.split_units(u[:, 0])
    traj = sample_trajectory(problem, BINARY, u[:, 0])
    _, top = problem.loss.value_and_grad(traj.output)
    local = [relaxed_local_derivative(a, parts[layer], temperature) for layer, a in enumerate(traj.logits)]
    return backpropagate(problem, traj, top, local)


ST_GUMBEL = register(Estimator(
    name="st_gumbel",
    summary="hard b forward; backward dL/db * d sigmoid((a + l) / tau)/da",
    draw=_st_gumbel_draw,
    noise="continuous",
    needs_loss_gradient=True,
    objective="binary",
    defaults={"temperature": 1.0},
    prepare=_prepare_temperature,
    reference="Jang, Gu & Poole 2017 (ICLR), straight-through Gumbel-softmax; Bengio et al. 2013 for ST",
))


# ---- ARM and DisARM ------------------------------------------------------------------------

def antithetic_losses(problem: Problem, traj: Trajectory, u: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``f(b)`` of the main pass and, per layer ``t``, ``f`` with layer ``t`` antithetic and the
    layers above resampled from the same uniforms ``u [B, U]``."""
    parts = problem.split_units(u)
    main = problem.loss(traj.output)
    anti = []
    for t in range(problem.num_layers):
        h = antithetic(traj.logits[t], parts[t])
        for layer in range(t + 1, problem.num_layers):
            a = problem.logits(layer, h, {k: v.to(u) for k, v in problem.parameters.items()})
            h = BINARY.sample(a, parts[layer])[1]
        anti.append(problem.loss(h))
    return main, anti


def _arm_draw(problem: Problem, u: Tensor) -> FactoredGradient:
    u0 = u[:, 0]
    traj = sample_trajectory(problem, BINARY, u0)
    main, anti = antithetic_losses(problem, traj, u0)
    parts = problem.split_units(u0)
    deltas = [(f_anti - main)[:, None] * (parts[t] - 0.5) for t, f_anti in enumerate(anti)]
    return FactoredGradient(deltas, list(traj.inputs))


ARM = register(Estimator(
    name="arm",
    summary="(f(b~) - f(b)) (u - 1/2), b~ = 1[1 - u < p] antithetic",
    draw=_arm_draw,
    noise="continuous",
    unbiased=True,
    objective="binary",
    loss_evals=lambda problem, options: 1 + problem.num_layers,
    reference="Yin & Zhou 2019, ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks (ICLR)",
))


def _disarm_deltas(a: Tensor, b: Tensor, b_anti: Tensor, main: Tensor, anti: Tensor) -> Tensor:
    sign = torch.where(b_anti > 0.5, -1.0, 1.0).to(a)
    return 0.5 * (main - anti)[:, None] * sign * (b != b_anti).to(a) * torch.sigmoid(a.abs())


def _disarm_draw(problem: Problem, u: Tensor) -> FactoredGradient:
    u0 = u[:, 0]
    traj = sample_trajectory(problem, BINARY, u0)
    main, anti = antithetic_losses(problem, traj, u0)
    parts = problem.split_units(u0)
    deltas = []
    for t, f_anti in enumerate(anti):
        a, b = traj.logits[t], traj.indicators[t]
        b_anti = antithetic(a, parts[t])
        deltas.append(_disarm_deltas(a, b, b_anti, main, f_anti))
    return FactoredGradient(deltas, list(traj.inputs))


def _disarm_outcomes(problem: Problem, *, chunk_size: int, max_states: int):
    r"""Exact outcomes of DisARM on one stochastic layer: the ``3^N`` cells of ``u``.

    Per unit the thresholds :math:`\min(p, 1-p)` and :math:`\max(p, 1-p)` cut
    ``[0, 1)`` into three cells on which :math:`(b, \tilde b)` is constant:
    ``(1, 0)``, then ``(1, 1)`` if :math:`p \ge 1/2` else ``(0, 0)``, then
    ``(0, 1)``, with probabilities :math:`\sigma(-|a|)`, :math:`\tanh(|a|/2)`,
    :math:`\sigma(-|a|)`.
    """
    n = problem.num_units
    total = enumeration.check_enumerable(n, max_states, base=3, noun="antithetic cells (3 per unit)",
                                         what=f"disarm on {problem.description}")
    chunk_size = positive_int("chunk_size", chunk_size)
    x = None if problem.x is None else problem.x.expand(1, -1)
    a = problem.logits(0, x, batch_size=1).reshape(-1)
    edge, middle = torch.sigmoid(-a.abs()), torch.tanh(a.abs() / 2)
    upper = (a >= 0).to(a)
    cell_b = torch.stack([torch.ones_like(a), upper, torch.zeros_like(a)])   # [3, N]
    cell_anti = torch.stack([torch.zeros_like(a), upper, torch.ones_like(a)])
    cell_p = torch.stack([edge, middle, edge])
    powers = 3 ** torch.arange(n)
    for start in range(0, total, chunk_size):
        index = torch.arange(start, min(start + chunk_size, total))
        digits = (index[:, None] // powers) % 3                                  # [C, N]
        cols = torch.arange(n).expand_as(digits)
        b, b_anti = cell_b[digits, cols], cell_anti[digits, cols]
        weights = cell_p[digits, cols].prod(1)
        main, anti = problem.loss(b), problem.loss(b_anti)
        delta = _disarm_deltas(a.expand_as(b), b, b_anti, main, anti)
        yield weights, FactoredGradient([delta], [None if x is None else x.expand(len(index), -1)])


DISARM = register(Estimator(
    name="disarm",
    summary="(f(b) - f(b~))/2 (-1)^b~ 1[b != b~] sigmoid(|a|)",
    draw=_disarm_draw,
    outcomes=_disarm_outcomes,
    outcomes_per_unit=3,
    exact_max_layers=1,
    noise="discrete",
    unbiased=True,
    objective="binary",
    loss_evals=lambda problem, options: 1 + problem.num_layers,
    reference="Dong, Mnih & Tucker 2020, DisARM: An Antithetic Gradient Estimator for Binary Latent Variables (NeurIPS)",
))


# ---- REINFORCE leave-one-out ----------------------------------------------------------------

def _prepare_loo(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    k = options["k"]
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 2):
        raise ValueError(f"k must be an integer >= 2 (leave-one-out needs two samples), got {k!r}")
    return options


def _loo_states(problem: Problem, traj: Trajectory, k: int) -> FactoredGradient:
    loss = problem.loss(traj.output).reshape(-1, k)                       # [B, k]
    centred = (loss - loss.mean(1, keepdim=True)) / (k - 1)
    deltas, inputs = [], []
    for a, h, inp in zip(traj.logits, traj.indicators, traj.inputs):
        score = binary_residual(a, h).reshape(loss.shape[0], k, -1)
        deltas.append(score * centred[:, :, None])
        inputs.append(None if inp is None else inp.reshape(loss.shape[0], k, -1))
    return FactoredGradient(deltas, inputs)


def _loo_draw(problem: Problem, u: Tensor, k: int) -> FactoredGradient:
    flat = u.reshape(-1, problem.num_units)   # draw-major: draw i's passes are rows i*k .. i*k+k-1
    return _loo_states(problem, sample_trajectory(problem, BINARY, flat), k)


REINFORCE_LOO = register(Estimator(
    name="reinforce_loo",
    summary="1/(k-1) sum_j (f_j - mean f) (b_j - p), k samples",
    draw=_loo_draw,
    from_states=_loo_states,
    unit=BINARY,
    copies=lambda options: options["k"],
    noise="discrete",
    unbiased=True,
    objective="binary",
    defaults={"k": 2},
    prepare=_prepare_loo,
    loss_evals=lambda problem, options: options["k"],
    noise_per_unit=lambda options: options["k"],
    reference="Kool, van Hoof & Welling 2019 (Buy 4 REINFORCE samples, ICLR workshop); Mnih & Rezende 2016 (VIMCO)",
))


# ---- ReinMax ---------------------------------------------------------------------------------

REINMAX = pathwise(
    "reinmax", reinmax_local_derivative,
    summary="dL/db * (2 r (1 - r) - p (1 - p)/2), r = (b + sigmoid(a / tau))/2",
    defaults={"temperature": 1.0}, prepare=_prepare_temperature, max_layers=1,
    reference="Liu, Dong, Liu, Yu & Gao 2023, Bridging Discrete and Backpropagation: "
              "Straight-Through and Beyond (NeurIPS); ReinMax for two categories",
)


# ---- Local expectation (every unit's two values, the rest held fixed) -----------------------

def _flipped_losses(problem: Problem, traj: Trajectory, layer: int, parts: list[Tensor] | None) -> Tensor:
    """``f`` with unit ``i`` of ``layer`` flipped, for every ``i``: ``[B, n]``. The units above are
    resampled from the draw's own uniforms ``parts`` (common random numbers)."""
    h = traj.indicators[layer]
    batch, n = h.shape
    flipped = flip_each(h, axis=-2).reshape(batch * n, n)
    params = {k: v.to(h) for k, v in problem.parameters.items()}
    for upper in range(layer + 1, problem.num_layers):
        a = problem.logits(upper, flipped, params)
        flipped = BINARY.sample(a, parts[upper].repeat_interleave(n, 0))[1]
    return problem.loss(flipped).reshape(batch, n)


def _local_expectation_deltas(problem: Problem, traj: Trajectory, parts: list[Tensor] | None) -> FactoredGradient:
    r"""Local expectation per unit: :math:`\sigma'(a_i)\,(f(h^{i\leftarrow 1}) - f(h^{i\leftarrow 0}))`.

    The other units of unit ``i``'s layer and the layers below are held at the draw's values; the layers
    above are resampled from the draw's uniforms in both branches. Given everything below and beside
    unit ``i``, each branch's expectation over those uniforms is the conditional expected loss, so the
    estimate is unbiased (Eq. 5 of Bengio et al. 2013 with the expectation over :math:`h_i` done
    exactly); sharing the uniforms lowers its variance. Cost: ``1 + U`` loss evaluations (one flip per
    unit). References: Titsias & Lazaro-Gredilla 2015; Tokui & Sato 2017.
    """
    main = problem.loss(traj.output)[:, None]
    deltas = []
    for layer, (a, h) in enumerate(zip(traj.logits, traj.indicators)):
        difference = (1 - 2 * h) * (_flipped_losses(problem, traj, layer, parts) - main)   # f(h_i = 1) - f(h_i = 0)
        deltas.append(sigmoid_derivative(a) * difference)
    return FactoredGradient(deltas, list(traj.inputs))


def _local_expectation_draw(problem: Problem, u: Tensor) -> FactoredGradient:
    traj = sample_trajectory(problem, BINARY, u[:, 0])
    return _local_expectation_deltas(problem, traj, problem.split_units(u[:, 0]))


def _local_expectation_states(problem: Problem, traj: Trajectory) -> FactoredGradient:
    if problem.num_layers != 1:
        raise ValueError("local_expectation's exact outcomes are over one stochastic layer's states")
    return _local_expectation_deltas(problem, traj, None)


LOCAL_EXPECTATION = register(Estimator(
    name="local_expectation",
    summary="sigma'(a_i) (f(h_i = 1) - f(h_i = 0)), the rest of h fixed and the layers above on the same uniforms",
    draw=_local_expectation_draw,
    noise="discrete",
    exact_max_layers=1,           # one layer's exact outcomes: its binary states; deeper networks use Monte Carlo
    from_states=_local_expectation_states,
    unit=BINARY,
    unbiased=True,
    objective="binary",
    loss_evals=lambda problem, options: 1 + problem.num_units,
    reference="Titsias & Lazaro-Gredilla 2015, Local Expectation Gradients for Black Box Variational Inference "
              "(NeurIPS); Tokui & Sato 2017, Evaluating the Variance of Likelihood-Ratio Gradient Estimators (ICML)",
))
