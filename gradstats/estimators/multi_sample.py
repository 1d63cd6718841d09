r"""Multi-sample score-function estimators beyond leave-one-out: ARMS and the double control variate.

Notation as in :mod:`.score_function`: logits ``a``, :math:`p = \sigma(a)`, ``k`` samples :math:`b_1 .. b_k`
per draw, their losses :math:`f_j`, and the leave-one-out form
:math:`\frac{1}{k-1}\sum_j (f_j - \bar f)(b_j - p)`
(:func:`~gradstats.estimators.score_function.leave_one_out_rule`). Both estimators are unbiased for any loss
and take their first sample from ``u[:, 0]``, as the binary neuron does (common random numbers).

* ARMS couples the ``k`` samples of each unit through a Dirichlet copula, so that they are mutually
  antithetic, and rescales the leave-one-out form to stay unbiased under that coupling. On networks it is
  applied layer by layer (as ARM and DisARM are): the ``k`` coupled samples of layer ``t`` share the layers
  below and drive the layers above on the draw's own uniforms.
* The double control variate keeps ``k`` independent passes and subtracts from each loss its first-order
  Taylor term, whose expectation is added back exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from .. import enumeration
from ..problems import FactoredGradient, Problem, Trajectory
from ..units import BINARY, binary_residual, sigmoid_derivative
from .base import Estimator, backpropagate, sample_trajectory
from .score_function import copies_of, leave_one_out_rule, sample_above, tied_losses

__all__ = [
    "dirichlet_copula",
    "coupled_samples",
    "arms_debias",
    "arms_rule",
    "arms_pattern_probabilities",
    "double_cv_rule",
    "ARMS",
    "DOUBLE_CV",
]


# ---- ARMS --------------------------------------------------------------------------------------------

def dirichlet_copula(first: Tensor, rest: Tensor) -> Tensor:
    r"""``k`` mutually antithetic uniforms whose first is ``first``: the Dirichlet copula of Dimitriev & Zhou
    (2021, sec. 3), :math:`c_j = (1 - D_j)^{k-1}` with :math:`D` uniform on the simplex, sampled given
    :math:`c_1`.

    :math:`D_1 = 1 - c_1^{1/(k-1)}` (a Beta(1, k - 1) variable, so :math:`c_1` is uniform), and given :math:`D_1`
    the rest of ``D`` is :math:`(1 - D_1)` times normalised exponentials :math:`E_j = -\log(1 - r_j)` of the
    uniforms ``rest`` ``[k - 1, ...]``. Each :math:`c_j` is uniform; ``k = 2`` gives :math:`c_2 = 1 - c_1`.
    Returns ``[k, ...]``.
    """
    k = rest.shape[0] + 1
    remaining = first.pow(1.0 / (k - 1))                       # 1 - D_1
    exponentials = -torch.log1p(-rest)
    total = exponentials.sum(0)
    share = torch.where(total > 0, exponentials / total, torch.full_like(exponentials, 1.0 / (k - 1)))
    others = (1 - remaining * share).pow(k - 1)
    return torch.cat([first[None], others])


def _joint_minority(m: Tensor, k: int, count: int) -> Tensor:
    r""":math:`P(c_j < m` for ``count`` given copies``)`` under the Dirichlet copula of ``k`` uniforms:
    :math:`(1 - \mathrm{count}\,(1 - m^{1/(k-1)}))_+^{k-1}` (the simplex's corner volumes)."""
    if count == 0:
        return torch.ones_like(m)
    root = m.pow(1.0 / (k - 1))
    return (count * root - (count - 1)).clamp_min(0).pow(k - 1)    # count = 1: exactly m, no 1 - (1 - root)


def arms_debias(a: Tensor, k: int) -> Tensor:
    r"""ARMS's factor :math:`p(1 - p)/(m - P(c_i < m, c_j < m))`, :math:`m = \min(p, 1 - p) = \sigma(-|a|)`
    (Dimitriev & Zhou 2021, sec. 3). Why: given the other units, :math:`f_j = A_j + B_j b_j` in this unit, and
    with exchangeable samples :math:`E[\sum_j (f_j - \bar f)(b_j - p)] = (k - 1) E[B]\,(m - P_{ij})`, while the
    gradient is :math:`E[B]\,p(1 - p)`. ``k = 2`` gives :math:`\sigma(|a|)`, DisARM's factor."""
    m = torch.sigmoid(-a.abs())
    return sigmoid_derivative(a) / (m - _joint_minority(m, k, 2))


def arms_rule(a: Tensor, b: Tensor, loss: Tensor, axis: int) -> Tensor:
    r"""ARMS (Dimitriev & Zhou 2021, Antithetic-REINFORCE-Multi-Sample): the leave-one-out terms of the ``k``
    coupled samples times :func:`arms_debias`,
    :math:`\hat g = \frac{p(1-p)}{m - P_{ij}} \frac{1}{k-1}\sum_j (f_j - \bar f)(b_j - p)`.

    ``b`` holds the ``k`` samples along ``axis``, ``loss`` their losses (values, held fixed); ``a`` broadcasts
    against ``b``. Returns the ``k`` terms, before the sum. Unbiased for any loss when the samples are
    exchangeable with pairwise joint :math:`P_{ij}` (the Dirichlet copula's); with independent samples
    (:math:`P_{ij} = p^2`) it is leave-one-out, and with ``k = 2`` DisARM. Cost: ``k`` loss evaluations.
    """
    k = b.shape[axis % b.ndim]
    return leave_one_out_rule(a, b, loss, axis) * arms_debias(a, k)


def coupled_samples(a: Tensor, u: Tensor) -> Tensor:
    """ARMS's ``k`` coupled samples of units with logits ``a``, from ``k`` uniforms per unit (``u`` has a leading axis
    of ``k``; so has the result): the first is ``1[u_0 < p]``; the copula runs on ``u_0`` where ``p < 1/2`` and on
    ``1 - u_0`` (with every sample flipped to ``1[c > 1 - p]``) where ``p >= 1/2``, so that the samples share a
    unit's minority value."""
    first = u[0]
    low = a < 0
    copula = dirichlet_copula(torch.where(low, first, 1 - first), u[1:])
    others = torch.where(low, copula[1:] < torch.sigmoid(a), copula[1:] > torch.sigmoid(-a)).to(a.dtype)
    return torch.cat([BINARY.sample(a, first)[0][None], others])


def _arms_draw(problem: Problem, u: Tensor, k: int) -> FactoredGradient:
    """ARMS layer by layer: for layer ``t`` its ``k`` coupled samples share the draw's layers below; each drives
    the layers above on the draw's own uniforms ``u[:, 0]``. The first sample is the draw's own pass."""
    traj = sample_trajectory(problem, BINARY, u[:, 0])
    parts, coupled = problem.split_units(u[:, 0]), problem.split_units(u)
    main = problem.loss(traj.output)
    batch = u.shape[0]
    deltas = []
    for t, a in enumerate(traj.logits):
        b = coupled_samples(a, coupled[t].movedim(1, 0)).movedim(0, 1)            # [B, k, n]
        h = sample_above(problem, t, b[:, 1:].reshape(batch * (k - 1), -1), parts, repeats=k - 1)
        outputs = torch.cat([traj.output[:, None], h.reshape(batch, k - 1, -1)], 1)
        losses = tied_losses(torch.cat([main[:, None], problem.loss(h).reshape(batch, k - 1)], 1), outputs, axis=1)
        deltas.append(arms_rule(a[:, None], b, losses, axis=1).sum(1))
    return FactoredGradient(deltas, list(traj.inputs))


def arms_pattern_probabilities(a: Tensor, k: int) -> Tensor:
    r"""Per count ``j`` from 0 to ``k`` (rows) and unit (columns): the probability that exactly a given set of ``j``
    of the ``k`` coupled samples take the unit's minority value (1 where ``a < 0``, else 0).

    By inclusion-exclusion over :func:`_joint_minority`: :math:`\sum_i (-1)^i \binom{k-j}{i} G(j + i)`."""
    m = torch.sigmoid(-a.abs())
    joint = [_joint_minority(m, k, count) for count in range(k + 1)]
    return torch.stack([sum((-1) ** i * math.comb(k - j, i) * joint[j + i] for i in range(k - j + 1))
                        for j in range(k + 1)]).clamp_min(0)


def _arms_outcomes(problem: Problem, *, chunk_size: int, max_states: int, device="cpu", k: int
                   ) -> Iterator[tuple[Tensor, FactoredGradient]]:
    """Exact outcomes of ARMS on one stochastic layer: every joint value of the ``k`` coupled samples of its ``N``
    units (``2^(kN)``), with the copula's probabilities."""
    if problem.num_layers != 1:
        raise ValueError(f"arms's exact outcomes are over one stochastic layer; {problem.description} has "
                         f"{problem.num_layers}")
    n = problem.num_units
    total = enumeration.check_enumerable(n * k, max_states, what=f"{k} coupled samples of {problem.description}")
    x = None if problem.x is None else problem.x.expand(1, -1)
    a = problem.logits(0, x, batch_size=1).reshape(-1)
    table = arms_pattern_probabilities(a, k)                                        # [k + 1, n]
    minority = (a < 0).to(a.dtype)
    shifts = torch.arange(n * k)
    cols = torch.arange(n)
    a_dev, x_dev = a.to(device), None if problem.x is None else problem.x.to(device)
    for start in range(0, total, chunk_size):
        index = torch.arange(start, min(start + chunk_size, total))
        b = ((index[:, None] >> shifts) & 1).to(torch.float64).reshape(-1, k, n)    # [C, k, n]
        count = (b == minority).sum(1)                                               # [C, n]
        probability = table[count, cols].prod(1)
        b = b.to(device)
        losses = tied_losses(problem.loss(b.reshape(-1, n)).reshape(-1, k), b, axis=1)
        delta = arms_rule(a_dev[None, None], b, losses, axis=1).sum(1)
        yield probability.to(device), FactoredGradient([delta], [None if x_dev is None else x_dev.expand(len(index), -1)])


def _prepare_samples(problem: Problem, options: dict[str, Any], name: str, minimum: int = 2) -> dict[str, Any]:
    k = options["k"]
    if isinstance(k, bool) or not (isinstance(k, int) and k >= minimum):
        raise ValueError(f"k (the samples {name} takes a draw) must be an integer >= {minimum}, got {k!r}")
    return options


def _arms_loss_evals(problem: Problem, options) -> int:
    return 1 + (options["k"] - 1) * problem.num_layers


ARMS = Estimator(
    name="arms",
    summary="p(1-p)/(m - P_ij) * 1/(k-1) sum_j (f_j - mean f)(b_j - p), k samples coupled by a Dirichlet copula",
    draw=_arms_draw,
    outcomes=_arms_outcomes,
    copies=lambda options: options["k"],
    exact_max_layers=1,
    noise="discrete",
    unbiased=True,
    defaults={"k": 4},
    prepare=lambda problem, options: _prepare_samples(problem, options, "arms"),
    loss_evals=_arms_loss_evals,
    noise_per_unit=lambda options: options["k"],
    reference="Dimitriev & Zhou 2021, ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for Binary Variables (ICML), "
              "sec. 3 (Dirichlet copula)",
)


# ---- the double control variate ----------------------------------------------------------------------

def double_cv_rule(a: Tensor, b: Tensor, loss: Tensor, slopes: Tensor, alpha: float, axis: int,
                   inputs: Tensor | None = None) -> Tensor:
    r"""The double control variate for leave-one-out REINFORCE (Titsias & Shi 2022, sec. 3): each loss loses its
    first-order Taylor term, taken with the *other* samples' mean slope :math:`\bar g_{-j}`,
    :math:`f'_j = f_j - \alpha\,\bar g_{-j}^\top (b_j - p)`; the leave-one-out form runs on :math:`f'`, and the
    expectation of what was taken away is added back exactly:

    .. math::

        \hat g = \frac{1}{k-1}\sum_j (f'_j - \bar f')(b_j - p) + \frac{\alpha}{k} \sum_j \bar g_{-j}\,p(1-p).

    ``b`` ``[..., k, ..., n]`` holds the ``k`` independent samples along ``axis``, ``loss`` their losses and
    ``slopes`` (``b``'s shape) a slope per sample, any function of that sample's own pass (the loss's gradient
    :math:`\partial f/\partial b_j` on one layer, as in the paper). Returns the ``k`` terms. Unbiased for any
    :math:`\alpha` and any such slope (:math:`\bar g_{-j}` is independent of :math:`b_j`). With
    :math:`\alpha = 1` a loss linear in ``b`` on one layer is estimated with zero variance. Cost: ``k`` loss
    evaluations and their gradients.
    """
    axis = axis % b.ndim
    k = b.shape[axis]
    others = (slopes.sum(axis, keepdim=True) - slopes) / (k - 1)                      # g_{-j}
    residual = binary_residual(a, b)
    taylor = (others * residual).sum(-1)                                              # [..., k, ...]
    terms = leave_one_out_rule(a, b, loss - alpha * taylor, axis, inputs=inputs)
    return terms + (alpha / k) * others * sigmoid_derivative(a)


def _double_cv_states(problem: Problem, traj: Trajectory, k: int, alpha: float) -> FactoredGradient:
    """Each layer's slopes are ``dL/dh`` back-propagated with the identity for every hard unit above
    (straight-through): the loss's own gradient for the last layer."""
    loss, layers = copies_of(problem, traj, k)
    _, top = problem.loss.value_and_grad(traj.output)
    slopes = backpropagate(problem, traj, top, [None] * problem.num_layers).deltas
    deltas = [double_cv_rule(a, h, loss, slope.reshape(h.shape), alpha, axis=1, inputs=inp)
              for (a, h, inp), slope in zip(layers, slopes)]
    return FactoredGradient(deltas, [inp for _, _, inp in layers])


def _prepare_double_cv(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    options = _prepare_samples(problem, options, "double_cv")
    alpha = options["alpha"]
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise ValueError(f"alpha (the weight of the Taylor control variate) must be a finite number, got {alpha!r}")
    return options


DOUBLE_CV = Estimator(
    name="double_cv",
    summary="leave-one-out on f_j - alpha g_{-j}.(b_j - p), plus alpha/k sum_j g_{-j} p(1-p); g = dL/db",
    from_states=_double_cv_states,
    unit=BINARY,
    copies=lambda options: options["k"],
    noise="discrete",
    unbiased=True,
    needs_loss_gradient=True,
    defaults={"k": 4, "alpha": 1.0},
    prepare=_prepare_double_cv,
    loss_evals=lambda problem, options: options["k"],
    noise_per_unit=lambda options: options["k"],
    reference="Titsias & Shi 2022, Double Control Variates for Gradient Estimation in Discrete Latent Variable "
              "Models (AISTATS), sec. 3",
)
