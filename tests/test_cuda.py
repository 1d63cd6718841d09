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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_cuda_stream_equals_its_definition(dtype):
    """Whole blocks are drawn into the chunk's tensor (``out=``); the bits must be those of a block drawn alone."""
    from gradstats.noise import BLOCK, NoiseStream, block_seed, uniforms_as
    stream = NoiseStream(3, (1, 5), torch.device("cuda"), dtype)
    for start, stop in ((7, 3 * BLOCK + 11), (3 * BLOCK + 11, 3 * BLOCK + 12), (0, 64 * BLOCK)):
        blocks = [torch.rand((BLOCK, 1, 5), generator=torch.Generator("cuda").manual_seed(block_seed(3, k)),
                             device="cuda", dtype=torch.float64) for k in range(start // BLOCK, (stop - 1) // BLOCK + 1)]
        offset = start // BLOCK * BLOCK
        expected = uniforms_as(torch.cat(blocks)[start - offset:stop - offset], dtype)
        assert torch.equal(stream.uniforms(start, stop), expected), (start, stop)


def test_gradient_stats_on_cuda_matches_the_cpu():
    torch.manual_seed(0)
    draws = torch.randn(3000, 7, dtype=torch.float64)
    ref = torch.zeros(7, dtype=torch.float64)
    cpu = gs.GradientStats(reference=ref).update(draws)
    cuda = gs.GradientStats(reference=ref).update(draws.cuda())
    assert torch.allclose(cuda.mean.cpu(), cpu.mean, rtol=1e-12) and torch.allclose(cuda.var.cpu(), cpu.var, rtol=1e-10)
    assert cpu.merge(cuda).count == 6000


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_cuda_chunk_sums_of_several_groups_give_the_cpu_kernel_sums(mode, monkeypatch):
    """GradientStats on CUDA with torch's kernels (compiled: one call per kernel for every group; eager: the groups
    side by side) against the CPU's, on three parameter groups of float32 draws, with a reference."""
    import sys

    import numpy as np

    from gradstats.chunk_sums import ChunkSums

    module = sys.modules["gradstats.gradient_stats"]
    gen = torch.Generator().manual_seed(3)
    draws = {"w": torch.randn(700, 5, 40, generator=gen), "b": torch.randn(700, 40, generator=gen) + 50.0,
             "v": torch.randn(700, 3, generator=gen)}
    ref = {k: v[:64].mean(0).to(torch.float64) for k, v in draws.items()}
    cpu, cuda = gs.GradientStats(reference=ref), gs.GradientStats(reference=ref)
    for start in range(0, 700, 128):
        cpu.update({k: v[start:start + 128] for k, v in draws.items()})
    monkeypatch.setattr(module, "_CHUNK_SUMS", ChunkSums(mode))
    for start in range(0, 700, 128):
        cuda.update({k: v[start:start + 128].cuda() for k, v in draws.items()})
    a, b = cpu.to_frame(), cuda.to_frame()
    numeric = a.select_dtypes("number").columns
    assert list(a.columns) == list(b.columns)
    assert np.allclose(a[numeric].to_numpy(float), b[numeric].to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True)


def test_conditional_trains_on_cuda():
    from gradstats import conditional, datasets

    for gate in ("st", "reinforce", "disarm"):
        result = conditional.train_gated(datasets.digits(), conditional.Settings(gate, epochs=1), seed=0, device="cuda")
        assert 0 <= result.test_error <= 1 and 0 < result.sparsity <= 0.2


def test_exact_enumeration_on_cuda_matches_the_cpu():
    problem = gs.problems.sbn([4, 5, 4], seed=3)
    g = gs.exact_gradient(problem)
    assert torch.allclose(gs.exact_gradient(problem, device="cuda"), g, rtol=1e-10, atol=1e-14)
    assert gs.exact_loss(problem, device="cuda") == pytest.approx(gs.exact_loss(problem), rel=1e-12)
    for name in ("st", "reinforce_loo", "disarm"):
        small = problem if name != "disarm" else gs.problems.sbn([4, 5], seed=3)
        refs = {"g": gs.exact_gradient(small)}
        a, b = gs.moments(small, name, device="cuda", references=refs), gs.moments(small, name, references=refs)
        assert torch.allclose(a.mean, b.mean, rtol=1e-10, atol=1e-14), name
        assert torch.allclose(a.var, b.var, rtol=1e-8, atol=1e-14), name
        # CUDA rounds equal rows' losses differently; passes with equal outputs get one loss value
        # (tied_losses), so LOO's exact zeros, and with them its signs and cosines, match the CPU's
        # (tests/test_exact_zeros.py imitates the device on the CPU)
        assert torch.allclose(a.statistics.sign_agree["g"], b.statistics.sign_agree["g"], rtol=1e-10), name
        assert torch.allclose(a.statistics.cosine["g"], b.statistics.cosine["g"], rtol=1e-10), name


@pytest.mark.parametrize("name", ["st", "noisy_rectifier", "disarm"])
def test_the_fused_path_on_cuda_gives_the_eager_statistics(name):
    problem = gs.problems.sbn([8, 16], seed=0)
    g = gs.exact_gradient(problem)
    kw = dict(method="mc", num_samples=3_000_000, seed=2, device="cuda", chunk_size=2**20, references={"g": g})
    eager, fused = gs.moments(problem, name, fuse=False, **kw), gs.moments(problem, name, fuse=True, **kw)
    assert torch.allclose(fused.mean, eager.mean, rtol=1e-10, atol=1e-14)
    assert torch.allclose(fused.var, eager.var, rtol=1e-9, atol=1e-14)
    assert torch.allclose(fused.statistics.cosine["g"], eager.statistics.cosine["g"], rtol=1e-9)
    single = gs.moments(problem, name, fuse=True, dtype=torch.float32, **kw)
    assert torch.allclose(single.mean, eager.mean, rtol=1e-4, atol=1e-5)


def test_categorical_enumeration_on_cuda_equals_the_cpus():
    problem = gs.problems.categorical([3, 3, 2], num_classes=4, seed=2)   # 4^5 states
    assert torch.allclose(gs.exact_gradient(problem, device="cuda"), gs.exact_gradient(problem), rtol=1e-10, atol=1e-14)
    for name in ("categorical_st", "categorical_reinmax", "categorical_reinforce_loo"):
        cuda, cpu = gs.moments(problem, name, device="cuda"), gs.moments(problem, name)
        assert torch.allclose(cuda.mean, cpu.mean, rtol=1e-10, atol=1e-14), name
    # Monte Carlo on the device against the exact moments: 5 standard errors a coordinate (fixed seed)
    n = 2**20
    m = gs.moments(problem, "categorical_st", method="mc", num_samples=n, seed=1, device="cuda")
    exact = gs.moments(problem, "categorical_st")
    assert ((m.mean - exact.mean).abs() <= 5 * exact.var.sqrt() / n**0.5 + 1e-12).all()
