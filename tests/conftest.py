"""Hypothesis runs derandomized by default (reproducible CI); set
``GRADSTATS_HYPOTHESIS=explore`` to search with fresh randomness and more examples."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", derandomize=False, max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("explore" if os.environ.get("GRADSTATS_HYPOTHESIS") == "explore" else "ci")

torch.set_num_threads(1)
