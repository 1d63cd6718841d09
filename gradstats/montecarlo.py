"""Streaming Monte Carlo moments of an estimator's per-draw gradient, on any device.

Draws are computed a chunk at a time as one batched call of the estimator
(never a loop of backward passes) and merged into float64 accumulators, so
memory is bounded by the chunk, not by ``num_samples``. The noise of draw
``i`` depends only on ``(seed, i)`` (:mod:`gradstats.noise`), so the result
does not depend on ``chunk_size`` beyond float rounding.

A stateful estimator (REINFORCE with ``baseline="running"``) gets its state
carried from piece to piece in draw order, so it too is chunk-invariant.

The fused path (``fuse=True``) compiles each chunk's draws and its statistics
into one function with ``torch.compile``, so the per-draw gradients are reduced
where they are made instead of in many passes over memory, and the host checks
and merges one piece while the device computes the next. Same statistics, same
noise; only float rounding differs. The compilation takes 1.5 to 50 seconds, once
per problem, estimator and dtype in a process, so it pays on long runs or many
runs of one problem (benchmarks/montecarlo.py prints both rates and the
compilation's time).

The draws are also summarised in ``num_batches`` contiguous batches (fixed by
``num_samples`` alone), from which :mod:`gradstats.metrics` computes jackknife
standard errors of any metric.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .accumulators import GradientAccumulator, Moments
from .estimators import check_gradient, get, resolve_options
from .noise import NoiseStream, resolve_device, uniforms_as
from .numerics import float64_references, optional_bool, positive_finite, positive_int, seed_value
from .problems import Problem, check_problem

__all__ = ["mc_moments", "default_chunk_size", "DEFAULT_CHUNK_SIZE", "FULL_COVARIANCE_MAX_DIM", "DEFAULT_BATCHES", "MAX_SAMPLES",
           "LONG_RUN_SECONDS"]

DEFAULT_CHUNK_SIZE = 2**16         # draws per chunk on the CPU
DEVICE_CHUNK_BYTES = 2**33         # a GPU chunk's float64 noise and gradients at most (8 GiB) ...
DEVICE_CHUNK_SHARE = 8             # ... and at most this fraction of the device's free memory
FULL_COVARIANCE_MAX_DIM = 64
DEFAULT_BATCHES = 20
MAX_SAMPLES = 2**53          # float64 counts and weights stay exact up to here
LONG_RUN_SECONDS = 3600.0    # a run estimated to take longer says so once, through logging
_ESTIMATE_AFTER_SECONDS = 2.0
FUSED_RECOMPILE_LIMIT = 64   # specialisations of the fused function per process (torch's default of 8 is reached
                             # by a few estimators, each compiled for pieces above and below a size threshold)

logger = logging.getLogger(__name__)


def _piece_description(seed: int, offset: int):
    return lambda row: f"draw {offset + row} (seed {seed})"


def default_chunk_size(device: torch.device, values_per_draw: int, free_bytes: int | None = None) -> int:
    """Draws per chunk when none is given: :data:`DEFAULT_CHUNK_SIZE` on the CPU; on a GPU the largest power of
    two whose ``values_per_draw`` float64 values a draw (its uniforms and its gradient) fit in
    :data:`DEVICE_CHUNK_BYTES` and in ``1 / DEVICE_CHUNK_SHARE`` of ``free_bytes`` (the device's free memory
    when ``None``), and at least :data:`DEFAULT_CHUNK_SIZE`. Large chunks because each chunk costs kernel
    launches and a merge on the host, which small chunks leave the device waiting for."""
    if device.type == "cpu":
        return DEFAULT_CHUNK_SIZE
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    draws = min(DEVICE_CHUNK_BYTES, free_bytes // DEVICE_CHUNK_SHARE) // (8 * max(1, values_per_draw))
    return max(DEFAULT_CHUNK_SIZE, 1 << (max(1, draws).bit_length() - 1))


def mc_moments(problem: Problem, estimator, *, num_samples: int, seed: int = 0, device="auto",
               chunk_size: int | None = None, dtype: torch.dtype = torch.float64,
               full_covariance: bool | None = None, references: dict[str, torch.Tensor] | None = None,
               ms: tuple[int, ...] = (), num_batches: int = DEFAULT_BATCHES, progress: bool | None = None,
               checkpoint: str | Path | None = None, checkpoint_seconds: float = 30.0, fuse: bool = False,
               **options) -> Moments:
    """Monte Carlo moments (variance with ``n - 1``), standard errors and per-draw metrics.

    Parameters
    ----------
    num_samples
        Draws (one draw is one gradient estimate), at most ``2^53``.
    seed
        The noise stream, an integer in ``[0, 2^63)``; the same seed gives the same bits
        on the same device.
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    chunk_size
        Draws computed at once (memory), not part of the result; ``None``:
        :func:`default_chunk_size` (2^16 on the CPU, millions on a GPU).
    dtype
        Per-draw arithmetic (accumulators are always float64).
    full_covariance
        ``True``, ``False``, or ``None`` for ``D <= FULL_COVARIANCE_MAX_DIM``.
    references
        Name -> gradient of shape ``[D]`` exactly, for the per-draw metrics.
    ms
        Group sizes for the cosine of the mean of ``M`` draws.
    num_batches
        Contiguous batches kept for jackknife standard errors.
    progress
        A tqdm bar; ``None`` shows it when stderr is a terminal. A run estimated to
        take over an hour says so once through :mod:`logging` either way.
    checkpoint
        A file to save the accumulators to (atomically, at most every
        ``checkpoint_seconds`` and when interrupted by an exception, Ctrl-C or SIGTERM); a
        run given an existing checkpoint of the same problem, estimator, options, stream and
        library resumes from it, with the same result as an uninterrupted run. The path is
        claimed before the first draw (its directory must exist and be writable; ``PATH.lock``
        keeps another run out meanwhile); a save that fails is warned about and the run goes
        on; when the run completes the file it wrote last is removed, never another run's. See
        :mod:`gradstats.checkpoint` for what it stores and checks.
    fuse
        Compile each chunk's draws and statistics into one function (``torch.compile``;
        see the module docstring). A stateful estimator, or ``ms``, always runs eager.

    A draw whose gradient is not finite raises :class:`~gradstats.estimators.NonFiniteError`
    naming its index.
    """
    start_time = time.perf_counter()
    check_problem(problem)
    n = positive_int("num_samples", num_samples)
    if n > MAX_SAMPLES:
        raise ValueError(f"num_samples must be at most 2^53 = {MAX_SAMPLES:,} (float64 counts are exact up to there), "
                         f"got {n:,}: merge the Moments of several seeds instead")
    seed = seed_value("seed", seed)
    chunk = None if chunk_size is None else positive_int("chunk_size", chunk_size)
    k = min(positive_int("num_batches", num_batches), n)
    ms = tuple(positive_int("ms entries", m) for m in ms)
    full = optional_bool("full_covariance", full_covariance)
    seconds_between_saves = positive_finite("checkpoint_seconds", checkpoint_seconds, " of seconds")
    dim = problem.num_parameters
    references = float64_references(references, dim)
    dev = resolve_device(device)
    est = get(estimator)
    resolved = resolve_options(est, problem, options)
    full = dim <= FULL_COVARIANCE_MAX_DIM if full is None else full
    fuse = optional_bool("fuse", fuse) and not est.stateful(resolved) and not ms
    noise_shape = (est.noise_per_unit(resolved), problem.num_units)
    if chunk is None:
        chunk = default_chunk_size(dev, noise_shape[0] * noise_shape[1] + dim * (2 if full else 1))
    # the fused path converts float64 uniforms to float32 inside its compiled function (one pass less)
    stream = NoiseStream(seed, noise_shape, dev, torch.float64 if fuse else dtype)
    run = _Run(problem, est, resolved, stream, n, chunk, [round(i * n / k) for i in range(k + 1)],
               [GradientAccumulator(problem, references, full, ms, dev) for _ in range(k)], dtype if fuse else None)
    saver = None
    if checkpoint is not None:
        saver = _Checkpointer(Path(checkpoint), seconds_between_saves, dev, problem=problem, estimator=est,
                              options=resolved, settings={"n": n, "seed": seed, "device": str(dev), "dtype": str(dtype),
                                                          "full": full, "references": references, "ms": list(ms),
                                                          "batches": k})
    state = None if saver is None else saver.state(run)
    with ckpt.saving(saver, state):
        if saver is not None:
            saver.resume(run)
        show = sys.stderr.isatty() if progress is None else bool(progress)
        with tqdm(total=n, initial=run.position, disable=not show, unit="draw", unit_scale=True, desc=est.name,
                  leave=False) as bar:
            run.loop(bar.update, None if saver is None else lambda: saver.maybe_save(state))
    total = run.batches[0].summary
    for acc in run.batches[1:]:
        total = total.merged(acc.summary)
    return Moments.from_summary(total, method="mc", estimator=est.name, loss_evals_per_draw=est.loss_evals(problem, resolved),
                                batches=tuple(acc.summary for acc in run.batches), seconds=time.perf_counter() - start_time,
                                source=(problem, est, resolved))


class _Run:
    """The draws of one Monte Carlo run, cut into pieces that never straddle a chunk or a batch.

    The pieces are the same whatever draw the run starts from, so a resumed run computes the
    same bits as an uninterrupted one.
    """

    def __init__(self, problem, est, resolved, stream, n, chunk, bounds, batches, fused_dtype=None):
        self.problem, self.est, self.resolved, self.stream = problem, est, resolved, stream
        self.n, self.chunk, self.bounds, self.batches = n, chunk, bounds, batches
        self.stateful, self.state, self.position = est.stateful(resolved), None, 0
        # fused: the stream gives float64 uniforms, converted to the per-draw dtype where they are used
        self.fused_dtype = fused_dtype
        self.fused = None if fused_dtype is None else _fused_statistics(problem, est, resolved, batches[0], fused_dtype)
        self.pending = None   # the fused path's last piece, launched but not yet checked and merged

    def pieces(self):
        """``(batch, start, stop)`` of every piece from ``position`` on, and ``None`` after each chunk."""
        batch = 0
        for chunk_start in range(0, self.n, self.chunk):
            stop = min(chunk_start + self.chunk, self.n)
            start = max(chunk_start, self.position)
            while start < stop:
                while self.bounds[batch + 1] <= start:
                    batch += 1
                piece = min(stop, self.bounds[batch + 1])
                yield batch, start, piece
                start = piece
            yield None

    def loop(self, advance, after_chunk) -> None:
        clock, first, warned = time.perf_counter(), self.position, False
        for item in self.pieces():
            if item is None:
                if self.fused is not None:
                    self._merge_pending(advance)
                if after_chunk is not None:
                    after_chunk()
                continue
            batch, start, stop = item
            u = self.stream.uniforms(start, stop)
            if self.fused is not None:
                self._fused_piece(u, batch, start, stop, first, advance)
                continue
            if self.stateful:
                gradient, state = self.est.draw(self.problem, u, state=self.state, **self.resolved)
            else:
                gradient, state = self.est.draw(self.problem, u, **self.resolved), None
            check_gradient(self.est.name, self.problem, gradient, stop - start, _piece_description(self.stream.seed, start))
            self.batches[batch].add(gradient)
            self.state, self.position = state, stop
            advance(stop - start)
            elapsed = time.perf_counter() - clock
            if not warned and elapsed > _ESTIMATE_AFTER_SECONDS:
                warned = True
                remaining = elapsed / (stop - first) * (self.n - stop)
                if remaining > LONG_RUN_SECONDS:
                    logger.warning("%s on %s: %s draws will take about %.1f hours more at %.3g draws/s",
                                   self.est.name, self.problem.description, f"{self.n:,}", remaining / 3600,
                                   (stop - first) / elapsed)

    def _fused_piece(self, u, batch, start, stop, first, advance) -> None:
        """Launch a piece's fused statistics, then merge the piece before it (so the device computes one piece
        while the host checks and merges the other). The first piece is checked whole (shapes, values); later
        ones through their mean, which a NaN or infinity in any draw reaches."""
        with torch._dynamo.config.patch(recompile_limit=FUSED_RECOMPILE_LIMIT):
            statistics = self.fused(u)
        if start == first:
            self._check_piece(u, start, stop)
        self._merge_pending(advance)
        self.pending = (batch, start, stop, statistics, torch.isfinite(statistics[0]).all())

    def _check_piece(self, u, start, stop) -> None:
        """Draw a piece eagerly and check it whole (shapes, values), naming a bad draw."""
        gradient = self.est.draw(self.problem, uniforms_as(u, self.fused_dtype), **self.resolved)
        check_gradient(self.est.name, self.problem, gradient, stop - start, _piece_description(self.stream.seed, start))

    def _merge_pending(self, advance) -> None:
        if self.pending is None:
            return
        batch, start, stop, statistics, finite = self.pending
        self.pending = None
        if not bool(finite):
            self._check_piece(self.stream.uniforms(start, stop), start, stop)
        self.batches[batch].add_statistics(stop - start, float(stop - start), statistics)
        self.position = stop
        advance(stop - start)


def _fused_statistics(problem, est, resolved, accumulator: GradientAccumulator, dtype: torch.dtype):
    """``u -> accumulator.statistics`` of the draws ``est.draw(problem, uniforms_as(u, dtype))`` for float64
    uniforms ``u``, compiled as one function (shapes dynamic, so pieces of any length share one compilation)."""
    def draw_statistics(u):
        return accumulator.draw_statistics(est.draw(problem, uniforms_as(u, dtype), **resolved))

    return torch.compile(draw_statistics, dynamic=True)


class _Checkpointer(ckpt.PeriodicSaver):
    """Saves a run's accumulators to ``path`` (plain tensors, signed, with a checksum) and resumes a run from it
    (:class:`gradstats.checkpoint.PeriodicSaver`: the path claimed up front, a failed save said once, only this
    run's file removed at the end)."""

    def __init__(self, path: Path, every: float, device, **identity):
        super().__init__(path, every, **identity)
        self.device = device

    def resume(self, run: _Run) -> None:
        record = self.load(self.device)
        if record is None:
            return
        where = f"checkpoint {str(self.path)!r}"
        stored = record.get("accumulators")
        position = record.get("position")
        if not (isinstance(stored, list) and len(stored) == len(run.batches) and isinstance(position, int)
                and 0 <= position <= run.n):
            raise ValueError(f"{where} is damaged (position or batches out of range); it was left in place: "
                             "remove it or pass another path")
        for i, (acc, state) in enumerate(zip(run.batches, stored)):
            acc.load_state_dict(state, f"{where}, batch {i}")
        counted = sum(acc.summary.count for acc in run.batches)
        if counted != position:
            raise ValueError(f"{where} is damaged: its batches hold {counted} draws, its position says {position}; it "
                             "was left in place: remove it or pass another path")
        run.position, run.state = position, record.get("state")

    @staticmethod
    def state(run: _Run):
        """What a save of ``run`` writes (nothing before its first draw)."""
        return lambda: None if run.position == 0 else {
            "position": run.position, "state": run.state, "accumulators": [acc.state_dict() for acc in run.batches]}
