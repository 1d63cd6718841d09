r"""Gradient statistics of any ``torch.nn.Module``, as it is written.

A module that samples its stochastic units with torch's own random functions (``torch.bernoulli``,
``torch.rand``, ``F.gumbel_softmax``, dropout) needs no rewrite to explicit uniforms: its parameters are
swapped in with ``torch.func.functional_call``, and ``torch.func.vmap(..., randomness="different")`` gives
every draw of a chunk its own random numbers, from torch's generators forked and seeded per chunk (the
caller's generator state is left as it was), so a seed gives the same draws again for the same
``chunk_size``. One draw is one forward pass of the module on the whole ``batch`` and one gradient of
``loss_fn(output, batch)``; the per-draw gradients of a chunk come from one batched call, never a loop of
backward passes.

What is measured: the parameters named in ``params``, by default those with ``requires_grad`` (frozen ones
are left out); buffers are used and never measured (integer buffers such as BatchNorm's ``num_batches_tracked``
included). A measured parameter that gets no gradient in any draw is reported by :meth:`GradientStats.to_frame`,
not scored.

A module is measured in the mode it is in: in training mode as it trains, BatchNorm normalising each draw by
that draw's own batch statistics. The buffers a forward pass writes (found by one forward pass, without gradients,
on copies of the buffers: BatchNorm's running statistics and ``num_batches_tracked``) get a copy per draw, which
is discarded, so the module is left as it was; the others are read where they lie. A forward pass that writes
with ``out=`` (spectral normalisation's power iteration, in training mode) is one ``vmap`` cannot batch: put
that layer in ``eval()`` mode. The other steps ``vmap`` cannot batch (``torch.distributions``' ``Normal.rsample``,
``F.one_hot``, a ``torch.autograd.Function`` without ``setup_context``) are refused with a ValueError that names
the line and the rewrite (:mod:`gradstats.vmap_refusals`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .gradient_stats import GradientStats, chunk_start, draw_chunks, forked_devices, stream_into
from .numerics import positive_int, seed_value
from .vmap_refusals import explained

__all__ = ["module_per_draw_gradients", "module_gradient_stats", "measured_parameters"]


def measured_parameters(module: torch.nn.Module, params: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The parameters to measure, name -> detached tensor: ``params`` (names from ``module.named_parameters()``), or
    by default every parameter with ``requires_grad``. A ValueError names an unknown or repeated name, or says
    that nothing is left to measure."""
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    named = dict(module.named_parameters())
    if params is None:
        names = [k for k, v in named.items() if v.requires_grad]
        if not names:
            raise ValueError(f"every parameter of {type(module).__name__} is frozen (requires_grad=False), or it has "
                             "none: nothing to measure; name the ones to measure with params=[...]")
    else:
        if isinstance(params, str) or not all(isinstance(k, str) for k in params):
            raise ValueError(f"params must be a list of parameter names, got {params!r}")
        names = list(params)
        unknown = [k for k in names if k not in named]
        if unknown:
            raise ValueError(f"params names {unknown}, not parameters of {type(module).__name__} (it has "
                             f"{', '.join(named) or 'none'})")
        repeated = sorted({k for k in names if names.count(k) > 1})
        if repeated:
            raise ValueError(f"params names {repeated} more than once")
        if not names:
            raise ValueError("params is empty: name at least one parameter to measure")
    not_real = [f"{k} ({named[k].dtype})" for k in names if not named[k].is_floating_point()]
    if not_real:
        raise ValueError(f"params: only real floating-point parameters can be measured, and {', '.join(not_real)} "
                         f"of {type(module).__name__} {'is' if len(not_real) == 1 else 'are'} not; leave "
                         f"{'it' if len(not_real) == 1 else 'them'} out with params=[...] or freeze "
                         f"{'it' if len(not_real) == 1 else 'them'} (requires_grad=False)")
    return {k: named[k].detach() for k in names}


