"""Public hypothesis strategies for property tests of estimators against exact references.

Losses come in classes that matter for the claims (:mod:`gradstats.claims`):
``"multilinear"`` (affine in each unit), ``"monotone"`` (monotone in each unit,
in one direction whatever the others are), ``"polynomial"`` (general separable
polynomials of degree up to 3, and the seed paper's ``sum |h - t|^k``), and the
``"readout"`` losses (squared error and cross-entropy of a linear readout).

Example::

    from hypothesis import given
    import gradstats as gs
    from gradstats.testing import networks

    @given(networks(max_layers=2, loss_kinds=("multilinear",)))
    def test_my_estimator_is_unbiased(problem):
        m = gs.moments(problem, "my_estimator")   # exact where the noise is discrete
        assert torch.allclose(m.mean, gs.exact_gradient(problem), atol=1e-10)
"""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from . import losses, problems

__all__ = ["LOSS_KINDS", "logits", "losses_of", "network_losses", "networks", "independent_problems",
           "single_layer_problems", "CATEGORICAL_LOSS_KINDS", "categorical_problems"]

LOSS_KINDS = ("multilinear", "monotone", "polynomial", "readout")

_coef = st.floats(-3.0, 3.0, allow_nan=False)


def logits(max_abs: float = 50.0, min_size: int = 1, max_size: int = 4) -> st.SearchStrategy[list[float]]:
    """Lists of finite logits, saturated ones (up to ``max_abs``) included."""
    value = st.one_of(st.floats(-4.0, 4.0), st.floats(-max_abs, max_abs), st.sampled_from([-max_abs, max_abs]))
    return st.lists(value, min_size=min_size, max_size=max_size)


@st.composite
def losses_of(draw, kind: str, num_units: int) -> losses.Loss:
    """A loss of class ``kind`` (one of :data:`LOSS_KINDS`) on ``num_units`` units."""
    if kind == "multilinear":
        subsets = [s for r in range(num_units + 1) for s in itertools.combinations(range(num_units), r)]
        chosen = draw(st.lists(st.sampled_from(subsets), min_size=1, max_size=len(subsets), unique=True))
        return losses.multilinear({s: draw(_coef) for s in chosen}, num_units)
    if kind == "monotone":
        k = draw(st.integers(1, 3))
        weights = [[draw(st.floats(0.1, 2.0)) for _ in range(num_units)] for _ in range(k)]
        directions = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(num_units)]
        return losses.softplus_ridge(weights, directions, [draw(_coef) for _ in range(k)],
                                     [draw(st.floats(0.1, 2.0)) for _ in range(k)])
    if kind == "polynomial":
        if draw(st.booleans()):
            return losses.polynomial(draw(st.floats(-1.0, 2.0)), draw(st.sampled_from([1.0, 2.0, 3.0, 4.0])))
        return losses.power_sum([[draw(_coef) for _ in range(3)] for _ in range(num_units)])
    if kind == "readout":
        which = draw(st.sampled_from(["squared_error", "cross_entropy"]))
        return losses.random_readout(which, num_units, draw(st.integers(1, 4)), seed=draw(st.integers(0, 2**16)))
    raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")


@st.composite
def network_losses(draw, num_units: int, kinds: tuple[str, ...] = LOSS_KINDS) -> losses.Loss:
    """A loss of one of ``kinds`` on ``num_units`` units."""
    return draw(losses_of(draw(st.sampled_from(kinds)), num_units))


@st.composite
def networks(draw, max_layers: int = 3, max_units: int = 4, max_inputs: int = 3, max_total_units: int = 10,
             min_layers: int = 1, loss_kinds: tuple[str, ...] = LOSS_KINDS,
             weight_scale: tuple[float, float] = (0.5, 4.0)) -> problems.Problem:
    """Stochastic binary networks of ``min_layers`` to ``max_layers`` layers with a loss of ``loss_kinds``."""
    depth = draw(st.integers(min_layers, max_layers))
    sizes = [draw(st.integers(1, max_inputs))]
    budget = max_total_units
    for remaining in range(depth, 0, -1):
        n = draw(st.integers(1, max(1, min(max_units, budget - (remaining - 1)))))
        sizes.append(n)
        budget -= n
    loss = draw(network_losses(sizes[-1], loss_kinds))
    return problems.sbn(sizes, loss, seed=draw(st.integers(0, 2**16)), weight_scale=draw(st.floats(*weight_scale)))


@st.composite
def independent_problems(draw, max_units: int = 4, max_abs_logit: float = 50.0,
                         loss_kinds: tuple[str, ...] = LOSS_KINDS) -> problems.Problem:
    """Independent binary units with saturated logits possible and a loss of ``loss_kinds``."""
    a = draw(logits(max_abs_logit, 1, max_units))
    return problems.independent(draw(network_losses(len(a), loss_kinds)), a)


def single_layer_problems(max_units: int = 4, loss_kinds: tuple[str, ...] = LOSS_KINDS,
                          max_abs_logit: float = 8.0) -> st.SearchStrategy[problems.Problem]:
    """Independent units or one-layer networks: the "single layer" of the seed paper's ST claim."""
    return st.one_of(independent_problems(max_units, max_abs_logit, loss_kinds),
                     networks(max_layers=1, max_units=max_units, loss_kinds=loss_kinds))


CATEGORICAL_LOSS_KINDS = ("quadratic", "cubic", "readout")


@st.composite
def categorical_problems(draw, max_layers: int = 1, max_units: int = 3, max_classes: int = 5, max_states: int = 4096,
                         loss_kinds: tuple[str, ...] = CATEGORICAL_LOSS_KINDS) -> problems.Problem:
    """Networks (or, at one layer, possibly independent units) of categorical units of 2 to ``max_classes`` classes,
    at most ``max_states`` joint states, with a loss of ``loss_kinds`` on the last layer's one-hot values:
    ``"quadratic"`` (a squared-error readout, or a separable quadratic), ``"cubic"`` (a separable cubic) or
    ``"readout"`` (squared error or cross-entropy of a readout)."""
    k = draw(st.integers(2, max_classes))
    depth = draw(st.integers(1, max_layers))
    units = [draw(st.integers(1, max_units)) for _ in range(depth)]
    while k ** sum(units) > max_states:
        units[units.index(max(units))] -= 1
        if 0 in units:
            units, k = [1] * depth, 2
    n = units[-1] * k
    kind = draw(st.sampled_from(loss_kinds))
    seed = draw(st.integers(0, 2**16))
    coefficient = st.floats(-3.0, 3.0, allow_nan=False)
    if kind == "quadratic" and draw(st.booleans()):
        loss = losses.random_readout("squared_error", n, draw(st.integers(1, 3)), seed=seed)
    elif kind in ("quadratic", "cubic"):
        loss = losses.power_sum([[draw(coefficient) for _ in range(2 if kind == "quadratic" else 3)] for _ in range(n)])
    elif kind == "readout":
        loss = losses.random_readout(draw(st.sampled_from(["squared_error", "cross_entropy"])), n,
                                     draw(st.integers(1, 4)), seed=seed)
    else:
        raise ValueError(f"loss kinds must be among {CATEGORICAL_LOSS_KINDS}, got {kind!r}")
    scale = draw(st.floats(0.5, 4.0))
    if depth == 1 and draw(st.booleans()):
        return problems.categorical(units, num_classes=k, loss=loss, seed=seed, weight_scale=scale)
    return problems.categorical([draw(st.integers(1, 3))] + units, num_classes=k, loss=loss, seed=seed,
                                weight_scale=scale)
