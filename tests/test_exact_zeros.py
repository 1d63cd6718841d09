"""A per-draw gradient that is 0 in exact arithmetic is 0 in floating point, on every device.

The per-draw sign agreement counts the raw sign of each draw, so rounding residue where the exact value
is 0 would count as a sign. It arises where an estimator differences losses of passes that reach the
same output (leave-one-out, ARM, DisARM, local expectation on deep networks), and where leave-one-out's
``k`` terms cancel. A device may round one row of a batch differently at different positions (CUDA
does): :func:`rounded_by_position` imitates that on the CPU by scaling each row's loss by
``1 + j * 2^-52``, ``j`` in {0, 1, 2} set by its position and the call, so that equal outputs get losses
one or two ulps apart. Every check here is exact (no tolerance on a sign), and each, bar the check of
that instrument, fails on the code that differenced those losses as they came and took leave-one-out's
mean as ``sum / k``.
"""

import itertools

import pytest
import torch

import gradstats as gs
import gradstats.functional as gf
from gradstats import enumeration
from gradstats.estimators.score_function import leave_one_out_rule, tied_losses
from gradstats.losses import Loss
from gradstats.problems import Problem
from gradstats.units import BINARY

# Networks whose different outputs have different losses (random readouts). Where two different outputs have
# equal losses in exact arithmetic (a loss symmetric in some units), the two values are computed in another
# order and may be an ulp apart: a draw that is 0 only through that coincidence keeps the loss's rounding,
# as documented in gradstats.metrics; those draws are not structural zeros and are not checked here.
NETWORKS = [gs.problems.sbn([2, 3, 2], seed=0), gs.problems.sbn([3, 2, 2, 2], seed=1, weight_scale=2.0),
            gs.problems.sbn([2, 2, 3], "cross_entropy", seed=2)]
LOSS_DIFFERENCES = [("reinforce_loo", {"k": 2}), ("reinforce_loo", {"k": 3}), ("arm", {}), ("disarm", {}),
                    ("local_expectation", {})]


def rounded_by_position(fn):
    """``fn`` as a device may compute it: the same row rounded differently at different positions and calls."""
    calls = itertools.count(1)

    def rounded(h):
        value = fn(h)
        position = ((torch.arange(value.numel()) + next(calls)) % 3).reshape(value.shape).to(value.dtype)
        return value * (1 + position * 2.0**-52)

    return rounded


def test_rounded_by_position_rounds_equal_rows_apart():
    rounded = rounded_by_position(lambda h: h.sum(-1))
    h = torch.full((3, 2), 0.7, dtype=torch.float64)
    assert len(set(rounded(h).tolist())) == 3


def on_a_device(problem: Problem) -> Problem:
    loss = Loss(rounded_by_position(problem.loss.fn), differentiable=False, name="rounded by position")
    return Problem(problem.kind, problem.layers, problem.parameters, loss, problem.x)


def residue(g: torch.Tensor) -> torch.Tensor:
    """Entries nonzero yet below 1e-12 of their draw's largest: rounding where the exact value is 0."""
    return (g != 0) & (g.abs() <= 1e-12 * g.abs().amax(-1, keepdim=True))


@pytest.mark.parametrize("name, options", LOSS_DIFFERENCES)
@pytest.mark.parametrize("problem", NETWORKS, ids=repr)
def test_a_draw_has_the_same_signs_however_the_device_rounds_the_loss(name, options, problem):
    est = gs.estimators.get(name)
    u = torch.rand(20_000, est.noise_per_unit(options), problem.num_units, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(0))
    here = est.draw(problem, u, **options).dense()
    there = est.draw(on_a_device(problem), u, **options).dense()
    assert not residue(here).any()
    assert torch.equal(here.sign(), there.sign())
    assert (here - there).abs().max() <= 1e-12 * here.abs().max()      # the loss's rounding, after differencing


