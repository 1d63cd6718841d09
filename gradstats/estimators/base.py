r"""The estimator contract, the registry, and the helpers every estimator shares.

Contract: an estimator maps a problem and a batch of uniforms to one gradient
estimate per draw,

    ``draw(problem, u, **options) -> FactoredGradient | Tensor[B, D]``,

``u`` of shape ``[B, m, U]`` (``m`` uniforms per unit per draw, usually 1; ``U``
units in layer order). Draws are i.i.d. across the batch; statistics are
computed elsewhere, never inside an estimator. Estimators whose randomness is
a single pass of Bernoulli indicators also give

    ``from_states(problem, trajectory, **options)``

for a batch of given indicator states (drawn, or enumerated by the exact
engine under ``unit``'s law). A *stateful* estimator (REINFORCE with
``baseline="running"``) also takes and returns a state carried from one
batch of draws to the next, in draw order. Common random numbers: every estimator of the
binary neuron takes its sample as ``h = 1[u[:, 0] < sigmoid(a)]``, so with one
seed all of them see the same binary sample.

The flags (unbiased, needs dL/dh, discrete or continuous noise, its own
objective, loss evaluations per draw) are data that tests and engines read.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import enumeration
from ..problems import FactoredGradient, Problem, Trajectory
from ..units import BINARY, BernoulliUnit, local_derivative_like

__all__ = [
    "Estimator",
    "register",
    "get",
    "names",
    "resolve_options",
    "sample_trajectory",
    "backpropagate",
    "backpropagate_loss",
    "make_pathwise",
    "pathwise",
    "check_gradient",
    "NonFiniteError",
    "OBJECTIVES",
]

OBJECTIVES = ("binary", "sts", "noisy_rectifier", "relaxed")
ALL_KINDS = frozenset({"toy", "independent", "sbn"})


def _one(*args) -> int:
    return 1


def _never(options: Mapping[str, Any]) -> bool:
    return False


@dataclass(frozen=True)
class Estimator:
    """A registered gradient estimator and its capability flags.

    Attributes
    ----------
    name
        Registry name.
    draw
        ``(problem, u [B, m, U], **options) -> FactoredGradient | [B, D]``; derived from
        ``from_states`` and ``unit`` when absent (one pass sampled from ``u[:, 0]``).
    summary
        One line: the formula.
    unbiased
        Unbiased for the binary network's gradient.
    needs_loss_gradient
        Uses ``dL/dh`` (refuses losses without one).
    noise
        ``"discrete"`` (exact moments by enumeration) or ``"continuous"``.
    objective
        The objective its own unit defines (one of :data:`OBJECTIVES`).
    reference
        Where it is defined.
    defaults
        Its options and their default values; ``None`` passes any option
        through (user callables).
    kinds
        Problem kinds it supports.
    from_states
        Per-draw gradient from given indicator states: ``copies``
        independent passes per draw, stacked draw-major (``[B * copies, ...]``).
    unit
        The law of the states that ``from_states`` is enumerated under.
    copies
        Independent passes one draw uses (``k`` for leave-one-out).
    outcomes_per_unit
        Outcomes the exact engine enumerates per unit and pass (2 for
        Bernoulli states, 3 for DisARM's antithetic cells).
    outcomes
        ``(problem, chunk_size=, max_states=, device=, **options)`` yielding
        ``(probabilities [C], gradients)`` on ``device`` over every outcome of the noise, for
        exact moments; derived from ``from_states`` and ``unit`` when absent.
    loss_evals
        Loss evaluations per draw, from the problem and the options.
    noise_per_unit
        Uniforms per unit per draw (``m``), from the options.
    max_layers
        The deepest network it is defined for (``None``: any).
    exact_max_layers
        The deepest network its exact moments are implemented for.
    stateful
        Whether, with these options, a draw depends on the draws before it
        (REINFORCE's running baseline); then ``draw`` takes ``state=`` and returns
        ``(gradient, state)``, the Monte Carlo engine carries the state across chunks in
        draw order, and exact moments do not exist.
    prepare
        ``(problem, options) -> options``: validates and resolves options
        that depend on the problem (such as an exact optimal baseline).
    """

    name: str
    draw: Callable[..., FactoredGradient | Tensor] | None = None
    summary: str = ""
    unbiased: bool = False
    needs_loss_gradient: bool = False
    noise: str = "continuous"
    objective: str = "binary"
    reference: str = ""
    defaults: Mapping[str, Any] | None = field(default_factory=dict)
    kinds: frozenset[str] = ALL_KINDS
    from_states: Callable[..., FactoredGradient | Tensor] | None = None
    unit: BernoulliUnit | None = None
    copies: Callable[[Mapping[str, Any]], int] = _one
    outcomes_per_unit: int = 2
    outcomes: Callable[..., Iterator[tuple[Tensor, FactoredGradient | Tensor]]] | None = None
    loss_evals: Callable[[Problem, Mapping[str, Any]], int] = _one
    noise_per_unit: Callable[[Mapping[str, Any]], int] = _one
    max_layers: int | None = None
    exact_max_layers: int | None = None
    stateful: Callable[[Mapping[str, Any]], bool] = _never
    prepare: Callable[[Problem, dict[str, Any]], dict[str, Any]] | None = None

    def __post_init__(self):
        if self.noise not in ("discrete", "continuous"):
            raise ValueError(f"noise must be 'discrete' or 'continuous', got {self.noise!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.draw is None and self.from_states is not None and self.unit is not None:
            object.__setattr__(self, "draw", _state_draw(self))
        if self.draw is None:
            raise ValueError(f"estimator {self.name!r} needs draw, or from_states and unit")
        if self.outcomes is None and self.from_states is not None and self.unit is not None:
            object.__setattr__(self, "outcomes", _state_outcomes(self))
        if self.noise == "discrete" and self.outcomes is None:
            raise ValueError(f"estimator {self.name!r} has discrete noise but no outcomes to enumerate")

    def exact_state_count(self, problem: Problem, options: Mapping[str, Any]) -> int:
        """How many outcomes exact moments enumerate: ``outcomes_per_unit^(U copies)``, or ``K^(N copies)`` for
        ``N`` categorical units of ``K`` classes."""
        copies = self.copies({**(self.defaults or {}), **options})
        if problem.num_classes is not None:
            return problem.num_classes ** (problem.num_variables * copies)
        return self.outcomes_per_unit ** (problem.num_units * copies)

    def exact_supported(self, problem: Problem) -> bool:
        """Whether exact moments on ``problem`` are implemented (discrete noise, depth within reach)."""
        return self.noise == "discrete" and (self.exact_max_layers is None or problem.num_layers <= self.exact_max_layers)

    def exact_possible(self, problem: Problem, options: Mapping[str, Any], max_states: int) -> bool:
        """Whether exact moments with these options are implemented and within ``max_states`` outcomes
        (a stateful estimator, such as REINFORCE's running baseline, has none)."""
        return (self.exact_supported(problem) and not self.stateful({**(self.defaults or {}), **options})
                and self.exact_state_count(problem, options) <= max_states)


def _state_draw(est: Estimator):
    """Draws of a state-based estimator: its ``copies`` passes sampled under ``est.unit`` from ``u[:, :copies]``,
    stacked draw-major (draw ``i``'s passes are rows ``i*k .. i*k+k-1``), as ``from_states`` takes them."""

    def draw(problem: Problem, u: Tensor, **options):
        passes = u[:, :est.copies(options)].reshape(-1, problem.num_units)
        return est.from_states(problem, sample_trajectory(problem, est.unit, passes), **options)

    return draw


def _state_outcomes(est: Estimator):
    """Exact outcomes of a state-based estimator: every joint state of its ``copies`` passes."""

    def outcomes(problem: Problem, *, chunk_size: int, max_states: int, device="cpu", **options):
        for traj in enumeration.trajectories(problem, est.unit, copies=est.copies(options),
                                             chunk_size=chunk_size, max_states=max_states, device=device):
            yield traj.log_prob.exp(), est.from_states(problem, traj, **options)

    return outcomes


_REGISTRY: dict[str, Estimator] = {}


def register(estimator: Estimator, *, replace: bool = False) -> Estimator:
    """Add ``estimator`` to the registry. A name is registered once, unless ``replace`` (so that a notebook cell
    that registers an estimator can run twice)."""
    if estimator.name in _REGISTRY and not replace:
        raise ValueError(f"an estimator named {estimator.name!r} is already registered (replace=True replaces it)")
    _REGISTRY[estimator.name] = estimator
    return estimator


def make_pathwise(name: str, local_derivative: Callable[..., Tensor | float], *, summary: str | None = None,
                  reference: str | None = None, unit: BernoulliUnit = BINARY, objective: str = "binary",
                  defaults: Mapping[str, Any] | None = None,
                  prepare: Callable[[Problem, dict[str, Any]], dict[str, Any]] | None = None,
                  max_layers: int | None = None) -> Estimator:
    """The :class:`Estimator` that :func:`pathwise` registers, unregistered."""
    if not (isinstance(name, str) and name):
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(local_derivative):
        raise ValueError(f"local_derivative must be a function (a, b) -> ds/da, got {type(local_derivative).__name__}")

    def from_states(problem: Problem, traj: Trajectory, **options) -> FactoredGradient:
        local = [local_derivative_like(local_derivative(a, b, **options), a) for a, b in zip(traj.logits, traj.indicators)]
        return backpropagate_loss(problem, traj, local)

    label = getattr(local_derivative, "__name__", "local_derivative")
    return Estimator(name=name, summary=summary or f"dL/db * {label}(a, b), hard b forward",
                     from_states=from_states, unit=unit, noise="discrete", needs_loss_gradient=True,
                     objective=objective, defaults=dict(defaults or {}), prepare=prepare,
                     max_layers=max_layers, reference=reference or "user-defined (gs.estimators.pathwise)")


def pathwise(name: str, local_derivative: Callable[..., Tensor | float], *, summary: str | None = None,
             reference: str | None = None, replace: bool = False, unit: BernoulliUnit = BINARY,
             objective: str = "binary", defaults: Mapping[str, Any] | None = None,
             prepare: Callable[[Problem, dict[str, Any]], dict[str, Any]] | None = None,
             max_layers: int | None = None) -> Estimator:
    r"""Register a surrogate-derivative (pathwise) estimator of the binary neuron and return it.

    Forward: the hard sample :math:`b = 1[u < \sigma(a)]`. Backward, layer by layer:
    :math:`\partial L/\partial a = \partial L/\partial b \cdot s(a, b)` with
    ``s = local_derivative(a, b)`` (a tensor shaped like ``a``, or a number), held
    fixed (detached): straight-through is ``s = 1``, its A.4 variant
    ``s = sigmoid'(a)`` (Bengio et al. 2013, sec. 4). Valid for losses with a
    gradient, at any depth. Cost: one loss evaluation (and its gradient) a draw.
    The noise is one Bernoulli draw per unit, so exact moments enumerate it; Monte
    Carlo, ``gs.evaluate``, training and claims take the estimator like a built-in
    one, and ``gradstats.functional.pathwise(a, local_derivative)`` is its drop-in.

    The built-in ones (:mod:`.surrogate`) take more: ``unit`` (the law of the hard sample, such as the STS
    unit's :math:`b \sim \mathrm{Bernoulli}(\sqrt p)`) and its ``objective``; ``defaults`` (options passed to
    ``local_derivative`` as keywords, such as ReinMax's temperature) with ``prepare`` to check them;
    ``max_layers``.
    """
    return register(make_pathwise(name, local_derivative, summary=summary, reference=reference, unit=unit,
                                  objective=objective, defaults=defaults, prepare=prepare, max_layers=max_layers),
                    replace=replace)


def names(kind: str | None = None) -> list[str]:
    """Every registered estimator's name, or those that take problems of ``kind`` (``"toy"``, ``"independent"``,
    ``"sbn"``: binary units; ``"categorical"``)."""
    if kind is None:
        return list(_REGISTRY)
    return [name for name, est in _REGISTRY.items() if kind in est.kinds]


def get(estimator: str | Estimator | Callable) -> Estimator:
    """The :class:`Estimator` for a registered name, an Estimator, or a user callable.

    A callable ``fn(problem, u) -> [B, D] | FactoredGradient`` is wrapped as an
    estimator with continuous noise and unknown bias (Monte Carlo only).
    """
    if isinstance(estimator, Estimator):
        return estimator
    if isinstance(estimator, str):
        if estimator not in _REGISTRY:
            raise ValueError(f"unknown estimator {estimator!r}; registered: {', '.join(names())}")
        return _REGISTRY[estimator]
    if callable(estimator):
        params = [p for p in inspect.signature(estimator).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(params) < 2:
            raise ValueError("an estimator callable must take (problem, u) and return [B, D] gradients")
        return Estimator(name=getattr(estimator, "__name__", "custom"), draw=estimator,
                         summary="user-supplied estimator", defaults=None, kinds=ALL_KINDS | {"categorical"})
    raise ValueError(f"estimator must be a registered name, an Estimator or a callable, got {type(estimator).__name__}")


def resolve_options(estimator: Estimator, problem: Problem, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``options``, checked against the estimator and the problem (:func:`check_options`)."""
    check_options(estimator, problem, options)
    resolved = {**(estimator.defaults or {}), **options}
    return estimator.prepare(problem, resolved) if estimator.prepare is not None else resolved


def check_options(estimator: Estimator, problem: Problem, options: Mapping[str, Any]) -> None:
    """The cheap checks of :func:`resolve_options` (option names, problem kind, depth, a differentiable loss where
    dL/dh is needed), without preparing anything: a ValueError naming what is wrong."""
    if estimator.defaults is not None:
        unknown = set(options) - set(estimator.defaults)
        if unknown:
            valid = ", ".join(estimator.defaults) or "none"
            raise ValueError(f"estimator {estimator.name!r} got unknown option(s) {sorted(unknown)}; its options: {valid}")
    if problem.kind not in estimator.kinds:
        raise ValueError(f"estimator {estimator.name!r} does not support {problem.kind!r} problems "
                         f"(it supports: {', '.join(sorted(estimator.kinds))})")
    if estimator.max_layers is not None and problem.num_layers > estimator.max_layers:
        raise ValueError(f"estimator {estimator.name!r} is defined for networks of at most {estimator.max_layers} "
                         f"stochastic layer(s); {problem.description} has {problem.num_layers}")
    if estimator.needs_loss_gradient and not problem.loss.differentiable:
        raise ValueError(f"estimator {estimator.name!r} needs dL/dh, but loss {problem.loss.name!r} "
                         "is not differentiable")


def sample_trajectory(problem: Problem, unit: BernoulliUnit, u: Tensor) -> Trajectory:
    """Forward pass with ``b_l = 1[u_l < q(a_l)]``, ``h_l = value(a_l, b_l)``; ``u`` is ``[B, U]``."""
    parts = problem.split_units(u)
    return problem.forward(lambda layer, a: unit.sample(a, parts[layer]), u.shape[0], dtype=u.dtype, device=u.device)


def backpropagate(problem: Problem, trajectory: Trajectory, top: Tensor,
                  local: list[Tensor | None]) -> FactoredGradient:
    r"""Chain rule through the layers with surrogate unit derivatives.

    :math:`\delta_L = \mathrm{top} \odot s_L`,
    :math:`\delta_l = (\delta_{l+1} W_{l+1}) \odot s_l`, where ``top`` is
    :math:`dL/dh_L` and ``local[l]`` is the surrogate :math:`s_l \approx dh_l/da_l`
    (``None`` means the identity, as in straight-through).
    """
    deltas: list[Tensor] = [None] * problem.num_layers  # type: ignore[list-item]
    upstream = top
    for layer in reversed(range(problem.num_layers)):
        delta = upstream if local[layer] is None else upstream * local[layer]
        deltas[layer] = delta
        weight = problem.layers[layer].weight
        if layer > 0:
            upstream = delta @ problem.parameters[weight].to(delta)
    return FactoredGradient(deltas, list(trajectory.inputs))


def backpropagate_loss(problem: Problem, trajectory: Trajectory, local: list[Tensor | None]) -> FactoredGradient:
    """:func:`backpropagate` from the loss's gradient at the trajectory's output (every pathwise estimator)."""
    _, top = problem.loss.value_and_grad(trajectory.output)
    return backpropagate(problem, trajectory, top, local)


class NonFiniteError(ValueError):
    """A NaN or an infinity came out of a loss, an estimator or a user callable; the message says where."""


def _first_bad_row(tensors: list[Tensor], rows: int) -> int | None:
    if math.isfinite(float(sum(t.sum() for t in tensors))):   # one reduction: no NaN or infinity anywhere
        return None
    bad = torch.zeros(rows, dtype=torch.bool, device=tensors[0].device if tensors else None)
    for t in tensors:
        if t.shape[0] == rows:
            bad |= ~torch.isfinite(t.reshape(rows, -1)).all(1)
        elif not bool(torch.isfinite(t).all()):  # a broadcast input shared by every row
            return 0
    return int(torch.nonzero(bad)[0]) if bool(bad.any()) else None


def check_gradient(name: str, problem: Problem, gradient, rows: int, where) -> None:
    """Raise unless ``gradient`` holds exactly ``rows`` finite per-draw gradients of ``problem``.

    ``where(i)`` describes row ``i`` (a draw index with its seed, an enumerated outcome) for the
    message of a :class:`NonFiniteError`.
    """
    dim = problem.num_parameters
    if isinstance(gradient, Tensor):
        if tuple(gradient.shape) != (rows, dim):
            raise ValueError(f"estimator {name!r} returned shape {tuple(gradient.shape)}, expected ({rows}, {dim})")
        tensors = [gradient]
    elif isinstance(gradient, FactoredGradient):
        if len(gradient.deltas) != problem.num_layers or len(gradient.inputs) != problem.num_layers:
            raise ValueError(f"estimator {name!r} returned {len(gradient.deltas)} deltas and {len(gradient.inputs)} "
                             f"inputs; {problem.description} has {problem.num_layers} layer(s)")
        tensors = []
        previous = problem.x.numel() if problem.x is not None else None
        for layer, (spec, delta, inp) in enumerate(zip(problem.layers, gradient.deltas, gradient.inputs)):
            if not (isinstance(delta, Tensor) and delta.ndim in (2, 3) and delta.shape[0] == rows
                    and delta.shape[-1] == spec.size):
                got = tuple(delta.shape) if isinstance(delta, Tensor) else type(delta).__name__
                raise ValueError(f"estimator {name!r} returned deltas[{layer}] of shape {got}, expected "
                                 f"({rows}, {spec.size}) or ({rows}, k, {spec.size})")
            if (inp is None) != (spec.weight is None):
                raise ValueError(f"estimator {name!r}: inputs[{layer}] must be "
                                 f"{'None (the layer has no weights)' if spec.weight is None else 'a tensor'}")
            if inp is not None:
                expected = (*delta.shape[:-1], previous)
                if not (isinstance(inp, Tensor) and inp.ndim == delta.ndim and inp.shape[0] in (1, rows)
                        and tuple(inp.shape[1:]) == expected[1:]):
                    got = tuple(inp.shape) if isinstance(inp, Tensor) else type(inp).__name__
                    raise ValueError(f"estimator {name!r} returned inputs[{layer}] of shape {got}, expected {expected}")
                tensors.append(inp)
            tensors.append(delta)
            previous = spec.size
    else:
        raise ValueError(f"estimator {name!r} must return a [B, D] tensor or a FactoredGradient, "
                         f"got {type(gradient).__name__}")
    bad = _first_bad_row(tensors, rows)
    if bad is not None:
        raise NonFiniteError(f"estimator {name!r} gave a non-finite gradient (NaN or infinity, from the loss or the "
                             f"estimator) at {where(bad)} of {problem.description}")
