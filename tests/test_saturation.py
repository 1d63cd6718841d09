"""Every estimator at saturated logits, against an independent evaluation in 50-digit arithmetic (mpmath).

One unit with logit ``a`` in {+-30, +-40, +-50} and ``f(h) = (h - t)^2``. Per draw, at fixed
uniforms chosen to reach both branches of every threshold (``2^-50 < sigma(-30)``), each
estimator's float64 estimate must be within 1e-6 relative of the 50-digit value of the same
formula; exact moments of the discrete estimators and the exact gradients likewise. The
float32 drop-ins are held to 1e-4: an intermediate such as ``z = a + l`` carries a rounding
error of ``|z| * 6e-8`` in float32, which ``sigma(-z)`` turns into a relative error of ``|z|^2 * 6e-8``
(about 1e-5 at ``|z| = 13``), so 1e-6 is out of reach of any float32 formula there.
"""

import itertools

import mpmath as mp
import pytest
import torch

import gradstats as gs
import gradstats.functional as gf

mp.mp.dps = 50
T = 0.375                       # exact in float32 and float64
LOGITS = [30.0, -30.0, 40.0, -40.0, 50.0, -50.0]
U64 = [2.0**-50, 2.0**-20, 0.25, 0.5, 0.75, 1 - 2.0**-20, 1 - 2.0**-50]
U32 = [2.0**-50, 2.0**-20, 0.25, 0.5, 0.75, 1 - 2.0**-20]


def sig(x):
    return 1 / (1 + mp.e ** (-x))


def f(h):
    return (h - T) ** 2


def df(h):
    return 2 * (h - T)


def relaxed_local(a, u, tau=1):
    z = (a + mp.log(1 - u) - mp.log(u)) / tau
    return sig(z) * sig(-z) / tau, sig(z)


def per_draw(name, a, us):
    """The 50-digit value of one draw of ``name`` at logit ``a`` with uniforms ``us``."""
    a = mp.mpf(a)
    u = mp.mpf(us[0])
    p = sig(a)
    b = 1 if u < p else 0
    anti = 1 if 1 - u < p else 0
    if name == "reinforce":
        return (b - p) * f(b)
    if name == "st":
        return df(b)
    if name == "st_sigmoid":
        return df(b) * p * (1 - p)
    if name == "sts":
        q = mp.sqrt(p)
        s = 1 if u < q else 0
        return df(s * q) * s * q * (1 - p) / 2
    if name == "noisy_rectifier":
        s = a + mp.sqrt(2) * mp.erfinv(2 * u - 1)
        return df(max(s, 0)) * (1 if s > 0 else 0)
    if name == "gumbel":
        local, h = relaxed_local(a, u)
        return df(h) * local
    if name == "st_gumbel":
        return df(b) * relaxed_local(a, u)[0]
    if name == "arm":
        return (f(anti) - f(b)) * (u - mp.mpf(1) / 2)
    if name == "disarm":
        return (f(b) - f(anti)) / 2 * (-1) ** anti * (1 if b != anti else 0) * sig(abs(a))
    if name == "reinforce_loo":
        bs = [1 if mp.mpf(v) < p else 0 for v in us]
        mean = sum(f(x) for x in bs) / len(bs)
        return sum((f(x) - mean) * (x - p) for x in bs) / (len(bs) - 1)
    if name == "reinmax":
        r = (b + sig(a)) / 2
        return df(b) * (2 * r * (1 - r) - p * (1 - p) / 2)
    if name == "local_expectation":
        return p * (1 - p) * (f(1) - f(0))
    raise KeyError(name)


def exact_mean(name, a):
    """``E`` of a discrete estimator's draw, summed over its outcomes in 50 digits."""
    a = mp.mpf(a)
    p = sig(a)
    if name == "sts":
        q = mp.sqrt(p)
        return q * df(q) * q * (1 - p) / 2
    if name == "disarm":   # unbiased: the exact gradient
        return p * (1 - p) * (f(1) - f(0))
    if name in ("reinforce_loo", "local_expectation"):
        return p * (1 - p) * (f(1) - f(0))
    single = {"reinforce": lambda b: (b - p) * f(b), "st": df, "st_sigmoid": lambda b: df(b) * p * (1 - p),
              "reinmax": lambda b: df(b) * (2 * ((b + p) / 2) * (1 - (b + p) / 2) - p * (1 - p) / 2)}[name]
    return p * single(1) + (1 - p) * single(0)


def close(value, reference, rel):
    reference = float(reference)
    if reference == 0.0:
        return value == 0.0
    return abs(value - reference) <= rel * abs(reference)


