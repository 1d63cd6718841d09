"""GradientStats held to a brute force over every draw at once, for any stream: parameter groups of any sizes,
float32 and float64 side by side, values at any scale from subnormal to 2^200 (a group's scale apart from the
others'), zeros, signed zeros and repeated values, a reference with zero entries or a zero group, the draws cut
into chunks anywhere, one or two threads. The brute force sums exactly (``math.fsum``, fractions for the signs of
inner products) and takes each cosine at a scale where nothing underflows; the unit sampled is a stream."""

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


def row(frame, metric: str, group: str) -> float:
    return float(frame[(frame.metric == metric) & (frame.group == group)].value.iloc[0])


TINY = 2.0**-1074   # the least subnormal


@given(stream=streams())
# draws whose squares underflow and whose mean rounds to 0 are not "no gradient" (the group's metrics read NaN)
@example(stream=({"p0": torch.tensor([[16 * TINY], [-17 * TINY]], dtype=torch.float64)},
                 {"p0": torch.tensor([1.304], dtype=torch.float64)}, [0, 2], 1))
# nor is such a coordinate with a reference of 0 a structural zero (its sign agreement read 1.0, not 0.75)
@example(stream=({"p0": torch.tensor([[0.0, 1.0], [TINY, 1.0]], dtype=torch.float64)},
                 {"p0": torch.tensor([0.0, 1.0], dtype=torch.float64)}, [0, 2], 1))
# a group of the reference 1e-323 of another's is 0 once the whole is scaled to a largest entry of 1, but not 0:
# its cosines and descent read 0 where they are -1, 1 and 1/2
@example(stream=({"p0": torch.tensor([[0.125], [-0.25]], dtype=torch.float64),
                  "p1": torch.tensor([[-0.5], [0.0]], dtype=torch.float64)},
                 {"p0": torch.tensor([1.2e-301], dtype=torch.float64),
                  "p1": torch.tensor([-4.7e22], dtype=torch.float64)}, [0, 2], 1))
# a draw 0 in the reference's largest group: the terms of <x, g> at the power of two the norms meet at were below
# the least subnormal, and its descent read 0 where <x, g> = 1.07e-264
@example(stream=({"p0": torch.tensor([[0.0], [0.0]], dtype=torch.float64),
                  "p1": torch.tensor([[0.0476727312116796], [0.0476727312116796]], dtype=torch.float64)},
                 {"p0": torch.tensor([4.831823495023648e59], dtype=torch.float64),
                  "p1": torch.tensor([2.2460356643271068e-263], dtype=torch.float64)}, [0, 2], 1))
def test_gradient_stats_equal_a_brute_force_over_every_draw(stream):
    draws, reference, cuts, threads = stream
    with torch_threads(threads):
        stats = gs.GradientStats(reference=reference)
        for a, b in zip(cuts, cuts[1:]):
            stats.update({k: v[a:b] for k, v in draws.items()})
    check_against_brute_force(stats, draws, reference)


@given(stream=streams(), where=st.floats(0, 1))
def test_gradient_stats_merged_and_restored_equal_the_brute_force_too(stream, where):
    """The stream's first chunks into one GradientStats, stored (``state_dict``) and loaded into a fresh one, and the
    rest into another, merged: the same brute force."""
    draws, reference, cuts, threads = stream
    split = round(where * (len(cuts) - 1))
    with torch_threads(threads):
        first, rest = gs.GradientStats(reference=reference), gs.GradientStats(reference=reference)
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            (first if i < split else rest).update({k: v[a:b] for k, v in draws.items()})
        restored = gs.GradientStats(reference=reference)
        restored.load_state_dict(first.state_dict())
        merged = restored.merge(rest)
    check_against_brute_force(merged, draws, reference)


@contextlib.contextmanager
def torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_against_brute_force(stats, draws, reference):
    """``stats``' mean, variance, per-draw cosine, descent and sign agreement of the draws (over all groups and per
    group) against the brute force over ``draws``."""
    names = list(draws)
    x = {k: draws[k].to(torch.float64).numpy() for k in names}   # float32 values, exactly
    g = {k: reference[k].numpy() for k in names}
    n = next(iter(x.values())).shape[0]
    largest = max(float(np.abs(v).max()) for v in g.values())
    tiny = 64 * n * 2.0**-1074   # a few units in the last place of a sum of subnormals

    for k in names:   # the mean of each coordinate, against an exact sum (one rounding, then one division)
        exact = np.array([math.fsum(column) / n for column in x[k].T])
        spread = np.abs(x[k]).max(0)
        assert np.all(np.abs(stats.mean[k].numpy() - exact) <= 1e-12 * spread + tiny), k
        # the variance where its squares are in range, against two passes over each column scaled to a largest
        # entry near 1 (by a power of two: exact)
        shown = (spread >= 1e-150) & (spread <= 1e150)
        power = np.frexp(np.where(shown, spread, 1.0))[1]
        scaled = np.ldexp(x[k], -power)
        var = np.ldexp(((scaled - scaled.mean(0)) ** 2).sum(0) / (n - 1), 2 * power)
        got = stats.var[k].numpy()
        assert np.all(np.abs(got - var)[shown] <= (1e-9 * var + 1e-12 * spread**2)[shown]), k

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
