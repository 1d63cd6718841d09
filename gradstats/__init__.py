"""gradstats: exact and Monte Carlo statistics of gradient estimators for stochastic neurons.

Revisits Bengio, Léonard & Courville (2013), arXiv:1308.3432, on networks small
enough that every binary state can be enumerated.
"""

from . import claims, enumeration, estimators, functional, losses, metrics, problems, stats, training, units
from .accumulators import Moments
from .evaluation import evaluate
from .exact import exact_gradient, exact_loss, exact_moments
from .moments import moments

__all__ = [
    "Moments",
    "claims",
    "enumeration",
    "evaluate",
    "estimators",
    "exact_gradient",
    "exact_loss",
    "exact_moments",
    "functional",
    "losses",
    "moments",
    "metrics",
    "problems",
    "stats",
    "training",
    "units",
]

__version__ = "0.1.0"
