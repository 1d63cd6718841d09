r"""Conditional computation (sec. 5 and appendix A of arXiv:1308.3432): sparse stochastic gates switch the
units of an expert layer on and off per example, trained through each estimator.

The network (the paper's, scaled to the input): a *gater* path ``x -> tanh hidden -> affine -> a``, one
pre-activation per gate; an *expert* path ``x -> H`` (linear units); the conditional layer ``g(a) * H``;
a softmax readout. ``g`` is the gate of the estimator under test:

* pathwise gates, through the drop-ins of :mod:`gradstats.functional`: ``st``, ``st_sigmoid`` (binary,
  straight-through with or without sigmoid'), ``sts`` (:math:`b\sqrt p`), ``noisy_rectifier``
  (:math:`\max(0, a + z)`, Gaussian ``z`` of standard deviation 1), ``gumbel`` (relaxed), ``st_gumbel``,
  ``reinmax``; the expert and readout learn by back-propagation through ``g * H``;
* score-function gates (binary, no ``dL/dh``): ``reinforce`` (per-unit baseline from the paper's two
  running averages, :class:`~gradstats.estimators.RunningBaseline`), ``reinforce_loo`` (two samples),
  ``disarm``; the gater learns from the estimator's surrogate of the per-example loss;
* the paper's baselines, deterministic: ``rectifier`` (:math:`\max(0, a)`) and ``sigmoid_noise``
  (:math:`\sigma(a + z)`, Gaussian ``z``).

Sparsity: target fraction ``rho`` (0.1) of gates on. Gates with a probability of being on (every gate but
the rectifiers) get a KL penalty, the mean over units of :math:`\mathrm{KL}(\rho \,\|\, \bar q_i)` on each unit's mean
probability of being on over the minibatch (:math:`q = p`, and :math:`\sqrt p` for STS); the rectifiers
get an L1 penalty whose weight adapts (times 1.01 while more than ``rho`` of the units are nonzero, else
divided by 1.01). At test time gates are deterministic and thresholded to the target: the threshold on
``a`` is the ``1 - rho`` quantile of ``a`` over the validation set; an on gate's value is 1 for binary and
relaxed gates, :math:`\sqrt p` for STS, :math:`\max(0, a)` for the rectifiers, :math:`\sigma(a)` for
``sigmoid_noise``. Training is minibatch SGD with max-norm 2 on every unit's incoming weights; the
reported model is the one with the lowest validation error among evaluations every ``eval_every`` epochs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from torch.func import grad, vmap
from torch.nn import functional as F

from . import checkpoint as ckpt
from . import functional as gf
from .datasets import Split
from .noise import resolve_device
from .numerics import positive_finite, positive_int, safe_divide, seed_value

__all__ = ["GATES", "ALL_GATES", "CONTROLS", "fixed_gates",
           "PAPER_FOUR", "PUBLISHED_TEST_ERROR", "PUBLISHED_VALID_ERROR", "PUBLISHED_TRAIN_CRITERION", "RATES",
           "GATER_RATE_SCALES", "Architecture", "Settings",
           "Result", "architecture_for", "initial_parameters", "gate_values", "train_gated", "train_gated_many",
           "test_gates", "grid",
           "run_study", "compare_with", "GATER", "GRADIENT_GATES", "gater_gradient", "reinforce_baseline"]

PATHWISE = ("st", "st_sigmoid", "sts", "noisy_rectifier", "gumbel", "st_gumbel", "reinmax")
SCORE = ("reinforce", "reinforce_loo", "disarm")
BASELINES = ("rectifier", "sigmoid_noise")
GATES = PATHWISE + SCORE + BASELINES   # the digits study's rows
STS_CODE = "sts_code"                   # STS as the authors' code samples it: b ~ Bernoulli(p), not Bernoulli(sqrt p)
SIGMOID = "sigmoid"                     # the paper's deterministic sigmoid baseline
CONTROLS = ("all_on", "random_fixed")   # gates that are not learned: every unit on; a fixed random 10% of units
ALL_GATES = GATES + (STS_CODE, SIGMOID) + CONTROLS
PAPER_FOUR = ("noisy_rectifier", "sts", "st", "reinforce")
RECTIFIERS = ("noisy_rectifier", "rectifier")
# The paper's table (Fig. 2, right): test error in percent, one run each, on MNIST.
RATES = (0.1, 0.3, 1.0, 3.0)            # the learning-rate grid every gate is selected from
GATER_RATE_SCALES = (1.0, 0.01)         # score-function gates also try the paper's smaller gater rate
SELECTION_SEEDS = (1000, 1001)          # validation runs per setting (the reported seeds are 0, 1, ...)
PUBLISHED_TEST_ERROR = {"noisy_rectifier": 1.87, "st": 1.39, "sts": 1.96, "reinforce": 1.89, "rectifier": 1.60,
                        "sigmoid_noise": 1.87, "sigmoid": 1.92}
# The same table's train criterion and validation error (percent), as the paper prints them.
PUBLISHED_TRAIN_CRITERION = {"noisy_rectifier": 6.7e-4, "st": 3.3e-3, "sts": 4.4e-3, "reinforce": 9.9e-3,
                             "rectifier": 6.3e-5, "sigmoid_noise": 1.8e-3, "sigmoid": 3.2e-3}
PUBLISHED_VALID_ERROR = {"noisy_rectifier": 1.52, "st": 1.42, "sts": 1.86, "reinforce": 1.78, "rectifier": 1.66,
                         "sigmoid_noise": 1.88, "sigmoid": 1.97}


@dataclass(frozen=True)
class Architecture:
    """Sizes: inputs, the gater's tanh hidden layer, gates (= expert units), classes."""

    inputs: int
    gater_hidden: int
    gates: int
    classes: int


def architecture_for(inputs: int, classes: int) -> Architecture:
    """The paper's MNIST sizes (784 inputs -> 400 tanh -> 2000 gates, 2000 expert units) scaled to ``inputs``,
    rounded to multiples of 8: 32 and 160 for the 64 pixels of the digits."""
    def scaled(n: int) -> int:
        return max(8, 8 * round(n * inputs / 784 / 8))

    return Architecture(inputs, scaled(400), scaled(2000), classes)


