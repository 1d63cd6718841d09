"""Streaming Monte Carlo moments of an estimator's per-draw gradient, on any device.

Draws are computed a chunk at a time as one batched call of the estimator
(never a loop of backward passes) and merged into float64 accumulators, so
memory is bounded by the chunk, not by ``num_samples``. The noise of draw
``i`` depends only on ``(seed, i)`` (:mod:`gradstats.noise`), so the result
does not depend on ``chunk_size`` beyond float rounding.

A stateful estimator (REINFORCE with ``baseline="running"``) gets its state
carried from piece to piece in draw order, so it too is chunk-invariant.

The draws are also summarised in ``num_batches`` contiguous batches (fixed by
``num_samples`` alone), from which :mod:`gradstats.metrics` computes jackknife
standard errors of any metric.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .accumulators import GradientAccumulator, Moments
from .estimators import get, resolve_options
from .noise import NoiseStream, resolve_device
from .numerics import positive_int
from .problems import Problem

__all__ = ["mc_moments", "DEFAULT_CHUNK_SIZE", "FULL_COVARIANCE_MAX_DIM", "DEFAULT_BATCHES"]

DEFAULT_CHUNK_SIZE = 2**16
FULL_COVARIANCE_MAX_DIM = 64
DEFAULT_BATCHES = 20


def _signature(problem: Problem, est, resolved: dict, **settings) -> str:
    """What a checkpoint must match to be resumed: the problem, the estimator and its options, the stream."""
    def plain(value):
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value if isinstance(value, (int, float, str, bool, type(None), list, tuple)) else repr(value)

    payload = {"problem": problem.spec(), "estimator": est.name, "options": plain(resolved), **plain(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _save_checkpoint(path: Path, signature: str, position: int, batches, state) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({"signature": signature, "position": position, "state": state,
                "accumulators": [acc.state_dict() for acc in batches]}, tmp)
    os.replace(tmp, path)


def mc_moments(problem: Problem, estimator, *, num_samples: int, seed: int = 0, device="auto",
               chunk_size: int = DEFAULT_CHUNK_SIZE, dtype: torch.dtype = torch.float64,
               full_covariance: bool | None = None, references: dict[str, torch.Tensor] | None = None,
               ms: tuple[int, ...] = (), num_batches: int = DEFAULT_BATCHES, progress: bool | None = None,
               checkpoint: str | Path | None = None, checkpoint_seconds: float = 30.0, **options) -> Moments:
    """Monte Carlo moments (variance with ``n - 1``), standard errors and per-draw metrics.

    Args:
        num_samples: draws (one draw is one gradient estimate).
        seed: the noise stream; the same seed gives the same bits on the same device.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        chunk_size: draws computed at once (memory), not part of the result.
        dtype: per-draw arithmetic (accumulators are always float64).
        full_covariance: defaults to ``D <= FULL_COVARIANCE_MAX_DIM``.
        references: name -> gradient ``[D]`` for the per-draw metrics.
        ms: group sizes for the cosine of the mean of ``M`` draws.
        num_batches: contiguous batches kept for jackknife standard errors.
        progress: a tqdm bar; ``None`` shows it when stderr is a terminal.
        checkpoint: a file to save the accumulators to (atomically, at most every
            ``checkpoint_seconds`` and when interrupted); a run given an existing
            checkpoint of the same problem, estimator, options and stream resumes from it,
            with the same result as an uninterrupted run. Removed when the run completes.
    """
    start_time = time.perf_counter()
    n = positive_int("num_samples", num_samples)
    chunk = positive_int("chunk_size", chunk_size)
    k = min(positive_int("num_batches", num_batches), n)
    for m in ms:
        positive_int("ms entries", m)
    dev = resolve_device(device)
    est = get(estimator)
    resolved = resolve_options(est, problem, options)
    full = problem.num_parameters <= FULL_COVARIANCE_MAX_DIM if full_covariance is None else bool(full_covariance)
    stream = NoiseStream(seed, (est.noise_per_unit(resolved), problem.num_units), dev, dtype)
    bounds = [round(i * n / k) for i in range(k + 1)]
    batches = [GradientAccumulator(problem, references, full, tuple(ms), dev) for _ in range(k)]
    stateful, state = est.stateful(resolved), None
    position = 0
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None:
        signature = _signature(problem, est, resolved, n=n, seed=seed, device=str(dev), dtype=str(dtype), full=full,
                               references=references or {}, ms=list(ms), batches=k)
        if path.exists():
            saved = torch.load(path, map_location=dev, weights_only=False)
            if saved["signature"] != signature:
                raise ValueError(f"checkpoint {str(path)!r} belongs to another run (problem, estimator, options or "
                                 "stream differ): remove it or pass another path")
            position, state = saved["position"], saved["state"]
            for acc, stored in zip(batches, saved["accumulators"]):
                acc.load_state_dict(stored)
        last_save = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else bool(progress)
    try:
        with tqdm(total=n, initial=position, disable=not show, unit="draw", unit_scale=True, desc=est.name,
                  leave=False) as bar:
            batch = 0
            for chunk_start in range(0, n, chunk):  # the same pieces as an uninterrupted run: the same bits
                stop = min(chunk_start + chunk, n)
                start = max(chunk_start, position)
                while start < stop:
                    while bounds[batch + 1] <= start:
                        batch += 1
                    piece = min(stop, bounds[batch + 1])
                    u = stream.uniforms(start, piece)
                    if stateful:
                        gradient, new_state = est.draw(problem, u, state=state, **resolved)
                    else:
                        gradient, new_state = est.draw(problem, u, **resolved), None
                    if isinstance(gradient, torch.Tensor) and gradient.shape != (piece - start, problem.num_parameters):
                        raise ValueError(f"estimator {est.name!r} returned shape {tuple(gradient.shape)}, "
                                         f"expected ({piece - start}, {problem.num_parameters})")
                    batches[batch].add(gradient)
                    state, position = new_state, piece
                    bar.update(piece - start)
                    start = piece
                if path is not None and time.perf_counter() - last_save > checkpoint_seconds:
                    _save_checkpoint(path, signature, position, batches, state)
                    last_save = time.perf_counter()
    except BaseException:
        if path is not None and position > 0:
            _save_checkpoint(path, signature, position, batches, state)
        raise
    if path is not None:
        path.unlink(missing_ok=True)
    total = batches[0].summary
    for acc in batches[1:]:
        total = total.merged(acc.summary)
    return Moments.from_summary(total, method="mc", estimator=est.name, loss_evals_per_draw=est.loss_evals(problem, resolved),
                                batches=tuple(acc.summary for acc in batches), seconds=time.perf_counter() - start_time)
