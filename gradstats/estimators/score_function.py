r"""Score-function and antithetic estimators of the binary neuron: unbiased, and no ``dL/dh`` needed.

Notation: logits ``a``, :math:`p = \sigma(a)`, uniforms ``u``, binary sample
:math:`b = 1[u < p]` (Eq. 3 of arXiv:1308.3432 with its inequality corrected, see
:mod:`gradstats.units`), loss ``f`` (or ``L``) of the last layer. Each estimator is
defined once below as its *per-unit rule*, a function of the logits, the samples
and loss values; the batched per-draw form (registered here), the exact outcomes
and the drop-in torch function of :mod:`gradstats.functional` all call that rule.

Noise mapping (common random numbers): every estimator takes its binary sample
from ``u[:, 0]``, as the binary neuron does; the antithetic sample of ARM and
DisARM is :math:`\tilde b = 1[1 - u < p]`; leave-one-out's ``k`` samples use
``u[:, 0], ..., u[:, k-1]``.

On networks the antithetic estimators are applied layer by layer (as Yin & Zhou
2019 do for several stochastic layers): for layer ``t`` the main pass gives
``f(b)``, and a second pass with layer ``t`` replaced by its antithetic sample and
the layers above resampled from the *same* uniforms gives ``f(b~)``. Any coupling
of the two branches keeps the estimate unbiased, and sharing the uniforms lowers
its variance. The local-expectation estimator resamples the layers above its flips
the same way.

Equal outputs, equal losses: wherever two passes reach the same output (every
unit of the last layer), their losses are given the same value
(:func:`tied_losses`), so the rules' differences between them are exactly 0 on
every device, as they are in exact arithmetic. A device may round one row
differently at different positions of a batch (CUDA does), and a residue of
1e-17 would otherwise count as a sign in a draw's sign agreement.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import enumeration
from ..numerics import positive_int, safe_divide
from ..problems import FactoredGradient, Problem, Trajectory
from ..units import BINARY, antithetic, binary_residual, flip_each, sigmoid_derivative
from .base import Estimator, sample_trajectory

__all__ = [
    "reinforce_rule",
    "leave_one_out_rule",
    "tied_losses",
    "arm_rule",
    "disarm_rule",
    "local_expectation_rule",
    "RunningBaseline",
    "optimal_baseline",
    "antithetic_losses",
    "copies_of",
    "prepare_loo",
    "sample_above",
    "arm_exact_moments",
    "REINFORCE",
    "ARM",
    "DISARM",
    "REINFORCE_LOO",
    "LOCAL_EXPECTATION",
]

PAPER = "Bengio, Léonard & Courville 2013, arXiv:1308.3432"
RUNNING_DECAY = 0.999  # per draw: the running averages remember about 1000 draws


# ---- the per-unit rules ------------------------------------------------------------------------

def reinforce_rule(a: Tensor, h: Tensor, loss: Tensor, baseline: Tensor | float) -> Tensor:
    r"""REINFORCE with a baseline (sec. 3, Theorem 1, Corollary 1 and Eq. 10 of arXiv:1308.3432; Williams 1992):
    :math:`\hat g_i = (h_i - p_i)(L - \bar L_i)`.

    ``loss`` is ``L`` per row (``[...]``), ``baseline`` one number or one per unit (``[n]`` or ``[..., n]``);
    nothing is differentiated (the loss is a value, held fixed). Unbiased for any baseline that does not
    depend on this draw's ``h``; Eq. 10's :math:`\bar L_i = E[(h_i - p_i)^2 L] / E[(h_i - p_i)^2]`
    minimises each unit's variance. Valid for any loss, differentiable or not. Cost: one loss evaluation.
    """
    return binary_residual(a, h) * (loss[..., None] - baseline)


def leave_one_out_rule(a: Tensor, b: Tensor, loss: Tensor, axis: int, inputs: Tensor | None = None,
                       residual: Tensor | None = None) -> Tensor:
    r"""REINFORCE with the leave-one-out baseline over ``k`` samples (Kool, van Hoof & Welling 2019;
    Mnih & Rezende 2016): per sample ``j``,
    :math:`\frac{1}{k - 1}(f_j - \bar f)(b_j - p)`, where :math:`\bar f` is the mean of the ``k`` losses; the
    estimate is the sum over ``j`` (the mean of ``f_j - \bar f_{-j}`` terms, each with the other samples'
    mean as its baseline).

    ``b`` holds the ``k`` samples along ``axis`` (``[..., k, ..., n]``), ``loss`` their losses (``b``'s shape
    without the unit axis); returns the ``k`` terms, before the sum. Losses are values (held fixed).
    Unbiased for ``k >= 2``, any loss. Cost: ``k`` loss evaluations. ``residual`` replaces :math:`b - p` where
    the score is another one (categorical units: :math:`D - \pi`); by default it is the binary unit's.

    Exact zeros stay exact: :math:`f_j - \bar f` is computed as :math:`\frac1k \sum_i (f_j - f_i)`, so equal
    losses give 0 and two samples give exact negatives; and a unit whose ``k`` samples agree has terms that
    sum to :math:`(b - p) \sum_j (f_j - \bar f) = 0`, returned as 0 rather than as rounding. The samples
    agree where their states do and, when the terms will be multiplied by per-sample ``inputs``
    ``[..., k, ..., m]`` (a weight gradient), their input rows, which fix the logits; without ``inputs``,
    where their logits do.
    """
    axis = axis % loss.ndim
    k = loss.shape[axis]
    f = loss.movedim(axis, -1)
    centred = (f[..., :, None] - f[..., None, :]).sum(-1).movedim(-1, axis) / (k * (k - 1))
    terms = (binary_residual(a, b) if residual is None else residual) * centred[..., None]
    agree = _agree(b, axis) & (_agree(a, axis) if inputs is None else _agree(inputs, axis).all(-1, keepdim=True))
    return terms.mul_(agree.logical_not())        # 0 where they agree (a multiplication: faster than a where)


def _agree(t: Tensor, axis: int) -> Tensor:
    """Whether every sample along ``axis`` equals the first (kept as an axis of size 1)."""
    return (t.narrow(axis, 1, t.shape[axis] - 1) == t.narrow(axis, 0, 1)).all(axis, keepdim=True)


def arm_rule(u: Tensor, loss: Tensor, loss_antithetic: Tensor) -> Tensor:
    r"""ARM (Yin & Zhou 2019, Augment-REINFORCE-Merge): :math:`\hat g_i = (f(\tilde b) - f(b))(u_i - 1/2)`
    with :math:`b = 1[u < p]` and the antithetic :math:`\tilde b = 1[1 - u < p]`.

    ``u`` ``[..., n]``; the two losses ``[...]`` (values, held fixed). Unbiased for any loss; on a network, one
    layer at a time (module docstring). Cost: ``1 + L`` loss evaluations for ``L`` stochastic layers.
    """
    return (loss_antithetic - loss)[..., None] * (u - 0.5)


def disarm_rule(a: Tensor, b: Tensor, b_antithetic: Tensor, loss: Tensor, loss_antithetic: Tensor) -> Tensor:
    r"""DisARM (Dong, Mnih & Tucker 2020): ARM with its continuous ``u`` integrated out given
    :math:`(b, \tilde b)`:
    :math:`\hat g_i = \tfrac12 (f(b) - f(\tilde b))\,(-1)^{\tilde b_i}\,1[b_i \ne \tilde b_i]\,\sigma(|a_i|)`.

    Losses are values (held fixed). Unbiased for any loss; its variance never exceeds ARM's (it is ARM
    conditioned on the pair). Cost: ``1 + L`` loss evaluations for ``L`` stochastic layers.
    """
    sign = torch.where(b_antithetic > 0.5, -1.0, 1.0).to(a)
    return 0.5 * (loss - loss_antithetic)[..., None] * sign * (b != b_antithetic).to(a) * torch.sigmoid(a.abs())


def local_expectation_rule(a: Tensor, h: Tensor, loss: Tensor, flipped_losses: Tensor) -> Tensor:
    r"""Local expectation (Titsias & Lazaro-Gredilla 2015; Tokui & Sato 2017):
    :math:`\hat g_i = \sigma'(a_i)\,(f(h^{i \leftarrow 1}) - f(h^{i \leftarrow 0}))`.

    ``flipped_losses[..., i]`` is ``f`` with unit ``i`` flipped and the rest of ``h`` held (the units of the
    same layer and those below at the draw's values); ``loss`` is ``f(h)``. Given everything beside unit
    ``i``, the expectation over :math:`h_i` in Eq. 5 of arXiv:1308.3432 is done exactly, so the estimate is
    unbiased for any loss. Cost: ``1 + n`` loss evaluations for ``n`` units.
    """
    return sigmoid_derivative(a) * ((1 - 2 * h) * (flipped_losses - loss[..., None]))


# ---- equal outputs, equal losses ----------------------------------------------------------------

def tied_losses(loss: Tensor, outputs: Tensor, axis: int) -> Tensor:
    """``loss`` with each of the ``k`` passes along ``axis`` given the loss of the first pass whose output
    equals its own (every unit; ``outputs`` is ``loss``'s shape plus the unit axis).

    Equal outputs have equal losses in exact arithmetic; tied, the differences the rules take between them
    are exactly 0 on every device (module docstring).
    """
    f, out = loss.movedim(axis, -1), outputs.movedim(axis, -2)                     # [..., k], [..., k, n]
    tied, rows = list(f.unbind(-1)), out.unbind(-2)
    for j in range(1, len(tied)):
        for i in reversed(range(j)):                                              # the first equal pass wins
            tied[j] = _tied_to(tied[j], rows[j], tied[i], rows[i])
    return torch.stack(tied, -1).movedim(-1, axis)


def _tied_to(loss: Tensor, outputs: Tensor, reference_loss: Tensor, reference_outputs: Tensor) -> Tensor:
    """``loss``, or ``reference_loss`` where ``outputs`` equal ``reference_outputs`` (every unit; broadcast)."""
    return torch.where((outputs == reference_outputs).all(-1), reference_loss, loss)


# ---- baselines ------------------------------------------------------------------------------------

def optimal_baseline(problem: Problem, **enumeration_options) -> Tensor:
    r"""Eq. 10 per unit, exactly: :math:`\bar L_i = E[(h_i - p_i)^2 L] / E[(h_i - p_i)^2]`.

    Computed by enumerating the binary network; ``0`` where the denominator is 0
    (a saturated unit). Returns ``[U]`` in layer order.
    """
    num = torch.zeros(problem.num_units, dtype=torch.float64)
    den = torch.zeros(problem.num_units, dtype=torch.float64)
    for traj in enumeration.trajectories(problem, BINARY, **enumeration_options):
        w = traj.log_prob.exp()
        loss = problem.loss(traj.output)
        sq = torch.cat([binary_residual(a, b).square() for a, b in zip(traj.logits, traj.indicators)], dim=1)
        num += (w * loss) @ sq
        den += w @ sq
    return safe_divide(num, den)


def _moving_average_before(x: Tensor, start: Tensor, decay: float) -> tuple[Tensor, Tensor]:
    r"""Exponential moving averages seen *before* each row: :math:`s_0 = \mathrm{start}`,
    :math:`s_{i+1} = \beta s_i + (1 - \beta) x_i`; returns ``(s_0 .. s_{B-1}, s_B)``.

    Vectorised in blocks short enough that :math:`\beta^{-L}` stays below 1e150:
    :math:`s_i = \beta^i (s_0 + (1 - \beta) \sum_{j<i} \beta^{-(j+1)} x_j)`.
    """
    block = max(1, int(150 * math.log(10) / -math.log(decay)))
    out = torch.empty_like(x)
    state = start.to(x)
    for lo in range(0, x.shape[0], block):
        xb = x[lo:lo + block]
        i = torch.arange(xb.shape[0] + 1, dtype=x.dtype, device=x.device)
        weights = decay ** -(i[1:])[:, None]
        partial = torch.cat([torch.zeros_like(state)[None], torch.cumsum(weights * xb, 0)])   # exclusive sums, B + 1
        values = (decay ** i)[:, None] * (state + (1 - decay) * partial)
        out[lo:lo + xb.shape[0]] = values[:-1]
        state = values[-1]
    return out, state


@dataclass(frozen=True)
class RunningBaseline:
    r"""The paper's running estimate of Eq. 10 (sec. 3): per unit, exponential moving averages of
    :math:`(h_i - p_i)^2 L` and of :math:`(h_i - p_i)^2`; the baseline is their ratio (0 before any
    update). Pure: every fold returns a new state.

    Two ways to fold: :meth:`update` takes one step per minibatch (its mean; training code), and
    :meth:`before_each` one step per draw, giving each draw the baseline of the draws before it (so that
    the estimate stays unbiased: a draw never sees its own loss).
    """

    numerator: Tensor
    denominator: Tensor
    decay: float

    @classmethod
    def zeros(cls, num_units: int, decay: float = 0.99) -> RunningBaseline:
        if not (isinstance(decay, (int, float)) and math.isfinite(decay) and 0 <= decay < 1):
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        z = torch.zeros(num_units, dtype=torch.float64)
        return cls(z, z.clone(), float(decay))

    def value(self) -> Tensor:
        return safe_divide(self.numerator, self.denominator)

    def update(self, h: Tensor, p: Tensor, loss: Tensor) -> RunningBaseline:
        """Fold in a minibatch as one step: ``h``, ``p`` are ``[B, n]``, ``loss`` is ``[B]``."""
        sq = (h.detach() - p.detach()).to(torch.float64).square()
        num = (sq * loss.detach().to(torch.float64)[:, None]).mean(0)
        d = self.decay
        return RunningBaseline(d * self.numerator + (1 - d) * num.cpu(),
                               d * self.denominator + (1 - d) * sq.mean(0).cpu(), d)

    def before_each(self, square: Tensor, loss: Tensor) -> tuple[Tensor, RunningBaseline]:
        """Fold in draws one step each: ``square`` is :math:`(h - p)^2` ``[B, n]``, ``loss`` ``[B]``. Returns the
        baseline each draw sees (``[B, n]``, from the draws before it) and the state after the last."""
        num, num_end = _moving_average_before(square * loss[:, None], self.numerator, self.decay)
        den, den_end = _moving_average_before(square, self.denominator, self.decay)
        return safe_divide(num, den), RunningBaseline(num_end, den_end, self.decay)


# ---- REINFORCE (sec. 3) --------------------------------------------------------------------------

def _prepare_reinforce(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    baseline = options["baseline"]
    decay = options["decay"]
    if not (isinstance(decay, (int, float)) and 0 < decay < 1):
        raise ValueError(f"decay must be a number in (0, 1), got {decay!r}")
    units = problem.num_units
    if baseline is None:
        value = torch.zeros(units, dtype=torch.float64)
    elif isinstance(baseline, str):
        if baseline == "optimal":
            value = optimal_baseline(problem)
        elif baseline == "running":
            return options
        else:
            raise ValueError(f"baseline must be None, a number, {units} numbers (one per unit), "
                             f"'optimal' or 'running'; got {baseline!r}")
    else:
        try:
            value = torch.as_tensor(baseline, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"baseline must be None, a number, {units} numbers, 'optimal' or 'running': {err}") from err
        if value.ndim == 0:
            value = value.expand(units).clone()
        if value.shape != (units,):
            raise ValueError(f"baseline must be a number or {units} numbers (one per unit), got shape {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"baseline must be finite, got {value.tolist()}")
    return {**options, "baseline": value}


def _is_running(baseline) -> bool:
    return isinstance(baseline, str) and baseline == "running"


def _shared_logits(a: Tensor) -> Tensor:
    """``a``, or its first row where every row is one view (stride 0: a first layer's logits, its input shared),
    so that the per-unit work on the logits is done once, not once per draw."""
    return a[:1] if a.stride(0) == 0 else a


def _reinforce_states(problem: Problem, traj: Trajectory, baseline: Tensor, decay: float = RUNNING_DECAY) -> FactoredGradient:
    loss = problem.loss(traj.output)
    deltas = [reinforce_rule(_shared_logits(a), h, loss, b.to(loss))
              for a, h, b in zip(traj.logits, traj.indicators, problem.split_units(baseline))]
    return FactoredGradient(deltas, list(traj.inputs))


def _reinforce_draw(problem: Problem, u: Tensor, baseline, decay: float = RUNNING_DECAY, state=None):
    traj = sample_trajectory(problem, BINARY, u[:, 0])
    if not _is_running(baseline):
        return _reinforce_states(problem, traj, baseline)
    loss = problem.loss(traj.output)
    if state is None:
        state = torch.zeros(2, problem.num_units, dtype=u.dtype, device=u.device)
    logits = [_shared_logits(a) for a in traj.logits]
    square = torch.cat([binary_residual(a, h) for a, h in zip(logits, traj.indicators)], 1).square()
    running, after = RunningBaseline(state[0], state[1], decay).before_each(square, loss)
    deltas = [reinforce_rule(a, h, loss, b)
              for a, h, b in zip(logits, traj.indicators, problem.split_units(running))]
    return FactoredGradient(deltas, list(traj.inputs)), torch.stack([after.numerator, after.denominator])


REINFORCE = Estimator(
    name="reinforce",
    summary="(h - p)(L - b): score function with a constant per-unit baseline b",
    draw=_reinforce_draw,
    from_states=_reinforce_states,
    stateful=lambda options: _is_running(options["baseline"]),
    unit=BINARY,
    noise="discrete",
    unbiased=True,
    objective="binary",
    defaults={"baseline": None, "decay": RUNNING_DECAY},
    prepare=_prepare_reinforce,
    reference=f"{PAPER}, sec. 3, Theorem 1, Corollary 1, Eq. 10",
)


# ---- REINFORCE leave-one-out ----------------------------------------------------------------------

def prepare_loo(problem: Problem, options: dict[str, Any]) -> dict[str, Any]:
    """Leave-one-out's options, checked: ``k`` an integer >= 2 (binary or categorical units)."""
    k = options["k"]
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 2):
        raise ValueError(f"k must be an integer >= 2 (leave-one-out needs two samples), got {k!r}")
    return options


def copies_of(problem: Problem, traj: Trajectory, k: int) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor | None]]]:
    """The ``k`` passes of each draw of ``traj`` (draw-major rows: draw ``i``'s are ``i*k .. i*k+k-1``) side by
    side: their losses ``[B, k]`` (:func:`tied_losses`) and, per layer, its logits, states and inputs as
    ``[B, k, n]`` (logits ``[1, 1, n]`` where every row shares them; inputs ``None`` for a layer without)."""
    outputs = traj.output.reshape(-1, k, traj.output.shape[-1])
    loss = tied_losses(problem.loss(traj.output).reshape(-1, k), outputs, axis=1)
    draws = (loss.shape[0], k, -1)
    layers = []
    for a, h, inp in zip(traj.logits, traj.indicators, traj.inputs):
        a = _shared_logits(a)
        a = a.reshape(1, 1, -1) if a.shape[0] == 1 else a.reshape(draws)
        layers.append((a, h.reshape(draws), None if inp is None else inp.reshape(draws)))
    return loss, layers


