"""Streaming Monte Carlo moments of an estimator's per-draw gradient, on any device.

Draws are computed a chunk at a time as one batched call of the estimator
(never a loop of backward passes) and merged into float64 accumulators, so
memory is bounded by the chunk, not by ``num_samples``.
"""

from __future__ import annotations

import math

import torch

from .accumulators import MomentAccumulator, Moments
from .estimators import get, resolve_options
from .noise import NoiseStream, resolve_device
from .problems import FactoredGradient, Problem

__all__ = ["mc_moments", "DEFAULT_CHUNK_SIZE", "FULL_COVARIANCE_MAX_DIM"]

DEFAULT_CHUNK_SIZE = 2**16
FULL_COVARIANCE_MAX_DIM = 2048


def _positive_int(name: str, value) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def mc_moments(problem: Problem, estimator, *, num_samples: int, seed: int = 0, device="auto",
               chunk_size: int = DEFAULT_CHUNK_SIZE, dtype: torch.dtype = torch.float64,
               full_covariance: bool | None = None, **options) -> Moments:
    """Monte Carlo mean, variance (unbiased, ``n - 1``), covariance and standard errors."""
    n = _positive_int("num_samples", num_samples)
    chunk = _positive_int("chunk_size", chunk_size)
    dev = resolve_device(device)
    est = get(estimator)
    resolved = resolve_options(est, problem, options)
    dim = problem.num_parameters
    full = dim <= FULL_COVARIANCE_MAX_DIM if full_covariance is None else bool(full_covariance)
    stream = NoiseStream(seed, (est.noise_per_unit(resolved), problem.num_units), dev, dtype)
    acc = MomentAccumulator(dim, full, dev)
    for start in range(0, n, chunk):
        u = stream.uniforms(start, min(start + chunk, n))
        g = est.draw(problem, u, **resolved)
        g = g.dense() if isinstance(g, FactoredGradient) else g
        if g.shape != (u.shape[0], dim):
            raise ValueError(f"estimator {est.name!r} returned shape {tuple(g.shape)}, expected ({u.shape[0]}, {dim})")
        acc.add(g)
    var = acc.m2 / (n - 1) if n > 1 else torch.full_like(acc.m2, math.nan)
    return Moments(
        mean=acc.mean.cpu(),
        var=var.cpu(),
        cov=None if acc.comoment is None else (acc.comoment / max(n - 1, 1)).cpu(),
        num_samples=n,
        mean_stderr=(var / n).sqrt().cpu(),
        loss_evals_per_draw=est.loss_evals(resolved),
        method="mc",
        estimator=est.name,
    )
