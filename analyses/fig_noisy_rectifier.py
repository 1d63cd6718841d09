"""The noisy rectifier: Proposition 1, and its gradient against the binary neuron's.

h = max(0, a + z). Top panels: Monte Carlo E[h] and P(h > 0) (2 standard
errors, too small to see) against softplus(a) and sigmoid(a), for logistic
noise (Proposition 1's assumption) and Gaussian noise of scale 1 (what the
experiments used). Bottom left: on one unit with f(h) = (h - t)^2, t = 0.45, the
estimator's Monte Carlo mean, the exact gradient of its own objective
E[f(max(0, a + z))] (midpoint rule over u, 1e6 points), and the exact
gradient of the binary neuron's objective.

    python analyses/fig_noisy_rectifier.py [--quick] [--seed 0] [--device auto]
"""

from __future__ import annotations

import math
import sys

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

import gradstats as gs
from analyses._runner import Analysis, estimate, exact, tex_number
from gradstats.noise import NoiseStream

T = 0.45


def cells(config):
    logits = np.linspace(-4, 4, 9 if config.quick else 41).round(6).tolist()
    n = 5_000 if config.quick else 400_000
    return [{"noise": noise, "logits": logits, "num_samples": n, "seed": config.seed} for noise in ("logistic", "gaussian")]


def own_gradient(a: float, noise: str, points: int = 1_000_000) -> float:
    """d/da E[(max(0, a + z) - t)^2] = E[2 (h - t) 1[a + z > 0]], by the midpoint rule over u."""
    u = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    s = a + gs.units.noise_quantile(u, noise)
    return float((2 * (s.clamp_min(0) - T) * (s > 0)).mean())


def compute(cell, config):
    rows = []
    n, a_all = cell["num_samples"], torch.tensor(cell["logits"], dtype=torch.float64)
    u = NoiseStream(cell["seed"], (a_all.numel(),), torch.device("cpu")).uniforms(0, n)
    h = gs.units.noisy_rectifier(a_all.expand(n, -1), u, noise=cell["noise"])
    for i, a in enumerate(cell["logits"]):
        problem = gs.problems.toy(T, a)
        m = gs.moments(problem, "noisy_rectifier", method="mc", num_samples=n, seed=cell["seed"], device=config.device,
                       noise=cell["noise"], progress=False)
        on = (h[:, i] > 0).double()
        rows.append({"logit": a, "mean_h": float(h[:, i].mean()), "mean_h_stderr": float(h[:, i].std() / math.sqrt(n)),
                     "p_positive": float(on.mean()), "p_positive_stderr": float(on.std() / math.sqrt(n)),
                     "softplus": math.log1p(math.exp(a)), "sigmoid": 1 / (1 + math.exp(-a)),
                     "estimator_mean": float(m.mean), "estimator_stderr": float(m.mean_stderr),
                     "own_gradient": own_gradient(a, cell["noise"]), "binary_gradient": float(gs.exact_gradient(problem))})
    return rows


def plot(frame, meta, config):
    fig, grid = plt.subplots(2, 2, figsize=(6.3, 4.6))
    axes = [grid[0, 0], grid[0, 1], grid[1, 0]]
    colors = dict(zip(("logistic", "gaussian"), sns.color_palette("colorblind", 2)))
    ref = frame[frame.cell_noise == "logistic"]
    axes[0].plot(ref.logit, ref.softplus, color="black", linewidth=0.8, label="softplus(a)")
    axes[1].plot(ref.logit, ref.sigmoid, color="black", linewidth=0.8, label="sigmoid(a)")
    for noise, sub in frame.groupby("cell_noise"):
        axes[0].errorbar(sub.logit, sub.mean_h, yerr=2 * sub.mean_h_stderr, fmt="o", markersize=2.5, color=colors[noise],
                         label=f"{noise} noise")
        axes[1].errorbar(sub.logit, sub.p_positive, yerr=2 * sub.p_positive_stderr, fmt="o", markersize=2.5,
                         color=colors[noise], label=f"{noise} noise")
        axes[2].errorbar(sub.logit, sub.estimator_mean, yerr=2 * sub.estimator_stderr, fmt="o", markersize=2.5,
                         color=colors[noise], label=f"estimator mean ({noise})")
        axes[2].plot(sub.logit, sub.own_gradient, color=colors[noise], linewidth=0.8, label=f"own objective ({noise})")
    axes[2].plot(ref.logit, ref.binary_gradient, color="black", linewidth=1.0, linestyle="--", label="binary objective")
    axes[0].set(xlabel="a", ylabel="E[h]", title="Prop. 1(b): E[h] = softplus(a)")
    axes[1].set(xlabel="a", ylabel="P(h > 0)", title="Prop. 1(a): P(h > 0) = sigmoid(a)")
    axes[2].set(xlabel="a", ylabel="gradient", title="f(h) = (h - 0.45)^2")
    for ax in axes[:2]:
        ax.legend(loc="upper left")
    grid[1, 1].axis("off")
    grid[1, 1].legend(*axes[2].get_legend_handles_labels(), loc="center left", frameon=False)
    fig.tight_layout()
    return fig


def numbers(frame, config):
    logistic, gaussian = frame[frame.cell_noise == "logistic"], frame[frame.cell_noise == "gaussian"]
    z = ((logistic.mean_h - logistic.softplus) / logistic.mean_h_stderr).abs().max()
    at0 = gaussian.iloc[(gaussian.logit - 0).abs().argmin()]
    # the largest |z| is a test statistic (how far the Monte Carlo means lie from softplus), not a measurement
    return {"nrLogisticMaxZ": tex_number(z, 2), "nrGaussianMeanAtZero": estimate(at0.mean_h, at0.mean_h_stderr),
            "nrGradAtZero": exact(at0.own_gradient), "nrBinaryGradAtZero": exact(at0.binary_gradient)}


ANALYSIS = Analysis("fig_noisy_rectifier", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
