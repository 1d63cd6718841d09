"""Small numerical helpers every layer of the library uses (imports nothing from gradstats)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["safe_divide", "positive_int"]


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (a ratio of averages before any weight has arrived)."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, 1.0), 0.0)


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1 (integral floats such as 1e6 accepted), else a ValueError naming ``name``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value