def _loo_states(problem: Problem, traj: Trajectory, k: int) -> FactoredGradient:
    loss, layers = copies_of(problem, traj, k)
    return FactoredGradient([leave_one_out_rule(a, h, loss, axis=1, inputs=inp) for a, h, inp in layers],
                            [inp for _, _, inp in layers])


REINFORCE_LOO = Estimator(
    name="reinforce_loo",
    summary="1/(k-1) sum_j (f_j - mean f) (b_j - p), k samples",
    from_states=_loo_states,
    unit=BINARY,
    copies=lambda options: options["k"],
    noise="discrete",
    unbiased=True,
    objective="binary",
    defaults={"k": 2},
    prepare=prepare_loo,
    loss_evals=lambda problem, options: options["k"],
    noise_per_unit=lambda options: options["k"],
    reference="Kool, van Hoof & Welling 2019 (Buy 4 REINFORCE samples, ICLR workshop); Mnih & Rezende 2016 (VIMCO)",
)


# ---- ARM and DisARM -------------------------------------------------------------------------------

def sample_above(problem: Problem, layer: int, h: Tensor, parts: list[Tensor] | None, repeats: int = 1) -> Tensor:
    """The last layer's states when the layers above ``layer`` are sampled from ``h`` on the draws' own uniforms
    ``parts`` (common random numbers): ``h`` holds ``repeats`` rows a draw, each draw's together; ``h`` itself
    where ``layer`` is the last (then ``parts`` may be ``None``)."""
    if layer + 1 < problem.num_layers:
        params = {k: v.to(h) for k, v in problem.parameters.items()}
        for upper in range(layer + 1, problem.num_layers):
            noise = parts[upper] if repeats == 1 else parts[upper].repeat_interleave(repeats, 0)
            h = BINARY.sample(problem.logits(upper, h, params), noise)[1]
    return h


