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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from torch.nn import functional as F

from . import functional as gf
from .datasets import Split
from .estimators.score_function import RunningBaseline
from .noise import resolve_device
from .numerics import positive_finite, positive_int, seed_value

__all__ = ["GATES", "PAPER_FOUR", "PUBLISHED_TEST_ERROR", "RATES", "GATER_RATE_SCALES", "Architecture", "Settings",
           "Result", "architecture_for", "initial_parameters", "gate_values", "train_gated", "test_gates", "grid",
           "run_study", "compare_with", "GATER", "GRADIENT_GATES", "gater_gradient", "reinforce_baseline"]

PATHWISE = ("st", "st_sigmoid", "sts", "noisy_rectifier", "gumbel", "st_gumbel", "reinmax")
SCORE = ("reinforce", "reinforce_loo", "disarm")
BASELINES = ("rectifier", "sigmoid_noise")
GATES = PATHWISE + SCORE + BASELINES
PAPER_FOUR = ("noisy_rectifier", "sts", "st", "reinforce")
RECTIFIERS = ("noisy_rectifier", "rectifier")
# The paper's table (Fig. 2, right): test error in percent, one run each, on MNIST.
RATES = (0.1, 0.3, 1.0, 3.0)            # the learning-rate grid every gate is selected from
GATER_RATE_SCALES = (1.0, 0.01)         # score-function gates also try the paper's smaller gater rate
SELECTION_SEEDS = (1000, 1001)          # validation runs per setting (the reported seeds are 0, 1, ...)
PUBLISHED_TEST_ERROR = {"noisy_rectifier": 1.87, "st": 1.39, "sts": 1.96, "reinforce": 1.89, "rectifier": 1.60,
                        "sigmoid_noise": 1.87}


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

    def __post_init__(self):
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        for name in ("learning_rate", "gater_rate_scale", "penalty", "l1_start", "temperature", "noise_scale",
                     "max_norm"):
            positive_finite(name, getattr(self, name))
        for name in ("epochs", "minibatch", "eval_every"):
            positive_int(name, getattr(self, name))
        if not (isinstance(self.sparsity, float) and 0 < self.sparsity < 1):
            raise ValueError(f"sparsity must be a fraction in (0, 1), got {self.sparsity!r}")
        if not (0 <= self.decay < 1):
            raise ValueError(f"decay must be in [0, 1), got {self.decay!r}")


@dataclass(frozen=True)
class Result:
    """One run: errors are fractions; ``sparsity`` is the fraction of gates on at test time (thresholded),
    ``train_sparsity`` the fraction on (nonzero) during the last training epoch."""

    gate: str
    seed: int
    settings: Settings
    valid_error: float
    test_error: float
    sparsity: float
    train_sparsity: float
    best_epoch: int
    history: tuple[tuple[int, float], ...] = field(default=())   # (epoch, validation error)
    snapshots: Mapping[int, Mapping[str, Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def row(self) -> dict:
        return {"estimator": self.gate, "seed": self.seed, "learning_rate": self.settings.learning_rate,
                "gater_rate_scale": self.settings.gater_rate_scale, "valid_error": self.valid_error,
                "test_error": self.test_error, "sparsity": self.sparsity, "train_sparsity": self.train_sparsity,
                "best_epoch": self.best_epoch}


def initial_parameters(arch: Architecture, seed: int, device=None, dtype=torch.float32,
                       gate_bias: float = math.log(0.1 / 0.9)) -> dict[str, Tensor]:
    """Gater ``Wg1, bg1, Wg2, bg2``, expert ``We, be``, readout ``Wo, bo``; weights uniform in
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
    """A pathwise or deterministic gate's training value (its backward pass is the estimator's)."""
    gate = settings.gate
    if gate == "st":
        return gf.straight_through(a, u=u)
    if gate == "st_sigmoid":
        return gf.straight_through(a, u=u, variant="sigmoid")
    if gate == "sts":
        return gf.sts(a, u=u)
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
    raise ValueError(f"gate {gate!r} has no pathwise value (a score-function gate)")


def _on_probability(settings: Settings, a: Tensor) -> Tensor:
    """Each gate's probability of being on (the KL penalty's argument)."""
    p = torch.sigmoid(a)
    return p.sqrt() if settings.gate == "sts" else p


def _kl_penalty(q_mean: Tensor, rho: float) -> Tensor:
    r"""Mean over units of :math:`\mathrm{KL}(\rho \,\|\, \bar q_i)` between Bernoulli laws."""
    q = q_mean.clamp(1e-6, 1 - 1e-6)
    return (rho * torch.log(rho / q) + (1 - rho) * torch.log((1 - rho) / (1 - q))).mean()


def _step_loss(settings: Settings, params: dict[str, Tensor], x: Tensor, y: Tensor, generator: torch.Generator,
               baseline: RunningBaseline | None, l1_weight: float) -> tuple[Tensor, Tensor, RunningBaseline | None]:
    """The minibatch's training objective (cross-entropy plus the sparsity penalty, with each estimator's
    surrogate for the gater), the gates' on-fraction, and the updated running baseline."""
    a = _gater(params, x)
    expert = x @ params["We"] + params["be"]
    n = len(y)
    copies = (2,) if settings.gate == "reinforce_loo" else ()     # leave-one-out draws two samples
    u = torch.rand((*copies, *a.shape), generator=generator, device=a.device, dtype=a.dtype)
    if settings.gate in SCORE:
        per_example = _per_example_loss({k: params[k].detach() for k in ("Wo", "bo")}, expert.detach(), y)
        if settings.gate == "reinforce":
            b, surrogate = gf.reinforce(a, u=u)
            losses = per_example(b)
            gater_term = surrogate(losses, baseline.value().to(a))
            baseline = baseline.update(b, torch.sigmoid(a), losses)
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
        on = gate.mean() if settings.gate in ("gumbel", "sigmoid_noise") else (gate != 0).to(a.dtype).mean()
        objective = F.cross_entropy(_readout(params, gate, expert), y)
        if settings.gate in RECTIFIERS:
            objective = objective + l1_weight * gate.abs().mean()
    if settings.gate not in RECTIFIERS:
        objective = objective + settings.penalty * _kl_penalty(_on_probability(settings, a).mean(0), settings.sparsity)
    return objective, on.detach(), baseline