@dataclass(frozen=True)
class Settings:
    """What one training run uses (the hyper-parameters a grid selects are ``learning_rate`` and
    ``gater_rate_scale``)."""

    gate: str
    learning_rate: float = 0.1
    gater_rate_scale: float = 1.0     # the gater's rate relative to the rest (the paper: 0.01 for REINFORCE)
    epochs: int = 40
    minibatch: int = 32
    sparsity: float = 0.1
    penalty: float = 10.0             # KL weight
    l1_start: float = 1e-3            # the rectifiers' adaptive L1 weight, at the start
    temperature: float = 1.0          # gumbel, st_gumbel, reinmax
    noise_scale: float = 1.0          # noisy_rectifier, sigmoid_noise
    decay: float = 0.99               # reinforce's running averages, per minibatch
    max_norm: float = 2.0
    eval_every: int = 5
    anneal_epochs: int = 0            # the last epochs, over which every rate falls linearly to 0 (0: constant)

    def __post_init__(self):
        if self.gate not in ALL_GATES:
            raise ValueError(f"gate must be one of {', '.join(ALL_GATES)}, got {self.gate!r}")
        for name in ("learning_rate", "gater_rate_scale", "penalty", "l1_start", "temperature", "noise_scale",
                     "max_norm"):
            positive_finite(name, getattr(self, name))
        for name in ("epochs", "minibatch", "eval_every"):
            positive_int(name, getattr(self, name))
        if not (isinstance(self.sparsity, float) and 0 < self.sparsity < 1):
            raise ValueError(f"sparsity must be a fraction in (0, 1), got {self.sparsity!r}")
        if not (0 <= self.decay < 1):
            raise ValueError(f"decay must be in [0, 1), got {self.decay!r}")
        if not (isinstance(self.anneal_epochs, int) and not isinstance(self.anneal_epochs, bool)
                and 0 <= self.anneal_epochs <= self.epochs):
            raise ValueError(f"anneal_epochs must be an integer in 0..epochs ({self.epochs}), "
                             f"got {self.anneal_epochs!r}")


