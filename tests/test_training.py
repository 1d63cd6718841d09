"""Training through an estimator, scored by the exact objective; the teacher-student task."""

import itertools
import math

import pytest
import torch

import gradstats as gs
from gradstats.noise import NoiseStream
from gradstats.training import dataset_loss, next_rate, select_rate, train


def all_states(n):
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), dtype=torch.float64)


def test_teacher_student_shares_parameters_and_its_infimum_is_zero():
    dataset = gs.problems.teacher_student([4, 3, 5], num_examples=6, seed=2)
    assert len(dataset) == 6
    theta = dataset[0].flat_parameters()
    assert all(torch.equal(p.flat_parameters(), theta) for p in dataset)
    assert len({tuple(p.x.tolist()) for p in dataset}) == 6
    for p in dataset:  # the teacher's code has zero loss, and no code has less
        assert float(p.loss(all_states(5)).min()) == pytest.approx(0.0, abs=1e-24)
    again = gs.problems.teacher_student([4, 3, 5], num_examples=6, seed=2)
    assert all(torch.equal(a.x, b.x) and a.loss.spec == b.loss.spec for a, b in zip(dataset, again))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_examples": 0}, "num_examples must be an integer >= 1"),
    ({"teacher_scale": 0.0}, "teacher_scale must be > 0"),
    ({"teacher_scale": float("nan")}, "teacher_scale must be a finite number"),
    ({"num_outputs": 0}, "num_outputs must be an integer >= 1"),
])
def test_teacher_student_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gs.problems.teacher_student([3, 2], **kwargs)


def test_exact_training_is_gradient_descent_on_the_mean_loss():
    dataset = gs.problems.teacher_student([3, 4], num_examples=3, seed=1)
    run = train(dataset, "exact", steps=5, learning_rate=0.5, record_every=2)
    theta = dataset[0].flat_parameters()
    for _ in range(5):
        theta = theta - 0.5 * sum(gs.exact_gradient(p.with_parameters(theta)) for p in dataset) / 3
    assert torch.allclose(run.parameters, theta, rtol=0, atol=1e-13)
    assert run.steps == (0, 2, 4, 5)
    assert run.loss[-1] == pytest.approx(dataset_loss([p.with_parameters(theta) for p in dataset]), rel=1e-12)
    assert all(b < a for a, b in zip(run.loss, run.loss[1:]))  # a small step on a smooth objective descends


def test_a_step_is_the_mean_of_the_streams_draws_for_every_example():
    dataset = gs.problems.teacher_student([3, 2, 3], num_examples=2, seed=0)
    run = train(dataset, "st", steps=1, learning_rate=0.1, draws_per_step=4, seed=5)
    u = NoiseStream(5, (1, dataset[0].num_units), torch.device("cpu")).uniforms(0, 8)
    est = gs.estimators.get("st")
    g = sum(est.draw(p, u[4 * i:4 * i + 4]).dense().mean(0) for i, p in enumerate(dataset)) / 2
    assert torch.allclose(run.parameters, dataset[0].flat_parameters() - 0.1 * g, rtol=0, atol=1e-14)
    assert run.loss_evals_per_step == 8 and run.draws_per_step == 4


def test_an_unbiased_step_is_the_exact_step_within_its_standard_error():
    # DisARM's exact variance gives the standard error of a mean of n draws; 5 standard errors per
    # coordinate (failure rate below 6e-7 a coordinate, 15 coordinates); the seed is fixed.
    problem = gs.problems.sbn([2, 5], seed=3)
    n = 2**15
    run = train(problem, "disarm", steps=1, learning_rate=1.0, draws_per_step=n, seed=11)
    step = problem.flat_parameters() - run.parameters
    exact = gs.moments(problem, "disarm")
    assert torch.allclose(exact.mean, gs.exact_gradient(problem), atol=1e-12)
    assert ((step - exact.mean).abs() <= 5 * (exact.var / n).sqrt() + 1e-12).all()


def test_training_is_a_pure_function_of_its_seed_and_carries_a_running_baseline():
    dataset = gs.problems.teacher_student([3, 3], num_examples=2, seed=4)
    kw = dict(steps=6, learning_rate=0.3, draws_per_step=3, baseline="running", decay=0.9)
    a, b = train(dataset, "reinforce", seed=1, **kw), train(dataset, "reinforce", seed=1, **kw)
    assert torch.equal(a.parameters, b.parameters) and a.loss == b.loss
    assert not torch.equal(a.parameters, train(dataset, "reinforce", seed=2, **kw).parameters)
    fixed = train(dataset, "reinforce", seed=1, steps=6, learning_rate=0.3, draws_per_step=3, baseline=0.0)
    assert not torch.equal(a.parameters, fixed.parameters)


