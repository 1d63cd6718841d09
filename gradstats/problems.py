r"""What is differentiated: parameters in a fixed named order, sampling structure, loss.

A problem is a stack of stochastic layers of binary units or, from
:func:`categorical`, of categorical units of ``K`` classes each. Layer ``l`` has pre-activations

.. math:: a_l = W_l\, h_{l-1} + c_l, \qquad h_0 = x,

and its units draw ``h_l`` from ``a_l`` (which unit is the estimator's choice:
binary, STS, noisy rectifier, relaxed). Independent units are one layer with
no input: ``a = c`` are the logits. The loss acts on the last layer's ``h``.

The flattened parameter vector is, layer by layer, ``W_l`` (row-major,
``[n_l, n_{l-1}]``) then ``c_l``; :meth:`Problem.parameter_names` gives the
names in that order. Every estimator here estimates :math:`dL/da_l` per draw
(a *delta*); the gradient of ``W_l`` is then ``delta_l`` outer ``h_{l-1}``,
which :class:`FactoredGradient` keeps without materialising it.

The protocol the estimators, the exact engine and Monte Carlo rely on (a new
problem family is a constructor that returns a :class:`Problem`; nothing else
needs to change):

* ``layers`` (:class:`LayerSpec`: size, weight and bias names), ``parameters``
  (name -> float64 tensor, finite), ``x`` (the input or ``None``), ``loss`` (a
  :class:`~gradstats.losses.Loss` on the last layer's rows, with
  ``value_and_grad`` where the estimator needs ``dL/dh``);
* :meth:`Problem.logits` (``a_l`` from the layer below), :meth:`Problem.forward`
  (a pass given a per-layer sampling step), :meth:`Problem.split_units` (a
  ``[B, U]`` tensor cut per layer) and :meth:`Problem.layer_slices` (where each
  layer's ``W`` and ``c`` sit in the flat gradient);
* :meth:`Problem.spec`, from which the problem can be rebuilt (what a
  counterexample prints), and :meth:`Problem.with_parameters` (training).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .losses import Loss, as_loss, check_loss_output, polynomial, random_readout, readout_squared_error
from .numerics import positive_int, seed_value

__all__ = ["Problem", "Trajectory", "FactoredGradient", "LayerSpec", "check_problem", "toy", "independent", "sbn",
           "teacher_student", "categorical"]


@dataclass(frozen=True)
class LayerSpec:
    """One stochastic layer: its size and the names of its parameters."""

    size: int
    weight: str | None
    bias: str


@dataclass
class Trajectory:
    """A batch of forward passes: per layer its input, pre-activation, indicator and value.

    ``inputs[l]`` is ``[B, n_{l-1}]`` (``None`` for independent units);
    ``logits``, ``indicators`` and ``values`` are ``[B, n_l]``. ``log_prob`` is the
    log-probability of the indicators when they were enumerated.
    """

    inputs: list[Tensor | None]
    logits: list[Tensor]
    indicators: list[Tensor]
    values: list[Tensor]
    log_prob: Tensor | None = None

    @property
    def output(self) -> Tensor:
        return self.values[-1]


@dataclass
class FactoredGradient:
    r"""Per-draw gradients in factored form: ``grad W_l = deltas[l] (x) inputs[l]``, ``grad c_l = deltas[l]``.

    ``deltas[l]`` is ``[B, n_l]``; ``inputs[l]`` is ``[B, n_{l-1}]`` or ``None``. An
    estimator that combines ``k`` passes per draw (leave-one-out) gives
    ``deltas[l]`` ``[B, k, n_l]`` and ``inputs[l]`` ``[B, k, n_{l-1}]``: the
    gradient is then the sum over the ``k`` passes.
    """

    deltas: list[Tensor]
    inputs: list[Tensor | None]

    def dense(self) -> Tensor:
        """The ``[B, D]`` gradients in the problem's flattened parameter order."""
        parts = []
        for delta, inp in zip(self.deltas, self.inputs):
            if delta.ndim == 3:
                if inp is not None:
                    parts.append(torch.einsum("bki,bkj->bij", delta, inp).flatten(1))
                parts.append(delta.sum(1))
                continue
            if inp is not None:
                parts.append((delta[:, :, None] * inp[:, None, :]).flatten(1))
            parts.append(delta)
        return torch.cat(parts, dim=1)