@dataclass(frozen=True)
class Result:
    """One run: errors are fractions; ``sparsity`` is the fraction of gates on at test time (thresholded),
    ``train_sparsity`` the fraction on (nonzero) during the last training epoch; ``train_criterion`` the mean
    training-set cross-entropy of the selected model with its test-time gates; ``history`` the validation
    error after each evaluation, ``on_history`` each epoch's mean fraction of gates on in training."""

    gate: str
    seed: int
    settings: Settings
    valid_error: float
    test_error: float
    sparsity: float
    train_sparsity: float
    best_epoch: int
    history: tuple[tuple[int, float], ...] = field(default=())   # (epoch, validation error)
    train_criterion: float = math.nan
    on_history: tuple[float, ...] = field(default=())
    snapshots: Mapping[int, Mapping[str, Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def row(self) -> dict:
        return {"estimator": self.gate, "seed": self.seed, "learning_rate": self.settings.learning_rate,
                "gater_rate_scale": self.settings.gater_rate_scale, "valid_error": self.valid_error,
                "test_error": self.test_error, "sparsity": self.sparsity, "train_sparsity": self.train_sparsity,
                "train_criterion": self.train_criterion, "best_epoch": self.best_epoch}


def initial_parameters(arch: Architecture, seed: int, device=None, dtype=torch.float32,
                       gate_bias: float = math.log(0.1 / 0.9)) -> dict[str, Tensor]:
    """Gater ``Wg1, bg1, Wg2, bg2``, expert ``We, be``, readout ``Wo, bo``; weights ``W[in, out]`` uniform in
    :math:`\\pm\\sqrt{6 / (n_{in} + n_{out})}` (Glorot), gate biases ``gate_bias`` (the logit of the target
    0.1, so that gates start near it; 0 for the rectifiers), everything else 0."""
    g = torch.Generator().manual_seed(seed_value("seed", seed))

    def glorot(n_in: int, n_out: int) -> Tensor:
        bound = math.sqrt(6 / (n_in + n_out))
        return (torch.rand(n_in, n_out, generator=g, dtype=torch.float64) * 2 - 1) * bound

    params = {"Wg1": glorot(arch.inputs, arch.gater_hidden), "bg1": torch.zeros(arch.gater_hidden),
              "Wg2": glorot(arch.gater_hidden, arch.gates), "bg2": torch.full((arch.gates,), float(gate_bias)),
              "We": glorot(arch.inputs, arch.gates), "be": torch.zeros(arch.gates),
              "Wo": glorot(arch.gates, arch.classes), "bo": torch.zeros(arch.classes)}
    return {k: v.to(device=device, dtype=dtype) for k, v in params.items()}


def _gater(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    return torch.tanh(x @ params["Wg1"] + params["bg1"]) @ params["Wg2"] + params["bg2"]


def _readout(params: Mapping[str, Tensor], gate: Tensor, expert: Tensor) -> Tensor:
    return (gate * expert) @ params["Wo"] + params["bo"]


def gate_values(settings: Settings, a: Tensor, u: Tensor) -> Tensor:
    """A pathwise or deterministic gate's training value (its backward pass is the estimator's); not for the
    score-function gates or the controls."""
    gate = settings.gate
    if gate == "st":
        return gf.straight_through(a, u=u)
    if gate == "st_sigmoid":
        return gf.straight_through(a, u=u, variant="sigmoid")
    if gate == "sts":
        return gf.sts(a, u=u)
    if gate == STS_CODE:   # b * sqrt(p), b ~ Bernoulli(p) held fixed; sqrt(p) as exp(log p / 2), finite where p underflows
        return (u < torch.sigmoid(a)).to(a.dtype).detach() * torch.exp(F.logsigmoid(a) / 2)
    if gate == "noisy_rectifier":
        return gf.noisy_rectifier(a, u=u, scale=settings.noise_scale)
    if gate == "gumbel":
        return gf.gumbel_sigmoid(a, u=u, temperature=settings.temperature)
    if gate == "st_gumbel":
        return gf.st_gumbel(a, u=u, temperature=settings.temperature)
    if gate == "reinmax":
        return gf.reinmax(a, u=u, temperature=settings.temperature)
    if gate == "rectifier":
        return F.relu(a)
    if gate == "sigmoid_noise":
        return torch.sigmoid(a + settings.noise_scale * torch.special.ndtri(u))
    if gate == SIGMOID:
        return torch.sigmoid(a)
    raise ValueError(f"gate {gate!r} has no pathwise value (a score-function gate)")


def _on_probability(settings: Settings, a: Tensor) -> Tensor:
    """Each gate's probability of being on (the KL penalty's argument)."""
    p = torch.sigmoid(a)
    return p.sqrt() if settings.gate == "sts" else p


def _kl_penalty(q_mean: Tensor, rho: float) -> Tensor:
    r"""Mean over units of :math:`\mathrm{KL}(\rho \,\|\, \bar q_i)` between Bernoulli laws."""
    q = q_mean.clamp(1e-6, 1 - 1e-6)
    return (rho * torch.log(rho / q) + (1 - rho) * torch.log((1 - rho) / (1 - q))).mean()


def fixed_gates(settings: Settings, gates: int, seed: int) -> Tensor:
    """The controls' gates, the same for every example in training and at test: every unit on (``all_on``: the
    network is then the ungated expert path, a linear softmax classifier), or ``round(sparsity * gates)`` units
    on, chosen at random from the run's ``seed`` (``random_fixed``). Ones for every other gate (unused)."""
    mask = torch.ones(gates)
    if settings.gate == "random_fixed":
        off = torch.randperm(gates, generator=torch.Generator().manual_seed(seed + 3))[round(settings.sparsity * gates):]
        mask[off] = 0.0
    return mask


def _noise_shape(settings: Settings, minibatch: int, gates: int) -> tuple[int, ...]:
    """The uniforms one minibatch step draws: one per gate and example (two passes for leave-one-out)."""
    return (2, minibatch, gates) if settings.gate == "reinforce_loo" else (minibatch, gates)


def _step_loss(settings: Settings, params: dict[str, Tensor], x: Tensor, y: Tensor, u: Tensor,
               baseline: tuple[Tensor, Tensor], l1_weight: Tensor, mask: Tensor) -> tuple[Tensor, tuple[Tensor, tuple]]:
    """The minibatch's training objective (cross-entropy plus the sparsity penalty, with each estimator's
    surrogate for the gater), a pure function of its arguments (``u``: the step's uniforms, drawn by the caller
    from the run's own stream; ``mask``: the controls' :func:`fixed_gates`), and ``(on, baseline)``: the gates'
    on-fraction and REINFORCE's running averages (numerator, denominator) after the step
    (:class:`~gradstats.estimators.RunningBaseline`'s per-minibatch fold). ``torch.func`` differentiates and
    batches it over runs."""
    expert = x @ params["We"] + params["be"]
    if settings.gate in CONTROLS:   # no gater, no penalty
        return F.cross_entropy(_readout(params, mask.to(expert.dtype), expert), y), (mask.mean().to(expert.dtype),
                                                                                        baseline)
    a = _gater(params, x)
    n = len(y)
    if settings.gate in SCORE:
        per_example = _per_example_loss({k: params[k].detach() for k in ("Wo", "bo")}, expert.detach(), y)
        if settings.gate == "reinforce":
            b, surrogate = gf.reinforce(a, u=u)
            losses = per_example(b)
            numerator, denominator = baseline
            gater_term = surrogate(losses, safe_divide(numerator, denominator).to(a))
            sq = (b.detach() - torch.sigmoid(a).detach()).to(numerator.dtype).square()
            d = settings.decay
            baseline = (d * numerator + (1 - d) * (sq * losses.detach().to(sq.dtype)[:, None]).mean(0),
                        d * denominator + (1 - d) * sq.mean(0))
            fit = F.cross_entropy(_readout(params, b, expert), y)
        elif settings.gate == "reinforce_loo":
            b, gater_term = gf.reinforce_loo(a, per_example, k=2, u=u)
            fit = torch.stack([F.cross_entropy(_readout(params, bj, expert), y) for bj in b]).mean()
        else:
            b, gater_term = gf.disarm(a, per_example, u=u)
            fit = F.cross_entropy(_readout(params, b, expert), y)
        on = (b > 0).to(a.dtype).mean()
        objective = fit + gater_term / n
    else:
        gate = gate_values(settings, a, u)
        # the fraction on: nonzero gates; for the relaxed and noisy-sigmoid gates (never exactly 0) their mean value
        on = gate.mean() if settings.gate in ("gumbel", "sigmoid_noise", SIGMOID) else (gate != 0).to(a.dtype).mean()
        objective = F.cross_entropy(_readout(params, gate, expert), y)
        if settings.gate in RECTIFIERS:
            objective = objective + l1_weight.to(a.dtype) * gate.abs().mean()
    if settings.gate not in RECTIFIERS:
        objective = objective + settings.penalty * _kl_penalty(_on_probability(settings, a).mean(0), settings.sparsity)
    return objective, (on.detach(), baseline)


def _step_gradient(settings: Settings, params: dict[str, Tensor], x: Tensor, y: Tensor, u: Tensor,
                   baseline: tuple[Tensor, Tensor], l1_weight: Tensor, mask: Tensor) -> tuple[dict[str, Tensor], tuple]:
    """One run's step: the gradient of :func:`_step_loss` in every parameter, and its ``(on, baseline)``, by plain
    autograd. The same numbers bit for bit as ``torch.func.grad`` (which batches the stacked runs), without its
    cost on every operation (about 5% of a step of the MNIST network on a CPU); a parameter that the objective
    does not use (a control's gater) gets zeros, as ``torch.func.grad`` gives it."""
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    objective, aux = _step_loss(settings, leaves, x, y, u, baseline, l1_weight, mask)
    grads = torch.autograd.grad(objective, list(leaves.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}, aux


def _stack_gradients(settings: Settings, params: dict[str, Tensor], x: Tensor, y: Tensor, u: Tensor,
                     baseline: tuple[Tensor, Tensor], l1_weight: Tensor, masks: Tensor) -> tuple[dict[str, Tensor], tuple]:
    """Every run's step of a stack (parameters ``[R, ...]``, the other arguments with a leading run axis):
    ``torch.func.grad`` of :func:`_step_loss`, batched over the runs by ``vmap`` (batched matrix products)."""
    def step(p, xb, yb, ub, base, l1, mask):
        return grad(lambda q: _step_loss(settings, q, xb, yb, ub, base, l1, mask), has_aux=True)(p)

    return vmap(step)(params, x, y, u, baseline, l1_weight, masks)


def _compiled_update(settings: Settings, rates: dict[str, Tensor]):
    """One minibatch step of every run of a stack as one graph compiled by ``torch.compile``: the gradients of
    :func:`_step_loss` batched over the runs (``vmap`` of ``grad``), plain SGD at each run's ``rates`` times the
    annealing factor (a 0-dim tensor, so that no new value recompiles), then :func:`_max_norm`; the parameters
    ``[R, ...]`` are updated in place and ``(on, baseline)`` returned. Compiling fuses the step's elementwise
    work and removes the per-operation dispatch that leaves an accelerator waiting at minibatch 32; its numbers
    equal the eager step's up to float rounding (``tests/test_conditional.py``)."""
    def update(params, xb, yb, u, base, l1, masks, factor):
        grads, (on, base) = _stack_gradients(settings, params, xb, yb, u, base, l1, masks)
        with torch.no_grad():
            for k, v in params.items():
                v.sub_(rates[k] * factor * grads[k])
        _max_norm(params, settings.max_norm)
        return on, base

    return torch.compile(update)


def _max_norm(params: dict[str, Tensor], bound: float) -> None:
    """Every unit's incoming weight vector (a column of ``W[in, out]``, of each run's ``W[R, in, out]`` in a stack)
    scaled down to norm ``bound`` (the norms as square roots of column sums of squares, which run along
    memory, not across it). On a CPU only the columns over the bound are rewritten (a handful a step, where a
    pass over the whole matrix costs as much as the norms), each by the factor it gets in ``W * where(norm >
    bound, bound / norm, 1)``, which an accelerator and a compiled step compute as it is (finding the columns
    would wait on the device, or break the graph): the same numbers bit for bit."""
    with torch.no_grad():
        for name in ("Wg1", "Wg2", "We", "Wo"):
            w = params[name]
            norms = w.square().sum(-2, keepdim=True).sqrt()
            if w.device.type != "cpu" or torch.compiler.is_compiling():
                w.mul_(torch.where(norms > bound, bound / norms.clamp_min(1e-30), 1.0))
                continue
            stacked, norms = (w, norms) if w.dim() == 3 else (w[None], norms[None])   # [R, in, out], [R, 1, out]
            runs, _, columns = (norms > bound).nonzero(as_tuple=True)
            if len(runs):
                factor = bound / norms[runs, 0, columns].clamp_min(1e-30)
                stacked[runs, :, columns] = stacked[runs, :, columns] * factor[:, None]


def _scores(settings: Settings, params: Mapping[str, Tensor], x: Tensor, mask: Tensor, chunk: int = 4096) -> Tensor:
    """The gate pre-activations of ``x`` (for the controls, +1 where :func:`fixed_gates` is on, -1 elsewhere)."""
    if settings.gate in CONTROLS:
        return (2 * mask.to(x) - 1).expand(len(x), -1)
    with torch.no_grad():
        return torch.cat([_gater(params, x[i:i + chunk]) for i in range(0, len(x), chunk)])


def test_gates(settings: Settings, a: Tensor, threshold: float) -> Tensor:
    """Deterministic gates at test time: on where ``a > threshold``, with the gate type's on value."""
    on = (a > threshold).to(a.dtype)
    if settings.gate in ("sts", STS_CODE):
        return on * torch.sigmoid(a).sqrt()
    if settings.gate in RECTIFIERS:
        return on * F.relu(a)
    if settings.gate in ("sigmoid_noise", SIGMOID):
        return on * torch.sigmoid(a)
    return on


def _error(settings: Settings, params: Mapping[str, Tensor], a: Tensor, x: Tensor, y: Tensor, threshold: float,
           chunk: int = 10000) -> tuple[float, float, float]:
    """Classification error, the fraction of gates on and the mean cross-entropy, with thresholded deterministic
    gates (``a``: the gate pre-activations of ``x``, :func:`_scores`)."""
    wrong = on = loss = 0.0
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            gates = test_gates(settings, a[i:i + chunk], threshold)
            logits = _readout(params, gates, x[i:i + chunk] @ params["We"] + params["be"])
            wrong += float((logits.argmax(1) != y[i:i + chunk]).to(torch.float64).sum())
            on += float((gates != 0).to(torch.float64).sum())
            loss += float(F.cross_entropy(logits.to(torch.float64), y[i:i + chunk], reduction="sum"))
    return wrong / len(x), on / a.numel(), loss / len(x)


def _threshold(settings: Settings, a_valid: Tensor) -> float:
    """The ``1 - sparsity`` quantile of the gate pre-activations over the validation set (at least 0 for the
    rectifiers, whose gates are off at or below 0 whatever the threshold)."""
    if settings.gate in CONTROLS:
        return 0.0
    a = a_valid.flatten().to(torch.float64)
    sparsity = settings.sparsity
    if settings.gate in RECTIFIERS:
        return max(0.0, _quantile(a, 1 - sparsity))
    return _quantile(a, 1 - sparsity)


def _quantile(a: Tensor, q: float) -> float:
    """The ``q`` quantile of ``a`` (torch.quantile below its size limit, the order statistic above it)."""
    a = a.cpu()
    if a.numel() <= 2**24:
        return float(torch.quantile(a, q))
    return float(a.kthvalue(max(1, int(round(q * a.numel())))).values)


def train_gated(data: Split, settings: Settings, seed: int = 0, *, device="auto", dtype=torch.float32,
                checkpoints: tuple[int, ...] = ()) -> Result:
    """Train the gated network on ``data`` through ``settings.gate`` and score it (validation-selected epoch).

    One run of :func:`train_gated_many` (the same code path: a stack of one). ``checkpoints``: epochs after
    which the parameters are kept in ``Result.snapshots`` (CPU copies; 0 is the initialisation), for
    :func:`gater_gradient`."""
    return train_gated_many(data, [settings], [seed], device=device, dtype=dtype, checkpoints=checkpoints)[0]


_STACKED_FIELDS = ("learning_rate", "gater_rate_scale")   # what runs of one stack may differ in, besides the seed
BATCH_BYTES = 2**22   # on a CPU, a stack whose parameters take at most this many bytes is batched over its runs
DEVICE_BATCH_BYTES = 2**32   # on an accelerator: a step of a small minibatch is launch-bound whatever the network


def train_gated_many(data: Split, settings, seeds, *, device="auto", dtype=torch.float32,
                     checkpoints: tuple[int, ...] = (), progress=None, checkpoint_path=None,
                     compile: bool = False) -> list[Result]:
    """Many independent runs of the gated network as one computation: run ``r`` has ``settings[r]`` and seed
    ``seeds[r]`` (a single Settings or seed is broadcast); the settings may differ only in
    ``learning_rate`` and ``gater_rate_scale``.

    Each run keeps what it would have alone: its initialisation (``seed``), its minibatch order (its own
    generator, ``seed + 1``), its gate noise (its own generator, ``seed + 2``, drawn in the same order and
    shapes), its running baseline or adaptive L1 weight, its max-norm, its learning rates, its evaluations and
    its validation-selected epoch; a run that diverges stops there and keeps its best evaluation. The stacked
    parameters ``[R, ...]`` are updated together: one step's objective and its gradient for every run come from
    ``torch.func.grad`` of :func:`_step_loss`, batched over the runs with ``torch.func.vmap`` (batched matrix
    products) while the stack's parameters take at most :data:`BATCH_BYTES` on a CPU, else run by run, each by
    plain autograd (:func:`_step_gradient`: the same numbers; a large network's products already run near the
    CPU's peak, and its memory-bound updates only slow down as the stack grows: ``benchmarks/conditional.py``);
    on an accelerator up to :data:`DEVICE_BATCH_BYTES` (there a minibatch of 32 leaves the device waiting on
    kernel launches, which a stack shares). Run by run, a run in a stack is the run alone, bit for bit;
    batched, it equals it up to float rounding (``tests/test_conditional.py``).
    ``progress(line)``, if given, hears each epoch's elapsed time. ``compile``: every step, batched or alone, as
    one compiled graph (:func:`_compiled_update`; for accelerators, where the eager step waits on kernel
    launches; equal to the eager runs up to float rounding, not bit for bit); where compiling fails, a warning
    and the eager step. Each gate and stack size is a graph of its own, and a process keeps at most torch's
    recompile limit of them (``torch._dynamo.config.recompile_limit``, 8): beyond it, the same warning and the
    eager step (``torch._dynamo.reset()`` between runs frees the graphs).

    ``checkpoint_path``: the training state is saved there after every epoch (parameters, best models, curves,
    the generators' states; :mod:`gradstats.checkpoint`: signed by the settings, seeds, data, whether
    compiled, and library source, with a checksum), a run given its own checkpoint resumes from it and ends where
    it would have uninterrupted, and the file is removed when the runs end. The path is claimed up front (its
    directory must exist; one run at a time). Runs that go one after another each get ``PATH.runI``."""
    import time

    runs = len(seeds) if isinstance(seeds, (list, tuple)) else len(settings) if isinstance(settings, (list, tuple)) else 1
    settings = list(settings) if isinstance(settings, (list, tuple)) else [settings] * runs
    seeds = [seed_value("seed", s) for s in (list(seeds) if isinstance(seeds, (list, tuple)) else [seeds] * runs)]
    if not settings or len(settings) != len(seeds):
        raise ValueError(f"settings and seeds must name the same number of runs (at least one), got {len(settings)} "
                         f"and {len(seeds)}")
    first = settings[0]
    if not all(isinstance(s, Settings) for s in settings):
        raise ValueError("settings must be gradstats.conditional.Settings")
    for s in settings[1:]:
        if replace(s, **{f: getattr(first, f) for f in _STACKED_FIELDS}) != first:
            raise ValueError("the runs of a stack may differ only in learning_rate and gater_rate_scale; got "
                             f"{first} and {s}")
    checkpoints = tuple(checkpoints)
    if not all(isinstance(e, int) and 0 <= e <= first.epochs for e in checkpoints):
        raise ValueError(f"checkpoints must be epochs in 0..{first.epochs} (settings.epochs), got {checkpoints}")
    count = len(seeds)
    dev = resolve_device(device)
    arch = architecture_for(data.num_inputs, data.num_classes)
    # batched over the runs where the stack's parameters stay small (the per-step overhead of a small network is
    # then shared); on a CPU one run after another where they do not (a large network's matrix products already
    # run near the CPU's peak, and interleaving runs only evicts each one's parameters from the cache)
    size = (arch.inputs * arch.gater_hidden + arch.gater_hidden + arch.gater_hidden * arch.gates + arch.gates
            + arch.inputs * arch.gates + arch.gates + arch.gates * arch.classes + arch.classes)   # parameters of a run
    bound = BATCH_BYTES if dev.type == "cpu" else DEVICE_BATCH_BYTES
    if count > 1 and count * size * torch.finfo(dtype).bits // 8 > bound:
        return [result for i, (s, seed) in enumerate(zip(settings, seeds))
                for result in train_gated_many(data, [s], [seed], device=device, dtype=dtype, checkpoints=checkpoints,
                                               progress=progress, checkpoint_path=None if checkpoint_path is None
                                               else f"{checkpoint_path}.run{i}", compile=compile)]
    saver = None
    if checkpoint_path is not None:
        saver = ckpt.RunFile(checkpoint_path, ckpt.signature(
            kind="train_gated_many", settings=[repr(s) for s in settings], seeds=seeds,
            data=[data.train, data.validation, data.test], dtype=str(dtype), checkpoints=list(checkpoints),
            compiled=bool(compile)))
    batched = count > 1
    gate_bias = 0.0 if first.gate in RECTIFIERS else math.log(0.1 / 0.9)
    inits = [initial_parameters(arch, seed, dev, dtype, gate_bias) for seed in seeds]
    params = {k: torch.stack([p[k] for p in inits]) for k in inits[0]}
    rates = {k: torch.tensor([s.learning_rate * (s.gater_rate_scale if k in GATER else 1.0) for s in settings],
                             device=dev, dtype=dtype).reshape(-1, *[1] * (params[k].ndim - 1)) for k in params}
    x, y = (t.to(dev) for t in data.train)
    x = x.to(dtype)
    xv, yv = data.validation[0].to(dev, dtype), data.validation[1].to(dev)
    xt, yt = data.test[0].to(dev, dtype), data.test[1].to(dev)
    order_gens = [torch.Generator().manual_seed(seed + 1) for seed in seeds]
    noise_gens = [torch.Generator(device=dev).manual_seed(seed + 2) for seed in seeds]
    shape = _noise_shape(first, first.minibatch, arch.gates)
    baseline = (torch.zeros(count, arch.gates, dtype=torch.float64, device=dev),
                torch.zeros(count, arch.gates, dtype=torch.float64, device=dev))
    l1_weight = torch.full((count,), first.l1_start, dtype=torch.float64, device=dev)
    masks = torch.stack([fixed_gates(first, arch.gates, seed) for seed in seeds]).to(dev, dtype)
    alive = [True] * count
    best = [(math.inf, None, 0) for _ in range(count)]
    history = [[] for _ in range(count)]
    on_fraction = [[] for _ in range(count)]
    on_history = [[] for _ in range(count)]
    snapshots = [{} for _ in range(count)]


    def sgd(p: dict[str, Tensor], grads: dict[str, Tensor], r: int | None, factor: float) -> None:
        """Plain SGD at each run's own rates times ``factor`` (the annealing), then max-norm: all runs at once
        (``r`` None), or run ``r`` alone (its slices, updated as torch.optim.SGD updates one run)."""
        with torch.no_grad():
            for k, v in p.items():
                if r is None:
                    v.addcmul_(rates[k], grads[k], value=-factor)
                else:
                    v.add_(grads[k], alpha=-float(rates[k][r]) * factor)
        _max_norm(p, first.max_norm)

    compiled = [_compiled_update(first, rates)] if compile else []

    def advance(xb, yb, u, base, l1, factor, factor_tensor):
        """One minibatch step of every run; returns each run's on-fraction and its baseline after the step
        (``factor``: the annealing's; ``factor_tensor``: the same as a 0-dim tensor on the device, for the
        compiled step)."""
        if compiled:
            try:
                return compiled[0](params, xb, yb, u, base, l1, masks, factor_tensor)
            except Exception as err:   # torch.compile's failures have no common type; they come before any update
                compiled.clear()
                warnings.warn(f"train_gated_many: the compiled step failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); the runs go on eagerly", RuntimeWarning,
                              stacklevel=3)
        if batched:
            grads, (on, base) = _stack_gradients(first, params, xb, yb, u, base, l1, masks)
            sgd(params, grads, None, factor)
            return on, base
        p = {k: v[0] for k, v in params.items()}
        grads, (on, b) = _step_gradient(first, p, xb[0], yb[0], u[0], (base[0][0], base[1][0]), l1[0], masks[0])
        sgd(p, grads, 0, factor)
        return on[None], (b[0][None], b[1][None])

    def keep(epoch: int) -> None:
        if epoch in checkpoints:
            for r in range(count):
                if alive[r]:
                    snapshots[r][epoch] = {k: v[r].detach().to("cpu", copy=True) for k, v in params.items()}

    keep(0)
    clock = time.perf_counter()
    start_epoch = 1
    batches = len(y) // first.minibatch
    try:
        if saver is not None and (state := saver.load(dev)) is not None:
            params, baseline, l1_weight = state["params"], tuple(state["baseline"]), state["l1_weight"]
            alive, history, on_history = state["alive"], state["history"], state["on_history"]
            on_fraction, snapshots = state["on_fraction"], state["snapshots"]
            best = [(b[0], b[1], b[2]) for b in state["best"]]
            for g, t in zip(order_gens + noise_gens, state["generators"]):
                g.set_state(t.cpu() if g.device.type == "cpu" else t)
            start_epoch, clock = state["epoch"] + 1, clock - state["seconds"]
        for epoch in range(start_epoch, first.epochs + 1):
            if not any(alive):
                break
            orders = torch.stack([torch.randperm(len(y), generator=g) for g in order_gens]).to(dev)
            ons = []     # each step's on-fractions, kept on the device: no step waits for the device to finish
            factors = [anneal_factor(first, (epoch - 1) * batches + index, batches) for index in range(batches)]
            factor_tensors = torch.tensor(factors, dtype=torch.float64).to(dev, dtype) if compiled else None
            # past torch's recompile limit a compiled step raises (said, then eager) instead of running eagerly
            # unsaid; set for the epoch's steps, not each step (entering the setting costs about 10 us)
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True) if compiled else nullcontext():
                for index, start in enumerate(range(0, batches * first.minibatch, first.minibatch)):
                    rows = orders[:, start:start + first.minibatch]
                    u = torch.stack([torch.rand(shape, generator=g, device=dev, dtype=dtype) for g in noise_gens])
                    on, baseline = advance(x[rows], y[rows], u, baseline, l1_weight, factors[index],
                                           None if factor_tensors is None else factor_tensors[index])
                    ons.append(on)
                    if first.gate in RECTIFIERS:
                        l1_weight = l1_weight * torch.where(on.to(torch.float64) > first.sparsity, 1.01, 1 / 1.01)
            on_fraction = torch.stack(ons).T.tolist() if ons else [[] for _ in range(count)]
            finite = torch.stack([torch.isfinite(v.reshape(count, -1)).all(1) for v in params.values()]).all(0).tolist()
            alive = [a and f for a, f in zip(alive, finite)]    # a run that diverged keeps its best evaluation so far
            for r in range(count):
                if alive[r]:
                    on_history[r].append(sum(on_fraction[r]) / max(len(on_fraction[r]), 1))
            keep(epoch)
            if progress is not None:
                progress(f"epoch {epoch}/{first.epochs}: {time.perf_counter() - clock:.1f} s")
            if epoch % first.eval_every == 0 or epoch == first.epochs:
                for r in range(count):
                    if not alive[r]:
                        continue
                    run_params = {k: v[r] for k, v in params.items()}
                    a_valid = _scores(first, run_params, xv, masks[r])
                    valid_error, _, _ = _error(first, run_params, a_valid, xv, yv, _threshold(first, a_valid))
                    history[r].append((epoch, valid_error))
                    if valid_error < best[r][0]:
                        best[r] = (valid_error, {k: v.detach().clone() for k, v in run_params.items()}, epoch)
            if saver is not None:
                saver.save({"epoch": epoch, "seconds": time.perf_counter() - clock, "params": params,
                            "baseline": list(baseline), "l1_weight": l1_weight, "alive": alive,
                            "history": history, "on_history": on_history, "on_fraction": on_fraction,
                            "snapshots": snapshots, "best": [list(b) for b in best],
                            "generators": [g.get_state() for g in order_gens + noise_gens]})
        results = _results(first, settings, seeds, best, history, on_history, on_fraction, snapshots, masks,
                           (x, y), (xv, yv), (xt, yt))
    finally:
        if saver is not None:
            saver.release()
    if saver is not None:
        saver.remove_own()
    return results


def anneal_factor(settings: Settings, step: int, batches: int) -> float:
    """The rates' factor at minibatch step ``step`` (0-based, ``batches`` steps an epoch): 1 until the last
    ``settings.anneal_epochs`` epochs, then falling linearly, :math:`(T - t) / A` for step :math:`t` of
    :math:`T` with :math:`A` steps annealed, so that the first annealed step is taken at the full rate and the last
    at :math:`1/A` of it (a linear decay to zero). Constant rates leave validation-selected errors dependent on the
    budget: the validation error fluctuates from epoch to epoch, and more epochs give the selection more low points
    to pick from (the MNIST study's constant-rate run, ``analyses/fig_mnist.py``)."""
    annealed = settings.anneal_epochs * batches
    remaining = settings.epochs * batches - step
    return 1.0 if remaining > annealed else remaining / annealed


def _results(first, settings, seeds, best, history, on_history, on_fraction, snapshots, masks, train, valid, test
             ) -> list[Result]:
    """Each run's result: its validation-selected model scored on the test set (and the training set)."""
    (x, y), (xv, _), (xt, yt) = train, valid, test
    results = []
    for r in range(len(seeds)):
        if best[r][1] is None:
            results.append(Result(first.gate, seeds[r], settings[r], math.nan, math.nan, math.nan, math.nan, 0,
                                  tuple(history[r]), on_history=tuple(on_history[r]), snapshots=snapshots[r]))
            continue
        kept = best[r][1]
        threshold = _threshold(first, _scores(first, kept, xv, masks[r]))
        test_error, sparsity, _ = _error(first, kept, _scores(first, kept, xt, masks[r]), xt, yt, threshold)
        _, _, criterion = _error(first, kept, _scores(first, kept, x, masks[r]), x, y, threshold)
        results.append(Result(first.gate, seeds[r], settings[r], best[r][0], test_error, sparsity,
                              sum(on_fraction[r]) / max(len(on_fraction[r]), 1), best[r][2], tuple(history[r]),
                              train_criterion=criterion, on_history=tuple(on_history[r]), snapshots=snapshots[r]))
    return results


def grid(gate: str, base: Settings | None = None) -> list[Settings]:
    """The settings a gate is selected from: every rate of :data:`RATES`, and for the score-function gates
    each of :data:`GATER_RATE_SCALES` too; the rest as in ``base``."""
    base = base or Settings(gate)
    scales = GATER_RATE_SCALES if gate in SCORE else (1.0,)
    return [replace(base, gate=gate, learning_rate=r, gater_rate_scale=s) for r in RATES for s in scales]


def run_study(data: Split, gates=GATES, *, seeds: int = 10, base: Settings | None = None, select: bool = True,
              device="auto", progress=None) -> list[Result]:
    """The protocol: per gate, the setting of :func:`grid` with the lowest mean validation error over
    :data:`SELECTION_SEEDS` (or ``base`` itself when ``select`` is False), then ``seeds`` runs at it
    (seeds 0 to ``seeds - 1``, the same initialisation and data order for every gate), each scored on the
    test set at its validation-selected epoch."""
    seeds = positive_int("seeds", seeds)
    unknown = [g for g in gates if g not in ALL_GATES]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown} for the gated network; choose from {', '.join(ALL_GATES)}")
    results = []
    for gate in gates:
        candidates = grid(gate, base) if select else [replace(base or Settings(gate), gate=gate)]
        chosen = candidates[0]
        if len(candidates) > 1:   # every candidate and selection seed trained as one stack
            runs = train_gated_many(data, [c for c in candidates for _ in SELECTION_SEEDS],
                                    [s for _ in candidates for s in SELECTION_SEEDS], device=device,
                                    progress=None if progress is None else
                                    (lambda line, g=gate: progress(f"{g}: selection: {line}")))
            scores = []
            for i, settings in enumerate(candidates):
                errors = [r.valid_error for r in runs[i * len(SELECTION_SEEDS):(i + 1) * len(SELECTION_SEEDS)]]
                scores.append(math.inf if any(math.isnan(e) for e in errors) else sum(errors) / len(errors))
                if progress is not None:
                    progress(f"{gate}: rate {settings.learning_rate:g} x {settings.gater_rate_scale:g}: "
                             f"validation error {scores[-1]:.4f}")
            chosen = candidates[min(range(len(candidates)), key=scores.__getitem__)]
        each = None if progress is None else (lambda line, g=gate: progress(f"{g}: {line}"))
        for result in train_gated_many(data, chosen, list(range(seeds)), device=device, progress=each):
            results.append(result)
            if progress is not None:
                progress(f"{gate}: seed {result.seed}: test error {result.test_error:.4f}")
    return results


def compare_with(results: list[Result], reference: str = "st") -> dict[str, dict]:
    """Per gate: test error mean and standard error over seeds, the mean paired difference from ``reference``
    (same seeds) with its standard error, and the two-sided Wilcoxon signed-rank p-value of those differences."""
    from scipy import stats as sps

    by_gate: dict[str, dict[int, float]] = {}
    for r in results:
        by_gate.setdefault(r.gate, {})[r.seed] = r.test_error
    out = {}
    for gate, errors in by_gate.items():
        values = torch.tensor(list(errors.values()), dtype=torch.float64)
        row = {"mean": float(values.mean()), "stderr": float(values.std() / math.sqrt(len(values))) if len(values) > 1
               else math.nan, "seeds": len(values)}
        if reference in by_gate and gate != reference:
            common = sorted(set(errors) & set(by_gate[reference]))
            diff = torch.tensor([errors[s] - by_gate[reference][s] for s in common], dtype=torch.float64)
            row["difference"] = float(diff.mean()) if len(diff) else math.nan
            row["difference_stderr"] = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
            nonzero = diff[diff != 0]
            row["wilcoxon_p"] = float(sps.wilcoxon(nonzero.numpy()).pvalue) if len(nonzero) >= 2 else math.nan
        out[gate] = row
    return out


# ---- the gater's gradient, as each estimator sees it -------------------------------------------------------
GATER = ("Wg1", "bg1", "Wg2", "bg2")
# gates whose training value is (or relaxes) a Bernoulli(sigmoid(a)) gate, so that they estimate the same gradient
GRADIENT_GATES = ("st", "st_sigmoid", "reinmax", "st_gumbel", "gumbel", "reinforce", "reinforce_loo", "disarm")


def _per_example_loss(readout: Mapping[str, Tensor], expert: Tensor, y: Tensor):
    """Per-example cross-entropy of binary gates ``b [..., n, gates]``, the expert values ``expert [n, gates]``
    and the readout ``Wo, bo`` held fixed: the loss the score-function gates' estimators see."""
    n, classes = len(y), readout["Wo"].shape[1]

    def per_example(b: Tensor) -> Tensor:
        logits = _readout(readout, b, expert).reshape(-1, classes)
        return F.cross_entropy(logits, y.repeat(logits.shape[0] // n), reduction="none").reshape(b.shape[:-1])

    return per_example


def _held_fixed(params: Mapping[str, Tensor], x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """The readout's parameters and the expert's values of ``x``, detached."""
    rest = {k: params[k].detach() for k in ("We", "be", "Wo", "bo")}
    return rest, x @ rest["We"] + rest["be"]


def gater_gradient(gate: str, params: Mapping[str, Tensor], x: Tensor, y: Tensor, *, temperature: float = 1.0,
                   baseline: Tensor | float = 0.0):
    r"""``(loss, noise_shape)`` for :func:`gradstats.per_draw_gradients`: one draw of ``gate``'s estimate of the
    gradient, with respect to the gater's parameters (:data:`GATER`), of

    .. math:: \nabla_\theta\, E_{b \sim \mathrm{Bernoulli}(\sigma(a_\theta(x)))}
              \Big[\tfrac1n \sum_{e} \mathrm{CE}\big(W_o^\top (b_e \odot H_e) + b_o,\; y_e\big)\Big],

    the minibatch ``x, y``'s cross-entropy with binary gates, the expert ``H = x W_e + b_e`` and the readout
    held at ``params`` (their gradients do not depend on the estimator; the sparsity penalty, a function of
    :math:`\sigma(a)` alone, is left out). ``loss(gater_params, u)`` takes a dict of the four gater tensors
    and uniforms of ``noise_shape``. ``gate`` is one of :data:`GRADIENT_GATES`: the pathwise ones through
    the drop-ins of :mod:`gradstats.functional` (``gumbel`` is the relaxed surrogate of the same gates,
    biased by construction), ``reinforce`` with the fixed per-unit ``baseline`` (unbiased; see
    :func:`reinforce_baseline`), ``reinforce_loo`` with two samples, ``disarm`` (unbiased)."""
    if gate not in GRADIENT_GATES:
        raise ValueError(f"gate must be one of {', '.join(GRADIENT_GATES)} (gates of Bernoulli units), got {gate!r}")
    settings = Settings(gate, temperature=temperature)
    rest, expert = _held_fixed(params, x)
    per_example = _per_example_loss(rest, expert, y)
    n, gates = len(y), params["Wg2"].shape[1]
    shape = (2, n, gates) if gate == "reinforce_loo" else (n, gates)

    def loss(gater: Mapping[str, Tensor], u: Tensor) -> Tensor:
        a = _gater(gater, x)
        if gate == "reinforce":
            b, surrogate = gf.reinforce(a, u=u)
            return surrogate(per_example(b), baseline) / n
        if gate == "reinforce_loo":
            return gf.reinforce_loo(a, per_example, k=2, u=u)[1] / n
        if gate == "disarm":
            return gf.disarm(a, per_example, u=u)[1] / n
        return F.cross_entropy(_readout(rest, gate_values(settings, a, u), expert), y)

    return loss, shape


def reinforce_baseline(params: Mapping[str, Tensor], x: Tensor, y: Tensor, draws: int = 1024, seed: int = 0,
                       chunk: int = 256) -> Tensor:
    r"""The per-unit baseline the paper's running averages track (eq. 10), from ``draws`` samples of the gates:
    :math:`\bar L_i = \sum (b_i - p_i)^2 L / \sum (b_i - p_i)^2` over draws and the minibatch's examples
    (``L`` the example's cross-entropy, as in :func:`gater_gradient`). Fixed before the draws it serves, it
    keeps REINFORCE unbiased. Returns ``[gates]``."""
    draws, chunk = positive_int("draws", draws), positive_int("chunk", chunk)
    per_example = _per_example_loss(*_held_fixed(params, x), y)
    generator = torch.Generator().manual_seed(seed_value("seed", seed))
    with torch.no_grad():
        p = torch.sigmoid(_gater(params, x))
        num = torch.zeros(p.shape[1], dtype=torch.float64)
        den = torch.zeros(p.shape[1], dtype=torch.float64)
        for lo in range(0, draws, chunk):
            u = torch.rand((min(chunk, draws - lo), *p.shape), generator=generator, dtype=torch.float64).to(p)
            b = (u < p).to(p)
            sq = (b - p).square().to(torch.float64)
            num += (sq * per_example(b).to(torch.float64).unsqueeze(-1)).sum((0, 1))
            den += sq.sum((0, 1))
    return torch.where(den > 0, num / den.clamp_min(1e-300), 0.0).to(p)