def antithetic_losses(problem: Problem, traj: Trajectory, u: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``f(b)`` of the main pass and, per layer ``t``, ``f`` with layer ``t`` antithetic and the
    layers above resampled from the same uniforms ``u [B, U]``; where the two reach the same output, the same
    loss value (:func:`tied_losses`)."""
    parts = problem.split_units(u)
    main = problem.loss(traj.output)
    anti = []
    for t in range(problem.num_layers):
        h = sample_above(problem, t, antithetic(traj.logits[t], parts[t]), parts)
        anti.append(_tied_to(problem.loss(h), h, main, traj.output))
    return main, anti


def _antithetic_draw(rule):
    """Per-draw gradients of an antithetic estimator from its rule ``(a, u, b, b~, f(b), f(b~))``, layer by layer."""

    def draw(problem: Problem, u: Tensor) -> FactoredGradient:
        u0 = u[:, 0]
        traj = sample_trajectory(problem, BINARY, u0)
        main, anti = antithetic_losses(problem, traj, u0)
        parts = problem.split_units(u0)
        deltas = [rule(a, parts[t], b, antithetic(a, parts[t]), main, anti[t])
                  for t, (a, b) in enumerate(zip(traj.logits, traj.indicators))]
        return FactoredGradient(deltas, list(traj.inputs))

    return draw


@dataclass(frozen=True)
class AntitheticCells:
    r"""One chunk of the ``3^N`` cells of ``u`` on one stochastic layer of ``N`` units.

    Per unit the thresholds :math:`\min(p, 1-p)` and :math:`\max(p, 1-p)` cut ``[0, 1)`` into three cells
    on which :math:`(b, \tilde b)` is constant: ``(1, 0)``, then ``(1, 1)`` if :math:`p \ge 1/2` else
    ``(0, 0)``, then ``(0, 1)``, with probabilities :math:`\sigma(-|a|)`, :math:`\tanh(|a|/2)`,
    :math:`\sigma(-|a|)`. ``digits [C, N]`` names each unit's cell (0, 1, 2).
    """

    digits: Tensor
    b: Tensor
    b_antithetic: Tensor
    probability: Tensor


def antithetic_cells(problem: Problem, *, chunk_size: int = enumeration.DEFAULT_CHUNK_SIZE,
                     max_states: int = enumeration.DEFAULT_MAX_STATES,
                     what: str = "antithetic cells") -> tuple[Tensor, Iterator[AntitheticCells]]:
    """The layer's logits ``[N]`` and its :class:`AntitheticCells` in chunks (one stochastic layer only)."""
    if problem.num_layers != 1:
        raise ValueError(f"{what}: the antithetic cells are those of one stochastic layer; "
                         f"{problem.description} has {problem.num_layers}")
    n = problem.num_units
    total = enumeration.check_enumerable(n, max_states, base=3, noun="antithetic cells (3 per unit)", what=what)
    chunk_size = positive_int("chunk_size", chunk_size)
    x = None if problem.x is None else problem.x.expand(1, -1)
    a = problem.logits(0, x, batch_size=1).reshape(-1)
    edge, middle = torch.sigmoid(-a.abs()), torch.tanh(a.abs() / 2)
    upper = (a >= 0).to(a)
    cell_b = torch.stack([torch.ones_like(a), upper, torch.zeros_like(a)])   # [3, N]
    cell_anti = torch.stack([torch.zeros_like(a), upper, torch.ones_like(a)])
    cell_p = torch.stack([edge, middle, edge])
    powers = 3 ** torch.arange(n)

    def chunks() -> Iterator[AntitheticCells]:
        for start in range(0, total, chunk_size):
            digits = (torch.arange(start, min(start + chunk_size, total))[:, None] // powers) % 3   # [C, N]
            cols = torch.arange(n).expand_as(digits)
            yield AntitheticCells(digits, cell_b[digits, cols], cell_anti[digits, cols], cell_p[digits, cols].prod(1))

    return a, chunks()


def _disarm_outcomes(problem: Problem, *, chunk_size: int, max_states: int, device="cpu"):
    """Exact outcomes of DisARM on one stochastic layer: its rule on each of the ``3^N`` antithetic cells (made
    on the CPU, summed on ``device``)."""
    a, cells = antithetic_cells(problem, chunk_size=chunk_size, max_states=max_states,
                                what=f"disarm on {problem.description}")
    a = a.to(device)
    x = None if problem.x is None else problem.x.to(device)
    for cell in cells:
        b, b_antithetic, probability = cell.b.to(device), cell.b_antithetic.to(device), cell.probability.to(device)
        delta = disarm_rule(a.expand_as(b), b, b_antithetic, problem.loss(b), problem.loss(b_antithetic))
        yield probability, FactoredGradient([delta], [None if x is None else x.expand(len(probability), -1)])


def arm_exact_moments(problem: Problem, **cell_options) -> tuple[Tensor, Tensor]:
    r"""Exact per-coordinate mean and variance of ARM on one stochastic layer.

    On each antithetic cell (:class:`AntitheticCells`) the pair :math:`(b, \tilde b)` is fixed, so ARM's
    coordinate ``i`` is :math:`\Delta f\,(u_i - 1/2)` with :math:`u_i` uniform on its interval
    :math:`[l, r)` (shifted by 1/2): its conditional mean and second moment are :math:`\Delta f (l + r)/2`
    and :math:`\Delta f^2 (l^2 + l r + r^2)/3`.
    """
    a, cells = antithetic_cells(problem, what=f"arm on {problem.description}", **cell_options)
    lo, hi = torch.sigmoid(-a.abs()), torch.sigmoid(a.abs())
    edges = torch.stack([torch.zeros_like(a), lo, hi, torch.ones_like(a)]) - 0.5     # [4, N], shifted by 1/2
    left, right = edges[:-1], edges[1:]
    m1, m2 = (left + right) / 2, (left**2 + left * right + right**2) / 3
    cols = torch.arange(problem.num_units)
    mean_c = torch.zeros(problem.num_units, dtype=torch.float64)
    second_c = torch.zeros_like(mean_c)
    for cell in cells:
        diff = problem.loss(cell.b_antithetic) - problem.loss(cell.b)                 # f(b~) - f(b)
        mean_c += (cell.probability * diff) @ m1[cell.digits, cols]
        second_c += (cell.probability * diff**2) @ m2[cell.digits, cols]
    if problem.x is None:
        return mean_c, second_c - mean_c**2
    mean = torch.cat([torch.outer(mean_c, problem.x).reshape(-1), mean_c])
    second = torch.cat([torch.outer(second_c, problem.x**2).reshape(-1), second_c])
    return mean, second - mean**2


def _arm(a: Tensor, u: Tensor, b: Tensor, b_antithetic: Tensor, loss: Tensor, loss_antithetic: Tensor) -> Tensor:
    return arm_rule(u, loss, loss_antithetic)


def _disarm(a: Tensor, u: Tensor, b: Tensor, b_antithetic: Tensor, loss: Tensor, loss_antithetic: Tensor) -> Tensor:
    return disarm_rule(a, b, b_antithetic, loss, loss_antithetic)


def _one_plus_layers(problem: Problem, options) -> int:
    return 1 + problem.num_layers


ARM = Estimator(
    name="arm",
    summary="(f(b~) - f(b)) (u - 1/2), b~ = 1[1 - u < p] antithetic",
    draw=_antithetic_draw(_arm),
    noise="continuous",
    unbiased=True,
    loss_evals=_one_plus_layers,
    reference="Yin & Zhou 2019, ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks (ICLR)",
)

DISARM = Estimator(
    name="disarm",
    summary="(f(b) - f(b~))/2 (-1)^b~ 1[b != b~] sigmoid(|a|)",
    draw=_antithetic_draw(_disarm),
    outcomes=_disarm_outcomes,
    outcomes_per_unit=3,
    exact_max_layers=1,
    noise="discrete",
    unbiased=True,
    loss_evals=_one_plus_layers,
    reference="Dong, Mnih & Tucker 2020, DisARM: An Antithetic Gradient Estimator for Binary Latent Variables (NeurIPS)",
)


# ---- local expectation (every unit's two values, the rest held fixed) ------------------------------

def _flipped_losses(problem: Problem, traj: Trajectory, layer: int, parts: list[Tensor] | None,
                    main: Tensor) -> Tensor:
    """``f`` with unit ``i`` of ``layer`` flipped, for every ``i``: ``[B, n]``. The units above are
    resampled from the draw's own uniforms ``parts`` (common random numbers); a flip that leaves the output
    as it was gets the draw's own loss ``main`` (:func:`tied_losses`)."""
    h = traj.indicators[layer]
    batch, n = h.shape
    flipped = sample_above(problem, layer, flip_each(h, axis=-2).reshape(batch * n, n), parts, repeats=n)
    losses = problem.loss(flipped).reshape(batch, n)
    return _tied_to(losses, flipped.reshape(batch, n, -1), main[:, None], traj.output[:, None])


def _local_expectation_deltas(problem: Problem, traj: Trajectory, parts: list[Tensor] | None) -> FactoredGradient:
    """:func:`local_expectation_rule` on every layer, the layers above each flip resampled from ``parts``."""
    main = problem.loss(traj.output)
    deltas = [local_expectation_rule(a, h, main, _flipped_losses(problem, traj, layer, parts, main))
              for layer, (a, h) in enumerate(zip(traj.logits, traj.indicators))]
    return FactoredGradient(deltas, list(traj.inputs))


def _local_expectation_draw(problem: Problem, u: Tensor) -> FactoredGradient:
    traj = sample_trajectory(problem, BINARY, u[:, 0])
    return _local_expectation_deltas(problem, traj, problem.split_units(u[:, 0]))


def _local_expectation_states(problem: Problem, traj: Trajectory) -> FactoredGradient:
    if problem.num_layers != 1:
        raise ValueError("local_expectation's exact outcomes are over one stochastic layer's states")
    return _local_expectation_deltas(problem, traj, None)


LOCAL_EXPECTATION = Estimator(
    name="local_expectation",
    summary="sigma'(a_i) (f(h_i = 1) - f(h_i = 0)), the rest of h fixed and the layers above on the same uniforms",
    draw=_local_expectation_draw,
    noise="discrete",
    exact_max_layers=1,           # one layer's exact outcomes: its binary states; deeper networks use Monte Carlo
    from_states=_local_expectation_states,
    unit=BINARY,
    unbiased=True,
    loss_evals=lambda problem, options: 1 + problem.num_units,
    reference="Titsias & Lazaro-Gredilla 2015, Local Expectation Gradients for Black Box Variational Inference "
              "(NeurIPS); Tokui & Sato 2017, Evaluating the Variance of Likelihood-Ratio Gradient Estimators (ICML)",
)
