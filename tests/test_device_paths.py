"""The device paths, run on the CPU: exact enumeration with ``device=``, and the fused Monte Carlo path.

The same code runs on CUDA (tests/test_cuda.py checks it there); here it must give the eager CPU
results, bit for bit where nothing is reordered and to float rounding where the compiler fuses.
"""

import functools

import pytest
import torch
from torch._dynamo.utils import counters

import gradstats as gs
from gradstats.estimators import NonFiniteError


def test_exact_functions_take_a_device_and_a_device_sized_chunk():
    problem = gs.problems.sbn([3, 4, 3], seed=2)
    g = gs.exact_gradient(problem, chunk_size=2**16)
    assert torch.equal(gs.exact_gradient(problem, device="cpu", chunk_size=None), g)
    assert torch.equal(gs.exact_gradient(problem, device="auto" if not torch.cuda.is_available() else "cpu"), g)
    # another chunking only reorders the sum over chunks
    assert torch.allclose(gs.exact_gradient(problem, device="cpu", chunk_size=37), g, rtol=1e-12, atol=1e-15)
    assert gs.exact_loss(problem, device="cpu") == pytest.approx(gs.exact_loss(problem), rel=1e-14)
    for name in ("st", "reinforce_loo", "disarm"):
        small = problem if name != "disarm" else gs.problems.sbn([3, 4], seed=2)
        a = gs.moments(small, name, device="cpu", chunk_size=50, references={"g": gs.exact_gradient(small)})
        b = gs.moments(small, name, references={"g": gs.exact_gradient(small)})
        assert torch.allclose(a.mean, b.mean, rtol=1e-12, atol=1e-15) and torch.allclose(a.var, b.var, rtol=1e-10, atol=1e-15)
        assert a.statistics.sign_agree["g"].tolist() == pytest.approx(b.statistics.sign_agree["g"].tolist(), rel=1e-12)


def test_exact_functions_refuse_a_bad_device():
    problem = gs.problems.toy()
    for fn in (gs.exact_gradient, gs.exact_loss):
        with pytest.raises(ValueError, match="device must be"):
            fn(problem, device="tpu")
    with pytest.raises(ValueError, match="device must be"):
        gs.moments(problem, "st", device="tpu")


# The fused path compiles each (problem, estimator) once per process: a few problems keep this file short.
FUSED = dict(method="mc", num_samples=30_000, seed=5, device="cpu", chunk_size=4096, progress=False)


@pytest.mark.parametrize("name", ["st", "noisy_rectifier", "reinforce_loo"])
def test_the_fused_path_gives_the_eager_statistics(name):
    problem = gs.problems.sbn([4, 3, 2], seed=6) if name != "reinforce_loo" else gs.problems.sbn([4, 3], seed=6)
    g = gs.exact_gradient(problem)
    eager = gs.moments(problem, name, references={"g": g}, fuse=False, **FUSED)
    counters["graph_break"].clear()
    fused = gs.moments(problem, name, references={"g": g}, fuse=True, **FUSED)
    # one graph: a break (a data-dependent branch or shape) leaves the statistics, or all of them, eager
    assert not counters["graph_break"], dict(counters["graph_break"])
    # the same draws; the compiler may reorder sums, so agreement is to float64 rounding
    assert torch.allclose(fused.mean, eager.mean, rtol=1e-10, atol=1e-14)
    assert torch.allclose(fused.var, eager.var, rtol=1e-9, atol=1e-14)
    assert torch.allclose(fused.cov, eager.cov, rtol=1e-9, atol=1e-14)
    for field in ("sign_agree", "cosine", "descent"):
        assert torch.allclose(getattr(fused.statistics, field)["g"], getattr(eager.statistics, field)["g"], rtol=1e-9)
    for a, b in zip(fused.batches, eager.batches):   # the jackknife batches too
        assert a.count == b.count and torch.allclose(a.mean, b.mean, rtol=1e-10, atol=1e-14)


def _fused_cases():
    return [pytest.param(kind, name, id=name) for kind in ("sbn", "categorical") for name in gs.estimators.names(kind=kind)]


