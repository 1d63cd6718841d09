r"""Peer libraries' estimators audited against gradstats' exact values: gradstats as referee.

A peer estimator runs in its own code on problems of independent Bernoulli units that gradstats
solves exactly (:func:`gradstats.problems.toy`, :func:`gradstats.problems.independent`). Its
per-draw gradients with respect to the logits are batched where the peer allows it: each draw gets
its own row of logits inside an independent plate, so one backward pass yields a chunk of draws.
A stateful peer estimator (a running baseline) is driven as its users drive it, one draw per call.

Each is compared with what it claims to be (:attr:`PeerEstimator.claims_to_be`): the exact gradient
for an estimator sold as unbiased, else a gradstats estimator's exact moments (enumeration) or Monte
Carlo moments (continuous noise). Per coordinate, the mean (and, against exact moments, the
variance) is tested by a z-score; the tests of one (estimator, problem) are Holm-corrected at
:data:`ALPHA` split over the :data:`LOOKS` (after 10%, 30% and all of the planned draws; a
disagreement stops the draws early). Against exact moments the z-scores use their exact standard
errors (under the claim, the peer's draws have that law). The number of draws is chosen from a
pilot of the peer's own draws so that a bias of :data:`RELATIVE_BIAS` of the target's norm in any
coordinate is detected with power :data:`POWER`, within ``max_draws`` (which caps the pilot too).
Verdicts: ``disagrees`` (a test rejects on a coordinate whose skewness and kurtosis allow a
normal z at that many draws: :func:`gradstats.stats.required_draws`, with the target's exact
moments where it has them; and the whole audit, rerun at a fresh seed, rejects too), ``agrees``
(none does, at that power) or ``inconclusive``: none does below that power, or the only rejections
rest on heavy tails, or a standard error is not finite, or fewer than :data:`MIN_DRAWS` draws were
allowed; the row's notes say which, and how many draws would do. The rerun (:data:`CONFIRM_SEED`)
makes a correct peer's false accusation an event of about :data:`ALPHA` squared a row, not
:data:`ALPHA`, which a table of tens of rows would otherwise meet about once in three runs; a bias of
:data:`RELATIVE_BIAS` is still found with probability about :data:`POWER` squared.

Peers, pinned (``pip install gradstats[audit]``): storchastic 0.3.7 (:func:`storchastic_estimators`) and
pyro-ppl 1.9.2 (:func:`pyro_estimators`, its ``TraceGraph_ELBO``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
from scipy import stats as sps
from torch import Tensor

from .accumulators import Moments
from .enumeration import binary_cube
from .estimators import get
from .exact import exact_gradient
from .gradient_stats import GradientStats
from .losses import multilinear
from .moments import moments
from .numerics import positive_int
from .problems import Problem, categorical, independent, sbn, toy
from .stats import MIN_SAMPLES, required_draws

__all__ = ["PINNED", "STATUSES", "ALPHA", "POWER", "RELATIVE_BIAS", "CONFIRM_SEED", "PeerEstimator", "AuditRow", "PEERS",
           "storchastic_estimators", "pyro_estimators", "audit_problems", "peer_gradients", "peer_loop_gradients",
           "audit_one", "audit", "closed_form_gradient", "moving_average_simulation", "unordered_set_mean",
           "storchastic_conditional_sample_sides", "storchastic_wrong_side_share",
           "corrected_storchastic_conditional_sample",
           "storchastic_categorical_estimators", "pyro_categorical_estimators", "CATEGORICAL_PEERS", "UNITS"]

PINNED = {"storchastic": "0.3.7", "pyro": "1.9.2"}
STATUSES = ("agrees", "disagrees", "inconclusive")
ALPHA = 0.01            # familywise error of the tests of one (estimator, problem), Holm
POWER = 0.99            # to detect a bias of RELATIVE_BIAS
RELATIVE_BIAS = 0.01
PILOT_DRAWS = 4096
LOOKS = (0.1, 0.3, 1.0)  # fractions of the planned draws at which the tests run (Bonferroni over the looks)
CONFIRM_SEED = 1_000_003  # a disagreement at seed s is reported only if the audit at seed s + CONFIRM_SEED disagrees
# calls discarded before a stateful estimator's draws are kept, so that its variance is the steady state's
# (0.95^100 and 0.9^50 are below 0.01); its mean does not depend on them
BURN_IN = 100
PYRO_BURN_IN = 50
PYRO_CALLS = 50         # calls per chunk of pyro's stateful estimator: each advances every chain (row) once


@dataclass(frozen=True)
class PeerEstimator:
    """One configuration of a peer library's estimator.

    ``claims_to_be`` is ``"exact"`` (it is sold as unbiased) or a gradstats estimator name, with
    gradstats ``options``; ``build(shape)`` makes the peer's object for units of that shape (``N`` binary
    units; ``(N, K)`` for ``N`` categorical units of ``K`` classes); ``sequential`` marks a stateful estimator
    driven one draw per call; ``dtype`` is what the peer computes in; ``units`` is ``"binary"`` or
    ``"categorical"``, the problems it is audited on."""

    peer: str
    name: str
    claims_to_be: str
    build: Callable[[int | tuple[int, int]], object] = field(repr=False, compare=False)
    options: dict = field(default_factory=dict)
    sequential: bool = False
    dtype: torch.dtype = torch.float64
    units: str = "binary"
    notes: str = ""
    max_draws: int | None = None     # a cap the peer needs (see notes)
    chunk_size: int = 50_000         # draws per backward pass (smaller where the peer's memory needs it)
    patch: Callable[[], contextlib.AbstractContextManager] | None = field(default=None, repr=False, compare=False)

    def draw_limit(self, quick: bool) -> int:
        """The most draws one (estimator, problem) gets: 20 million (100,000 quick); 10,000 (1,500 quick) when
        driven one call per draw; the peer's own cap where it has one."""
        slow = self.sequential and self.peer == "storchastic"        # a loop of single calls
        limit = (1_500 if slow else 100_000) if quick else (10_000 if slow else 20_000_000)
        return limit if self.max_draws is None else min(limit, self.max_draws)


@dataclass(frozen=True)
class AuditRow:
    """One (peer estimator, problem) verdict; ``row()`` is what ``gradstats audit --json`` prints."""

    peer: str
    estimator: str
    claims_to_be: str
    status: str
    max_abs_z: float
    problem: str
    draws: int
    draws_for_power: int
    relative_discrepancy: float
    relative_discrepancy_stderr: float
    notes: str
    units: str = "binary"

    def row(self) -> dict:
        return dict(self.__dict__)