class Problem:
    """Parameters, sampling structure and loss of one enumerable problem.

    Build one with :func:`toy`, :func:`independent` or :func:`sbn`.
    """

    def __init__(self, kind: str, layers: Sequence[LayerSpec], parameters: dict[str, Tensor],
                 loss: Loss, x: Tensor | None = None, description: str = "", num_classes: int | None = None):
        self.kind = kind
        self.num_classes = num_classes   # None: binary units; K: categorical units of K classes, one-hot values
        self.layers = tuple(layers)
        self.parameters = {k: v.detach().to(torch.float64) for k, v in parameters.items()}
        for name, value in self.parameters.items():
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"parameter {name} must be finite, got non-finite entries")
        self.loss = loss
        self.x = x
        self.description = description or kind
        self.rebuild: str | None = None   # set by the constructors: a call that builds this problem again
        check_loss_output(loss, self.layers[-1].size)

    def __repr__(self) -> str:
        """The call that rebuilds the problem exactly (``gs.problems.sbn([3, 2], loss=..., seed=0, ...)``) where
        its constructor and loss can be written down; else a short description."""
        if self.rebuild is not None:
            return self.rebuild
        return f"Problem({self.description}, D={self.num_parameters}, units={self.layer_sizes})"

    def spec(self) -> dict:
        """A JSON-able description that rebuilds the problem: kind, layers, parameters, input, loss."""
        spec = {"kind": self.kind, "description": self.description, "layer_sizes": list(self.layer_sizes),
                "parameters": {k: v.tolist() for k, v in self.parameters.items()},
                "x": None if self.x is None else self.x.tolist(), "loss": self.loss.spec}
        if self.num_classes is not None:
            spec["num_classes"] = self.num_classes
        return spec

    # ---- layout -------------------------------------------------------------------
    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return tuple(layer.size for layer in self.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_units(self) -> int:
        """Values per pass (one uniform each): the binary units, or every class of every categorical unit."""
        return sum(self.layer_sizes)

    @property
    def num_variables(self) -> int:
        """Random variables per pass: the binary units, or the categorical units (``num_units / K``)."""
        return self.num_units if self.num_classes is None else self.num_units // self.num_classes

    def parameter_names(self) -> list[str]:
        return list(self.parameters)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.parameters.items()}

    @property
    def num_parameters(self) -> int:
        return sum(v.numel() for v in self.parameters.values())

    def coordinate_names(self) -> list[str]:
        """A name per flattened coordinate, e.g. ``W1[2,0]``, ``c1[2]``."""
        names = []
        for name, value in self.parameters.items():
            for index in torch.cartesian_prod(*[torch.arange(n) for n in value.shape]).reshape(value.numel(), -1):
                names.append(f"{name}[{','.join(str(int(i)) for i in index)}]")
        return names

    def coordinate_layers(self) -> Tensor:
        """The layer (1-based) of each flattened coordinate, ``[D]``."""
        return torch.cat([torch.full((self.parameters[n].numel(),), li + 1)
                          for li, layer in enumerate(self.layers)
                          for n in (layer.weight, layer.bias) if n is not None])

    def layer_slices(self) -> list[tuple[slice | None, slice]]:
        """Per layer, the slices of ``W_l`` (``None`` without input) and ``c_l`` in the flat vector."""
        out, start = [], 0
        for layer in self.layers:
            w = None
            if layer.weight is not None:
                n = self.parameters[layer.weight].numel()
                w, start = slice(start, start + n), start + n
            out.append((w, slice(start, start + layer.size)))
            start += layer.size
        return out

    def flat_parameters(self) -> Tensor:
        return torch.cat([v.reshape(-1) for v in self.parameters.values()])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        if theta.shape != (self.num_parameters,):
            raise ValueError(f"theta must have shape ({self.num_parameters},), got {tuple(theta.shape)}")
        out, start = {}, 0
        for name, value in self.parameters.items():
            out[name] = theta[start:start + value.numel()].reshape(value.shape)
            start += value.numel()
        return out

    def with_parameters(self, theta: Tensor) -> Problem:
        """The same problem with the flattened parameters replaced by ``theta`` (finite, ``[D]``).

        The layers, loss and input were checked when this problem was built, so only ``theta`` is.
        """
        theta = torch.as_tensor(theta, dtype=torch.float64)
        if not bool(torch.isfinite(theta).all()):
            raise ValueError(f"theta must be finite, got non-finite entries for {self.description}")
        other = object.__new__(Problem)
        other.__dict__.update(self.__dict__)
        other.parameters = {k: v.detach().clone() for k, v in self.unflatten(theta).items()}
        other.rebuild = None
        return other

    def split_units(self, t: Tensor) -> list[Tensor]:
        """Split the last dimension (``num_units``) into per-layer pieces."""
        return list(torch.split(t, self.layer_sizes, dim=-1))

    # ---- forward ------------------------------------------------------------------
    def logits(self, layer: int, inputs: Tensor | None, parameters: dict[str, Tensor] | None = None,
               batch_size: int | None = None) -> Tensor:
        """``a_l = inputs @ W_l^T + c_l`` (``c_l`` broadcast to ``batch_size`` rows without input)."""
        params = self.parameters if parameters is None else parameters
        spec = self.layers[layer]
        bias = params[spec.bias]
        if spec.weight is None:
            return bias.expand(batch_size, -1) if batch_size is not None else bias
        weight = params[spec.weight].to(inputs.dtype)
        if inputs.ndim == 2 and inputs.shape[0] > 1 and inputs.stride(0) == 0:  # one input shared by every row
            return (weight @ inputs[0] + bias.to(inputs.dtype)).expand(inputs.shape[0], -1)
        return inputs @ weight.T + bias.to(inputs.dtype)

    def forward(self, step: Callable[[int, Tensor], tuple[Tensor, Tensor]], batch_size: int,
                parameters: dict[str, Tensor] | None = None, dtype: torch.dtype = torch.float64,
                device: torch.device | str | None = None) -> Trajectory:
        """Run the layers; ``step(l, a_l) -> (indicators, values)`` samples each layer."""
        params = self.parameters if parameters is None else parameters
        if device is not None or dtype != torch.float64:
            params = {k: v.to(device=device, dtype=dtype) for k, v in params.items()}
        inputs, logits, indicators, values = [], [], [], []
        prev = None
        if self.x is not None:
            prev = self.x.to(device=device if device is not None else self.x.device, dtype=dtype).expand(batch_size, -1)
        for li in range(self.num_layers):
            inp = prev if self.layers[li].weight is not None else None
            a = self.logits(li, inp, params, batch_size)
            b, h = step(li, a)
            inputs.append(inp)
            logits.append(a)
            indicators.append(b)
            values.append(h)
            prev = h
        return Trajectory(inputs, logits, indicators, values)


