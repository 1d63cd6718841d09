"""GradientStats: gradient statistics of any model, with no Problem; per-draw gradients of a user's loss."""

import importlib
import itertools
import math
import sys
import weakref

import numpy as np
import pandas as pd
import pytest
import torch

import gradstats as gs
import gradstats.functional as gf
from gradstats.metrics import compute_metrics
from gradstats.montecarlo import mc_moments
from gradstats.noise import NoiseStream

N, PIECE, BATCHES = 4096, 128, 32


def _draws(problem, estimator, seed=3):
    """The per-draw gradients mc_moments uses for ``seed``, dense, in pieces of PIECE draws."""
    est = gs.estimators.get(estimator)
    options = gs.estimators.resolve_options(est, problem, {})
    stream = NoiseStream(seed, (est.noise_per_unit(options), problem.num_units), torch.device("cpu"))
    for start in range(0, N, PIECE):
        dense = est.draw(problem, stream.uniforms(start, start + PIECE), **options).dense()
        yield dict(zip(problem.parameters, dense.split([v.numel() for v in problem.parameters.values()], 1)))


@pytest.mark.parametrize("estimator", ["gumbel", "reinforce", "st"])
def test_the_same_draws_give_the_metrics_of_evaluate(estimator):
    problem = gs.problems.sbn([3, 2], seed=1)
    g = gs.exact_gradient(problem)
    parts = g.split([v.numel() for v in problem.parameters.values()])
    stats = gs.GradientStats(reference=dict(zip(problem.parameters, parts)), num_batches=BATCHES // 2)
    for chunk in _draws(problem, estimator):
        stats.update(chunk)
    assert stats.count == N and len(stats._batches) == BATCHES
    mine = stats.to_frame(ms=(1, 10))
    theirs = gs.evaluate(problem, estimator, method="mc", num_samples=N, seed=3, ms=(1, 10), device="cpu")
    theirs = theirs[(theirs.coordinate == "") & ~((theirs.metric == "cosine_m") & (theirs.M > 1))]
    assert set(mine.group) == {"all", *problem.parameters}   # one group per parameter tensor
    overall = mine[mine.group == "all"]
    assert len(overall) == len(theirs[theirs.layer == 0])
    for row in overall.itertuples():
        match = theirs[(theirs.metric == row.metric) & (theirs.layer == 0)
                       & (theirs.M.fillna(-1) == (-1 if pd.isna(row.M) else row.M))]
        assert len(match) == 1, row
        assert row.value == pytest.approx(float(match.value.iloc[0]), rel=1e-10, abs=1e-12), row.metric
    # standard errors: the same 32 contiguous batches as mc_moments with num_batches=32
    m = mc_moments(problem, estimator, num_samples=N, seed=3, num_batches=BATCHES, references={"binary": g},
                   full_covariance=False, device="cpu")
    expected = {(v.metric, v.m): v.stderr for v in compute_metrics(m, problem, g, "binary", (1, 10)) if v.layer == 0
                and not v.coordinate}
    for row in overall.itertuples():
        key = (row.metric, None if pd.isna(row.M) else row.M)
        assert row.stderr == pytest.approx(expected[key], rel=1e-8, abs=1e-14), key


def test_dict_input_keeps_parameter_shapes_and_groups():
    torch.manual_seed(0)
    ref = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    stats = gs.GradientStats(reference=ref)
    draws = {"w": torch.randn(500, 2, 3) + 1.0, "b": torch.randn(500, 2)}
    stats.update(draws)
    assert stats.mean["w"].shape == (2, 3) and stats.var["b"].shape == (2,)
    assert torch.allclose(stats.mean["w"], draws["w"].double().mean(0))
    assert torch.allclose(stats.var["b"], draws["b"].double().var(0))
    assert torch.allclose(stats.mean_stderr["b"], (draws["b"].double().var(0) / 500).sqrt())
    frame = stats.to_frame()
    assert set(frame.group) == {"all", "w", "b"}
    assert set(frame.columns) >= {"metric", "group", "value", "stderr", "M"}
    coords = stats.to_frame(per_coordinate=True)
    bias = coords[(coords.metric == "bias") & (coords.coordinate != "")]
    assert list(bias.group) == ["w"] * 6 + ["b"] * 2
    assert torch.allclose(torch.tensor(bias.value.to_numpy()),
                          torch.cat([draws["w"].double().mean(0).flatten(), draws["b"].double().mean(0)]))


def test_per_coordinate_rows_of_one_flat_tensor():
    torch.manual_seed(1)
    draws = torch.randn(400, 3, dtype=torch.float64)
    stats = gs.GradientStats(reference=torch.zeros(3, dtype=torch.float64)).update(draws)
    coords = stats.to_frame(per_coordinate=True)
    var = coords[(coords.metric == "variance") & (coords.coordinate != "")]
    assert set(var.group) == {"all"} and list(var.coordinate) == ["0", "1", "2"]
    assert torch.allclose(torch.tensor(var.value.to_numpy()), draws.var(0))


def test_merge_and_state_dict_give_back_the_same_statistics():
    torch.manual_seed(1)
    draws = torch.randn(3000, 5, dtype=torch.float64) + torch.arange(5.0, dtype=torch.float64)
    ref = torch.arange(5.0, dtype=torch.float64) + 0.1
    whole = gs.GradientStats(reference=ref).update(draws)
    first, second = gs.GradientStats(reference=ref).update(draws[:1000]), gs.GradientStats(reference=ref).update(draws[1000:])
    merged = first.merge(second)
    assert merged.count == 3000 and first.count == 1000          # merge returns a new object
    assert torch.allclose(merged.mean, whole.mean, rtol=1e-12) and torch.allclose(merged.var, whole.var, rtol=1e-10)
    a, b = merged.to_frame(), whole.to_frame()
    assert a.value.to_numpy() == pytest.approx(b.value.to_numpy(), rel=1e-9)
    restored = gs.GradientStats(reference=ref)
    restored.load_state_dict(whole.state_dict())
    assert restored.to_frame().equals(b)
    restored.update(draws[:10])
    assert restored.count == 3010


def test_an_estimated_reference_widens_the_bias_errors_and_leaves_the_squared_bias_unbiased():
    torch.manual_seed(2)
    draws = torch.randn(20000, 4, dtype=torch.float64)
    ref = torch.zeros(4, dtype=torch.float64)
    exact = gs.GradientStats(reference=ref).update(draws).to_frame()
    noisy = gs.GradientStats(reference=ref, reference_stderr=torch.full((4,), 0.01, dtype=torch.float64)).update(draws)
    noisy = noisy.to_frame()

    def row(frame, metric, m=None):
        sel = frame[(frame.metric == metric) & (frame.group == "all")]
        return sel[sel.M == m].iloc[0] if m is not None else sel.iloc[0]

    assert row(noisy, "bias_norm").stderr > row(exact, "bias_norm").stderr
    assert row(noisy, "mse", 1000).stderr > row(exact, "mse", 1000).stderr
    # the squared bias has 4 * 0.01^2 of reference variance taken out
    assert row(exact, "mse", 1).value - row(noisy, "mse", 1).value == pytest.approx(4e-4, rel=1e-9)


@pytest.mark.parametrize("kwargs, update, match", [
    ({"num_batches": 1}, None, "num_batches"),
    ({"reference_stderr": torch.ones(3)}, None, "without a reference"),
    ({"reference": torch.zeros(3)}, torch.zeros(5, 4), "grads has 4 coordinates"),
    ({}, torch.tensor([[0.0, float("nan")]]), "non-finite value .* draw 0"),
    ({"reference": {"w": torch.zeros(2)}}, {"v": torch.zeros(5, 2)},
     r"grads and the reference differ \(grads lacks \['w'\]; grads has \['v'\], which the reference lacks\)"),
    ({"reference": {"w": torch.zeros(2)}}, {"w": torch.zeros(5, 3)},
     r"differ \(w is \(3,\) in grads, \(2,\) in the reference\)"),
    ({}, {"w": torch.zeros(5, 2), "b": torch.zeros(4, 1)}, "same number of draws"),
    ({}, torch.zeros(2, 5, 3), r"grads: expected a tensor of shape \[B, D\], got \(2, 5, 3\)"),
    ({}, torch.zeros(5, 0), "grads: a gradient needs at least one coordinate"),
    ({"reference": {"w": torch.zeros(0)}}, None, "reference: a gradient needs at least one coordinate"),
])
def test_bad_input_is_named(kwargs, update, match):
    with pytest.raises(ValueError, match=match):
        gs.GradientStats(**kwargs).update(update if update is not None else torch.zeros(2, 3))


def test_a_later_chunk_with_other_parameters_is_named():
    stats = gs.GradientStats().update({"w": torch.zeros(5, 2), "b": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"grads has parameters .* \(grads lacks \['b'\]; w is \(3,\) in grads"):
        stats.update({"w": torch.zeros(5, 3)})
    assert stats.count == 5


def test_no_draws_yet_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="no draws yet"):
        _ = gs.GradientStats().mean


def _model_loss(params, u):
    """A two-layer straight-through network on one input, its loss for one draw of uniforms ``u [2, 3]``."""
    x = torch.tensor([0.5, -1.0, 2.0], dtype=params["w1"].dtype)
    h1 = gf.straight_through(x @ params["w1"], u=u[0])
    h2 = gf.straight_through(h1 @ params["w2"], u=u[1])
    return (h2.sum() - 1.0) ** 2


def test_per_draw_gradients_equal_a_loop_of_backward_passes_and_do_not_depend_on_the_chunk():
    torch.manual_seed(3)
    params = {"w1": torch.randn(3, 3, dtype=torch.float64), "w2": torch.randn(3, 3, dtype=torch.float64)}
    chunks = list(gs.per_draw_gradients(_model_loss, params, 10, noise_shape=(2, 3), chunk_size=4, seed=5))
    batched = {k: torch.cat([c[k] for c in chunks]) for k in params}
    u = torch.rand((10, 2, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for i in range(10):
        leaf = {k: v.clone().requires_grad_() for k, v in params.items()}
        _model_loss(leaf, u[i]).backward()
        for k in params:
            assert torch.allclose(batched[k][i], leaf[k].grad, rtol=1e-12, atol=1e-14), (k, i)
    other = list(gs.per_draw_gradients(_model_loss, params, 10, noise_shape=(2, 3), chunk_size=7, seed=5))
    assert torch.equal(torch.cat([c["w1"] for c in other]), batched["w1"])


@pytest.mark.parametrize("progress", [False, True])
def test_a_chunk_is_let_go_of_before_the_next_is_computed(progress, monkeypatch):
    # the loss runs once per chunk (vmap calls it on the batched draws); each time it records whether a chunk
    # GradientStats.update was given earlier is still alive, which would make the next chunk's gradients take fresh
    # memory (on a CPU, 15% of their time)
    given, alive = [], []
    update = gs.GradientStats.update

    def recording_update(self, grads):
        given.append(weakref.ref(grads["w1"]))
        return update(self, grads)

    def loss(params, u):
        alive.append(sum(r() is not None for r in given))
        return _model_loss(params, u)

    monkeypatch.setattr(gs.GradientStats, "update", recording_update)
    params = {"w1": torch.randn(3, 3, dtype=torch.float64), "w2": torch.randn(3, 3, dtype=torch.float64)}
    gs.gradient_stats(loss, params, 12, noise_shape=(2, 3), chunk_size=4, progress=progress)
    assert len(given) == 3 and alive == [0, 0, 0]


def test_estimate_reference_is_the_mean_of_an_unbiased_estimator_with_its_error():
    # one unit, f(b) = (b - 0.3)^2: the exact gradient is sigma'(a) (f(1) - f(0)) = sigma'(a) * 0.4
    a0 = torch.tensor([0.2], dtype=torch.float64)

    def loo(params, u):
        _, surrogate = gf.reinforce_loo(params["a"], lambda b: ((b - 0.3) ** 2).sum(-1), k=4, u=u)
        return surrogate

    mean, stderr = gs.estimate_reference(loo, {"a": a0}, 20000, noise_shape=(4, 1), chunk_size=5000, seed=1)
    exact = torch.sigmoid(a0) * torch.sigmoid(-a0) * 0.4
    assert abs(float(mean["a"] - exact)) < 4 * float(stderr["a"])   # fails with probability about 6e-5
    assert 0 < float(stderr["a"]) < 0.01


def test_sign_agreement_against_an_estimated_reference_counts_only_resolved_signs():
    draws = torch.tensor([[1.0, -0.5]], dtype=torch.float64).repeat(100, 1) + 0.01 * torch.randn(100, 2, dtype=torch.float64)
    ref = torch.tensor([1.0, 0.001], dtype=torch.float64)
    plain = gs.GradientStats(reference=ref).update(draws).to_frame()
    noisy = gs.GradientStats(reference=ref, reference_stderr=torch.full((2,), 0.01, dtype=torch.float64)).update(draws)
    noisy = noisy.to_frame()
    for frame, expected in ((plain, 0.5), (noisy, 1.0)):
        for metric in ("sign_agreement_mean", "sign_agreement_draw"):
            assert float(frame[frame.metric == metric].value.iloc[0]) == pytest.approx(expected), metric


def test_a_refused_chunk_leaves_the_statistics_as_they_were():
    stats = gs.GradientStats().update(torch.ones(50, 2, dtype=torch.float64))
    before = stats.state_dict()
    bad = torch.zeros(80, 2, dtype=torch.float64)
    bad[63, 1] = float("inf")
    with pytest.raises(ValueError, match="draw 63 of this chunk .draw 113 overall"):
        stats.update(bad)
    after = stats.state_dict()
    assert stats.count == 50 and after["batch_size"] == before["batch_size"]
    assert all(torch.equal(a["mean"], b["mean"]) for a, b in zip(after["batches"], before["batches"]))
    with pytest.raises(ValueError, match="overflow"):
        stats.update(torch.full((4, 2), 1e300, dtype=torch.float64) * torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]))


def test_recycled_running_sums_give_the_statistics_of_fresh_ones():
    """The running sums a commit replaces are written again by later chunks: a stream of unknown length (its
    batches merged on the way) in which every third chunk is followed by a refused one (a NaN) ends with exactly
    the statistics of the same stream without the refused chunks, and of the pairwise accumulators to rounding."""
    from gradstats.accumulators import GradientAccumulator
    from gradstats.gradient_stats import ParameterLayout
    from gradstats.problems import FactoredGradient

    gen = torch.Generator().manual_seed(12)
    draws = torch.randn(600, 7, generator=gen, dtype=torch.float64) * torch.arange(1, 8) + 3.0
    reference = torch.linspace(-1, 1, 7, dtype=torch.float64)
    clean = gs.GradientStats(reference=reference, num_batches=3)
    noisy = gs.GradientStats(reference=reference, num_batches=3)
    expected = GradientAccumulator(ParameterLayout({"all": (7,)}), {"reference": reference})
    for k, start in enumerate(range(0, 600, 25)):
        chunk = draws[start:start + 25]
        clean.update(chunk)
        noisy.update(chunk)
        expected.add(FactoredGradient([chunk], [None]))
        if k % 3 == 0:
            bad = chunk.clone()
            bad[5, 2] = float("nan")
            with pytest.raises(ValueError, match="non-finite"):
                noisy.update(bad)
    for a, b in zip(clean.state_dict()["batches"], noisy.state_dict()["batches"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("mean", "m2", "m3", "m4"))
    got, want = clean._summary(), expected.summary
    assert torch.allclose(got.mean, want.mean, rtol=1e-13) and torch.allclose(got.m2, want.m2, rtol=1e-11)
    assert torch.equal(got.sign_agree["reference"], want.sign_agree["reference"])


def test_unbiasedness_test_carries_an_estimated_references_error():
    """Unbiased draws (the gradient plus standard normal noise, D = 20) against a reference estimated from as many
    other draws: 200 seeded runs at level 0.05. With the reference's standard error the test rejects in at most
    15% of runs (about 6-8% expected: Holm with normal p-values from estimated errors; beyond 15% by chance about
    1e-3); without it, the reference's noise counts as bias and it rejects in over 30%."""
    d, n = 20, 2_000
    g = torch.linspace(-1, 1, d, dtype=torch.float64)
    rejected = {"with": 0, "without": 0}
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        draws = g + torch.randn(n, d, generator=gen, dtype=torch.float64)
        ref = g + torch.randn(n, d, generator=gen, dtype=torch.float64)
        carried = gs.GradientStats(reference=ref.mean(0), reference_stderr=ref.std(0) / n**0.5).update(draws)
        ignored = gs.GradientStats(reference=ref.mean(0)).update(draws)
        rejected["with"] += carried.unbiasedness_test().verdict == "rejected"
        rejected["without"] += ignored.unbiasedness_test().verdict == "rejected"
    assert rejected["with"] <= 30 and rejected["without"] > 60, rejected


def test_unbiasedness_test_needs_a_reference():
    with pytest.raises(ValueError, match="unbiasedness_test needs a reference"):
        gs.GradientStats().update(torch.zeros(4, 3, dtype=torch.float64)).unbiasedness_test()


def _brute_group_cosines(draws: torch.Tensor, reference: torch.Tensor, m: int, sizes) -> torch.Tensor:
    """``[G, L + 1]`` cosines of the means of complete groups of ``m`` consecutive draws, written out."""
    groups = draws[: (draws.shape[0] // m) * m].reshape(-1, m, draws.shape[1]).mean(1)
    out = [torch.nn.functional.cosine_similarity(groups, reference[None], dim=1)]
    start = 0
    for n in sizes:
        out.append(torch.nn.functional.cosine_similarity(groups[:, start:start + n], reference[None, start:start + n],
                                                         dim=1))
        start += n
    return torch.stack(out, 1)


@pytest.mark.parametrize("chunks", [(1, 1, 1, 97, 3, 200), (7,) * 43, (301,)])
def test_cosine_of_the_mean_of_m_draws_is_that_of_disjoint_groups_whatever_the_chunks(chunks):
    gen = torch.Generator().manual_seed(4)
    draws = torch.randn(sum(chunks), 5, generator=gen, dtype=torch.float64) + torch.tensor([1.0, -1, 0.5, 0, 2])
    reference = torch.tensor([1.0, -1, 0.5, 0.2, 2], dtype=torch.float64)
    ref = {"w": reference[:3], "b": reference[3:]}
    stats = gs.GradientStats(reference=ref, ms=(4, 10, 1000))
    start = 0
    for n in chunks:
        stats.update({"w": draws[start:start + n, :3], "b": draws[start:start + n, 3:]})
        start += n
    frame = stats.to_frame(ms=(1,))
    for m in (4, 10):
        cos = _brute_group_cosines(draws, reference, m, (3, 2))
        rows = frame[(frame.metric == "cosine_m") & (frame.M == m)].set_index("group")
        for column, group in enumerate(("all", "w", "b")):
            assert rows.value[group] == pytest.approx(float(cos[:, column].mean()), rel=1e-12)
            assert rows.stderr[group] == pytest.approx(float(cos[:, column].std() / len(cos) ** 0.5), rel=1e-9)
    assert frame[(frame.metric == "cosine_m") & (frame.M == 1000)].value.isna().all()   # no complete group yet


def test_equal_cost_rows_carry_their_loss_evaluations():
    gen = torch.Generator().manual_seed(5)
    reference = torch.ones(3, dtype=torch.float64)
    stats = gs.GradientStats(reference=reference, loss_evals_per_draw=3, budgets=(30, 300))
    stats.update(reference + torch.randn(900, 3, generator=gen, dtype=torch.float64))
    assert stats.ms == (10, 100)
    frame = stats.to_frame(ms=(1,))
    rows = frame[frame.metric.isin(["mse", "cosine_m"])]
    assert sorted(set(rows.M)) == [1, 10, 100]
    assert (rows.loss_evals == 3 * rows.M).all()
    assert frame[~frame.metric.isin(["mse", "cosine_m"])].loss_evals.isna().all()
    # without the cost per draw there is no cost column to read, and budgets cannot be set
    plain = gs.GradientStats(reference=reference).update(torch.ones(4, 3, dtype=torch.float64)).to_frame()
    assert plain.loss_evals.isna().all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(budgets=(10,)), "give loss_evals_per_draw too"),
    (dict(budgets=(2,), loss_evals_per_draw=4), "budget 2 is below the cost of one draw"),
    (dict(loss_evals_per_draw=0), "loss_evals_per_draw must be"),
    (dict(ms=(0,)), "ms entries must be"),
])
def test_bad_equal_cost_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gs.GradientStats(reference=torch.zeros(2), **kwargs)


def test_group_cosines_need_a_reference():
    with pytest.raises(ValueError, match="needs a reference"):
        gs.GradientStats(ms=(10,))


def test_merged_statistics_add_the_complete_groups():
    gen = torch.Generator().manual_seed(6)
    reference = torch.ones(4, dtype=torch.float64)
    a = gs.GradientStats(reference=reference, ms=(5,)).update(torch.randn(23, 4, generator=gen, dtype=torch.float64))
    b = gs.GradientStats(reference=reference, ms=(5,)).update(torch.randn(12, 4, generator=gen, dtype=torch.float64))
    merged = a.merge(b)
    assert merged._groups[5].groups == 4 + 2
    total = a._groups[5].total + b._groups[5].total
    assert torch.allclose(merged._groups[5].total, total, rtol=0, atol=0)
    with pytest.raises(ValueError, match="different ms"):
        a.merge(gs.GradientStats(reference=reference, ms=(4,)))


def test_structural_zeros_are_left_out_of_sign_agreement_and_counted():
    # coordinate 2: 0 in the reference and in every draw (a border pixel's weight); coordinate 3: 0 in the
    # reference only
    reference = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64)
    draws = torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, -1.0, 0.0, 0.5], [3.0, -3.0, 0.0, 0.0]], dtype=torch.float64)
    stats = gs.GradientStats(reference=reference).update(draws)
    frame = stats.to_frame().set_index("metric")
    assert frame.value["sign_agreement_draw"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert frame.n_excluded["sign_agreement_draw"] == 1 and frame.n_excluded["sign_agreement_mean"] == 1
    assert frame.value["sign_agreement_mean"] == pytest.approx(2 / 3)
    assert pd.isna(frame.n_excluded["cosine_draw"])
    counted = stats.to_frame(structural_zeros="count").set_index("metric")
    assert counted.value["sign_agreement_draw"] == pytest.approx((1 + 2 / 3 + 1 + 2 / 3) / 4)
    assert counted.n_excluded["sign_agreement_draw"] == 0
    with pytest.raises(ValueError, match="structural_zeros must be one of"):
        stats.to_frame(structural_zeros="drop")


def test_the_eight_input_sorting_network_sorts_every_input():
    """SORT8 sorts all 256 inputs of 0s and 1s, so it sorts every input (the 0-1 principle: Knuth, TAOCP vol. 3,
    section 5.3.4, Theorem Z)."""
    from gradstats.numerics import SORT8

    for bits in itertools.product((0, 1), repeat=8):
        values = list(bits)
        for a, b in SORT8:
            values[a], values[b] = min(values[a], values[b]), max(values[a], values[b])
        assert values == sorted(bits), bits


@pytest.mark.parametrize("k", range(1, 9))
def test_lower_median8_is_the_median_torch_gives(k):
    """lower_median8 of 1 to 8 rows equals Tensor.median over them (the lower of the two middle values for an even
    count), value for value, on columns with ties, signed zeros and infinities; other counts of rows are refused."""
    from gradstats.numerics import lower_median8

    gen = torch.Generator().manual_seed(k)
    rows = torch.randn(k, 5_000, generator=gen, dtype=torch.float64)
    rows[:, :1_000] = torch.randint(-2, 3, (k, 1_000), generator=gen).to(torch.float64)   # ties
    rows[0, 1_000:1_100] = -0.0
    rows[-1, 1_100:1_200] = math.inf
    rows[0, 1_200:1_300] = -math.inf
    assert torch.equal(lower_median8(rows), rows.median(0).values)
    with pytest.raises(ValueError, match="1 to 8 rows"):
        lower_median8(torch.zeros(9 if k == 8 else 0, 3))


def _needs_a_compiler(mode: str) -> None:
    """Skip where the mode's compiler is missing: the C kernel needs a C compiler, torch.compile a C++ one (the
    fallback itself is tested below with the compilers taken away)."""
    from gradstats import native
    from gradstats.chunk_sums import ChunkSums

    try:
        if mode == "native":
            native.load()
        elif mode == "compiled":
            ChunkSums("compiled").columns([torch.ones(2, 3)], torch.zeros(3, dtype=torch.float64),
                                          torch.zeros(6, 3, dtype=torch.float64), (0, 3))
    except Exception as err:   # NativeUnavailable, or torch.compile's failures (no common type)
        pytest.skip(f"{mode}: no compiler here ({type(err).__name__})")


@pytest.mark.parametrize("mode", ["auto", "native", "compiled", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_pass_sums_equal_the_pairwise_accumulators_to_rounding(dtype, mode, monkeypatch):
    """The chunk sums (shifted power sums, sign counts, per-draw cosines) folded into summaries give what the
    accumulators' pairwise updates give on the same draws (float32 draws read as they are, float64 sums), with a
    mean 300 standard deviations from 0, a Cauchy-tailed coordinate and a draw that is 0."""
    module = sys.modules["gradstats.gradient_stats"]   # the module, not the function gs.gradient_stats
    from gradstats.accumulators import GradientAccumulator
    from gradstats.chunk_sums import ChunkSums
    from gradstats.gradient_stats import ParameterLayout
    from gradstats.problems import FactoredGradient

    _needs_a_compiler(mode)
    monkeypatch.setattr(module, "_CHUNK_SUMS", ChunkSums(mode))
    gen = torch.Generator().manual_seed(8)
    n, d = 1000, 6
    draws = torch.randn(n, d, generator=gen, dtype=torch.float64)
    draws[:, 0] += 300.0
    draws[:, 1] = torch.tan(torch.pi * (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5))   # Cauchy
    draws[:, 5] = 0.0
    draws[17] = 0.0   # a draw that is 0: its squared norm leaves the safe range, and its cosine is 0
    draws = draws.to(dtype)
    reference = torch.tensor([300.0, 0.5, -1.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    layout = ParameterLayout({"w": (4,), "b": (2,)})
    stats = gs.GradientStats(reference={"w": reference[:4], "b": reference[4:]}, num_batches=4)
    expected = GradientAccumulator(layout, {"reference": reference})
    for start in range(0, n, 37):
        chunk = draws[start:start + 37]
        stats.update({"w": chunk[:, :4], "b": chunk[:, 4:]})
        expected.add(FactoredGradient([chunk[:, :4], chunk[:, 4:]], [None, None]))
    got, want = stats._summary(), expected.summary
    assert got.count == want.count == n
    for name in ("mean", "m2", "m3", "m4"):
        a, b = getattr(got, name), getattr(want, name)
        scale = {"mean": 1.0, "m2": 1.0, "m3": 1.5, "m4": 2.0}[name]
        tolerance = 1e-10 * (want.m2.clamp_min(1e-300) ** scale) + 1e-12 * b.abs()
        assert bool(((a - b).abs() <= tolerance).all()), (name, a, b)
    assert torch.equal(got.sign_agree["reference"], want.sign_agree["reference"])
    assert torch.allclose(got.cosine["reference"], want.cosine["reference"], rtol=1e-12, atol=1e-12)
    assert torch.equal(got.descent["reference"], want.descent["reference"])


def test_a_machine_without_a_compiler_falls_back_to_eager_sums_with_one_warning_each(monkeypatch, tmp_path):
    """No C compiler: the C kernel cannot be built (one warning), torch.compile fails (another), and the eager
    sums give the same statistics; "native" and "compiled" raise instead of falling back."""
    from gradstats.chunk_sums import ChunkSums
    from gradstats.native import NativeUnavailable

    module = sys.modules["gradstats.gradient_stats"]

    def broken(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sums = ChunkSums("auto")
    monkeypatch.setattr(module, "_CHUNK_SUMS", sums)
    gen = torch.Generator().manual_seed(9)
    draws = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    with pytest.warns(RuntimeWarning) as caught:
        stats = gs.GradientStats(reference=torch.ones(4, dtype=torch.float64)).update(draws)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "C kernel could not be built (no C compiler" in messages[0]
    assert "torch.compile failed on cpu" in messages[1] and "no C++ compiler found" in messages[1]
    assert sums.mode == "eager"
    with pytest.raises(NativeUnavailable, match="no C compiler"):
        ChunkSums("native").chunk([draws], draws[0], [None], [0, 50], None)
    assert torch.allclose(stats.mean, draws.mean(0), rtol=1e-14, atol=1e-15)
    assert torch.allclose(stats.var, draws.var(0), rtol=1e-12)
    with pytest.raises(ValueError, match="mode must be one of"):
        ChunkSums("sometimes")
    strict = ChunkSums("compiled")
    with pytest.raises(RuntimeError, match="no C.. compiler"):
        strict.columns([draws], draws[0], torch.zeros(6, 4, dtype=torch.float64), (0, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bounds", [[0, 1, 10, 23], [0, 5, 70, 75]])
def test_the_c_kernel_gives_the_eager_sums_piece_by_piece(dtype, bounds):
    """ChunkSums.chunk by the C kernel against the eager arithmetic, on a chunk of 23 or 75 rows in three groups of
    13, 11,000 and 8,987 columns (the last always float64; 20,000 in all: none a multiple of the kernel's strips,
    at one thread a block of 16,384 columns and a part, cut across groups) cut into pieces of 1, 9 and 13 rows, or of 5, 65
    (three of the kernel's groups of rows) and 5, the middle one with running sums, zeros and signed values; with
    and without a reference; at 1 and 3 threads; the sums in new tensors, and in place of the running sums. The
    per-draw cosines and descent counts the kernel sums per piece equal GradientStats' own from the eager dots,
    and a squared norm outside ``safe``, or one that is 0 where every square of a group of a draw underflowed,
    leaves them to the caller (on the eager path too)."""
    from gradstats.chunk_sums import NUM_SUMS, ChunkSums
    from gradstats.gradient_stats import cosines_from_dots

    _needs_a_compiler("native")
    gen = torch.Generator().manual_seed(10)
    rows = bounds[-1]
    x = torch.randn(rows, 20_000, generator=gen, dtype=torch.float64)
    x[:, :7] = 0.0
    x[3, 100:200] = -0.0
    x[5, :13] = 0.0   # a draw that is 0 in the first group: its cosine there is 0
    x = x.to(dtype)
    shift = x.to(torch.float64).median(0).values
    parts = [x[:, :13].contiguous(), x[:, 13:11_013].contiguous(), x[:, 11_013:].to(torch.float64).contiguous()]
    running = [None, torch.randn(NUM_SUMS, 20_000, generator=gen, dtype=torch.float64), None]
    running[1][4:] = torch.randint(0, 50, (2, 20_000), generator=gen).to(torch.float64)   # counts so far
    reference = torch.randn(20_000, generator=gen, dtype=torch.float64)
    norms2 = torch.stack([reference[a:b].square().sum() for a, b in ((0, 13), (13, 11_013), (11_013, 20_000))])
    reference_norms = torch.cat([norms2.sum().reshape(1), norms2]).sqrt()
    eager = ChunkSums("eager")
    threads = torch.get_num_threads()
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            for ref in (reference, None):
                got = ChunkSums("native").chunk(parts, shift, running, bounds, ref, None, reference_norms, (1e-300, 1e300))
                want = eager.chunk(parts, shift, running, bounds, ref)
                for a, b in zip(got.sums, want.sums):
                    assert a.shape == (NUM_SUMS, 20_000)
                    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
                    assert torch.equal(a[4:], b[4:])                  # the sign counts exactly
                assert got.check == pytest.approx(want.check, rel=1e-12)
                assert want.check == pytest.approx(float(sum(s[3].sum() for s in want.sums)), rel=1e-12)
                if ref is None:
                    assert got.inner is None and got.norm2 is None and got.cosines is None
                    continue
                in_place = running[1].clone()
                alone = ChunkSums("native").chunk(parts, shift, [None, in_place, None], bounds, ref, [None, in_place, None])
                assert alone.sums[1] is in_place and torch.equal(in_place, got.sums[1])
                assert got.inner.shape == got.norm2.shape == (rows, 3)
                assert torch.allclose(got.inner, want.inner, rtol=1e-12, atol=1e-12)
                assert torch.allclose(got.norm2, want.norm2, rtol=1e-12)
                cos, inner_all = cosines_from_dots(want.inner, want.norm2, reference_norms)
                assert got.cosines.shape == got.descent.shape == (3, 4)
                for p, (a, b) in enumerate(zip(bounds, bounds[1:])):
                    assert torch.allclose(got.cosines[p], cos[a:b].sum(0), rtol=1e-12, atol=1e-12)
                    assert torch.equal(got.descent[p], (inner_all[a:b] > 0).sum(0, dtype=torch.float64))
                assert float(cos[5, 1]) == 0.0
                tight = ChunkSums("native").chunk(parts, shift, running, bounds, ref, None, reference_norms,
                                                  (1e-300, float(want.norm2.max()) / 2))
                assert tight.cosines is None and tight.descent is None   # a group of a draw leaves the safe range
                assert torch.allclose(tight.norm2, want.norm2, rtol=1e-12)
                under = [x.clone() for x in parts]
                under[2][2] = 1e-170 * under[2][2].sign()   # every square of the float64 group of draw 2 is 0
                for path in (ChunkSums("native"), eager):
                    lost = path.chunk(under, shift, running, bounds, ref, None, reference_norms, (1e-300, 1e300))
                    assert lost.cosines is None and float(lost.norm2[2, 2]) == 0.0
    finally:
        torch.set_num_threads(threads)
    assert running[1] is not None and not any(r is o for r, o in zip(running, got.sums))   # new tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_c_kernel_reads_and_writes_sums_with_rows_of_any_stride(dtype):
    """The C kernel on 40 rows in groups of 4,096, 1,000, 37 and 213 columns (5,346 in all; the first three start
    on whole vectors, the last not), cut into a piece of 3 rows with no running sums and one of 37 (two of the
    kernel's groups of rows) whose running sums are contiguous (rows 5,346 values apart) while its output has rows
    padded to 5,352 (:func:`~gradstats.chunk_sums.new_sums`: the sums it streams past the cache), and in place of
    its running sums (contiguous, then padded); at 1 and 2 threads. The sums equal the eager arithmetic's (the
    counts exactly): a row read or written at the other buffer's stride, or a streamed vector out of place, fails."""
    from gradstats.chunk_sums import NUM_SUMS, ChunkSums, new_sums

    _needs_a_compiler("native")
    gen = torch.Generator().manual_seed(13)
    sizes = (4096, 1000, 37, 213)
    dim = sum(sizes)
    x = torch.randn(40, dim, generator=gen, dtype=torch.float64)
    x[:, 10:20] = 0.0
    x = x.to(dtype)
    shift = x.to(torch.float64).median(0).values
    parts = [p.contiguous() for p in x.split(sizes, 1)]
    running = torch.randn(NUM_SUMS, dim, generator=gen, dtype=torch.float64)
    running[4:] = torch.randint(0, 50, (2, dim), generator=gen).to(torch.float64)
    padded = new_sums(dim)
    padded.copy_(running)
    assert padded.stride(0) == 5352 and running.stride(0) == dim
    bounds = [0, 3, 40]
    want = ChunkSums("eager").chunk(parts, shift, [None, running], bounds, None)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            out = new_sums(dim)
            got = ChunkSums("native").chunk(parts, shift, [None, running], bounds, None, [None, out])
            assert got.sums[1] is out and got.sums[0].stride(0) == 5352
            in_place = running.clone() if t == 1 else new_sums(dim).copy_(padded)   # contiguous, then padded
            alone = ChunkSums("native").chunk(parts, shift, [None, in_place], bounds, None, [None, in_place])
            for sums in (got.sums, [got.sums[0], alone.sums[1]]):
                for a, b in zip(sums, want.sums):
                    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
                    assert torch.equal(a[4:], b[4:])
    finally:
        torch.set_num_threads(threads)


def _mixed_chunk(groups: int, seed: int = 12):
    """A chunk of 23 draws of 600 coordinates in ``groups`` groups (the last float64, the others float32), cut into
    pieces of 1, 9 and 13 rows (the middle one with running sums), with its shift and a reference."""
    from gradstats.chunk_sums import NUM_SUMS

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(23, 600, generator=gen, dtype=torch.float64)
    x[:, :7] = 0.0
    edges = torch.linspace(0, 600, groups + 1).round().long().tolist()
    parts = [x[:, a:b].float().contiguous() for a, b in zip(edges, edges[1:])]
    parts[-1] = parts[-1].to(torch.float64)
    running = [None, torch.randn(NUM_SUMS, 600, generator=gen, dtype=torch.float64), None]
    running[1][4:] = torch.randint(0, 50, (2, 600), generator=gen).to(torch.float64)
    shift = torch.cat(parts, 1).median(0).values
    return parts, shift, running, [0, 1, 10, 23], torch.randn(600, generator=gen, dtype=torch.float64)


def test_the_compiled_sums_give_the_eager_sums_piece_by_piece():
    """ChunkSums.chunk compiled (one call per kernel for every group, the groups read where they lie) against the
    eager arithmetic (the groups side by side): the same sums per piece, sign counts exactly, and per-draw dots
    and norms per group, on five groups of mixed precision; fresh pieces of one size share one call. Given the
    reference's norms, both give each piece's sums of the per-draw cosines and descent counts (from the rows
    call), equal to GradientStats' formula on the dots, with a draw that is 0 in one group and in all; a draw
    whose squared norm leaves ``safe`` leaves them to the caller."""
    from gradstats.chunk_sums import ChunkSums, cosines_from_dots

    _needs_a_compiler("compiled")
    parts, shift, running, bounds, reference = _mixed_chunk(5)
    parts[1][4] = 0.0   # a draw that is 0 in one group
    for p in parts:
        p[6] = 0.0      # and one that is 0 everywhere
    edges = (0, *itertools.accumulate(p.shape[1] for p in parts))
    norms2 = torch.stack([reference[a:b].square().sum() for a, b in zip(edges, edges[1:])])
    reference_norms = torch.cat([norms2.sum().reshape(1), norms2]).sqrt()
    fresh = [p[:21] for p in parts]   # three fresh pieces of 7 rows: one batched call
    for chunk, pieces, cuts in ((parts, running, bounds), (fresh, [None] * 3, [0, 7, 14, 21])):
        want = ChunkSums("eager").chunk(chunk, shift, pieces, cuts, reference)
        got = ChunkSums("compiled").chunk(chunk, shift, pieces, cuts, reference)
        for a, b in zip(got.sums, want.sums):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
            assert torch.equal(a[4:], b[4:])
        assert got.inner.shape == got.norm2.shape == (cuts[-1], 5)
        assert torch.allclose(got.inner, want.inner, rtol=1e-12, atol=1e-12)
        assert torch.allclose(got.norm2, want.norm2, rtol=1e-12)
        assert got.check == pytest.approx(want.check, rel=1e-12)
        assert got.cosines is None and want.cosines is None   # no reference norms: the caller's
        cos, inner_all = cosines_from_dots(want.inner, want.norm2, reference_norms)
        for mode in ("eager", "compiled"):
            sums = ChunkSums(mode)
            full = sums.chunk(chunk, shift, pieces, cuts, reference, None, reference_norms, (0.0, math.inf))
            assert full.cosines.shape == full.descent.shape == (len(cuts) - 1, 6)
            for p, (a, b) in enumerate(zip(cuts, cuts[1:])):
                assert torch.allclose(full.cosines[p], cos[a:b].sum(0), rtol=1e-12, atol=1e-12)
                assert torch.equal(full.descent[p], (inner_all[a:b] > 0).sum(0, dtype=torch.float64))
            assert float(cos[4, 2]) == 0.0 and bool((cos[6] == 0).all())
            tight = sums.chunk(chunk, shift, pieces, cuts, reference, None, reference_norms,
                               (1e-300, float(want.norm2.max()) / 2))
            assert tight.cosines is None and tight.descent is None
            assert torch.allclose(tight.norm2, want.norm2, rtol=1e-12)
            unchecked = sums.chunk(chunk, shift, pieces, cuts, reference, None, reference_norms, None)
            assert torch.equal(unchecked.cosines, full.cosines)   # float32 chunks: not checked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_cpu_blocks_give_the_sums_of_the_whole_chunk(dtype):
    """The eager CPU path walks a chunk in blocks of rows and columns (here 100 rows of 9,000 columns in two
    groups: four blocks of rows, the last partial, times three of columns, the last partial, cut across the
    groups); its sums equal those of the whole chunk at once to rounding, sign counts exactly; so do the sums of
    the chunk's four batches of 25 draws, batch by batch."""
    from gradstats.chunk_sums import _BLOCK_ELEMENTS, _eager_batched_column_sums, _eager_column_sums, _sums

    gen = torch.Generator().manual_seed(13)
    x = (torch.randn(100, 9_000, generator=gen, dtype=torch.float64) + 3.0).to(dtype)
    x[:, :5] = 0.0
    assert 100 > 3 * (_BLOCK_ELEMENTS // 4096) and 9_000 > 2 * 4096   # several blocks each way
    parts = [x[:, :5_000].contiguous(), x[:, 5_000:].contiguous()]
    shift = x[:8].to(torch.float64).median(0).values
    running = torch.randn(6, 9_000, generator=gen, dtype=torch.float64)
    running[4:] = torch.randint(0, 50, (2, 9_000), generator=gen).to(torch.float64)   # counts so far
    got = _eager_column_sums(parts, shift, running, (0, 5_000, 9_000))
    want = running + _sums(x, shift, 0)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-9)
    assert torch.equal(got[4:], want[4:])
    batches = _eager_batched_column_sums([p.reshape(4, 25, -1) for p in parts], shift, (0, 5_000, 9_000))
    want = _sums(x.reshape(4, 25, -1), shift, 1)
    assert batches.shape == (4, 6, 9_000)
    assert torch.allclose(batches, want, rtol=1e-12, atol=1e-9)
    assert torch.equal(batches[:, 4:], want[:, 4:])


def test_eager_sums_launch_as_many_kernels_for_twelve_groups_as_for_two():
    """Without a compiler (on an accelerator: where launches are the cost) a chunk costs a fixed number of torch
    operations however many groups it has: the groups are read side by side, the per-group dots and norms are
    two matrix products. Counted by torch's dispatcher on the CPU, where the chunk fits one cache block."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from gradstats.chunk_sums import ChunkSums

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for groups in (2, 12):
        parts, shift, running, bounds, reference = _mixed_chunk(groups)
        parts = [p.to(torch.float64) for p in parts]   # one precision: the groups differ in number alone
        sums = ChunkSums("eager")
        sums.chunk(parts, shift, running, bounds, reference)   # builds the groups' indicator once
        with Count() as count:
            result = sums.chunk(parts, shift, running, bounds, reference)
        assert result.inner.shape == (23, groups)
        counts.append(count.calls)
    assert counts[0] == counts[1], counts


def test_a_stream_of_known_length_starts_at_its_final_batch_size_with_the_same_statistics():
    """gradient_stats knows its number of draws: the jackknife batches start at the size a chunk-by-chunk stream
    reaches by its end (none merged on the way), so the batches are the same and every statistic and standard
    error agrees to float64 rounding; a stream that already has draws is left as it is."""
    gen = torch.Generator().manual_seed(11)
    draws = torch.randn(1000, 5, generator=gen, dtype=torch.float64) + torch.arange(5, dtype=torch.float64)
    reference = torch.ones(5, dtype=torch.float64)
    streamed = gs.GradientStats(reference=reference, num_batches=8)
    known = gs.GradientStats(reference=reference, num_batches=8)._expect(1000)
    assert known._batch_size == 64                               # ceil(1000 / 64) = 16 <= 2 * 8 < ceil(1000 / 32)
    for start in range(0, 1000, 24):
        streamed.update(draws[start:start + 24])
        known.update(draws[start:start + 24])
    assert streamed._batch_size == known._batch_size and len(streamed._batches) == len(known._batches) == 16
    a, b = streamed.to_frame(), known.to_frame()
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    numeric = a.select_dtypes("number").columns
    assert np.allclose(a[numeric].to_numpy(dtype=float), b[numeric].to_numpy(dtype=float), rtol=1e-10, atol=1e-12,
                       equal_nan=True)
    busy = gs.GradientStats(num_batches=8).update(draws[:10])
    assert busy._expect(1000)._batch_size == busy._batch_size


def _bytes_per_coordinate_per_batch(stats):
    return stats._held_bytes() / len(stats._batches) / stats.layout.num_parameters


def test_memory_per_batch_is_what_the_guide_says():
    """docs/guides/own_model.rst: 48 bytes a coordinate a batch while streaming (six float64 running sums; every
    batch starts from one shared empty summary), 88 once the metrics have been read."""
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(640, 1000, generator=gen, dtype=torch.float64)
    stats = gs.GradientStats(reference=torch.ones(1000, dtype=torch.float64))._expect(640)
    for chunk in draws.split(32):
        stats.update(chunk)
    assert len(stats._batches) >= 20
    assert _bytes_per_coordinate_per_batch(stats) == pytest.approx(48, abs=0.5)
    stats.to_frame()
    assert _bytes_per_coordinate_per_batch(stats) == pytest.approx(88, abs=0.5)


def test_a_covariance_that_cannot_fit_is_refused_before_anything_changes(monkeypatch):
    stats = gs.GradientStats(full_covariance=True)
    module = importlib.import_module("gradstats.gradient_stats")   # gs.gradient_stats is the function
    monkeypatch.setattr(module, "_free_memory", lambda device: 10 * 8 * 100 * 100)   # ten [100, 100] float64 arrays
    chunk = torch.randn(4, 300, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"full_covariance: the \[D, D\] covariance of D = 300 coordinates"):
        stats.update(chunk)
    assert stats.count == 0
    small = gs.GradientStats(full_covariance=True).update(torch.randn(4, 100, dtype=torch.float64))
    assert small.count == 4


@pytest.mark.parametrize("scaled", ["draws", "draws and reference"])
def test_a_group_whose_squares_underflow_beside_another_keeps_its_cosines(scaled):
    """A parameter group about 1e-160 to 1e-300 times another (its draws, or its draws and its reference part),
    whose squares underflow (in part, or all to 0 at 1e-170) where the whole draw's do not: its per-draw cosine and
    the cosine of the mean of 10 draws stay what they are at scale 1 (each group is scaled alone), and the whole
    draw's are those at 1e-100, where the small group no longer counts. Before, the small group's cosine read 0.4210
    at 1e-160 and 0 at 1e-200, against 0.4218."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 5, generator=gen, dtype=torch.float64) + 1.0
    b = torch.randn(2000, 4, generator=gen, dtype=torch.float64) + 0.5
    ref_a, ref_b = torch.ones(5, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)

    def cosines(scale):
        stats = gs.GradientStats(reference={"a": ref_a, "b": ref_b * (scale if scaled != "draws" else 1.0)}, ms=(1, 10))
        for rows in torch.arange(2000).split(500):
            stats.update({"a": a[rows], "b": b[rows] * scale})
        frame = stats.to_frame()
        frame = frame[(frame.metric == "cosine_draw") | ((frame.metric == "cosine_m") & (frame.M == 10))]
        return {(r.metric, r.group): r.value for r in frame.itertuples()}

    one, small = cosines(1.0), cosines(1e-100)
    assert len(one) == 6 and 0.42 < one[("cosine_draw", "b")] < 0.43
    for scale in (1e-160, 1e-170, 1e-200, 1e-300):
        got = cosines(scale)
        for key, value in got.items():
            want = (one if key[1] != "all" else small)[key]
            assert value == pytest.approx(want, rel=1e-12), (scale, key)


def test_draws_zero_in_one_group_keep_their_whole_cosine_at_a_subnormal_scale():
    """Draws and reference times 2^-1030 (entries of about 1e-310, subnormal, whose power of two is near -1030),
    with group ``a`` 0 in every other draw: the whole draw's cosine is taken at its nonzero group's power, and its
    zero group is not scaled to it. Before, it was: its squared norm, 0, times 2^2060 (in two halves, the first
    2^1030 = inf) was NaN, and the mean per-draw cosine over all groups read 0.0184 where it is 0.0138. The cosines
    are those at scale 1 to the entries' 44 bits."""
    gen = torch.Generator().manual_seed(0)
    ref = {"a": torch.randn(3, generator=gen, dtype=torch.float64), "b": torch.randn(4, generator=gen, dtype=torch.float64)}
    draws = {"a": torch.randn(64, 3, generator=gen, dtype=torch.float64),
             "b": torch.randn(64, 4, generator=gen, dtype=torch.float64)}
    draws["a"][::2] = 0.0

    def cosines(scale):
        stats = gs.GradientStats(reference={k: v * scale for k, v in ref.items()}, ms=(1, 4))
        for rows in torch.arange(64).split(16):
            stats.update({k: v[rows] * scale for k, v in draws.items()})
        frame = stats.to_frame()
        frame = frame[frame.metric.isin(["cosine_draw", "cosine_m", "descent_draw"])]
        return {(r.metric, r.group, r.M): r.value for r in frame.itertuples()}

    one, tiny = cosines(1.0), cosines(2.0**-1030)
    assert len(one) >= 9 and one.keys() == tiny.keys()
    for key, value in tiny.items():
        assert value == pytest.approx(one[key], rel=1e-11, abs=1e-13), key
