"""GradientStats held to a brute force over every draw at once, for any stream: parameter groups of any sizes,
float32 and float64 side by side, values at any scale from subnormal to 2^200 (a group's scale apart from the
others'), zeros, signed zeros and repeated values, a reference with zero entries or a zero group, the draws cut
into chunks anywhere, one or two threads. Every metric of the tidy frame is held to it: the moments, the per-draw
cosine, descent and sign agreement, the metrics of the mean (bias, debiased squared bias, MSE, cosine and sign
agreement) and the cosine of the mean of M draws. The brute force sums exactly (``math.fsum``, fractions for the
signs of inner products) and takes each cosine at a scale where nothing underflows; the unit sampled is a stream."""

import contextlib
import math
import warnings
from fractions import Fraction

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import gradstats as gs


@st.composite
def streams(draw):
    """``(draws, reference, cuts, threads)``: ``draws`` a dict name -> ``[n, size]`` tensor (float32 or float64),
    ``reference`` a dict of float64 ``[size]`` tensors, ``cuts`` the chunk boundaries."""
    groups = draw(st.integers(1, 3))
    n = draw(st.integers(2, 70))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    draws, reference = {}, {}
    for g in range(groups):
        size = draw(st.integers(1, 40))
        dtype = draw(st.sampled_from([torch.float64, torch.float32]))
        low, high = (-1070, 200) if dtype == torch.float64 else (-140, 100)
        exponent = draw(st.integers(low, high))
        values = rng.standard_normal((n, size)) * 2.0**exponent
        values[rng.random((n, size)) < draw(st.sampled_from([0.0, 0.3, 0.9]))] = 0.0
        values[rng.random((n, size)) < 0.1] *= -0.0   # signed zeros among the zeros, and -x elsewhere
        if draw(st.booleans()):
            values[:, : size // 2] = values[0, : size // 2]   # columns whose draws are all equal
        if draw(st.booleans()):
            values[rng.integers(0, n)] = 0.0   # a draw that is 0 in this group
        draws[f"p{g}"] = torch.from_numpy(values).to(dtype)
        ref = rng.standard_normal(size) * 2.0**draw(st.integers(-1000, 200))
        ref[rng.random(size) < draw(st.sampled_from([0.0, 0.5, 1.0]))] = 0.0
        reference[f"p{g}"] = torch.from_numpy(ref)
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=6))))
    return draws, reference, [0, *cuts, n], draw(st.sampled_from([1, 2]))


def exact_inner(x: list[float], g: list[float]) -> Fraction:
    return sum((Fraction(a) * Fraction(b) for a, b in zip(x, g)), Fraction(0))


def cosine(x: np.ndarray, g: np.ndarray) -> float:
    """cos(x, g) in float64 with each vector first scaled by a power of two to a largest entry near 1 (exact), so that
    no square underflows or overflows; 0 where either is 0."""
    if not x.any() or not g.any():
        return 0.0
    x = np.ldexp(x, -np.frexp(np.abs(x).max())[1])
    g = np.ldexp(g, -np.frexp(np.abs(g).max())[1])
    return float(x @ g / (np.linalg.norm(x) * np.linalg.norm(g)))


def norm(v: np.ndarray) -> float:
    """|v| in float64, v first scaled by a power of two to a largest entry near 1 (exact)."""
    if not v.any():
        return 0.0
    power = np.frexp(np.abs(v).max())[1]
    return float(np.ldexp(np.linalg.norm(np.ldexp(v, -power)), power))


def row(frame, metric: str, group: str, m: int | None = None) -> float:
    rows = frame[(frame.metric == metric) & (frame.group == group)]
    if m is not None:
        rows = rows[rows.M == m]
    return float(rows.value.iloc[0])


TINY = 2.0**-1074   # the least subnormal


@given(stream=streams(), m=st.sampled_from([2, 3, 5]))
# draws whose squares underflow and whose mean rounds to 0 are not "no gradient" (the group's metrics read NaN)
@example(stream=({"p0": torch.tensor([[16 * TINY], [-17 * TINY]], dtype=torch.float64)},
                 {"p0": torch.tensor([1.304], dtype=torch.float64)}, [0, 2], 1), m=2)
