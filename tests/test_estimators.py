"""The seed paper's estimators: closed forms on one unit, exact identities on networks."""

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gradstats as gs
from gradstats.testing import independent_problems, networks

TOYS = [(0.45, 0.0), (0.45, -1.0), (0.499, 2.0), (0.2, -3.0), (0.45, 50.0), (0.45, -50.0)]


def toy_quantities(t, a):
    a = torch.tensor(a, dtype=torch.float64)
    p, q = torch.sigmoid(a), torch.sigmoid(-a)  # p and 1 - p
    f = lambda b: (b - t) ** 2  # noqa: E731
    df = lambda b: 2 * (b - t)  # noqa: E731
    return p, q, f, df


@pytest.mark.parametrize("t, a", TOYS)
def test_reinforce_toy_mean_and_variance(t, a):
    # g = (h - p) f(h): E g = p q (f(1) - f(0)); E g^2 = p q^2 f(1)^2 + q p^2 f(0)^2.
    p, q, f, _ = toy_quantities(t, a)
    m = gs.moments(gs.problems.toy(t, a), "reinforce")
    mean = p * q * (f(1.0) - f(0.0))
    second = p * q**2 * f(1.0) ** 2 + q * p**2 * f(0.0) ** 2
    assert torch.allclose(m.mean, mean.reshape(1), rtol=1e-12, atol=1e-300)
    assert torch.allclose(m.var, (second - mean**2).reshape(1), rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("t, a", TOYS)
def test_st_toy_mean_and_variance(t, a):
    # E[ST] = p f'(1) + (1 - p) f'(0); Var = p q (f'(1) - f'(0))^2; the sigmoid variant times p q.
    p, q, _, df = toy_quantities(t, a)
    m = gs.moments(gs.problems.toy(t, a), "st")
    assert torch.allclose(m.mean, (p * df(1.0) + q * df(0.0)).reshape(1), rtol=1e-12, atol=1e-15)
    assert torch.allclose(m.var, (p * q * (df(1.0) - df(0.0)) ** 2).reshape(1), rtol=1e-10, atol=1e-300)
    ms = gs.moments(gs.problems.toy(t, a), "st_sigmoid")
    assert torch.allclose(ms.mean, (p * q * (p * df(1.0) + q * df(0.0))).reshape(1), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("t, a", TOYS[:4])
def test_sts_toy_mean(t, a):
    # h = b sqrt(p), b ~ Bernoulli(sqrt p); per draw f'(h) b sqrt(p) (1 - p) / 2,
    # so E = p (1 - p) f'(sqrt p) / 2 and E[g^2] = p^{3/2} (1 - p)^2 f'(sqrt p)^2 / 4.
    p, q, _, df = toy_quantities(t, a)
    m = gs.moments(gs.problems.toy(t, a), "sts")
    mean = p * q * df(p.sqrt()) / 2
    second = p**1.5 * q**2 * df(p.sqrt()) ** 2 / 4
    assert torch.allclose(m.mean, mean.reshape(1), rtol=1e-12)
    assert torch.allclose(m.var, (second - mean**2).reshape(1), rtol=1e-10)


@given(problem=networks(max_layers=3, max_total_units=9),
       baseline=st.one_of(st.floats(-10, 10), st.lists(st.floats(-10, 10), min_size=9, max_size=9)))
def test_reinforce_with_any_constant_baseline_is_unbiased(problem, baseline):
    # Theorem 1 and Corollary 1 as an equality in float64 (rounding only).
    if isinstance(baseline, list):
        baseline = baseline[: problem.num_units]
    exact = gs.exact_gradient(problem)
    m = gs.moments(problem, "reinforce", baseline=baseline)
    assert torch.allclose(m.mean, exact, rtol=0, atol=1e-10 * (1 + exact.abs().max()))


@given(problem=networks(max_layers=2, max_total_units=6), shift=st.floats(-3, 3).filter(lambda s: abs(s) > 1e-3))
def test_optimal_baseline_minimises_each_units_delta_variance(problem, shift):
    # Eq. 10: per unit i, Var[(h_i - p_i)(L - b)] is a quadratic in b minimised at b_i*.
    # For the bias coordinates c_i (whose gradient is the unit's delta) no constant does better.
    best = gs.estimators.optimal_baseline(problem)
    m_best = gs.moments(problem, "reinforce", baseline="optimal")
    m_shift = gs.moments(problem, "reinforce", baseline=(best + shift).tolist())
    bias_coords = torch.tensor([name.startswith("c") for name in problem.coordinate_names()])
    assert (m_best.var[bias_coords] <= m_shift.var[bias_coords] + 1e-12).all()


def test_st_on_a_network_is_backprop_with_identity_derivatives():
    # A two-layer net with a linear loss: the ST delta of layer 1 is W2^T v, independent of h.
    problem = gs.problems.sbn([2, 3, 2], loss=lambda h: h @ torch.tensor([1.0, -2.0], dtype=h.dtype), seed=4)
    m = gs.moments(problem, "st")
    v = torch.tensor([1.0, -2.0], dtype=torch.float64)
    w2 = problem.parameters["W2"]
    delta1 = w2.T @ v
    grad_w1 = torch.outer(delta1, problem.x)
    assert torch.allclose(m.mean[:6], grad_w1.reshape(-1), rtol=1e-13)
    assert torch.allclose(m.mean[6:9], delta1, rtol=1e-13)
    assert torch.allclose(m.var[:9], torch.zeros(9, dtype=torch.float64), atol=1e-25)


def test_reinforce_estimates_need_no_loss_gradient():
    problem = gs.problems.independent(gs.losses.Loss(lambda h: (h.sum(-1) > 1).double(), differentiable=False),
                                      logits=[0.1, -0.4, 1.0])
    m = gs.moments(problem, "reinforce")
    assert torch.allclose(m.mean, gs.exact_gradient(problem), atol=1e-15)
    with pytest.raises(ValueError, match="estimator 'st' needs dL/dh, but loss .* is not differentiable"):
        gs.moments(problem, "st")


def test_autograd_detects_a_loss_that_is_not_differentiable():
    problem = gs.problems.independent(lambda h: torch.as_tensor((h.sum(-1) > 1).numpy().astype(float)),
                                      logits=[0.1, -0.4])
    with pytest.raises(ValueError, match="is not differentiable: its output does not depend on h"):
        gs.moments(problem, "st")


@pytest.mark.parametrize("call, match", [
    (lambda p: gs.moments(p, "rainforce"), "unknown estimator 'rainforce'; registered: reinforce, st"),
    (lambda p: gs.moments(p, "st", baseline=1.0), r"unknown option\(s\) \['baseline'\]; its options: none"),
    (lambda p: gs.moments(p, "reinforce", baseline="median"), "baseline must be None, a number"),
    (lambda p: gs.moments(p, "reinforce", baseline=[1.0, 2.0]), "baseline must be a number or 1 numbers"),
    (lambda p: gs.moments(p, "reinforce", baseline=float("inf")), "baseline must be finite"),
    (lambda p: gs.moments(p, "reinforce", baseline="running"), "draws from a stream .* need method='mc'"),
    (lambda p: gs.moments(p, "reinforce", baseline="running", decay=1.0), "decay must be a number in \\(0, 1\\)"),
    (lambda p: gs.moments(p, "noisy_rectifier"), "continuous noise: its moments need method='mc'"),
    (lambda p: gs.moments(p, "noisy_rectifier", method="mc", num_samples=10, noise="cauchy"), "noise must be one of"),
    (lambda p: gs.moments(p, "st", method="bootstrap"), "method must be one of"),
    (lambda p: gs.moments("toy", "st"), "problem must be a gradstats Problem"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(gs.problems.toy())


def test_registry_flags():
    assert set(gs.estimators.names()) >= {"reinforce", "st", "st_sigmoid", "sts", "noisy_rectifier"}
    assert gs.estimators.get("reinforce").unbiased and not gs.estimators.get("st").unbiased
    assert gs.estimators.get("st").needs_loss_gradient and not gs.estimators.get("reinforce").needs_loss_gradient
    assert gs.estimators.get("sts").objective == "sts" and gs.estimators.get("noisy_rectifier").noise == "continuous"
    for name in gs.estimators.names():
        est = gs.estimators.get(name)
        assert est.reference and est.summary, name


def test_every_rule_is_documented_with_its_reference():
    from gradstats.estimators import control_variates, multi_sample, score_function, surrogate

    assert "arXiv:1308.3432" in surrogate.__doc__ and "arXiv:1308.3432" in score_function.__doc__
    families = (surrogate, score_function, control_variates, multi_sample)
    rules = [getattr(m, n) for m in families for n in m.__all__ if n.endswith(("_rule", "_derivative", "_variant"))]
    assert len(rules) == 16
    for rule in rules:
        assert re.search(r"(19|20)\d\d|arXiv", rule.__doc__), rule.__name__


def test_built_ins_are_registered_in_the_order_figures_use():
    assert gs.estimators.names()[:12] == ["reinforce", "st", "st_sigmoid", "sts", "noisy_rectifier", "gumbel",
                                          "st_gumbel", "arm", "disarm", "reinforce_loo", "reinmax", "local_expectation"]


@given(problem=independent_problems())
def test_saturated_logits_give_finite_moments(problem):
    for name in gs.estimators.names(kind=problem.kind):
        if gs.estimators.get(name).noise == "discrete":
            m = gs.moments(problem, name)
            assert torch.isfinite(m.mean).all() and torch.isfinite(m.var).all(), name


def test_an_estimator_refuses_a_problem_kind_it_does_not_support():
    import dataclasses

    toy_only = dataclasses.replace(gs.estimators.get("st"), name="st_toy_only", kinds=frozenset({"toy"}))
    assert gs.moments(gs.problems.toy(), toy_only).mean.shape == (1,)
    with pytest.raises(ValueError, match="estimator 'st_toy_only' does not support 'sbn' problems \\(it supports: toy\\)"):
        gs.moments(gs.problems.sbn([2, 2], seed=0), toy_only)


def test_method_auto_is_exact_where_it_can_be_and_monte_carlo_elsewhere():
    deep = gs.problems.sbn([3, 3, 3], seed=0)
    mc = {"num_samples": 2_000, "seed": 1, "device": "cpu", "progress": False}
    exact = gs.moments(deep, "st", method="auto", **mc)
    assert exact.method == "exact" and torch.equal(exact.mean, gs.moments(deep, "st").mean)
    for name, options in (("gumbel", {}), ("disarm", {}), ("reinforce", {"baseline": "running"})):
        auto = gs.moments(deep, name, method="auto", **mc, **options)   # continuous, exact on one layer only, stateful
        assert auto.method == "mc" and torch.equal(auto.mean, gs.moments(deep, name, method="mc", **mc, **options).mean)
    assert gs.moments(deep, "st", method="auto", max_states=2**5, **mc).method == "mc"   # over max_states
    with pytest.raises(ValueError, match="need num_samples"):
        gs.moments(deep, "gumbel", method="auto")


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations inside a test go to a copy of the registry, dropped after it."""
    from gradstats.estimators import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


def test_a_users_pathwise_estimator_in_one_line_works_everywhere(scratch_registry):
    half = gs.estimators.pathwise("half_st", lambda a, b: 0.5 * torch.ones_like(a))
    net = gs.problems.sbn([3, 3, 2], seed=1, weight_scale=2.0)
    exact = gs.moments(net, "half_st")                               # exact moments by enumeration
    assert exact.method == "exact"
    one = gs.problems.sbn([3, 3], seed=1, weight_scale=2.0)             # one layer: exactly half of ST
    assert torch.allclose(gs.moments(one, "half_st").mean, 0.5 * gs.moments(one, "st").mean, rtol=1e-15, atol=0)
    mc = gs.moments(net, half, method="mc", num_samples=50_000, seed=0, device="cpu", progress=False)
    assert ((mc.mean - exact.mean).abs() <= 5 * mc.mean_stderr + 1e-12).all()   # 5.7e-7 a coordinate
    frame = gs.evaluate(net, ["half_st", "st"], num_samples=2_000, ms=(1,), progress=False)
    assert set(frame.estimator) == {"half_st", "st"}
    # the drop-in: its backward pass is the estimator's draw
    problem = gs.problems.independent(gs.losses.polynomial(0.4, 3.0), [0.3, -1.2, 2.0])
    u = torch.rand(200, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = problem.parameters["logits"].expand(200, -1).clone().requires_grad_(True)
    problem.loss(gs.functional.pathwise(a, lambda a, b: 0.5 * torch.ones_like(a), u=u)).sum().backward()
    assert torch.allclose(a.grad, half.draw(problem, u[:, None]).dense(), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="already registered"):
        gs.estimators.pathwise("half_st", lambda a, b: 1.0)
    assert gs.estimators.pathwise("half_st", lambda a, b: 1.0, replace=True).name == "half_st"   # a rerun cell
    with pytest.raises(ValueError, match="local_derivative must be a function"):
        gs.estimators.pathwise("broken", 0.5)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        gs.estimators.pathwise("", lambda a, b: 1.0)
    # a number is a constant derivative: 1.0 is straight-through itself, exactly
    constant = gs.estimators.pathwise("constant_one", lambda a, b: 1.0)
    assert torch.equal(gs.moments(net, constant).mean, gs.moments(net, "st").mean)


def test_the_running_baseline_folds_draws_one_step_each():
    from gradstats.estimators import RunningBaseline

    torch.manual_seed(0)
    square, loss = torch.rand(3000, 2, dtype=torch.float64), torch.randn(3000, dtype=torch.float64)
    start = RunningBaseline(torch.tensor([0.2, 0.0], dtype=torch.float64), torch.tensor([0.5, 0.0], dtype=torch.float64), 0.99)
    seen, after = start.before_each(square, loss)
    num, den = start.numerator.clone(), start.denominator.clone()
    for i in range(len(loss)):
        expected = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
        assert torch.allclose(seen[i], expected, rtol=1e-9, atol=1e-12), i
        num, den = 0.99 * num + 0.01 * square[i] * loss[i], 0.99 * den + 0.01 * square[i]
    assert torch.allclose(after.numerator, num, rtol=1e-9) and torch.allclose(after.denominator, den, rtol=1e-9)


@pytest.mark.parametrize("noise", ["gaussian", "logistic"])
def test_a_uniform_of_zero_switches_a_noisy_rectifier_off_instead_of_giving_nan(noise):
    # u = 0 gives z = -inf (about one uniform in 2^24 in float32): h = max(0, a - inf) = 0, not -inf * 0 = NaN
    problem = gs.problems.sbn([3, 4, 2], seed=1)
    u = torch.rand(6, 1, problem.num_units, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u[2, 0, 1] = 0.0
    for dtype in (torch.float64, torch.float32):
        g = gs.estimators.get("noisy_rectifier").draw(problem, u.to(dtype), noise=noise)
        assert all(bool(torch.isfinite(d).all()) for d in g.deltas)
        assert float(g.deltas[0][2, 1]) == 0.0   # the unit is off: no gradient through it
