r"""Training through an estimator, scored by the exact objective.

:func:`train` runs plain stochastic gradient descent,
:math:`\theta_{k+1} = \theta_k - \eta\, \bar g_k` (or Adam), on the parameters that
a list of problems (a dataset: one input and loss each) shares. :math:`\bar g_k`
is the mean over examples of the mean of ``draws_per_step`` draws of an
estimator at :math:`\theta_k`. Along the way it records the exact objective
of the binary network, :math:`J(\theta) = \frac1n \sum_n E[L_n(h)]` (by
enumeration, :func:`gradstats.exact_loss`). So "which estimator trains
better" is measured on the objective itself, with no evaluation noise.
``estimator="exact"`` descends the exact gradient: the noiseless, unbiased
reference run. The score is the binary network's objective whatever objective
the estimator's own unit defines (STS, the relaxations, the noisy rectifier):
the question asked is how well it trains the binary network.

With ``B = draws_per_step * n``, the draws of step ``k`` are draws
``k * B .. (k + 1) * B - 1`` of one seeded noise stream
(:mod:`gradstats.noise`), example by example, so a run is a pure function of
its arguments. Options that depend on the parameters (REINFORCE's exact optimal
baseline, Eq. 10) are recomputed at every step; a stateful estimator (the
running baseline) carries its state from step to step, as in the paper's
training code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, vmap

from . import enumeration
from .estimators import NonFiniteError, check_gradient, get, names, resolve_options
from .exact import exact_gradient, exact_loss
from .noise import NoiseStream
from .numerics import positive_finite, positive_int, seed_value, summary_text
from .problems import FactoredGradient, Problem
from .units import BINARY

__all__ = ["EXACT", "OPTIMIZERS", "TrainingRun", "dataset_loss", "train", "train_many", "next_rate", "select_rate"]

EXACT = "exact"
OPTIMIZERS = ("sgd", "adam")
_PREFETCH_STEPS = 32   # steps whose uniforms each run's stream gives in one call


@dataclass(frozen=True)
class TrainingRun:
    """One run of :func:`train`: ``loss[i]`` is the exact ``E[L]`` after ``steps[i]`` updates."""

    estimator: str
    optimizer: str
    learning_rate: float
    draws_per_step: int        # per example
    loss_evals_per_step: int   # over all examples
    steps: tuple[int, ...]
    loss: tuple[float, ...]
    parameters: Tensor

    @property
    def final_loss(self) -> float:
        return self.loss[-1]

    def __repr__(self) -> str:
        return (f"TrainingRun(estimator={self.estimator!r}, optimizer={self.optimizer!r}, "
                f"learning_rate={self.learning_rate:g}, steps={self.steps[-1]}, loss {self.loss[0]:.6g} -> "
                f"{self.final_loss:.6g}, D={self.parameters.numel()})")

    def summary(self, max_rows: int = 20) -> str:
        """A readable account: the estimator and optimiser, the draws and loss evaluations a step costs, the exact
        ``E[L]`` at the start, the end and its lowest, then :meth:`to_frame` (at most ``max_rows`` rows). Print it:
        ``print(run.summary())``."""
        lowest = min(range(len(self.loss)), key=self.loss.__getitem__)
        draws = "the exact gradient" if self.estimator == EXACT else \
            f"{self.draws_per_step} draw{'s' * (self.draws_per_step != 1)} per example"
        evals = f"{self.loss_evals_per_step} loss evaluation{'s' * (self.loss_evals_per_step != 1)}"
        return summary_text([f"Training with {self.estimator!r}: {self.optimizer}, learning rate {self.learning_rate:g}, "
                             f"{draws} and {evals} per step, D = {self.parameters.numel()}",
                             f"exact E[L]: {self.loss[0]:.6g} at step {self.steps[0]}, {self.final_loss:.6g} at step "
                             f"{self.steps[-1]}, lowest {self.loss[lowest]:.6g} at step {self.steps[lowest]}"],
                            self.to_frame(), max_rows)

    def to_frame(self):
        """The exact ``E[L]`` after each recorded number of updates: columns ``step, loss``."""
        import pandas as pd

        return pd.DataFrame({"step": list(self.steps), "loss": list(self.loss)})


class _Adam:
    """Adam's step direction ``m_hat / (sqrt(v_hat) + eps)`` (Kingma & Ba 2015, Algorithm 1), for parameters of
    ``shape`` (``[R, D]``: each run its own moments)."""

    def __init__(self, shape, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.m = torch.zeros(shape, dtype=torch.float64)
        self.v = torch.zeros(shape, dtype=torch.float64)
        self.beta1, self.beta2, self.eps, self.t = beta1, beta2, eps, 0

    def direction(self, g: Tensor) -> Tensor:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * g
        self.v = self.beta2 * self.v + (1 - self.beta2) * g.square()
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return m_hat / (v_hat.sqrt() + self.eps)


def _as_dataset(problems) -> list[Problem]:
    examples = [problems] if isinstance(problems, Problem) else list(problems) if isinstance(problems, (list, tuple)) else None
    if not examples or not all(isinstance(p, Problem) for p in examples):
        raise ValueError(f"problems must be a Problem or a non-empty list of Problems, got {type(problems).__name__}")
    first = examples[0]
    for p in examples[1:]:
        if p.parameter_shapes() != first.parameter_shapes() or p.layers != first.layers:
            raise ValueError(f"every problem must have the same layers and parameters; {p.description} differs "
                             f"from {first.description}")
        if not torch.equal(p.flat_parameters(), first.flat_parameters()):
            raise ValueError(f"every problem must start from the same parameter values; {p.description} differs "
                             f"from {first.description}")
    return examples


def _mean_exact_loss(examples: list[Problem]) -> float:
    return sum(exact_loss(p) for p in examples) / len(examples)


def dataset_loss(problems) -> float:
    """The exact mean expected loss ``(1/n) sum_n E[L_n]`` over a problem or a list of problems."""
    return _mean_exact_loss(_as_dataset(problems))


def _objective(examples: list[Problem]) -> Callable[[Tensor, dict | None], Tensor]:
    """``(theta, data) -> (1/n) sum_n E[L_n]``, by enumeration, as a pure function of ``theta`` and the task's
    ``data`` (:func:`_task_data`; ``None``: ``examples``' own), which ``torch.func`` can batch over runs and
    differentiate; a non-finite value is the caller's to check."""
    def objective(theta: Tensor, data: dict | None = None) -> Tensor:
        total = theta.new_zeros(())
        for i, p in enumerate(examples):
            q = _rebound(p, theta, data, i)
            for traj in enumeration.trajectories(q, BINARY, parameters=q.parameters):
                total = total + traj.log_prob.exp() @ q.loss(traj.output)
        return total / len(examples)

    return objective


def _rebound(problem: Problem, theta: Tensor, data: dict | None = None, example: int = 0) -> Problem:
    """``problem`` at parameters ``theta`` (and, with a task's ``data``, that task's input and loss of ``example``),
    unchecked: inside a batched step the caller checks what comes out."""
    other = object.__new__(Problem)
    other.__dict__.update(problem.__dict__)
    other.parameters = problem.unflatten(theta)
    other.rebuild = None
    if data is not None:
        if "x" in data:
            other.x = data["x"][example]
        other.loss = problem.loss.with_tensors({k: v[example] for k, v in data["loss"].items()})
    return other


def _task_data(tasks: list[list[Problem]]) -> dict:
    """What differs between tasks of one shape, stacked ``[R, n, ...]``: each example's input and its loss's tensors
    (a loss a builder of :mod:`gradstats.losses` made with tensors; a ValueError where the tasks do not stack)."""
    first = tasks[0]
    for task in tasks[1:]:
        if len(task) != len(first) or task[0].parameter_shapes() != first[0].parameter_shapes() \
                or task[0].layers != first[0].layers:
            raise ValueError("the tasks of one stack must have the same number of examples, layers and parameters; "
                             f"{task[0].description} and {first[0].description} differ")
    losses = [p.loss for task in tasks for p in task]
    if any(loss.tensors is None or loss.with_tensors is not losses[0].with_tensors for loss in losses):
        raise ValueError("stacking different tasks needs losses of one kind that are functions of their tensors "
                         "(gradstats.losses.readout_squared_error); give every run the same task instead")
    data = {"loss": {k: torch.stack([torch.stack([p.loss.tensors[k] for p in task]) for task in tasks])
                     for k in losses[0].tensors}}
    if first[0].x is not None:
        data["x"] = torch.stack([torch.stack([p.x for p in task]) for task in tasks])
    return data


class _Runs:
    """The draws of ``R`` runs at once: ``gradient(theta [R, D], u [R, ...], state)`` is each run's mean gradient over
    the examples (``torch.func.vmap`` over the runs, so each run computes what it would alone), with each run's
    estimator state carried in draw order, example by example."""

    def __init__(self, examples: list[Problem], est, options: dict, draws: int, stateful: bool):
        self.examples, self.est, self.options, self.draws, self.stateful = examples, est, options, draws, stateful
        self.batched = self.est.name in names()   # a user's callable may not batch: its runs go one at a time

    def _one(self, theta: Tensor, u: Tensor, state, tensors: dict[str, Tensor], data: dict | None, where=None):
        g = theta.new_zeros(theta.shape)
        for i, p in enumerate(self.examples):
            q = _rebound(p, theta, data, i)
            opts = {**self.options, **{k: v[i] for k, v in tensors.items()}}
            piece = u[i * self.draws:(i + 1) * self.draws]
            if self.stateful:
                gradient, state = self.est.draw(q, piece, state=state, **opts)
            else:
                gradient = self.est.draw(q, piece, **opts)
            if where is not None:   # one run at a time: every draw checked as it comes
                check_gradient(self.est.name, p, gradient, self.draws, where(i))
            dense = gradient.dense() if isinstance(gradient, FactoredGradient) else gradient
            g = g + dense.mean(0)
        return g / len(self.examples), state

    def gradient(self, theta: Tensor, u: Tensor, state, tensors: dict[str, Tensor], data: dict | None, where=None):
        """Each run's step direction ``[R, D]`` and state (``data``: each run's task, :func:`_task_data`, or ``None``
        for one task shared); ``where(r, i)(row)`` names draw ``row`` of run ``r``, example ``i`` (for the runs that
        go one at a time)."""
        if self.batched and theta.shape[0] > 1:
            batched = None if state is None else 0
            return vmap(self._one, in_dims=(0, 0, batched, 0, None if data is None else 0), out_dims=(0, batched),
                        randomness="error")(theta, u, state, tensors, data)
        out = [self._one(theta[r], u[r], None if state is None else state[r], {k: v[r] for k, v in tensors.items()},
                         _run_data(data, r), None if where is None else (lambda i, r=r: where(r, i)))
               for r in range(theta.shape[0])]
        return torch.stack([g for g, _ in out]), None if state is None else torch.stack([s for _, s in out])


def _run_data(data: dict | None, r: int) -> dict | None:
    """Run ``r``'s task data (:func:`_task_data`), or ``None``."""
    if data is None:
        return None
    return {k: ({name: t[r] for name, t in v.items()} if isinstance(v, dict) else v[r]) for k, v in data.items()}


def _per_run(fn: Callable, count: int, data: dict | None) -> Callable[[Tensor], Tensor]:
    """``fn(theta, data)`` of one run, applied to ``[R, D]`` (and each run's data): batched over the runs (``vmap``),
    or called directly for a stack of one (the same arithmetic, without the batching's overhead)."""
    if count > 1:
        batched = vmap(fn, in_dims=(0, None if data is None else 0))
        return lambda theta: batched(theta, data)
    return lambda theta: fn(theta[0], _run_data(data, 0))[None]


def _split_options(resolved: list[list[dict]]) -> tuple[dict, dict[str, Tensor]]:
    """Per run and example resolved options -> those equal everywhere, and the tensor ones stacked ``[R, n, ...]``."""
    first = resolved[0][0]
    tensors = {k: torch.stack([torch.stack([opts[k] for opts in run]) for run in resolved])
               for k, v in first.items() if isinstance(v, Tensor)}
    return {k: v for k, v in first.items() if k not in tensors}, tensors


def _broadcast(name: str, values, count: int) -> list:
    values = list(values) if isinstance(values, (list, tuple)) else [values] * count
    if len(values) != count:
        raise ValueError(f"{name} must have one entry per run ({count}), got {len(values)}")
    return values


def train(problems, estimator, *, steps: int, learning_rate: float, draws_per_step: int = 1,
          seed: int = 0, record_every: int = 10, optimizer: str = "sgd", **options) -> TrainingRun:
    """SGD (or Adam) on the shared parameters of ``problems`` with ``estimator``; the exact loss every ``record_every`` steps.

    One run of :func:`train_many` (the same code path: a stack of one).

    Parameters
    ----------
    problems
        A :class:`~gradstats.problems.Problem`, or a list of problems with the same
        layers and starting parameters (a dataset, such as
        :func:`~gradstats.problems.teacher_student`): the objective is the mean of their
        expected losses, and every step draws for every example.
    estimator
        A registered name, an :class:`~gradstats.estimators.Estimator`, a user
        callable, or ``"exact"`` for the exact gradient of the binary objective.
    steps
        Updates to make.
    learning_rate
        The step size ``eta > 0``.
    draws_per_step
        Draws per example averaged into one update (one draw is one gradient
        estimate).
    seed
        The noise stream.
    record_every
        The exact loss is recorded before the first update, every
        ``record_every`` updates, and after the last.
    optimizer
        ``"sgd"`` (plain steps) or ``"adam"`` (Kingma & Ba 2015, betas 0.9 and
        0.999, eps 1e-8, with bias correction), which rescales each coordinate and so
        takes the overall scale of an estimate out of the comparison.
    **options
        The estimator's options.
    """
    return train_many(problems, estimator, steps=steps, learning_rates=[learning_rate], seeds=[seed],
                      draws_per_step=draws_per_step, record_every=record_every, optimizer=optimizer, **options)[0]


def train_many(problems, estimator, *, steps: int, learning_rates, seeds, draws_per_step: int = 1,
               record_every: int = 10, optimizer: str = "sgd", **options) -> list[TrainingRun]:
    """Many independent runs of :func:`train` as one computation: run ``r`` has learning rate
    ``learning_rates[r]`` and noise stream ``seeds[r]`` (a single value is broadcast), everything else shared;
    ``problems`` is one task for every run, or a list of tasks, one per run (tasks of one shape whose losses
    are functions of their tensors, such as :func:`~gradstats.problems.teacher_student`'s: their inputs, loss
    tensors and starting parameters are stacked too).

    The runs are stacked along a leading axis: parameters ``[R, D]``, Adam's moments ``[R, D]``, the estimator's
    state, the uniforms ``[R, ...]`` (run ``r`` draws from its own stream, :class:`~gradstats.noise.NoiseStream`
    seeded with ``seeds[r]``, as it would alone), and each step's draws and the exact losses are computed for all
    runs at once with ``torch.func.vmap`` (the exact gradient with ``torch.func.grad``). So a run in a stack is
    the run alone: the same noise, the same arithmetic per run, the same numbers (``tests/test_training.py``
    checks it against runs alone and across stack sizes). A user's callable estimator, which may not batch,
    runs one run at a time. A run whose parameters stop being finite raises
    :class:`~gradstats.estimators.NonFiniteError` naming its seed and rate.
    """
    per_task = isinstance(problems, (list, tuple)) and bool(problems) and isinstance(problems[0], (list, tuple))
    tasks = [_as_dataset(task) for task in problems] if per_task else None
    examples = tasks[0] if per_task else _as_dataset(problems)
    steps = positive_int("steps", steps)
    draws = positive_int("draws_per_step", draws_per_step)
    every = positive_int("record_every", record_every)
    if not isinstance(learning_rates, (list, tuple)) and not isinstance(seeds, (list, tuple)) and not per_task:
        raise ValueError("learning_rates, seeds or problems must be a list (one entry per run)")
    count = len(learning_rates) if isinstance(learning_rates, (list, tuple)) else \
        len(seeds) if isinstance(seeds, (list, tuple)) else len(tasks)
    if count < 1:
        raise ValueError("train_many needs at least one run")
    if per_task and len(tasks) != count:
        raise ValueError(f"problems names {len(tasks)} tasks for {count} runs: one task per run, or one task for all")
    data = _task_data(tasks) if per_task else None
    rates = [positive_finite("learning_rate", r) for r in _broadcast("learning_rates", learning_rates, count)]
    seeds = [seed_value("seed", s) for s in _broadcast("seeds", seeds, count)]
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    exact = isinstance(estimator, str) and estimator == EXACT
    first = examples[0]
    objective = _objective(examples)
    if exact:
        if options:
            raise ValueError(f"estimator 'exact' takes no options, got {sorted(options)}")
        name, loss_evals = EXACT, 2 ** first.num_units * len(examples)
        # one run alone descends gradstats' exact gradient (chunked autograd, centred losses); a stack its batched twin
        descent = _per_run(grad(objective), count, data) if count > 1 else (
            lambda theta: (sum(exact_gradient(_rebound(p, theta[0], _run_data(data, 0), i))
                               for i, p in enumerate(examples)) / len(examples))[None])
    else:
        est = get(estimator)
        resolved = [resolve_options(est, p, options) for p in examples]
        name, loss_evals = est.name, est.loss_evals(first, resolved[0]) * draws * len(examples)
        streams = [NoiseStream(s, (est.noise_per_unit(resolved[0]), first.num_units), torch.device("cpu")) for s in seeds]
        stateful = est.stateful(resolved[0])
        if per_task:
            resolved_runs = [[resolve_options(est, p, options) for p in task] for task in tasks]
        else:
            resolved_runs = [resolved] * count
        static, tensors = _split_options(resolved_runs)
        refresh = est.prepare is not None and bool(tensors)   # options that may follow the parameters (Eq. 10)
        runs = _Runs(examples, est, static, draws, stateful)
        state = torch.zeros(count, 2, first.num_units, dtype=torch.float64) if stateful else None
    per_step = draws * len(examples)
    theta = torch.stack([task[0].flat_parameters() for task in tasks]) if per_task else \
        first.flat_parameters().expand(count, -1).clone()
    rate = torch.tensor(rates, dtype=torch.float64)[:, None]
    adam = _Adam(theta.shape)
    losses = _per_run(objective, count, data)
    recorded_steps, recorded = [0], [_checked(losses(theta), examples, theta, data)]
    for k in range(steps):
        if exact:
            g = descent(theta)
        else:
            if k > 0 and refresh:
                static, tensors = _split_options([[resolve_options(est, _rebound(p, t, _run_data(data, r), i), options)
                                                   for i, p in enumerate(examples)] for r, t in enumerate(theta)])
                runs.options = static
            if k % _PREFETCH_STEPS == 0:   # every run's uniforms for the next steps, from its own stream, at once
                last = min(k + _PREFETCH_STEPS, steps)
                window = torch.stack([s.uniforms(k * per_step, last * per_step) for s in streams])
            u = window[:, (k % _PREFETCH_STEPS) * per_step:(k % _PREFETCH_STEPS + 1) * per_step]

            def where(r, i, k=k):
                return lambda row: f"step {k}, draw {k * per_step + i * draws + row} (seed {seeds[r]})"

            g, state = runs.gradient(theta, u, state, tensors, data, where)
            _check_draws(g, runs, theta, u, state, tensors, data, k, seeds, name, per_step)
        theta = theta - rate * (g if optimizer == "sgd" else adam.direction(g))
        bad = ~torch.isfinite(theta).all(1)
        if bool(bad.any()):
            r = int(torch.nonzero(bad)[0])
            raise NonFiniteError(f"the parameters overflowed at step {k} of {first.description} with {name!r} at "
                                 f"learning rate {rates[r]:g} (seed {seeds[r]}): lower the learning rate")
        if (k + 1) % every == 0 or k + 1 == steps:
            recorded_steps.append(k + 1)
            recorded.append(_checked(losses(theta), examples, theta, data))
    loss = torch.stack(recorded, 1)
    return [TrainingRun(name, optimizer, rates[r], draws, loss_evals, tuple(recorded_steps), tuple(loss[r].tolist()),
                        theta[r].clone()) for r in range(count)]


def _checked(values: Tensor, examples: list[Problem], theta: Tensor, data: dict | None) -> Tensor:
    """The runs' exact losses, or the error :func:`gradstats.exact_loss` gives for the first run whose loss is not
    finite (naming the enumerated state)."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        r = int(torch.nonzero(bad)[0])
        _mean_exact_loss([_rebound(p, theta[r], _run_data(data, r), i) for i, p in enumerate(examples)])
        raise NonFiniteError(f"the exact loss is {float(values[r])} at the parameters of run {r}")
    return values


def _check_draws(g: Tensor, runs: _Runs, theta, u, state, tensors, data, step: int, seeds: list[int], name: str,
                 per_step: int) -> None:
    """Where a run's step is not finite, its draws again one at a time, through the checks that name the draw."""
    bad = ~torch.isfinite(g).all(1)
    if not bool(bad.any()):
        return
    r = int(torch.nonzero(bad)[0])
    run_state = None if state is None else torch.zeros_like(state[r])
    for i, p in enumerate(runs.examples):
        q = _rebound(p, theta[r], _run_data(data, r), i)
        opts = {**runs.options, **{k: v[r, i] for k, v in tensors.items()}}
        piece = u[r, i * runs.draws:(i + 1) * runs.draws]
        gradient = runs.est.draw(q, piece, **opts) if not runs.stateful else \
            runs.est.draw(q, piece, state=run_state, **opts)[0]
        first_draw = step * per_step + i * runs.draws
        check_gradient(name, p, gradient, runs.draws,
                       lambda row, d=first_draw: f"step {step}, draw {d + row} (seed {seeds[r]})")
    raise NonFiniteError(f"{name!r} gave a non-finite step at step {step} (seed {seeds[r]})")


def next_rate(rate: float, up: bool) -> float:
    """The learning-rate grid ..., 0.3, 1, 3, 10, 30, 100, ... continued one step up or down from ``rate``."""
    leading_one = f"{rate:e}".startswith("1")
    factor = (3.0 if leading_one else 10 / 3) if up else (0.3 if leading_one else 1 / 3)
    return round(rate * factor, 12)


def select_rate(score: Callable[[float], float], rates, max_extensions: int = 3) -> tuple[float, list, bool]:
    """The rate with the lowest ``score(rate)``; while it is an end of the grid the grid is extended past it
    (at most ``max_extensions`` times). Returns the rate, the grid tried and whether it still ends there."""
    grid = sorted(positive_finite("rates entries", rate) for rate in rates)
    if len(grid) < 2:
        raise ValueError(f"rates must hold at least two learning rates (an end needs an inside), got {list(rates)}")
    if isinstance(max_extensions, bool) or not (isinstance(max_extensions, int) and max_extensions >= 0):
        raise ValueError(f"max_extensions must be an integer >= 0, got {max_extensions!r}")
    scores = {}
    for _ in range(max_extensions + 1):
        for rate in grid:
            if rate not in scores:
                scores[rate] = score(rate)
        best = min(grid, key=scores.__getitem__)
        if best not in (grid[0], grid[-1]):
            return best, grid, False
        grid = [next_rate(grid[0], up=False), *grid] if best == grid[0] else [*grid, next_rate(grid[-1], up=True)]
    best = min(scores, key=scores.__getitem__)
    return best, sorted(scores), best in (min(scores), max(scores))
