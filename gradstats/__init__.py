"""gradstats: exact and Monte Carlo statistics of gradient estimators for stochastic neurons.

Revisits Bengio, Léonard & Courville (2013), arXiv:1308.3432, on networks small
enough that every binary state can be enumerated.
"""

import importlib

from . import conditional, datasets, enumeration, estimators, functional, losses, metrics, problems, stats, training, units
from .accumulators import Moments
from .evaluation import evaluate
from .exact import exact_gradient, exact_loss, exact_moments
from .gradient_stats import GradientStats, estimate_reference, gradient_stats, per_draw_gradients
from .module_stats import module_gradient_stats, module_per_draw_gradients
from .moments import moments
from .sweep import sweep

__all__ = [
    "GradientStats",
    "Moments",
    "claims",
    "conditional",
    "datasets",
    "enumeration",
    "evaluate",
    "estimators",
    "exact_gradient",
    "exact_loss",
    "exact_moments",
    "estimate_reference",
    "functional",
    "gradient_stats",
    "losses",
    "moments",
    "metrics",
    "module_gradient_stats",
    "module_per_draw_gradients",
    "per_draw_gradients",
    "problems",
    "stats",
    "sweep",
    "training",
    "units",
]

__version__ = "0.1.0"

# Imported on first use, so that `import gradstats` does not import hypothesis (the claims registry and the
# public strategies need it; the instrument does not).
_LAZY = ("audit", "claims", "testing")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