@functools.cache   # the version is checked (and a mismatch said) once, not at every chunk
def _require_storchastic():
    try:
        import storch
    except ImportError as err:
        raise ImportError("auditing storchastic needs it installed: pip install 'gradstats[audit]' "
                          f"(storchastic=={PINNED['storchastic']})") from err
    if getattr(storch, "__version__", PINNED["storchastic"]) != PINNED["storchastic"]:
        warnings.warn(f"the audit is pinned to storchastic {PINNED['storchastic']}, found {storch.__version__}",
                      stacklevel=2)
    return storch


def storchastic_conditional_sample_sides(p: float = 0.5, draws: int = 100_000, seed: int = 0) -> dict[str, float]:
    r"""How often storchastic 0.3.7's Bernoulli conditional sample (``storch.conditional_gumbel_rsample``, used by its
    REBAR and RELAX for :math:`\tilde z \sim p(z \mid b)`) lands on the wrong side of 1/2: the share of relaxed
    values :math:`\le 1/2` given ``b = 1`` and :math:`\ge 1/2` given ``b = 0``, at probability ``p``. Given ``b``
    the relaxed value :math:`\sigma(\tilde z/\tau)` is above 1/2 exactly when ``b = 1``, so both shares are 0 for
    a correct sampler.

    storchastic writes :math:`\tilde z = \log p + \log(1 + p) + \log v' + \log(1 + v')` (``log1p`` of ``p`` and
    of :math:`v'`) where the logistic noise given ``b`` is
    :math:`\operatorname{logit} p + \operatorname{logit} v' = \log p - \log(1 - p) + \log v' - \log(1 - v')`;
    its :math:`v'` (uniform on :math:`(1 - p, 1)` given ``b = 1``, on :math:`(0, 1 - p)` given ``b = 0``) is right.
    """
    _require_storchastic()
    from storch.method import relax as storch_relax

    torch.manual_seed(seed)
    hard = torch.tensor([1.0, 0.0], dtype=torch.float64).repeat(draws)
    sample = storch_relax.conditional_gumbel_rsample(hard, torch.full_like(hard, p), True, torch.tensor(1.0))
    return {"given_b_1": float((sample[hard == 1] <= 0.5).double().mean()),
            "given_b_0": float((sample[hard == 0] >= 0.5).double().mean())}


def storchastic_wrong_side_share(p: float) -> float:
    r"""The share :func:`storchastic_conditional_sample_sides` estimates given ``b = 1``, exactly: storchastic's
    :math:`\tilde z = \log p + \log(1 + p) + \log v' + \log(1 + v')`, :math:`v'` uniform on :math:`(1 - p, 1)`, is at
    most 0 where :math:`v'(1 + v') \le 1/(p(1 + p))`, i.e. :math:`v' \le r = (\sqrt{1 + 4/(p(1 + p))} - 1)/2`, so
    the share is :math:`(r - (1 - p))/p` clipped to ``[0, 1]`` (0.5166 at ``p = 1/2``; 1 for ``p`` up to about
    0.36)."""
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p!r}")
    r = (math.sqrt(1 + 4 / (p * (1 + p))) - 1) / 2
    return min(max((r - (1 - p)) / p, 0.0), 1.0)


def _conditional_sample(hard_sample: Tensor, probs: Tensor, bernoulli: bool, temperature, original):
    r"""Bernoulli: :math:`\sigma((\operatorname{logit} p + \operatorname{logit} v')/\tau)` with storchastic's own
    :math:`v'`; categorical units go to storchastic's ``original``."""
    if not bernoulli:
        return original(hard_sample, probs, bernoulli, temperature)
    from torch.distributions.utils import clamp_probs

    probs = clamp_probs(probs.expand_as(hard_sample))
    v = clamp_probs(torch.rand(hard_sample.shape, dtype=probs.dtype, device=probs.device))
    shifted = torch.where(hard_sample == 1, v * probs + (1 - probs), v * (1 - probs))
    noise = probs.log() - torch.log1p(-probs) + shifted.log() - torch.log1p(-shifted)
    return (noise / temperature).sigmoid()


@contextlib.contextmanager
def corrected_storchastic_conditional_sample():
    """While active, storchastic's REBAR and RELAX draw the Bernoulli conditional sample with the logistic noise
    given ``b`` (:func:`storchastic_conditional_sample_sides` says what is replaced); nothing else of theirs
    changes. Restored on exit."""
    storch = _require_storchastic()
    from storch.method import relax as storch_relax

    original = storch_relax.conditional_gumbel_rsample
    corrected = functools.partial(_conditional_sample, original=original)
    storch_relax.conditional_gumbel_rsample = storch.conditional_gumbel_rsample = corrected
    try:
        yield
    finally:
        storch_relax.conditional_gumbel_rsample = storch.conditional_gumbel_rsample = original