def check_problem(problem, name: str = "problem") -> Problem:
    """``problem`` itself if it is a :class:`Problem`, else a ValueError naming ``name``."""
    if not isinstance(problem, Problem):
        raise ValueError(f"{name} must be a gradstats Problem (gs.problems.toy, independent, sbn, teacher_student or "
                         f"categorical), got {type(problem).__name__}")
    return problem


# ---- constructors ----------------------------------------------------------------

def _finite_vector(name: str, value) -> Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D array of numbers: {err}") from err
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def _finite_number(name: str, value) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _weight_scale(weight_scale) -> float:
    """``weight_scale``, checked: a finite number > 0."""
    s = _finite_number("weight_scale", weight_scale)
    if s <= 0:
        raise ValueError(f"weight_scale must be > 0, got {weight_scale!r}")
    return s


def _network_input(x, size: int, generator: torch.Generator) -> Tensor:
    """A network's input: ``x`` checked (finite, ``size`` entries), or N(0, 1) entries drawn from ``generator``."""
    if x is None:
        return torch.randn(size, generator=generator, dtype=torch.float64)
    x = _finite_vector("x", x)
    if x.numel() != size:
        raise ValueError(f"x must have sizes[0] = {size} entries, got {x.numel()}")
    return x


def toy(target: float = 0.45, logit: float = 0.0) -> Problem:
    r"""One binary unit with :math:`f(b) = (b - t)^2`; the parameter is its logit ``a``.

    Exact gradient :math:`p(1 - p)(f(1) - f(0)) = p(1 - p)(1 - 2t)`.
    """
    t = _finite_number("target", target)
    a = _finite_number("logit", logit)
    problem = Problem("toy", [LayerSpec(1, None, "logit")], {"logit": torch.tensor([a], dtype=torch.float64)},
                      polynomial(t, 2), description=f"toy(t={t:g}, a={a:g})")
    problem.rebuild = f"gs.problems.toy(target={t!r}, logit={a!r})"
    return problem


