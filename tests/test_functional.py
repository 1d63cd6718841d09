"""Drop-in torch functions: their backward pass is the registered estimator, draw for draw."""

import pytest
import torch

import gradstats as gs
import gradstats.functional as gf

LOGITS = [0.3, -1.2, 2.0, -50.0]


def per_draw_autograd(problem, make_sample, u):
    """Gradient of each row's loss with respect to that row's logits, via the drop-in function."""
    a = problem.parameters["logits"].expand(u.shape[0], -1).clone().requires_grad_(True)
    h = make_sample(a, u)
    problem.loss(h).sum().backward()
    return a.grad


@pytest.fixture
def setup():
    problem = gs.problems.independent(gs.losses.polynomial(0.4, 3.0), LOGITS)
    u = torch.rand(500, len(LOGITS), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return problem, u


@pytest.mark.parametrize("name, make_sample", [
    ("st", lambda a, u: gf.straight_through(a, u=u)),
    ("st_sigmoid", lambda a, u: gf.straight_through(a, u=u, variant="sigmoid")),
    ("sts", lambda a, u: gf.sts(a, u=u)),
    ("noisy_rectifier", lambda a, u: gf.noisy_rectifier(a, u=u)),
])
def test_backward_equals_the_registered_estimator(setup, name, make_sample):
    problem, u = setup
    expected = gs.estimators.get(name).draw(problem, u[:, None, :], **gs.estimators.get(name).defaults).dense()
    assert torch.allclose(per_draw_autograd(problem, make_sample, u), expected, rtol=1e-12, atol=1e-300)


def test_reinforce_surrogate_gives_the_estimator(setup):
    problem, u = setup
    baseline = torch.tensor([0.1, 0.2, -0.3, 1.0], dtype=torch.float64)
    a = problem.parameters["logits"].expand(u.shape[0], -1).clone().requires_grad_(True)
    h, surrogate = gf.reinforce(a, u=u)
    surrogate(problem.loss(h), baseline).backward()
    expected = gs.estimators.get("reinforce").draw(problem, u[:, None, :], baseline=baseline).dense()
    assert torch.allclose(a.grad, expected, rtol=1e-12, atol=1e-300)
    with pytest.raises(ValueError, match="loss must have shape \\(500,\\)"):
        surrogate(problem.loss(h)[:3])


def test_generator_makes_samples_reproducible():
    a = torch.zeros(1000, dtype=torch.float64)
    h1 = gf.straight_through(a, generator=torch.Generator().manual_seed(5))
    h2 = gf.straight_through(a, generator=torch.Generator().manual_seed(5))
    assert torch.equal(h1, h2)
    with pytest.raises(ValueError, match="u must have a's shape"):
        gf.sts(a, u=torch.rand(3))
    with pytest.raises(ValueError, match="variant must be"):
        gf.straight_through(a, variant="tanh")


def test_uniforms_and_pre_activations_are_checked_before_use():
    a = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="give u or generator, not both"):
        gf.straight_through(a, u=torch.rand(3), generator=torch.Generator())
    with pytest.raises(ValueError, match="a must be a floating-point tensor, got torch.int64"):
        gf.straight_through(torch.zeros(3, dtype=torch.int64), u=torch.rand(3))
    with pytest.raises(ValueError, match="logits must be a floating-point tensor"):
        gf.categorical_straight_through(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"u must have shape \(11, 3\)"):
        gf.gumbel_rao(a, u=torch.rand(3))


def test_drop_ins_compose_with_vmap_on_explicit_uniforms():
    a, u = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64)
    batched = torch.func.vmap(lambda x, v: gf.straight_through(x, u=v))(a, u)
    assert torch.equal(batched, gf.straight_through(a, u=u))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_noisy_rectifier_runs_in_half_precision(dtype):
    a = torch.linspace(-3, 3, 50, dtype=dtype).requires_grad_(True)
    u = torch.rand(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = gf.noisy_rectifier(a, u=u)
    h.sum().backward()
    reference = gf.noisy_rectifier(a.detach().double(), u=u.to(dtype).double())
    assert h.dtype == dtype and a.grad.dtype == dtype
    assert torch.allclose(h.double(), reference, rtol=2e-2, atol=2e-2)


def test_running_baseline_is_pure_and_exact_without_decay():
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([[0.3, 0.8]], dtype=torch.float64).expand(64, -1)
    h = (torch.rand(64, 2, generator=g, dtype=torch.float64) < p).double()
    loss = h.sum(-1) + 1.0
    state = gf.RunningBaseline.zeros(2, decay=0.0)
    new = state.update(h, p, loss)
    assert torch.equal(state.value(), torch.zeros(2, dtype=torch.float64))  # the old state is untouched
    sq = (h - p) ** 2
    assert torch.allclose(new.value(), (sq * loss[:, None]).mean(0) / sq.mean(0), rtol=1e-14)
    with pytest.raises(ValueError, match="decay must be a number in \\[0, 1\\)"):
        gf.RunningBaseline.zeros(2, decay=1.0)


def test_running_baseline_tracks_equation_10():
    # 3000 minibatches of 256 with decay 0.99: the averages cover ~100 minibatches (25,600 draws),
    # so the ratio's relative standard error is about 1 %; 5 % is > 5 standard errors (fails < 1e-6).
    problem = gs.problems.independent(gs.losses.polynomial(0.4, 2.0), [0.5, -1.0])
    target = gs.estimators.optimal_baseline(problem)
    g = torch.Generator().manual_seed(2)
    a = problem.parameters["logits"].expand(256, -1)
    state = gf.RunningBaseline.zeros(2, decay=0.99)
    for _ in range(3000):
        h, _ = gf.reinforce(a, generator=g)
        state = state.update(h, torch.sigmoid(a), problem.loss(h))
    assert torch.allclose(state.value(), target, rtol=0.05)
