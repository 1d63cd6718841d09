r"""Drop-in torch functions: a sample whose backward pass is the estimator.

For training code. Each takes pre-activations ``a`` and either explicit
uniforms ``u`` (same shape) or a ``torch.Generator``; none touches the global
RNG unless neither is given. Each is derived from its estimator's one
definition, the per-unit rule in :mod:`gradstats.estimators.surrogate`,
:mod:`gradstats.estimators.score_function`, :mod:`gradstats.estimators.multi_sample` or
:mod:`gradstats.estimators.control_variates` (formula, validity, cost and reference are there).

Pathwise (a sample whose backward pass uses the rule's local derivative, held fixed):

* :func:`straight_through` (``variant="identity"`` or ``"sigmoid"``), :func:`sts`,
  :func:`reinmax`, and :func:`pathwise` for a user's rule ``s(a, b)``: hard sample forward;
* :func:`noisy_rectifier`, :func:`gumbel_sigmoid`, :func:`st_gumbel`, :func:`gumbel_rao`: their sampled
  rules.

Score function and antithetic (they need the loss, so they return the sample and a surrogate):

* :func:`reinforce`: the sample ``h`` and ``surrogate(loss, baseline)``;
  :class:`RunningBaseline` holds the paper's running estimate of Eq. 10;
* :func:`arm`, :func:`disarm`, :func:`reinforce_loo`, :func:`local_expectation`, :func:`arms`,
  :func:`double_cv` and :func:`rebar` (RELAX with a ``control``), on one layer of units: they
  evaluate ``loss_fn`` at several samples and return ``(h, surrogate)``, a scalar whose gradient
  with respect to ``a`` is the estimate (summed over rows). ``loss_fn`` must act on each row of ``h``
  alone: rows that are equal are given one loss value (the first's), so that the differences
  between them are exactly 0 however the device rounds.

Categorical units (:mod:`gradstats.estimators.categorical`), on logits ``[..., K]`` (the classes last, as
``torch.nn.functional.gumbel_softmax`` takes them): :func:`categorical_straight_through`,
:func:`categorical_reinmax`, :func:`categorical_st_gumbel`, :func:`categorical_gumbel_rao` (one-hot
sample forward), :func:`categorical_gumbel_softmax` (the relaxed sample) and
:func:`categorical_reinforce_loo` and :func:`categorical_carms` (``k`` samples and a surrogate).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .estimators.categorical import carms_rule, carms_samples, gumbel_rao_vjp, reinmax_vjp, relaxed_vjp, st_vjp
from .estimators.control_variates import relax_rule
from .estimators.multi_sample import arms_rule, coupled_samples, double_cv_rule
from .estimators.score_function import (
    RunningBaseline,
    arm_rule,
    disarm_rule,
    leave_one_out_rule,
    local_expectation_rule,
    reinforce_rule,
    tied_losses,
)
from .estimators.surrogate import (
    gumbel_rao_rule,
    gumbel_rule,
    noisy_rectifier_rule,
    reinmax_derivative,
    sigmoid_derivative_variant,
    st_gumbel_rule,
    straight_through_derivative,
    sts_derivative,
)
from .numerics import positive_int
from .units import (
    BINARY,
    STS,
    CategoricalUnit,
    antithetic,
    check_temperature,
    conditional_logistic_noise,
    conditional_noise_slope,
    flip_each,
    grouped_softmax,
    gumbel_noise,
    local_derivative_like,
    logistic_noise,
)

__all__ = ["straight_through", "sts", "noisy_rectifier", "reinforce", "RunningBaseline", "gumbel_sigmoid",
           "st_gumbel", "gumbel_rao", "reinmax", "arm", "disarm", "reinforce_loo", "local_expectation", "arms",
           "double_cv", "rebar", "pathwise", "categorical_straight_through", "categorical_reinmax",
           "categorical_gumbel_softmax", "categorical_st_gumbel", "categorical_gumbel_rao", "categorical_reinforce_loo",
           "categorical_carms"]


def _uniforms(a: Tensor, u: Tensor | None, generator: torch.Generator | None, shape: tuple | None = None,
              name: str = "a") -> Tensor:
    """Uniforms of ``shape`` (default: ``a``'s) in ``a``'s dtype and device: ``u``, or drawn from ``generator``.
    A ValueError names ``a`` (as ``name``) if it is not floating point, ``u`` of another shape, and ``u`` given
    with a ``generator`` (which would go unused). The values of ``u`` are the caller's to keep in ``[0, 1]``:
    reading them would stop the drop-ins from running under ``vmap`` and ``torch.compile``."""
    if not a.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {a.dtype}")
    shape = tuple(a.shape) if shape is None else tuple(shape)
    if u is None:
        return torch.rand(shape, generator=generator, dtype=a.dtype, device=a.device)
    if generator is not None:
        raise ValueError("give u or generator, not both: the generator would go unused")
    if tuple(u.shape) != shape:
        what = f"{name}'s shape" if shape == tuple(a.shape) else "shape"
        raise ValueError(f"u must have {what} {shape}, got {tuple(u.shape)}")
    return u.to(a)


def _with_local_derivative(value: Tensor, a: Tensor, local: Tensor) -> Tensor:
    """``value`` forward; backward ``dL/da = dL/dh * local`` (``local`` computed in a stable form, held fixed)."""
    return value.detach() + (a - a.detach()) * local.detach()


def _hard(a: Tensor, u: Tensor | None, generator: torch.Generator | None, rule, unit=BINARY, **options) -> Tensor:
    """A hard-sample rule's drop-in: ``unit``'s sample forward, ``dL/dh * rule(a, b)`` backward."""
    ad = a.detach()
    b, value = unit.sample(ad, _uniforms(a, u, generator))
    return _with_local_derivative(value, a, local_derivative_like(rule(ad, b, **options), a))


def _sampled(a: Tensor, u: Tensor | None, generator: torch.Generator | None, rule, **options) -> Tensor:
    """A sampled rule's drop-in: its value forward, ``dL/dh * s`` backward."""
    _, value, derivative = rule(a.detach(), _uniforms(a, u, generator), **options)
    return _with_local_derivative(value, a, derivative)


def pathwise(a: Tensor, local_derivative: Callable[[Tensor, Tensor], Tensor | float], *, u: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """The drop-in of a :func:`gradstats.estimators.pathwise` estimator: the hard sample ``b = 1[u < sigmoid(a)]``,
    whose backward pass multiplies ``dL/db`` by ``local_derivative(a, b)`` (held fixed)."""
    return _hard(a, u, generator, local_derivative)


def straight_through(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                     variant: str = "identity") -> Tensor:
    """Binary sample with the straight-through backward pass (``variant`` ``"identity"`` or ``"sigmoid"``)."""
    rules = {"identity": straight_through_derivative, "sigmoid": sigmoid_derivative_variant}
    if variant not in rules:
        raise ValueError(f"variant must be 'identity' or 'sigmoid', got {variant!r}")
    return _hard(a, u, generator, rules[variant])


def sts(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """STS sample ``b * sqrt(sigmoid(a))``, ``b ~ Bernoulli(sqrt(sigmoid(a)))`` detached."""
    return _hard(a, u, generator, sts_derivative, unit=STS)


def reinmax(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
            temperature: float = 1.0) -> Tensor:
    r"""Hard sample forward; backward :math:`dL/db\,(2r(1 - r) - p(1 - p)/2)`, :math:`r = (b + \sigma(a/\tau))/2`."""
    return _hard(a, u, generator, reinmax_derivative, temperature=check_temperature(temperature))


def noisy_rectifier(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                    noise: str = "gaussian", scale: float = 1.0) -> Tensor:
    """``max(0, a + z)`` with ``z = scale * F^-1(u)``, ``F`` Gaussian or logistic."""
    return _sampled(a, u, generator, noisy_rectifier_rule, noise=noise, scale=scale)


def gumbel_sigmoid(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                   temperature: float = 1.0) -> Tensor:
    """Relaxed sample ``sigmoid((a + l) / temperature)``, ``l = log(1 - u) - log(u)``, differentiable in ``a``."""
    return _sampled(a, u, generator, gumbel_rule, temperature=check_temperature(temperature))


def st_gumbel(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
              temperature: float = 1.0) -> Tensor:
    """Hard sample ``1[u < sigmoid(a)]`` forward, the relaxed sample's gradient backward."""
    return _sampled(a, u, generator, st_gumbel_rule, temperature=check_temperature(temperature))


def _stacked_uniforms(a: Tensor, k: int, u: Tensor | None, generator: torch.Generator | None,
                      name: str = "a") -> Tensor:
    """``k`` uniforms per entry of ``a``, ``[k, *a.shape]``: ``u`` checked, or drawn."""
    return _uniforms(a, u, generator, (k, *a.shape), name)


def _samples(k) -> int:
    """``k``, the samples a multi-sample drop-in takes, checked: an integer >= 2."""
    if isinstance(k, bool) or not (isinstance(k, int) and k >= 2):
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    return k


def gumbel_rao(a: Tensor, *, k: int = 10, u: Tensor | None = None, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> Tensor:
    """Hard sample ``1[u_0 < sigmoid(a)]`` forward; backward st_gumbel's derivative averaged over ``k`` logistic
    noises drawn given the sample (``u``, if given, is ``[1 + k, *a.shape]``)."""
    k = positive_int("k", k)
    uu = _stacked_uniforms(a, 1 + k, u, generator)
    _, value, derivative = gumbel_rao_rule(a.detach(), uu[0], uu[1:], check_temperature(temperature))
    return _with_local_derivative(value, a, derivative)


def reinforce(a: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Callable[..., Tensor]]:
    r"""Binary sample ``h`` (no gradient) and ``surrogate(loss, baseline=0.0)``.

    ``loss`` has shape ``h.shape[:-1]`` (one value per row); ``baseline`` is a
    number or one per unit (last dimension). The surrogate's gradient with respect
    to ``a`` is :math:`(h - \sigma(a))(L - \bar L)` (``L`` held fixed), summed over rows.
    """
    h = BINARY.sample(a.detach(), _uniforms(a, u, generator))[1]

    def surrogate(loss: Tensor, baseline: float | Tensor = 0.0) -> Tensor:
        if loss.shape != h.shape[:-1]:
            raise ValueError(f"loss must have shape {tuple(h.shape[:-1])} (one value per row of h), got {tuple(loss.shape)}")
        bar = torch.as_tensor(baseline, dtype=a.dtype, device=a.device)
        if bar.ndim > 1 or (bar.ndim == 1 and bar.shape[0] != h.shape[-1]):
            raise ValueError(f"baseline must be a number or {h.shape[-1]} numbers (one per unit), got shape {tuple(bar.shape)}")
        return _surrogate(a, reinforce_rule(a.detach(), h, loss.detach(), bar))

    return h, surrogate


def _surrogate(a: Tensor, delta: Tensor) -> Tensor:
    return (delta.detach() * a).sum()


def _check_rows(loss: Tensor, h: Tensor) -> Tensor:
    if loss.shape != h.shape[:-1]:
        raise ValueError(f"loss_fn must return one value per row of h, shape {tuple(h.shape[:-1])}; got {tuple(loss.shape)}")
    return loss.detach()


def _antithetic_pair(a: Tensor, loss_fn, u: Tensor | None, generator: torch.Generator | None):
    uu, ad = _uniforms(a, u, generator), a.detach()
    b, b_anti = BINARY.sample(ad, uu)[1], antithetic(ad, uu)
    main, anti = _check_rows(loss_fn(b), b), _check_rows(loss_fn(b_anti), b)
    anti = tied_losses(torch.stack([main, anti]), torch.stack([b, b_anti]), axis=0)[1]   # equal rows, equal losses
    return uu, b, b_anti, main, anti


def arm(a: Tensor, loss_fn: Callable[[Tensor], Tensor], *, u: Tensor | None = None,
        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """ARM: sample ``b`` and a surrogate with gradient ``(f(b~) - f(b)) (u - 1/2)``, ``b~ = 1[1 - u < p]``."""
    uu, b, _, main, anti = _antithetic_pair(a, loss_fn, u, generator)
    return b, _surrogate(a, arm_rule(uu, main, anti))


def disarm(a: Tensor, loss_fn: Callable[[Tensor], Tensor], *, u: Tensor | None = None,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """DisARM: sample ``b`` and a surrogate with gradient ``(f(b) - f(b~))/2 (-1)^b~ 1[b != b~] sigmoid(|a|)``."""
    _, b, b_anti, main, anti = _antithetic_pair(a, loss_fn, u, generator)
    return b, _surrogate(a, disarm_rule(a.detach(), b, b_anti, main, anti))


def reinforce_loo(a: Tensor, loss_fn: Callable[[Tensor], Tensor], k: int = 2, *, u: Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Leave-one-out REINFORCE: ``k`` samples ``[k, *a.shape]`` and a surrogate with gradient
    ``1/(k-1) sum_j (f_j - mean f) (b_j - p)`` (``u``, if given, has shape ``[k, *a.shape]``)."""
    uu = _stacked_uniforms(a, _samples(k), u, generator)
    ad = a.detach().expand(uu.shape)
    b = BINARY.sample(ad, uu)[1]
    loss = tied_losses(_check_rows(loss_fn(b), b), b, axis=0)   # equal rows, equal losses
    return b, _surrogate(a, leave_one_out_rule(ad, b, loss, axis=0).sum(0))


def local_expectation(a: Tensor, loss_fn: Callable[[Tensor], Tensor], *, u: Tensor | None = None,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Local expectation: sample ``b`` and a surrogate with gradient ``sigma'(a_i) (f(b_i = 1) - f(b_i = 0))``,
    the rest of ``b`` held fixed. ``loss_fn`` is called once on ``b`` and once on ``[N, *a.shape]``
    (row ``i`` with unit ``i`` flipped): ``1 + N`` loss evaluations per example."""
    ad = a.detach()
    b = BINARY.sample(ad, _uniforms(a, u, generator))[1]
    flipped = flip_each(b, axis=0)                                              # [N, *a.shape]
    main, flips = _check_rows(loss_fn(b), b), _check_rows(loss_fn(flipped), flipped)
    return b, _surrogate(a, local_expectation_rule(ad, b, main, torch.movedim(flips, 0, -1)))


def _value_and_slopes(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``fn(x)`` (one value per row, detached) and the gradient of its sum with respect to ``x``, by
    ``torch.func.vjp``, which works eagerly and inside ``vmap`` and ``grad`` alike (``torch.autograd.grad`` on a
    tensor made to require grad does not compose with them). A value that is not differentiable in ``x`` is a
    ValueError naming ``loss_fn`` (``vjp`` would give slopes of 0, unsaid)."""
    def tracked(y: Tensor) -> Tensor:
        out = fn(y)
        if not (isinstance(out, Tensor) and out.requires_grad):
            raise ValueError("loss_fn must be differentiable in its input: this estimator takes dL/db (or the "
                             "relaxed loss's derivative) from autograd, and the value loss_fn returned does not "
                             "depend on its input differentiably")
        return out

    value, pullback = torch.func.vjp(tracked, x.detach())
    (slopes,) = pullback(torch.ones_like(value))
    return value.detach(), slopes.detach()


def arms(a: Tensor, loss_fn: Callable[[Tensor], Tensor], k: int = 4, *, u: Tensor | None = None,
         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """ARMS: ``k`` samples ``[k, *a.shape]`` coupled by a Dirichlet copula (the first ``1[u_0 < p]``) and a surrogate
    with gradient ``p(1-p)/(m - P_ij) 1/(k-1) sum_j (f_j - mean f)(b_j - p)`` (``u``, if given, ``[k, *a.shape]``)."""
    ad = a.detach()
    b = coupled_samples(ad, _stacked_uniforms(a, _samples(k), u, generator))
    loss = tied_losses(_check_rows(loss_fn(b), b), b, axis=0)
    return b, _surrogate(a, arms_rule(ad.expand_as(b), b, loss, axis=0).sum(0))


def double_cv(a: Tensor, loss_fn: Callable[[Tensor], Tensor], k: int = 4, alpha: float = 1.0, *,
              u: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The double control variate: ``k`` independent samples ``[k, *a.shape]`` and a surrogate whose gradient is
    leave-one-out on ``f_j - alpha g_{-j}.(b_j - p)`` plus ``alpha/k sum_j g_{-j} p(1-p)``, with ``g = dL/db`` from
    autograd through ``loss_fn`` (which must be differentiable in ``b``)."""
    uu, ad = _stacked_uniforms(a, _samples(k), u, generator), a.detach()
    b = BINARY.sample(ad.expand_as(uu), uu)[1]
    value, slopes = _value_and_slopes(loss_fn, b)
    loss = tied_losses(_check_rows(value, b), b, axis=0)
    return b, _surrogate(a, double_cv_rule(ad.expand_as(b), b, loss, slopes, float(alpha), axis=0).sum(0))


def rebar(a: Tensor, loss_fn: Callable[[Tensor], Tensor], *, temperature: float = 0.5, scale: float = 1.0,
          control: Callable[[Tensor], Tensor] | None = None, u: Tensor | None = None,
          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """REBAR (RELAX when ``control``, a function of ``z`` with one value per row, is given): the sample ``b`` and a
    surrogate with gradient ``(f(b) - c(z~))(b - p) + dc(z)/da - dc(z~)/da``, ``c = scale f(sigmoid(z/temperature))``
    (plus ``control(z)``). ``loss_fn`` is evaluated on relaxed values too and must be differentiable there;
    ``u``, if given, is ``[2, *a.shape]`` (the sample's, then the conditional noise's). Training ``control`` is the
    caller's (``gs.estimators.control_variates.train_control`` does it for gradstats' problems)."""
    temperature = check_temperature(temperature)
    uu, ad = _stacked_uniforms(a, 2, u, generator), a.detach()
    b = BINARY.sample(ad, uu[0])[1]
    slope = conditional_noise_slope(ad, b, uu[1])
    z = ad + logistic_noise(uu[0])
    z_given_b = ad + conditional_logistic_noise(ad, b, uu[1])

    def relaxed_control(zz: Tensor) -> Tensor:
        return scale * loss_fn(torch.sigmoid(zz / temperature)) + (0 if control is None else control(zz))

    _, derivative = _value_and_slopes(relaxed_control, z)
    control_given_b, derivative_given_b = _value_and_slopes(relaxed_control, z_given_b)
    main = _check_rows(loss_fn(b), b)
    delta = relax_rule(ad, b, main, control_given_b, derivative, derivative_given_b * slope)
    return b, _surrogate(a, delta)


# ---- categorical units: logits [..., K] -------------------------------------------------------------------

def _with_vjp(logits: Tensor, value: Tensor, vjp: Callable[[Tensor], Tensor]) -> Tensor:
    """``value`` forward; backward ``vjp(dL/dvalue)`` for the logits (the rule's product, held fixed).

    Every categorical rule's product is a weighted sum of softmax Jacobians, which are symmetric, so the linear
    map ``vjp`` is its own adjoint and ``vjp(z - sg(z))`` (zero forward) back-propagates exactly ``vjp``: plain
    torch operations, so the drop-ins run under ``vmap``, ``torch.func.grad`` and ``torch.compile``. A logit of
    -inf (a masked class, probability 0, where every softmax Jacobian's row and column are 0) enters as 0, so
    that ``z - sg(z)`` is 0 there rather than NaN."""
    z = torch.where(torch.isinf(logits), torch.zeros_like(logits), logits)
    return value.detach() + vjp(z - z.detach())


def _classes(logits: Tensor) -> int:
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits must have the classes last, K >= 2 of them: shape [..., K], got {tuple(logits.shape)}")
    return logits.shape[-1]


def _one_hot_sample(logits: Tensor, u: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, Tensor, int]:
    k = _classes(logits)
    uu = _uniforms(logits, u, generator, name="logits")
    b, _ = CategoricalUnit(k).sample(logits.detach(), uu)
    return uu, b, k


def categorical_straight_through(logits: Tensor, *, u: Tensor | None = None,
                                 generator: torch.Generator | None = None) -> Tensor:
    """One-hot Gumbel-max sample of ``softmax(logits)`` forward; backward through the softmax's Jacobian."""
    _, b, k = _one_hot_sample(logits, u, generator)
    return _with_vjp(logits, b, st_vjp(logits.detach(), b, k))


def categorical_reinmax(logits: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                        temperature: float = 1.0) -> Tensor:
    r"""One-hot sample forward; backward :math:`(2 J_{\pi_1} - J_\pi/2)\,dL/dD` (ReinMax, Liu et al. 2023)."""
    _, b, k = _one_hot_sample(logits, u, generator)
    return _with_vjp(logits, b, reinmax_vjp(logits.detach(), b, k, check_temperature(temperature)))


def _relaxed(logits: Tensor, u: Tensor | None, generator: torch.Generator | None, temperature: float):
    k = _classes(logits)
    tau = check_temperature(temperature)
    relaxed = grouped_softmax((logits.detach() + gumbel_noise(_uniforms(logits, u, generator, name="logits"))) / tau, k)
    return relaxed, relaxed_vjp(relaxed, k, tau), k


def categorical_gumbel_softmax(logits: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                               temperature: float = 1.0) -> Tensor:
    """The relaxed sample ``softmax((logits + G) / temperature)``, ``G = -log(-log u)``, differentiable in the logits."""
    relaxed, vjp, _ = _relaxed(logits, u, generator, temperature)
    return _with_vjp(logits, relaxed, vjp)


def categorical_st_gumbel(logits: Tensor, *, u: Tensor | None = None, generator: torch.Generator | None = None,
                          temperature: float = 1.0) -> Tensor:
    """The one-hot argmax of ``logits + G`` forward, the relaxed sample's gradient backward."""
    relaxed, vjp, k = _relaxed(logits, u, generator, temperature)
    return _with_vjp(logits, CategoricalUnit(k).one_hot(logits, relaxed), vjp)


def categorical_gumbel_rao(logits: Tensor, *, k: int = 10, u: Tensor | None = None,
                           generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
    """One-hot sample from ``u[0]`` forward; backward ST-Gumbel's Jacobian averaged over ``k`` perturbations drawn
    given the sample (``u``, if given, is ``[1 + k, *logits.shape]``)."""
    classes = _classes(logits)
    k = positive_int("k", k)
    uu = _stacked_uniforms(logits, 1 + k, u, generator, "logits")
    b, _ = CategoricalUnit(classes).sample(logits.detach(), uu[0])
    vjp = gumbel_rao_vjp(logits.detach(), b, uu[1:], classes, check_temperature(temperature))
    return _with_vjp(logits, b, vjp)


def categorical_reinforce_loo(logits: Tensor, loss_fn: Callable[[Tensor], Tensor], k: int = 2, *,
                              u: Tensor | None = None, generator: torch.Generator | None = None
                              ) -> tuple[Tensor, Tensor]:
    """Leave-one-out REINFORCE for categorical units: ``k`` one-hot samples ``[k, *logits.shape]`` and a surrogate
    with gradient ``1/(k-1) sum_j (f_j - mean f) (D_j - softmax(logits))``; ``loss_fn`` maps samples
    ``[..., *logits.shape]`` to one value per sample (``[k, *logits.shape[:-2]]`` here, a row of units each)."""
    classes = _classes(logits)
    if logits.ndim < 2:
        raise ValueError(f"logits must be [..., N, K] (rows of N units of K classes), got {tuple(logits.shape)}")
    uu = _stacked_uniforms(logits, _samples(k), u, generator, "logits")
    ad = logits.detach().expand(uu.shape)
    b, _ = CategoricalUnit(classes).sample(ad, uu)
    rows = b.reshape(*b.shape[:-2], -1)                         # each row of units flattened, as the rule takes it
    loss = loss_fn(b).detach()
    if loss.shape != rows.shape[:-1]:
        raise ValueError(f"loss_fn must return one value per sample of units, shape {tuple(rows.shape[:-1])}; "
                         f"got {tuple(loss.shape)}")
    loss = tied_losses(loss, rows, axis=0)
    flat_a = ad.reshape(rows.shape)
    terms = leave_one_out_rule(flat_a, rows, loss, axis=0, residual=rows - grouped_softmax(flat_a, classes))
    return b, _surrogate(logits, terms.sum(0).reshape(logits.shape))


def categorical_carms(logits: Tensor, loss_fn: Callable[[Tensor], Tensor], k: int = 4, *,
                      u: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """CARMS for categorical units: ``k`` one-hot samples ``[k, *logits.shape]`` coupled by a Dirichlet copula
    (:func:`gradstats.estimators.categorical.carms_samples`) and a surrogate with gradient
    ``1/(k(k-1)) sum_m (D_m - pi) sum_m' r(D_m, D_m') (f_m - f_m')``; ``loss_fn`` maps samples
    ``[..., *logits.shape]`` to one value per sample (``[k, *logits.shape[:-2]]``); ``u``, if given, is
    ``[k, *logits.shape]``."""
    classes = _classes(logits)
    if logits.ndim < 2:
        raise ValueError(f"logits must be [..., N, K] (rows of N units of K classes), got {tuple(logits.shape)}")
    k = _samples(k)
    uu = _stacked_uniforms(logits, k, u, generator, "logits")
    rows = logits.detach().reshape(-1, logits.shape[-2] * classes)                  # [B, N K]
    samples = carms_samples(rows, uu.reshape(k, *rows.shape), classes)             # [k, B, N K]
    b = samples.reshape(k, *logits.shape)
    loss = loss_fn(b).detach()
    if loss.shape != (k, *logits.shape[:-2]):
        raise ValueError(f"loss_fn must return one value per sample of units, shape {(k, *logits.shape[:-2])}; "
                         f"got {tuple(loss.shape)}")
    loss = tied_losses(loss.reshape(k, -1), samples, axis=0)
    return b, _surrogate(logits, carms_rule(rows, samples, loss, classes).reshape(logits.shape))