def _max_norm(params: dict[str, Tensor], bound: float) -> None:
    """Every unit's incoming weight vector (a column of ``W[in, out]``) scaled down to norm ``bound``."""
    with torch.no_grad():
        for name in ("Wg1", "Wg2", "We", "Wo"):
            w = params[name]
            norms = w.norm(dim=0, keepdim=True)
            w.mul_(torch.where(norms > bound, bound / norms.clamp_min(1e-30), 1.0))


def _scores(params: Mapping[str, Tensor], x: Tensor, chunk: int = 4096) -> Tensor:
    with torch.no_grad():
        return torch.cat([_gater(params, x[i:i + chunk]) for i in range(0, len(x), chunk)])


def test_gates(settings: Settings, a: Tensor, threshold: float) -> Tensor:
    """Deterministic gates at test time: on where ``a > threshold``, with the gate type's on value."""
    on = (a > threshold).to(a.dtype)
    if settings.gate == "sts":
        return on * torch.sigmoid(a).sqrt()
    if settings.gate in RECTIFIERS:
        return on * F.relu(a)
    if settings.gate == "sigmoid_noise":
        return on * torch.sigmoid(a)
    return on


def _error(settings: Settings, params: Mapping[str, Tensor], a: Tensor, x: Tensor, y: Tensor, threshold: float
           ) -> tuple[float, float]:
    """Classification error and the fraction of gates on, with thresholded deterministic gates (``a``: the gate
    pre-activations of ``x``, :func:`_scores`)."""
    with torch.no_grad():
        gates = test_gates(settings, a, threshold)
        logits = _readout(params, gates, x @ params["We"] + params["be"])
        return float((logits.argmax(1) != y).to(torch.float64).mean()), float((gates != 0).to(torch.float64).mean())


