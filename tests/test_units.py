"""Units as functions of explicit noise: their laws, exactly where possible."""

import math

import pytest
import torch

import gradstats as gs
from gradstats.units import BINARY, STS

A = torch.tensor([-50.0, -6.0, -1.3, 0.0, 0.7, 3.0, 50.0], dtype=torch.float64)


def midpoint_uniforms(n: int) -> torch.Tensor:
    """Deterministic u_k = (k + 1/2) / n: averages over them are midpoint-rule integrals."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def test_binary_probability_is_sigmoid_not_its_complement():
    # Eq. 3 prints 1[z > sigm(a)]; we use 1[u < sigm(a)] so that P(h = 1) = sigm(a).
    u = midpoint_uniforms(100_000)[:, None]
    h = gs.units.binary(A.expand(u.shape[0], -1), u.expand(-1, A.numel()))
    # the midpoint grid gives P to within 1/n exactly
    assert torch.allclose(h.mean(0), torch.sigmoid(A), atol=1e-5)


def test_sts_mean_is_p_and_positive_probability_is_sqrt_p():
    # Proposition 2 (a), (b), exactly from the unit's law: E[h] = q * sqrt(p) with q = sqrt(p).
    p = torch.sigmoid(A)
    q = STS.q(A)
    assert torch.allclose(q, p.sqrt(), rtol=0, atol=1e-15)
    assert torch.allclose(q * STS.value(A, torch.ones_like(A)), p, rtol=1e-14, atol=1e-300)
    u = midpoint_uniforms(100_000)[:, None]
    h = gs.units.sts(A.expand(u.shape[0], -1), u.expand(-1, A.numel()))
    assert torch.allclose((h > 0).double().mean(0), p.sqrt(), atol=1e-5)


@pytest.mark.parametrize("unit", [BINARY, STS])
def test_log_probabilities_are_finite_and_normalised_for_saturated_logits(unit):
    for b_value in (0.0, 1.0):
        assert torch.isfinite(unit.log_prob(A, torch.full_like(A, b_value))).all()
    total = unit.log_q(A).exp() + unit.log_1mq(A).exp()
    assert torch.allclose(total, torch.ones_like(A), rtol=0, atol=1e-15)


def test_noisy_rectifier_logistic_matches_proposition_1_by_quadrature():
    # With logistic noise, P(h > 0) = sigm(a) and E[h] = softplus(a); the midpoint rule over u
    # integrates E[h] with error O(1/n^2) away from the kink, O(1/n) near u -> 0, 1 tails.
    a = torch.tensor([-2.0, 0.0, 1.5], dtype=torch.float64)
    u = midpoint_uniforms(1_000_000)[:, None]
    h = gs.units.noisy_rectifier(a.expand(u.shape[0], -1), u.expand(-1, 3), noise="logistic")
    assert torch.allclose((h > 0).double().mean(0), torch.sigmoid(a), atol=2e-6)
    assert torch.allclose(h.mean(0), torch.nn.functional.softplus(a), atol=1e-4)


def test_noisy_rectifier_gaussian_scale():
    a = torch.zeros(1, dtype=torch.float64)
    u = midpoint_uniforms(1_000_000)[:, None]
    h = gs.units.noisy_rectifier(a.expand(u.shape[0], -1), u, noise="gaussian", scale=2.0)
    # E[max(0, 2 Z)] = 2 / sqrt(2 pi)
    assert abs(float(h.mean()) - 2 / math.sqrt(2 * math.pi)) < 1e-4


@pytest.mark.parametrize("kwargs, match", [
    ({"noise": "cauchy"}, "noise must be one of"),
    ({"scale": 0.0}, "scale must be a finite positive"),
    ({"scale": float("nan")}, "scale must be a finite positive"),
])
def test_noisy_rectifier_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gs.units.noisy_rectifier(torch.zeros(2), torch.rand(2), **kwargs)


def test_flip_each_flips_exactly_one_unit_per_row_along_the_chosen_axis():
    h = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    inner, outer = gs.units.flip_each(h, axis=-2), gs.units.flip_each(h, axis=0)   # [B, n, n] and [n, B, n]
    assert inner.shape == (2, 3, 3) and outer.shape == (3, 2, 3)
    assert torch.equal(inner, outer.transpose(0, 1))
    assert torch.equal((inner != h[:, None, :]).to(torch.int64), torch.eye(3, dtype=torch.int64).expand(2, 3, 3))


def test_one_hot_of_is_torchs_one_hot_and_runs_where_torchs_cannot():
    """units.one_hot_of equals torch's F.one_hot on every index of 0..K-1 (in the dtype asked for), gives a row of
    zeros outside the classes (it checks nothing: its docstring says so), and runs under vmap of grad, where torch's
    one_hot reads the indices and is refused."""
    index = torch.tensor([[0, 3, 1], [2, 2, 0]])
    for dtype in (torch.float32, torch.float64):
        got = gs.units.one_hot_of(index, 4, dtype)
        assert got.dtype == dtype and torch.equal(got, torch.nn.functional.one_hot(index, 4).to(dtype))
    assert torch.equal(gs.units.one_hot_of(torch.tensor([-1, 4]), 4, torch.float64), torch.zeros(2, 4, dtype=torch.float64))

    def loss(a):
        return (gs.units.one_hot_of(a.argmax(-1), 4, a.dtype) * a).sum()

    a = torch.randn(5, 3, 4, dtype=torch.float64)
    grads = torch.func.vmap(torch.func.grad(loss))(a)
    assert torch.equal(grads, torch.nn.functional.one_hot(a.argmax(-1), 4).to(a.dtype))