def _written_buffers(module: torch.nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    """The buffers that a forward pass of ``module`` on ``inputs`` writes in place, name -> the module's tensor: one
    pass without gradients on copies of every buffer (torch's generators forked, so the caller's are left as they
    were), then each copy whose version counter moved or whose values changed (BatchNorm's kernel updates its
    running statistics without moving the counter)."""
    buffers = dict(module.named_buffers())
    if not buffers:
        return {}
    trial = {k: v.clone() for k, v in buffers.items()}
    device = next(iter(buffers.values())).device
    with torch.no_grad(), torch.random.fork_rng(devices=forked_devices(device)):
        torch.func.functional_call(module, trial, (inputs,))
    return {k: v for k, v in buffers.items() if trial[k]._version > 0 or not torch.equal(trial[k], v)}


def _inputs(batch):
    """What the module is called on: ``batch`` itself when it is a tensor, its first element when it is a tuple or
    a list (inputs, targets, ...)."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise ValueError("batch must be a tensor (the module's input) or a tuple or list whose first element is the "
                     f"module's input tensor, got {type(batch).__name__}")


def module_per_draw_gradients(module: torch.nn.Module, loss_fn: Callable[[object, object], Tensor], batch,
                              num_draws: int, *, params: Sequence[str] | None = None, chunk_size: int = 64,
                              seed: int = 0, start: int = 0) -> Iterator[dict[str, Tensor]]:
    """Per-draw gradients of ``loss_fn(module(inputs), batch)`` with respect to the measured parameters
    (:func:`measured_parameters`), a chunk of draws at a time: dicts name -> ``[b, *shape]``.

    ``inputs`` is ``batch`` (a tensor) or ``batch[0]`` (a tuple or list); ``loss_fn`` returns a scalar, the loss
    of one draw (a surrogate whose gradient is the estimate, for score-function estimators). The module's own
    calls to torch's random functions differ from draw to draw and are reproducible for a given ``seed`` and
    ``chunk_size`` (see the module docstring); ``start`` (a multiple of ``chunk_size``) skips the chunks before
    that draw, so that the chunks from there on are those of a run from draw 0."""
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function (output, batch) -> scalar, got {type(loss_fn).__name__}")
    inputs = _inputs(batch)
    measured = measured_parameters(module, params)

    def loss(p: dict[str, Tensor], buffers: dict[str, Tensor]) -> Tensor:
        value = loss_fn(torch.func.functional_call(module, (p, buffers), (inputs,)), batch)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor, got "
                             f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}")
        return value.reshape(())

    num_draws = positive_int("num_draws", num_draws)
    chunk_size = positive_int("chunk_size", chunk_size)
    seed = seed_value("seed", seed)
    start = chunk_start("start", start, num_draws, chunk_size)
    # each draw gets its own view of the parameters (expanded, not copied), so that what the module computes from
    # them is batched over draws and in-place random functions (F.gumbel_softmax's exponential_) are allowed under
    # vmap, and its own copy of the buffers the forward pass writes (the function's input, not captured state, for
    # torch.func.grad); the draws' randomness is the module's own, and the uniforms draw_chunks makes are not used
    per_draw = torch.func.vmap(torch.func.grad(loss), in_dims=(0, 0), randomness="different")
    first = next(iter(measured.values()))
    written = _written_buffers(module, inputs)

    def chunk(_, rows: int) -> dict[str, Tensor]:
        copies = {k: v.expand(rows, *v.shape).clone() for k, v in written.items()}   # one per draw, discarded
        try:
            gradients = per_draw({k: v.expand(rows, *v.shape) for k, v in measured.items()}, copies)
        except RuntimeError as err:
            if "mutate a captured Tensor" in str(err):
                raise ValueError(f"module: its forward pass writes in place to a tensor that is neither a parameter "
                                 f"nor a buffer ({type(module).__name__}; torch says: {str(err).splitlines()[0]}); "
                                 "register it with register_buffer, and each draw gets its own copy") from err
            refusal = explained(err, "module or loss_fn")
            if refusal is None:
                raise
            raise refusal from err
        return {k: gradients[k] for k in measured}     # in the module's order

    return draw_chunks(chunk, num_draws, noise_shapes={}, chunk_size=chunk_size, seed=seed, dtype=first.dtype,
                       device=first.device, start=start)


def module_gradient_stats(module: torch.nn.Module, loss_fn: Callable[[object, object], Tensor], batch, num_draws: int,
                          *, params: Sequence[str] | None = None, seed: int = 0, loss_evals_per_draw: int = 1,
                          reference: Mapping[str, Tensor] | None = None,
                          reference_stderr: Mapping[str, Tensor] | None = None, chunk_size: int = 64,
                          progress: bool = False, checkpoint: str | Path | None = None,
                          checkpoint_seconds: float = 30.0, **options) -> GradientStats:
    """:func:`module_per_draw_gradients` streamed into a :class:`GradientStats` against ``reference`` (a dict name ->
    tensor over the measured parameters, with its ``reference_stderr`` where it is itself an estimate).

    ``loss_evals_per_draw`` is what one draw costs (1: one forward pass; more where ``loss_fn`` or the module
    evaluates the loss several times a draw), so that :meth:`GradientStats.to_frame` compares at equal cost;
    ``options`` go to :class:`GradientStats` (``ms``, ``budgets``, ``num_batches``, ``full_covariance``).

    ``checkpoint``: a file the statistics are saved to (at most every ``checkpoint_seconds``, and when the run is
    interrupted by an exception, Ctrl-C or SIGTERM), from which a run of the same module (its parameters,
    buffers and mode), loss, batch, seed, chunk size and options resumes, computing only the chunks left; the
    file is removed when the run completes (:func:`gradstats.gradient_stats.stream_into`)."""
    stats = GradientStats(reference=reference, reference_stderr=reference_stderr,
                          loss_evals_per_draw=loss_evals_per_draw, **options)._expect(num_draws)
    from_zero = module_per_draw_gradients(module, loss_fn, batch, num_draws, params=params, chunk_size=chunk_size,
                                          seed=seed)   # checks every argument before the checkpoint is claimed

    def chunks_from(start: int) -> Iterator:
        return from_zero if start == 0 else module_per_draw_gradients(
            module, loss_fn, batch, num_draws, params=params, chunk_size=chunk_size, seed=seed, start=start)

    identity = dict(kind="module_gradient_stats", module=module, loss_fn=loss_fn, batch=batch, num_draws=num_draws,
                    params=None if params is None else list(params), seed=seed, chunk_size=chunk_size,
                    loss_evals_per_draw=loss_evals_per_draw, reference=reference, reference_stderr=reference_stderr,
                    options=options)
    return stream_into(stats, chunks_from, num_draws, chunk_size, progress, checkpoint, checkpoint_seconds, identity)
