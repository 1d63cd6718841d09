"""Categorical units: exact enumeration over K^N states against a plain loop, the Gumbel-max sample's law, and
the estimators of categorical units checked exactly where their noise is discrete (closed forms for one unit,
unbiasedness, second-order accuracy) and by calibrated Monte Carlo where it is continuous."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradstats as gs
from gradstats.estimators import categorical as cat
from gradstats.estimators.surrogate import reinmax_derivative
from gradstats.units import CategoricalUnit, grouped_softmax, softmax_jvp

ONE_HOT = torch.nn.functional.one_hot


def loop_objective(problem, parameters):
    """E[L] of a categorical network by a plain loop over every joint class assignment (no enumeration engine)."""
    k = problem.num_classes
    sizes = [layer.size // k for layer in problem.layers]
    total = torch.zeros((), dtype=torch.float64)
    for classes in itertools.product(range(k), repeat=sum(sizes)):
        log_p, h, start = torch.zeros((), dtype=torch.float64), problem.x, 0
        for layer, n in zip(problem.layers, sizes):
            a = parameters[layer.bias] if layer.weight is None else parameters[layer.weight] @ h + parameters[layer.bias]
            h = ONE_HOT(torch.tensor(classes[start:start + n]), k).to(torch.float64).reshape(-1)
            log_p = log_p + (h * torch.log_softmax(a.reshape(n, k), -1).reshape(-1)).sum()
            start += n
        total = total + log_p.exp() * problem.loss(h[None])[0]
    return total


@pytest.mark.parametrize("sizes, k", [([3, 2, 2], 3), ([2, 3], 2), ([4, 1, 2], 4), ([2], 5)])
def test_exact_gradient_and_loss_equal_a_plain_loop(sizes, k):
    problem = gs.problems.categorical(sizes, num_classes=k, seed=2)
    leaves = {name: v.clone().requires_grad_(True) for name, v in problem.parameters.items()}
    objective = loop_objective(problem, leaves)
    loop_gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective, list(leaves.values()))])
    assert math.isclose(gs.exact_loss(problem), float(objective.detach()), rel_tol=1e-12)
    assert torch.allclose(gs.exact_gradient(problem), loop_gradient, rtol=1e-10, atol=1e-14)


def test_exact_gradient_matches_finite_differences():
    problem = gs.problems.categorical([3, 2], num_classes=3, seed=5)
    theta, g = problem.flat_parameters(), gs.exact_gradient(problem)
    eps = 1e-6
    for i in range(0, problem.num_parameters, 5):
        e = torch.zeros_like(theta)
        e[i] = eps
        fd = (gs.exact_loss(problem.with_parameters(theta + e)) - gs.exact_loss(problem.with_parameters(theta - e))) / (2 * eps)
        assert abs(fd - float(g[i])) < 1e-8, i


def test_enumeration_covers_k_to_the_n_states_once():
    problem = gs.problems.categorical([2, 2, 1], num_classes=3, seed=0)
    unit = CategoricalUnit(3)
    states, total = [], 0.0
    for traj in gs.enumeration.trajectories(problem, unit, chunk_size=5):
        total += float(traj.log_prob.exp().sum())
        states += [tuple(row) for row in torch.cat(traj.indicators, 1).tolist()]
    assert len(states) == 3**3 == len(set(states)) and math.isclose(total, 1.0, rel_tol=1e-12)
    assert all(sum(row[i:i + 3]) == 1 for row in states for i in (0, 3, 6))
    with pytest.raises(ValueError, match=r"3\^20 = 3,486,784,401 joint states of 20 categorical units"):
        gs.exact_gradient(gs.problems.categorical([2, 20], num_classes=3, seed=0))


def test_gumbel_max_samples_each_class_with_its_softmax_probability():
    # 200,000 one-hot samples of 3 units; each class's frequency within 5 binomial standard errors (failure rate
    # under 1e-5 for the 12 classes; fixed seed)
    a = torch.tensor([[0.3, -1.0, 2.0, 0.0, 0.0, 0.0, -4.0, 1.0, 1.5, 0.2, 0.1, -0.3]], dtype=torch.float64)
    unit = CategoricalUnit(4)
    n = 200_000
    u = torch.rand(n, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b, h = unit.sample(a.expand(n, -1), u)
    p = grouped_softmax(a, 4)[0]
    assert torch.equal(b, h) and torch.all(b.reshape(n, 3, 4).sum(-1) == 1)
    assert ((b.mean(0) - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all()
    assert torch.equal(unit.mode(a), ONE_HOT(a.reshape(3, 4).argmax(-1), 4).reshape(1, -1).double())


def test_softmax_jvp_is_the_softmax_jacobian():
    a = torch.randn(2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = torch.randn(2, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: grouped_softmax(t, 3), a[0])
    assert torch.allclose(softmax_jvp(grouped_softmax(a, 3), v, 3)[0], jac.T @ v[0], atol=1e-15)


def one_unit(k: int, logits, loss):
    return gs.problems.categorical([1], num_classes=k, loss=loss, logits=logits)


def test_two_classes_give_the_binary_rules():
    """For K = 2 the categorical ST is the binary ST-sigmoid' and ReinMax the binary ReinMax, each applied to
    the logit difference a = theta_1 - theta_0 with dL/db = v_1 - v_0: on every state, exactly."""
    theta = torch.tensor([[-0.4, 1.1]], dtype=torch.float64)
    a = theta[:, 1] - theta[:, 0]
    v = torch.tensor([[0.7, -0.2]], dtype=torch.float64)
    for cls in (0, 1):
        b = ONE_HOT(torch.tensor([cls]), 2).double()
        st = cat.st_vjp(theta, b, 2)(v)
        assert torch.allclose(st[:, 1], torch.sigmoid(a) * torch.sigmoid(-a) * (v[:, 1] - v[:, 0]), atol=1e-16)
        for tau in (0.5, 1.0, 2.0):
            rm = cat.reinmax_vjp(theta, b, 2, tau)(v)
            assert torch.allclose(rm[:, 1], reinmax_derivative(a, b[:, 1], tau) * (v[:, 1] - v[:, 0]), atol=1e-15)
            assert torch.allclose(rm.sum(-1), torch.zeros(1, dtype=torch.float64), atol=1e-15)


LOSSES = st.sampled_from(["squared_error", "cross_entropy"])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 4), depth=st.integers(1, 2), loss=LOSSES, copies=st.integers(2, 3))
def test_leave_one_out_is_exactly_unbiased(seed, k, depth, loss, copies):
    problem = gs.problems.categorical([2] + [2] * depth if k < 4 or copies == 2 else [2, 1], num_classes=k,
                                      loss=loss, seed=seed)
    m = gs.moments(problem, "categorical_reinforce_loo", k=copies)
    g = gs.exact_gradient(problem)
    assert (m.mean - g).abs().max() <= 1e-11 * (1 + g.abs().max())


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 5), n=st.integers(1, 3))
def test_reinmax_is_exact_for_quadratic_losses_on_one_layer(seed, k, n):
    """Second-order accuracy (Liu et al. 2023): at tau = 1 the mean is the exact gradient when the loss is
    quadratic in the one-hot values (a readout's squared error); not so for a cubic loss."""
    problem = gs.problems.categorical([3, n], num_classes=k, loss="squared_error", seed=seed)
    m = gs.moments(problem, "categorical_reinmax")
    g = gs.exact_gradient(problem)
    assert (m.mean - g).abs().max() <= 1e-12 * (1 + g.abs().max())


def test_reinmax_is_biased_for_a_cubic_loss_and_st_for_a_quadratic_one():
    """On one unit a loss is f(e_c) per class, but the estimators read its gradient at the one-hot sample, which
    depends on how f extends off the vertices: power sums of degree 3 and 2 give the same values, not the same
    gradients."""
    cubic = one_unit(3, [0.3, -0.5, 1.0], gs.losses.power_sum([[0.1, 0.4, 0.5], [-0.2, 0.3, -0.7], [0.6, -0.1, 0.2]]))
    quadratic = one_unit(3, [0.3, -0.5, 1.0], gs.losses.power_sum([[0.1, 0.4], [-0.2, 0.3], [0.6, -0.1]]))
    assert torch.allclose(gs.moments(quadratic, "categorical_reinmax").mean, gs.exact_gradient(quadratic), atol=1e-15)
    assert (gs.moments(cubic, "categorical_reinmax").mean - gs.exact_gradient(cubic)).abs().max() > 1e-3
    assert (gs.moments(quadratic, "categorical_st").mean - gs.exact_gradient(quadratic)).abs().max() > 1e-3


def test_st_closed_form_on_one_unit():
    """One unit: E[categorical_st] = sum_c pi_c J_pi grad f(e_c) (enumeration against the formula written out)."""
    logits = torch.tensor([0.3, -0.5, 1.0, 0.1], dtype=torch.float64)
    coefficients = torch.tensor([[0.1, 0.4], [-0.2, 0.3], [0.6, -0.1], [0.3, 0.2]], dtype=torch.float64)
    problem = one_unit(4, logits, gs.losses.power_sum(coefficients.tolist()))
    pi = torch.softmax(logits, 0)
    jac = torch.diag(pi) - torch.outer(pi, pi)
    eye = torch.eye(4, dtype=torch.float64)     # grad f(h) = c_1 + 2 c_2 h at the one-hot e_c
    expected = sum(pi[c] * jac @ (coefficients[:, 0] + 2 * coefficients[:, 1] * eye[c]) for c in range(4))
    assert torch.allclose(gs.moments(problem, "categorical_st").mean, expected, atol=1e-15)


def test_conditional_gumbel_has_the_sample_as_its_argmax_and_the_conditional_law():
    """The perturbations drawn given D have argmax D, and their softmax's mean given D equals that of unconditional
    Gumbel perturbations whose argmax is D (rejection), within 5 standard errors (fixed seeds)."""
    k, n = 3, 400_000
    a = torch.tensor([[0.5, -0.2, 1.1]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    z = a + gs.units.gumbel_noise(torch.rand(n, k, generator=gen, dtype=torch.float64))
    d = ONE_HOT(z.argmax(-1), k).double()
    z_given = cat.conditional_gumbel(a, d, torch.rand(n, k, generator=gen, dtype=torch.float64), k)
    assert torch.equal(z_given.argmax(-1), d.argmax(-1))
    for cls in range(k):
        rows = d[:, cls] > 0.5
        plain, given = torch.softmax(z[rows], -1), torch.softmax(z_given[rows], -1)
        se = (plain.var(0) / rows.sum() + given.var(0) / rows.sum()).sqrt()
        assert ((plain.mean(0) - given.mean(0)).abs() <= 5 * se).all(), cls


def test_gumbel_rao_has_st_gumbels_mean_and_less_variance():
    # 400,000 draws each on one network; the means differ by at most 5 combined standard errors per coordinate
    # (failure rate under 1e-4 for the test; fixed seeds); the trace is lower by a margin far beyond its error
    problem = gs.problems.categorical([3, 2], num_classes=3, seed=1)
    kw = dict(method="mc", num_samples=400_000, device="cpu", progress=False)
    rao = gs.moments(problem, "categorical_gumbel_rao", seed=0, **kw)
    st_g = gs.moments(problem, "categorical_st_gumbel", seed=1, **kw)
    se = (rao.mean_stderr**2 + st_g.mean_stderr**2).sqrt()
    assert ((rao.mean - st_g.mean).abs() <= 5 * se).all()
    assert rao.var.sum() < 0.8 * st_g.var.sum()


def test_relaxed_estimators_share_the_sample_and_gumbel_is_unbiased_for_its_own_objective():
    problem = gs.problems.categorical([2, 2], num_classes=3, seed=4)
    u = torch.rand(8, 1, problem.num_units, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hard = gs.estimators.get("categorical_st_gumbel").draw(problem, u, temperature=1.0)
    st_draw = gs.estimators.get("categorical_st").draw(problem, u)
    assert torch.equal(hard.inputs[0], st_draw.inputs[0])   # the same input rows; the same samples drive both
    tau = 0.7
    leaves = {n: v.clone().requires_grad_(True) for n, v in problem.parameters.items()}
    gen = torch.Generator().manual_seed(9)
    n = 200_000
    g_noise = gs.units.gumbel_noise(torch.rand(n, problem.num_units, generator=gen, dtype=torch.float64))
    a = leaves["W1"] @ problem.x + leaves["c1"]
    y = grouped_softmax((a + g_noise) / tau, 3)
    relaxed = problem.loss(y).mean()
    reference = torch.cat([g.reshape(-1) for g in torch.autograd.grad(relaxed, list(leaves.values()))])
    m = gs.moments(problem, "categorical_gumbel", method="mc", num_samples=n, seed=5, temperature=tau, device="cpu",
                   progress=False)
    # two independent Monte Carlo means of the same relaxed gradient: within 6 combined standard errors
    assert ((m.mean - reference).abs() <= 6 * math.sqrt(2) * m.mean_stderr + 1e-12).all()


def test_names_by_kind_and_clear_refusals():
    cat_names = gs.estimators.names(kind="categorical")
    assert cat_names == ["categorical_st", "categorical_gumbel", "categorical_st_gumbel", "categorical_reinmax",
                         "categorical_gumbel_rao", "categorical_reinforce_loo", "categorical_carms"]
    assert not set(cat_names) & set(gs.estimators.names(kind="sbn"))
    problem = gs.problems.categorical([2, 2], num_classes=3, seed=0)
    with pytest.raises(ValueError, match="estimator 'st' does not support 'categorical' problems"):
        gs.moments(problem, "st")
    with pytest.raises(ValueError, match="estimator 'categorical_st' does not support 'sbn' problems"):
        gs.moments(gs.problems.sbn([2, 2], seed=0), "categorical_st")
    with pytest.raises(ValueError, match="objective must be 'binary'"):
        gs.exact_gradient(problem, objective="sts")
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        gs.moments(problem, "categorical_reinforce_loo", k=1)
    with pytest.raises(ValueError, match="temperature"):
        gs.moments(problem, "categorical_reinmax", temperature=0.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sizes=[2, 2], num_classes=1), "num_classes must be an integer >= 2"),
    (dict(sizes=[2, 2], num_classes=2.0), "num_classes must be an integer >= 2"),
    (dict(sizes=[], num_classes=3), "sizes must be a list"),
    (dict(sizes=[2, 0], num_classes=3), "sizes must be a list"),
    (dict(sizes=[2], num_classes=3, logits=[0.0] * 5), "logits must have N K = 6 entries"),
    (dict(sizes=[2], num_classes=3, logits=[float("nan")] * 6), "logits must be finite"),
    (dict(sizes=[2, 2], num_classes=3, logits=[0.0] * 6), "logits are only for independent units"),
    (dict(sizes=[2, 2], num_classes=3, x=[1.0]), "x must have sizes"),
    (dict(sizes=[2, 2], num_classes=3, weight_scale=-1.0), "weight_scale must be > 0"),
])
def test_bad_categorical_problems_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gs.problems.categorical(**kwargs)


def test_a_categorical_problem_rebuilds_from_its_repr():
    problem = gs.problems.categorical([3, 2], num_classes=4, seed=7)
    again = eval(repr(problem), {"gs": gs})
    assert torch.equal(again.flat_parameters(), problem.flat_parameters()) and again.num_classes == 4
    assert problem.spec()["num_classes"] == 4 and problem.num_variables == 2 and problem.num_units == 8


DROP_INS = {"categorical_st": ("categorical_straight_through", {}), "categorical_reinmax": ("categorical_reinmax", {}),
            "categorical_st_gumbel": ("categorical_st_gumbel", {"temperature": 0.7}),
            "categorical_gumbel": ("categorical_gumbel_softmax", {"temperature": 0.7})}


@pytest.mark.parametrize("name", sorted(DROP_INS))
def test_drop_ins_give_the_estimators_draws(name):
    """On independent units with the same uniforms, the drop-in's gradient of the loss is the estimator's draw."""
    import gradstats.functional as gf

    function, options = DROP_INS[name]
    problem = gs.problems.categorical([3], num_classes=4, loss="squared_error", seed=3)
    u = torch.rand(6, 1, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = gs.estimators.get(name).draw(problem, u, **options).dense()
    for row in range(6):
        logits = problem.parameters["logits"].reshape(3, 4).clone().requires_grad_(True)
        h = getattr(gf, function)(logits, u=u[row, 0].reshape(3, 4), **options)
        problem.loss(h.reshape(1, -1))[0].backward()
        assert torch.allclose(logits.grad.reshape(-1), expected[row], atol=1e-14), row


def test_gumbel_rao_and_leave_one_out_drop_ins_give_the_estimators_draws():
    import gradstats.functional as gf

    problem = gs.problems.categorical([2], num_classes=3, loss="squared_error", seed=6)
    k = 4
    u = torch.rand(5, 1 + k, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rao = gs.estimators.get("categorical_gumbel_rao").draw(problem, u, temperature=1.0, k=k).dense()
    loo = gs.estimators.get("categorical_reinforce_loo").draw(problem, u[:, :k], k=k).dense()
    for row in range(5):
        logits = problem.parameters["logits"].reshape(2, 3).clone().requires_grad_(True)
        h = gf.categorical_gumbel_rao(logits, k=k, u=u[row].reshape(1 + k, 2, 3))
        problem.loss(h.reshape(1, -1))[0].backward()
        assert torch.allclose(logits.grad.reshape(-1), rao[row], atol=1e-14)
        logits.grad = None
        _, surrogate = gf.categorical_reinforce_loo(logits, lambda b: problem.loss(b.reshape(k, -1)), k=k,
                                                    u=u[row, :k].reshape(k, 2, 3))
        surrogate.backward()
        assert torch.allclose(logits.grad.reshape(-1), loo[row], atol=1e-14)
    with pytest.raises(ValueError, match="classes last"):
        gf.categorical_straight_through(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"\[\.\.\., N, K\]"):
        gf.categorical_reinforce_loo(torch.zeros(3), lambda b: b.sum(-1))


@pytest.mark.parametrize("function", ["categorical_straight_through", "categorical_reinmax", "categorical_st_gumbel",
                                      "categorical_gumbel_softmax", "categorical_gumbel_rao"])
def test_drop_ins_batch_under_vmap_and_keep_masked_classes_at_zero(function):
    """Per-draw gradients from torch.func.vmap(grad) equal a loop of backward passes (they raised under vmap: an
    autograd.Function without setup_context, and torch's one_hot reading its indices); a class masked by a logit
    of -inf gets gradient 0 and every other entry stays finite."""
    import gradstats.functional as gf

    draws = 5
    logits = torch.tensor([[0.3, -1.2, 2.0, -math.inf], [1.0, 0.0, -0.5, 0.7]], dtype=torch.float64)
    k = 1 + 3 if function == "categorical_gumbel_rao" else 1
    u = torch.rand(draws, *((k,) if k > 1 else ()), 2, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    weights = torch.linspace(-1, 2, 8, dtype=torch.float64).reshape(2, 4)
    options = {"k": k - 1} if k > 1 else {}

    def loss(a, uu):
        return ((getattr(gf, function)(a, u=uu, **options) - 0.2) ** 2 * weights).sum()

    batched = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(logits, u)
    for i in range(draws):
        a = logits.clone().requires_grad_(True)
        loss(a, u[i]).backward()
        assert torch.allclose(batched[i], a.grad, rtol=1e-12, atol=1e-15), i
    assert torch.isfinite(batched).all() and (batched[:, 0, 3] == 0).all()


def test_a_module_of_categorical_drop_ins_is_measured_as_it_is():
    import gradstats.functional as gf

    class Categorical(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = torch.nn.Linear(5, 6), torch.nn.Linear(6, 5)

        def forward(self, x):
            logits = self.enc(x).reshape(-1, 2, 3)
            return self.dec(gf.categorical_straight_through(logits).reshape(-1, 6))

    torch.manual_seed(0)
    model, x = Categorical().double(), torch.rand(4, 5, dtype=torch.float64)
    stats = gs.module_gradient_stats(model, lambda out, x: ((out - x) ** 2).mean(), x, 64, seed=1, chunk_size=16)
    again = gs.module_gradient_stats(model, lambda out, x: ((out - x) ** 2).mean(), x, 64, seed=1, chunk_size=16)
    variance = stats.to_frame().query("metric == 'variance_trace'").value.iloc[0]
    assert stats.count == 64 and variance > 0
    assert again.to_frame().query("metric == 'variance_trace'").value.iloc[0] == variance


# ---- CARMS ------------------------------------------------------------------------------------------------

def test_carms_class_orders_are_the_authors_set():
    """K (K - 1) / 2 orders, each a permutation whose first class is below its last; for K = 3 the three of the
    authors' code (rotations, then the rest rotated)."""
    assert cat.carms_orders(3).tolist() == [[0, 1, 2], [0, 2, 1], [1, 0, 2]]
    for k in (2, 4, 5):
        orders = cat.carms_orders(k)
        assert orders.shape == (k * (k - 1) // 2, k)
        assert all(sorted(o) == list(range(k)) and o[0] < o[-1] for o in orders.tolist())


@pytest.mark.parametrize("copies", [2, 3, 4])
def test_carms_coupled_samples_follow_their_pair_law(copies):
    """The sampler's class pairs (first and last sample) over 200,000 draws against the pair law it is scored
    with (marginals pi): every frequency within 4.5 binomial standard errors (chance
    failure below 1e-4 over the 16 cells)."""
    probs = torch.tensor([0.1, 0.45, 0.3, 0.15], dtype=torch.float64)
    a = probs.log()[None].expand(200_000, -1)
    u = torch.rand(copies, 200_000, 4, generator=torch.Generator().manual_seed(copies), dtype=torch.float64)
    samples = cat.carms_samples(a, u, 4)
    assert samples.shape == (copies, 200_000, 4) and bool((samples.sum(-1) == 1).all())
    first, last = samples[0].argmax(-1), samples[-1].argmax(-1)
    freq = torch.bincount(first * 4 + last, minlength=16).to(torch.float64) / 200_000
    law = cat.carms_tuple_probabilities(probs, copies, size=2)
    assert torch.allclose(law.reshape(4, 4).sum(1), probs, atol=1e-14)
    assert torch.allclose(cat.carms_tuple_probabilities(probs, copies).sum(), torch.ones((), dtype=torch.float64))
    assert bool(((freq - law).abs() <= 4.5 * (law * (1 - law) / 200_000).sqrt() + 1e-12).all())


@pytest.mark.parametrize("problem", [gs.problems.categorical([1], 4, seed=0), gs.problems.categorical([2], 3, seed=3),
                                     gs.problems.categorical([3, 2], 3, seed=1)], ids=["one", "two", "network"])
def test_carms_is_exactly_unbiased_with_less_variance_than_leave_one_out(problem):
    """Exact moments over the K^(N k) joint samples: the mean is the gradient to rounding for k = 2, 3, 4, and
    on these problems the total variance is below leave-one-out REINFORCE's with as many samples."""
    g = gs.exact_gradient(problem)
    for k in (2, 3, 4):
        m = gs.moments(problem, "categorical_carms", k=k)
        assert (m.mean - g).abs().max() <= 1e-12 * (1 + g.abs().max()), k
        loo = gs.moments(problem, "categorical_reinforce_loo", k=k)
        assert float(m.var.sum()) < float(loo.var.sum()), k


def test_carms_monte_carlo_follows_its_exact_moments():
    """The draws (carms_samples, then the rule) against the enumeration's moments on the network, k = 3: means
    within 4.5 standard errors per coordinate (24 coordinates; chance failure below 2e-4)."""
    problem = gs.problems.categorical([3, 2], 3, seed=1)
    exact = gs.moments(problem, "categorical_carms", k=3)
    mc = gs.moments(problem, "categorical_carms", method="mc", k=3, num_samples=200_000, seed=5)
    assert bool(((mc.mean - exact.mean).abs() <= 4.5 * (exact.var / 200_000).sqrt() + 1e-12).all())


def test_carms_drop_in_gives_the_estimators_draws_and_refuses_what_it_cannot_do():
    import gradstats.functional as gf

    problem = gs.problems.categorical([2], num_classes=3, loss="squared_error", seed=6)
    k = 3
    u = torch.rand(5, k, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    draws = gs.estimators.get("categorical_carms").draw(problem, u, k=k).dense()
    for row in range(5):
        logits = problem.parameters["logits"].reshape(2, 3).clone().requires_grad_(True)
        _, surrogate = gf.categorical_carms(logits, lambda b: problem.loss(b.reshape(k, -1)), k=k,
                                            u=u[row].reshape(k, 2, 3))
        surrogate.backward()
        assert torch.allclose(logits.grad.reshape(-1), draws[row], atol=1e-14)
    deep = gs.problems.categorical([2, 2, 1], 3, seed=0)
    for extra in ({"method": "exact"}, {"method": "mc", "num_samples": 10}):
        with pytest.raises(ValueError, match="'categorical_carms' is defined for networks of at most 1 stochastic"):
            gs.moments(deep, "categorical_carms", **extra)
    with pytest.raises(ValueError, match="k .* must be an integer >= 2"):
        gs.moments(problem, "categorical_carms", k=1)