def storchastic_estimators() -> list[PeerEstimator]:
    """Every storchastic 0.3.7 estimator that accepts Bernoulli units (``storch.method``), with what it claims.

    Quirks needed to run them, documented here: ``GumbelSoftmax`` anneals its temperature at every
    call by default (``annealing_rate=1e-5``), so the audit pins it (``annealing_rate=0``, temperature 1);
    ``RELAX``'s default control variate is a float32 network and fails on float64 logits, so it runs
    in float32 with ``in_dim`` the number of units; ``LAX`` needs ``rsample`` and refuses Bernoulli units.
    """
    storch = _require_storchastic()
    m = storch.method
    peer = "storchastic"
    return [
        PeerEstimator(peer, "ScoreFunction()", "exact", lambda n: m.ScoreFunction("z"),
                      notes="REINFORCE without a baseline"),
        PeerEstimator(peer, "ScoreFunction(baseline_factory='moving_average')", "exact",
                      lambda n: m.ScoreFunction("z", baseline_factory="moving_average"), sequential=True,
                      notes="stateful: one draw per call, as in a training loop with one cost per step"),
        PeerEstimator(peer, "ScoreFunction(n_samples=2, baseline_factory='batch_average')", "reinforce_loo",
                      lambda n: m.ScoreFunction("z", n_samples=2, baseline_factory="batch_average"), {"k": 2}),
        PeerEstimator(peer, "ScoreFunction(n_samples=4, baseline_factory='batch_average')", "reinforce_loo",
                      lambda n: m.ScoreFunction("z", n_samples=4, baseline_factory="batch_average"), {"k": 4}),
        PeerEstimator(peer, "ARM()", "arm", lambda n: m.ARM("z")),
        PeerEstimator(peer, "DisARM()", "disarm", lambda n: m.DisARM("z")),
        PeerEstimator(peer, "GumbelSoftmax(annealing_rate=0)", "gumbel",
                      lambda n: m.GumbelSoftmax("z", annealing_rate=0.0), {"temperature": 1.0}),
        PeerEstimator(peer, "GumbelSoftmax(straight_through=True, annealing_rate=0)", "st_gumbel",
                      lambda n: m.GumbelSoftmax("z", straight_through=True, annealing_rate=0.0), {"temperature": 1.0}),
        PeerEstimator(peer, "REBAR()", "exact", lambda n: m.REBAR("z")),
        PeerEstimator(peer, "RELAX(in_dim=N)", "exact", lambda n: m.RELAX("z", in_dim=n), dtype=torch.float32,
                      notes="float32 (its control variate network is float32); at most 2 million draws (memory "
                      "grows by about 1 kB per draw across calls)", max_draws=2_000_000),
        PeerEstimator(peer, "REBAR(), conditional sample corrected", "exact", lambda n: m.REBAR("z"),
                      patch=corrected_storchastic_conditional_sample, max_draws=2_000_000,
                      notes="storchastic's own REBAR with only its Bernoulli conditional sample replaced by the "
                      "logistic noise given b (corrected_storchastic_conditional_sample); at most 2 million draws "
                      "(its memory grows by about 1 kB per draw across calls)"),
        PeerEstimator(peer, "RELAX(in_dim=N), conditional sample corrected", "exact",
                      lambda n: m.RELAX("z", in_dim=n), dtype=torch.float32, max_draws=2_000_000,
                      patch=corrected_storchastic_conditional_sample,
                      notes="storchastic's own RELAX (float32, at most 2 million draws) with only its Bernoulli "
                      "conditional sample replaced"),
        PeerEstimator(peer, "RaoBlackwellSF(n_samples=2)", "exact", lambda n: m.RaoBlackwellSF("z", n_samples=2)),
        PeerEstimator(peer, "Expect()", "exact", lambda n: m.Expect("z"), notes="exact enumeration"),
        PeerEstimator(peer, "ScoreFunctionWOR(k=2, biased=False)", "exact",
                      lambda n: m.ScoreFunctionWOR("z", k=2, biased=False)),
        PeerEstimator(peer, "UnorderedSetEstimator(k=2)", "exact", lambda n: m.UnorderedSetEstimator("z", k=2),
                      notes="its leave-one-out probabilities by numerical integration (1000 points); chunks of "
                      "1,000 draws (its memory grows with draws x points)", chunk_size=1_000),
        PeerEstimator(peer, "UnorderedSetEstimator(k=2, exact_integration=True)", "exact",
                      lambda n: m.UnorderedSetEstimator("z", k=2, exact_integration=True), chunk_size=1_000),
    ]


@functools.cache
def _require_pyro():
    try:
        import pyro
    except ImportError as err:
        raise ImportError(f"auditing pyro needs it installed: pip install 'gradstats[audit]' (pyro-ppl=={PINNED['pyro']})"
                          ) from err
    if pyro.__version__ != PINNED["pyro"]:
        warnings.warn(f"the audit is pinned to pyro {PINNED['pyro']}, found {pyro.__version__}", stacklevel=2)
    return pyro


def pyro_estimators() -> list[PeerEstimator]:
    """pyro's score-function path: ``TraceGraph_ELBO`` on a guide of Bernoulli units, without a baseline and
    with its decaying-average baseline (``baseline_beta`` 0.9, stateful).

    Driven as its users drive it: the guide samples ``z ~ Bernoulli(logits)`` and the model samples the
    same law (logits detached) and adds ``pyro.factor(-f(z))``, so the gradient of the loss (minus the
    ELBO) with respect to the guide's logits is that of :math:`E[f(z)]` (the KL term's gradient is 0 where
    the two laws are equal; its per-draw score adds variance, not bias). Each draw has its own row of
    logits in a ``pyro.plate``; pyro keeps one running average per row, so rows are independent chains
    and one call advances them all (a chain's successive draws are uncorrelated: each centred draw
    has mean zero given the past)."""
    _require_pyro()
    return [PeerEstimator("pyro", "TraceGraph_ELBO()", "exact", lambda n: {},
                          notes="no baseline"),
            PeerEstimator("pyro", "TraceGraph_ELBO(use_decaying_avg_baseline, baseline_beta=0.9)", "exact",
                          lambda n: {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}},
                          sequential=True, notes="stateful: one running average per row, advanced by each call")]


def storchastic_categorical_estimators() -> list[PeerEstimator]:
    """storchastic 0.3.7's estimators of categorical units (``OneHotCategorical``), with what each claims.

    Driven as for Bernoulli units (:func:`storchastic_estimators`: its quirks apply), the law given by its
    ``probs``, the softmax of each unit's K logits: storchastic's REBAR and RELAX read the gradient of the
    distribution's ``probs`` and fail (``KeyError: 'probs'``) on a ``OneHotCategorical`` given ``logits``.
    RELAX's control variate reads the ``(N, K)`` one-hot sample flattened (``in_dim=(N, K)``)."""
    storch = _require_storchastic()
    m = storch.method
    peer, cat = "storchastic", "categorical"
    return [
        PeerEstimator(peer, "ScoreFunction()", "exact", lambda s: m.ScoreFunction("z"), units=cat,
                      notes="REINFORCE without a baseline"),
        PeerEstimator(peer, "ScoreFunction(n_samples=2, baseline_factory='batch_average')", "categorical_reinforce_loo",
                      lambda s: m.ScoreFunction("z", n_samples=2, baseline_factory="batch_average"), {"k": 2},
                      units=cat),
        PeerEstimator(peer, "ScoreFunction(n_samples=4, baseline_factory='batch_average')", "categorical_reinforce_loo",
                      lambda s: m.ScoreFunction("z", n_samples=4, baseline_factory="batch_average"), {"k": 4},
                      units=cat),
        PeerEstimator(peer, "GumbelSoftmax(annealing_rate=0)", "categorical_gumbel",
                      lambda s: m.GumbelSoftmax("z", annealing_rate=0.0), {"temperature": 1.0}, units=cat),
        PeerEstimator(peer, "GumbelSoftmax(straight_through=True, annealing_rate=0)", "categorical_st_gumbel",
                      lambda s: m.GumbelSoftmax("z", straight_through=True, annealing_rate=0.0),
                      {"temperature": 1.0}, units=cat),
        PeerEstimator(peer, "REBAR()", "exact", lambda s: m.REBAR("z"), units=cat, max_draws=500_000,
                      notes="at most 500,000 draws (its memory grows by about 4 kB per draw across calls on the "
                      "network)"),
        PeerEstimator(peer, "RELAX(in_dim=(N, K))", "exact", lambda s: m.RELAX("z", in_dim=s), dtype=torch.float32,
                      units=cat, max_draws=500_000,
                      notes="float32 (its control variate network is float32); at most 500,000 draws (its memory "
                      "grows by about 3 kB per draw across calls on the network)"),
        PeerEstimator(peer, "RaoBlackwellSF(n_samples=2)", "exact", lambda s: m.RaoBlackwellSF("z", n_samples=2),
                      units=cat),
        PeerEstimator(peer, "Expect()", "exact", lambda s: m.Expect("z"), units=cat, notes="exact enumeration"),
        PeerEstimator(peer, "ScoreFunctionWOR(k=2, biased=False)", "exact",
                      lambda s: m.ScoreFunctionWOR("z", k=2, biased=False), units=cat),
        PeerEstimator(peer, "UnorderedSetEstimator(k=2)", "exact", lambda s: m.UnorderedSetEstimator("z", k=2),
                      units=cat, chunk_size=1_000,
                      notes="its leave-one-out probabilities by numerical integration (1000 points); chunks of "
                      "1,000 draws"),
    ]


