r"""Exact references by enumeration, in float64.

For a problem with ``U`` Bernoulli indicators the objective is the finite sum

.. math:: J(\theta) = \sum_{s \in \{0,1\}^U} P_\theta(s)\, L(h_\theta(s)),

over the binary network (``objective="binary"``: ``h = s``) or the STS
network (``objective="sts"``: ``P(s_i = 1) = \sqrt{p_i}``, ``h_i = s_i \sqrt{p_i}``,
whose values also depend on :math:`\theta`). :func:`exact_gradient`
differentiates that sum with autograd, chunk by chunk (the gradient of a sum
is the sum of the chunks' gradients), so both the score part and the pathwise
part are included. :func:`exact_moments` gives the mean, per-coordinate
variance and covariance of an estimator whose randomness is one pass of
indicators, as probability-weighted sums over the same states.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from . import enumeration
from .accumulators import GradientAccumulator, Moments
from .estimators import get, resolve_options
from .problems import Problem
from .units import BINARY, STS, BernoulliUnit

__all__ = ["exact_loss", "exact_gradient", "exact_moments", "OBJECTIVE_UNITS", "FULL_COVARIANCE_MAX_DIM"]

OBJECTIVE_UNITS: dict[str, BernoulliUnit] = {"binary": BINARY, "sts": STS}
FULL_COVARIANCE_MAX_DIM = 2048
_TOTAL_PROBABILITY_TOLERANCE = 1e-9


def _unit(objective: str) -> BernoulliUnit:
    if objective not in OBJECTIVE_UNITS:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVE_UNITS)} for exact enumeration, got {objective!r}")
    return OBJECTIVE_UNITS[objective]


def _check_total(total: float, what: str) -> None:
    if abs(total - 1.0) > _TOTAL_PROBABILITY_TOLERANCE:
        raise RuntimeError(f"enumerated probabilities of {what} sum to {total!r}, not 1")


def exact_loss(problem: Problem, objective: str = "binary", *, chunk_size: int = enumeration.DEFAULT_CHUNK_SIZE,
               max_states: int = enumeration.DEFAULT_MAX_STATES) -> float:
    """``E[L]`` under the binary (or STS) network, by enumeration."""
    unit = _unit(objective)
    total, value = 0.0, torch.zeros((), dtype=torch.float64)
    for traj in enumeration.trajectories(problem, unit, chunk_size=chunk_size, max_states=max_states):
        w = traj.log_prob.exp()
        total += float(w.sum())
        value += w @ problem.loss(traj.output)
    _check_total(total, problem.description)
    return float(value)


def exact_gradient(problem: Problem, objective: str = "binary", *,
                   chunk_size: int = enumeration.DEFAULT_CHUNK_SIZE,
                   max_states: int = enumeration.DEFAULT_MAX_STATES) -> Tensor:
    """``dE[L]/dtheta`` as a 1-D float64 tensor in ``problem.parameter_names()`` order."""
    unit = _unit(objective)
    leaves = {k: v.clone().requires_grad_(True) for k, v in problem.parameters.items()}
    grads = [torch.zeros_like(v) for v in leaves.values()]
    total = 0.0
    with torch.enable_grad():
        for traj in enumeration.trajectories(problem, unit, parameters=leaves, chunk_size=chunk_size,
                                             max_states=max_states):
            w = traj.log_prob.exp()
            total += float(w.detach().sum())
            chunk_value = w @ problem.loss(traj.output)
            for acc, g in zip(grads, torch.autograd.grad(chunk_value, list(leaves.values()), allow_unused=True)):
                if g is not None:
                    acc += g
    _check_total(total, problem.description)
    return torch.cat([g.reshape(-1) for g in grads])


def exact_moments(problem: Problem, estimator, *, references: dict[str, Tensor] | None = None,
                  full_covariance: bool | None = None, chunk_size: int = enumeration.DEFAULT_CHUNK_SIZE,
                  max_states: int = enumeration.DEFAULT_MAX_STATES, **options) -> Moments:
    """Exact mean, variance and covariance of a discrete-noise estimator's per-draw gradient.

    ``full_covariance`` defaults to ``D <= FULL_COVARIANCE_MAX_DIM``. With
    ``references`` (name -> gradient), the per-draw metrics against each are
    exact too (``Moments.summary``).
    """
    start = time.perf_counter()
    est = get(estimator)
    if est.noise != "discrete":
        raise ValueError(f"estimator {est.name!r} has continuous noise: its moments need method='mc'")
    if not est.exact_supported(problem):
        raise ValueError(f"exact moments of {est.name!r} are implemented for networks of at most "
                         f"{est.exact_max_layers} stochastic layer(s); {problem.description} has {problem.num_layers}: "
                         "use method='mc'")
    resolved = resolve_options(est, problem, options)
    if est.stateful(resolved):
        raise ValueError(f"estimator {est.name!r} with these options draws from a stream (each draw depends on the draws "
                         "before it, as with baseline='running'): its moments need method='mc'")
    full = problem.num_parameters <= FULL_COVARIANCE_MAX_DIM if full_covariance is None else bool(full_covariance)
    acc = GradientAccumulator(problem, references, full)
    for weights, gradient in est.outcomes(problem, chunk_size=chunk_size, max_states=max_states, **resolved):
        acc.add(gradient, weights)
    _check_total(acc.summary.weight, problem.description)
    return Moments.from_summary(acc.summary, method="exact", estimator=est.name,
                                loss_evals_per_draw=est.loss_evals(problem, resolved), seconds=time.perf_counter() - start)