def independent(loss, logits=None, *, probs=None) -> Problem:
    r"""``N`` independent binary units with logits ``a`` (parameter ``"logits"``), loss ``f(h)``.

    Give either ``logits`` or ``probs`` (then ``a = log p - log(1 - p)``,
    which needs ``0 < p < 1``).
    """
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits and probs")
    if probs is not None:
        p = _finite_vector("probs", probs)
        if ((p <= 0) | (p >= 1)).any():
            raise ValueError(f"probs must lie strictly inside (0, 1) to have finite logits, got {p.tolist()}")
        a = torch.logit(p)
    else:
        a = _finite_vector("logits", logits)
    problem = Problem("independent", [LayerSpec(a.numel(), None, "logits")], {"logits": a}, as_loss(loss),
                      description=f"independent(N={a.numel()})")
    if problem.loss.from_builder:
        problem.rebuild = f"gs.problems.independent({problem.loss!r}, logits={a.tolist()!r})"
    return problem


def sbn(sizes: Sequence[int], loss="squared_error", x=None, seed: int = 0, *,
        weight_scale: float = 1.0, num_outputs: int = 4) -> Problem:
    r"""Stochastic binary network: input ``x``, stochastic layers ``h_1`` to ``h_L``, then the loss.

    ``sizes = [n_0, n_1, ..., n_L]``: input size then each stochastic layer's.
    Parameters ``W_l`` (entries N(0, s^2 / n_{l-1})) and ``c_l`` (entries
    N(0, s^2 / 4)), ``s = weight_scale``, drawn from ``seed``; ``x`` defaults to
    N(0, 1) entries from the same seed. ``loss`` is a :class:`Loss`, a callable on
    ``h_L``, or ``"squared_error"`` / ``"cross_entropy"`` of a random readout to
    ``num_outputs`` outputs (:func:`gradstats.losses.random_readout`, same seed).
    """
    sizes = list(sizes) if isinstance(sizes, (list, tuple)) else sizes
    if not (isinstance(sizes, list) and len(sizes) >= 2 and all(type(n) is int and n >= 1 for n in sizes)):
        raise ValueError(f"sizes must be a list [n_in, n_1, ..., n_L] of integers >= 1 with at least one layer, got {sizes!r}")
    seed = seed_value("seed", seed)
    s = _weight_scale(weight_scale)
    g = torch.Generator().manual_seed(seed)
    x_argument = x
    x = _network_input(x, sizes[0], g)
    layers, params = [], {}
    for li, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        layers.append(LayerSpec(n_out, f"W{li}", f"c{li}"))
        params[f"W{li}"] = torch.randn(n_out, n_in, generator=g, dtype=torch.float64) * (s / math.sqrt(n_in))
        params[f"c{li}"] = torch.randn(n_out, generator=g, dtype=torch.float64) * (s / 2)
    loss_argument = loss
    if isinstance(loss, str):
        loss = random_readout(loss, sizes[-1], num_outputs, seed=seed + 1)
    problem = Problem("sbn", layers, params, as_loss(loss), x=x,
                      description=f"sbn({'-'.join(map(str, sizes))}, seed={seed})")
    if isinstance(loss_argument, str) or problem.loss.from_builder:
        loss_text = repr(loss_argument if isinstance(loss_argument, str) else problem.loss)
        given_x = "" if x_argument is None else f", x={x.tolist()!r}"
        problem.rebuild = (f"gs.problems.sbn({sizes!r}, loss={loss_text}{given_x}, seed={seed}, weight_scale={s!r}, "
                           f"num_outputs={num_outputs})")
    return problem


