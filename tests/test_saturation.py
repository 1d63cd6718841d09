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


# options that keep the uniforms per draw few (7^m draws for m uniforms a unit)
OPTIONS = {"arms": {"k": 3}, "double_cv": {"k": 2}, "gumbel_rao": {"k": 2}}


def uniforms_per_draw(name):
    est = gs.estimators.get(name)
    return est.noise_per_unit({**(est.defaults or {}), **OPTIONS.get(name, {})})


def conditional_noise(a, b, v):
    """The logistic noise drawn given ``b`` from ``v`` (REBAR's conditional sampler), in 50 digits."""
    p = sig(a)
    w = v * p if b else p + v * (1 - p)
    return mp.log(1 - w) - mp.log(w)


def relax_draw(a, u, v, network=None):
    """REBAR (``network`` None) or RELAX with ``network`` (weights as mp lists), one unit, scale 1. The control's
    derivatives are written out (``dc/dz`` times ``dz/da``; ``dz~/da`` by ``mp.diff``), since the two pathwise
    terms nearly cancel at saturated logits. Temperature 1/2, REBAR's default."""
    tau = mp.mpf(1) / 2
    p = sig(a)
    b = 1 if u < p else 0

    def control(z):
        value, slope = f(sig(z / tau)), df(sig(z / tau)) * sig(z / tau) * sig(-z / tau) / tau
        if network is not None:
            w1, b1, w2, b2 = network
            pre = [w1[j] * sig(z) + b1[j] for j in range(len(b1))]
            value += sum(w2[j] * mp.tanh(pre[j]) for j in range(len(b1))) + b2
            slope += sum(w2[j] * (1 - mp.tanh(pre[j]) ** 2) * w1[j] for j in range(len(b1))) * sig(z) * sig(-z)
        return value, slope

    z = a + mp.log(1 - u) - mp.log(u)
    z_given_b = a + conditional_noise(a, b, v)
    dz_given_b = mp.diff(lambda av: av + conditional_noise(av, b, v), a)
    (_, slope), (value_given_b, slope_given_b) = control(z), control(z_given_b)
    return (f(b) - value_given_b) * (b - p) + slope - slope_given_b * dz_given_b, max(abs(slope), abs(slope_given_b))


def cancelling_terms(name, a, us, network):
    """The size of REBAR's and RELAX's two pathwise terms, which cancel where ``z~`` is close to ``z``: float64 holds
    each ``z`` to about 1e-14, so a draw's value is good to about 1e-12 of this (0 for the other estimators)."""
    if name not in ("rebar", "relax"):
        return 0.0
    return float(relax_draw(mp.mpf(a), mp.mpf(us[0]), mp.mpf(us[1]), network if name == "relax" else None)[1])


def arms_draw(a, us):
    """ARMS with ``k = len(us)`` Dirichlet-coupled samples, the first ``1[u_0 < p]``."""
    k = len(us)
    p = sig(a)
    low = a < 0
    first = us[0] if low else 1 - us[0]
    remaining = first ** (mp.mpf(1) / (k - 1))
    e = [-mp.log(1 - v) for v in us[1:]]
    c = [(1 - remaining * x / sum(e)) ** (k - 1) for x in e]
    bs = [1 if us[0] < p else 0] + [(1 if x < p else 0) if low else (1 if x > 1 - p else 0) for x in c]
    mean = sum(f(x) for x in bs) / k
    m = min(p, 1 - p)
    joint = max(2 * m ** (mp.mpf(1) / (k - 1)) - 1, 0) ** (k - 1)
    return sum((f(x) - mean) * (x - p) for x in bs) / (k - 1) * p * (1 - p) / (m - joint)


def double_cv_draw(a, us, alpha=1):
    p = sig(a)
    bs = [1 if v < p else 0 for v in us]
    k = len(bs)
    slopes = [df(x) for x in bs]
    others = [(sum(slopes) - g) / (k - 1) for g in slopes]
    shifted = [f(x) - alpha * g * (x - p) for x, g in zip(bs, others)]
    mean = sum(shifted) / k
    loo = sum((y - mean) * (x - p) for x, y in zip(bs, shifted)) / (k - 1)
    return loo + alpha * sum(others) / k * p * (1 - p)


def gumbel_rao_draw(a, us):
    p = sig(a)
    b = 1 if us[0] < p else 0
    local = []
    for v in us[1:]:
        z = a + conditional_noise(a, b, v)
        local.append(sig(z) * sig(-z))
    return df(b) * sum(local) / len(local)


def per_draw(name, a, us, network=None):
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
    if name == "rebar":
        return relax_draw(a, u, mp.mpf(us[1]))[0]
    if name == "relax":
        return relax_draw(a, u, mp.mpf(us[1]), network)[0]
    if name == "arms":
        return arms_draw(a, [mp.mpf(v) for v in us])
    if name == "double_cv":
        return double_cv_draw(a, [mp.mpf(v) for v in us])
    if name == "gumbel_rao":
        return gumbel_rao_draw(a, [mp.mpf(v) for v in us])
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
    if name in ("reinforce_loo", "local_expectation", "arms", "double_cv"):
        return p * (1 - p) * (f(1) - f(0))
    single = {"reinforce": lambda b: (b - p) * f(b), "st": df, "st_sigmoid": lambda b: df(b) * p * (1 - p),
              "reinmax": lambda b: df(b) * (2 * ((b + p) / 2) * (1 - (b + p) / 2) - p * (1 - p) / 2)}[name]
    return p * single(1) + (1 - p) * single(0)


def close(value, reference, rel, allowance=0.0):
    reference = float(reference)
    if reference == 0.0 and allowance == 0.0:
        return value == 0.0
    return abs(value - reference) <= rel * abs(reference) + allowance


def problem(a):
    return gs.problems.independent(gs.losses.polynomial(T, 2), [a])


@pytest.mark.parametrize("name", gs.estimators.names(kind="independent"))
def test_every_draw_at_saturated_logits_matches_50_digits(name):
    est = gs.estimators.get(name)
    k = uniforms_per_draw(name)
    draws = list(itertools.product(U64, repeat=k))
    failures = []
    for a in LOGITS:
        options = gs.estimators.resolve_options(est, problem(a), OPTIONS.get(name, {}))
        network = None
        if name == "relax":
            net = options["networks"][0]
            network = ([mp.mpf(x) for x in net.hidden.weight[:, 0].tolist()], [mp.mpf(x) for x in net.hidden.bias.tolist()],
                       [mp.mpf(x) for x in net.out.weight[0].tolist()], mp.mpf(net.out.bias.item()))
        u = torch.tensor(draws, dtype=torch.float64).reshape(len(draws), k, 1)
        gradient = est.draw(problem(a), u, **options)
        values = (gradient.dense() if hasattr(gradient, "dense") else gradient)[:, 0].tolist()
        for us, value in zip(draws, values):
            reference = per_draw(name, a, us, network)
            if not close(value, reference, 1e-6, 1e-12 * cancelling_terms(name, a, us, network)):
                failures.append((a, us, value, float(reference)))
    assert not failures, failures[:5]


@pytest.mark.parametrize("name", [n for n in gs.estimators.names(kind="independent")
                                  if gs.estimators.get(n).noise == "discrete"])
def test_exact_moments_at_saturated_logits_match_50_digits(name):
    for a in LOGITS:
        mean = float(gs.moments(problem(a), name, **OPTIONS.get(name, {})).mean[0])
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
