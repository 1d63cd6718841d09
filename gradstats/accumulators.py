r"""Weighted streaming moments in float64 and the :class:`Moments` result.

Chunks are merged with the pairwise update of Chan, Golub & LeVeque (1979,
"Updating formulae and a pairwise algorithm for computing sample variances"):
a chunk of total weight :math:`w_c`, mean :math:`m_c` and centred second
moment :math:`M_c` joins the running totals :math:`(w, m, M)` as

.. math:: \delta = m_c - m,\quad m \mathrel{+}= \delta\,w_c / (w + w_c),\quad
          M \mathrel{+}= M_c + \delta\delta^\top\,w\,w_c / (w + w_c),

so no sum of squares of large numbers is ever differenced. Weights are the
probabilities of enumerated outcomes (exact) or ones (Monte Carlo).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Moments", "MomentAccumulator"]


@dataclass(frozen=True)
class Moments:
    """First and second moments of one estimator's per-draw gradient.

    Attributes:
        mean: ``E[g_hat]``, ``[D]`` float64.
        var: per-coordinate variance, ``[D]``.
        cov: full covariance ``[D, D]`` (``None`` when not asked for or D is large).
        num_samples: Monte Carlo draws used; ``None`` for exact moments.
        mean_stderr: standard error of ``mean`` (Monte Carlo only).
        loss_evals_per_draw: loss evaluations one draw needs.
        method: ``"exact"`` or ``"mc"``.
        estimator: the estimator's name.
        num_outcomes: enumerated outcomes (exact only).
    """

    mean: Tensor
    var: Tensor
    cov: Tensor | None
    num_samples: int | None
    mean_stderr: Tensor | None
    loss_evals_per_draw: int
    method: str
    estimator: str
    num_outcomes: int | None = None

    @property
    def trace(self) -> float:
        """``trace(Cov[g_hat])``."""
        return float(self.var.sum())


class MomentAccumulator:
    """Streaming weighted mean, per-coordinate and (optionally) full centred second moments."""

    def __init__(self, dim: int, full_covariance: bool, device: torch.device | str = "cpu"):
        self.weight = 0.0
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(dim, dtype=torch.float64, device=device)
        self.comoment = torch.zeros(dim, dim, dtype=torch.float64, device=device) if full_covariance else None

    def add(self, values: Tensor, weights: Tensor | None = None) -> None:
        """Merge a chunk ``values [C, D]`` with ``weights [C]`` (ones when ``None``)."""
        values = values.to(torch.float64)
        self.count += values.shape[0]
        if weights is None:
            w_c = float(values.shape[0])
            mean_c = values.mean(0)
            centred = values - mean_c
            weighted = centred
        else:
            weights = weights.to(torch.float64)
            w_c = float(weights.sum())
            if w_c == 0.0:
                return
            mean_c = (weights @ values) / w_c
            centred = values - mean_c
            weighted = centred * weights[:, None]
        m2_c = (weighted * centred).sum(0)
        self.merge(w_c, mean_c, m2_c, weighted.T @ centred if self.comoment is not None else None)

    def merge(self, w_c: float, mean_c: Tensor, m2_c: Tensor, comoment_c: Tensor | None = None) -> None:
        """Merge a chunk given by its total weight, mean and centred second moments."""
        total = self.weight + w_c
        delta = mean_c - self.mean
        factor = self.weight * w_c / total
        self.mean += delta * (w_c / total)
        self.m2 += m2_c + delta.square() * factor
        if self.comoment is not None:
            self.comoment += comoment_c + torch.outer(delta, delta) * factor
        self.weight = total