@pytest.mark.slow
@pytest.mark.parametrize("kind, name", _fused_cases())
def test_every_estimators_fused_draws_and_statistics_are_one_graph(kind, name, monkeypatch):
    """Every registered estimator's fused path, float64 and float32, is traced into one graph: a break leaves part
    of the draws or the statistics eager (with a break inside a loop, all of them), at the eager rate or below.
    Traced by torch's graph capture with the ``eager`` backend, which finds every break without compiling (about
    13 minutes for all of them with the compiler; a slow test all the same)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    problem = gs.problems.sbn([4, 3, 2], seed=6) if kind == "sbn" else gs.problems.categorical([3, 2], seed=1)
    g = gs.exact_gradient(problem)
    for dtype in (torch.float64, torch.float32):
        counters["graph_break"].clear()
        gs.moments(problem, name, references={"g": g}, fuse=True, dtype=dtype, **{**FUSED, "num_samples": 10_000})
        assert not counters["graph_break"], (str(dtype), dict(counters["graph_break"]))


def test_the_fused_path_in_float32_accumulates_in_float64():
    problem = gs.problems.sbn([4, 3, 2], seed=6)
    eager = gs.moments(problem, "st", dtype=torch.float32, fuse=False, **FUSED)
    fused = gs.moments(problem, "st", dtype=torch.float32, fuse=True, **FUSED)
    assert fused.mean.dtype == torch.float64
    # per-draw float32 arithmetic, fused or not: agreement to float32 rounding
    assert torch.allclose(fused.mean, eager.mean, rtol=1e-5, atol=1e-6)


def test_a_nan_draw_is_named_on_the_fused_path_too():
    def nan_at_two_ones(h):
        return torch.where(h.sum(-1) > 1.5, torch.nan, h.sum(-1))

    problem = gs.problems.independent(nan_at_two_ones, [-3.0, -3.0])
    kw = dict(method="mc", num_samples=2000, seed=0, device="cpu", progress=False)
    with pytest.raises(NonFiniteError) as eager:
        gs.moments(problem, "reinforce", fuse=False, **kw)
    with pytest.raises(NonFiniteError) as fused:
        gs.moments(problem, "reinforce", fuse=True, **kw)
    assert str(fused.value) == str(eager.value) and "(seed 0)" in str(fused.value)


def test_fuse_is_checked_and_left_out_where_it_cannot_apply():
    problem = gs.problems.toy()
    with pytest.raises(ValueError, match="fuse must be"):
        gs.moments(problem, "st", method="mc", num_samples=10, fuse="yes")
    # a stateful estimator and group cosines run eager whatever fuse says, with the eager results
    kw = dict(method="mc", num_samples=5000, seed=1, device="cpu", progress=False)
    for extra in ({"estimator": "reinforce", "baseline": "running"}, {"estimator": "st", "ms": (4,)}):
        extra = dict(extra)
        name = extra.pop("estimator")
        refs = {"references": {"g": gs.exact_gradient(problem)}}
        a = gs.moments(problem, name, fuse=True, **refs, **extra, **kw)
        b = gs.moments(problem, name, fuse=False, **refs, **extra, **kw)
        assert torch.equal(a.mean, b.mean) and a.statistics.groups == b.statistics.groups


def test_the_blocked_column_sums_of_compiled_gpu_code_equal_the_plain_sums():
    """Compiled for a GPU, column sums over draws are two-stage (``_blocked_column_sums``); the same function,
    compiled here with dynamic shapes, must give the plain sums for any number of rows."""
    from gradstats.accumulators import _SPLIT_ROWS, _blocked_column_sums
    blocked = torch.compile(_blocked_column_sums, dynamic=True)
    gen = torch.Generator().manual_seed(0)
    for rows in (1, 7, _SPLIT_ROWS - 1, _SPLIT_ROWS, 3 * _SPLIT_ROWS + 5):
        x = torch.randn(rows, 3, generator=gen, dtype=torch.float64)
        assert torch.allclose(blocked(x), x.sum(0), rtol=1e-12, atol=1e-12)
        assert torch.equal(blocked(x > 0), torch.count_nonzero(x > 0, dim=0).to(torch.float64))
        assert torch.allclose(blocked(x[:, 0]), x[:, 0].sum(), rtol=1e-12, atol=1e-12)
