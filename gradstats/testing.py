"""Public hypothesis strategies for property tests of estimators against exact references.

Example::

    from hypothesis import given
    import gradstats as gs
    from gradstats.testing import networks

    @given(networks(max_layers=2))
    def test_my_estimator_is_unbiased(problem):
        m = gs.moments(problem, my_estimator_name)   # exact where the noise is discrete
        assert torch.allclose(m.mean, gs.exact_gradient(problem), atol=1e-10)
"""

from __future__ import annotations

from hypothesis import strategies as st

from . import losses, problems

__all__ = ["logits", "network_losses", "networks", "independent_problems"]


def logits(max_abs: float = 50.0, min_size: int = 1, max_size: int = 4) -> st.SearchStrategy[list[float]]:
    """Lists of finite logits, saturated ones (up to ``max_abs``) included."""
    value = st.one_of(st.floats(-4.0, 4.0), st.floats(-max_abs, max_abs), st.sampled_from([-max_abs, max_abs]))
    return st.lists(value, min_size=min_size, max_size=max_size)


@st.composite
def network_losses(draw, num_units: int) -> losses.Loss:
    """A built-in loss on ``num_units`` units: polynomial, or a seeded readout."""
    kind = draw(st.sampled_from(["polynomial", "squared_error", "cross_entropy"]))
    if kind == "polynomial":
        return losses.polynomial(draw(st.floats(-1.0, 2.0)), draw(st.sampled_from([1.0, 2.0, 3.0, 4.0])))
    return losses.random_readout(kind, num_units, draw(st.integers(1, 4)), seed=draw(st.integers(0, 2**16)))


@st.composite
def networks(draw, max_layers: int = 3, max_units: int = 4, max_inputs: int = 3,
             max_total_units: int = 10) -> problems.Problem:
    """Stochastic binary networks of 1 to ``max_layers`` layers with a built-in loss."""
    depth = draw(st.integers(1, max_layers))
    sizes = [draw(st.integers(1, max_inputs))]
    budget = max_total_units
    for remaining in range(depth, 0, -1):
        n = draw(st.integers(1, max(1, min(max_units, budget - (remaining - 1)))))
        sizes.append(n)
        budget -= n
    loss = draw(network_losses(sizes[-1]))
    return problems.sbn(sizes, loss, seed=draw(st.integers(0, 2**16)),
                        weight_scale=draw(st.floats(0.5, 4.0)))


@st.composite
def independent_problems(draw, max_units: int = 4, max_abs_logit: float = 50.0) -> problems.Problem:
    """Independent binary units with saturated logits possible and a built-in loss."""
    a = draw(logits(max_abs_logit, 1, max_units))
    return problems.independent(draw(network_losses(len(a))), a)
