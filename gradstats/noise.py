"""Counter-based uniforms: the noise of draw ``i`` depends only on the seed and ``i``.

Draws are grouped in blocks of :data:`BLOCK` consecutive indices; block ``k``
is filled by a ``torch.Generator`` seeded from ``(seed, k)`` through numpy's
``SeedSequence`` (well-mixed, independent streams). Any chunk of draws is cut
from whole blocks, so results do not depend on the chunk size, and the same
seed replays bit for bit on the same device. Generators of different devices
produce different (equally valid) streams.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["BLOCK", "resolve_device", "block_seed", "NoiseStream", "uniforms_as"]

BLOCK = 2**16


def resolve_device(device) -> torch.device:
    """``"auto"`` picks CUDA when present; anything else must name a usable device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available here (use 'cpu' or 'auto')")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


def block_seed(seed: int, block: int) -> int:
    """A 63-bit generator seed for block ``block`` of stream ``seed``."""
    state = np.random.SeedSequence([int(seed), int(block)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def uniforms_as(u: Tensor, dtype: torch.dtype) -> Tensor:
    """float64 uniforms in [0, 1) as ``dtype``: for float32, rounded down to its grid ``k / 2^24`` so that none
    becomes 1.0 (the same uniforms in both precisions, up to that rounding)."""
    if dtype == torch.float32:
        return (u * 2.0**24).floor_().div_(2.0**24).to(torch.float32)
    return u.to(dtype)


class NoiseStream:
    """Uniforms ``[n, *shape]`` in [0, 1) for draw indices ``[start, stop)`` of one seeded stream."""

    def __init__(self, seed: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float64):
        if not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self.seed, self.shape, self.device, self.dtype = seed, tuple(shape), device, dtype
        self._cached: tuple[int, Tensor] | None = None
        self._generator = torch.Generator(device=device)   # reseeded for each block

    def _block(self, k: int) -> Tensor:
        if self._cached is not None and self._cached[0] == k:
            return self._cached[1]
        g = self._generator.manual_seed(block_seed(self.seed, k))
        block = torch.rand((BLOCK, *self.shape), generator=g, device=self.device, dtype=torch.float64)
        block = uniforms_as(block, self.dtype)
        self._cached = (k, block)
        return block

    def uniforms(self, start: int, stop: int) -> Tensor:
        first, last = start // BLOCK, (stop - 1) // BLOCK
        pieces = []
        for k in range(first, last + 1):
            lo = max(start, k * BLOCK) - k * BLOCK
            hi = min(stop, (k + 1) * BLOCK) - k * BLOCK
            pieces.append(self._block(k)[lo:hi])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
