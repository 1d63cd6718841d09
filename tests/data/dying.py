"""A loss that ends the process evaluating it unless that is the test's own (for the sweep's dying-worker test)."""

import os

import torch


def loss_that_kills_workers(h: torch.Tensor) -> torch.Tensor:
    if str(os.getpid()) != os.environ.get("GRADSTATS_TEST_PARENT"):
        os._exit(3)
    return h.sum(-1)
