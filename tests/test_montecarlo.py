"""Streaming Monte Carlo: agreement with exact moments, reproducibility, chunk invariance, errors."""


import pytest
import torch

import gradstats as gs

DISCRETE = [n for n in gs.estimators.names() if gs.estimators.get(n).noise == "discrete"]


@pytest.mark.parametrize("name", DISCRETE)
def test_mc_means_lie_within_their_intervals_of_the_exact_moments(name):
    # |mean_mc - mean| <= 5 sd / sqrt(n) per coordinate (sd exact): two-sided failure rate 5.7e-7
    # a coordinate, under 1e-4 for the whole test; the seed is fixed, so it either always passes or never.
    est = gs.estimators.get(name)
    one_layer = est.exact_max_layers is not None or est.max_layers is not None
    if "categorical" in est.kinds:     # two layers of two units of three classes: 3^4 states (3^8 for k = 2)
        problem = gs.problems.categorical([3, 2] if one_layer else [3, 2, 2], num_classes=3, seed=11)
    else:
        problem = gs.problems.sbn([3, 4] if one_layer else [3, 3, 2], seed=11)
    exact = gs.moments(problem, name)
    n = 200_000
    mc = gs.moments(problem, name, method="mc", num_samples=n, seed=3, device="cpu")
    sd = exact.var.sqrt()
    assert ((mc.mean - exact.mean).abs() <= 5 * sd / n**0.5 + 1e-15).all()
    # the sample variance of a bounded estimator is within 10 % where the variance is not tiny
    big = exact.var > 1e-6 * exact.var.max()
    assert torch.allclose(mc.var[big], exact.var[big], rtol=0.1)
    assert mc.num_samples == n and mc.method == "mc"
    assert torch.allclose(mc.mean_stderr, (mc.var / n).sqrt())


def test_same_seed_same_bits_and_chunk_size_only_moves_rounding():
    problem = gs.problems.sbn([4, 3, 3], seed=2)
    kw = dict(method="mc", num_samples=100_003, seed=9, device="cpu")
    a = gs.moments(problem, "st", chunk_size=65536, **kw)
    b = gs.moments(problem, "st", chunk_size=65536, **kw)
    c = gs.moments(problem, "st", chunk_size=777, **kw)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.var, b.var)
    assert torch.allclose(a.mean, c.mean, rtol=1e-12, atol=1e-14)
    assert torch.allclose(a.var, c.var, rtol=1e-10)
    d = gs.moments(problem, "st", chunk_size=65536, **{**kw, "seed": 10})
    assert not torch.equal(a.mean, d.mean)


