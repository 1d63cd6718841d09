"""Batched, chunked enumeration of the joint states of a problem's Bernoulli indicators or categorical units.

State ``s`` in ``[0, 2^U)`` sets unit ``k`` (units in layer order) to bit ``k``
of ``s``; for ``N`` categorical units of ``K`` classes, state ``s`` in ``[0, K^N)``
sets unit ``k`` to class digit ``k`` of ``s`` in base ``K``. Each chunk is one batched forward pass; its log-probability under
the unit's law (binary or STS) comes with it, so sums over states are
``sum exp(log_prob) * value`` in float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch

from .numerics import positive_int
from .problems import Problem, Trajectory
from .units import BernoulliUnit, CategoricalUnit, one_hot_of

__all__ = ["DEFAULT_MAX_STATES", "DEFAULT_CHUNK_SIZE", "DEVICE_CHUNK_SIZE", "chunk_size_for", "check_enumerable",
           "trajectories", "binary_cube"]

DEFAULT_MAX_STATES = 2**24
DEFAULT_CHUNK_SIZE = 2**16
DEVICE_CHUNK_SIZE = 2**21   # on a GPU: states per batched pass, enough to fill the card


def chunk_size_for(device: torch.device, chunk_size: int | None) -> int:
    """``chunk_size``, or the default for ``device`` when it is ``None``."""
    if chunk_size is None:
        return DEFAULT_CHUNK_SIZE if device.type == "cpu" else DEVICE_CHUNK_SIZE
    return positive_int("chunk_size", chunk_size)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def check_enumerable(num_bits: int, max_states: int = DEFAULT_MAX_STATES, bytes_per_state: int = 8,
                     what: str = "the problem", base: int = 2, noun: str = "binary indicators") -> int:
    """Return ``base**num_bits`` or raise a ValueError naming it, its memory and the limit."""
    if not (isinstance(max_states, int) and max_states >= 1):
        raise ValueError(f"max_states must be an integer >= 1, got {max_states!r}")
    states = base**num_bits
    if states > max_states:
        raise ValueError(
            f"enumerating {what} needs {base}^{num_bits} = {states:,} joint states of {num_bits} {noun} "
            f"({_bytes(states * bytes_per_state)} to hold them at once, {_bytes(bytes_per_state)} each); "
            f"the limit is max_states = {max_states:,} (2^{max_states.bit_length() - 1}); "
            "use method='mc' or a smaller problem, or raise max_states"
        )
    return states


def trajectories(problem: Problem, unit: BernoulliUnit | CategoricalUnit, *, copies: int = 1,
                 parameters: dict[str, torch.Tensor] | None = None,
                 chunk_size: int | None = DEFAULT_CHUNK_SIZE, max_states: int = DEFAULT_MAX_STATES,
                 device: torch.device | str = "cpu") -> Iterator[Trajectory]:
    """Every joint state of ``copies`` independent passes, in chunks, with ``log_prob``.

    With ``copies = k`` the batch holds ``k`` stacked passes per state
    (``[C * k, ...]``, copy-major within a state) and ``log_prob`` is the joint
    log-probability of the ``k`` passes, shape ``[C]``. The states are made and run on
    ``device`` (``parameters``, when given, must be there already); ``chunk_size=None`` picks
    the device's default.
    """
    device = torch.device(device)
    chunk_size = chunk_size_for(device, chunk_size)
    total, states = _states(problem, unit, copies, max_states, device)
    for start in range(0, total, chunk_size):
        rows = states(torch.arange(start, min(start + chunk_size, total), device=device))
        trajectory = problem.forward(_given_states(problem.split_units(rows), unit), rows.shape[0], parameters,
                                     device=device)
        log_prob = sum(unit.log_prob(a, b).sum(-1) for a, b in zip(trajectory.logits, trajectory.indicators))
        trajectory.log_prob = log_prob.reshape(-1, copies).sum(-1)
        yield trajectory


def _states(problem: Problem, unit: BernoulliUnit | CategoricalUnit, copies: int, max_states: int,
            device: torch.device) -> tuple[int, Callable[[torch.Tensor], torch.Tensor]]:
    """How many joint states ``copies`` passes have (checked against ``max_states``), and the map from state
    indices ``[C]`` to the passes' indicators ``[C * copies, U]``: bit ``k`` of the index for Bernoulli units,
    digit ``k`` in base ``K`` (one-hot) for categorical units."""
    what = problem.description if copies == 1 else f"{copies} copies of {problem.description}"
    bytes_per_state = 8 * (problem.num_units + problem.num_parameters)
    if isinstance(unit, CategoricalUnit):
        k = unit.num_classes
        if problem.num_units % k:
            raise ValueError(f"{problem.description} has {problem.num_units} values, not a multiple of "
                             f"num_classes = {k}")
        digits = problem.num_units // k * copies
        total = check_enumerable(digits, max_states, bytes_per_state=bytes_per_state, what=what, base=k,
                                 noun="categorical units")
        powers = k ** torch.arange(digits, device=device)

        def one_hot(index: torch.Tensor) -> torch.Tensor:
            classes = torch.div(index[:, None], powers, rounding_mode="floor") % k
            return one_hot_of(classes, k, torch.float64).reshape(-1, problem.num_units)

        return total, one_hot
    bits = problem.num_units * copies
    total = check_enumerable(bits, max_states, bytes_per_state=bytes_per_state, what=what)
    shifts = torch.arange(bits, device=device)
    return total, lambda index: ((index[:, None] >> shifts) & 1).to(torch.float64).reshape(-1, problem.num_units)


def _given_states(per_layer: list[torch.Tensor], unit: BernoulliUnit):
    def step(layer: int, a: torch.Tensor):
        b = per_layer[layer]
        return b, unit.value(a, b)

    return step


def binary_cube(n: int) -> torch.Tensor:
    """All ``2^n`` binary vectors, ``[2^n, n]`` float64, the last coordinate varying fastest."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), dtype=torch.float64)
