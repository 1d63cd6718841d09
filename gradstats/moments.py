"""``gs.moments``: one entry point for exact and Monte Carlo moments of an estimator."""

from __future__ import annotations

from .accumulators import Moments
from .exact import exact_moments
from .montecarlo import mc_moments
from .problems import Problem

__all__ = ["moments", "METHODS"]

METHODS = ("exact", "mc")


def moments(problem: Problem, estimator, method: str = "exact", **kwargs) -> Moments:
    """Moments of ``estimator`` (a registered name, an Estimator or a callable) on ``problem``.

    ``method="exact"`` enumerates (discrete noise only; options ``chunk_size``,
    ``max_states``, ``full_covariance``); ``method="mc"`` streams Monte Carlo
    draws (options ``num_samples``, ``seed``, ``device``, ``chunk_size``,
    ``dtype``, ``full_covariance``). Other keyword arguments are the
    estimator's options.
    """
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a gradstats Problem (gs.problems.toy/independent/sbn), got {type(problem).__name__}")
    if method == "exact":
        return exact_moments(problem, estimator, **kwargs)
    if method == "mc":
        if "num_samples" not in kwargs:
            raise ValueError("method='mc' needs num_samples")
        return mc_moments(problem, estimator, **kwargs)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
