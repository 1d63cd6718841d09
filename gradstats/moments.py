"""``gs.moments``: one entry point for exact and Monte Carlo moments of an estimator."""

from __future__ import annotations

from .accumulators import Moments
from .enumeration import DEFAULT_MAX_STATES
from .estimators import get, resolve_options
from .exact import exact_moments
from .montecarlo import mc_moments
from .problems import Problem

__all__ = ["moments", "METHODS"]

METHODS = ("exact", "mc", "auto")
_MC_ONLY = {"num_samples", "seed", "dtype", "ms", "num_batches", "progress", "checkpoint",
            "checkpoint_seconds", "chunk_size", "fuse"}       # chunk_size: draws per chunk, not states per chunk
_ENGINE_OPTIONS = _MC_ONLY | {"device", "references", "full_covariance", "max_states"}


def moments(problem: Problem, estimator, method: str = "exact", **kwargs) -> Moments:
    """Moments of ``estimator`` (a registered name, an Estimator or a callable) on ``problem``.

    ``method="exact"`` enumerates (discrete noise only; options ``device``,
    ``chunk_size``, ``max_states``, ``full_covariance``); ``method="mc"`` streams Monte Carlo
    draws (options ``num_samples``, ``seed``, ``device``, ``chunk_size``,
    ``dtype``, ``full_covariance``, ``fuse``); ``method="auto"`` is exact where the
    estimator and the problem allow it within ``max_states`` outcomes, else Monte
    Carlo (then ``num_samples`` is needed; Monte Carlo options are ignored when
    the result is exact). Other keyword arguments are the estimator's options.
    """
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a gradstats Problem (gs.problems.toy/independent/sbn), got {type(problem).__name__}")
    if method == "auto":
        est = get(estimator)
        options = {k: v for k, v in kwargs.items() if k not in _ENGINE_OPTIONS}
        max_states = kwargs.get("max_states", DEFAULT_MAX_STATES)
        if est.exact_possible(problem, resolve_options(est, problem, options), max_states):
            return exact_moments(problem, estimator, **{k: v for k, v in kwargs.items() if k not in _MC_ONLY})
        method = "mc"
    if method == "exact":
        return exact_moments(problem, estimator, **kwargs)
    if method == "mc":
        if "num_samples" not in kwargs:
            raise ValueError("Monte Carlo moments need num_samples (method='mc', or 'auto' where exact moments are not "
                             "possible)")
        return mc_moments(problem, estimator, **{k: v for k, v in kwargs.items() if k != "max_states"})
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
