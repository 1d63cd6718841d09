"""No silent wrong numbers: what is validated at every entry point, what is refused, what is named."""

import logging
import math

import pandas as pd
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


def test_one_draw_has_no_variance_and_says_so():
    stats = gs.GradientStats(reference=torch.ones(3, dtype=torch.float64)).update(torch.ones(1, 3, dtype=torch.float64))
    frame = stats.to_frame()
    assert math.isnan(frame[frame.metric == "variance_trace"].value.iloc[0])
    assert frame[frame.metric == "mse"].value.isna().all()
    rows = {r.metric: r.value for r in gs.metrics.compute_metrics(
        gs.moments(gs.problems.toy(), "st", method="mc", num_samples=1, progress=False), gs.problems.toy(),
        gs.exact_gradient(gs.problems.toy()), "g")}
    assert math.isnan(rows["variance_trace"]) and math.isnan(rows["mse"])


def test_gradients_far_below_the_square_root_of_the_smallest_float_keep_their_true_ratios():
    # at a = -400, p = e^-400: ST-sigmoid's gradient is about 1.9e-174 (its square underflows), the exact one has the
    # other sign and a tenth of its size: relative bias 10, cosines -1, not 0
    problem = gs.problems.toy(0.45, -400.0)
    frame = gs.evaluate(problem, "st_sigmoid", ms=(1, 10), num_samples=2000)
    rows = {(r.metric, r.M if r.M is not pd.NA else None): r.value for r in frame[frame.coordinate == ""].itertuples()}
    assert rows[("relative_bias", None)] == pytest.approx(10.0, rel=1e-9)
    assert rows[("cosine_mean", None)] == -1.0 and rows[("cosine_draw", None)] == -1.0
    assert rows[("cosine_m", 10)] == -1.0
    tiny = gs.GradientStats(reference=torch.tensor([1e-200, -2e-200], dtype=torch.float64))
    tiny.update(torch.tensor([[3e-200, -6e-200], [1e-201, -2e-201]], dtype=torch.float64))
    frame = tiny.to_frame(ms=(1,))
    value = dict(zip(frame.metric, frame.value))
    assert value["cosine_draw"] == pytest.approx(1.0, abs=1e-15) and value["cosine_mean"] == pytest.approx(1.0, abs=1e-15)
    assert value["relative_bias"] == pytest.approx(0.55, rel=1e-12)


def test_a_squared_bias_beyond_float64_is_named_not_a_crash_or_nan():
    # every draw 1e300 against a reference of norm 1.3: the bias norm is finite, its square is not (Python's float
    # ** 2 raised OverflowError; an inf squared bias would make the debiased one and the MSE inf - inf = NaN)
    reference = torch.linspace(-1, 1, 6, dtype=torch.float64)
    far = gs.GradientStats(reference=reference)
    far.update(torch.full((4, 6), 1e300, dtype=torch.float64))
    with pytest.raises(ValueError, match="the norm of the mean minus the reference is 2.45e.300: its square overflows"):
        far.to_frame()
    huge = gs.GradientStats(reference=reference * 1e200)
    huge.update(reference * 1e200 + torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    with pytest.raises(ValueError, match="the reference's norm is 1.67e.200: its square overflows"):
        huge.to_frame()
    near = gs.GradientStats(reference=reference * 1e150)           # squares up to 1e301 still fit: no error
    near.update(reference * 1e150 + torch.ones(4, 6, dtype=torch.float64))
    assert near.to_frame().value.notna().all()


def test_relative_metrics_and_their_errors_do_not_depend_on_the_gradients_scale():
    # an estimated reference's error enters relative_squared_bias through (2 b G + 2 B g) / G^2, G = |g|^2: G^2
    # overflowed float64 once |g| passed 1e77, which dropped the reference's share of the error unsaid
    noise = 0.5 * torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = []
    for scale in (1.0, 1e80, 1e100):
        reference = torch.linspace(-1, 2, 6, dtype=torch.float64) * scale
        stats = gs.GradientStats(reference=reference, reference_stderr=0.1 * reference.abs() + 0.01 * scale)
        stats.update(reference + scale * noise)
        frame = stats.to_frame(ms=(1,))
        rows.append(frame[frame.metric.isin(["relative_bias", "relative_squared_bias"])][["value", "stderr"]].to_numpy())
    for other in rows[1:]:
        assert other == pytest.approx(rows[0], rel=1e-12)


@pytest.mark.parametrize("argv", [["moments", "--estimator", "reinforce", "--method", "mc", "--num-samples", "1"],
                                  ["moments", "--estimator", "st", "--target", "0.5", "--logit", "1"]])
def test_json_output_is_strict_with_a_reason_for_every_null(argv, capsys):
    import json

    assert gradstats.cli.main([*argv, "--json"]) == 0
    text = capsys.readouterr().out
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    def nulls(value, path="$"):
        if isinstance(value, dict):
            for k, v in value.items():
                if v is None:
                    assert k in value.get("null_reasons", {}), f"{path}.{k} is null without a reason"
                nulls(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                nulls(v, f"{path}[{i}]")

    nulls(data)
    assert "null" in text


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


# ---- randomness the user did not route ---------------------------------------------------------------

def test_dropout_inside_a_model_gives_the_same_numbers_for_the_same_seed():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)).double().train()
    x = torch.randn(6, 4, dtype=torch.float64)

    def loss(params, u):
        out = torch.func.functional_call(model, params, (x,))
        return (out.squeeze(-1) * u).pow(2).mean()

    params = dict(model.named_parameters())
    before = torch.random.get_rng_state()

    def run(seed):
        return torch.cat([c["0.weight"] for c in gs.per_draw_gradients(loss, params, 40, noise_shape=(6,), seed=seed,
                                                                     chunk_size=16)])

    first, again, other = run(3), run(3), run(4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first == 0).any(), "dropout zeroed some units"
    assert torch.equal(torch.random.get_rng_state(), before), "the caller's generator was left as it was"


