"""Helpers the claim checks share: the scale of rounding, loss-class predicates, reporting (sign agreement
itself is defined in :mod:`gradstats.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..enumeration import binary_cube
from ..exact import exact_gradient
from ..metrics import SIGN_TOLERANCE, signs, wrong_sign_coordinates
from ..moments import moments
from ..problems import Problem

__all__ = ["gradient_scale", "st_wrong_sign", "binary_cube", "loss_class",
           "st_sign_condition", "describe", "exact_mean", "Agreement", "agreement"]


def gradient_scale(problem: Problem) -> float:
    """The size of the terms an exact gradient sums: ``max |f|`` and ``max |df/dh|`` over the last layer's
    binary states, times ``1 + max |x|``; values below ``SIGN_TOLERANCE`` times it are rounding, not sign."""
    h = binary_cube(problem.layer_sizes[-1])
    value, grad = problem.loss.value_and_grad(h) if problem.loss.differentiable else (problem.loss(h), h * 0)
    x = 0.0 if problem.x is None else float(problem.x.abs().max())
    return max(float(value.abs().max()), float(grad.abs().max()), 1e-300) * (1 + x)


@dataclass(frozen=True)
class Agreement:
    """Monte Carlo means against known values: the largest ``|z|`` and whether the draws allow a normal z there
    (:func:`gradstats.stats.required_draws` at the threshold, from the draws' skewness and kurtosis)."""

    max_z: float
    reliable: bool
    draws_needed: int

    def verdict(self, threshold: float, exact_holds: bool) -> str:
        """``"confirmed"`` where the exact part holds and ``|z| <= threshold``; ``"inconclusive"`` where the draws
        cannot tell; else ``"refuted"``."""
        if not self.reliable:
            return "inconclusive"
        return "confirmed" if exact_holds and self.max_z <= threshold else "refuted"

    def text(self) -> str:
        tail = "" if self.reliable else f" (below the {self.draws_needed:,} draws their tails need)"
        return f"max |z| {self.max_z:.2f}{tail}"


def agreement(values: Tensor, target: Tensor, threshold: float) -> Agreement:
    """The z-scores of the column means of ``values [n, k]`` against ``target [k]``, with the tail check."""
    from ..stats import required_draws

    n = values.shape[0]
    mean = values.mean(0)
    c = values - mean
    m2 = c.square().mean(0)
    z = ((mean - target) / (values.std(0) / n**0.5)).abs().max()
    skew = (c.pow(3).mean(0) / m2.pow(1.5)).nan_to_num(0.0)
    kurt = (c.pow(4).mean(0) / m2.square()).nan_to_num(3.0)
    needed = int(required_draws(skew, kurt, threshold).max().ceil())
    return Agreement(float(z), needed <= n, needed)


def exact_mean(problem: Problem, estimator: str, **options) -> Tensor:
    return moments(problem, estimator, full_covariance=False, **options).mean


def st_wrong_sign(problem: Problem, estimator: str = "st") -> bool:
    """Whether the exact mean of ``estimator`` has the wrong sign on some coordinate."""
    mean, g = exact_mean(problem, estimator), exact_gradient(problem)
    return bool(wrong_sign_coordinates(mean, g, gradient_scale(problem)).any())


def _derivatives_and_differences(problem: Problem) -> tuple[Tensor, Tensor]:
    """At every binary ``h`` of the last layer: ``df/dh_i (h)`` and ``f(h^{i<-1}) - f(h^{i<-0})``, ``[2^N, N]`` each."""
    n = problem.layer_sizes[-1]
    h = binary_cube(n)
    _, grad = problem.loss.value_and_grad(h)
    diffs = torch.empty_like(h)
    for i in range(n):
        up, down = h.clone(), h.clone()
        up[:, i], down[:, i] = 1.0, 0.0
        diffs[:, i] = problem.loss(up) - problem.loss(down)
    return grad, diffs


def loss_class(problem: Problem) -> dict[str, list[bool]]:
    """Per unit of the last layer: ``multilinear`` (df/dh_i equals the finite difference at every binary
    point) and ``sign_consistent`` (derivatives and differences all > 0, all < 0, or all 0)."""
    grad, diffs = _derivatives_and_differences(problem)
    values = problem.loss(binary_cube(problem.layer_sizes[-1]))
    scale = max(float(grad.abs().max()), float(diffs.abs().max()), float(values.abs().max()), 1e-300)
    multilinear = ((grad - diffs).abs() <= SIGN_TOLERANCE * scale).all(0)
    both = signs(torch.cat([grad, diffs]), scale)
    consistent = (both == both[:1]).all(0)
    return {"multilinear": multilinear.tolist(), "sign_consistent": consistent.tolist()}


def st_sign_condition(problem: Problem) -> bool:
    r"""The class under which straight-through has the right sign on a single layer.

    For every unit ``i`` of the (single) layer, either ``f`` is multilinear in
    :math:`h_i` on the binary cube (:math:`\partial_i f(h) = f(h^{i\leftarrow 1}) - f(h^{i\leftarrow 0})`
    at every binary ``h``), or the derivatives :math:`\partial_i f(h)` at every
    binary ``h`` and the differences all have one strict sign (or all vanish).
    Then :math:`E[\hat g^{ST}_i] = E[\partial_i f(h)]` and
    :math:`g_i = p_i(1 - p_i)\,E[f(h^{i\leftarrow 1}) - f(h^{i\leftarrow 0})]` have the
    same sign, and so do the weights' coordinates (both times the fixed input).
    """
    if problem.num_layers != 1:
        return False
    c = loss_class(problem)
    return all(m or s for m, s in zip(c["multilinear"], c["sign_consistent"]))


def describe(problem: Problem, **values) -> dict:
    """A counterexample: the problem's rebuildable spec and the values that make it one."""
    out = {"problem": problem.description, "spec": problem.spec()}
    out.update({k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in values.items()})
    return out
