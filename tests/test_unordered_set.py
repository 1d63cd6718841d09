"""The unordered set estimator's exact mean (``gradstats.audit.unordered_set_mean``), the audit's independent
computation of what storchastic's ``UnorderedSetEstimator`` estimates: exact where it should be, and converging
where its quadrature is refined. Exact arithmetic, no peer needed."""

import pytest
import torch
from hypothesis import given, settings

import gradstats as gs
from gradstats import audit
from gradstats.testing import networks

KOOL = {"own_term_twice": False, "peer_indexing": False}   # the ratios as Kool, van Hoof & Welling define them


@pytest.mark.parametrize("problem", audit.audit_problems(), ids=lambda p: p.description)
def test_with_exact_ratios_the_mean_is_the_gradient(problem):
    mean = audit.unordered_set_mean(problem, None, **KOOL)
    assert torch.allclose(mean, gs.exact_gradient(problem), rtol=1e-12, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(problem=networks(max_layers=1, max_units=3))
def test_with_exact_ratios_the_mean_is_the_gradient_on_random_layers(problem):
    mean = audit.unordered_set_mean(problem, None, **KOOL)
    g = gs.exact_gradient(problem)
    assert torch.allclose(mean, g, rtol=1e-9, atol=1e-12 * (1 + float(g.abs().max())))


def test_the_quadrature_error_falls_like_one_over_the_points_and_the_peer_ratio_does_not_vanish():
    three = audit.audit_problems()[3]
    g = gs.exact_gradient(three)

    def gap(points, **options):
        return float((audit.unordered_set_mean(three, points, **options) - g).norm() / g.norm())

    assert 0.5 < gap(1_000, **KOOL) / (10 * gap(10_000, **KOOL)) < 2.0      # O(1 / points)
    assert gap(100_000, **KOOL) < 1e-3
    # the peer's leave-two-out ratio leaves a bias that refining the quadrature does not remove
    assert gap(100_000) > 0.03 and abs(gap(100_000) - gap(10_000)) < 0.01


@pytest.mark.parametrize("options, match", [({"num_points": 1}, "num_points must be at least 2"),
                                            ({"num_points": 0}, "num_points must be an integer >= 1"),
                                            ({"stabiliser": -1e-6}, "stabiliser finite and >= 0"),
                                            ({"a": float("nan")}, "a must be finite")])
def test_bad_quadrature_settings_are_refused_by_name(options, match):
    with pytest.raises(ValueError, match=match):
        audit.unordered_set_mean(audit.audit_problems()[0], **options)
