r"""Estimators for categorical units (:func:`gradstats.problems.categorical`): ``K`` classes a unit, one-hot values.

Notation, per unit: logits :math:`\theta \in \mathbb{R}^K`, :math:`\pi = \mathrm{softmax}(\theta)`, ``K``
uniforms ``u``, Gumbel noise :math:`G = -\log(-\log u)`, the sample :math:`D = \mathrm{onehot}(\arg\max\,
\theta + G)` (every estimator reads it from ``u[:, 0]``: common random numbers), ``f`` the loss and
:math:`\nabla f = \partial L/\partial D` at the sample. :math:`J_q = \mathrm{diag}(q) - q q^\top` is the
softmax Jacobian at probabilities ``q`` (:func:`~gradstats.units.softmax_jvp`).

Each pathwise estimator is defined once below as its *per-unit rule*: the vector-Jacobian product
``v -> s(v)`` its backward pass applies in place of :math:`dD/d\theta`, held fixed; the chain rule through
the layers (:func:`categorical_backpropagate`) does the rest. The score-function estimator reuses the
binary neuron's leave-one-out rule with :math:`D - \pi` for :math:`b - p`.

* ``categorical_st``: :math:`s(v) = J_\pi v` (straight-through with the softmax derivative; Bengio,
  Léonard & Courville 2013, sec. 4; Jang, Gu & Poole 2017, sec. 2.2).
* ``categorical_reinmax``: :math:`s(v) = (2 J_{\pi_1} - \tfrac12 J_\pi) v`,
  :math:`\pi_1 = (D + \mathrm{softmax}(\theta/\tau))/2` (Liu, Dong, Liu, Yu & Gao 2023, Algorithm 2:
  :math:`\pi_1 \leftarrow \mathrm{softmax}(\mathrm{sg}(\ln\pi_1 - \theta) + \theta)`,
  :math:`\pi_2 = 2\pi_1 - \pi/2`, :math:`\hat D = \pi_2 - \mathrm{sg}(\pi_2) + D`).
* ``categorical_gumbel``: the relaxed sample :math:`y = \mathrm{softmax}((\theta + G)/\tau)` forward and
  :math:`s(v) = J_y v/\tau` (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017): its own, relaxed, objective.
* ``categorical_st_gumbel``: ``D`` forward, :math:`s(v) = J_y v/\tau` backward (Jang et al. 2017).
* ``categorical_gumbel_rao``: ``D`` forward; backward the mean over ``k`` perturbations drawn given
  :math:`\arg\max = D` of :math:`J_{y_j} v/\tau` (Paulus, Maddison & Krause 2021, sec. 3, GR-MCK):
  ST-Gumbel's mean, less variance.
* ``categorical_reinforce_loo``: :math:`\frac{1}{k-1}\sum_j (f_j - \bar f)(D_j - \pi)`, ``k`` samples
  (Kool, van Hoof & Welling 2019).
* ``categorical_carms``: ``k`` samples per unit coupled by the Dirichlet copula and drawn by inverse CDF over a
  random class order, with the leave-one-out differences reweighted by the pairwise ratio
  :math:`r(i, j) = \pi_i \pi_j / P(D_m = e_i, D_{m'} = e_j)`:
  :math:`\frac{1}{k(k-1)} \sum_m (D_m - \pi) \sum_{m' \ne m} r(D_m, D_{m'}) (f_m - f_{m'})` (Dimitriev & Zhou
  2021, CARMS).

The hard-sample rules (st, reinmax), leave-one-out and CARMS have discrete noise: their exact moments
enumerate the :math:`K^N` states (``K^{Nk}`` for the ``k``-sample ones), as the binary ones do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import enumeration
from ..problems import FactoredGradient, Problem, Trajectory
from ..units import CategoricalUnit, grouped_softmax, gumbel_noise, one_hot_of, softmax_jvp
from .base import Estimator, sample_trajectory
from .multi_sample import _prepare_samples, dirichlet_copula
from .score_function import copies_of, leave_one_out_rule, prepare_loo, tied_losses
from .surrogate import prepare_gumbel_rao, prepare_temperature

__all__ = [
    "categorical_backpropagate",
    "conditional_gumbel",
    "st_vjp",
    "reinmax_vjp",
    "relaxed_vjp",
    "gumbel_rao_vjp",
    "CATEGORICAL_ST",
    "CATEGORICAL_REINMAX",
    "CATEGORICAL_GUMBEL",
    "CATEGORICAL_ST_GUMBEL",
    "CATEGORICAL_GUMBEL_RAO",
    "CATEGORICAL_REINFORCE_LOO",
    "CATEGORICAL_CARMS",
    "carms_orders",
    "carms_samples",
    "carms_tuple_probabilities",
    "carms_pair_ratio",
    "carms_rule",
]

KINDS = frozenset({"categorical"})
Vjp = Callable[[Tensor], Tensor]


# ---- the per-unit rules: the vector-Jacobian product the backward pass uses ----------------------------

def st_vjp(a: Tensor, b: Tensor, num_classes: int) -> Vjp:
    r"""Straight-through for categorical units: :math:`v \mapsto J_\pi v`, the softmax's derivative in place of
    the one-hot sample's (Bengio et al. 2013, sec. 4; Jang, Gu & Poole 2017, sec. 2.2). Biased."""
    probs = grouped_softmax(a, num_classes)
    return lambda v: softmax_jvp(probs, v, num_classes)