@pytest.mark.parametrize("k", [2, 3])
def test_exact_sign_agreement_of_leave_one_out_does_not_depend_on_the_device_rounding(k):
    problem = gs.problems.sbn([3, 2, 2], seed=1)
    refs = {"g": gs.exact_gradient(problem)}
    here = gs.moments(problem, "reinforce_loo", k=k, references=refs).statistics
    there = gs.moments(on_a_device(problem), "reinforce_loo", k=k, references=refs).statistics
    assert torch.equal(here.sign_agree["g"], there.sign_agree["g"])
    # a unit whose k samples agree contributes exactly 0: with k = 2, the two samples differ with
    # probability 2 p q only, so 0 is by far the most frequent value of a hidden unit's bias coordinate
    est = gs.estimators.get("reinforce_loo")
    for traj in enumeration.trajectories(problem, BINARY, copies=k):
        g = est.from_states(problem, traj, k=k).dense()
        assert not residue(g).any()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_leave_one_out_rule_gives_exact_zeros_and_its_terms_sum_to_the_definition(k):
    gen = torch.Generator().manual_seed(k)
    a = torch.randn(4, 1, 6, dtype=torch.float64, generator=gen).expand(4, k, 6)
    b = (torch.rand(4, k, 6, generator=gen, dtype=torch.float64) < 0.5).to(torch.float64)
    b[0] = b[0, :1]                                                   # draw 0: every unit's k samples agree
    loss = torch.randn(4, k, dtype=torch.float64, generator=gen)
    loss[1] = loss[1, 0]                                              # draw 1: k equal losses
    terms = leave_one_out_rule(a, b, loss, axis=1)
    assert torch.equal(terms[:2], torch.zeros_like(terms[:2]))
    p = torch.sigmoid(a)
    expected = ((loss - loss.mean(1, keepdim=True)) / (k - 1))[..., None] * (b - p)
    assert torch.allclose(terms.sum(1), expected.sum(1), rtol=1e-12, atol=1e-15)
    # per-pass inputs: a unit is set to 0 only where its inputs agree too, since the weight gradient is
    # sum_j term_j x_j and the x_j differ
    x = torch.randn(4, k, 3, dtype=torch.float64, generator=gen)
    with_inputs = leave_one_out_rule(a, b, loss, axis=1, inputs=x)
    assert torch.allclose(torch.einsum("bkn,bkm->bnm", with_inputs, x), torch.einsum("bkn,bkm->bnm", expected, x),
                          rtol=1e-12, atol=1e-15)


def test_tied_losses_gives_equal_outputs_the_first_pass_loss():
    outputs = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]]])
    loss = torch.tensor([[1.0, 2.0, 1.0 + 2**-52, 2.0 + 2**-51]])
    assert torch.equal(tied_losses(loss, outputs, axis=1), torch.tensor([[1.0, 2.0, 1.0, 2.0]]))
    assert torch.equal(tied_losses(loss.T, outputs.permute(1, 0, 2), axis=0), torch.tensor([[1.0], [2.0], [1.0], [2.0]]))


@pytest.mark.parametrize("dropin", ["arm", "reinforce_loo"])   # one-layer DisARM: 1[b != b~] gives its zeros
def test_dropins_give_the_same_signs_however_the_device_rounds_the_loss(dropin):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, dtype=torch.float64, generator=gen)

    def loss_fn(b):
        return (b @ w - 0.3) ** 2

    a = torch.randn(200, 5, dtype=torch.float64, generator=gen)
    shape = (2, *a.shape) if dropin == "reinforce_loo" else a.shape
    u = torch.rand(shape, dtype=torch.float64, generator=gen)
    grads = []
    for fn in (loss_fn, rounded_by_position(loss_fn)):
        leaf = a.clone().requires_grad_()
        getattr(gf, dropin)(leaf, fn, u=u)[1].backward()
        grads.append(leaf.grad)
    assert not residue(grads[0]).any()
    assert torch.equal(grads[0].sign(), grads[1].sign())
