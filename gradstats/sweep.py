r"""Grids of evaluations on any executor: ``gs.sweep``.

A sweep is every (problem, estimator, option set) evaluated like :func:`gradstats.evaluate`, as
independent tasks. They run in this process (``executor=None``) or on any
:class:`concurrent.futures.Executor`: a process pool, or a Dask cluster through
``distributed.Client(...).get_executor()``. Each task's seed is spawned from one root seed
(:class:`numpy.random.SeedSequence`), so the frame is the same bit for bit whatever runs it and however
many workers there are. Problems travel to other processes by pickling (a built-in problem's loss
travels as its spec; see :class:`gradstats.losses.Loss`).
"""

from __future__ import annotations

import multiprocessing
import traceback
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .estimators import check_options, get
from .evaluation import check_evaluate_arguments, evaluate
from .numerics import seed_value
from .problems import Problem

__all__ = ["sweep", "local_cluster", "Task", "TASK_COLUMNS"]

TASK_COLUMNS = ["task", "problem", "problem_index", "options", "task_seed"]


@dataclass(frozen=True)
class Task:
    """One evaluation of a sweep: its index, the problem, one estimator with one option set, its seed."""

    index: int
    problem_index: int
    problem: Problem
    estimator: str
    options: dict
    seed: int

    def run(self, evaluate_kwargs: Mapping) -> pd.DataFrame:
        """``gs.evaluate`` of this task, with the columns that say which task it is (``options``, the JSON of
        the option set, is evaluate's own column; ``device="auto"`` picks the worker's own device; the frame's
        tensors are plain numbers on the client)."""
        frame = evaluate(self.problem, [self.estimator], seed=self.seed,
                         options={self.estimator: self.options} if self.options else None, **evaluate_kwargs)
        described = {"task": self.index, "problem": self.problem.description, "problem_index": self.problem_index,
                     "task_seed": self.seed}
        return frame.assign(**described)[TASK_COLUMNS + [c for c in frame.columns if c not in TASK_COLUMNS]]


# Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers by default; fixing it turns off glibc's adaptive
# mmap threshold, and torch's allocation-heavy Monte Carlo then runs about 3 times slower. Kept: one thread.
WORKER_ENVIRON = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


def local_cluster(n_workers: int = 2, **kwargs):
    """A Dask ``LocalCluster`` of ``n_workers`` single-threaded worker processes set up for torch (without
    the ``MALLOC_TRIM_THRESHOLD_`` Dask's nanny would give them, which slows gradstats about 3x); needs the
    ``distributed`` extra. Use ``distributed.Client(local_cluster(...)).get_executor()`` with :func:`sweep`."""
    try:
        import dask
        import distributed
    except ImportError as err:
        raise ImportError("a Dask cluster needs pip install 'gradstats[distributed]'") from err
    with dask.config.set({"distributed.nanny.pre-spawn-environ": dict(WORKER_ENVIRON)}):
        return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, **kwargs)


def _tasks(problems, estimators, options, seed: int) -> list[Task]:
    """Every task of the grid, each checked before any runs: registered estimators named once, option sets whose
    names each estimator takes, problems each estimator supports (:func:`~gradstats.estimators.check_options`)."""
    problems = [problems] if isinstance(problems, Problem) else list(problems)
    if not problems or not all(isinstance(p, Problem) for p in problems):
        raise ValueError("problems must be a gradstats Problem or a non-empty list of them")
    estimators = [estimators] if isinstance(estimators, str) else list(estimators)
    if not estimators or not all(isinstance(e, str) for e in estimators):
        raise ValueError("estimators must be registered estimator names (strings), so that tasks can travel")
    for name in estimators:
        get(name)   # an unknown name: a ValueError listing the registered ones
    twice = sorted({e for e in estimators if estimators.count(e) > 1})
    if twice:
        raise ValueError(f"estimators names {twice} more than once; give several option sets through options instead")
    options = {} if options is None else dict(options)
    unknown = sorted(set(options) - set(estimators))
    if unknown:
        raise ValueError(f"options names estimator(s) {unknown} that are not swept; swept: {estimators}")
    grid = []
    for pi, problem in enumerate(problems):
        for name in estimators:
            sets = options.get(name, [{}])
            sets = [sets] if isinstance(sets, Mapping) else list(sets)
            if not sets or not all(isinstance(o, Mapping) for o in sets):
                raise ValueError(f"options[{name!r}] must be a dict or a list of dicts (option sets)")
            for o in sets:
                try:
                    check_options(get(name), problem, o)
                except ValueError as err:
                    raise ValueError(f"task {len(grid)} ({problem.description}, {name}, options {dict(o)}): {err}") from err
                grid.append((pi, problem, name, dict(o)))
    states = np.random.SeedSequence(seed).spawn(len(grid))
    return [Task(i, pi, problem, name, opts, int(states[i].generate_state(1, dtype=np.uint32)[0]))
            for i, (pi, problem, name, opts) in enumerate(grid)]


def _refuse_fork(executor) -> None:
    """A process pool that forks this process deadlocks in torch (its threads are not forked with it); refuse it."""
    context = getattr(executor, "_mp_context", None) if isinstance(executor, ProcessPoolExecutor) else None
    if context is not None and context.get_start_method() == "fork":
        raise ValueError("executor is a ProcessPoolExecutor that forks (Linux's default): torch's threads do not "
                         "survive a fork and the workers hang. Make it with "
                         "mp_context=multiprocessing.get_context('spawn') (or 'forkserver'), and call gs.sweep under "
                         "if __name__ == '__main__':")