# nor is such a coordinate with a reference of 0 a structural zero (its sign agreement read 1.0, not 0.75)
@example(stream=({"p0": torch.tensor([[0.0, 1.0], [TINY, 1.0]], dtype=torch.float64)},
                 {"p0": torch.tensor([0.0, 1.0], dtype=torch.float64)}, [0, 2], 1), m=2)
# a group of the reference 1e-323 of another's is 0 once the whole is scaled to a largest entry of 1, but not 0:
# its cosines and descent read 0 where they are -1, 1 and 1/2
@example(stream=({"p0": torch.tensor([[0.125], [-0.25]], dtype=torch.float64),
                  "p1": torch.tensor([[-0.5], [0.0]], dtype=torch.float64)},
                 {"p0": torch.tensor([1.2e-301], dtype=torch.float64),
                  "p1": torch.tensor([-4.7e22], dtype=torch.float64)}, [0, 2], 1), m=2)
# a draw 0 in the reference's largest group: the terms of <x, g> at the power of two the norms meet at were below
# the least subnormal, and its descent read 0 where <x, g> = 1.07e-264
@example(stream=({"p0": torch.tensor([[0.0], [0.0]], dtype=torch.float64),
                  "p1": torch.tensor([[0.0476727312116796], [0.0476727312116796]], dtype=torch.float64)},
                 {"p0": torch.tensor([4.831823495023648e59], dtype=torch.float64),
                  "p1": torch.tensor([2.2460356643271068e-263], dtype=torch.float64)}, [0, 2], 1), m=2)
def test_gradient_stats_equal_a_brute_force_over_every_draw(stream, m):
    draws, reference, cuts, threads = stream
    with torch_threads(threads):
        stats = gs.GradientStats(reference=reference, ms=(m,))
        for a, b in zip(cuts, cuts[1:]):
            stats.update({k: v[a:b] for k, v in draws.items()})
    check_against_brute_force(stats, draws, reference, m, [(0, cuts[-1])])


@given(stream=streams(), where=st.floats(0, 1), m=st.sampled_from([2, 3, 5]))
def test_gradient_stats_merged_and_restored_equal_the_brute_force_too(stream, where, m):
    """The stream's first chunks into one GradientStats, stored (``state_dict``) and loaded into a fresh one, and the
    rest into another, merged: the same brute force (the groups of ``M`` draws are each part's own: a merge does
    not join one part's incomplete group to the other's)."""
    draws, reference, cuts, threads = stream
    split = round(where * (len(cuts) - 1))
    with torch_threads(threads):
        first, rest = gs.GradientStats(reference=reference, ms=(m,)), gs.GradientStats(reference=reference, ms=(m,))
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            (first if i < split else rest).update({k: v[a:b] for k, v in draws.items()})
        restored = gs.GradientStats(reference=reference, ms=(m,))
        restored.load_state_dict(first.state_dict())
        merged = restored.merge(rest)
    check_against_brute_force(merged, draws, reference, m, [(0, cuts[split]), (cuts[split], cuts[-1])])


