"""Per-draw metrics, jackknife errors and ``gs.evaluate`` against brute-force computations."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gradstats as gs
from gradstats import enumeration
from gradstats.accumulators import cosines_by_layer
from gradstats.metrics import compute_metrics, nonzero_coordinates, structural_zero_coordinates
from gradstats.problems import FactoredGradient
from gradstats.testing import networks


def brute_force(dense: torch.Tensor, w: torch.Tensor, g: torch.Tensor, layers: torch.Tensor,
                signs: torch.Tensor | None = None):
    """Weighted per-draw metrics from materialised gradients [B, D]. A draw's raw sign (``signs``, where given:
    see :func:`_exact_signs`; else ``dense.sign()``) is compared with the reference's sign, in which entries up to
    SIGN_TOLERANCE * max |g| are rounding, so 0 (an exact gradient of 8e-20 where its value is 0 counts as 0).
    Cosines are taken of rows rescaled to a largest entry of 1, so that gradients of 1e-170 keep theirs."""
    w = w / w.sum()
    ref_sign = torch.where(g.abs() <= gs.numerics.SIGN_TOLERANCE * g.abs().max(), 0.0, g.sign())
    agree = ((dense.sign() if signs is None else signs) == ref_sign).double()
    out = {"sign_agree": w @ agree}
    for layer in range(int(layers.max()) + 1):
        sel = torch.ones_like(layers, dtype=torch.bool) if layer == 0 else layers == layer
        d, r = _unit_rows(dense[:, sel]), g[sel]
        r = r / r.abs().max() if bool(r.any()) else r
        inner = d @ r
        norms = d.norm(dim=1) * r.norm()
        cos = torch.where(norms > 0, inner / torch.where(norms > 0, norms, 1.0), 0.0)
        out[("cos", layer)] = float(w @ cos)
        out[("descent", layer)] = float(w @ (inner > 0).double())
    return out


def _normal_range(gradient: FactoredGradient, per_draw: bool = False) -> FactoredGradient:
    """The same per-draw gradients times a power of two that brings the largest delta near 1, before they are
    multiplied out: deltas of 5e-324 (a loss coefficient that small) keep their ratios, which their subnormal
    products with the inputs would round away. One power for the chunk (means of draws keep their weights), or
    with ``per_draw`` one for each draw (a draw's cosine is unchanged, and a draw whose deltas are subnormal beside
    others' normal ones keeps its digits too)."""
    rows = torch.stack([d.abs().reshape(len(d), -1).amax(1) for d in gradient.deltas], 1).amax(1)   # [B]
    top = rows if per_draw else rows.amax().expand_as(rows)
    exponent = torch.where(top > 0, -torch.frexp(top).exponent, 0).to(torch.float64)
    half = torch.div(exponent, 2, rounding_mode="floor")

    def scaled(d):
        shape = (len(d),) + (1,) * (d.ndim - 1)
        return d * torch.pow(2.0, half).reshape(shape) * torch.pow(2.0, exponent - half).reshape(shape)

    return FactoredGradient([scaled(d) for d in gradient.deltas], gradient.inputs)


def _exact_signs(gradient: FactoredGradient) -> torch.Tensor:
    """``[B, D]``: the sign of each per-draw coordinate, exactly: a weight's gradient is a delta times an input, so
    its sign is the product of theirs, where the product itself may round to 0 (a delta of 5e-324 times an input
    of 0.4 is 0 in float64 but not in fact)."""
    assert all(d.ndim == 2 for d in gradient.deltas), "one input per draw: no sums of products"
    return FactoredGradient([d.sign() for d in gradient.deltas],
                            [None if x is None else x.sign() for x in gradient.inputs]).dense()


def _unit_rows(d: torch.Tensor) -> torch.Tensor:
    """Each row divided by its largest magnitude (a cosine is scale-invariant; squares of entries of 1e-170 are 0)."""
    top = d.abs().amax(1, keepdim=True)
    return d / torch.where(top > 0, top, 1.0)


def _tiny_loss_problem(coefficient: float):
    """sbn([1, 1, 1]) with the loss times ``coefficient``: at 2.3e-277, STS has draws 0 in the first layer and about
    1e-278 in the second, whose squares underflow."""
    return gs.problems.sbn([1, 1, 1], loss=gs.losses.from_spec({"kind": "multilinear", "num_inputs": 1,
                                                                  "coefficients": {"": 0.0, "0": coefficient}}),
                           seed=0, weight_scale=1.0, num_outputs=4)


@given(problem=networks(max_layers=3, max_total_units=8), estimator=st.sampled_from(["st", "reinforce", "sts"]))
@example(problem=gs.problems.sbn([1, 2], loss=gs.losses.from_spec({"kind": "multilinear", "num_inputs": 2,
                                                                    "coefficients": {"0": 1.0}}),
                                 seed=0, weight_scale=2.0, num_outputs=4), estimator="st")   # gradient entries of 8e-20
@example(problem=gs.problems.sbn([1, 2], loss=gs.losses.from_spec({"kind": "multilinear", "num_inputs": 2,
                                                                    "coefficients": {"0": 1.0, "1": 5e-324}}),
                                 seed=0, weight_scale=1.0, num_outputs=4), estimator="st")   # products that round to 0
@example(problem=gs.problems.sbn([2, 4], loss=gs.losses.from_spec({"kind": "multilinear", "num_inputs": 4,
                                                                    "coefficients": {"1": 1.0, "3": 2.2250738585e-313}}),
                                 seed=161, weight_scale=1.0, num_outputs=4),
         estimator="reinforce")   # draws of subnormal deltas in a chunk of normal ones
@example(problem=_tiny_loss_problem(2.32039872003314e-277), estimator="sts")   # a draw 0 in one layer, 1e-278 in the other
@example(problem=_tiny_loss_problem(2.2250738585072014e-308), estimator="sts")   # ... and 1e-309 (subnormal) in the other
def test_exact_per_draw_metrics_match_brute_force(problem, estimator):
    g = gs.exact_gradient(problem)
    m = gs.moments(problem, estimator, references={"binary": g})
    est = gs.estimators.get(estimator)
    opts = gs.estimators.resolve_options(est, problem, {})
    trajs = list(enumeration.trajectories(problem, est.unit))
    draws = [est.from_states(problem, t, **opts) for t in trajs]
    dense = torch.cat([d.dense() for d in draws])
    scaled = torch.cat([_normal_range(d, per_draw=True).dense() if isinstance(d, FactoredGradient) else d
                        for d in draws])
    w = torch.cat([t.log_prob.exp() for t in trajs])
    signs = torch.cat([_exact_signs(d) if isinstance(d, FactoredGradient) else d.sign() for d in draws])
    ref = brute_force(scaled, w, g, problem.coordinate_layers(), signs)
    s = m.statistics
    assert torch.allclose(s.sign_agree["binary"] / s.weight, ref["sign_agree"], rtol=1e-12, atol=1e-14)
    for layer in range(problem.num_layers + 1):
        assert s.cosine["binary"][layer] / s.weight == pytest.approx(ref[("cos", layer)], rel=1e-10, abs=1e-13)
        assert s.descent["binary"][layer] / s.weight == pytest.approx(ref[("descent", layer)], rel=1e-10, abs=1e-13)
    # mean, variance and covariance against the materialised draws
    wn = w / w.sum()
    mean = wn @ dense
    assert torch.allclose(m.mean, mean, rtol=1e-12, atol=1e-14)
    cov = ((dense - mean).T * wn) @ (dense - mean)
    assert torch.allclose(m.cov, cov, rtol=1e-10, atol=1e-13)
    assert torch.allclose(m.var, cov.diagonal(), rtol=1e-10, atol=1e-13)


@settings(max_examples=8)
@given(problem=networks(max_layers=2, max_total_units=6), chunk=st.sampled_from([97, 1000, 4096]))
def test_mc_group_cosines_match_brute_force_and_ignore_chunking(problem, chunk):
    n, k, ms = 5000, 4, (1, 7, 50)
    g = gs.exact_gradient(problem)
    m = gs.moments(problem, "st", method="mc", num_samples=n, seed=1, device="cpu", chunk_size=chunk,
                   references={"b": g}, ms=ms, num_batches=k)
    from gradstats.noise import NoiseStream

    u = NoiseStream(1, (1, problem.num_units), torch.device("cpu")).uniforms(0, n)
    draw = gs.estimators.get("st").draw(problem, u)
    dense, scaled = draw.dense(), _normal_range(draw).dense()
    layers = problem.coordinate_layers()
    bounds = [round(i * n / k) for i in range(k + 1)]
    for mm in (7, 50):
        total, groups = torch.zeros(problem.num_layers + 1, dtype=torch.float64), 0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            full = (hi - lo) // mm
            means = scaled[lo:lo + full * mm].reshape(full, mm, -1).mean(1)
            for layer in range(problem.num_layers + 1):
                total[layer] += brute_force(means, torch.ones(full, dtype=torch.float64), g, layers)[("cos", layer)] * full
            groups += full
        assert m.statistics.groups[mm] == groups
        assert torch.allclose(m.statistics.cosine_m["b"][mm], total, rtol=1e-10, atol=1e-12)
    ref = brute_force(scaled, torch.ones(n, dtype=torch.float64), g, layers)
    assert m.statistics.cosine["b"][0] / n == pytest.approx(ref[("cos", 0)], rel=1e-10)
    assert torch.allclose(m.mean, dense.mean(0), rtol=1e-10, atol=1e-13)
    assert torch.allclose(m.var, dense.var(0), rtol=1e-9, atol=1e-13)


def test_jackknife_error_of_the_mean_agrees_with_the_classical_one():
    # For a linear statistic the jackknife over K = 20 batches estimates sd/sqrt(n) with (ratio)^2 about
    # chi^2_19 / 19: a coordinate leaves [0.45, 1.8] with probability 1.1e-4, so two or more of the 16
    # (what the 90 % quorum tolerates is one) with probability about 2e-6.
    problem = gs.problems.sbn([3, 4], seed=5)
    g = gs.exact_gradient(problem)
    m = gs.moments(problem, "st", method="mc", num_samples=40_000, seed=2, device="cpu", references={"b": g})
    rows = compute_metrics(m, problem, g, "b")
    norm = next(r for r in rows if r.metric == "bias_norm" and r.layer == 0)
    assert math.isfinite(norm.stderr) and norm.stderr > 0
    # the jackknife of each coordinate's mean, computed here from the batches
    k = len(m.batches)
    total = m.statistics.weight
    loo = torch.stack([sum(b.mean * b.weight for j, b in enumerate(m.batches) if j != i) / (total - m.batches[i].weight)
                       for i in range(k)])
    jack = ((k - 1) / k * (loo - loo.mean(0)).square().sum(0)).sqrt()
    ratio = jack / m.mean_stderr
    assert ((ratio > 0.45) & (ratio < 1.8)).float().mean() > 0.9


@pytest.mark.parametrize("k", [2, 3, 7])
def test_leave_one_out_merges_every_other_batch_in_the_prefix_and_suffix_order(k):
    """Each yielded summary equals, bit for bit, batches 0..i-1 merged left to right merged with batches i+1..k-1
    merged right to left (what the jackknife always took), in the first two moments and the per-draw sums."""
    from gradstats.metrics import _leave_one_out

    problem = gs.problems.sbn([3, 4], seed=5)
    g = gs.exact_gradient(problem)
    m = gs.moments(problem, "st", method="mc", num_samples=200 * k, seed=2, device="cpu", references={"b": g},
                   num_batches=k)
    assert len(m.batches) >= k
    batches = m.batches[:k]

    def merged(parts):
        out = parts[0]
        for b in parts[1:]:
            out = out.merged(b)
        return out

    def right_to_left(parts):
        out = parts[-1]
        for b in reversed(parts[:-1]):
            out = b.merged(out)
        return out

    for i, rest in enumerate(_leave_one_out(batches)):
        parts = ([right_to_left(batches[i + 1:])] if i < k - 1 else [])
        expected = merged(batches[:i]) if i else None
        expected = parts[0] if expected is None else expected if not parts else expected.merged(parts[0])
        assert rest.count == expected.count and rest.m3 is None
        assert torch.equal(rest.mean, expected.mean) and torch.equal(rest.m2, expected.m2)
        assert torch.equal(rest.sign_agree["b"], expected.sign_agree["b"])
        assert torch.equal(rest.cosine["b"], expected.cosine["b"])


def test_metrics_without_coordinates_are_the_same_rows_with_the_coordinates_left_out():
    problem = gs.problems.sbn([3, 4], seed=5)
    g = gs.exact_gradient(problem)
    m = gs.moments(problem, "disarm", method="mc", num_samples=4000, seed=3, device="cpu", references={"b": g})
    full = [r for r in compute_metrics(m, problem, g, "b", reference_stderr=torch.full_like(g, 1e-3))
            if not r.coordinate]
    assert compute_metrics(m, problem, g, "b", reference_stderr=torch.full_like(g, 1e-3), per_coordinate=False) == full


def test_evaluate_is_tidy_and_consistent():
    problem = gs.problems.sbn([3, 3, 2], seed=1)
    df = gs.evaluate(problem, ["reinforce", "st", "sts", "noisy_rectifier"], reference=["binary", "own"],
                     num_samples=4000, ms=(1, 10), progress=False)
    assert list(df.columns) == ["estimator", "options", "reference", "reference_method", "metric", "scope", "layer",
                                "coordinate", "M", "value", "stderr", "method", "num_samples", "loss_evals_per_draw",
                                "seconds_per_draw", "n_excluded"]
    # n_excluded is on the sign-agreement rows only: no coordinate of this network is a structural zero, so against
    # an exact reference none is left out (against a Monte Carlo one, its unresolved coordinates are)
    sign_rows = df.metric.str.startswith("sign_agreement")
    assert (df[sign_rows & (df.reference_method == "exact")].n_excluded == 0).all()
    assert (df[sign_rows].n_excluded >= 0).all() and df[~sign_rows].n_excluded.isna().all()
    # the scope names what each row aggregates
    assert ((df.scope == "all layers") == ((df.layer == 0) & (df.coordinate == ""))).all()
    assert ((df.scope == "layer") == ((df.layer > 0) & (df.coordinate == ""))).all()
    assert ((df.scope == "coordinate") == (df.coordinate != "")).all()
    one = df[(df.coordinate == "") & (df.layer == 0) & (df.reference == "binary")].set_index(["estimator", "metric", "M"])
    assert one.loc[("reinforce", "bias_norm", pd_na()), "value"] < 1e-12  # unbiased, exactly
    for est in ["reinforce", "st", "sts"]:
        b = one.loc[(est, "bias_norm", pd_na()), "value"]
        tr = one.loc[(est, "variance_trace", pd_na()), "value"]
        assert one.loc[(est, "mse", 10), "value"] == pytest.approx(b**2 + tr / 10, rel=1e-12)
        assert one.loc[(est, "bias_norm", pd_na()), "method"] == "exact"
        assert one.loc[(est, "cosine_m", 10), "method"] == "mc"
    assert one.loc[("noisy_rectifier", "bias_norm", pd_na()), "stderr"] > 0
    # per-layer rows for a 2-layer network, and the STS own reference is the STS objective's exact gradient
    assert set(df.layer) == {0, 1, 2}
    own = df[(df.estimator == "sts") & (df.reference == "own") & (df.metric == "bias")]
    sts_bias = torch.tensor(own.value.to_numpy())
    m = gs.moments(problem, "sts")
    assert torch.allclose(sts_bias, m.mean - gs.exact_gradient(problem, "sts"), rtol=1e-12, atol=1e-14)
    nr_own = df[(df.estimator == "noisy_rectifier") & (df.reference == "own")]
    assert set(nr_own.reference_method) == {"mc"}
    # against its own Monte Carlo reference the bias is noise: its error counts both estimates, exactly
    # sqrt(se_main^2 + se_reference^2) (the reference is the estimator's mean from an independent seed)
    nr_bias = nr_own[nr_own.metric == "bias"]
    main = gs.moments(problem, "noisy_rectifier", method="mc", num_samples=4000, seed=0, progress=False)
    ref = gs.moments(problem, "noisy_rectifier", method="mc", num_samples=4000, seed=gs.evaluation._OWN_REFERENCE_SEED_OFFSET,
                     progress=False)
    expected = (main.mean_stderr.square() + ref.mean_stderr.square()).sqrt()
    assert torch.allclose(torch.tensor(nr_bias.stderr.to_numpy()), expected, rtol=1e-12)
    # each coordinate's bias is a difference of two independent means: |z| > 5 has probability 5.7e-7
    # under the normal approximation, 1.1e-5 over the 20 coordinates
    assert (nr_bias.value.abs() <= 5 * nr_bias.stderr + 1e-12).all()


def pd_na():
    import pandas as pd

    return pd.NA


@pytest.mark.parametrize("kwargs, match", [
    ({"reference": "mean"}, "reference must be one of"),
    ({"method": "fast"}, "method must be"),
    ({"num_samples": 0}, "num_samples must be an integer >= 1"),
    ({"ms": (0,)}, "ms entries must be an integer >= 1"),
    ({"method": "exact", "estimators": ["noisy_rectifier"]}, "cannot be evaluated exactly"),
])
def test_evaluate_bad_input(kwargs, match):
    kwargs = {"estimators": ["st"], **kwargs}
    with pytest.raises(ValueError, match=match):
        gs.evaluate(gs.problems.toy(), progress=False, **kwargs)


def test_evaluate_falls_back_to_monte_carlo_past_the_enumeration_limit():
    # leave-one-out with k = 3 on 6 units needs 2^18 states: over a limit of 2^16, so Monte Carlo
    problem = gs.problems.sbn([2, 3, 3], seed=0)
    est = gs.estimators.get("reinforce_loo")
    assert est.exact_state_count(problem, {"k": 3}) == 2**18
    assert gs.estimators.get("disarm").exact_state_count(gs.problems.sbn([2, 4], seed=0), {}) == 3**4
    df = gs.evaluate(problem, ["reinforce_loo", "st"], options={"reinforce_loo": {"k": 3}}, num_samples=2000, ms=(1,),
                     max_states=2**16, progress=False)
    methods = df[(df.metric == "bias_norm") & (df.layer == 0)].set_index("estimator").method
    assert methods["reinforce_loo"] == "mc" and methods["st"] == "exact"


def test_sign_agreement_counts_rounding_as_zero():
    from gradstats.metrics import sign_agreement, wrong_sign_coordinates

    mean, reference = torch.tensor([1e-20, 1.0, -3.0]), torch.tensor([0.0, 2.0, 1.0])
    assert sign_agreement(mean, reference).tolist() == [True, True, False]
    assert wrong_sign_coordinates(mean, reference).tolist() == [False, False, True]
    assert (mean.sign() == reference.sign()).tolist()[0] is False   # what the raw sign would have said


def test_per_draw_sign_agreement_takes_a_rounding_level_reference_as_zero():
    # f(h) = h_1: ST's draw for unit 0 is exactly 0
    problem = gs.problems.independent(gs.losses.multilinear({(1,): 1.0}, 2), [0.3, -0.2])
    rounding = torch.tensor([1e-20, 1.0], dtype=torch.float64)
    m = gs.moments(problem, "st", references={"g": rounding})
    assert m.statistics.sign_agree["g"].tolist() == pytest.approx([1.0, 1.0])


def test_one_estimator_with_two_option_sets_shares_a_frame():
    import json

    import pandas as pd

    problem = gs.problems.sbn([3, 2], seed=0)
    frames = [gs.evaluate(problem, "reinforce_loo", options={"reinforce_loo": {"k": k}}, progress=False) for k in (2, 4)]
    frame = pd.concat(frames, ignore_index=True)
    assert sorted(json.loads(o)["k"] for o in frame["options"].unique()) == [2, 4]
    assert gs.evaluate(problem, "st", progress=False)["options"].unique().tolist() == ["{}"]


def test_the_debiased_squared_bias_of_an_unbiased_estimator_covers_zero_and_the_plug_in_norm_does_not():
    """DisARM (unbiased) on a 3-3-2 network, 200 seeded runs of 2,000 draws, against the exact gradient and against
    a reference estimated from 2,000 other draws (with its standard error): ``relative_squared_bias`` is within two
    jackknife standard errors of 0 in at least 90% of runs (about 95% expected; the chance of fewer than 180 of
    200 is about 1e-3), while the plug-in ``relative_bias`` is more than two errors above 0 in most runs."""
    net = gs.problems.sbn([3, 3, 2], "squared_error", seed=2, weight_scale=2.0)
    g = gs.exact_gradient(net)
    mc = {"method": "mc", "num_samples": 2_000, "device": "cpu", "progress": False}
    covered = {"exact": 0, "estimated": 0}
    plug_in_far = 0
    for seed in range(200):
        m = gs.moments(net, "disarm", seed=seed, **mc)
        ref = gs.moments(net, "disarm", seed=10_000 + seed, **mc)
        for kind, reference, stderr in (("exact", g, None), ("estimated", ref.mean, ref.mean_stderr)):
            rows = {r.metric: r for r in compute_metrics(m, net, reference, "ref", reference_stderr=stderr)
                    if r.layer == 0 and not r.coordinate and r.m is None}
            headline = rows["relative_squared_bias"]
            covered[kind] += abs(headline.value) <= 2 * headline.stderr
            if kind == "exact":
                plug_in_far += rows["relative_bias"].value > 2 * rows["relative_bias"].stderr
    assert covered["exact"] >= 180 and covered["estimated"] >= 180, covered
    assert plug_in_far >= 100


def test_a_ratio_against_a_zero_scale_is_zero_or_an_infinity_of_the_numerators_sign():
    # relative_bias divides a norm; relative_squared_bias a debiased square, which can be negative
    from gradstats.numerics import ratio_or_inf

    assert ratio_or_inf(0.0, 0.0) == 0.0
    assert ratio_or_inf(2.0, 0.0) == math.inf and ratio_or_inf(-2.0, 0.0) == -math.inf
    assert ratio_or_inf(-3.0, 2.0) == -1.5


def test_evaluate_leaves_the_weights_of_an_input_that_is_zero_out_of_sign_agreement():
    """An input that is 0 (a border pixel) makes its weights 0 in the exact gradient and in every outcome: exact
    enumeration says so, and sign agreement leaves them out (2 of the 3 x 2 first-layer weights here)."""
    x = torch.tensor([0.7, 0.0, -1.2], dtype=torch.float64)
    problem = gs.problems.sbn([3, 2, 2], x=x, seed=1)
    df = gs.evaluate(problem, ["st", "reinforce"], progress=False, ms=(1,))
    rows = df[df.metric.str.startswith("sign_agreement")]
    assert set(rows[rows.layer == 0].n_excluded) == {2} and set(rows[rows.layer == 1].n_excluded) == {2}
    assert set(rows[rows.layer == 2].n_excluded) == {0}
    # the same rows with the zeros counted: higher, as free agreements push them up
    est = gs.estimators.get("reinforce")
    m = gs.exact_moments(problem, est, references={"binary": gs.exact_gradient(problem)})
    g = gs.exact_gradient(problem)
    kept = {v.metric: v.value for v in compute_metrics(m, problem, g, "binary", ()) if v.layer == 0}
    counted = {v.metric: v.value for v in compute_metrics(m, problem, g, "binary", (), structural_zeros="count")
               if v.layer == 0}
    total = problem.num_parameters
    assert counted["sign_agreement_draw"] == pytest.approx((kept["sign_agreement_draw"] * (total - 2) + 2) / total)


def test_metric_aliases_name_the_debiased_bias():
    assert gs.metrics.metric_name("bias2_debiased") == "squared_bias"
    assert gs.metrics.metric_name("relative_bias_debiased") == "relative_squared_bias"
    assert gs.metrics.metric_name("cosine_draw") == "cosine_draw"
    with pytest.raises(ValueError, match="unknown metric 'cosine'.*aliases: bias2_debiased"):
        gs.metrics.metric_name("cosine")


def _with_second_layer_scaled(problem, scale: float):
    """``problem`` with its second layer's weights times ``scale`` (a power of ten far below 1 leaves that layer's
    logits at its biases, to the last bit, and the first layer's gradients that small)."""
    theta, offset = problem.flat_parameters().clone(), 0
    for name, shape in problem.parameter_shapes().items():
        size = math.prod(shape)
        if name == "W2":
            theta[offset:offset + size] *= scale
        offset += size
    return problem.with_parameters(theta)


@pytest.mark.parametrize("method", ["exact", "mc"])
def test_a_layer_whose_squares_underflow_beside_another_keeps_its_cosine(method):
    """A layer whose gradients are about 1e-160 to 1e-300 times another's (the second layer's weights that small),
    in the draws and in the reference, has squared norms that underflow while the whole draw's do not: each layer,
    the draws' and the reference's, is brought into range by its own power of two, so its cosines are those at
    1e-100, where nothing underflows (the problems are the same to the last bit otherwise), and within 1e-6 of
    those at 1e-8, far from any underflow. Before, the first layer's mean cosine read 0 at 1e-200.

    The reference is ST's exact mean, whose first layer is the scale times a fixed vector. The exact gradient's is
    not: below a scale of about 1e-16 it is the rounding residue of its sum over the states (about 1e-17 whatever
    the scale, since the loss no longer depends on the first layer's units to the last bit), and that residue
    differs from one processor to another (against it, this layer's cosine read 0.0637 on an AMD EPYC and 0.0402
    on an Intel Xeon; the residue-free value is 0.522)."""
    base = gs.problems.sbn([2, 3, 2], seed=0)
    cosines = {}
    for scale in (1e-8, 1e-100, 1e-160, 1e-200, 1e-300):
        problem = _with_second_layer_scaled(base, scale)
        st_mean = gs.moments(problem, "st").mean
        options = {} if method == "exact" else dict(method="mc", num_samples=4000, seed=3, device="cpu")
        s = gs.moments(problem, "st", references={"st": st_mean}, **options).statistics
        cosines[scale] = (s.cosine["st"] / s.weight, s.descent["st"] / s.weight)
    first = cosines[1e-100]
    assert torch.allclose(first[0], cosines[1e-8][0], rtol=1e-6, atol=0)
    for scale in (1e-160, 1e-200, 1e-300):
        cos, descent = cosines[scale]
        assert torch.allclose(cos, first[0], rtol=1e-12, atol=0), scale
        assert torch.equal(descent, first[1]), scale


@pytest.mark.parametrize("method", ["exact", "mc"])
def test_a_draw_with_a_zero_layer_keeps_its_whole_cosine_at_any_scale(method):
    """STS on sbn([1, 1, 1]) with the loss times 1e-100 to 1e-310: some draws are 0 in the first layer and about
    1e-278 in the second (at 2.3e-277), whose squares underflow. Each layer is brought into range by its own power
    of two, and the whole draw's cosine is taken at the largest of its nonzero layers' powers: a zero layer has
    none. Its power (0) took part before, shrank the second layer by 2^-920 back to 0, and the mean cosine over all
    layers read 0.2676 where it is 0.6093 (found by the property tests' explore profile). Then a zero layer was
    still scaled to the others' power: at 2.2e-308 (entries of 1e-309, subnormal, whose power is -1024) the
    square's scaling by 2^2048 overflowed, 0 times it was NaN, and the cosine read 0.2676 again (found the same
    way). The cosines and descent rates are those of the loss at scale 1 (the problems differ by the loss's
    coefficient alone; at 1e-310 the entries keep about 40 bits, and the cosines their first 13 digits)."""
    def measured(coefficient):
        problem = _tiny_loss_problem(coefficient)
        options = {} if method == "exact" else dict(method="mc", num_samples=4000, seed=3, device="cpu")
        s = gs.moments(problem, "sts", references={"g": gs.exact_gradient(problem)}, **options).statistics
        return s.cosine["g"] / s.weight, s.descent["g"] / s.weight

    cos, descent = measured(1.0)
    for coefficient in (1e-100, 1e-200, 2.32039872003314e-277, 1e-300, 2.2250738585072014e-308, 1e-310):
        got = measured(coefficient)
        assert torch.allclose(got[0], cos, rtol=1e-12, atol=0), coefficient
        assert torch.equal(got[1], descent), coefficient


@given(rows=st.integers(1, 12), layers=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       scale=st.integers(-1074, 300), ref_scale=st.integers(-1000, 300))
def test_cosines_by_layer_with_no_rescaled_row_are_those_of_exponents_0(rows, layers, seed, scale, ref_scale):
    """``exponent=None`` (no layer of any row rescaled, the eager Monte Carlo path's common case) skips the per-row
    powers of two and gives the same numbers, bit for bit, as exponents of 0: over rows with zero layers, zero rows,
    rows whose layer terms cancel to 0 (taken again at their largest term), values from subnormal up, and a
    reference whose layers sit at their own powers."""
    g = torch.Generator().manual_seed(seed)
    inner = torch.randn(rows, layers, generator=g, dtype=torch.float64) * 2.0**scale
    inner[torch.rand(rows, layers, generator=g) < 0.3] = 0.0
    if layers > 1:
        inner[0, 1] = -inner[0, 0]   # a row whose terms at the reference's powers may cancel
    norm2 = inner.square() + torch.rand(rows, layers, generator=g, dtype=torch.float64)
    ref_exponent = torch.randint(-60, 60, (layers,), generator=g).to(torch.float64) + ref_scale
    ref_norm2 = torch.rand(layers, generator=g, dtype=torch.float64) + 0.5
    ref_norm2[torch.rand(layers, generator=g) < 0.2] = 0.0
    fast = cosines_by_layer(inner, norm2, None, ref_norm2, ref_exponent)
    full = cosines_by_layer(inner, norm2, torch.zeros_like(inner), ref_norm2, ref_exponent)
    for a, b in zip(fast, full):
        assert torch.equal(a.view(torch.int64), b.view(torch.int64))


@pytest.mark.parametrize("rescaled", [False, True])
def test_a_row_whose_terms_fall_below_the_least_subnormal_keeps_the_sign_of_its_inner_product(rescaled):
    """A row 0 in the reference's largest layer, 3 and -5 times 2^-1074 in the others, which sit 2^-10 and 2^-12
    below it: at the reference's powers both terms round to 0, so the row is taken again at its largest term's
    power, where they read 3 and -5/4 (rounded to -1) units of the least subnormal: <x, g> reads 2 units, > 0, as
    its exact value (3 2^-10 - 5 2^-12 = 7 2^-12 units) says; the sum at one common power alone (-2 units) has the
    wrong sign. The same with and without the per-row exponents."""
    tiny = 2.0**-1074
    inner = torch.tensor([[0.0, 3 * tiny, -5 * tiny]], dtype=torch.float64)
    exponent = torch.zeros_like(inner) if rescaled else None
    _, got = cosines_by_layer(inner, torch.ones_like(inner), exponent, torch.ones(3, dtype=torch.float64),
                              torch.tensor([0.0, -10.0, -12.0], dtype=torch.float64))
    assert float(got[0, 0]) == 2 * tiny


def test_nonzero_coordinates_see_draws_too_small_for_their_squares_by_their_sign_counts():
    """Draws 0 and 2^-1074 in the first coordinate: their mean rounds to 0 and their square underflows, so the
    moments alone take it for 0; the sign counts of a Monte Carlo summary see the nonzero draw. A coordinate whose
    draws are all 0 stays 0 (a structural zero beside a reference of 0); one with ordinary draws is not 0."""
    draws = torch.tensor([[0.0, 0.0, 1.0], [2.0**-1074, 0.0, -3.0]], dtype=torch.float64)
    reference = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    summary = gs.GradientStats(reference=reference).update(draws).moments.statistics
    assert float(summary.mean[0]) == 0.0 and float(summary.m2[0]) == 0.0
    assert nonzero_coordinates(summary, reference).tolist() == [False, False, True]
    assert nonzero_coordinates(summary, reference, "reference").tolist() == [True, False, True]
    assert structural_zero_coordinates(summary, reference, "reference").tolist() == [False, True, False]