def _threshold(settings: Settings, a_valid: Tensor) -> float:
    """The ``1 - sparsity`` quantile of the gate pre-activations over the validation set (at least 0 for the
    rectifiers, whose gates are off at or below 0 whatever the threshold)."""
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

    ``checkpoints``: epochs after which the parameters are kept in ``Result.snapshots`` (CPU copies;
    0 is the initialisation), for :func:`gater_gradient`."""
    seed = seed_value("seed", seed)
    checkpoints = tuple(checkpoints)
    if not all(isinstance(e, int) and 0 <= e <= settings.epochs for e in checkpoints):
        raise ValueError(f"checkpoints must be epochs in 0..{settings.epochs} (settings.epochs), got {checkpoints}")
    dev = resolve_device(device)
    arch = architecture_for(data.num_inputs, data.num_classes)
    params = initial_parameters(arch, seed, dev, dtype, 0.0 if settings.gate in RECTIFIERS else math.log(0.1 / 0.9))
    for v in params.values():
        v.requires_grad_(True)
    gater = [params[k] for k in ("Wg1", "bg1", "Wg2", "bg2")]
    rest = [params[k] for k in ("We", "be", "Wo", "bo")]
    optimiser = torch.optim.SGD([{"params": rest, "lr": settings.learning_rate},
                                 {"params": gater, "lr": settings.learning_rate * settings.gater_rate_scale}])
    x, y = (t.to(dev) for t in data.train)
    x = x.to(dtype)
    xv, yv = data.validation[0].to(dev, dtype), data.validation[1].to(dev)
    xt, yt = data.test[0].to(dev, dtype), data.test[1].to(dev)
    order_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator(device=dev).manual_seed(seed + 2)
    baseline = RunningBaseline.zeros(arch.gates, settings.decay) if settings.gate == "reinforce" else None
    l1_weight = settings.l1_start
    best = (math.inf, None, 0)
    history = []
    on_fraction = []
    snapshots = {}

    def keep(epoch: int) -> None:
        if epoch in checkpoints:
            snapshots[epoch] = {k: v.detach().to("cpu", copy=True) for k, v in params.items()}

    keep(0)
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(len(y), generator=order_gen).to(dev)
        on_fraction = []
        for start in range(0, len(y) - settings.minibatch + 1, settings.minibatch):
            rows = order[start:start + settings.minibatch]
            objective, on, baseline = _step_loss(settings, params, x[rows], y[rows], noise_gen, baseline, l1_weight)
            optimiser.zero_grad()
            objective.backward()
            optimiser.step()
            _max_norm(params, settings.max_norm)
            on_fraction.append(float(on))
            if settings.gate in RECTIFIERS:
                l1_weight *= 1.01 if on_fraction[-1] > settings.sparsity else 1 / 1.01
        if not all(bool(torch.isfinite(v).all()) for v in params.values()):
            break   # diverged: keep the best evaluation so far
        keep(epoch)
        if epoch % settings.eval_every == 0 or epoch == settings.epochs:
            a_valid = _scores(params, xv)
            valid_error, _ = _error(settings, params, a_valid, xv, yv, _threshold(settings, a_valid))
            history.append((epoch, valid_error))
            if valid_error < best[0]:
                best = (valid_error, {k: v.detach().clone() for k, v in params.items()}, epoch)
    if best[1] is None:
        return Result(settings.gate, seed, settings, math.nan, math.nan, math.nan, math.nan, 0, tuple(history),
                      snapshots)
    kept = best[1]
    threshold = _threshold(settings, _scores(kept, xv))
    test_error, sparsity = _error(settings, kept, _scores(kept, xt), xt, yt, threshold)
    return Result(settings.gate, seed, settings, best[0], test_error, sparsity,
                  sum(on_fraction) / max(len(on_fraction), 1), best[2], tuple(history), snapshots)


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
    (seeds ``0 .. seeds - 1``, the same initialisation and data order for every gate), each scored on the
    test set at its validation-selected epoch."""
    seeds = positive_int("seeds", seeds)
    unknown = [g for g in gates if g not in GATES]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown} for the gated network; choose from {', '.join(GATES)}")
    results = []
    for gate in gates:
        candidates = grid(gate, base) if select else [replace(base or Settings(gate), gate=gate)]
        chosen = candidates[0]
        if len(candidates) > 1:
            scores = []
            for settings in candidates:
                runs = [train_gated(data, settings, s, device=device) for s in SELECTION_SEEDS]
                errors = [r.valid_error for r in runs]
                scores.append(math.inf if any(math.isnan(e) for e in errors) else sum(errors) / len(errors))
                if progress is not None:
                    progress(f"{gate}: rate {settings.learning_rate:g} x {settings.gater_rate_scale:g}: "
                             f"validation error {scores[-1]:.4f}")
            chosen = candidates[min(range(len(candidates)), key=scores.__getitem__)]
        for seed in range(seeds):
            results.append(train_gated(data, chosen, seed, device=device))
            if progress is not None:
                progress(f"{gate}: seed {seed}: test error {results[-1].test_error:.4f}")
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