def problem(a):
    return gs.problems.independent(gs.losses.polynomial(T, 2), [a])


@pytest.mark.parametrize("name", gs.estimators.names())
def test_every_draw_at_saturated_logits_matches_50_digits(name):
    est = gs.estimators.get(name)
    k = 2 if name == "reinforce_loo" else 1
    draws = list(itertools.product(U64, repeat=k))
    failures = []
    for a in LOGITS:
        u = torch.tensor(draws, dtype=torch.float64).reshape(len(draws), k, 1)
        gradient = est.draw(problem(a), u, **gs.estimators.resolve_options(est, problem(a), {}))
        values = (gradient.dense() if hasattr(gradient, "dense") else gradient)[:, 0].tolist()
        for us, value in zip(draws, values):
            reference = per_draw(name, a, us)
            if not close(value, reference, 1e-6):
                failures.append((a, us, value, float(reference)))
    assert not failures, failures[:5]


@pytest.mark.parametrize("name", [n for n in gs.estimators.names() if gs.estimators.get(n).noise == "discrete"])
def test_exact_moments_at_saturated_logits_match_50_digits(name):
    for a in LOGITS:
        mean = float(gs.moments(problem(a), name).mean[0])
        assert close(mean, exact_mean(name, a), 1e-6), (a, mean, float(exact_mean(name, a)))


def test_exact_gradients_at_saturated_logits_match_50_digits():
    for a in LOGITS:
        p = sig(mp.mpf(a))
        q = mp.sqrt(p)
        binary = p * (1 - p) * (f(1) - f(0))
        sts = q * (1 - p) / 2 * (f(q) - f(0) + q * df(q))   # d/da [q f(q) + (1 - q) f(0)], q = sqrt(sigmoid(a))
        assert close(float(gs.exact_gradient(problem(a))[0]), binary, 1e-6), a
        assert close(float(gs.exact_gradient(problem(a), "sts")[0]), sts, 1e-6), a
    for a in (-745.0, -800.0, 745.0, 800.0):
        assert torch.isfinite(gs.exact_gradient(problem(a), "sts")).all() and torch.isfinite(gs.exact_gradient(problem(a))).all()


def _pathwise(fn, **kw):
    def grad(a, u):
        h = fn(a, u=u, **kw)
        ((h - T) ** 2).sum().backward()
    return grad


def _loss(b):
    return ((b - T) ** 2).sum(-1)


def _surrogate(fn):
    def grad(a, u):
        fn(a, _loss, u=u)[1].backward()
    return grad


def _reinforce(a, u):
    h, surrogate = gf.reinforce(a, u=u)
    surrogate(_loss(h)).backward()


def _loo(a, u):
    gf.reinforce_loo(a, _loss, u=u)[1].backward()


DROP_INS = {
    "st": _pathwise(gf.straight_through), "st_sigmoid": _pathwise(gf.straight_through, variant="sigmoid"),
    "sts": _pathwise(gf.sts), "noisy_rectifier": _pathwise(gf.noisy_rectifier), "gumbel": _pathwise(gf.gumbel_sigmoid),
    "st_gumbel": _pathwise(gf.st_gumbel), "reinmax": _pathwise(gf.reinmax), "reinforce": _reinforce,
    "arm": _surrogate(gf.arm), "disarm": _surrogate(gf.disarm), "reinforce_loo": _loo,
}


@pytest.mark.parametrize("name", sorted(DROP_INS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_drop_in_functions_at_saturated_logits_match_50_digits(name, dtype):
    rel = 1e-4 if dtype == torch.float32 else 1e-6
    us = U32 if dtype == torch.float32 else U64
    failures = []
    for a0 in LOGITS:
        if name == "reinforce_loo":
            pairs = list(itertools.product(us, repeat=2))
            a = torch.full((len(pairs), 1), a0, dtype=dtype, requires_grad=True)
            DROP_INS[name](a, torch.tensor(pairs, dtype=dtype).T.reshape(2, -1, 1).contiguous())
        else:
            pairs = [(v,) for v in us]
            a = torch.full((len(us), 1), a0, dtype=dtype, requires_grad=True)
            DROP_INS[name](a, torch.tensor(us, dtype=dtype).reshape(-1, 1))
        assert a.grad is not None and torch.isfinite(a.grad).all(), (name, a0, a.grad)
        for pair, value in zip(pairs, a.grad.flatten().tolist()):
            reference = per_draw(name, a0, [mp.mpf(float(torch.tensor(v, dtype=dtype))) for v in pair])
            if not close(value, reference, rel):
                failures.append((a0, pair, value, float(reference)))
    assert not failures, failures[:5]