def reinmax_vjp(a: Tensor, b: Tensor, num_classes: int, temperature: float = 1.0) -> Vjp:
    r"""ReinMax (Liu, Dong, Liu, Yu & Gao 2023, Algorithm 2): :math:`v \mapsto (2 J_{\pi_1} - \tfrac12 J_\pi) v`
    with :math:`\pi_1 = (D + \mathrm{softmax}(\theta/\tau))/2`: the Jacobian of
    :math:`\pi_2 = 2\,\mathrm{softmax}(\mathrm{sg}(\ln \pi_1 - \theta) + \theta) - \pi/2`. For two classes it is
    the binary rule of :func:`~gradstats.estimators.surrogate.reinmax_derivative` on each class's logit.
    Second-order accurate on one layer at :math:`\tau = 1`."""
    probs = grouped_softmax(a, num_classes)
    mixed = (b + grouped_softmax(a / temperature, num_classes)) / 2
    return lambda v: 2 * softmax_jvp(mixed, v, num_classes) - softmax_jvp(probs, v, num_classes) / 2


def relaxed_vjp(relaxed: Tensor, num_classes: int, temperature: float) -> Vjp:
    r""":math:`v \mapsto J_y v/\tau`: the derivative of :math:`y = \mathrm{softmax}((\theta + G)/\tau)` with
    respect to :math:`\theta`, ``G`` held fixed (Gumbel-softmax and ST-Gumbel)."""
    return lambda v: softmax_jvp(relaxed, v, num_classes) / temperature


def conditional_gumbel(a: Tensor, b: Tensor, v: Tensor, num_classes: int) -> Tensor:
    r"""Perturbed logits :math:`z = \log\pi + G` drawn *given* :math:`\arg\max z = D` (``b`` one-hot), from
    uniforms ``v`` (same shape; any leading axes), by inverting the truncated Gumbel laws: the maximum is a
    standard Gumbel, :math:`z_D = -\log(-\log v_D)`, and each other class is Gumbel(:math:`\log\pi_i`)
    truncated below it, :math:`z_i = -\log(-\log v_i/\pi_i - \log v_D)` (Maddison, Tarlow & Minka 2014;
    Paulus, Maddison & Krause 2021, appendix). Softmax of :math:`z/\tau` is then the relaxed sample given
    ``D``; :math:`\log\pi` and :math:`\theta` differ by a constant per unit, which neither the argmax nor the
    softmax sees."""
    k = num_classes
    log_pi = grouped_softmax(a, k, log=True)
    e = -torch.log(v)                                          # standard exponentials
    top = (e * b).reshape(*e.shape[:-1], -1, k).sum(-1, keepdim=True)
    top = top.expand(*top.shape[:-1], k).reshape(e.shape)      # each unit's -log v_D, on every class
    others = -torch.log(e * torch.exp(-log_pi) + top)
    return torch.where(b > 0.5, -torch.log(top), others)


