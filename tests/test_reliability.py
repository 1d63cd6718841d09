"""No silent wrong numbers: what is validated at every entry point, what is refused, what is named."""

import logging
import math

import pytest
import torch

import gradstats as gs
import gradstats.cli
from gradstats.estimators import NonFiniteError
from gradstats.problems import FactoredGradient
from gradstats.training import train

MC = dict(method="mc", num_samples=2000, seed=0, device="cpu", progress=False)


# ---- shapes and names ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["exact", "mc"])
@pytest.mark.parametrize("size", [5, 7])   # D = 6: one short, one long
def test_a_reference_must_be_exactly_d_long(method, size):
    problem = gs.problems.sbn([2, 2], seed=0)
    kw = MC if method == "mc" else {"method": "exact"}
    with pytest.raises(ValueError, match=r"references\['g'\] must have shape \(6,\)"):
        gs.moments(problem, "st", references={"g": torch.zeros(size)}, **kw)
    m = gs.moments(problem, "st")
    with pytest.raises(ValueError, match=r"reference must have shape \(6,\)"):
        gs.metrics.compute_metrics(m, problem, torch.zeros(size), "g")


@pytest.mark.parametrize("baseline", [[0.0], [0.0, 0.0, 0.0], [[0.0, 0.0]]])
def test_a_baseline_must_be_one_number_or_one_per_unit(baseline):
    problem = gs.problems.sbn([2, 2], seed=0)
    with pytest.raises(ValueError, match="baseline must be a number or 2 numbers"):
        gs.moments(problem, "reinforce", baseline=baseline)
    h, surrogate = gs.functional.reinforce(torch.zeros(4, 2), generator=torch.Generator().manual_seed(0))
    if len(torch.as_tensor(baseline).shape) != 1 or len(baseline) != 2:
        with pytest.raises(ValueError, match="baseline must be a number or 2 numbers"):
            surrogate(torch.zeros(4), baseline=torch.as_tensor(baseline))


def test_evaluate_refuses_a_misspelt_option_key_an_empty_list_and_a_non_problem():
    problem = gs.problems.toy()
    with pytest.raises(ValueError, match=r"options names estimator\(s\) \['reinfroce'\] that are not being evaluated"):
        gs.evaluate(problem, ["reinforce"], options={"reinfroce": {"baseline": "optimal"}}, ms=(1,), progress=False)
    with pytest.raises(ValueError, match="estimators is empty"):
        gs.evaluate(problem, [], progress=False)
    for call in (lambda: gs.evaluate("toy", ["st"]), lambda: gs.exact_gradient(3), lambda: gs.exact_loss(None),
                 lambda: gs.moments([problem], "st"), lambda: gs.exact_moments({}, "st")):
        with pytest.raises(ValueError, match="problem must be a gradstats Problem"):
            call()


def test_a_user_estimator_must_return_exactly_the_rows_asked_for():
    problem = gs.problems.sbn([2, 3], seed=0)

    def extra_rows(problem, u):
        b = u.shape[0]
        return FactoredGradient([torch.zeros(b + 1, 3)], [torch.zeros(b + 1, 2)])

    def wrong_width(problem, u):
        return torch.zeros(u.shape[0], problem.num_parameters + 1)

    with pytest.raises(ValueError, match=r"returned deltas\[0\] of shape \(101, 3\), expected \(100, 3\)"):
        gs.moments(problem, extra_rows, **MC)   # 20 batches of 100 draws
    with pytest.raises(ValueError, match=r"returned shape \(100, 10\), expected \(100, 9\)"):
        gs.moments(problem, wrong_width, **MC)
    with pytest.raises(ValueError, match=r"returned deltas\[0\] of shape"):
        train(problem, extra_rows, steps=1, learning_rate=1.0)


@pytest.mark.parametrize("value", [None, 1, "yes", torch.tensor(True)])
def test_full_covariance_is_a_bool_or_none(value):
    problem = gs.problems.toy()
    if value is None:
        gs.moments(problem, "st", full_covariance=value)
        return
    with pytest.raises(ValueError, match="full_covariance must be True, False or None"):
        gs.moments(problem, "st", full_covariance=value)
    with pytest.raises(ValueError, match="full_covariance must be True, False or None"):
        gs.moments(problem, "st", full_covariance=value, **MC)


@pytest.mark.parametrize("seed", [1.5, 1.0, -1, 2**63, True, "0"])
def test_seeds_are_integers_in_range(seed):
    for call in (lambda: gs.problems.sbn([2, 2], seed=seed), lambda: gs.problems.teacher_student([2, 2], 2, seed=seed),
                 lambda: gs.moments(gs.problems.toy(), "st", **{**MC, "seed": seed}),
                 lambda: train(gs.problems.toy(), "st", steps=1, learning_rate=1.0, seed=seed)):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^63\)"):
            call()


# ---- non-finite values ------------------------------------------------------------------------

