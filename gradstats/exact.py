r"""Exact references by enumeration, in float64.

For a problem with ``U`` Bernoulli indicators the objective is the finite sum

.. math:: J(\theta) = \sum_{s \in \{0,1\}^U} P_\theta(s)\, L(h_\theta(s)),

over the binary network (``objective="binary"``: ``h = s``) or the STS
network (``objective="sts"``: ``P(s_i = 1) = \sqrt{p_i}``, ``h_i = s_i \sqrt{p_i}``,
whose values also depend on :math:`\theta`); for ``N`` categorical units of ``K`` classes
(:func:`gradstats.problems.categorical`) it runs over the :math:`K^N` one-hot states. :func:`exact_gradient`
differentiates that sum with autograd, chunk by chunk (the gradient of a sum
is the sum of the chunks' gradients), so both the score part and the pathwise
part are included. :func:`exact_moments` gives the mean, per-coordinate
variance and covariance of an estimator whose randomness is one pass of
indicators, as probability-weighted sums over the same states.

Every function takes ``device=``: the states are made, run and summed there
(``"auto"``: CUDA when present), in float64, ``chunk_size`` states at a time
(``None``: 2^16 on the CPU, 2^21 on a GPU). Results come back on the CPU.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from . import enumeration
from .accumulators import GradientAccumulator, Moments
from .estimators import NonFiniteError, check_gradient, get, resolve_options
from .noise import resolve_device
from .numerics import float64_references, optional_bool
from .problems import Problem, Trajectory, check_problem
from .units import BINARY, STS, BernoulliUnit, CategoricalUnit

__all__ = ["exact_loss", "exact_gradient", "exact_moments", "OBJECTIVE_UNITS", "FULL_COVARIANCE_MAX_DIM"]

OBJECTIVE_UNITS: dict[str, BernoulliUnit] = {"binary": BINARY, "sts": STS}
FULL_COVARIANCE_MAX_DIM = 2048
_TOTAL_PROBABILITY_TOLERANCE = 1e-9


def _unit(objective: str, problem: Problem) -> BernoulliUnit | CategoricalUnit:
    """The law enumerated: the objective's Bernoulli unit, or a categorical problem's own units."""
    if problem.num_classes is not None:
        if objective != "binary":
            raise ValueError(f"objective must be 'binary' (the network of discrete units) for the categorical problem "
                             f"{problem.description}, got {objective!r}")
        return CategoricalUnit(problem.num_classes)
    if objective not in OBJECTIVE_UNITS:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVE_UNITS)} for exact enumeration, got {objective!r}")
    return OBJECTIVE_UNITS[objective]


def _check_total(total: float, what: str) -> None:
    if abs(total - 1.0) > _TOTAL_PROBABILITY_TOLERANCE:
        raise RuntimeError(f"enumerated probabilities of {what} sum to {total!r}, not 1")


def _finite_losses(problem: Problem, traj: Trajectory, offset: int) -> torch.Tensor:
    """The loss of every enumerated state of the chunk, or a NonFiniteError naming the first bad state."""
    values = problem.loss(traj.output)
    bad = ~torch.isfinite(values.detach())
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0])
        state = traj.output[row].detach().tolist()
        raise NonFiniteError(f"loss {problem.loss.name!r} is {float(values[row])} at enumerated state {offset + row} "
                             f"(h = {[round(v, 6) for v in state]}) of {problem.description}")
    return values


def _modal_loss(problem: Problem, unit: BernoulliUnit | CategoricalUnit) -> float:
    r"""The loss of the greedy mode (each layer's most likely indicators given the layer below).

    Subtracting a constant ``c`` from the loss leaves the gradient unchanged
    (:math:`\sum_s \nabla P(s) = 0`) and, with ``c`` near the losses of the likely states, removes the
    cancellation between states whose losses differ little (the STS objective at ``a = -50``).
    """
    def step(layer: int, a: torch.Tensor):
        b = unit.mode(a)
        return b, unit.value(a, b)

    value = float(problem.loss(problem.forward(step, 1).output)[0])
    return value if math.isfinite(value) else 0.0


def exact_loss(problem: Problem, objective: str = "binary", *, chunk_size: int | None = None,
               max_states: int = enumeration.DEFAULT_MAX_STATES, device="cpu") -> float:
    """``E[L]`` under the binary (or STS) network, by enumeration (a non-finite loss at any state
    raises :class:`~gradstats.estimators.NonFiniteError` naming it)."""
    check_problem(problem)
    unit = _unit(objective, problem)
    dev = resolve_device(device)
    total, value, offset = 0.0, torch.zeros((), dtype=torch.float64, device=dev), 0
    for traj in enumeration.trajectories(problem, unit, chunk_size=chunk_size, max_states=max_states, device=dev):
        w = traj.log_prob.exp()
        total += float(w.sum())
        value += w @ _finite_losses(problem, traj, offset)
        offset += w.shape[0]
    _check_total(total, problem.description)
    return float(value)


def exact_gradient(problem: Problem, objective: str = "binary", *, chunk_size: int | None = None,
                   max_states: int = enumeration.DEFAULT_MAX_STATES, device="cpu") -> Tensor:
    """``dE[L]/dtheta`` as a 1-D float64 tensor in ``problem.parameter_names()`` order (on the CPU).

    A non-finite loss at any state, or a non-finite gradient from a chunk of states, raises
    :class:`~gradstats.estimators.NonFiniteError` naming the state or the chunk.
    """
    check_problem(problem)
    unit = _unit(objective, problem)
    dev = resolve_device(device)
    leaves = {k: v.to(dev).clone().requires_grad_(True) for k, v in problem.parameters.items()}
    grads = [torch.zeros_like(v) for v in leaves.values()]
    total, offset = 0.0, 0
    centre = _modal_loss(problem, unit)
    with torch.enable_grad():
        for traj in enumeration.trajectories(problem, unit, parameters=leaves, chunk_size=chunk_size,
                                             max_states=max_states, device=dev):
            w = traj.log_prob.exp()
            total += float(w.detach().sum())
            chunk_value = w @ (_finite_losses(problem, traj, offset) - centre)
            for name, acc, g in zip(leaves, grads, torch.autograd.grad(chunk_value, list(leaves.values()),
                                                                       allow_unused=True)):
                if g is None:
                    continue
                if not bool(torch.isfinite(g).all()):
                    raise NonFiniteError(f"the {objective} objective's gradient with respect to {name} is not finite "
                                         f"over enumerated states {offset} to {offset + w.shape[0] - 1} of "
                                         f"{problem.description} (a NaN or infinity from the loss's derivative)")
                acc += g
            offset += w.shape[0]
    _check_total(total, problem.description)
    return torch.cat([g.reshape(-1) for g in grads]).cpu()


def exact_moments(problem: Problem, estimator, *, references: dict[str, Tensor] | None = None,
                  full_covariance: bool | None = None, chunk_size: int | None = None,
                  max_states: int = enumeration.DEFAULT_MAX_STATES, device="cpu", **options) -> Moments:
    """Exact mean, variance and covariance of a discrete-noise estimator's per-draw gradient.

    ``full_covariance`` defaults to ``D <= FULL_COVARIANCE_MAX_DIM``. With
    ``references`` (name -> gradient), the per-draw metrics against each are
    exact too (``Moments.statistics``).
    """
    start = time.perf_counter()
    check_problem(problem)
    full = optional_bool("full_covariance", full_covariance)
    references = float64_references(references, problem.num_parameters)
    dev = resolve_device(device)
    chunk_size = enumeration.chunk_size_for(dev, chunk_size)
    est = get(estimator)
    if est.noise != "discrete":
        raise ValueError(f"estimator {est.name!r} has continuous noise: its moments need method='mc'")
    if est.max_layers is not None and problem.num_layers > est.max_layers:
        resolve_options(est, problem, options)       # says the estimator is not defined there (no 'mc' either)
    if not est.exact_supported(problem):
        raise ValueError(f"exact moments of {est.name!r} are implemented for networks of at most "
                         f"{est.exact_max_layers} stochastic layer(s); {problem.description} has {problem.num_layers}: "
                         "use method='mc'")
    resolved = resolve_options(est, problem, options)
    if est.stateful(resolved):
        raise ValueError(f"estimator {est.name!r} with these options draws from a stream (each draw depends on the draws "
                         "before it, as with baseline='running'): its moments need method='mc'")
    full = problem.num_parameters <= FULL_COVARIANCE_MAX_DIM if full is None else full
    acc = GradientAccumulator(problem, references, full, device=dev)
    offset = 0
    for weights, gradient in est.outcomes(problem, chunk_size=chunk_size, max_states=max_states, device=dev,
                                          **resolved):
        check_gradient(est.name, problem, gradient, weights.shape[0],
                       lambda row, first=offset: f"enumerated outcome {first + row}")
        acc.add(gradient, weights)
        offset += weights.shape[0]
    _check_total(acc.summary.weight, problem.description)
    return Moments.from_summary(acc.summary, method="exact", estimator=est.name,
                                loss_evals_per_draw=est.loss_evals(problem, resolved), seconds=time.perf_counter() - start,
                                source=(problem, est, resolved))