@contextlib.contextmanager
def torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_against_brute_force(stats, draws, reference, m, segments):
    """``stats``' mean, variance, per-draw cosine, descent and sign agreement of the draws, the metrics of the mean
    (bias, squared bias, MSE, cosine and sign agreement of the mean) and the cosine of the mean of ``m`` draws (over
    the complete groups of ``m`` consecutive draws of each of ``segments``, ``(start, stop)`` pairs), over all groups
    and per group, against the brute force over ``draws``. Where the mean's rounding (at most 1e-12 of a
    coordinate's largest draw, checked first) could move a metric, the brute force allows what it could move it by."""
    names = list(draws)
    x = {k: draws[k].to(torch.float64).numpy() for k in names}   # float32 values, exactly
    g = {k: reference[k].numpy() for k in names}
    n = next(iter(x.values())).shape[0]
    largest = max(float(np.abs(v).max()) for v in g.values())
    tiny = 64 * n * 2.0**-1074   # a few units in the last place of a sum of subnormals

    mean, error, var_of, shown_of = {}, {}, {}, {}
    for k in names:   # the mean of each coordinate, against an exact sum (one rounding, then one division)
        exact = np.array([math.fsum(column) / n for column in x[k].T])
        spread = np.abs(x[k]).max(0)
        mean[k], error[k] = exact, 1e-12 * spread + tiny
        assert np.all(np.abs(stats.mean[k].numpy() - exact) <= error[k]), k
        # the variance where its squares are in range, against two passes over each column scaled to a largest
        # entry near 1 (by a power of two: exact)
        shown = (spread >= 1e-150) & (spread <= 1e150)
        power = np.frexp(np.where(shown, spread, 1.0))[1]
        scaled = np.ldexp(x[k], -power)
        var = np.ldexp(((scaled - scaled.mean(0)) ** 2).sum(0) / (n - 1), 2 * power)
        got = stats.var[k].numpy()
        assert np.all(np.abs(got - var)[shown] <= (1e-9 * var + 1e-12 * spread**2)[shown]), k
        var_of[k], shown_of[k] = var, shown | (spread == 0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a group that got no gradient is reported, and NaN
        frame = stats.to_frame(ms=(1,))
    groups = ["all", *names] if len(names) > 1 else ["all"]
    for group in groups:
        parts = names if group == "all" else [group]
        xs = np.concatenate([x[k] for k in parts], 1)
        gs_ = np.concatenate([g[k] for k in parts])
        if not xs.any():   # no gradient in any draw: reported, not scored
            assert math.isnan(row(frame, "cosine_draw", group))
            continue
        # the per-draw cosine, each draw's at a scale of its own
        want = float(np.mean([cosine(xi, gs_) for xi in xs]))
        assert abs(row(frame, "cosine_draw", group) - want) <= 1e-10, (group, want)
        # descent: <x_i, g> > 0, exactly; a draw whose inner product is within rounding of 0 may read either way
        inner = [exact_inner(xi.tolist(), gs_.tolist()) for xi in xs]
        scale = [math.fsum(abs(a * b) for a, b in zip(xi.tolist(), gs_.tolist())) for xi in xs]
        ambiguous = sum(abs(float(p)) <= 1e-12 * s for p, s in zip(inner, scale))
        positive = sum(p > 0 for p in inner)
        assert abs(row(frame, "descent", group) * n - positive) <= ambiguous + 1e-9, group
        # sign agreement of the draws: counts of raw signs, against the reference's signs with magnitudes up to 1e-9 of
        # its largest (over every group) counted as 0 (metrics.py's convention); coordinates 0 in the reference and
        # in every draw are left out
        sign = np.where(np.abs(gs_) <= 1e-9 * largest, 0.0, np.sign(gs_))
        agree = np.where(sign > 0, xs > 0, np.where(sign < 0, xs < 0, xs == 0)).mean(0)
        kept = ~((gs_ == 0) & (xs == 0).all(0))
        got = row(frame, "sign_agreement_draw", group)
        if kept.any():
            assert abs(got - agree[kept].mean()) <= 1e-12, group
        else:
            assert math.isnan(got), group
        check_metrics_of_the_mean(frame, group, parts, mean, error, var_of, shown_of, g, n, m, kept)
        check_cosine_of_groups(frame, group, xs, gs_, m, segments)


def check_metrics_of_the_mean(frame, group, parts, mean, error, var_of, shown_of, g, n, m, kept):
    """Bias, squared bias, MSE at 1 and ``m`` draws, cosine and sign agreement of the mean, from the exact mean."""
    mu, e, ref = (np.concatenate([d[k] for k in parts]) for d in (mean, error, g))
    e_norm = norm(e)
    bias = norm(mu - ref)
    assert abs(row(frame, "bias_norm", group) - bias) <= 1.01 * e_norm + 1e-12 * bias, group
    ref_norm = norm(ref)
    if ref_norm > 0 and e_norm < 1e-3 * bias:   # a ratio beyond float64 is inf, as IEEE division rounds it
        assert close(row(frame, "relative_bias", group), bias / ref_norm, (1.01 * e_norm + 1e-12 * bias) / ref_norm), group
    # the debiased squared bias and the MSE, where every square is in range
    if all(shown_of[k].all() for k in parts) and (bias == 0 or 1e-150 <= bias <= 1e150):
        trace = math.fsum(np.concatenate([var_of[k] for k in parts]).tolist())
        tol = 2.02 * bias * e_norm + 1.02 * e_norm**2 + 1e-9 * (bias**2 + trace)
        assert abs(row(frame, "variance_trace", group) - trace) <= 1e-9 * trace, group
        squared_bias = bias**2 - trace / n
        assert abs(row(frame, "squared_bias", group) - squared_bias) <= tol, group
        for size in (1, m):
            assert abs(row(frame, "mse", group, size) - (squared_bias + trace / size)) <= tol, (group, size)
        if 1e-150 <= ref_norm <= 1e150:
            got = row(frame, "relative_squared_bias", group)
            assert close(got, squared_bias / ref_norm**2, tol / ref_norm**2 * 1.01), group
    # the cosine of the mean: the mean's rounding moves it by at most about 2 |error| / |mean|
    mu_norm = norm(mu)
    if mu_norm > 4 * e_norm:
        assert abs(row(frame, "cosine_mean", group) - cosine(mu, ref)) <= 2.5 * e_norm / mu_norm + 1e-10, group
    # the sign agreement of the mean: signs with magnitudes up to 1e-9 of the largest entry of the mean or the
    # reference (over every group) counted as 0; a coordinate within the mean's rounding of 0 or of that threshold
    # may read either way
    every_mu, every_e = np.concatenate(list(mean.values())), np.concatenate(list(error.values()))
    every_ref = np.concatenate(list(g.values()))
    scale = max(np.abs(every_mu).max(), np.abs(every_ref).max())
    threshold, slack = 1e-9 * scale, 1e-9 * every_e.max()
    sign_mu = np.where(np.abs(mu) <= threshold, 0.0, np.sign(mu))
    sign_ref = np.where(np.abs(ref) <= threshold, 0.0, np.sign(ref))
    ambiguous = (np.abs(mu) <= e) | (np.abs(np.abs(mu) - threshold) <= e + slack) \
        | (np.abs(np.abs(ref) - threshold) <= slack)
    got = row(frame, "sign_agreement_mean", group)
    if kept.any():
        want = (sign_mu == sign_ref)[kept].mean()
        assert abs(got - want) <= (ambiguous & kept).sum() / kept.sum() + 1e-12, group
    else:
        assert math.isnan(got), group


def close(got: float, want: float, tol: float) -> bool:
    """``got`` within ``tol`` of ``want``; a ratio beyond float64 (``want`` inf) only by inf, as IEEE division
    rounds it, unless ``tol`` is beyond float64 too (then nothing but NaN is out of reach)."""
    if math.isinf(tol):
        return not math.isnan(got)
    return got == want if math.isinf(want) else abs(got - want) <= tol


def check_cosine_of_groups(frame, group, xs, ref, m, segments):
    """The mean over the complete groups of ``m`` consecutive draws of each segment of the cosine of their sum with
    the reference (sums exact, then rounded); a group's float64 sum may differ from the exact one by ``m`` roundings
    of its terms, which moves its cosine by at most about 2 |difference| / |sum|."""
    cosines, bounds = [], []
    for a, b in segments:
        for start in range(a, b - m + 1, m):
            block = xs[start:start + m]
            total = np.array([math.fsum(column) for column in block.T])
            drift = norm(m * 2.0**-52 * np.abs(block).sum(0))
            size = norm(total)
            cosines.append(cosine(total, ref))
            bounds.append(min(2.0, 2.5 * drift / size + 1e-10) if size > 0 else 2.0)
    got = row(frame, "cosine_m", group, m)
    if cosines:
        assert abs(got - float(np.mean(cosines))) <= float(np.mean(bounds)), group
    else:
        assert math.isnan(got), group
