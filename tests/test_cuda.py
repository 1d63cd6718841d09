"""CUDA checks: run where a GPU is present, skipped elsewhere (the suite never needs one)."""

import pytest
import torch

import gradstats as gs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("name", ["st", "reinforce", "sts", "noisy_rectifier"])
def test_cuda_agrees_with_the_exact_moments(name):
    # 5 standard errors per coordinate (failure rate 5.7e-7 a coordinate); the CUDA stream is seeded.
    problem = gs.problems.sbn([3, 3, 2], seed=11)
    n = 2**20
    m = gs.moments(problem, name, method="mc", num_samples=n, seed=1, device="cuda")
    reference = gs.moments(problem, name, method="mc", num_samples=n, seed=2, device="cpu") \
        if gs.estimators.get(name).noise == "continuous" else gs.moments(problem, name)
    sd = reference.var.sqrt()
    tol = 5 * sd * (2 / n) ** 0.5 if reference.method == "mc" else 5 * sd / n**0.5
    assert ((m.mean - reference.mean).abs() <= tol + 1e-12).all()


def test_cuda_same_seed_same_bits():
    problem = gs.problems.sbn([8, 16], seed=0)
    kw = dict(method="mc", num_samples=300_000, seed=4, device="cuda")
    a, b = gs.moments(problem, "st", **kw), gs.moments(problem, "st", **kw)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.var, b.var)
    c = gs.moments(problem, "st", chunk_size=12345, **kw)
    assert torch.allclose(a.mean, c.mean, rtol=1e-12, atol=1e-14)


def test_gradient_stats_on_cuda_matches_the_cpu():
    torch.manual_seed(0)
    draws = torch.randn(3000, 7, dtype=torch.float64)
    ref = torch.zeros(7, dtype=torch.float64)
    cpu = gs.GradientStats(reference=ref).update(draws)
    cuda = gs.GradientStats(reference=ref).update(draws.cuda())
    assert torch.allclose(cuda.mean.cpu(), cpu.mean, rtol=1e-12) and torch.allclose(cuda.var.cpu(), cpu.var, rtol=1e-10)
    assert cpu.merge(cuda).count == 6000


def test_conditional_trains_on_cuda():
    from gradstats import conditional, datasets

    for gate in ("st", "reinforce", "disarm"):
        result = conditional.train_gated(datasets.digits(), conditional.Settings(gate, epochs=1), seed=0, device="cuda")
        assert 0 <= result.test_error <= 1 and 0 < result.sparsity <= 0.2