def test_estimators_share_the_binary_sample():
    # Common random numbers: with the same uniforms, st and reinforce see the same h.
    problem = gs.problems.independent(gs.losses.polynomial(0.5, 1.0), [0.3, -0.2, 1.1])
    u = torch.rand(1000, 1, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g_st = gs.estimators.get("st").draw(problem, u).dense()
    g_rf = gs.estimators.get("reinforce").draw(problem, u, baseline=torch.zeros(3, dtype=torch.float64)).dense()
    h = (u[:, 0] < torch.sigmoid(problem.parameters["logits"])).double()
    # for |h - 1/2| with t = 1/2, f'(h) = sign(h - 1/2) = 2h - 1 and (h - p) f(h) = (h - p) / 2
    assert torch.equal(g_st, 2 * h - 1)
    assert torch.allclose(g_rf, (h - torch.sigmoid(problem.parameters["logits"])) * 1.5)


def test_user_callable_estimator():
    problem = gs.problems.toy(0.45, 0.0)

    def constant_estimator(problem, u):
        return torch.full((u.shape[0], problem.num_parameters), 2.0, dtype=u.dtype)

    m = gs.moments(problem, constant_estimator, method="mc", num_samples=1000, device="cpu")
    assert torch.equal(m.mean, torch.tensor([2.0], dtype=torch.float64)) and m.estimator == "constant_estimator"
    with pytest.raises(ValueError, match="continuous noise"):
        gs.moments(problem, constant_estimator)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_samples": 0}, "num_samples must be an integer >= 1"),
    ({"num_samples": -5}, "num_samples must be an integer >= 1"),
    ({"num_samples": 10, "chunk_size": 0}, "chunk_size must be an integer >= 1"),
    ({"num_samples": 10, "device": "tpu"}, "device must be"),
    ({"num_samples": 10, "seed": -1}, r"seed must be an integer in \[0, 2\^63\)"),
    ({}, "Monte Carlo moments need num_samples"),
    ({"num_samples": 10, "dtype": torch.float16}, "dtype must be torch.float32 or torch.float64"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gs.moments(gs.problems.toy(), "st", method="mc", **kwargs)


def test_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        gs.moments(gs.problems.toy(), "st", method="mc", num_samples=10, device="cuda")


def test_progress_bar_is_silent_when_not_a_terminal_or_asked(capsys):
    problem = gs.problems.toy()
    gs.moments(problem, "st", method="mc", num_samples=50_000, device="cpu")  # stderr is captured: not a tty
    gs.moments(problem, "st", method="mc", num_samples=50_000, device="cpu", progress=False)
    assert capsys.readouterr().err == ""
    gs.moments(problem, "st", method="mc", num_samples=50_000, device="cpu", progress=True)
    assert "draw" in capsys.readouterr().err


def test_memory_is_bounded_by_the_chunk_not_the_draws(monkeypatch):
    # 2^20 draws in chunks of 4096: no noise tensor larger than a chunk is ever made, and the
    # accumulators hold O(D) numbers whatever the number of draws.
    from gradstats.noise import NoiseStream

    largest = []
    original = NoiseStream.uniforms
    monkeypatch.setattr(NoiseStream, "uniforms", lambda self, a, b: largest.append(b - a) or original(self, a, b))
    problem = gs.problems.sbn([4, 3], seed=0)
    m = gs.moments(problem, "st", method="mc", num_samples=2**20, chunk_size=4096, device="cpu", progress=False)
    assert m.num_samples == 2**20 and m.statistics.count == 2**20
    assert max(largest) <= 4096 and sum(largest) == 2**20


def test_running_baseline_matches_a_sequential_loop_and_ignores_chunking():
    # The paper's running averages, per draw: b_i = EMA(r^2 L) / EMA(r^2) over draws before i.
    problem = gs.problems.sbn([2, 2, 2], seed=3)
    n, decay = 700, 0.97
    from gradstats.noise import NoiseStream

    u = NoiseStream(5, (1, problem.num_units), torch.device("cpu")).uniforms(0, n)
    est = gs.estimators.get("reinforce")
    trajectory = gs.estimators.sample_trajectory(problem, gs.units.BINARY, u[:, 0])
    loss = problem.loss(trajectory.output)
    r = torch.cat([gs.units.binary_residual(a, h) for a, h in zip(trajectory.logits, trajectory.indicators)], 1)
    num = torch.zeros(problem.num_units, dtype=torch.float64)
    den = torch.zeros_like(num)
    rows = []
    for i in range(n):  # the definition, one draw at a time
        b = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
        rows.append(r[i] * (loss[i] - b))
        num = decay * num + (1 - decay) * r[i] ** 2 * loss[i]
        den = decay * den + (1 - decay) * r[i] ** 2
    deltas = torch.stack(rows)
    expected = gs.problems.FactoredGradient(problem.split_units(deltas), list(trajectory.inputs)).dense()
    got, _ = est.draw(problem, u, baseline="running", decay=decay)
    assert torch.allclose(got.dense(), expected, rtol=1e-10, atol=1e-12)
    kw = dict(method="mc", num_samples=n, seed=5, device="cpu", baseline="running", decay=decay, progress=False)
    a, c = gs.moments(problem, "reinforce", chunk_size=4096, **kw), gs.moments(problem, "reinforce", chunk_size=37, **kw)
    assert torch.allclose(a.mean, expected.mean(0), rtol=1e-10, atol=1e-12)
    assert torch.allclose(a.mean, c.mean, rtol=1e-10, atol=1e-12) and torch.allclose(a.var, c.var, rtol=1e-9)


def test_running_baseline_is_unbiased_and_nearly_as_good_as_equation_10():
    # Unbiased at every draw (the baseline depends only on earlier, independent draws): 5 standard
    # errors per coordinate. Its variance approaches Eq. 10's: within 10 % at 2e5 draws (relative
    # standard error of a sample variance about 0.5 % here).
    problem = gs.problems.sbn([3, 3, 2], seed=1)
    m = gs.moments(problem, "reinforce", method="mc", num_samples=200_000, baseline="running", device="cpu",
                   progress=False)
    assert ((m.mean - gs.exact_gradient(problem)).abs() <= 5 * m.mean_stderr).all()
    optimal = gs.moments(problem, "reinforce", baseline="optimal")
    assert m.trace == pytest.approx(optimal.trace, rel=0.1)
    assert m.trace < 0.2 * gs.moments(problem, "reinforce").trace


def _interrupt_at_piece(monkeypatch, fail_at):
    """Count the pieces a run computes; raise KeyboardInterrupt at piece ``fail_at`` (outside the run's identity)."""
    calls = {"n": 0}
    check = gs.montecarlo.check_gradient

    def counting(*args):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt
        return check(*args)

    monkeypatch.setattr(gs.montecarlo, "check_gradient", counting)
    return calls


def test_an_interrupted_run_resumes_from_its_checkpoint_with_the_same_result(tmp_path, monkeypatch):
    problem = gs.problems.sbn([3, 3, 2], seed=4)
    g = gs.exact_gradient(problem)
    kw = dict(method="mc", num_samples=50_000, seed=2, device="cpu", chunk_size=4096, references={"b": g}, ms=(10,),
              progress=False, baseline="running")
    calls = _interrupt_at_piece(monkeypatch, None)
    reference = gs.moments(problem, "reinforce", **kw)
    pieces = calls["n"]
    calls = _interrupt_at_piece(monkeypatch, 6)
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        gs.moments(problem, "reinforce", checkpoint=path, **kw)
    assert path.exists()
    calls["n"] = -10**9   # no further interruption; count from the resumed piece on
    resumed = gs.moments(problem, "reinforce", checkpoint=path, **kw)
    assert calls["n"] + 10**9 == pieces - 5  # the resumed run skipped the five pieces already done
    assert torch.equal(resumed.mean, reference.mean) and torch.equal(resumed.var, reference.var)
    assert torch.equal(resumed.statistics.cosine_m["b"][10], reference.statistics.cosine_m["b"][10])
    assert not path.exists()
    calls = _interrupt_at_piece(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        gs.moments(problem, "reinforce", checkpoint=path, **kw)
    with pytest.raises(ValueError, match="belongs to another run"):
        gs.moments(problem, "reinforce", checkpoint=path, **{**kw, "seed": 3})
    assert path.exists()   # a refused checkpoint is kept


def test_float32_draws_are_accumulated_in_float64():
    # The same uniforms rounded down to float32 (never to 1.0): means agree to float32 precision,
    # metrics still work, and the noisy rectifier's Gaussian quantiles stay finite.
    problem = gs.problems.sbn([4, 3, 2], seed=6)
    g = gs.exact_gradient(problem)
    kw = dict(method="mc", num_samples=50_000, seed=1, device="cpu", references={"b": g}, ms=(10,), progress=False)
    m64 = gs.moments(problem, "st", **kw)
    m32 = gs.moments(problem, "st", dtype=torch.float32, **kw)
    assert m32.mean.dtype == torch.float64 and m32.statistics.cosine["b"].dtype == torch.float64
    assert torch.allclose(m32.mean, m64.mean, rtol=1e-4, atol=1e-5)
    assert m32.statistics.cosine["b"][0] / m32.statistics.weight == pytest.approx(
        float(m64.statistics.cosine["b"][0] / m64.statistics.weight), abs=1e-3)
    from gradstats.noise import NoiseStream

    u = NoiseStream(0, (8,), torch.device("cpu"), torch.float32).uniforms(0, 2**16)
    assert u.dtype == torch.float32 and float(u.max()) < 1.0
    nr = gs.moments(problem, "noisy_rectifier", dtype=torch.float32, **kw)
    assert torch.isfinite(nr.mean).all()


@pytest.mark.parametrize("kind", ["sbn", "categorical"])
def test_every_estimator_draws_in_float32(kind):
    """Every registered estimator takes ``dtype=torch.float32`` (RELAX's float64 control networks read float32 draws:
    they raised a dtype mismatch) and gives the float64 draws' mean to float32 rounding: the same uniforms, rounded
    down to float32, so the two means differ by the per-draw arithmetic's rounding alone, far below 1e-5 of the
    largest coordinate."""
    problem = gs.problems.sbn([4, 3, 2], seed=6) if kind == "sbn" else gs.problems.categorical([3, 2], seed=1)
    kw = dict(method="mc", num_samples=2048, seed=1, device="cpu", progress=False)
    for name in gs.estimators.names(kind=kind):
        m64, m32 = gs.moments(problem, name, **kw), gs.moments(problem, name, dtype=torch.float32, **kw)
        assert m32.mean.dtype == torch.float64, name
        assert float((m32.mean - m64.mean).abs().max()) <= 1e-5 * float(m64.mean.abs().max()), name


def test_the_default_chunk_is_small_on_the_cpu_and_sized_by_memory_on_a_gpu():
    from gradstats.montecarlo import DEFAULT_CHUNK_SIZE, default_chunk_size
    cuda = torch.device("cuda")
    assert default_chunk_size(torch.device("cpu"), 160) == DEFAULT_CHUNK_SIZE
    # W1: 16 uniforms and 144 gradient coordinates a draw, 8 GiB -> 2^22 draws; a smaller card's free memory binds
    assert default_chunk_size(cuda, 160, free_bytes=140 * 2**30) == 2**22
    assert default_chunk_size(cuda, 160, free_bytes=8 * 2**30) == 2**19
    assert default_chunk_size(cuda, 10**9, free_bytes=2**30) == DEFAULT_CHUNK_SIZE   # never below the CPU's