def gumbel_rao_vjp(a: Tensor, b: Tensor, v: Tensor, num_classes: int, temperature: float) -> Vjp:
    r"""Gumbel-Rao (Paulus et al. 2021, GR-MCK): :math:`v \mapsto \frac1k\sum_j J_{y_j} v/\tau`,
    :math:`y_j = \mathrm{softmax}(z_j/\tau)`, the ``z_j`` drawn given the sample (:func:`conditional_gumbel`,
    ``v`` ``[k, ...]``). Its mean given ``D`` is ST-Gumbel's, so the two estimators share their mean and
    Gumbel-Rao has less variance (Rao-Blackwellisation). Cost: one loss evaluation."""
    relaxed = grouped_softmax(conditional_gumbel(a, b, v, num_classes) / temperature, num_classes)
    return lambda w: softmax_jvp(relaxed, w, num_classes).mean(0) / temperature


# ---- the chain rule through categorical layers -------------------------------------------------------------

def categorical_backpropagate(problem: Problem, trajectory: Trajectory, vjps: list[Vjp]) -> FactoredGradient:
    r""":math:`\delta_L = s_L(\partial L/\partial h_L)`, :math:`\delta_l = s_l(\delta_{l+1} W_{l+1})`: each layer's
    rule ``vjps[l]`` applied to what comes down from above."""
    _, upstream = problem.loss.value_and_grad(trajectory.output)
    deltas: list[Tensor] = [None] * problem.num_layers  # type: ignore[list-item]
    for layer in reversed(range(problem.num_layers)):
        deltas[layer] = vjps[layer](upstream)
        if layer > 0:
            upstream = deltas[layer] @ problem.parameters[problem.layers[layer].weight].to(upstream)
    return FactoredGradient(deltas, list(trajectory.inputs))


def _unit(problem: Problem) -> CategoricalUnit:
    return CategoricalUnit(problem.num_classes)


def _discrete(name: str, from_states: Callable[..., FactoredGradient], *, copies: Callable[[dict], int] = lambda o: 1,
              **flags) -> Estimator:
    """A state-based estimator of categorical units: ``copies`` passes sampled from ``u[:, :copies]`` (Gumbel-max)
    for a draw, every joint state of them for exact moments."""

    def draw(problem: Problem, u: Tensor, **options) -> FactoredGradient:
        passes = u[:, :copies(options)].reshape(-1, problem.num_units)
        return from_states(problem, sample_trajectory(problem, _unit(problem), passes), **options)

    def outcomes(problem: Problem, *, chunk_size: int, max_states: int, device="cpu", **options):
        for traj in enumeration.trajectories(problem, _unit(problem), copies=copies(options), chunk_size=chunk_size,
                                             max_states=max_states, device=device):
            yield traj.log_prob.exp(), from_states(problem, traj, **options)

    return Estimator(name=name, draw=draw, outcomes=outcomes, noise="discrete", kinds=KINDS, copies=copies, **flags)


def _pathwise_states(rule: Callable[..., Vjp]):
    def from_states(problem: Problem, traj: Trajectory, **options) -> FactoredGradient:
        vjps = [rule(a, b, problem.num_classes, **options) for a, b in zip(traj.logits, traj.indicators)]
        return categorical_backpropagate(problem, traj, vjps)

    return from_states


def _loo_states(problem: Problem, traj: Trajectory, k: int) -> FactoredGradient:
    loss, layers = copies_of(problem, traj, k)
    return FactoredGradient([leave_one_out_rule(a, h, loss, axis=1, inputs=inp,
                                                residual=h - grouped_softmax(a, problem.num_classes))
                             for a, h, inp in layers], [inp for _, _, inp in layers])


