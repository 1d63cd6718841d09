"""Estimator registry: :func:`names`, :func:`get`, :func:`register` (see :mod:`.base` for the contract)."""

from . import later_work, seed_paper
from .base import (
    Estimator,
    NonFiniteError,
    backpropagate,
    check_gradient,
    get,
    names,
    pathwise,
    register,
    resolve_options,
    sample_trajectory,
)
from .seed_paper import optimal_baseline

__all__ = [
    "Estimator",
    "NonFiniteError",
    "backpropagate",
    "check_gradient",
    "get",
    "later_work",
    "names",
    "optimal_baseline",
    "pathwise",
    "register",
    "resolve_options",
    "sample_trajectory",
    "seed_paper",
]