def teacher_student(sizes: Sequence[int], num_examples: int = 8, seed: int = 0, *, teacher_scale: float = 3.0,
                    weight_scale: float = 1.0, num_outputs: int = 4) -> list[Problem]:
    r"""A small supervised task: one :func:`sbn` problem per example, all with the same parameters.

    A deterministic teacher of the same shape (weights N(0, s_T^2 / n_{l-1}),
    biases N(0, s_T^2 / 4), ``s_T = teacher_scale``, units ``h = 1[a > 0]``)
    maps inputs ``x_n ~ N(0, I)`` to codes ``h*_n``; example ``n``'s loss is
    :math:`\lVert V h_L + d - y_n \rVert^2` with ``y_n = V h*_n + d`` and one
    random readout ``V, d`` for all. The students' parameters are those of
    ``sbn(sizes, seed=seed, weight_scale=weight_scale)``. The infimum of the
    mean expected loss is 0 (the teacher, scaled towards determinism).
    """
    n = positive_int("num_examples", num_examples)
    positive_int("num_outputs", num_outputs)
    seed = seed_value("seed", seed)
    s_t = _finite_number("teacher_scale", teacher_scale)
    if s_t <= 0:
        raise ValueError(f"teacher_scale must be > 0, got {teacher_scale!r}")
    student = sbn(sizes, seed=seed, weight_scale=weight_scale)   # validates sizes and weight_scale
    g = torch.Generator().manual_seed(seed + 7919)
    inputs = torch.randn(n, sizes[0], generator=g, dtype=torch.float64)
    h = inputs
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weight = torch.randn(n_out, n_in, generator=g, dtype=torch.float64) * (s_t / math.sqrt(n_in))
        bias = torch.randn(n_out, generator=g, dtype=torch.float64) * (s_t / 2)
        h = (h @ weight.T + bias > 0).to(torch.float64)
    v = torch.randn(num_outputs, sizes[-1], generator=g, dtype=torch.float64) / math.sqrt(sizes[-1])
    d = torch.randn(num_outputs, generator=g, dtype=torch.float64)
    targets = h @ v.T + d
    name = f"teacher_student({'-'.join(map(str, sizes))}, seed={seed})"
    return [Problem("sbn", student.layers, student.parameters,
                    readout_squared_error(v, targets[i], bias=d), x=inputs[i], description=f"{name}[{i}]")
            for i in range(n)]