def _relaxed_draw(hard: bool):
    """Per-draw gradients of Gumbel-softmax (``hard=False``: the relaxed network) or ST-Gumbel (``hard=True``:
    the one-hot sample forward), both with :func:`relaxed_vjp`, from ``u[:, 0]``."""

    def draw(problem: Problem, u: Tensor, temperature: float) -> FactoredGradient:
        parts, k, vjps = problem.split_units(u[:, 0]), problem.num_classes, []

        def step(layer: int, a: Tensor):
            relaxed = grouped_softmax((a + gumbel_noise(parts[layer].to(a.dtype))) / temperature, k)
            vjps.append(relaxed_vjp(relaxed, k, temperature))
            value = _unit(problem).one_hot(a, relaxed) if hard else relaxed
            return value, value

        traj = problem.forward(step, u.shape[0], dtype=u.dtype, device=u.device)
        return categorical_backpropagate(problem, traj, vjps)

    return draw


def _gumbel_rao_draw(problem: Problem, u: Tensor, temperature: float, k: int) -> FactoredGradient:
    """Gumbel-Rao's draws: the sample from ``u[:, 0]``, the ``k`` conditional perturbations from ``u[:, 1:]``."""
    unit, parts = _unit(problem), problem.split_units(u[:, 0])
    inner = problem.split_units(u[:, 1:].movedim(1, 0))      # per layer [k, B, N K]
    vjps = []

    def step(layer: int, a: Tensor):
        b, value = unit.sample(a, parts[layer])
        vjps.append(gumbel_rao_vjp(a, b, inner[layer].to(a.dtype), problem.num_classes, temperature))
        return b, value

    traj = problem.forward(step, u.shape[0], dtype=u.dtype, device=u.device)
    return categorical_backpropagate(problem, traj, vjps)


# ---- CARMS ---------------------------------------------------------------------------------------------

def carms_orders(num_classes: int) -> Tensor:
    """The class orders CARMS draws one of uniformly, ``[P, K]`` (row: the classes in the order their intervals
    take on [0, 1]): the ``K (K - 1) / 2`` orders of Dimitriev & Zhou's code (``antithetic.InverseCategorical``):
    the classes rotated by ``i``, the classes after the first rotated by ``j``, kept where the first class is
    below the last."""
    k, orders = num_classes, []
    for i in range(k):
        base = [(r - i) % k for r in range(k)]
        for j in range(k - 1):
            order = [base[0]] + [base[1:][(r - j) % (k - 1)] for r in range(k - 1)]
            if order[0] < order[-1]:
                orders.append(order)
    return torch.tensor(orders)


def _intervals(probs: Tensor, orders: Tensor) -> tuple[Tensor, Tensor]:
    """Each class's interval ``[left, right)`` on [0, 1] under each order: ``[..., P, K]`` each, indexed by class,
    from ``probs`` ``[..., K]``."""
    p = probs[..., None, :].expand(*probs.shape[:-1], *orders.shape)
    idx = orders.expand_as(p)
    right_sorted = p.gather(-1, idx).cumsum(-1)
    right = torch.empty_like(right_sorted).scatter_(-1, idx, right_sorted)
    return right - probs[..., None, :], right


def carms_samples(a: Tensor, u: Tensor, num_classes: int) -> Tensor:
    """CARMS's ``k`` coupled one-hot samples ``[k, B, N K]`` of units with logits ``a`` ``[B, N K]`` from the
    uniforms ``u`` ``[k, B, N K]`` (each unit's ``K`` uniforms a copy): the unit's ``k`` copula uniforms are the
    first of its uniforms in each copy (:func:`~gradstats.estimators.multi_sample.dirichlet_copula`), its class
    order (:func:`carms_orders`) is chosen by the second of the first copy's, and each sample is the class
    whose interval holds its uniform (inverse CDF)."""
    k, batch = u.shape[0], a.shape[0]
    uu = u.reshape(k, batch, -1, num_classes)
    probs = grouped_softmax(a, num_classes).reshape(batch, -1, num_classes)
    orders = carms_orders(num_classes).to(a.device)
    pick = (uu[0, ..., 1] * len(orders)).long().clamp_max(len(orders) - 1)
    order = orders[pick]                                                            # [B, N, K]
    right = probs.gather(-1, order).cumsum(-1)
    c = dirichlet_copula(uu[0, ..., 0], uu[1:, ..., 0])                             # [k, B, N]
    position = (c[..., None] > right).sum(-1).clamp_max(num_classes - 1)
    cls = order.expand(k, *order.shape).gather(-1, position[..., None])[..., 0]
    return one_hot_of(cls, num_classes, a.dtype).reshape(k, batch, -1)


