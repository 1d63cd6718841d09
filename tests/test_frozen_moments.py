"""Exact results do not move: every estimator's exact mean and variance on seeded problems against the table
frozen in ``tests/data/exact_moments.json`` (written by ``python -m tests.data.freeze_exact_moments``).

Bit-identical is the expectation; a refactoring that only reorders operations may move a value by at most
1e-12 relative to the largest magnitude of its vector."""

import json

import pytest
import torch

from tests.data import freeze_exact_moments as frozen

TABLE = json.loads(frozen.PATH.read_text())
CASES = [(problem, label) for problem, rows in TABLE.items() for label in rows]


@pytest.fixture(scope="module")
def current():
    return frozen.table()


def _values(hexes: list[str]) -> torch.Tensor:
    return torch.tensor([float.fromhex(h) for h in hexes], dtype=torch.float64)


def test_the_table_covers_every_estimator_with_exact_moments(current):
    assert set(current) == set(TABLE)
    for problem, rows in current.items():
        assert set(rows) == set(TABLE[problem]), problem


@pytest.mark.parametrize("problem, label", CASES)
def test_exact_moments_match_the_frozen_table(current, problem, label):
    mean = _values(TABLE[problem][label]["mean"])
    for key, hexes in TABLE[problem][label].items():
        expected, got = _values(hexes), _values(current[problem][label][key])
        scale = float(expected.abs().max()) or 1.0
        if key != "mean":   # second moments are differences of terms of size mean^2: rounding is relative to that
            scale = max(scale, float(mean.square().max()))
        assert torch.allclose(got, expected, rtol=0, atol=1e-12 * scale), (problem, label, key)
