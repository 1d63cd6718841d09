"""Claim tests run the registry's checks: deterministic by default, longer and fresh with
``GRADSTATS_HYPOTHESIS=explore``."""

import os

import pytest

from gradstats import claims


@pytest.fixture(scope="session")
def settings():
    return claims.CheckSettings.exploring() if os.environ.get("GRADSTATS_HYPOTHESIS") == "explore" else claims.CheckSettings()


@pytest.fixture(scope="session")
def verdict(settings):
    cache = {}

    def get(claim_id):
        if claim_id not in cache:
            cache[claim_id] = claims.run([claim_id], settings)[0]
        return cache[claim_id]

    return get
