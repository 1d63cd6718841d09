r"""Estimators of later work: closed forms on one Bernoulli, properties on networks.

Closed forms for one unit with :math:`f(b) = (b - t)^2`, :math:`p = \sigma(a)`,
:math:`q = 1 - p`, :math:`\Delta = f(1) - f(0) = 1 - 2t`,
:math:`\ell_o = \min(p, q) = \sigma(-|a|)`, :math:`h_i = \max(p, q)`:

* ARM, :math:`g = (f(\tilde b) - f(b))(u - 1/2)`: it is nonzero only when
  :math:`b \ne \tilde b`, i.e. :math:`u < \ell_o` or :math:`u > 1 - \ell_o`, where
  :math:`(f(\tilde b) - f(b))(u - 1/2) = |\Delta|\,|u - 1/2|` in sign(Delta):
  :math:`E g = pq\Delta`, :math:`E g^2 = \frac{2}{3}\Delta^2 (\frac18 - (\frac12 - \ell_o)^3)`.
* DisARM: :math:`g = \Delta\,\sigma(|a|)/2` on :math:`b \ne \tilde b` (probability
  :math:`2\ell_o`), else 0: :math:`E g = pq\Delta`,
  :math:`\mathrm{Var}\,g = \ell_o h_i^2 \Delta^2 (1/2 - \ell_o)`.
* LOO with k = 2: :math:`g = (f_1 - f_2)(b_1 - b_2)/2 = \Delta/2` when
  :math:`b_1 \ne b_2` (probability :math:`2pq`): :math:`\mathrm{Var}\,g = pq\Delta^2/2 - p^2q^2\Delta^2`.
* ReinMax, :math:`g = f'(b)\,c(b)`, :math:`c(b) = 2r(1 - r) - pq/2`,
  :math:`r = (b + \sigma(a/\tau))/2`: :math:`E g = p f'(1) c(1) + q f'(0) c(0)`,
  :math:`E g^2 = p f'(1)^2 c(1)^2 + q f'(0)^2 c(0)^2`; at :math:`\tau = 1`,
  :math:`c(1) = q/2`, :math:`c(0) = p/2`, so :math:`E g = pq(f'(1) + f'(0))/2 = pq\Delta`
  for any quadratic ``f``.
* Gumbel and ST-Gumbel: one-dimensional integrals over ``u``, computed by the
  midpoint rule on 2e6 points (smooth integrands: error far below the tolerances).
"""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gradstats as gs
import gradstats.functional as gf
from gradstats.testing import networks

TOYS = [(0.45, 0.0), (0.45, -1.0), (0.3, 1.7), (0.1, -3.0)]
MC = dict(method="mc", device="cpu", progress=False)


def toy(t, a):
    a = torch.tensor(a, dtype=torch.float64)
    p, q = torch.sigmoid(a), torch.sigmoid(-a)
    return p, q, torch.minimum(p, q), torch.maximum(p, q), 1 - 2 * t


def midpoint(n=2_000_000):
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


@pytest.mark.parametrize("t, a", TOYS)
def test_arm_toy(t, a):
    # MC: mean within 5 standard errors (5.7e-7 failure rate), variance within 3 % (> 10 standard errors
    # of a sample variance at n = 1e6 for these bounded estimates)
    p, q, lo, _, d = toy(t, a)
    n = 1_000_000
    m = gs.moments(gs.problems.toy(t, a), "arm", num_samples=n, seed=0, **MC)
    second = 2 / 3 * d**2 * (1 / 8 - (0.5 - lo) ** 3)
    var = second - (p * q * d) ** 2
    assert abs(float(m.mean) - float(p * q * d)) <= 5 * math.sqrt(float(var) / n)
    assert float(m.var) == pytest.approx(float(var), rel=0.03)


@pytest.mark.parametrize("t, a", TOYS)
def test_disarm_toy_exact(t, a):
    p, q, lo, hi, d = toy(t, a)
    m = gs.moments(gs.problems.toy(t, a), "disarm")
    assert float(m.mean) == pytest.approx(float(p * q * d), rel=1e-12)
    assert float(m.var) == pytest.approx(float(lo * hi**2 * d**2 * (0.5 - lo)), rel=1e-10)


@pytest.mark.parametrize("t, a", TOYS)
def test_disarm_variance_is_below_arm_variance_on_one_unit(t, a):
    # Rao-Blackwellisation (Dong et al. 2020): DisARM = E[ARM | b, b~]; an exact inequality here.
    p, q, lo, hi, d = toy(t, a)
    arm_var = 2 / 3 * d**2 * (1 / 8 - (0.5 - lo) ** 3) - (p * q * d) ** 2
    disarm_var = lo * hi**2 * d**2 * (0.5 - lo)
    assert disarm_var <= arm_var


