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

from .estimators import NonFiniteError, check_gradient, get, resolve_options
from .exact import exact_gradient, exact_loss
from .noise import NoiseStream
from .numerics import positive_finite, positive_int, seed_value, summary_text
from .problems import FactoredGradient, Problem

__all__ = ["EXACT", "OPTIMIZERS", "TrainingRun", "dataset_loss", "train", "next_rate", "select_rate"]

EXACT = "exact"
OPTIMIZERS = ("sgd", "adam")


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
    """Adam's step direction ``m_hat / (sqrt(v_hat) + eps)`` (Kingma & Ba 2015, Algorithm 1)."""

    def __init__(self, dim: int, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.m = torch.zeros(dim, dtype=torch.float64)
        self.v = torch.zeros(dim, dtype=torch.float64)
        self.beta1, self.beta2, self.eps, self.t = beta1, beta2, eps, 0

    def direction(self, g: Tensor) -> Tensor:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * g
        self.v = self.beta2 * self.v + (1 - self.beta2) * g.square()
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return m_hat / (v_hat.sqrt() + self.eps)


def _mean_gradient(gradient: FactoredGradient | Tensor) -> Tensor:
    dense = gradient.dense() if isinstance(gradient, FactoredGradient) else gradient
    return dense.mean(0)


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


def train(problems, estimator, *, steps: int, learning_rate: float, draws_per_step: int = 1,
          seed: int = 0, record_every: int = 10, optimizer: str = "sgd", **options) -> TrainingRun:
    """SGD (or Adam) on the shared parameters of ``problems`` with ``estimator``; the exact loss every ``record_every`` steps.

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
    examples = _as_dataset(problems)
    steps = positive_int("steps", steps)
    draws = positive_int("draws_per_step", draws_per_step)
    every = positive_int("record_every", record_every)
    seed = seed_value("seed", seed)
    learning_rate = positive_finite("learning_rate", learning_rate)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    exact = isinstance(estimator, str) and estimator == EXACT
    first = examples[0]
    if exact:
        if options:
            raise ValueError(f"estimator 'exact' takes no options, got {sorted(options)}")
        name, loss_evals = EXACT, 2 ** first.num_units * len(examples)
    else:
        est = get(estimator)
        resolved = [resolve_options(est, p, options) for p in examples]
        name, loss_evals = est.name, est.loss_evals(first, resolved[0]) * draws * len(examples)
        stream = NoiseStream(seed, (est.noise_per_unit(resolved[0]), first.num_units), torch.device("cpu"))
        stateful, state = est.stateful(resolved[0]), None
    per_step = draws * len(examples)
    theta = first.flat_parameters().clone()
    adam = _Adam(theta.shape[0])
    recorded_steps, recorded_loss = [0], [_mean_exact_loss(examples)]
    for k in range(steps):
        if exact:
            g = sum(exact_gradient(p) for p in examples) / len(examples)
        else:
            if k > 0 and est.prepare is not None:
                resolved = [resolve_options(est, p, options) for p in examples]
            u = stream.uniforms(k * per_step, (k + 1) * per_step)
            g = torch.zeros_like(theta)
            for i, (p, opts) in enumerate(zip(examples, resolved)):  # in draw order: a running state is shared
                piece = u[i * draws:(i + 1) * draws]
                if stateful:
                    gradient, state = est.draw(p, piece, state=state, **opts)
                else:
                    gradient = est.draw(p, piece, **opts)
                first_draw = k * per_step + i * draws
                check_gradient(name, p, gradient, draws,
                               lambda row, d=first_draw, step=k: f"step {step}, draw {d + row} (seed {seed})")
                g += _mean_gradient(gradient)
            g /= len(examples)
        theta = theta - learning_rate * (g if optimizer == "sgd" else adam.direction(g))
        if not torch.isfinite(theta).all():
            raise NonFiniteError(f"the parameters overflowed at step {k} of {first.description} with {name!r} at "
                                 f"learning rate {learning_rate:g}: lower the learning rate")
        examples = [p.with_parameters(theta) for p in examples]
        if (k + 1) % every == 0 or k + 1 == steps:
            recorded_steps.append(k + 1)
            recorded_loss.append(_mean_exact_loss(examples))
    return TrainingRun(name, optimizer, float(learning_rate), draws, loss_evals, tuple(recorded_steps),
                       tuple(recorded_loss), theta)


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