def _copula_cdf(t: Tensor, copies: int) -> Tensor:
    r""":math:`P(c_j \le t_j` for each coordinate ``j`` of ``t``'s last axis``)`` under the Dirichlet copula of
    ``copies`` uniforms: :math:`(1 - \sum_j (1 - t_j^{1/(k-1)}))_+^{k-1}` (the simplex's corner volume)."""
    root = t.clamp(0, 1).pow(1.0 / (copies - 1))
    return (1 - (1 - root).sum(-1)).clamp_min(0).pow(copies - 1)


def carms_tuple_probabilities(probs: Tensor, copies: int, size: int | None = None) -> Tensor:
    """The law of ``size`` (default ``copies``) of a unit's ``copies`` coupled samples: ``[..., K^size]`` over the
    class tuples (first sample the most significant digit), from ``probs`` ``[..., K]``: per class order, the
    copula's mass on the product of the classes' intervals (inclusion-exclusion over the ``2^size`` corners of
    :func:`_copula_cdf`, the other samples free), averaged over the orders."""
    k = probs.shape[-1]
    size = copies if size is None else size
    left, right = _intervals(probs, carms_orders(k).to(probs.device))             # [..., P, K]
    tuples = torch.cartesian_prod(*[torch.arange(k)] * size).reshape(-1, size)   # [T, size]
    corners = torch.cartesian_prod(*[torch.tensor([0, 1])] * size).reshape(-1, size)   # [C, size], 1: right
    sign = torch.where((size - corners.sum(1)) % 2 == 0, 1.0, -1.0).to(probs)
    lo, hi = left[..., tuples], right[..., tuples]                                # [..., P, T, size]
    t = torch.where(corners.bool()[:, None, :].to(probs.device), hi[..., None, :, :], lo[..., None, :, :])
    mass = (_copula_cdf(t, copies) * sign[:, None]).sum(-2)                       # [..., P, T]
    return mass.clamp_min(0).mean(-2)


def carms_pair_ratio(probs: Tensor, copies: int) -> Tensor:
    r""":math:`r(i, j) = \pi_i \pi_j / P(D_m = e_i, D_{m'} = e_j)` ``[..., K, K]`` (0 where the pair never
    occurs: such terms never enter the estimate)."""
    k = probs.shape[-1]
    joint = carms_tuple_probabilities(probs, copies, size=2).reshape(*probs.shape[:-1], k, k)
    independent = probs[..., :, None] * probs[..., None, :]
    return torch.where(joint > 0, independent / joint.clamp_min(torch.finfo(probs.dtype).tiny), 0.0)