@pytest.mark.parametrize("t, a", TOYS)
def test_loo_toy_exact(t, a):
    p, q, _, _, d = toy(t, a)
    m = gs.moments(gs.problems.toy(t, a), "reinforce_loo", k=2)
    assert float(m.mean) == pytest.approx(float(p * q * d), rel=1e-12)
    assert float(m.var) == pytest.approx(float(p * q * d**2 / 2 - (p * q * d) ** 2), rel=1e-10)
    assert m.loss_evals_per_draw == 2 and m.num_outcomes == 4


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("t, a", TOYS)
def test_reinmax_toy_exact(t, a, tau):
    p, q, _, _, _ = toy(t, a)
    s = torch.sigmoid(torch.tensor(a / tau, dtype=torch.float64))
    c = {b: 2 * r * (1 - r) - p * q / 2 for b, r in ((1, (1 + s) / 2), (0, s / 2))}
    df = {b: 2 * (b - t) for b in (0, 1)}
    mean = p * df[1] * c[1] + q * df[0] * c[0]
    second = p * df[1] ** 2 * c[1] ** 2 + q * df[0] ** 2 * c[0] ** 2
    m = gs.moments(gs.problems.toy(t, a), "reinmax", temperature=tau)
    assert float(m.mean) == pytest.approx(float(mean), rel=1e-12)
    assert float(m.var) == pytest.approx(float(second - mean**2), rel=1e-10)


@pytest.mark.parametrize("name", ["gumbel", "st_gumbel"])
@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_relaxations_toy_against_quadrature(name, tau):
    t, a = 0.45, -1.0
    u = midpoint()
    soft = torch.sigmoid((a + torch.log1p(-u) - torch.log(u)) / tau)
    local = soft * (1 - soft) / tau
    value = soft if name == "gumbel" else (u < torch.sigmoid(torch.tensor(a))).double()
    per_u = 2 * (value - t) * local
    mean, var = float(per_u.mean()), float(per_u.var())
    n = 400_000
    m = gs.moments(gs.problems.toy(t, a), name, num_samples=n, seed=1, temperature=tau, **MC)
    assert abs(float(m.mean) - mean) <= 5 * math.sqrt(var / n)  # failure rate 5.7e-7


def test_gumbel_is_unbiased_for_its_own_relaxed_objective():
    # d/da of J(a) = E_u f(sigmoid((a + l)/tau)) by central differences of the quadrature
    t, a, tau, step = 0.45, 0.3, 0.7, 1e-4
    u = midpoint()

    def relaxed_objective(a):
        return float(((torch.sigmoid((a + torch.log1p(-u) - torch.log(u)) / tau) - t) ** 2).mean())

    derivative = (relaxed_objective(a + step) - relaxed_objective(a - step)) / (2 * step)
    n = 400_000
    m = gs.moments(gs.problems.toy(t, a), "gumbel", num_samples=n, seed=2, temperature=tau, **MC)
    assert abs(float(m.mean) - derivative) <= 5 * float(m.mean_stderr) + 1e-8


def test_gumbel_bias_shrinks_and_variance_grows_as_temperature_falls():
    # Grid tau = 4, 2, 1, 0.5, 0.25, 0.1 on the toy t = 0.45, a = 0, by quadrature (exact to ~1e-9 here):
    # |bias| against the binary gradient strictly decreases and the variance strictly increases.
    t, a = 0.45, 0.0
    u = midpoint(4_000_000)
    g = float(gs.exact_gradient(gs.problems.toy(t, a)))
    biases, variances = [], []
    for tau in (4, 2, 1, 0.5, 0.25, 0.1):
        h = torch.sigmoid((a + torch.log1p(-u) - torch.log(u)) / tau)
        d = 2 * (h - t) * h * (1 - h) / tau
        biases.append(abs(float(d.mean()) - g))
        variances.append(float(d.var()))
    assert all(b1 > b2 for b1, b2 in zip(biases, biases[1:])), biases
    assert all(v1 < v2 for v1, v2 in zip(variances, variances[1:])), variances


def quadratic_loss(n, seed):
    g = torch.Generator().manual_seed(seed)
    a_mat = torch.randn(n, n, generator=g, dtype=torch.float64)
    c = torch.randn(n, generator=g, dtype=torch.float64)
    return gs.losses.Loss(lambda h: ((h @ a_mat) * h).sum(-1) + h @ c, name="quadratic")


