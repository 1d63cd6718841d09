"""Fuzzing the public entry points: a finite result of the right shape, or a ValueError/TypeError
that names the argument at fault; never another exception type, never a NaN."""

import contextlib
import io
import math

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import gradstats as gs
import gradstats.cli
import gradstats.functional as gf
from gradstats.training import train

WILD_NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-10**20, 10**20),
                         st.booleans(), st.none(), st.text(max_size=3))
LOGITS = st.floats(-60, 60, allow_nan=False)
SMALL = st.one_of(st.integers(-2, 5), st.floats(-1, 5), st.just(math.nan), st.none(), st.booleans(), st.just("2"))


def call(fn, names):
    """``fn()``; a ValueError or TypeError must name one of ``names``. Returns the result or None."""
    try:
        return fn()
    except (ValueError, TypeError) as err:
        text = str(err)
        assert text and any(name in text for name in names), f"{type(err).__name__} names none of {names}: {text}"
        return None


def finite_moments(m, problem):
    """Finite moments of the right shape; one Monte Carlo draw has no variance, and says so with NaN."""
    assert m.mean.shape == (problem.num_parameters,) and m.var.shape == (problem.num_parameters,)
    assert torch.isfinite(m.mean).all()
    if m.method == "mc" and m.num_samples == 1:
        assert torch.isnan(m.var).all()
    else:
        assert torch.isfinite(m.var).all()


@given(sizes=st.lists(SMALL, min_size=0, max_size=4), seed=WILD_NUMBERS, scale=WILD_NUMBERS,
       loss=st.sampled_from(["squared_error", "cross_entropy", "hinge", 3, None]))
def test_problem_builders(sizes, seed, scale, loss):
    problem = call(lambda: gs.problems.sbn(sizes, loss, seed=seed, weight_scale=scale),
                   ["sizes", "seed", "weight_scale", "loss", "readout"])
    if problem is not None:
        assert torch.isfinite(problem.flat_parameters()).all()


@given(target=WILD_NUMBERS, logit=WILD_NUMBERS, logits=st.lists(WILD_NUMBERS, max_size=3))
def test_toy_and_independent(target, logit, logits):
    toy = call(lambda: gs.problems.toy(target, logit), ["target", "logit"])
    if toy is not None:   # a target of 1e154 overflows the loss: named as a NonFiniteError (a ValueError)
        loss = call(lambda: gs.exact_loss(toy), ["loss"])
        gradient = call(lambda: gs.exact_gradient(toy), ["loss"])
        assert loss is None or math.isfinite(loss)
        assert gradient is None or torch.isfinite(gradient).all()
    problem = call(lambda: gs.problems.independent(gs.losses.polynomial(0.3, 2.0), logits), ["logits"])
    if problem is not None:
        assert torch.isfinite(gs.exact_gradient(problem)).all()


PROBLEM = gs.problems.sbn([2, 2], seed=0)


@given(estimator=st.sampled_from([*gs.estimators.names(), "nope", 3, None]),
       method=st.sampled_from(["exact", "mc", "auto?", None]),
       num_samples=st.one_of(st.integers(-3, 3000), st.floats(-1, 3000), st.none()),
       chunk_size=st.one_of(st.integers(-2, 5000), st.just(0.5)), seed=st.one_of(st.integers(-2, 10), st.floats(0, 3)),
       full=st.sampled_from([None, True, False, 1, "no"]), logit=LOGITS)
@example(estimator="reinforce", method="mc", num_samples=1, chunk_size=1, seed=0, full=None, logit=0.0)
def test_moments(estimator, method, num_samples, chunk_size, seed, full, logit):
    problem = gs.problems.independent(gs.losses.polynomial(0.45, 2.0), [logit, -logit / 2])
    kw = {"full_covariance": full, "chunk_size": chunk_size}
    if method == "mc":
        kw.update(num_samples=num_samples, seed=seed, device="cpu", progress=False)
    m = call(lambda: gs.moments(problem, estimator, method=method, **kw),
             ["estimator", "method", "num_samples", "chunk_size", "seed", "full_covariance", "continuous noise"])
    if m is not None:
        finite_moments(m, problem)


@given(estimators=st.lists(st.sampled_from([*gs.estimators.names(), "typo"]), max_size=3),
       reference=st.sampled_from(["binary", "own", ["binary", "own"], "other"]),
       ms=st.lists(st.integers(-1, 20), max_size=2), key=st.sampled_from([None, "st", "reinforce", "typo"]))
def test_evaluate(estimators, reference, ms, key):
    options = None if key is None else {key: {}}
    frame = call(lambda: gs.evaluate(PROBLEM, estimators, reference, num_samples=400, ms=tuple(ms), device="cpu",
                                     options=options, progress=False),
                 ["estimator", "reference", "ms", "options", "twice"])
    if frame is not None:
        values = frame["value"].to_numpy(dtype=float)
        snr_or_ratio = frame["metric"].isin(["snr", "relative_bias"]).to_numpy()
        assert not (~np.isfinite(values) & ~snr_or_ratio).any()


@given(a=st.lists(LOGITS, min_size=1, max_size=4), temperature=WILD_NUMBERS,
       name=st.sampled_from(["straight_through", "sts", "noisy_rectifier", "gumbel_sigmoid", "st_gumbel", "reinmax"]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_functional(a, temperature, name, dtype):
    x = torch.tensor([a], dtype=dtype, requires_grad=True)
    fn = getattr(gf, name)
    kw = {"temperature": temperature} if name in ("gumbel_sigmoid", "st_gumbel", "reinmax") else {}
    h = call(lambda: fn(x, generator=torch.Generator().manual_seed(0), **kw), ["temperature"])
    if h is not None:
        ((h - 0.3) ** 2).sum().backward()
        assert h.shape == x.shape and torch.isfinite(h).all() and torch.isfinite(x.grad).all()


@given(steps=SMALL, learning_rate=WILD_NUMBERS, draws=SMALL, optimizer=st.sampled_from(["sgd", "adam", "lbfgs"]),
       estimator=st.sampled_from(["st", "reinforce", "exact", "nope"]))
def test_train(steps, learning_rate, draws, optimizer, estimator):
    run = call(lambda: train(gs.problems.toy(), estimator, steps=steps, learning_rate=learning_rate,
                             draws_per_step=draws, optimizer=optimizer),
               ["steps", "learning_rate", "draws_per_step", "optimizer", "estimator", "overflowed"])
    if run is not None:
        assert all(math.isfinite(v) for v in run.loss) and torch.isfinite(run.parameters).all()


@given(argv=st.lists(st.sampled_from(["moments", "train", "estimators", "--estimator", "st", "reinforce", "--logit",
                                      "50", "-1e400", "nan", "--method", "mc", "--num-samples", "0", "300", "--steps",
                                      "2", "--sizes", "2,2", "2,x", "--learning-rate", "--json", "--seed", "-3"]),
                     max_size=7))
def test_cli_exits_0_or_2_with_a_message(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = gradstats.cli.main(argv)
        except SystemExit as exit_:   # argparse's own usage errors
            code = exit_.code
    assert code in (0, 2), (argv, code)
    if code == 2:
        assert err.getvalue().strip()
    assert "nan" not in out.getvalue().lower()
