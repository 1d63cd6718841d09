"""Counter-based uniforms: the noise of draw ``i`` depends only on the seed and ``i``.

Draws are grouped in blocks of :data:`BLOCK` consecutive indices; block ``k``
is filled by a ``torch.Generator`` seeded from ``(seed, k)`` through numpy's
``SeedSequence`` (well-mixed, independent streams). Any chunk of draws is cut
from whole blocks, so results do not depend on the chunk size, and the same
seed replays bit for bit on the same device. Generators of different devices
produce different (equally valid) streams.

A chunk's block seeds are computed together by :func:`block_seeds`, the same
``SeedSequence`` hash (O'Neill's ``seed_seq`` successor, as numpy implements it)
vectorised over blocks with numpy, so a GPU chunk of many blocks costs a few
array operations instead of one ``SeedSequence`` per block (tested bit for bit
against numpy).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .numerics import positive_int, seed_value

__all__ = ["BLOCK", "resolve_device", "block_seed", "block_seeds", "NoiseStream", "uniforms_as"]

BLOCK = 2**16
_SEED_WINDOW = 512   # block seeds computed together, for aligned windows of this many blocks


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


# numpy's SeedSequence constants (pool of 4 uint32 words)
_POOL_SIZE = 4
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R, _XSHIFT, _MASK32 = 0xCA01F9DD, 0x4973F715, 16, 0xFFFFFFFF


def _uint32_words(n: int) -> list[int]:
    """An integer's little-endian uint32 words, as SeedSequence reads entropy (0 is one word)."""
    words = [n & _MASK32]
    while n > _MASK32:
        n >>= 32
        words.append(n & _MASK32)
    return words


def _seed_sequence_states(entropy: list, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``SeedSequence(entropy).generate_state(2, uint32)`` for ``count`` entropies at once: ``entropy`` is a list
    of uint32 words, each a Python int (shared) or a ``[count]`` uint64 array. Arithmetic is on uint64 arrays
    reduced mod 2^32 (numpy's uint32 arithmetic, without scalar overflow warnings)."""
    hash_const = _INIT_A

    def hashmix(value):
        nonlocal hash_const
        value = np.bitwise_xor(value, hash_const)
        hash_const = (hash_const * _MULT_A) & _MASK32
        value = (value * np.uint64(hash_const)) & _MASK32
        return value ^ (value >> _XSHIFT)

    def mix(x, y):
        result = (x * np.uint64(_MIX_MULT_L) - y * np.uint64(_MIX_MULT_R)) & _MASK32
        return result ^ (result >> _XSHIFT)

    words = [np.broadcast_to(np.asarray(w, dtype=np.uint64), (count,)) for w in entropy]
    pool = [hashmix(words[i] if i < len(words) else np.zeros(count, np.uint64)) for i in range(_POOL_SIZE)]
    for i_src in range(_POOL_SIZE):
        for i_dst in range(_POOL_SIZE):
            if i_src != i_dst:
                pool[i_dst] = mix(pool[i_dst], hashmix(pool[i_src]))
    for word in words[_POOL_SIZE:]:
        for i_dst in range(_POOL_SIZE):
            pool[i_dst] = mix(pool[i_dst], hashmix(word))
    state, hash_const = [], _INIT_B
    for i in range(2):
        value = pool[i] ^ hash_const
        hash_const = (hash_const * _MULT_B) & _MASK32
        value = (value * np.uint64(hash_const)) & _MASK32
        state.append(value ^ (value >> _XSHIFT))
    return state[0], state[1]


def block_seed(seed: int, block: int) -> int:
    """A 63-bit generator seed for block ``block`` of stream ``seed``: from the state
    ``(s0, s1) = SeedSequence([seed, block]).generate_state(2, uint32)``, ``(s0 << 31) ^ s1``."""
    return block_seeds(seed, block, 1)[0]


def block_seeds(seed: int, first: int, count: int, extra: tuple[int, ...] = ()) -> list[int]:
    """:func:`block_seed` of blocks ``first .. first + count - 1``, computed together (``extra``: further
    entropy after the block's, as the tests' alternative streams add). Each argument is checked, naming it."""
    seed, first, count = seed_value("seed", seed), seed_value("first", first), positive_int("count", count)
    extra = tuple(seed_value("extra entries", e) for e in extra)
    blocks = np.arange(first, first + count, dtype=np.uint64)
    seeds = np.empty(count, dtype=np.uint64)
    tail = [w for e in extra for w in _uint32_words(int(e))]
    for high in np.unique(blocks >> np.uint64(32)):   # a block number of 2^32 or more is two entropy words
        rows = (blocks >> np.uint64(32)) == high
        block_words = [blocks[rows] & np.uint64(_MASK32)] + (_uint32_words(int(high)) if high else [])
        s0, s1 = _seed_sequence_states(_uint32_words(int(seed)) + block_words + tail, int(rows.sum()))
        seeds[rows] = (s0 << np.uint64(31)) ^ s1
    return [int(v) for v in seeds]


def uniforms_as(u: Tensor, dtype: torch.dtype) -> Tensor:
    """float64 uniforms in [0, 1) as ``dtype``: for float32, rounded down to its grid ``k / 2^24`` so that none
    becomes 1.0 (the same uniforms in both precisions, up to that rounding)."""
    if dtype == torch.float32:   # k = floor(u 2^24) < 2^24 and k 2^-24 are exact in float32: the last step on half
        return (u * 2.0**24).floor_().to(torch.float32).mul_(2.0**-24)   # the bytes (a chunk's uniforms in 0.6 the time)
    return u.to(dtype)


class NoiseStream:
    """Uniforms ``[n, *shape]`` in [0, 1) for draw indices ``[start, stop)`` of one seeded stream."""

    def __init__(self, seed: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float64):
        if not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self.seed, self.shape, self.device, self.dtype = seed, tuple(shape), device, dtype
        self._cached: tuple[int, Tensor] | None = None   # the last block cut in part (the next piece starts in it)
        self._seeds: tuple[int, list[int]] = (-1, [])       # (first block, block seeds) of the current window
        self._generator = torch.Generator(device=device)   # reseeded for each block

    def _seed(self, k: int) -> int:
        first, seeds = self._seeds
        if not first <= k < first + len(seeds):
            first = k - k % _SEED_WINDOW
            seeds = block_seeds(self.seed, first, _SEED_WINDOW)
            self._seeds = (first, seeds)
        return seeds[k - first]

    def _fill(self, k: int, out: Tensor | None = None) -> Tensor:
        """Block ``k``'s float64 uniforms, written into ``out`` when given (the same bits either way)."""
        g = self._generator.manual_seed(self._seed(k))
        return torch.rand((BLOCK, *self.shape), generator=g, device=self.device, dtype=torch.float64, out=out)

    def uniforms(self, start: int, stop: int) -> Tensor:
        first, last = start // BLOCK, (stop - 1) // BLOCK
        out = torch.empty((stop - start, *self.shape), device=self.device, dtype=torch.float64)
        for k in range(first, last + 1):
            lo, hi = max(start, k * BLOCK), min(stop, (k + 1) * BLOCK)
            if hi - lo == BLOCK:
                self._fill(k, out[lo - start:hi - start])
                continue
            if self._cached is None or self._cached[0] != k:
                self._cached = (k, self._fill(k))
            out[lo - start:hi - start] = self._cached[1][lo - k * BLOCK:hi - k * BLOCK]
        return uniforms_as(out, self.dtype)
