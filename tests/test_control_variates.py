"""REBAR, RELAX, ARMS, the double control variate and Gumbel-Rao: exact checks first, Monte Carlo where the noise is
continuous.

Statistical checks state their failure rate for the fixed seed they use: a coordinate within 5 standard errors
of its reference fails with probability 5.7e-7 under the normal approximation (these estimates are bounded, and
the runs hold 1e5 draws or more), so a test of ``D`` coordinates fails with probability below ``D * 5.7e-7``.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

import gradstats as gs
import gradstats.functional as gf
from gradstats.estimators.control_variates import ControlNetwork, train_control
from gradstats.estimators.multi_sample import (
    arms_debias,
    arms_pattern_probabilities,
    coupled_samples,
    dirichlet_copula,
)
from gradstats.estimators.surrogate import conditional_moments, gumbel_rao_exact_moments
from gradstats.testing import networks

MC = dict(method="mc", device="cpu", progress=False)
NETWORKS = [gs.problems.toy(0.45, -1.0), gs.problems.sbn([3, 3], seed=1), gs.problems.sbn([2, 3, 2], seed=2)]


def within(m, reference, k=5.0):
    return bool(((m.mean - reference).abs() <= k * m.mean_stderr + 1e-12).all())


# ---- REBAR and RELAX: unbiased for any control -------------------------------------------------------

@pytest.mark.parametrize("problem", NETWORKS, ids=lambda p: p.description)
@pytest.mark.parametrize("name, options", [("rebar", {}), ("rebar", {"temperature": 2.0, "scale": 0.3}),
                                           ("relax", {})])
def test_rebar_and_relax_are_unbiased(problem, name, options):
    # at most 18 coordinates within 5 standard errors: failure rate < 1.1e-5 per case
    m = gs.moments(problem, name, num_samples=100_000, seed=11, **options, **MC)
    assert within(m, gs.exact_gradient(problem))
    assert m.loss_evals_per_draw == 1 + 2 * problem.num_layers


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), hidden=st.integers(1, 8))
def test_relax_is_unbiased_whatever_its_control_network_starts_from(seed, hidden):
    # the audit found a peer's RELAX bias change with its control's initialisation; ours must not
    # (12 coordinates within 5 standard errors: < 7e-6 an example)
    problem = gs.problems.sbn([3, 3], seed=1)
    m = gs.moments(problem, "relax", num_samples=50_000, seed=3, control_seed=seed, hidden=hidden, **MC)
    assert within(m, gs.exact_gradient(problem))


def test_relax_training_lowers_the_variance_and_keeps_the_mean():
    # training minimises the mean squared norm; on this network 500 Adam steps cut the trace of the covariance
    # to 0.71 of the untrained control's (and 0.73 of REBAR's); both runs use the same measurement stream
    problem = gs.problems.sbn([3, 3], seed=1)
    exact = gs.exact_gradient(problem)
    before = gs.moments(problem, "relax", num_samples=100_000, seed=5, **MC)
    after = gs.moments(problem, "relax", num_samples=100_000, seed=5, train_steps=500, learning_rate=0.03, **MC)
    assert within(after, exact)
    assert float(after.var.sum()) < 0.85 * float(before.var.sum())


def test_train_control_is_deterministic_and_reports_its_objective():
    problem = gs.problems.sbn([3, 3], seed=1)
    runs = []
    for _ in range(2):
        nets = [ControlNetwork(3, 4, seed=0)]
        history = train_control(problem, nets, temperature=0.5, scale=1.0, steps=5, draws=64, learning_rate=0.01,
                                seed=9)
        runs.append((history, nets[0].hidden.weight.detach().clone()))
    assert len(runs[0][0]) == 5 and all(math.isfinite(v) for v in runs[0][0])
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])


def test_relax_accepts_a_users_control_module():
    problem = gs.problems.sbn([3, 3], seed=1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5, dtype=torch.float64), torch.nn.Softplus(),
                              torch.nn.Linear(5, 1, dtype=torch.float64), torch.nn.Flatten(0))
    m = gs.moments(problem, "relax", num_samples=50_000, seed=2, networks=[net], **MC)
    assert within(m, gs.exact_gradient(problem))


# ---- ARMS ------------------------------------------------------------------------------------------------

def test_the_dirichlet_copula_has_uniform_marginals_and_its_pairwise_law():
    # 2e5 draws: each marginal's KS distance below 0.005 (p about 1e-4 under H0 at this n, Kolmogorov's law), and
    # P(c_1 < m, c_2 < m) within 5 binomial standard errors of (2 m^(1/(k-1)) - 1)_+^(k-1)
    g = torch.Generator().manual_seed(0)
    n, k = 200_000, 4
    c = dirichlet_copula(torch.rand(n, generator=g, dtype=torch.float64),
                         torch.rand(k - 1, n, generator=g, dtype=torch.float64))
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    for j in range(k):
        ecdf = (c[j][:, None] <= grid).double().mean(0)
        assert float((ecdf - grid).abs().max()) < 0.005, j
    for m in (0.2, 0.4, 0.5):
        joint = float(((c[0] < m) & (c[2] < m)).double().mean())
        expected = max(2 * m ** (1 / (k - 1)) - 1, 0) ** (k - 1)
        assert abs(joint - expected) <= 5 * math.sqrt(max(expected, 1e-6) / n), m


@pytest.mark.parametrize("k", [2, 3, 5])
def test_arms_pattern_probabilities_sum_to_one_and_match_sampling(k):
    a = torch.tensor([-2.0, -0.3, 0.0, 0.7, 3.0], dtype=torch.float64)
    table = arms_pattern_probabilities(a, k)                 # per count j of minority samples, one pattern's law
    total = sum(math.comb(k, j) * table[j] for j in range(k + 1))
    assert torch.allclose(total, torch.ones_like(a), atol=1e-14)
    # sampled counts (2e5 draws) within 5 binomial standard errors of C(k, j) table[j]
    g = torch.Generator().manual_seed(1)
    n = 200_000
    u = torch.rand(n, k, a.numel(), generator=g, dtype=torch.float64)
    b = coupled_samples(a.expand(n, -1), u.movedim(1, 0)).movedim(0, 1)
    counts = (b == (a < 0).double()).sum(1)
    for j in range(k + 1):
        freq = (counts == j).double().mean(0)
        expected = math.comb(k, j) * table[j]
        assert ((freq - expected).abs() <= 5 * (expected * (1 - expected) / n).sqrt() + 1e-9).all(), j


def test_arms_with_two_samples_is_disarm_exactly():
    for problem in (gs.problems.toy(0.45, 1.3), gs.problems.sbn([3, 3], seed=1), gs.problems.sbn([2, 4], seed=3)):
        arms, disarm = gs.moments(problem, "arms", k=2), gs.moments(problem, "disarm")
        assert torch.allclose(arms.mean, disarm.mean, rtol=1e-12, atol=1e-15)
        assert torch.allclose(arms.var, disarm.var, rtol=1e-10, atol=1e-15)
    # draw by draw, on the same uniforms
    problem = gs.problems.sbn([3, 3], seed=1)
    u = torch.rand(64, 2, problem.num_units, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    arms = gs.estimators.get("arms").draw(problem, u, k=2).dense()
    disarm = gs.estimators.get("disarm").draw(problem, u[:, :1]).dense()
    assert torch.allclose(arms, disarm, rtol=1e-12, atol=1e-14)


@settings(max_examples=8, deadline=None)
@given(problem=networks(max_layers=1, max_total_units=3), k=st.integers(2, 4))
def test_arms_is_unbiased_exactly_on_one_layer(problem, k):
    exact = gs.exact_gradient(problem)
    m = gs.moments(problem, "arms", k=k, max_states=2**12)
    assert torch.allclose(m.mean, exact, rtol=0, atol=1e-10 * (1 + exact.abs().max()))


def test_arms_debias_limits():
    a = torch.linspace(-6, 6, 25, dtype=torch.float64)
    assert torch.allclose(arms_debias(a, 2), torch.sigmoid(a.abs()), rtol=1e-14)     # DisARM's sigma(|a|)
    assert (arms_debias(a, 6) > 0).all() and torch.isfinite(arms_debias(a, 6)).all()


def test_arms_exact_moments_match_monte_carlo_and_beat_loo_at_equal_samples():
    problem = gs.problems.sbn([3, 3], seed=1)
    exact = gs.moments(problem, "arms", k=4)
    mc = gs.moments(problem, "arms", k=4, num_samples=100_000, seed=4, **MC)
    assert within(mc, exact.mean)
    assert float(exact.var.sum()) < float(gs.moments(problem, "reinforce_loo", k=4).var.sum())


def test_arms_on_a_three_layer_network_is_unbiased():
    # 26 coordinates within 5 standard errors: failure rate < 1.5e-5
    problem = gs.problems.sbn([3, 3, 2, 2], seed=4, weight_scale=2.0)
    m = gs.moments(problem, "arms", k=3, num_samples=200_000, seed=5, **MC)
    assert within(m, gs.exact_gradient(problem))
    assert m.loss_evals_per_draw == 1 + 2 * 3


# ---- the double control variate -------------------------------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(problem=networks(max_layers=2, max_total_units=4), alpha=st.floats(-2, 2))
def test_double_cv_is_unbiased_exactly_for_any_alpha(problem, alpha):
    exact = gs.exact_gradient(problem)
    m = gs.moments(problem, "double_cv", k=2, alpha=alpha, max_states=2**16)
    assert torch.allclose(m.mean, exact, rtol=0, atol=1e-10 * (1 + exact.abs().max()))


def test_double_cv_at_alpha_zero_is_leave_one_out_draw_by_draw():
    problem = gs.problems.sbn([3, 3, 2], seed=2)
    u = torch.rand(128, 3, problem.num_units, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cv = gs.estimators.get("double_cv").draw(problem, u, k=3, alpha=0.0).dense()
    loo = gs.estimators.get("reinforce_loo").draw(problem, u, k=3).dense()
    assert torch.allclose(cv, loo, rtol=1e-13, atol=1e-15)


def test_double_cv_has_zero_variance_for_a_loss_linear_in_the_samples():
    # f(h) = w.h + c on one layer: every loss minus its Taylor term is the same constant, so the estimate is
    # w p(1 - p) exactly; leave-one-out's variance is far from 0
    w = [0.7, -1.3, 2.0]
    loss = gs.losses.multilinear({(0,): w[0], (1,): w[1], (2,): w[2], (): 0.4}, 3)
    problem = gs.problems.independent(loss, [0.3, -1.1, 2.2])
    m = gs.moments(problem, "double_cv", k=3)
    assert float(m.var.max()) < 1e-28
    assert float(gs.moments(problem, "reinforce_loo", k=3).var.min()) > 1e-3


def test_double_cv_needs_the_multilinear_slope_a_quadratic_toy_is_a_counterexample():
    # f(b) = (b - t)^2 is linear on {0, 1}, but its derivative 2(b - t) is not the slope f(1) - f(0) = 1 - 2t,
    # so the Taylor control variate adds variance: exact variances, double_cv above leave-one-out
    problem = gs.problems.toy(0.45, 0.0)
    assert float(gs.moments(problem, "double_cv", k=4).var) > 10 * float(gs.moments(problem, "reinforce_loo", k=4).var)


# ---- Gumbel-Rao ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, tau", [(0.0, 1.0), (-2.5, 0.5), (4.0, 0.2), (-0.7, 3.0)])
def test_conditional_moments_against_integration_over_the_conditional_uniform(a, tau):
    # the same moments from the other side: integrate over v in [0, 1] (u~ = v p or p + v(1 - p)) with scipy
    logit = torch.tensor([a], dtype=torch.float64)
    mean, var = conditional_moments(logit, tau)
    p = 1 / (1 + math.exp(-a))
    for bit in (0, 1):
        def s(v, power, bit=bit):
            u = v * p if bit else p + v * (1 - p)
            z = (a + math.log1p(-u) - math.log(u)) / tau if 0 < u < 1 else math.copysign(math.inf, 0.5 - u)
            return (math.exp(-abs(z)) / (1 + math.exp(-abs(z))) ** 2 / tau) ** power
        m1 = integrate.quad(lambda v: s(v, 1), 0, 1, epsabs=0, epsrel=1e-11, limit=500)[0]
        m2 = integrate.quad(lambda v: s(v, 2), 0, 1, epsabs=0, epsrel=1e-11, limit=500)[0]
        assert float(mean[bit, 0]) == pytest.approx(m1, rel=1e-8)
        assert float(var[bit, 0]) == pytest.approx(m2 - m1 * m1, rel=1e-6, abs=1e-14)


def test_gumbel_rao_has_st_gumbels_mean_and_a_variance_falling_with_k():
    problem = gs.problems.sbn([3, 3], seed=1)
    st_mean, st_var = gumbel_rao_exact_moments(problem, temperature=0.5, k=1)
    previous = st_var
    for k in (2, 10, 100):
        mean, var = gumbel_rao_exact_moments(problem, temperature=0.5, k=k)
        assert torch.equal(mean, st_mean)
        assert (var <= previous).all() and (var < previous).any()
        previous = var


@pytest.mark.parametrize("name, options", [("st_gumbel", {"temperature": 0.5}), ("gumbel_rao", {"temperature": 0.5, "k": 10})])
def test_gumbel_rao_exact_moments_match_monte_carlo(name, options):
    # mean within 5 standard errors a coordinate (12: < 7e-6); the trace of the variance within 2 % (its relative
    # standard error at 2e5 bounded draws is below 0.4 %)
    problem = gs.problems.sbn([3, 3], seed=1)
    k = options.get("k", 1)
    mean, var = gumbel_rao_exact_moments(problem, temperature=0.5, k=k)
    m = gs.moments(problem, name, num_samples=200_000, seed=6, **options, **MC)
    assert within(m, mean)
    assert float(m.var.sum()) == pytest.approx(float(var.sum()), rel=0.02)


# ---- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, options, match", [
    ("rebar", {"temperature": 0.0}, "temperature"),
    ("rebar", {"scale": float("nan")}, "scale"),
    ("relax", {"hidden": 0}, "hidden"),
    ("relax", {"control_seed": -1}, "control_seed"),
    ("relax", {"train_steps": 1.5}, "train_steps"),
    ("relax", {"learning_rate": 0}, "learning_rate"),
    ("relax", {"networks": [1, 2]}, "networks"),
    ("arms", {"k": 1}, "k"),
    ("double_cv", {"alpha": float("inf")}, "alpha"),
    ("gumbel_rao", {"k": 0}, "k"),
])
def test_bad_options_are_named(name, options, match):
    with pytest.raises(ValueError, match=match):
        gs.moments(gs.problems.sbn([3, 3], seed=1), name, num_samples=100, **options, **MC)


def test_relaxations_refuse_a_loss_without_a_gradient():
    problem = gs.problems.independent(lambda h: (h.sum(-1) > 1).double(), [0.1, 0.2])
    for name in ("rebar", "relax", "double_cv", "gumbel_rao"):
        with pytest.raises(ValueError, match="differentiable|dL/dh"):
            gs.moments(problem, name, num_samples=100, **MC)


# ---- drop-ins ----------------------------------------------------------------------------------------------

def test_drop_in_gumbel_rao_backward_equals_the_estimator():
    problem = gs.problems.independent(gs.losses.polynomial(0.4, 3.0), [0.3, -1.2, 2.0])
    u = torch.rand(300, 4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = problem.parameters["logits"].expand(300, -1).clone().requires_grad_(True)
    problem.loss(gf.gumbel_rao(a, k=3, u=u.movedim(1, 0), temperature=0.7)).sum().backward()
    expected = gs.estimators.get("gumbel_rao").draw(problem, u, temperature=0.7, k=3).dense()
    assert torch.allclose(a.grad, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name, options", [("arms", {"k": 3}), ("double_cv", {"k": 3, "alpha": 0.6}),
                                           ("rebar", {"temperature": 0.7, "scale": 0.8})])
def test_drop_in_surrogates_of_the_new_estimators_give_the_estimator(name, options):
    problem = gs.problems.independent(gs.losses.polynomial(0.4, 3.0), [0.3, -1.2, 2.0])
    est = gs.estimators.get(name)
    m = est.noise_per_unit({**est.defaults, **options})
    u = torch.rand(300, m, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = problem.parameters["logits"].expand(300, -1).clone().requires_grad_(True)
    _, surrogate = getattr(gf, name)(a, problem.loss, u=u.movedim(1, 0), **options)
    surrogate.backward()
    expected = est.draw(problem, u, **gs.estimators.resolve_options(est, problem, options)).dense()
    assert torch.allclose(a.grad, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name, options", [("double_cv", {"k": 3, "alpha": 0.6}),
                                           ("rebar", {"temperature": 0.7, "scale": 0.8}), ("relax", {})])
def test_drop_ins_that_differentiate_the_loss_batch_under_vmap(name, options):
    """One torch.func.vmap of grad over the rows gives each row's draw (they called torch.autograd.grad on a
    tensor made to require grad, which functorch refuses); a loss that is not differentiable is named."""
    problem = gs.problems.independent(gs.losses.polynomial(0.4, 3.0), [0.3, -1.2, 2.0])
    est = gs.estimators.get(name)
    resolved = gs.estimators.resolve_options(est, problem, {"hidden": 5, "control_seed": 2} if name == "relax" else options)
    m = est.noise_per_unit(resolved)
    u = torch.rand(40, m, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    extra = {"control": resolved["networks"][0]} if name == "relax" else options
    function = gf.rebar if name == "relax" else getattr(gf, name)

    def surrogate(a_row, u_row, loss=problem.loss):
        return function(a_row[None], loss, u=u_row[:, None], **extra)[1]

    a = problem.parameters["logits"].expand(40, -1)
    per_row = torch.func.vmap(torch.func.grad(surrogate))(a, u)
    assert torch.allclose(per_row, est.draw(problem, u, **resolved).dense(), rtol=1e-9, atol=1e-13)
    if name != "relax":     # RELAX's control network keeps its relaxed control differentiable
        with pytest.raises(ValueError, match="loss_fn must be differentiable in its input"):
            surrogate(a[0].clone().requires_grad_(True), u[0], lambda h: (h > 0.5).to(h.dtype).sum(-1))


def test_drop_in_rebar_with_a_control_is_relax():
    problem = gs.problems.independent(gs.losses.polynomial(0.4, 3.0), [0.3, -1.2, 2.0])
    est = gs.estimators.get("relax")
    options = gs.estimators.resolve_options(est, problem, {"hidden": 5, "control_seed": 2})
    net = options["networks"][0]
    u = torch.rand(300, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = problem.parameters["logits"].expand(300, -1).clone().requires_grad_(True)
    _, surrogate = gf.rebar(a, problem.loss, control=net, u=u.movedim(1, 0))
    surrogate.backward()
    assert torch.allclose(a.grad, est.draw(problem, u, **options).dense(), rtol=1e-9, atol=1e-13)


def test_the_tidy_table_takes_the_new_estimators_exactly_where_their_noise_is_discrete():
    problem = gs.problems.sbn([3, 3], seed=1)
    frame = gs.evaluate(problem, ["rebar", "relax", "arms", "double_cv", "gumbel_rao"], num_samples=20_000, ms=(1, 4),
                        seed=2, progress=False)
    method = frame.groupby("estimator").method.first()
    assert method.to_dict() == {"arms": "exact", "double_cv": "exact", "gumbel_rao": "mc", "rebar": "mc", "relax": "mc"}
    top = frame[(frame.metric == "relative_squared_bias") & (frame.coordinate == "")].set_index("estimator")
    # the unbiased ones: exactly 0 to rounding, or within 5 standard errors of 0 (failure rate 5.7e-7 each)
    assert top.loc[["arms", "double_cv"], "value"].abs().max() < 1e-20
    assert (top.loc[["rebar", "relax"], "value"].abs() <= 5 * top.loc[["rebar", "relax"], "stderr"]).all()
    assert top.loc["gumbel_rao", "value"] > 10 * top.loc["gumbel_rao", "stderr"]      # biased, as ST-Gumbel is
    assert set(frame.loss_evals_per_draw.unique()) == {1, 3, 4}
