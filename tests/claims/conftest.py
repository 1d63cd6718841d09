"""Claim tests run the registry's checks: deterministic by default, longer and fresh with
``GRADSTATS_HYPOTHESIS=explore``."""

import os

import pytest

from gradstats import claims


@pytest.fixture(scope="session")
def settings():
    # quick: the empirical checks' training is a smoke run (ST3's own task: 4 seeds of 5 epochs; its teacher-student
    # proxy: 4 report seeds); the reported verdicts come from `gradstats claims` and analyses/tab_claims.py at full size
    if os.environ.get("GRADSTATS_HYPOTHESIS") == "explore":
        return claims.CheckSettings.exploring()
    return claims.CheckSettings(quick=True)


@pytest.fixture(scope="session")
def verdict(settings):
    cache = {}

    def get(claim_id):
        if claim_id not in cache:
            cache[claim_id] = claims.run([claim_id], settings)[0]
        return cache[claim_id]

    return get