def _workers(executor) -> int:
    return max(1, int(getattr(executor, "_max_workers", 1) or 1))


def _rerun_alone(tasks: list[Task], evaluate_kwargs: Mapping, parallel: int):
    """Tasks orphaned by a worker that died (the pool breaks for all): each again in a process of its own, so that a
    task that kills its process fails alone (``BrokenProcessPool``, said as such). Yields ``(task, frame or error)``."""
    context = multiprocessing.get_context("spawn")
    for start in range(0, len(tasks), parallel):
        batch = tasks[start:start + parallel]
        pools = [ProcessPoolExecutor(1, mp_context=context) for _ in batch]
        try:
            futures = [pool.submit(task.run, evaluate_kwargs) for pool, task in zip(pools, batch)]
            for task, future in zip(batch, futures):
                try:
                    yield task, future.result()
                except BrokenProcessPool as err:
                    yield task, BrokenProcessPool(f"the worker process died while running this task ({err})")
                except Exception as err:  # noqa: BLE001 - reported with its parameters
                    yield task, err
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)


def sweep(problems: Problem | Sequence[Problem], estimators: str | Iterable[str], *,
          executor: Executor | None = None, options: Mapping[str, Mapping | Sequence[Mapping]] | None = None,
          seed: int = 0, progress: bool | None = None, **evaluate_kwargs) -> pd.DataFrame:
    """Every (problem, estimator, option set) evaluated like ``gs.evaluate``; their tidy frames concatenated.

    Parameters
    ----------
    problems
        A Problem or a list of them.
    estimators
        Registered estimator names.
    executor
        ``None`` (this process), or any :class:`concurrent.futures.Executor` (a process pool; a
        Dask client's ``client.get_executor()``).
    options
        Estimator name -> an option set (dict) or a list of them; each option set is a task.
    seed
        The root seed; task ``i`` gets the ``i``-th seed spawned from it (``SeedSequence``), so the
        frame does not depend on the executor or the number of workers.
    progress
        A progress bar over tasks (default: when stderr is a terminal).
    **evaluate_kwargs
        Passed to ``gs.evaluate`` (``reference``, ``num_samples``, ``ms``, ``method``,
        ``device``, ...).

    Returns
    -------
    pandas.DataFrame
        The rows of every task in task order, with columns ``task, problem, problem_index, options``
        (JSON), ``task_seed`` before those of ``gs.evaluate``. A failed task does not stop the others; the
        failures (task, problem, estimator, options, error) are in ``frame.attrs["failures"]`` and reported
        with a warning.

    Everything that can be checked before a task runs is: the estimators (registered, each once), their
    option names and the problems they support, ``gs.evaluate``'s arguments, and the executor (a process
    pool that forks is refused: torch hangs in forked workers). A process-pool worker that dies takes the
    pool down with it; the tasks it left unfinished are run again, each in a process of its own, so that
    only the task that kills its process is lost (reported as a failure).
    """
    seed = seed_value("seed", seed)
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(f"executor must be None or a concurrent.futures.Executor, got {type(executor).__name__}")
    _refuse_fork(executor)
    check_evaluate_arguments(**evaluate_kwargs)
    tasks = _tasks(problems, estimators, options, seed)
    frames: dict[int, pd.DataFrame] = {}
    failures = []
    bar = tqdm(total=len(tasks), desc="sweep", unit="task", disable=None if progress is None else not progress)

    def failed(task: Task, err: BaseException) -> None:
        failures.append({"task": task.index, "problem": task.problem.description, "estimator": task.estimator,
                         "options": task.options, "error": f"{type(err).__name__}: {err}",
                         "traceback": "".join(traceback.format_exception(err))})

    with bar:
        if executor is None:
            for task in tasks:
                try:
                    frames[task.index] = task.run(evaluate_kwargs)
                except Exception as err:  # noqa: BLE001 - reported with its parameters, the others kept
                    failed(task, err)
                bar.update(1)
        else:
            futures = {executor.submit(task.run, evaluate_kwargs): task for task in tasks}
            orphans = []
            for future, task in futures.items():
                try:
                    frames[task.index] = future.result()
                except BrokenProcessPool:   # a worker died and took the pool down: rerun this task on its own
                    orphans.append(task)
                    continue
                except Exception as err:  # noqa: BLE001
                    failed(task, err)
                bar.update(1)
            for task, outcome in _rerun_alone(orphans, evaluate_kwargs, _workers(executor)):
                if isinstance(outcome, BaseException):
                    failed(task, outcome)
                else:
                    frames[task.index] = outcome
                bar.update(1)
    out = pd.concat([frames[i] for i in sorted(frames)], ignore_index=True) if frames else pd.DataFrame(
        columns=TASK_COLUMNS)
    out.attrs["failures"] = failures
    if failures:
        lines = "; ".join(f"task {f['task']} ({f['problem']}, {f['estimator']}, {f['options']}): {f['error']}"
                          for f in failures)
        warnings.warn(f"{len(failures)} of {len(tasks)} sweep task(s) failed: {lines}", stacklevel=2)
    return out
