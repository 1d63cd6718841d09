"""One test per claim of later work in the registry, plus the exact pieces they rest on."""

import pytest
import torch
from hypothesis import given

import gradstats as gs
from gradstats.claims import later_work
from gradstats.estimators.score_function import arm_exact_moments
from gradstats.testing import single_layer_problems


def test_st_multilinear(verdict):
    row = verdict("ST-ML")
    assert row["status"] == "confirmed" and row["cases"] >= 100


@given(problem=single_layer_problems(max_units=3, loss_kinds=("multilinear",)))
def test_st_is_a_positive_multiple_for_multilinear_losses(problem):
    assert later_work.st_factor_gap(problem) < 1e-10


def test_reinmax_quadratic(verdict):
    row = verdict("REINMAX-Q")
    assert row["status"] == "confirmed"
    assert row["data"]["cubic_reinmax"] == pytest.approx(1.5 * row["data"]["cubic_gradient"], rel=1e-12)
    assert "categorical" in row["qualifier"] and row["cases"] >= 100


def test_disarm_variance(verdict):
    row = verdict("DISARM-V")
    assert row["status"] == "confirmed" and row["cases"] >= 100
    # the size is reported over the searched layers, not asserted: every trace ratio is in [0, 1] (the guarantee),
    # and the share called substantial is the share at most DISARM_SUBSTANTIAL_RATIO
    ratios = row["data"]["trace_ratios"]
    assert len(ratios) == row["data"]["trace_ratio_problems"] >= 50
    assert all(0.0 <= r <= 1.0 + 1e-12 for r in ratios)
    share = sum(r <= later_work.DISARM_SUBSTANTIAL_RATIO for r in ratios) / len(ratios)
    assert share == row["data"]["trace_ratio_substantial_share"] and "substantial" in row["qualifier"]
    # the size is reported over the searched layers, not asserted: every trace ratio is in [0, 1] (the guarantee),
    # and the share called substantial is the share at most DISARM_SUBSTANTIAL_RATIO
    ratios = row["data"]["trace_ratios"]
    assert len(ratios) == row["data"]["trace_ratio_problems"] >= 50
    assert all(0.0 <= r <= 1.0 + 1e-12 for r in ratios)
    share = sum(r <= later_work.DISARM_SUBSTANTIAL_RATIO for r in ratios) / len(ratios)
    assert share == row["data"]["trace_ratio_substantial_share"] and "substantial" in row["qualifier"]


def test_arm_exact_moments_match_monte_carlo():
    # mean exact (the gradient); variance against 1e6 draws within 3 % (> 10 standard errors of a sample variance)
    problem = gs.problems.sbn([2, 3], "squared_error", seed=3, weight_scale=2.0)
    mean, var = arm_exact_moments(problem)
    assert torch.allclose(mean, gs.exact_gradient(problem), rtol=1e-10, atol=1e-13)
    mc = gs.moments(problem, "arm", method="mc", num_samples=1_000_000, seed=0, device="cpu", progress=False)
    assert torch.allclose(mc.var, var, rtol=0.03)


def test_gumbel_temperature(verdict):
    row = verdict("GUMBEL-T")
    assert row["status"] == "confirmed" and not row["data"]["variance_breaks"]
    assert row["data"]["interior_everywhere_on_networks"]   # the trade-off: MSE(tau) lowest inside the grid at fixed M
    categorical = row["data"]["categorical_interior_minimum"]   # and on the categorical networks, for every M
    assert len(categorical) == 3 and all(r["interior"] for rows in categorical.values() for r in rows)
    assert row["data"]["monotone_below"] == 0.25 and abs(row["data"]["bias_order_median"] - 1) < 0.05
    ce = row["counterexample"]   # above that temperature the |bias| can grow as the temperature falls
    assert ce["from_temperature"] >= 0.5
    rows = later_work.gumbel_toy_moments(ce["target"], ce["logit"], (ce["from_temperature"], ce["to_temperature"]))
    (_, bias_hot, var_hot), (_, bias_cold, var_cold) = rows
    assert abs(bias_cold) > abs(bias_hot) * 1.05   # margin >> quadrature error
    assert var_cold > var_hot


