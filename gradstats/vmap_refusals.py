"""What ``torch.func.vmap`` refuses when it batches one draw's computation over the draws of a chunk, said in words.

The per-draw gradients of :func:`gradstats.per_draw_gradients` and :func:`gradstats.module_gradient_stats` are one
``vmap`` of ``torch.func.grad``, and a few ways of writing a stochastic model cannot be batched that way. torch
says so in terms of its internals; :func:`explained` turns its refusal into a ValueError that names the argument,
the line of the caller's code where it happened, the call in which torch refused, and how to write that step
instead.
"""

from __future__ import annotations

import os
import traceback

import torch

__all__ = ["explained", "REFUSALS"]

# (a phrase of torch's refusal, what the draw's computation did, how to write it instead)
REFUSALS = (
    ("Cannot ask for different inplace randomness on an unbatched tensor",
     "draws random numbers in place into a tensor it creates, which vmap cannot make differ between draws "
     "(torch.distributions' Normal, LogNormal, MultivariateNormal, Laplace and Exponential do so in rsample)",
     "draw them out of place from a tensor of the draw, e.g. loc + scale * torch.randn_like(loc) for "
     "Normal(loc, scale).rsample()"),
    ("data-dependent control flow",
     "reads a tensor's value as a Python number or branches on it (.item(), float(), an if on a tensor, or "
     "F.one_hot, with which torch.distributions' OneHotCategorical samples), which vmap cannot batch over draws",
     "take one-hot vectors from gradstats.units.one_hot_of(index, num_classes, dtype) and choices from "
     "torch.where"),
    ("override the setup_context staticmethod",
     "calls a torch.autograd.Function without a setup_context staticmethod, which torch.func cannot transform "
     "(torch.distributions' Beta and Dirichlet call one in rsample)",
     "give the Function a setup_context (torch's guide 'Extending torch.func with autograd.Function'), or sample "
     "another way"),
)

_TORCH = os.path.dirname(torch.__file__) + os.sep
_OWN = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _where(err: BaseException) -> str:
    """The innermost frame of ``err``'s traceback in the caller's own code (neither torch's nor gradstats'), and
    the call it made there when that call is Python: ``"forward (model.py:12: `line`), in rsample
    (torch/distributions/normal.py:84)"``; "" when every frame is torch's or gradstats'."""
    frames = traceback.extract_tb(err.__traceback__)
    own = [i for i, f in enumerate(frames) if not os.path.abspath(f.filename).startswith((_TORCH, _OWN))]
    if not own:
        return ""
    i = own[-1]
    frame = frames[i]
    where = f"{frame.name} ({frame.filename}:{frame.lineno}" + (f": `{frame.line.strip()}`)" if frame.line else ")")
    if i + 1 < len(frames):
        inner = frames[i + 1]
        path = os.path.abspath(inner.filename)
        shown = "torch" + os.sep + path[len(_TORCH):] if path.startswith(_TORCH) else inner.filename
        where += f", in {inner.name} ({shown}:{inner.lineno})"
    return where


def explained(err: RuntimeError, who: str) -> ValueError | None:
    """A ValueError naming ``who`` (the argument whose code ran: ``"loss"``, ``"module or loss_fn"``), where the
    draw's computation did what ``vmap`` refused and how to write it instead; ``None`` when ``err`` is not one of
    the refusals in :data:`REFUSALS` (raise ``err`` itself then)."""
    said = str(err)
    for phrase, did, instead in REFUSALS:
        if phrase in said:
            where = _where(err)
            return ValueError(f"{who}: one draw's computation {did}" + (f"; at {where}" if where else "") +
                              f". Instead, {instead} (torch says: {said.strip().splitlines()[0]})")
    return None