def categorical(sizes: Sequence[int], num_classes: int = 3, loss="squared_error", x=None, seed: int = 0, *,
                weight_scale: float = 1.0, num_outputs: int = 4, logits=None) -> Problem:
    r"""A network of categorical units of ``K = num_classes`` classes: each layer's units are one-hot vectors.

    ``sizes = [n_0, N_1, ..., N_L]``: the input size, then each layer's number of units. Layer ``l`` has
    ``N_l K`` logits :math:`a_l = W_l h_{l-1} + c_l` (unit ``i``'s classes at ``i K .. i K + K - 1``) and
    draws :math:`h_l` one-hot per unit with probabilities :math:`\mathrm{softmax}(a_{l,i})`; ``h_{l-1}``
    is ``x`` for the first layer and the ``N_{l-1} K`` one-hot values above. Parameters are drawn as in
    :func:`sbn` (``W_l`` entries N(0, s^2 / fan-in), ``c_l`` entries N(0, s^2 / 4)); ``loss`` acts on the
    last layer's ``N_L K`` values (a string: a random readout to ``num_outputs``).

    ``sizes = [N]`` gives ``N`` independent units with no input: their logits, ``[N, K]`` or ``N K``
    numbers, are ``logits`` (default N(0, s^2 / 4) entries from ``seed``). Exact references enumerate
    the :math:`K^N` joint states (``N`` all units together).
    """
    k = num_classes
    if not (type(k) is int and k >= 2):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    sizes = list(sizes) if isinstance(sizes, (list, tuple)) else sizes
    if not (isinstance(sizes, list) and len(sizes) >= 1 and all(type(n) is int and n >= 1 for n in sizes)):
        raise ValueError(f"sizes must be a list [n_in, N_1, ..., N_L] (or [N] for independent units) of integers "
                         f">= 1, got {sizes!r}")
    seed = seed_value("seed", seed)
    s = _weight_scale(weight_scale)
    positive_int("num_outputs", num_outputs)
    g = torch.Generator().manual_seed(seed)
    loss_argument, x_argument = loss, x
    name = f"categorical({'-'.join(map(str, sizes))}, K={k}, seed={seed})"
    if len(sizes) == 1:
        if x is not None:
            raise ValueError("x must be None for independent categorical units (sizes = [N])")
        n = sizes[0]
        if logits is None:
            a = torch.randn(n * k, generator=g, dtype=torch.float64) * (s / 2)
        else:
            a = _finite_vector("logits", torch.as_tensor(logits, dtype=torch.float64).reshape(-1))
            if a.numel() != n * k:
                raise ValueError(f"logits must have N K = {n * k} entries (N = {n} units of K = {k} classes), "
                                 f"got {a.numel()}")
        layers, params = [LayerSpec(n * k, None, "logits")], {"logits": a}
    else:
        if logits is not None:
            raise ValueError("logits are only for independent units (sizes = [N]); a network's come from W and c")
        x = _network_input(x, sizes[0], g)
        layers, params = [], {}
        fan_in = sizes[0]
        for li, n_out in enumerate(sizes[1:], start=1):
            layers.append(LayerSpec(n_out * k, f"W{li}", f"c{li}"))
            params[f"W{li}"] = torch.randn(n_out * k, fan_in, generator=g, dtype=torch.float64) * (s / math.sqrt(fan_in))
            params[f"c{li}"] = torch.randn(n_out * k, generator=g, dtype=torch.float64) * (s / 2)
            fan_in = n_out * k
    if isinstance(loss, str):
        loss = random_readout(loss, layers[-1].size, num_outputs, seed=seed + 1)
    problem = Problem("categorical", layers, params, as_loss(loss), x=x, description=name, num_classes=k)
    if isinstance(loss_argument, str) or problem.loss.from_builder:
        loss_text = repr(loss_argument if isinstance(loss_argument, str) else problem.loss)
        given = "" if x_argument is None else f", x={x.tolist()!r}"
        given += "" if logits is None else f", logits={params['logits'].tolist()!r}"
        problem.rebuild = (f"gs.problems.categorical({sizes!r}, num_classes={k}, loss={loss_text}{given}, seed={seed}, "
                           f"weight_scale={s!r}, num_outputs={num_outputs})")
    return problem