def pyro_categorical_estimators() -> list[PeerEstimator]:
    """pyro's score-function path on a guide of categorical units (``OneHotCategorical``), driven as
    :func:`pyro_estimators` drives Bernoulli units, without a baseline."""
    _require_pyro()
    return [PeerEstimator("pyro", "TraceGraph_ELBO()", "exact", lambda s: {}, units="categorical",
                          notes="no baseline")]


PEERS = {"storchastic": storchastic_estimators, "pyro": pyro_estimators}
CATEGORICAL_PEERS = {"storchastic": storchastic_categorical_estimators, "pyro": pyro_categorical_estimators}
UNITS = {"binary": PEERS, "categorical": CATEGORICAL_PEERS}


def audit_problems(quick: bool = False, units: str = "binary") -> list[Problem]:
    """The problems, smallest first (so the first disagreement is the minimal counterexample): the toy
    ``f(b) = (b - t)^2`` at three ``(t, a)``, three units with a multilinear loss (interactions), and a
    network: 3 inputs, 2 binary units, a readout's squared error (``sbn([3, 2])``, 8 parameters).
    ``units="categorical"``: one unit of 4 classes, two units of 3 classes (a random readout's squared
    error) and a network of 3 inputs and 2 units of 3 classes (``categorical([3, 2])``, 24 parameters)."""
    if units not in UNITS:
        raise ValueError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
    if units == "categorical":
        one = categorical([1], 4, loss=multilinear({(0,): 1.0, (1,): -0.5, (2,): 0.3, (3,): 2.0}, 4),
                          logits=[0.5, -0.3, 1.0, 0.0])
        two = categorical([2], 3, seed=3)
        network = categorical([3, 2], 3, seed=1)
        return [one, two] if quick else [one, two, network]
    toys = [toy(0.45, 0.0), toy(0.1, 1.5), toy(0.8, -2.0)]
    loss = multilinear({(0,): 1.0, (1,): -0.5, (2,): 0.3, (0, 1): 2.0, (1, 2): -1.5, (0, 1, 2): 0.8}, 3)
    three = independent(loss, [0.3, -1.0, 0.8])
    network = sbn([3, 2], "squared_error", seed=0)
    return [toys[0], three] if quick else [*toys, three, network]


def _one_layer(problem: Problem):
    if len(problem.layers) != 1:
        raise ValueError(f"the audit drives one stochastic layer (toy, independent, one-layer sbn), got {problem}")
    return problem.layers[0]


def _logits(problem: Problem) -> Tensor:
    """The problem's logits ``[N]``."""
    spec = _one_layer(problem)
    return problem.logits(0, None if spec.weight is None else problem.x[None]).reshape(-1)


class _Rows:
    """Per-draw copies of a one-layer problem's parameters (``[rows, *shape]`` leaves) and the logits they give:
    :math:`a_i = W_i x + c_i` (``a_i = c_i`` without input), so that one backward pass yields every draw's
    gradient, flattened in ``problem.parameter_names()`` order."""

    def __init__(self, problem: Problem, rows: int, dtype: torch.dtype):
        self.spec, self.x = _one_layer(problem), problem.x
        self.names = problem.parameter_names()
        self.leaves = {k: problem.parameters[k].to(dtype).expand(rows, *problem.parameters[k].shape).clone()
                       .requires_grad_(True) for k in self.names}

    def logits(self) -> Tensor:
        a = self.leaves[self.spec.bias]
        if self.spec.weight is not None:
            weight = self.leaves[self.spec.weight]
            a = a + torch.einsum("bij,j->bi", weight, self.x.to(weight.dtype))
        return a

    def gradients(self, scale: float = 1.0) -> Tensor:
        return torch.cat([self.leaves[k].grad.detach().flatten(1) for k in self.names], 1).to(torch.float64) * scale


