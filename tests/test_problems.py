"""Problems: parameter layout, constructors and their errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradstats as gs
from gradstats.testing import independent_problems, networks


def test_sbn_parameter_order_and_shapes():
    p = gs.problems.sbn([8, 5, 5], loss="squared_error", seed=0)
    assert p.parameter_names() == ["W1", "c1", "W2", "c2"]
    assert p.parameter_shapes() == {"W1": (5, 8), "c1": (5,), "W2": (5, 5), "c2": (5,)}
    assert p.num_parameters == 40 + 5 + 25 + 5
    assert p.num_units == 10
    assert p.coordinate_names()[:2] == ["W1[0,0]", "W1[0,1]"]
    assert p.coordinate_names()[45] == "W2[0,0]"
    assert p.coordinate_layers().tolist() == [1] * 45 + [2] * 30


def test_flat_parameters_round_trip():
    p = gs.problems.sbn([3, 2, 4], seed=3)
    theta = p.flat_parameters()
    assert torch.equal(p.with_parameters(theta).flat_parameters(), theta)
    assert torch.equal(p.unflatten(theta)["W2"], p.parameters["W2"])


def test_sbn_is_a_pure_function_of_its_seed():
    a, b = gs.problems.sbn([4, 3, 2], seed=7), gs.problems.sbn([4, 3, 2], seed=7)
    assert torch.equal(a.flat_parameters(), b.flat_parameters()) and torch.equal(a.x, b.x)
    assert not torch.equal(a.flat_parameters(), gs.problems.sbn([4, 3, 2], seed=8).flat_parameters())


def test_toy_and_independent():
    t = gs.problems.toy(target=0.45, logit=-1.0)
    assert t.parameter_names() == ["logit"] and t.kind == "toy"
    ind = gs.problems.independent(lambda h: h.sum(-1), probs=[0.2, 0.5])
    assert torch.allclose(torch.sigmoid(ind.parameters["logits"]), torch.tensor([0.2, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("call, match", [
    (lambda: gs.problems.independent(lambda h: h.sum(-1), probs=[0.5, 1.2]), "probs must lie strictly inside"),
    (lambda: gs.problems.independent(lambda h: h.sum(-1), probs=[-0.1]), "probs must lie strictly inside"),
    (lambda: gs.problems.independent(lambda h: h.sum(-1), logits=[0.0, float("inf")]), "logits must be finite"),
    (lambda: gs.problems.independent(lambda h: h.sum(-1), logits=[float("nan")]), "logits must be finite"),
    (lambda: gs.problems.independent(lambda h: h.sum(-1)), "exactly one of logits and probs"),
    (lambda: gs.problems.independent(lambda h: h, logits=[0.0, 1.0]), "one value per row"),
    (lambda: gs.problems.independent(42, logits=[0.0]), "loss must be a Loss or a callable"),
    (lambda: gs.problems.toy(target=float("nan")), "target must be a finite number"),
    (lambda: gs.problems.toy(logit=float("inf")), "logit must be a finite number"),
    (lambda: gs.problems.sbn([8]), "sizes must be a list"),
    (lambda: gs.problems.sbn([8, 0]), "sizes must be a list"),
    (lambda: gs.problems.sbn([3, 2], x=[1.0, 2.0]), "x must have sizes\\[0\\] = 3 entries"),
    (lambda: gs.problems.sbn([3, 2], loss="hinge"), "readout kind must be one of"),
    (lambda: gs.problems.sbn([3, 2], weight_scale=0), "weight_scale must be > 0"),
    (lambda: gs.problems.sbn([3, 2], loss=gs.losses.readout_squared_error(torch.ones(2, 5), torch.zeros(2))),
     "expects h with 5 entries, but the last layer has 2"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_loss_bad_input():
    with pytest.raises(ValueError, match="power must be"):
        gs.losses.polynomial(0.5, 0)
    with pytest.raises(ValueError, match="target must have 2 entries"):
        gs.losses.readout_squared_error(torch.ones(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="label must be an integer in \\[0, 2\\)"):
        gs.losses.readout_cross_entropy(torch.ones(2, 3), 2)
    with pytest.raises(ValueError, match="weight must be finite"):
        gs.losses.readout_cross_entropy(torch.full((2, 3), float("nan")), 0)


def test_builtin_loss_gradients_match_autograd():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(5, 3, generator=g, dtype=torch.float64)
    for loss in (gs.losses.polynomial(0.3, 3.0), gs.losses.random_readout("squared_error", 3, 2, seed=1),
                 gs.losses.random_readout("cross_entropy", 3, 4, seed=2)):
        value, grad = loss.value_and_grad(h)
        plain = gs.losses.Loss(loss.fn)  # same function, gradient by autograd
        value2, grad2 = plain.value_and_grad(h)
        assert torch.allclose(value, value2, rtol=1e-14) and torch.allclose(grad, grad2, rtol=1e-12, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(st.one_of(networks(), independent_problems()))
def test_a_printed_problem_rebuilds_exactly(problem):
    # hypothesis prints a counterexample's repr: evaluating it must give the same problem, bit for bit
    again = eval(repr(problem), {"gs": gs})
    assert again.layer_sizes == problem.layer_sizes and again.parameter_names() == problem.parameter_names()
    assert all(torch.equal(again.parameters[k], v) for k, v in problem.parameters.items())
    assert (again.x is None) == (problem.x is None) and (problem.x is None or torch.equal(again.x, problem.x))
    h = torch.rand(7, problem.layer_sizes[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.loss(h), problem.loss(h))


def test_problems_that_cannot_be_written_down_say_what_they_are():
    problem = gs.problems.sbn([3, 2], loss=lambda h: h.sum(-1), seed=0)
    assert repr(problem).startswith("Problem(sbn(3-2, seed=0)")
    moved = gs.problems.sbn([3, 2], seed=0).with_parameters(torch.zeros(8, dtype=torch.float64))
    assert repr(moved).startswith("Problem(")
