r"""The estimators of Bengio, Léonard & Courville (2013), arXiv:1308.3432.

Notation: pre-activation ``a``, :math:`p = \sigma(a)`, uniforms ``u``,
binary sample :math:`h = 1[u < p]` (Eq. 3 with its inequality corrected,
see :mod:`gradstats.units`), loss ``L`` of the last layer. Each estimator
gives :math:`\hat g_l \approx dE[L]/da_l` per layer (a delta); the gradient of
``W_l`` is the delta times the layer's input (:class:`~gradstats.problems.FactoredGradient`).
What is detached: REINFORCE differentiates nothing; ST, STS and the noisy
rectifier backpropagate with the sample's randomness held fixed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import enumeration
from ..numerics import safe_divide
from ..problems import FactoredGradient, Problem, Trajectory
from ..units import BINARY, NOISES, STS, binary_residual, noise_quantile, sigmoid_derivative, sts_local_derivative
from .base import Estimator, backpropagate, pathwise, register, sample_trajectory

__all__ = ["optimal_baseline"]

PAPER = "Bengio, Léonard & Courville 2013, arXiv:1308.3432"
RUNNING_DECAY = 0.999  # per draw: the running averages remember about 1000 draws


# ---- REINFORCE (Theorem 1, Corollary 1, Eq. 10) --------------------------------------

def optimal_baseline(problem: Problem, **enumeration_options) -> Tensor:
    r"""Eq. 10 per unit, exactly: :math:`\bar L_i = E[(h_i - p_i)^2 L] / E[(h_i - p_i)^2]`.

    Computed by enumerating the binary network; ``0`` where the denominator is 0
    (a saturated unit). Returns ``[U]`` in layer order.
    """
    num = torch.zeros(problem.num_units, dtype=torch.float64)
    den = torch.zeros(problem.num_units, dtype=torch.float64)
    for traj in enumeration.trajectories(problem, BINARY, **enumeration_options):
        w = traj.log_prob.exp()
        loss = problem.loss(traj.output)
        sq = torch.cat([binary_residual(a, b).square() for a, b in zip(traj.logits, traj.indicators)], dim=1)
        num += (w * loss) @ sq
        den += w @ sq
    return safe_divide(num, den)


def _prepare_reinforce(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    baseline = options["baseline"]
    decay = options["decay"]
    if not (isinstance(decay, (int, float)) and 0 < decay < 1):
        raise ValueError(f"decay must be a number in (0, 1), got {decay!r}")
    units = problem.num_units
    if baseline is None:
        value = torch.zeros(units, dtype=torch.float64)
    elif isinstance(baseline, str):
        if baseline == "optimal":
            value = optimal_baseline(problem)
        elif baseline == "running":
            return options
        else:
            raise ValueError(f"baseline must be None, a number, {units} numbers (one per unit), "
                             f"'optimal' or 'running'; got {baseline!r}")
    else:
        try:
            value = torch.as_tensor(baseline, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"baseline must be None, a number, {units} numbers, 'optimal' or 'running': {err}") from err
        if value.ndim == 0:
            value = value.expand(units).clone()
        if value.shape != (units,):
            raise ValueError(f"baseline must be a number or {units} numbers (one per unit), got shape {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"baseline must be finite, got {value.tolist()}")
    return {**options, "baseline": value}


def _reinforce_states(problem: Problem, traj: Trajectory, baseline: Tensor, decay: float = RUNNING_DECAY) -> FactoredGradient:
    loss = problem.loss(traj.output)[:, None]
    centred = [loss - b.to(loss) for b in problem.split_units(baseline)]
    deltas = [binary_residual(a, h) * c for a, h, c in zip(traj.logits, traj.indicators, centred)]
    return FactoredGradient(deltas, list(traj.inputs))


def moving_average_before(x: Tensor, start: Tensor, decay: float) -> tuple[Tensor, Tensor]:
    r"""Exponential moving averages seen *before* each row: :math:`s_0 = \mathrm{start}`,
    :math:`s_{i+1} = \beta s_i + (1 - \beta) x_i`; returns ``(s_0 .. s_{B-1}, s_B)``.

    Vectorised in blocks short enough that :math:`\beta^{-L}` stays below 1e150:
    :math:`s_i = \beta^i (s_0 + (1 - \beta) \sum_{j<i} \beta^{-(j+1)} x_j)`.
    """
    block = max(1, int(150 * math.log(10) / -math.log(decay)))
    out = torch.empty_like(x)
    state = start.to(x)
    for lo in range(0, x.shape[0], block):
        xb = x[lo:lo + block]
        i = torch.arange(xb.shape[0] + 1, dtype=x.dtype, device=x.device)
        weights = decay ** -(i[1:])[:, None]
        partial = torch.cat([torch.zeros_like(state)[None], torch.cumsum(weights * xb, 0)])   # exclusive sums, B + 1
        values = (decay ** i)[:, None] * (state + (1 - decay) * partial)
        out[lo:lo + xb.shape[0]] = values[:-1]
        state = values[-1]
    return out, state


def _reinforce_draw(problem: Problem, u: Tensor, baseline, decay: float = RUNNING_DECAY, state=None):
    traj = sample_trajectory(problem, BINARY, u[:, 0])
    if not (isinstance(baseline, str) and baseline == "running"):
        return _reinforce_states(problem, traj, baseline)
    loss = problem.loss(traj.output)
    residual = torch.cat([binary_residual(a, h) for a, h in zip(traj.logits, traj.indicators)], 1)
    square = residual.square()
    if state is None:
        state = torch.zeros(2, problem.num_units, dtype=u.dtype, device=u.device)
    num, num_end = moving_average_before(square * loss[:, None], state[0], decay)
    den, den_end = moving_average_before(square, state[1], decay)
    running = safe_divide(num, den)
    deltas = [r * (loss[:, None] - b) for r, b in zip(problem.split_units(residual), problem.split_units(running))]
    return FactoredGradient(deltas, list(traj.inputs)), torch.stack([num_end, den_end])


REINFORCE = register(Estimator(
    name="reinforce",
    summary="(h - p)(L - b): score function with a constant per-unit baseline b",
    draw=_reinforce_draw,
    from_states=_reinforce_states,
    stateful=lambda options: isinstance(options["baseline"], str) and options["baseline"] == "running",
    unit=BINARY,
    noise="discrete",
    unbiased=True,
    needs_loss_gradient=False,
    objective="binary",
    defaults={"baseline": None, "decay": RUNNING_DECAY},
    prepare=_prepare_reinforce,
    reference=f"{PAPER}, sec. 3, Theorem 1, Corollary 1, Eq. 10",
))


# ---- straight-through (sec. 4, Eq. 13; A.4) ------------------------------------------

def straight_through_derivative(a: Tensor, b: Tensor) -> Tensor:
    """Straight-through (sec. 4, Eq. 13, after Hinton 2012, lecture 15b): the hard threshold's derivative is
    taken to be 1, so dL/dh is copied to dL/da. Biased; one loss evaluation and its gradient a draw."""
    return torch.ones_like(a)


def sigmoid_derivative_variant(a: Tensor, b: Tensor) -> Tensor:
    """Straight-through's variant of appendix A.4: dL/dh times sigmoid'(a) (exact on one layer for multilinear
    losses). Biased in general; one loss evaluation and its gradient a draw."""
    return sigmoid_derivative(a)


ST = pathwise("st", straight_through_derivative, summary="dL/dh copied to dL/da (hard threshold treated as the identity)",
              reference=f"{PAPER}, sec. 4, Eq. 13 (after Hinton 2012, lecture 15b)")
ST_SIGMOID = pathwise("st_sigmoid", sigmoid_derivative_variant, summary="dL/dh * sigmoid'(a)",
                      reference=f"{PAPER}, sec. 4 and appendix A.4")


# ---- stochastic times smooth (sec. 2.2, Eq. 2) ----------------------------------------

STS_ESTIMATOR = pathwise(
    "sts", sts_local_derivative, unit=STS, objective="sts",
    summary="backprop through h = b sqrt(p), b ~ Bernoulli(sqrt p) held fixed",
    reference=f"{PAPER}, sec. 2.2, Eq. 2, Proposition 2",
)


# ---- noisy rectifier (sec. 2.1, Proposition 1) ----------------------------------------

def _prepare_noisy_rectifier(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    if options["noise"] not in NOISES:
        raise ValueError(f"noise must be one of {sorted(NOISES)}, got {options['noise']!r}")
    scale = options["scale"]
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    return options


def _noisy_rectifier_draw(problem: Problem, u: Tensor, noise: str, scale: float) -> FactoredGradient:
    parts = problem.split_units(u[:, 0])

    def step(layer: int, a: Tensor):
        s = a + noise_quantile(parts[layer], noise, scale)
        on = (s > 0).to(a.dtype)
        return on, s * on

    traj = problem.forward(step, u.shape[0], dtype=u.dtype, device=u.device)
    _, top = problem.loss.value_and_grad(traj.output)
    return backpropagate(problem, traj, top, list(traj.indicators))


NOISY_RECTIFIER = register(Estimator(
    name="noisy_rectifier",
    summary="backprop through h = max(0, a + z), z = scale * F^-1(u)",
    draw=_noisy_rectifier_draw,
    noise="continuous",
    needs_loss_gradient=True,
    objective="noisy_rectifier",
    defaults={"noise": "gaussian", "scale": 1.0},
    prepare=_prepare_noisy_rectifier,
    reference=f"{PAPER}, sec. 2.1, Proposition 1",
))