def _nan_at_two_ones(h):
    """A loss that is NaN at the state (1, 1), finite elsewhere."""
    value = h.sum(-1)
    return torch.where(h.sum(-1) > 1.5, torch.nan, value)


def test_a_nan_loss_is_named_with_its_enumerated_state():
    problem = gs.problems.independent(_nan_at_two_ones, [0.0, 0.0])
    with pytest.raises(NonFiniteError, match=r"is nan at enumerated state 3 \(h = \[1.0, 1.0\]\)"):
        gs.exact_loss(problem)
    with pytest.raises(NonFiniteError, match="at enumerated state 3"):
        gs.exact_gradient(problem)
    with pytest.raises(NonFiniteError, match=r"'reinforce' gave a non-finite gradient .* at enumerated outcome 3"):
        gs.moments(problem, "reinforce")


def test_a_nan_draw_is_named_with_its_index_and_seed():
    problem = gs.problems.independent(_nan_at_two_ones, [-3.0, -3.0])   # (1, 1) is rare: the first such draw is named
    with pytest.raises(NonFiniteError, match=r"'reinforce' gave a non-finite gradient .* at draw \d+ \(seed 0\)"):
        gs.moments(problem, "reinforce", **MC)
    with pytest.raises(NonFiniteError, match="at enumerated state 3"):
        gs.evaluate(problem, ["reinforce"], progress=False)
    with pytest.raises(NonFiniteError, match=r"is nan at enumerated state 3"):   # train's exact score meets it first
        train(gs.problems.independent(_nan_at_two_ones, [0.0, 0.0]), "reinforce", steps=5, learning_rate=0.1)


def test_a_nan_from_a_user_estimator_or_a_loss_derivative_is_named():
    problem = gs.problems.toy()

    def sometimes_nan(problem, u):
        out = torch.zeros(u.shape[0], 1, dtype=u.dtype)
        out[7] = torch.inf
        return out

    with pytest.raises(NonFiniteError, match=r"'sometimes_nan' .* at draw 7 \(seed 0\)"):
        gs.moments(problem, sometimes_nan, **MC)
    with pytest.raises(NonFiniteError, match=r"'sometimes_nan' .* at step 0, draw 7 \(seed 0\)"):
        train(problem, sometimes_nan, steps=3, learning_rate=0.1, draws_per_step=10)
    root = gs.problems.independent(lambda h: h.sqrt().sum(-1), [0.0])   # d sqrt(h)/dh is inf at h = 0
    with pytest.raises(NonFiniteError, match="at draw"):
        gs.moments(root, "st", **MC)


def test_training_that_overflows_says_so():
    with pytest.raises(NonFiniteError, match="parameters overflowed at step .* lower the learning rate"):
        train(gs.problems.independent(lambda h: h.sum(-1), [0.0]), "st", steps=5, learning_rate=1e308)


# ---- metric edge cases ---------------------------------------------------------------------------

def test_metric_edges_have_honest_values():
    problem = gs.problems.toy(0.5, 1.0)   # the exact gradient p (1 - p)(1 - 2t) is exactly 0; ST's mean is not
    rows = {(r.metric, r.coordinate): r.value
            for r in gs.metrics.compute_metrics(gs.moments(problem, "st"), problem, gs.exact_gradient(problem), "g")}
    assert rows[("relative_bias", "")] == math.inf
    saturated = gs.problems.independent(lambda h: h.sum(-1), [60.0])   # ST's draws are all 1: zero variance
    m = gs.moments(saturated, "st")
    rows = {r.metric: r.value for r in gs.metrics.compute_metrics(m, saturated, gs.exact_gradient(saturated), "g")}
    assert m.var[0] == 0 and rows["snr"] == math.inf
    tiny = torch.tensor([1e-200, 2e-200], dtype=torch.float64)
    assert gs.numerics.cosine(tiny, 2 * tiny) == pytest.approx(1.0, abs=1e-15)
    assert gs.numerics.cosine(torch.tensor([1e-22], dtype=torch.float64), torch.tensor([3e-22], dtype=torch.float64)) == 1.0


def test_cli_cosine_at_logit_50_is_exact(capsys):
    assert gradstats.cli.main(["moments", "--estimator", "st", "--logit", "50"]) == 0
    assert "cos(mean, g) = 1" in capsys.readouterr().out


# ---- long runs ---------------------------------------------------------------------------------------

def test_more_draws_than_float64_counts_exactly_are_refused():
    with pytest.raises(ValueError, match=r"num_samples must be at most 2\^53"):
        gs.moments(gs.problems.toy(), "st", **{**MC, "num_samples": 2**53 + 1})


def test_a_run_longer_than_an_hour_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(gs.montecarlo, "_ESTIMATE_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(gs.montecarlo, "LONG_RUN_SECONDS", 1e-9)
    with caplog.at_level(logging.WARNING, logger="gradstats.montecarlo"):
        gs.moments(gs.problems.toy(), "st", **{**MC, "num_samples": 5000, "chunk_size": 500})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "hours more at" in messages[0]
