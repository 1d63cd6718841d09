r"""Losses on the last stochastic layer: ``h[..., N] -> L[...]``.

A loss acts row by row: the value for one draw depends on that draw's ``h``
only, so one backward pass over a batch gives every draw's :math:`dL/dh`.
Built-in losses carry their analytic gradient; any other callable gets its
gradient from autograd.

Built-ins:

* :func:`polynomial`: :math:`\sum_i |h_i - t|^k` (``k = 2`` is the toy
  :math:`(b - t)^2` of the seed paper's discussion of ST).
* :func:`readout_squared_error`: :math:`\lVert V h + d - y \rVert^2` of a fixed
  linear readout ``V`` (no 1/2 factor).
* :func:`readout_cross_entropy`: :math:`-\log \mathrm{softmax}(V h + d)_y`.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "Loss",
    "as_loss",
    "multilinear",
    "power_sum",
    "softplus_ridge",
    "polynomial",
    "readout_squared_error",
    "readout_cross_entropy",
    "random_readout",
]


class Loss:
    """A row-wise loss ``h[..., N] -> [...]`` with an optional analytic gradient.

    Parameters
    ----------
    fn
        The loss; must act on each row of ``h`` separately.
    grad
        Optional ``h -> dL/dh``; autograd is used when absent.
    differentiable
        Whether ``dL/dh`` exists; estimators that need it refuse
        a loss marked ``False``.
    name
        Shown in tables and errors.
    num_inputs
        The ``N`` it expects, when fixed (readouts); checked against
        the network's last layer.
    spec
        A JSON-able description that rebuilds it (kind and parameters),
        reported with counterexamples.
    tensors, with_tensors
        For a loss that is a function of some tensors (a readout's weights and target): those tensors, and
        the function that makes the same kind of loss of other tensors of the same shapes, unchecked, so that
        it also runs inside ``torch.func`` transforms (many training tasks batched together:
        :func:`gradstats.training.train_many`).
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        *,
        grad: Callable[[Tensor], Tensor] | None = None,
        differentiable: bool = True,
        name: str | None = None,
        num_inputs: int | None = None,
        spec: dict | None = None,
        tensors: dict[str, Tensor] | None = None,
        with_tensors: Callable[[dict[str, Tensor]], Loss] | None = None,
    ):
        if not callable(fn):
            raise ValueError(f"loss must be callable, got {type(fn).__name__}")
        self.fn = fn
        self._grad = grad
        self.differentiable = differentiable
        self.name = name or getattr(fn, "__name__", "loss")
        self.num_inputs = num_inputs
        self.spec = spec if spec is not None else {"kind": "callable", "name": self.name}
        self.tensors = tensors
        self.with_tensors = with_tensors

    def __call__(self, h: Tensor) -> Tensor:
        return self.fn(h)

    @property
    def from_builder(self) -> bool:
        """Whether a builder of this module made it, so that :func:`from_spec` rebuilds it from ``spec``."""
        return self.spec.get("kind") in _BUILDERS

    def __reduce__(self):
        """Sent to another process (pickled) as its ``spec`` and rebuilt there by :func:`from_spec`; a loss
        from a module-level function travels as that function; a lambda or a local function cannot."""
        if self.from_builder:
            return from_spec, (self.spec,)
        try:
            pickle.dumps(self.fn)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError(
                f"loss {self.name!r} cannot be sent to another process: its function is a lambda or a local "
                "function. Build it with gradstats.losses (polynomial, multilinear, readout_squared_error, ...) or "
                f"define it at module level in an importable file ({err})") from None
        return _rebuild_callable, (self.fn, self._grad, self.differentiable, self.name, self.num_inputs, self.spec)

    def __repr__(self) -> str:
        """For a loss a builder of this module made, an expression that rebuilds it bit for bit."""
        if self.from_builder:
            return f"gs.losses.from_spec({self.spec!r})"
        return f"Loss({self.name})"

    def value_and_grad(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Loss values ``[...]`` and per-row gradients ``dL/dh`` of ``h``'s shape."""
        if not self.differentiable:
            raise ValueError(f"loss {self.name!r} is marked not differentiable: dL/dh does not exist")
        if self._grad is not None:
            return self.fn(h), self._grad(h)
        if torch._C._functorch.peek_interpreter_stack() is not None:   # inside torch.func (a batched training step)
            value, pullback = torch.func.vjp(self.fn, h)
            return value, pullback(torch.ones_like(value))[0]
        with torch.enable_grad():
            leaf = h.detach().requires_grad_(True)
            value = self.fn(leaf)
            if not value.requires_grad:
                raise ValueError(
                    f"loss {self.name!r} is not differentiable: its output does not depend on h "
                    "through torch operations (pass Loss(fn, differentiable=False) to say so)"
                )
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        return value.detach(), grad


def _rebuild_callable(fn, grad, differentiable, name, num_inputs, spec) -> Loss:
    return Loss(fn, grad=grad, differentiable=differentiable, name=name, num_inputs=num_inputs, spec=spec)


def from_spec(spec: dict) -> Loss:
    """The loss a builder of this module made, rebuilt from its ``spec`` (the same values, bit for bit)."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in _BUILDERS:
        raise ValueError(f"spec must be a dict whose kind is one of {sorted(_BUILDERS)}, got {spec!r}")
    return _BUILDERS[kind](spec)


def as_loss(loss: Loss | Callable[[Tensor], Tensor]) -> Loss:
    """Wrap a callable as a :class:`Loss` (a :class:`Loss` is returned as is)."""
    if isinstance(loss, Loss):
        return loss
    if not callable(loss):
        raise ValueError(f"loss must be a Loss or a callable h[..., N] -> [...], got {type(loss).__name__}")
    return Loss(loss)


def _finite_tensor(name: str, value, ndim: int | None = None) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t}")
    return t


def polynomial(target: float = 0.5, power: float = 2.0) -> Loss:
    r""":math:`L(h) = \sum_i |h_i - t|^k` with ``t = target``, ``k = power > 0``.

    Its gradient :math:`k\,|h_i - t|^{k-1}\,\mathrm{sign}(h_i - t)` exists wherever
    :math:`h_i \ne t` or :math:`k > 1`.
    """
    if not (isinstance(target, (int, float)) and math.isfinite(target)):
        raise ValueError(f"target must be a finite number, got {target!r}")
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power > 0):
        raise ValueError(f"power must be a finite number > 0, got {power!r}")
    t, k = float(target), float(power)

    def fn(h: Tensor) -> Tensor:
        return (h - t).abs().pow(k).sum(-1)

    def grad(h: Tensor) -> Tensor:
        d = h - t
        return k * d.abs().pow(k - 1) * d.sign()

    return Loss(fn, grad=grad, name=f"|h-{t:g}|^{k:g}", spec={"kind": "polynomial", "target": t, "power": k})


def _readout(weight, bias) -> tuple[Tensor, Tensor]:
    v = _finite_tensor("weight", weight, ndim=2)
    d = torch.zeros(v.shape[0], dtype=torch.float64) if bias is None else _finite_tensor("bias", bias, ndim=1)
    if d.shape[0] != v.shape[0]:
        raise ValueError(f"bias must have {v.shape[0]} entries (weight's rows), got {d.shape[0]}")
    return v, d


def readout_squared_error(weight, target, bias=None) -> Loss:
    r""":math:`L(h) = \lVert V h + d - y \rVert^2`, ``V = weight [K, N]``, ``y = target [K]``."""
    v, d = _readout(weight, bias)
    y = _finite_tensor("target", target, ndim=1)
    if y.shape[0] != v.shape[0]:
        raise ValueError(f"target must have {v.shape[0]} entries (weight's rows), got {y.shape[0]}")
    loss = _readout_squared_error({"weight": v, "target": y, "bias": d})
    loss.spec = {"kind": "readout_squared_error", "weight": v.tolist(), "target": y.tolist(), "bias": d.tolist()}
    return loss


def _readout_squared_error(tensors: dict[str, Tensor]) -> Loss:
    """:func:`readout_squared_error` of checked tensors (no checks, no spec: it also runs inside ``torch.func``)."""
    v, y, d = tensors["weight"], tensors["target"], tensors["bias"]

    def residual(h: Tensor) -> Tensor:
        return h @ v.to(h).mT + (d - y).to(h)

    def fn(h: Tensor) -> Tensor:
        return residual(h).square().sum(-1)

    def grad(h: Tensor) -> Tensor:
        return 2.0 * residual(h) @ v.to(h)

    return Loss(fn, grad=grad, name=f"readout squared error ({v.shape[-2]}x{v.shape[-1]})", num_inputs=v.shape[-1],
                spec={"kind": "readout_squared_error (tensors)"}, tensors=dict(tensors),
                with_tensors=_readout_squared_error)


def readout_cross_entropy(weight, label: int, bias=None) -> Loss:
    r""":math:`L(h) = -\log \mathrm{softmax}(V h + d)_y`, ``V = weight [K, N]``, ``y = label``."""
    v, d = _readout(weight, bias)
    if not (isinstance(label, int) and 0 <= label < v.shape[0]):
        raise ValueError(f"label must be an integer in [0, {v.shape[0]}), got {label!r}")

    def logits(h: Tensor) -> Tensor:
        return h @ v.to(h).T + d.to(h)

    def fn(h: Tensor) -> Tensor:
        z = logits(h)
        return torch.logsumexp(z, -1) - z[..., label]

    def grad(h: Tensor) -> Tensor:
        s = torch.softmax(logits(h), -1)
        s[..., label] -= 1.0
        return s @ v.to(h)

    return Loss(fn, grad=grad, name=f"readout cross-entropy ({v.shape[0]}x{v.shape[1]})", num_inputs=v.shape[1],
                spec={"kind": "readout_cross_entropy", "weight": v.tolist(), "label": label, "bias": d.tolist()})


def multilinear(coefficients: dict[tuple[int, ...], float], num_inputs: int) -> Loss:
    r""":math:`f(h) = \sum_S c_S \prod_{i \in S} h_i` over subsets ``S`` of the ``num_inputs`` units.

    Affine in each :math:`h_i`, so :math:`\partial f / \partial h_i = f(h^{i \leftarrow 1}) - f(h^{i \leftarrow 0})`.
    """
    if not (isinstance(num_inputs, int) and num_inputs >= 1):
        raise ValueError(f"num_inputs must be an integer >= 1, got {num_inputs!r}")
    subsets = sorted(coefficients)
    for subset in subsets:
        if len(set(subset)) != len(subset) or any(not (0 <= i < num_inputs) for i in subset):
            raise ValueError(f"coefficients keys must be tuples of distinct unit indices in [0, {num_inputs}), got {subset!r}")
    mask = torch.zeros(len(subsets), num_inputs, dtype=torch.float64)
    for row, subset in enumerate(subsets):
        mask[row, list(subset)] = 1.0
    coef = _finite_tensor("coefficients", [coefficients[k] for k in subsets], ndim=1)

    def fn(h: Tensor) -> Tensor:
        m = mask.to(h)
        terms = (1 + m * (h[..., None, :] - 1)).prod(-1)
        return terms @ coef.to(h)

    return Loss(fn, name=f"multilinear ({len(subsets)} terms)", num_inputs=num_inputs,
                spec={"kind": "multilinear", "num_inputs": num_inputs,
                      "coefficients": {",".join(map(str, k)): float(coefficients[k]) for k in subsets}})


def softplus_ridge(weights, directions, offsets, scales) -> Loss:
    r""":math:`f(h) = \sum_k w_k\,\mathrm{softplus}(v_k \cdot (s \odot h) + o_k)` with
    ``w_k > 0``, ``v_k >= 0`` entrywise: monotone in each :math:`h_i`, in the direction
    :math:`s_i = \pm 1` for every value of the other units (strictly where some
    :math:`w_k v_{ki} > 0`).

    Parameters
    ----------
    weights : array_like, shape [K, N]
        :math:`v`, entrywise ``>= 0``.
    directions : array_like, shape [N]
        :math:`s`, each ``-1`` or ``+1``.
    offsets : array_like, shape [K]
        :math:`o`.
    scales : array_like, shape [K]
        :math:`w`, each ``> 0``.
    """
    v = _finite_tensor("weights", weights, ndim=2)
    s = _finite_tensor("directions", directions, ndim=1)
    o = _finite_tensor("offsets", offsets, ndim=1)
    w = _finite_tensor("scales", scales, ndim=1)
    if (v < 0).any() or (w <= 0).any() or not torch.isin(s, torch.tensor([-1.0, 1.0], dtype=torch.float64)).all():
        raise ValueError("softplus_ridge needs weights >= 0, scales > 0 and directions in {-1, +1}")
    if not (v.shape[0] == o.shape[0] == w.shape[0] and v.shape[1] == s.shape[0]):
        raise ValueError(f"shapes do not match: weights {tuple(v.shape)}, directions {tuple(s.shape)}, "
                         f"offsets {tuple(o.shape)}, scales {tuple(w.shape)}")

    def fn(h: Tensor) -> Tensor:
        return torch.nn.functional.softplus((h * s.to(h)) @ v.to(h).T + o.to(h)) @ w.to(h)

    return Loss(fn, name=f"softplus ridge ({v.shape[0]} terms)", num_inputs=v.shape[1],
                spec={"kind": "softplus_ridge", "weights": v.tolist(), "directions": s.tolist(),
                      "offsets": o.tolist(), "scales": w.tolist()})


def power_sum(coefficients) -> Loss:
    r""":math:`f(h) = \sum_i \sum_{d=1}^{D} c_{id} h_i^d` (``coefficients [N, D]``): a general
    separable polynomial, not multilinear once some :math:`c_{id} \ne 0` with ``d > 1``."""
    c = _finite_tensor("coefficients", coefficients, ndim=2)
    powers = torch.arange(1, c.shape[1] + 1, dtype=torch.float64)

    def fn(h: Tensor) -> Tensor:
        return (h[..., None].pow(powers.to(h)) * c.to(h)).sum((-1, -2))

    return Loss(fn, name=f"power sum (degree {c.shape[1]})", num_inputs=c.shape[0],
                spec={"kind": "power_sum", "coefficients": c.tolist()})


_BUILDERS = {
    "polynomial": lambda s: polynomial(s["target"], s["power"]),
    "readout_squared_error": lambda s: readout_squared_error(s["weight"], s["target"], s["bias"]),
    "readout_cross_entropy": lambda s: readout_cross_entropy(s["weight"], s["label"], s["bias"]),
    "multilinear": lambda s: multilinear({tuple(int(i) for i in k.split(",") if i != ""): v
                                          for k, v in s["coefficients"].items()}, s["num_inputs"]),
    "softplus_ridge": lambda s: softplus_ridge(s["weights"], s["directions"], s["offsets"], s["scales"]),
    "power_sum": lambda s: power_sum(s["coefficients"]),
}

READOUTS = ("squared_error", "cross_entropy")


def random_readout(kind: str, num_inputs: int, num_outputs: int = 4, seed: int = 0) -> Loss:
    """A readout loss with ``V`` entries N(0, 1/num_inputs), ``d = 0`` and a seeded target.

    ``kind="squared_error"`` draws ``y ~ N(0, 1)^K``; ``"cross_entropy"`` draws a label.
    """
    if kind not in READOUTS:
        raise ValueError(f"readout kind must be one of {READOUTS}, got {kind!r}")
    for name, n in (("num_inputs", num_inputs), ("num_outputs", num_outputs)):
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2^64), got {seed!r}")
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(num_outputs, num_inputs, generator=g, dtype=torch.float64) / math.sqrt(num_inputs)
    if kind == "squared_error":
        return readout_squared_error(v, torch.randn(num_outputs, generator=g, dtype=torch.float64))
    return readout_cross_entropy(v, int(torch.randint(num_outputs, (), generator=g)))


def check_loss_output(loss: Loss, num_units: int, name: str = "loss") -> None:
    """Raise a ValueError unless ``loss`` maps ``[B, num_units]`` to ``[B]``."""
    if loss.num_inputs is not None and loss.num_inputs != num_units:
        raise ValueError(f"{name} expects h with {loss.num_inputs} entries, but the last layer has {num_units} units")
    probe = torch.zeros(3, num_units, dtype=torch.float64)
    try:
        out = loss(probe)
    except Exception as err:  # the user's callable failed on a valid input
        raise ValueError(f"{name} failed on h of shape [3, {num_units}]: {err}") from err
    if not isinstance(out, Tensor) or tuple(out.shape) != (3,):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name} must map h[..., {num_units}] to [...] (one value per row); got {shape} for [3, {num_units}]")