def test_optimal_baseline_is_recomputed_at_every_step():
    problem = gs.problems.sbn([2, 3], seed=0)
    run = train(problem, "reinforce", steps=2, learning_rate=1.0, draws_per_step=5, seed=0, baseline="optimal")
    est = gs.estimators.get("reinforce")
    u = NoiseStream(0, (1, 3), torch.device("cpu")).uniforms(0, 10)
    theta = problem.flat_parameters()
    for k in range(2):
        current = problem.with_parameters(theta)
        options = gs.estimators.resolve_options(est, current, {"baseline": "optimal"})
        theta = theta - est.draw(current, u[5 * k:5 * k + 5], **options).dense().mean(0)
    assert torch.allclose(run.parameters, theta, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kwargs, message", [
    ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number > 0"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"draws_per_step": -1}, "draws_per_step must be an integer >= 1"),
    ({"record_every": 0}, "record_every must be an integer >= 1"),
])
def test_train_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(gs.problems.toy(), "st", **{"steps": 2, "learning_rate": 0.1, **kwargs})


def test_train_refuses_a_dataset_that_does_not_share_parameters():
    with pytest.raises(ValueError, match="same parameter values"):
        train([gs.problems.sbn([3, 2], seed=0), gs.problems.sbn([3, 2], seed=1)], "st", steps=1, learning_rate=0.1)
    with pytest.raises(ValueError, match="same layers and parameters"):
        train([gs.problems.sbn([3, 2], seed=0), gs.problems.sbn([3, 3], seed=0)], "st", steps=1, learning_rate=0.1)
    with pytest.raises(ValueError, match="non-empty list of Problems"):
        train([], "st", steps=1, learning_rate=0.1)
    with pytest.raises(ValueError, match="takes no options"):
        train(gs.problems.toy(), "exact", steps=1, learning_rate=0.1, baseline=0.0)


def test_a_user_callable_estimator_trains_like_the_registered_one():
    def my_st(problem, u):
        return gs.estimators.get("st").draw(problem, u).dense()

    dataset = gs.problems.teacher_student([3, 4], num_examples=2, seed=3)
    mine = train(dataset, my_st, steps=4, learning_rate=0.5, draws_per_step=3, seed=9)
    theirs = train(dataset, "st", steps=4, learning_rate=0.5, draws_per_step=3, seed=9)
    assert mine.estimator == "my_st"
    assert torch.allclose(mine.parameters, theirs.parameters, rtol=0, atol=1e-14) and mine.loss == theirs.loss