def carms_rule(a: Tensor, samples: Tensor, loss: Tensor, num_classes: int) -> Tensor:
    r"""CARMS (Dimitriev & Zhou 2021, Categorical-Antithetic-REINFORCE Multi-Sample; the estimator of their code's
    ``CategoricalVAE.matrix_grad``, without its smoothing and clipping of the ratio to [0.01, 10], which bias it):
    :math:`\frac{1}{k(k-1)} \sum_m (D_m - \pi) \sum_{m' \ne m} r(D_m, D_{m'}) (f_m - f_{m'})` per unit, from the
    ``k`` samples ``[k, B, N K]``, their losses ``[k, B]`` (values, held fixed) and logits ``a`` ``[B, N K]``.
    Unbiased for any loss: a pair of samples of a unit has law ``P(i, j)``, so the ratio turns each pair's
    term into its expectation under independent samples, :math:`\sum_{ij} \pi_i\pi_j (e_i - \pi)(F(i) - F(j))
    = \nabla_\theta E f` (the other units' samples enter ``F`` through their marginals, which are exact).
    With ``k = 2`` the coupling is antithetic. Returns the gradient with respect to the logits ``[B, N K]``."""
    k, batch = samples.shape[0], a.shape[0]
    probs = grouped_softmax(a, num_classes).reshape(batch, -1, num_classes)
    ratio = carms_pair_ratio(probs, k)                                             # [B, N, K, K]
    d = samples.reshape(k, batch, -1, num_classes)
    pair = torch.einsum("mbni,bnij,obnj->bmon", d, ratio, d)                       # r(D_m, D_o) per unit
    diff = (loss.movedim(0, -1)[:, :, None] - loss.movedim(0, -1)[:, None, :])     # [B, k, k]: f_m - f_o
    weight = (pair * diff[..., None]).sum(2) / (k * (k - 1))                       # [B, k, N]
    residual = d - probs[None]                                                     # [k, B, N, K]
    return (residual * weight.movedim(1, 0)[..., None]).sum(0).reshape(a.shape)


def _carms_one_layer(problem: Problem) -> None:
    if problem.num_layers != 1:
        raise ValueError(f"categorical_carms is defined for one stochastic layer (as published); "
                         f"{problem.description} has {problem.num_layers}")


def _carms_draw(problem: Problem, u: Tensor, k: int) -> FactoredGradient:
    """The ``k`` coupled samples of the layer's units from ``u[:, :k]``, their losses, :func:`carms_rule`."""
    _carms_one_layer(problem)
    batch = u.shape[0]
    x = None if problem.x is None else problem.x.to(u).expand(batch, -1)
    a = problem.logits(0, x, batch_size=batch).to(u)
    samples = carms_samples(a, u[:, :k].movedim(1, 0).to(u), problem.num_classes)   # [k, B, N K]
    loss = tied_losses(problem.loss(samples.reshape(k * batch, -1)).reshape(k, batch), samples, axis=0)
    return FactoredGradient([carms_rule(a, samples, loss, problem.num_classes)], [x])