@given(logits=st.lists(st.floats(-6, 6), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_reinmax_at_temperature_one_is_exact_for_quadratic_losses(logits, seed):
    problem = gs.problems.independent(quadratic_loss(len(logits), seed), logits)
    exact = gs.exact_gradient(problem)
    m = gs.moments(problem, "reinmax", temperature=1.0)
    assert torch.allclose(m.mean, exact, rtol=1e-10, atol=1e-12)


def test_reinmax_is_biased_for_a_cubic():
    # f(h) = h^3: E[ReinMax] = 3 p q / 2 at tau = 1, the gradient is p q.
    problem = gs.problems.independent(lambda h: h[..., 0] ** 3, [0.4])
    p = torch.sigmoid(torch.tensor(0.4, dtype=torch.float64))
    m = gs.moments(problem, "reinmax")
    assert float(m.mean) == pytest.approx(float(1.5 * p * (1 - p)), rel=1e-12)


@given(problem=networks(max_layers=3, max_total_units=7), k=st.integers(2, 3))
@settings(max_examples=10)
def test_loo_is_unbiased_on_networks_exactly(problem, k):
    if 2 ** (problem.num_units * k) > 2**16:
        k = 2
    exact = gs.exact_gradient(problem)
    m = gs.moments(problem, "reinforce_loo", k=k, max_states=2**21)
    assert torch.allclose(m.mean, exact, rtol=0, atol=1e-10 * (1 + exact.abs().max()))


@pytest.mark.parametrize("name", ["arm", "disarm", "reinforce_loo", "local_expectation"])
def test_unbiased_estimators_on_a_three_layer_network(name):
    # per coordinate within 5 standard errors of the exact gradient (5.7e-7 a coordinate, < 3e-5 all told)
    problem = gs.problems.sbn([3, 3, 2, 2], seed=4, weight_scale=2.0)
    exact = gs.exact_gradient(problem)
    m = gs.moments(problem, name, num_samples=400_000, seed=5, **MC)
    assert ((m.mean - exact).abs() <= 5 * m.mean_stderr + 1e-12).all()
    assert m.loss_evals_per_draw == {"reinforce_loo": 2, "local_expectation": 1 + 7}.get(name, 4)


@settings(max_examples=6)
@given(problem=networks(max_layers=1, max_total_units=4))
@example(problem=gs.problems.sbn([3, 1], loss=gs.losses.from_spec(
    {"kind": "softplus_ridge", "weights": [[1.0]], "directions": [-1.0], "offsets": [0.0], "scales": [1.0]}),
    seed=0, weight_scale=3.0, num_outputs=4))
def test_disarm_variance_is_at_most_arms_on_one_layer(problem):
    # DisARM is ARM averaged over the uniforms given the two antithetic samples (Rao-Blackwell), so its exact
    # variance is at most ARM's, coordinate by coordinate. ARM's variance comes from 2e5 draws, with 5 standard
    # errors of a sample variance allowed: var sqrt((kurtosis - 1) / n) from the draws' own kurtosis. ARM's draws
    # are 0 unless the two samples differ, so they are heavy-tailed where a unit is nearly sure: on
    # sbn([3, 1], softplus_ridge, seed=0, weight_scale=3) their kurtosis is about 1,500 and the variance's relative
    # error at 2e5 draws 9%, where the sqrt(2 / n) = 0.3% of normal draws (times 10) failed on it; there the
    # exact DisARM variance stood at most 1.9 of these errors above ARM's over 40 seeds.
    n = 200_000
    d = gs.moments(problem, "disarm")
    a = gs.moments(problem, "arm", num_samples=n, seed=0, **MC)
    stderr = torch.where(a.var > 0, a.var * ((a.kurtosis - 1) / n).clamp_min(0).sqrt(), 0.0)
    assert (d.var <= a.var + 5 * stderr + 1e-14).all()


def test_a_one_layer_estimator_refuses_deep_networks_and_disarm_exact_needs_one_layer():
    import dataclasses

    deep = gs.problems.sbn([2, 2, 2], seed=0)
    one_layer = dataclasses.replace(gs.estimators.get("st"), name="st_one_layer", max_layers=1)
    with pytest.raises(ValueError, match="'st_one_layer' is defined for networks of at most 1 stochastic layer"):
        gs.moments(deep, one_layer)
    with pytest.raises(ValueError, match="exact moments of 'disarm' are implemented for networks of at most 1"):
        gs.moments(deep, "disarm")
    assert gs.moments(deep, "disarm", num_samples=1000, **MC).num_samples == 1000


@pytest.mark.parametrize("call, match", [
    (lambda p: gs.moments(p, "gumbel", num_samples=10, temperature=0, **MC), "temperature must be a finite number >= 1.18e-38"),
    (lambda p: gs.moments(p, "reinforce_loo", k=1), "k must be an integer >= 2"),
    (lambda p: gs.moments(p, "reinmax", temperature=-1.0), "temperature must be"),
])
def test_bad_options(call, match):
    with pytest.raises(ValueError, match=match):
        call(gs.problems.toy())


def test_common_random_numbers_one_binary_sample_for_all():
    # Every single-sample estimator of the binary neuron evaluates the loss first at b = 1[u < p].
    seen = {}
    problem_logits = [0.3, -1.0, 2.0]
    u = torch.rand(64, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = (u[:, 0] < torch.sigmoid(torch.tensor(problem_logits, dtype=torch.float64))).double()
    for name in ["reinforce", "st", "st_sigmoid", "st_gumbel", "arm", "disarm", "reinforce_loo", "reinmax"]:
        calls = []

        def loss(h, calls=calls):
            calls.append(h.detach().clone())
            return (h - 0.3).square().sum(-1)

        problem = gs.problems.independent(loss, problem_logits)
        est = gs.estimators.get(name)
        options = gs.estimators.resolve_options(est, problem, {})
        est.draw(problem, u[:, : est.noise_per_unit(options)], **options)
        first = calls[-1] if name not in ("arm", "disarm") else calls[-2]
        seen[name] = first[::2] if name == "reinforce_loo" else first
        assert torch.equal(seen[name], b), name


@pytest.mark.parametrize("name, make", [
    ("gumbel", lambda a, u: gf.gumbel_sigmoid(a, u=u, temperature=0.7)),
    ("st_gumbel", lambda a, u: gf.st_gumbel(a, u=u, temperature=0.7)),
    ("reinmax", lambda a, u: gf.reinmax(a, u=u, temperature=0.7)),
])
def test_drop_in_functions_backward_equals_the_estimator(name, make):
    problem = gs.problems.independent(gs.losses.polynomial(0.4, 3.0), [0.3, -1.2, 2.0])
    u = torch.rand(300, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = problem.parameters["logits"].expand(300, -1).clone().requires_grad_(True)
    problem.loss(make(a, u)).sum().backward()
    expected = gs.estimators.get(name).draw(problem, u[:, None], temperature=0.7).dense()
    assert torch.allclose(a.grad, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["arm", "disarm", "reinforce_loo", "local_expectation"])
def test_drop_in_surrogates_give_the_estimator(name):
    problem = gs.problems.independent(gs.losses.polynomial(0.4, 3.0), [0.3, -1.2, 2.0])
    u = torch.rand(300, 2, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = problem.parameters["logits"].expand(300, -1).clone().requires_grad_(True)
    if name == "reinforce_loo":
        _, surrogate = gf.reinforce_loo(a, problem.loss, k=2, u=u.transpose(0, 1))
        expected = gs.estimators.get(name).draw(problem, u, k=2).dense()
    else:
        _, surrogate = getattr(gf, name)(a, problem.loss, u=u[:, 0])
        expected = gs.estimators.get(name).draw(problem, u[:, :1]).dense()
    surrogate.backward()
    assert torch.allclose(a.grad, expected, rtol=1e-10, atol=1e-14)


@settings(max_examples=10)
@given(problem=networks(max_layers=1, max_total_units=4))
def test_local_expectation_is_exact_in_mean_on_one_layer_with_at_most_reinforces_variance(problem):
    exact = gs.exact_gradient(problem)
    m = gs.moments(problem, "local_expectation")
    assert torch.allclose(m.mean, exact, rtol=0, atol=1e-10 * (1 + exact.abs().max()))
    # its variance is at most REINFORCE's with Eq. 10's baseline (it does the expectation over h_i exactly)
    r = gs.moments(problem, "reinforce", baseline="optimal")
    c = [i for _, s in problem.layer_slices() for i in range(s.start, s.stop)]
    assert (m.var[c] <= r.var[c] * (1 + 1e-9) + 1e-14).all()


def test_reinmax_on_a_deep_network_applies_its_rule_at_every_layer():
    # layer by layer, as the drop-in is used in a model: the mean is ST's with each layer's local derivative swapped
    deep = gs.problems.sbn([2, 3, 2], "squared_error", seed=1, weight_scale=2.0)
    mean = gs.moments(deep, "reinmax").mean
    rule = gs.estimators.base.make_pathwise("reinmax_by_hand",
                                            lambda a, b: gs.estimators.surrogate.reinmax_derivative(a, b, 1.0))
    assert torch.equal(mean, gs.moments(deep, rule).mean)
    assert not torch.allclose(mean, gs.moments(deep, "st").mean)