def test_adam_matches_torchs_adam_on_the_exact_gradient():
    dataset = gs.problems.teacher_student([3, 4], num_examples=2, seed=5)
    run = train(dataset, "exact", steps=6, learning_rate=0.05, optimizer="adam")
    theta = dataset[0].flat_parameters().clone().requires_grad_(True)
    reference = torch.optim.Adam([theta], lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(6):
        current = theta.detach()
        theta.grad = sum(gs.exact_gradient(p.with_parameters(current)) for p in dataset) / 2
        reference.step()
    assert run.optimizer == "adam"
    assert torch.allclose(run.parameters, theta.detach(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train(dataset, "st", steps=1, learning_rate=0.1, optimizer="rmsprop")


def test_rate_selection_extends_the_grid_past_an_end():
    grid = [1, 3, 10, 30, 100, 300, 1000]
    assert select_rate(lambda r: (math.log(r) - math.log(300)) ** 2, (1, 3, 10, 30)) == (300.0, grid, False)
    best, grid, at_edge = select_rate(lambda r: r, (1, 3, 10, 30), max_extensions=2)
    assert best == min(grid) == 0.1 and at_edge
    assert next_rate(30.0, up=True) == 100.0 and next_rate(1.0, up=False) == 0.3 and next_rate(0.3, up=False) == 0.1


@pytest.mark.parametrize("rates, max_extensions, match", [
    ((1.0,), 3, "rates must hold at least two"),
    ((1.0, float("nan")), 3, "rates entries must be a finite number > 0"),
    ((1.0, -3.0), 3, "rates entries must be a finite number > 0"),
    ((1.0, 3.0), -1, "max_extensions must be an integer >= 0"),
])
def test_rate_selection_rejects_bad_grids(rates, max_extensions, match):
    with pytest.raises(ValueError, match=match):
        select_rate(lambda r: r, rates, max_extensions)


# ---- many runs as one computation -------------------------------------------------------------------

def _close(a, b, tol=1e-11):
    return float(((a.parameters - b.parameters).abs() / (1 + b.parameters.abs())).max()) <= tol and \
        all(abs(x - y) <= tol * (1 + abs(y)) for x, y in zip(a.loss, b.loss))


@pytest.mark.parametrize("estimator, options, draws", [
    ("st", {}, 4), ("reinforce_loo", {"k": 2}, 2), ("disarm", {}, 2), ("exact", {}, 1), ("gumbel", {}, 4),
    ("reinforce", {"baseline": "running", "decay": 0.9}, 4), ("reinforce", {"baseline": "optimal"}, 4)])
def test_a_run_in_a_stack_is_the_run_alone(estimator, options, draws):
    """Each run of a stack has its own noise stream, rate and state: it follows the run alone, up to the float
    rounding that batched arithmetic changes (tolerance: 1e-11 relative on the parameters and recorded losses
    after 12 steps at rates where training is not chaotic; observed below 1e-14). The same seed gives the same
    numbers whatever the stack's size or the run's place in it."""
    dataset = gs.problems.teacher_student([3, 4], num_examples=3, seed=2)
    kw = dict(steps=12, draws_per_step=draws, record_every=4, **options)
    rates, seeds = [0.05, 0.2, 0.1, 0.3], [3, 4, 5, 3]
    stack = gs.training.train_many(dataset, estimator, learning_rates=rates, seeds=seeds, **kw)
    for run, rate, seed in zip(stack, rates, seeds):
        alone = train(dataset, estimator, learning_rate=rate, seed=seed, **kw)
        assert _close(run, alone), (rate, seed)
        assert run.learning_rate == rate and run.steps == alone.steps
    smaller = gs.training.train_many(dataset, estimator, learning_rates=rates[2:], seeds=seeds[2:], **kw)
    assert all(_close(a, b) for a, b in zip(smaller, stack[2:]))


def test_tasks_stack_too_each_run_on_its_own_task():
    tasks = [gs.problems.teacher_student([3, 4], num_examples=3, seed=t) for t in (5, 6, 7)]
    kw = dict(steps=10, draws_per_step=3, record_every=5)
    stack = gs.training.train_many(tasks, "st", learning_rates=[0.2, 0.1, 0.3], seeds=[1, 2, 3], **kw)
    for run, task, rate, seed in zip(stack, tasks, [0.2, 0.1, 0.3], [1, 2, 3]):
        alone = train(task, "st", learning_rate=rate, seed=seed, **kw)
        assert _close(run, alone)
        assert run.loss[0] == pytest.approx(dataset_loss(task), rel=1e-12)    # each starts from its own task


def test_stacks_check_what_they_are_given():
    dataset = gs.problems.teacher_student([3, 4], num_examples=2, seed=2)
    with pytest.raises(ValueError, match=r"seeds must have one entry per run \(2\), got 3"):
        gs.training.train_many(dataset, "st", steps=1, learning_rates=[0.1, 0.2], seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="learning_rates, seeds or problems must be a list"):
        gs.training.train_many(dataset, "st", steps=1, learning_rates=0.1, seeds=1)
    with pytest.raises(ValueError, match="2 tasks for 3 runs"):
        gs.training.train_many([dataset, dataset], "st", steps=1, learning_rates=[0.1, 0.2, 0.3], seeds=1)
    other = gs.problems.teacher_student([3, 5], num_examples=2, seed=2)
    with pytest.raises(ValueError, match="same number of examples, layers and parameters"):
        gs.training.train_many([dataset, other], "st", steps=1, learning_rates=0.1, seeds=[1, 2])
    lambdas = [gs.problems.independent(lambda h: h.sum(-1), [0.1, 0.2])]
    with pytest.raises(ValueError, match="losses of one kind that are functions of their tensors"):
        gs.training.train_many([lambdas, lambdas], "st", steps=1, learning_rates=0.1, seeds=[1, 2])
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        gs.training.train_many(dataset, "st", steps=1, learning_rates=[0.1, -1.0], seeds=1)


def test_a_run_that_overflows_in_a_stack_is_named():
    dataset = gs.problems.independent(lambda h: h.sum(-1), [0.0])
    with pytest.raises(gs.estimators.NonFiniteError, match=r"at learning rate 1e\+308 \(seed 7\)"):
        gs.training.train_many(dataset, "st", steps=5, learning_rates=[0.1, 1e308], seeds=[6, 7])