def test_frozen_parameters_are_left_out_and_unused_ones_are_reported_not_scored():
    model = torch.nn.Linear(3, 1).double()
    model.bias.requires_grad_(False)
    unused = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss(params, u):
        return (torch.func.functional_call(model, {k: v for k, v in params.items() if k != "unused"}, (x,))
                * u).sum() ** 2 + 0 * u.sum()

    params = {**dict(model.named_parameters()), "unused": unused}
    chunks = list(gs.per_draw_gradients(loss, params, 30, noise_shape=(1,), seed=0))
    assert set(chunks[0]) == {"weight", "unused"}           # the frozen bias is left out
    stats = gs.GradientStats(reference={"weight": torch.ones(1, 3, dtype=torch.float64),
                                        "unused": torch.zeros(2, dtype=torch.float64)})
    for c in chunks:
        stats.update(c)
    assert stats.no_gradient == ["unused"]
    with pytest.warns(RuntimeWarning, match="unused got no gradient in any of the 30 draws"):
        frame = stats.to_frame()
    assert frame.attrs["no_gradient"] == ["unused"]
    unused_rows = frame[frame.group == "unused"].set_index("metric")
    assert math.isnan(unused_rows.loc["cosine_mean", "value"]) and math.isnan(unused_rows.loc["cosine_draw", "value"])
    weight_rows = frame[frame.group == "weight"].set_index("metric")
    assert not math.isnan(weight_rows.loc["cosine_mean", "value"])
    model.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter in params is frozen"):
        next(gs.per_draw_gradients(loss, dict(model.named_parameters()), 3, noise_shape=(1,)))


@pytest.mark.parametrize("bad", [torch.arange(3), torch.zeros(3, dtype=torch.complex64)], ids=["integer", "complex"])
def test_a_measured_tensor_that_is_not_real_floating_point_is_named(bad):
    """An integer or complex tensor among the measured ones is named with its dtype (torch said "only Tensors of
    floating point dtype can require gradients", or spoke of complex outputs, with no name); held as a frozen
    parameter it is left out and passed to the loss."""
    def loss(params, u):
        return (params["w"] * u).sum() + 0 * params["n"].real.sum()

    with pytest.raises(ValueError, match=rf"params must be real floating-point tensors .*'n' \({bad.dtype}\) is not"):
        next(gs.per_draw_gradients(loss, {"w": torch.zeros(3), "n": bad}, 4, noise_shape=(3,)))
    frozen = torch.nn.Parameter(bad, requires_grad=False)
    assert set(next(gs.per_draw_gradients(loss, {"w": torch.zeros(3), "n": frozen}, 4, noise_shape=(3,)))) == {"w"}