def _unit_shape(problem: Problem) -> int | tuple[int, int]:
    """What a peer estimator is built for: ``N`` binary units, or ``(N, K)`` categorical ones."""
    size = _one_layer(problem).size
    return size if problem.num_classes is None else (size // problem.num_classes, problem.num_classes)


def _law(distributions, problem: Problem, logits: Tensor, wrap=lambda t: t):
    """The units' law in a peer's ``distributions`` module: Bernoulli on ``logits`` ``[..., N]``, or one-hot
    categorical given the softmax of each unit's K logits (``[..., N K]`` read unit-major as ``[..., N, K]``);
    ``wrap`` is applied to the tensor the law is given (storchastic's plate)."""
    if problem.num_classes is None:
        return distributions.Bernoulli(logits=wrap(logits))
    probs = torch.softmax(logits.reshape(*logits.shape[:-1], -1, problem.num_classes), -1)
    return distributions.OneHotCategorical(probs=wrap(probs))


def _flat(problem: Problem, h: Tensor) -> Tensor:
    """A sample as the loss reads it: categorical ``[..., N, K]`` one-hot values as ``[..., N K]``."""
    return h if problem.num_classes is None else h.reshape(*h.shape[:-2], -1)


def _storch_cost(storch, problem: Problem, dtype: torch.dtype):
    return storch.deterministic(lambda h: problem.loss(_flat(problem, h).to(dtype)))


def _storchastic_chunk(estimator: PeerEstimator, problem: Problem, rows: int, seed: int) -> Tensor:
    """``rows`` per-draw gradients ``[rows, D]`` from one backward pass: draw ``i`` has its own parameters and
    logits in the independent plate ``draws``; storch averages the cost over that plate, hence the factor
    ``rows``."""
    storch = _require_storchastic()
    from torch import distributions

    torch.manual_seed(seed)
    method = estimator.build(_unit_shape(problem))
    draws = _Rows(problem, rows, estimator.dtype)
    with estimator.patch() if estimator.patch is not None else contextlib.nullcontext():
        try:
            sample = method(_law(distributions, problem, draws.logits(),
                                 lambda t: storch.denote_independent(t, 0, "draws")))
            storch.add_cost(_storch_cost(storch, problem, estimator.dtype)(sample), "cost")
            storch.backward()
        finally:
            storch.reset()
    return draws.gradients(rows)


def _storchastic_sequential(estimator: PeerEstimator, problem: Problem, draws: int, seed: int,
                            burn_in: int = BURN_IN) -> Tensor:
    """One call per draw on one estimator object (its state carried), after ``burn_in`` calls: how a training
    loop with one draw per step drives it (and the per-draw loop of research code)."""
    storch = _require_storchastic()
    from torch import distributions

    torch.manual_seed(seed)
    method = estimator.build(_unit_shape(problem))
    out = []
    for i in range(-burn_in, draws):
        one = _Rows(problem, 1, estimator.dtype)
        try:
            sample = method(_law(distributions, problem, one.logits()[0]))
            storch.add_cost(_storch_cost(storch, problem, estimator.dtype)(sample), "cost")
            storch.backward()
        finally:
            storch.reset()
        if i >= 0:
            out.append(one.gradients())
    return torch.cat(out)


def _pyro_draws(estimator: PeerEstimator, problem: Problem, rows: int, calls: int, burn_in: int, seed: int) -> Tensor:
    """``calls`` calls of ``TraceGraph_ELBO.loss_and_grads`` on ``rows`` rows after ``burn_in`` calls:
    ``[calls * rows, D]`` in call order (pyro sums the loss over the plate: no factor)."""
    pyro = _require_pyro()
    import pyro.distributions as dist
    from pyro.infer import TraceGraph_ELBO

    pyro.set_rng_seed(seed % 2**32)   # it seeds numpy too, whose seeds are below 2**32
    pyro.clear_param_store()
    draws = _Rows(problem, rows, estimator.dtype)
    infer = estimator.build(_unit_shape(problem))

    def model():
        with pyro.plate("draws", rows):
            z = pyro.sample("z", _law(dist, problem, draws.logits().detach()).to_event(1))
            pyro.factor("cost", -problem.loss(_flat(problem, z)))

    def guide():
        with pyro.plate("draws", rows):
            pyro.sample("z", _law(dist, problem, draws.logits()).to_event(1), infer=infer)

    elbo = TraceGraph_ELBO()
    out = []
    try:
        for call in range(burn_in + calls):
            for leaf in draws.leaves.values():
                leaf.grad = None
            elbo.loss_and_grads(model, guide)
            if call >= burn_in:
                out.append(draws.gradients())
    finally:
        pyro.clear_param_store()
    return torch.cat(out)


def peer_gradients(estimator: PeerEstimator, problem: Problem, num_draws: int, seed: int = 0,
                   chunk_size: int = 50_000) -> Iterable[Tensor]:
    """The peer's per-draw gradients with respect to the problem's logits, ``[b, N]`` chunks (draw order fixed
    by ``seed`` and ``chunk_size``)."""
    num_draws, chunk_size = positive_int("num_draws", num_draws), positive_int("chunk_size", chunk_size)
    if estimator.peer not in PINNED:
        raise ValueError(f"no adapter for peer {estimator.peer!r}; peers: {', '.join(PINNED)}")
    if estimator.peer == "pyro" and estimator.sequential:
        # stateful: chunks of `rows` chains, each advanced PYRO_CALLS times after the burn-in
        rows = max(1, min(chunk_size, math.ceil(num_draws / PYRO_CALLS)))
        for i, lo in enumerate(range(0, num_draws, rows * PYRO_CALLS)):
            yield _pyro_draws(estimator, problem, rows, PYRO_CALLS, PYRO_BURN_IN, seed * 1_000_003 + i)[
                :num_draws - lo]
        return
    if estimator.peer == "pyro":                    # one call per chunk
        def draw(rows, chunk_seed):
            return _pyro_draws(estimator, problem, rows, 1, 0, chunk_seed)
    elif estimator.sequential:                      # one call per draw, the state carried within the chunk
        def draw(rows, chunk_seed):
            return _storchastic_sequential(estimator, problem, rows, chunk_seed)
    else:                                           # one backward pass per chunk
        def draw(rows, chunk_seed):
            return _storchastic_chunk(estimator, problem, rows, chunk_seed)
    for i, lo in enumerate(range(0, num_draws, chunk_size)):
        yield draw(min(chunk_size, num_draws - lo), seed * 1_000_003 + i)


def peer_loop_gradients(estimator: PeerEstimator, problem: Problem, num_draws: int, seed: int = 0) -> Tensor:
    """``[num_draws, D]`` per-draw gradients from the loop the peer's users write: one call and one backward
    pass per draw, no plate (what the batched path of :func:`peer_gradients` is checked and timed against)."""
    num_draws = positive_int("num_draws", num_draws)
    if estimator.peer == "pyro":
        return _pyro_draws(estimator, problem, 1, num_draws, 0, seed)
    return _storchastic_sequential(estimator, problem, num_draws, seed, burn_in=0)


@dataclass(frozen=True)
class _Target:
    """What a peer claims to be: the mean its draws should have, that mean's own standard error (a Monte Carlo
    target) and, where the claim is a gradstats estimator with discrete noise, its exact moments (the law the
    peer's draws should follow)."""

    mean: Tensor
    stderr: Tensor | None = None
    exact: Moments | None = None


def _target(estimator: PeerEstimator, problem: Problem, reference_draws: int, seed: int) -> _Target:
    """The exact gradient; a gradstats estimator's exact moments; or, for one with continuous noise, the exact
    gradient when it is unbiased, else its Monte Carlo mean (with its standard error)."""
    if estimator.claims_to_be == "exact":
        return _Target(exact_gradient(problem))
    if get(estimator.claims_to_be).noise == "discrete":
        m = moments(problem, estimator.claims_to_be, method="exact", **estimator.options)
        return _Target(m.mean, exact=m)
    if get(estimator.claims_to_be).unbiased:
        return _Target(exact_gradient(problem))
    m = moments(problem, estimator.claims_to_be, method="mc", num_samples=reference_draws, seed=seed,
                device="cpu", **estimator.options)
    return _Target(m.mean, stderr=m.mean_stderr)


ROUNDING = 1e-6   # storchastic weights a plate's rows by 1/n in float32, even for float64 logits
MIN_DRAWS = MIN_SAMPLES   # fewer draws give no verdict (stats.MIN_SAMPLES: below it skewed laws miscalibrate the tests)


def _z(gap: float, stderr: float, scale: float) -> float:
    """``gap / stderr``, or 0 for a gap at rounding level (:data:`ROUNDING` of ``scale``): an exact peer's
    mean differs from the exact one by rounding, with a spread of rounding too. A zero standard error off
    the rounding level gives infinity; an undefined one (NaN) gives NaN."""
    if abs(gap) <= ROUNDING * abs(scale):
        return 0.0
    if math.isnan(stderr):
        return math.nan
    return gap / stderr if stderr > 0 else math.inf


def _looks(planned: int) -> list[int]:
    """The draws after which the tests run (cumulative, increasing): the :data:`LOOKS` fractions of ``planned``,
    none before :data:`MIN_DRAWS` (where ``planned`` reaches it), since a look with fewer draws gives no verdict
    and would end the draws of a peer whose gap is that large."""
    stops = []
    for fraction in LOOKS:
        stop = max(math.ceil(fraction * planned), min(MIN_DRAWS, planned), stops[-1] if stops else 0)
        if not stops or stop > stops[-1]:
            stops.append(stop)
    return stops


def audit_one(estimator: PeerEstimator, problem: Problem, *, max_draws: int = 2_000_000, seed: int = 0,
              chunk_size: int | None = None, confirm: bool = True) -> AuditRow:
    """The verdict on one peer estimator on one problem (see the module's docstring); ``chunk_size`` defaults
    to the estimator's. ``max_draws`` caps every draw of the peer, the pilot's included; a verdict needs at
    least :data:`MIN_DRAWS` draws beyond the pilot and finite standard errors, else the row is inconclusive
    with the reason.

    ``confirm``: a disagreement is rerun as a whole (pilot, target, draws) at seed ``seed +``
    :data:`CONFIRM_SEED`. If the rerun disagrees too, the row is the first audit's, its notes giving the
    rerun's largest ``|z|``; if not, the row is the rerun's, its notes giving the disagreement that did not
    recur. ``confirm=False``: one audit, a false accusation of a correct peer at about :data:`ALPHA` a row
    (``tests/test_calibration.py``)."""
    row = _audit_once(estimator, problem, max_draws, seed, chunk_size)
    if not confirm or row.status != "disagrees":
        return row
    again = _audit_once(estimator, problem, max_draws, seed + CONFIRM_SEED, chunk_size)
    if again.status == "disagrees":
        return replace(row, notes=_joined(row.notes, f"confirmed at seed {seed + CONFIRM_SEED}: max |z| "
                                                     f"{again.max_abs_z:.2f} at {again.draws:,} draws"))
    # analyses/tab_audit.py reads the first audit's |z| and draws from this note for the paper
    return replace(again, notes=_joined(again.notes, f"seed {seed} disagreed (max |z| {row.max_abs_z:.2f} at "
                                                     f"{row.draws:,} draws); this is seed {seed + CONFIRM_SEED}'s audit, "
                                                     "where it did not recur"))


def _joined(notes: str, note: str) -> str:
    return f"{notes}; {note}" if notes else note


def _audit_once(estimator: PeerEstimator, problem: Problem, max_draws: int, seed: int,
                chunk_size: int | None) -> AuditRow:
    """One sequential audit at ``seed`` (:func:`audit_one` without the confirmation)."""
    max_draws = positive_int("max_draws", max_draws)
    chunk_size = positive_int("chunk_size", estimator.chunk_size if chunk_size is None else chunk_size)
    if (problem.num_classes is None) != (estimator.units == "binary"):
        raise ValueError(f"estimator {estimator.name!r} is audited on {estimator.units} units; problem "
                         f"{problem.description} has {'binary' if problem.num_classes is None else 'categorical'} ones")
    target = _target(estimator, problem, max_draws, seed + 17)
    mean_t, var_t = target.mean, None if target.exact is None else target.exact.var
    tests = len(mean_t) * (2 if var_t is not None else 1)       # z-scores of means (and variances)
    level = ALPHA / len(LOOKS)                                   # Bonferroni over the looks
    z_crit = float(sps.norm.isf(level / (2 * tests)))           # Holm's first step at the last look
    pilot_draws = min(PILOT_DRAWS, max_draws // 4)
    detectable = RELATIVE_BIAS * float(mean_t.norm())
    if pilot_draws >= 2:
        pilot = torch.cat(list(peer_gradients(estimator, problem, pilot_draws, seed + 1, chunk_size)))
        sd = float(pilot.std(0).max())
    else:
        pilot_draws, sd = 0, math.nan
    # a bias of RELATIVE_BIAS |g| in the noisiest coordinate is found with probability POWER (at the last look)
    z_needed = z_crit + sps.norm.ppf(POWER)
    if math.isnan(sd):
        needed = max_draws
    else:
        needed = 1 if sd == 0 else (max_draws if detectable == 0 else int(math.ceil((z_needed * sd / detectable) ** 2)))
    budget = max_draws - pilot_draws
    planned = min(max(needed, MIN_DRAWS), budget)
    stats = GradientStats(reference=mean_t, reference_stderr=target.stderr)
    done, z, verdict = 0, [], _Verdict()
    for look, stop in enumerate(_looks(planned)):
        for chunk in peer_gradients(estimator, problem, stop - done, seed * len(LOOKS) + look + 2, chunk_size):
            stats.update(chunk)
        done = stop
        z, verdict = _look(stats, target, level, z_crit)
        if verdict.rejects:
            break
    draws = done
    notes = [estimator.notes] if estimator.notes else []
    m = stats.moments
    gap, norm = m.mean - mean_t, mean_t.norm().clamp_min(1e-300)
    se = m.mean_stderr if target.stderr is None else (m.mean_stderr.square() + target.stderr.square()).sqrt()
    discrepancy = float(gap.norm() / norm)
    # delta method for |gap| / |target| (its error where the gap is resolved; the largest one's where it is 0)
    spread = (gap / gap.norm()).square() @ se.square() if float(gap.norm()) > 0 else se.square().max()
    discrepancy_se = float(spread.sqrt() / norm)
    if draws < MIN_DRAWS:
        status = "inconclusive"
        notes.append(f"a verdict needs at least {MIN_DRAWS} draws beyond the pilot; max_draws = {max_draws:,} allowed "
                     f"{draws:,}")
    elif verdict.rejects:
        status = "disagrees"
        notes.append(f"peer mean {_rounded(m.mean)} vs {estimator.claims_to_be} {_rounded(mean_t)}")
        notes += _independent_checks(estimator, problem, m.mean)
    elif verdict.undefined:
        status = "inconclusive"
        notes.append(f"standard error not finite in {verdict.undefined} test(s): no verdict")
    elif verdict.heavy_tails:
        status = "inconclusive"
        notes.append(f"heavy tails: the disagreement rests on coordinates whose {verdict.moments_used} skewness and "
                     f"kurtosis need {verdict.heavy_tails:,} draws for a normal z (stats.required_draws); "
                     f"{draws:,} were made")
    elif draws >= needed:
        status = "agrees"
    else:
        status = "inconclusive"
        notes.append(f"{needed:,} draws needed for power {POWER} against a {RELATIVE_BIAS:.0%} bias; "
                     f"max_draws is {max_draws:,}")
    finite = [abs(v) for v in z if not math.isnan(v)]
    largest = math.nan if draws < MIN_DRAWS else max(finite, default=math.nan if z else 0.0)   # no test: no z
    return AuditRow(estimator.peer, estimator.name, estimator.claims_to_be, status, largest,
                    problem.description, draws, needed, discrepancy, discrepancy_se, "; ".join(notes),
                    estimator.units)


@dataclass(frozen=True)
class _Verdict:
    """One look's outcome: whether a reliable test rejects; else the draws heavy tails need (0: none), and how many
    tests had no finite standard error."""

    rejects: bool = False
    heavy_tails: int = 0
    undefined: int = 0
    moments_used: str = "sample"


def _look(stats: GradientStats, target: _Target, level: float, z_crit: float) -> tuple[list[float], _Verdict]:
    """The z-scores of one look (means, then variances against exact moments) and the verdict: Holm at ``level``
    rejects when the smallest p-value is below ``level`` over the number of tests; a rejection counts only on a
    coordinate whose skewness and kurtosis allow a normal z at this many draws (the target's exact ones where it
    has them: under the claim they are the peer's; else the peer's own draws')."""
    m = stats.moments
    n = m.num_samples
    frame = stats.to_frame(ms=(1,), per_coordinate=True)
    coords = frame[frame.coordinate != ""]
    bias = coords[coords.metric == "bias"]
    scale = float(target.mean.norm())
    exact = target.exact
    if exact is not None:   # under the claim the peer's draws have the target's law: its exact standard errors
        stderr = (exact.var / n).sqrt().tolist()
    else:
        stderr = list(bias.stderr)
    z = [_z(g, e, scale) for g, e in zip(bias.value, stderr)]
    tails = exact if exact is not None else m
    needed = required_draws(tails.skewness, tails.kurtosis, z_crit).tolist()
    reliable = [r <= n for r in needed]
    if exact is not None:
        var = coords[coords.metric == "variance"]
        z += [_z(g - float(v), e, float(exact.var.max())) for g, v, e in zip(var.value, exact.var, var.stderr)]
        reliable += reliable
        needed += needed
    tests = len(z)
    rejected = [not math.isnan(v) and 2 * sps.norm.sf(abs(v)) <= level / tests for v in z]
    used = "exact" if exact is not None else "sample"
    if any(r and ok for r, ok in zip(rejected, reliable)):
        return z, _Verdict(rejects=True, moments_used=used)
    heavy = max((math.ceil(d) for r, d, ok in zip(rejected, needed, reliable) if r and not ok), default=0)
    return z, _Verdict(heavy_tails=heavy, undefined=sum(math.isnan(v) for v in z), moments_used=used)


def _rounded(values: Tensor) -> list[float]:
    return [float(f"{float(v):.4g}") for v in values]


def _one_unit(problem: Problem) -> tuple[float, float, float]:
    """``(p, f(1), f(0))`` of a one-unit problem, written out with no enumeration engine."""
    a = float(_logits(problem)[0])
    f = problem.loss(torch.tensor([[1.0], [0.0]], dtype=torch.float64))
    return 1 / (1 + math.exp(-a)), float(f[0]), float(f[1])


def closed_form_gradient(problem: Problem) -> float:
    r"""One unit: :math:`p(1 - p)(f(1) - f(0))`, written out (no enumeration engine), for the referee's own check."""
    p, f1, f0 = _one_unit(problem)
    return p * (1 - p) * (f1 - f0)


def moving_average_simulation(problem: Problem, decay: float = 0.95, draws: int = 200_000, seed: int = 0,
                              update_first: bool = True) -> tuple[float, float]:
    r"""A plain loop of REINFORCE on one unit with an exponential moving-average baseline: per draw,
    :math:`(f(b) - \bar L)(b - p)`, with :math:`\bar L` updated by the draw's own cost before it is used
    (``update_first``, what storchastic 0.3.7's ``MovingAverageBaseline`` does) or after. Mean and its
    standard error. Updated first, the mean is :math:`\mathrm{decay}` times the gradient: the draw's
    own cost enters its baseline with weight ``1 - decay``."""
    p, f1, f0 = _one_unit(problem)
    generator = torch.Generator().manual_seed(seed)
    b = (torch.rand(draws + BURN_IN, generator=generator, dtype=torch.float64) < p).tolist()
    average, out = 0.0, []
    for i, bit in enumerate(b):
        cost = f1 if bit else f0
        if update_first:
            average = decay * average + (1 - decay) * cost
        if i >= BURN_IN:
            out.append((cost - average) * ((1.0 if bit else 0.0) - p))
        if not update_first:
            average = decay * average + (1 - decay) * cost
    values = torch.tensor(out, dtype=torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def _unordered_pair_integrals(p_a: Tensor, p_b: Tensor, p_set: Tensor, num_points: int | None, a: float,
                              stabiliser: float, own_term_twice: bool) -> tuple[Tensor, ...]:
    r"""For unordered pairs :math:`S = \{s_a, s_b\}` of states with probabilities ``p_a``, ``p_b`` (``[P]`` each;
    ``p_set`` the pair's):
    the leave-one-out ratios :math:`R(S, s)` and the leave-two-out ratios :math:`R^{D \setminus s}(S \setminus s,
    s')` of the unordered set estimator, exactly (``num_points=None``) or by the sum over ``v = j / num_points``
    that storchastic 0.3.7 uses for :math:`p(S) = e^a p_{D \setminus S} \int_0^1 \prod_{s \in S}(1 - v^{e^a
    p_s})\, v^{e^a p_{D\setminus S} - 1} dv` (its ``stabiliser`` added inside each logarithm). ``own_term_twice``:
    the leave-two-out integrand as storchastic 0.3.7 forms it, the left-out sample's own factor removed a second
    time instead of the other sample's."""
    if num_points is None:
        # k = 2: p^{D\s}(S\s) = p_s' / (1 - p_s), and p^{D\s\s'}(empty set) = 1
        return (p_b / (1 - p_a) / p_set, p_a / (1 - p_b) / p_set, (1 - p_a) / p_b, (1 - p_b) / p_a)
    v = torch.arange(1, num_points, dtype=torch.float64) / num_points
    log_v = v.log()
    scale = math.exp(a)
    term_a = torch.log(1 - torch.exp(scale * p_a[:, None] * log_v) + stabiliser)
    term_b = torch.log(1 - torch.exp(scale * p_b[:, None] * log_v) + stabiliser)
    rest = torch.expm1(a + torch.log((1 - p_a - p_b).clamp(min=0.0) + stabiliser))[:, None] * log_v
    whole = (term_a + term_b + rest).logsumexp(-1)
    without_a, without_b = (term_b + rest).logsumexp(-1), (term_a + rest).logsumexp(-1)
    if own_term_twice:
        without_a_b, without_b_a = (term_b - term_a + rest).logsumexp(-1), (term_a - term_b + rest).logsumexp(-1)
    else:
        without_a_b = without_b_a = rest.logsumexp(-1)
    return ((without_a - whole).exp(), (without_b - whole).exp(), (without_a_b - without_a).exp(),
            (without_b_a - without_b).exp())


def unordered_set_mean(problem: Problem, num_points: int | None = 1000, *, a: float = 5.0, stabiliser: float = 1e-6,
                       own_term_twice: bool = True, peer_indexing: bool = True) -> Tensor:
    r"""The exact mean, with respect to the problem's parameters, of the unordered set estimator with its built-in baseline
    (Kool, van Hoof & Welling 2020) for ``k = 2`` samples without replacement of the joint state of a layer's
    units, as storchastic 0.3.7's ``UnorderedSetEstimator`` computes it: a sum over the unordered pairs of
    states, each with its exact probability, of

    .. math:: \sum_{s \in S} p(s) R(S, s)\, \nabla \log p(s) \Big(f(s) - p(s) f(s) - p(s') R' f(s')\Big),

    where :math:`s'` is the other member and :math:`R'` a leave-two-out ratio. With exact ratios
    (``num_points=None``, ``own_term_twice=False``) and :math:`R' = R^{D\setminus s}(S \setminus s, s') =
    (1 - p(s))/p(s')` it is the exact gradient. storchastic reads the ratio of the other member
    (``peer_indexing``: the baseline of :math:`s` uses the ratio computed for leaving :math:`s'` out first) from
    an integrand that removes a factor twice (``own_term_twice``); the two together are what its code does, and
    this mean matches its Monte Carlo mean. ``num_points`` is its quadrature (1000 by default)."""
    if num_points is not None and positive_int("num_points", num_points) < 2:
        raise ValueError(f"num_points must be at least 2 (the sum runs over v = 1/num_points .. 1 - 1/num_points), "
                         f"got {num_points}")
    if not (math.isfinite(a) and math.isfinite(stabiliser) and stabiliser >= 0):
        raise ValueError(f"a must be finite and stabiliser finite and >= 0, got a={a!r}, stabiliser={stabiliser!r}")
    p = torch.sigmoid(_logits(problem))
    states = binary_cube(p.numel())
    prob = (states * p + (1 - states) * (1 - p)).prod(1)
    cost = problem.loss(states).to(torch.float64)
    score = states - p                                    # d log p(s) / d logits
    i, j = torch.triu_indices(len(states), len(states), 1)
    p_a, p_b = prob[i], prob[j]
    p_set = p_a * p_b * (1 / (1 - p_a) + 1 / (1 - p_b))   # exact law of the unordered pair
    r_a, r_b, r2_ab, r2_ba = _unordered_pair_integrals(p_a, p_b, p_set, num_points, a, stabiliser, own_term_twice)
    if peer_indexing:
        r2_ab, r2_ba = r2_ba, r2_ab
    f_a, f_b = cost[i], cost[j]
    base_a = p_a * f_a + p_b * r2_ab * f_b
    base_b = p_b * f_b + p_a * r2_ba * f_a
    per_pair = (p_a * r_a * (f_a - base_a))[:, None] * score[i] + (p_b * r_b * (f_b - base_b))[:, None] * score[j]
    return _logit_gradient_as_parameters(problem, (p_set[:, None] * per_pair).sum(0))


def _logit_gradient_as_parameters(problem: Problem, g: Tensor) -> Tensor:
    """A gradient with respect to one layer's logits as one with respect to its parameters, in
    ``problem.parameter_names()`` order (a weight's gradient is the logits' times the input)."""
    spec = _one_layer(problem)
    parts = {spec.bias: g}
    if spec.weight is not None:
        parts[spec.weight] = torch.outer(g, problem.x.to(g))
    return torch.cat([parts[name].flatten() for name in problem.parameter_names()])


def _independent_checks(estimator: PeerEstimator, problem: Problem, mean_p: Tensor) -> list[str]:
    """Which side is right, from computations that share no code with either: the closed form on one unit,
    for the moving-average baseline a plain simulation of its update order, and for the unordered set
    estimator its exact mean as the peer computes it (:func:`unordered_set_mean`)."""
    notes = []
    if estimator.name.startswith("UnorderedSetEstimator") and len(problem.layers) == 1 and problem.num_classes is None:
        peer = unordered_set_mean(problem)
        fixed = unordered_set_mean(problem, own_term_twice=False, peer_indexing=False)
        notes.append(f"exact mean of the peer's computation (1000-point sum, its leave-two-out ratio): "
                     f"{_rounded(peer)} (peer {_rounded(mean_p)}); with that ratio corrected: {_rounded(fixed)}")
    if problem.num_parameters != 1:
        return notes
    notes.append(f"closed form p(1-p)(f(1)-f(0)) = {closed_form_gradient(problem):.6g}")
    if "moving_average" in estimator.name:
        first, first_se = moving_average_simulation(problem, update_first=True)
        after, after_se = moving_average_simulation(problem, update_first=False)
        notes.append(f"plain simulation, baseline updated with the draw's own cost before use: {first:.5g} +- "
                     f"{first_se:.2g} (peer {float(mean_p[0]):.5g}); updated after use: {after:.5g} +- {after_se:.2g}")
    return notes


def audit(peer: str = "storchastic", *, quick: bool = False, estimators: Iterable[str] | None = None,
          max_draws: int | None = None, seed: int = 0, progress=None, units: str = "binary") -> list[AuditRow]:
    """Every estimator of ``peer`` for ``units`` (``"binary"`` or ``"categorical"``) on every problem of
    :func:`audit_problems` (``quick``: two problems) with :meth:`PeerEstimator.draw_limit` draws at most (or
    ``max_draws``)."""
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {', '.join(PEERS)}, got {peer!r}")
    if units not in UNITS:
        raise ValueError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
    if max_draws is not None:
        max_draws = positive_int("max_draws", max_draws)
    chosen = UNITS[units][peer]()
    if estimators is not None:
        wanted = list(estimators)
        unknown = [w for w in wanted if w not in {e.name for e in chosen}]
        if unknown:
            raise ValueError(f"unknown estimator(s) {unknown}; choose from {[e.name for e in chosen]}")
        chosen = [e for e in chosen if e.name in wanted]
    rows = []
    for est in chosen:
        for problem in audit_problems(quick, units):
            limit = est.draw_limit(quick) if max_draws is None else max_draws
            rows.append(audit_one(est, problem, max_draws=limit, seed=seed))
            if progress is not None:
                progress(f"{est.name} on {problem.description}: {rows[-1].status} (max |z| {rows[-1].max_abs_z:.1f})")
    return rows
