"""The noise stream is its definition: block ``k`` of stream ``seed`` is ``torch.rand`` of a generator seeded from
numpy's ``SeedSequence([seed, k])``, and a chunk of draws is cut from whole blocks."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gradstats import noise
from gradstats.noise import BLOCK, NoiseStream, block_seed, block_seeds


def seed_sequence_seed(seed: int, block: int, extra: tuple[int, ...] = ()) -> int:
    state = np.random.SeedSequence([seed, block, *extra]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@given(seed=st.integers(0, 2**63 - 1), first=st.integers(0, 2**37), count=st.integers(1, 40),
       extra=st.lists(st.integers(0, 2**40), max_size=4))
def test_block_seeds_are_numpys_seed_sequence_bit_for_bit(seed, first, count, extra):
    expected = [seed_sequence_seed(seed, k, tuple(extra)) for k in range(first, first + count)]
    assert block_seeds(seed, first, count, tuple(extra)) == expected


def test_block_seeds_across_the_two_word_block_numbers():
    first = 2**32 - 3   # block numbers from 2^32 on are two entropy words
    assert block_seeds(7, first, 6) == [seed_sequence_seed(7, k) for k in range(first, first + 6)]
    assert block_seed(0, 0) == seed_sequence_seed(0, 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": -1}, "seed must be an integer"), ({"seed": 1.5}, "seed must be an integer"),
    ({"first": -3}, "first must be an integer"), ({"count": 0}, "count must be an integer >= 1"),
    ({"extra": (-1,)}, "extra entries must be an integer"),
])
def test_block_seeds_refuse_bad_arguments_by_name(kwargs, match):
    arguments = {"seed": 0, "first": 0, "count": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        block_seeds(**arguments)


def definition(seed: int, shape: tuple, start: int, stop: int, dtype=torch.float64) -> torch.Tensor:
    """One generator per block, each block drawn whole, then cut (what the stream must equal)."""
    blocks = []
    for k in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        g = torch.Generator().manual_seed(seed_sequence_seed(seed, k))
        blocks.append(torch.rand((BLOCK, *shape), generator=g, dtype=torch.float64))
    u = torch.cat(blocks)[start - start // BLOCK * BLOCK:stop - start // BLOCK * BLOCK]
    return noise.uniforms_as(u, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_stream_equals_its_definition_for_pieces_of_any_size(dtype, monkeypatch):
    monkeypatch.setattr(noise, "_SEED_WINDOW", 2)   # block seeds are computed for windows of 2 blocks here
    shape = (1, 3)
    stream = NoiseStream(9, shape, torch.device("cpu"), dtype)
    # consecutive pieces: inside a block, across a boundary, whole blocks, windows of block seeds crossed
    cuts = [0, 5, BLOCK - 1, BLOCK + 2, 3 * BLOCK, 3 * BLOCK + 1, 6 * BLOCK - 7, 6 * BLOCK + 9]
    for start, stop in zip(cuts, cuts[1:]):
        u = stream.uniforms(start, stop)
        assert u.dtype == dtype and u.shape == (stop - start, *shape)
        assert torch.equal(u, definition(9, shape, start, stop, dtype)), (start, stop)
    # a piece far from the last one, and back
    far = (10 * BLOCK - 3, 10 * BLOCK + 4)
    assert torch.equal(stream.uniforms(*far), definition(9, shape, *far, dtype))
    assert torch.equal(stream.uniforms(1, 4), definition(9, shape, 1, 4, dtype))


def test_float32_uniforms_are_the_float64_ones_rounded_down_to_the_grid_of_2_to_the_minus_24():
    """uniforms_as(u, float32) is floor(u 2^24) / 2^24 exactly (held to fractions), for uniforms of torch.rand and at
    the edges: 0, the least uniform, just below a grid point, and the largest uniform below 1 (which stays below)."""
    edges = [0.0, 2.0**-53, 0.5 - 2.0**-54, 0.5, 3 * 2.0**-24 - 2.0**-60, 1 - 2.0**-53]
    u = torch.cat([torch.rand(1000, generator=torch.Generator().manual_seed(4), dtype=torch.float64),
                   torch.tensor(edges, dtype=torch.float64)])
    got = noise.uniforms_as(u, torch.float32)
    assert got.dtype == torch.float32 and float(got.max()) < 1.0
    assert got.tolist() == [math.floor(Fraction(x) * 2**24) / 2**24 for x in u.tolist()]