def _toy_trade_off(t, a, temperatures=later_work.GUMBEL_TEMPERATURES):
    """Toy moments with a trade-off on the whole grid: |bias| proportional to the temperature, variance its
    inverse (the verdict's other inputs decide the tests that use it)."""
    return [(tau, 0.1 * tau, 1 / tau) for tau in temperatures]


def test_gumbel_temperature_is_confirmed_when_the_bias_never_rises(monkeypatch):
    # a trade-off that holds on the whole grid: |bias| proportional to the temperature, variance its inverse
    monkeypatch.setattr(later_work, "gumbel_toy_moments", _toy_trade_off)
    # networks whose MSE(tau) = tau^2 + 1 / (tau M) has its minimum inside the grid for M = 1, 10, 100
    monkeypatch.setattr(later_work, "gumbel_network_moments",
                        lambda seed, draws: [(tau, tau**2, 1 / tau, 0.0) for tau in later_work.GUMBEL_TEMPERATURES])
    monkeypatch.setattr(later_work, "gumbel_categorical_moments", lambda sizes, k, seed, draws: [
        (tau, tau**2, 1 / tau, 0.0) for tau in later_work.GUMBEL_CATEGORICAL_TEMPERATURES])
    verdict = later_work.check_gumbel_temperature(gs.claims.CheckSettings(quick=True))
    assert verdict.status == "confirmed" and verdict.data["monotone_below"] == later_work.GUMBEL_TEMPERATURES[0]
    assert verdict.data["interior_everywhere_on_networks"] and verdict.data["best_temperature_falls_with_draws"]
    assert not verdict.data["bias_rises"] and abs(verdict.data["bias_order_median"] - 1) < 1e-9


def test_gumbel_temperature_is_refuted_without_an_interior_minimum(monkeypatch):
    # a bias that does not grow with the temperature leaves no trade-off: the MSE is lowest at the hottest end
    monkeypatch.setattr(later_work, "gumbel_toy_moments", _toy_trade_off)
    monkeypatch.setattr(later_work, "gumbel_network_moments",
                        lambda seed, draws: [(tau, 0.0, 1 / tau, 0.0) for tau in later_work.GUMBEL_TEMPERATURES])
    monkeypatch.setattr(later_work, "gumbel_categorical_moments", lambda sizes, k, seed, draws: [
        (tau, tau**2, 1 / tau, 0.0) for tau in later_work.GUMBEL_CATEGORICAL_TEMPERATURES])
    verdict = later_work.check_gumbel_temperature(gs.claims.CheckSettings(quick=True))
    assert verdict.status == "refuted" and not verdict.data["interior_everywhere_on_networks"]


def test_gumbel_temperature_is_refuted_when_categorical_units_have_no_interior_minimum(monkeypatch):
    # binary networks with a trade-off, categorical ones whose MSE is lowest at the hottest end: refuted
    monkeypatch.setattr(later_work, "gumbel_toy_moments", _toy_trade_off)
    monkeypatch.setattr(later_work, "gumbel_network_moments",
                        lambda seed, draws: [(tau, tau**2, 1 / tau, 0.0) for tau in later_work.GUMBEL_TEMPERATURES])
    monkeypatch.setattr(later_work, "gumbel_categorical_moments", lambda sizes, k, seed, draws: [
        (tau, 0.0, 1 / tau, 0.0) for tau in later_work.GUMBEL_CATEGORICAL_TEMPERATURES])
    verdict = later_work.check_gumbel_temperature(gs.claims.CheckSettings(quick=True))
    assert verdict.status == "refuted" and not verdict.data["interior_everywhere_on_networks"]