def _carms_outcomes(problem: Problem, *, chunk_size: int, max_states: int, device="cpu", k: int):
    """Exact outcomes: every joint class tuple of the ``k`` coupled samples of every unit (``K^{Nk}``), with the
    product over the (independent) units of :func:`carms_tuple_probabilities`."""
    _carms_one_layer(problem)
    kk, n = problem.num_classes, problem.num_variables
    total = enumeration.check_enumerable(n * k, max_states, what=f"{k} coupled samples of {problem.description}",
                                         base=kk, noun="categorical variables")
    x = None if problem.x is None else problem.x.expand(1, -1)
    a = problem.logits(0, x, batch_size=1).reshape(1, -1)
    table = carms_tuple_probabilities(grouped_softmax(a, kk).reshape(n, kk), k)    # [N, K^k]
    digits = kk ** torch.arange(n * k - 1, -1, -1)
    a_dev, x_dev = a.to(device), None if problem.x is None else problem.x.to(device)
    for start in range(0, total, chunk_size):
        index = torch.arange(start, min(start + chunk_size, total))
        cls = (index[:, None] // digits) % kk                                       # [C, N k]: unit-major
        cls = cls.reshape(-1, n, k)
        tuple_index = (cls * kk ** torch.arange(k - 1, -1, -1)).sum(-1)             # [C, N]
        probability = table[torch.arange(n), tuple_index].prod(1)
        samples = one_hot_of(cls.movedim(-1, 0), kk, a.dtype).reshape(k, len(index), -1)
        samples = samples.to(device)
        loss = tied_losses(problem.loss(samples.reshape(k * len(index), -1)).reshape(k, -1), samples, axis=0)
        delta = carms_rule(a_dev.expand(len(index), -1), samples, loss, kk)
        yield probability.to(device), FactoredGradient([delta], [None if x_dev is None else
                                                                 x_dev.expand(len(index), -1)])


CATEGORICAL_ST = _discrete(
    "categorical_st", _pathwise_states(st_vjp), needs_loss_gradient=True, defaults={},
    summary="one-hot D forward; backward dL/dD through the softmax's Jacobian",
    reference="Bengio, Léonard & Courville 2013, sec. 4; Jang, Gu & Poole 2017 (ICLR), sec. 2.2")
CATEGORICAL_REINMAX = _discrete(
    "categorical_reinmax", _pathwise_states(reinmax_vjp), needs_loss_gradient=True,
    defaults={"temperature": 1.0}, prepare=prepare_temperature,
    summary="one-hot D forward; backward (2 J(pi1) - J(pi)/2) dL/dD, pi1 = (D + softmax(theta / tau))/2",
    reference="Liu, Dong, Liu, Yu & Gao 2023, Bridging Discrete and Backpropagation: Straight-Through and Beyond "
              "(NeurIPS), Algorithm 2")
CATEGORICAL_REINFORCE_LOO = _discrete(
    "categorical_reinforce_loo", lambda problem, traj, k: _loo_states(problem, traj, k),
    copies=lambda options: options["k"], unbiased=True, defaults={"k": 2}, prepare=prepare_loo,
    loss_evals=lambda problem, options: options["k"], noise_per_unit=lambda options: options["k"],
    summary="1/(k-1) sum_j (f_j - mean f) (D_j - pi), k samples",
    reference="Kool, van Hoof & Welling 2019 (Buy 4 REINFORCE samples, ICLR workshop)")
CATEGORICAL_GUMBEL = Estimator(
    name="categorical_gumbel", draw=_relaxed_draw(hard=False), noise="continuous", kinds=KINDS,
    needs_loss_gradient=True, objective="relaxed", defaults={"temperature": 1.0}, prepare=prepare_temperature,
    summary="backprop through y = softmax((theta + G) / tau), G Gumbel (relaxed network)",
    reference="Jang, Gu & Poole 2017 (Gumbel-softmax, ICLR); Maddison, Mnih & Teh 2017 (Concrete, ICLR)")
CATEGORICAL_ST_GUMBEL = Estimator(
    name="categorical_st_gumbel", draw=_relaxed_draw(hard=True), noise="continuous", kinds=KINDS,
    needs_loss_gradient=True, defaults={"temperature": 1.0}, prepare=prepare_temperature,
    summary="one-hot D forward; backward dL/dD through softmax((theta + G) / tau)",
    reference="Jang, Gu & Poole 2017 (ICLR), straight-through Gumbel-softmax")
CATEGORICAL_GUMBEL_RAO = Estimator(
    name="categorical_gumbel_rao", draw=_gumbel_rao_draw, noise="continuous", kinds=KINDS, needs_loss_gradient=True,
    defaults={"temperature": 1.0, "k": 10}, prepare=prepare_gumbel_rao,
    noise_per_unit=lambda options: 1 + options["k"],
    summary="one-hot D forward; backward the mean over k perturbations drawn given D of ST-Gumbel's Jacobian",
    reference="Paulus, Maddison & Krause 2021, Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient "
              "Estimator (ICLR), sec. 3 (GR-MCK)")
CATEGORICAL_CARMS = Estimator(
    name="categorical_carms", draw=_carms_draw, outcomes=_carms_outcomes, noise="discrete", kinds=KINDS,
    copies=lambda options: options["k"], unbiased=True, defaults={"k": 4},
    prepare=lambda problem, options: _prepare_samples(problem, options, "categorical_carms"),
    exact_max_layers=1, max_layers=1, loss_evals=lambda problem, options: options["k"],
    noise_per_unit=lambda options: options["k"],
    summary="1/(k(k-1)) sum_m (D_m - pi) sum_m' r(D_m, D_m') (f_m - f_m'), k samples coupled by a Dirichlet "
            "copula, r = pi_i pi_j / P(i, j)",
    reference="Dimitriev & Zhou 2021, CARMS: Categorical-Antithetic-REINFORCE Multi-Sample Gradient Estimator "
              "(NeurIPS); the estimator of the authors' code (vae.py, matrix_grad; antithetic.InverseCategorical)")
