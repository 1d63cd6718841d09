"""Exact references: closed forms, finite differences, enumeration limits."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gradstats as gs
from gradstats.testing import independent_problems, networks


@pytest.mark.parametrize("t, a", [(0.45, 0.0), (0.499, -1.0), (0.1, 2.5), (0.45, 50.0), (0.45, -50.0)])
def test_toy_gradient_closed_form(t, a):
    # d/da E[(h - t)^2] = p (1 - p) (f(1) - f(0)) = p (1 - p) (1 - 2 t)
    a_t = torch.tensor(a, dtype=torch.float64)
    p, one_minus_p = torch.sigmoid(a_t), torch.sigmoid(-a_t)  # 1 - p without cancellation
    problem = gs.problems.toy(t, a)
    expected = p * one_minus_p * ((1 - t) ** 2 - t**2)
    assert torch.allclose(gs.exact_gradient(problem), expected.reshape(1), rtol=1e-13, atol=1e-300)
    assert gs.exact_loss(problem) == pytest.approx(float(p * (1 - t) ** 2 + one_minus_p * t**2), rel=1e-14)


def test_sts_toy_objective_closed_form():
    # STS: E[f(h)] = sqrt(p) f(sqrt(p)) + (1 - sqrt(p)) f(0); its derivative in a by the chain rule.
    t, a = 0.3, 0.4
    at = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    q = torch.sigmoid(at).sqrt()
    value = q * (q - t) ** 2 + (1 - q) * t**2
    (grad,) = torch.autograd.grad(value, at)
    problem = gs.problems.toy(t, a)
    assert gs.exact_loss(problem, "sts") == pytest.approx(float(value.detach()), rel=1e-14)
    assert torch.allclose(gs.exact_gradient(problem, "sts"), grad.reshape(1), rtol=1e-13)


def central_differences(problem, objective, step=1e-5):
    theta = problem.flat_parameters()
    out = torch.empty_like(theta)
    for j in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[j] = step
        up = gs.exact_loss(problem.with_parameters(theta + e), objective)
        down = gs.exact_loss(problem.with_parameters(theta - e), objective)
        out[j] = (up - down) / (2 * step)
    return out


@given(problem=networks(max_layers=3, max_total_units=7), objective=st.sampled_from(["binary", "sts"]))
def test_exact_gradient_matches_central_differences(problem, objective):
    # Truncation error ~ step^2 |J'''| and rounding ~ eps |J| / step: both below 1e-8 here
    # (losses are O(10), third derivatives O(100) for these weight scales).
    fd = central_differences(problem, objective)
    exact = gs.exact_gradient(problem, objective)
    scale = 1.0 + abs(gs.exact_loss(problem, objective))
    assert torch.allclose(exact, fd, rtol=1e-6, atol=1e-7 * scale), (exact - fd).abs().max()


@given(problem=independent_problems())
def test_saturated_logits_give_finite_results(problem):
    for objective in ("binary", "sts"):
        assert torch.isfinite(gs.exact_gradient(problem, objective)).all()
        assert torch.isfinite(torch.tensor(gs.exact_loss(problem, objective)))


def test_chunk_size_does_not_change_the_result():
    problem = gs.problems.sbn([3, 4, 3], seed=1)
    ref = gs.exact_gradient(problem, chunk_size=2**16)
    assert torch.allclose(gs.exact_gradient(problem, chunk_size=7), ref, rtol=1e-13, atol=1e-15)


def test_enumeration_too_large_names_states_memory_and_limit():
    problem = gs.problems.sbn([4, 20, 10], seed=0)
    with pytest.raises(ValueError, match=r"2\^30 = 1,073,741,824 joint states .* TiB .* limit is max_states = 16,777,216"):
        gs.exact_gradient(problem)
    with pytest.raises(ValueError, match="max_states"):
        gs.moments(problem, "st")


def test_bad_objective_and_chunk_size():
    problem = gs.problems.toy()
    with pytest.raises(ValueError, match="objective must be one of"):
        gs.exact_gradient(problem, "gumbel")
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        gs.exact_loss(problem, chunk_size=0)
