"""Bias, variance, MSE(M) and cosine against M, per estimator and per layer, on random networks.

Networks: input 6 -> 4 -> 4 binary units -> squared-error readout to 4,
weight scale 2, several seeds. ``gs.evaluate`` gives every metric against the
exact binary gradient: exact values where the noise is discrete, Monte Carlo
(common random numbers, jackknife errors) otherwise; the cosine of the mean
of M > 1 draws always comes from Monte Carlo. MSE(M) = |bias|^2 + tr(Cov)/M:
its floor is the squared bias, its slope -1 part the variance. Bands: two
standard errors of the mean over the seeds.

    python analyses/fig_metrics.py [--quick] [--seed 0] [--device auto]
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import seaborn as sns

import gradstats as gs
from analyses._runner import Analysis, Reported, estimate, exact

MS = (1, 3, 10, 30, 100, 300, 1000)


def estimators():
    return [n for n in gs.estimators.names() if gs.estimators.get(n).max_layers is None]


def cells(config):
    seeds = range(config.seed, config.seed + (1 if config.quick else 12))
    n = 20_000 if config.quick else 400_000  # 20 batches of at least 1000: every M has a complete group
    return [{"seed": s, "num_samples": n, "estimators": estimators()} for s in seeds]


def compute(cell, config):
    problem = gs.problems.sbn([6, 4, 4], "squared_error", seed=cell["seed"], weight_scale=2.0)
    frame = gs.evaluate(problem, cell["estimators"], reference="binary", num_samples=cell["num_samples"], ms=MS,
                        seed=cell["seed"], device=config.device, progress=False)
    frame = frame[frame.coordinate == ""].drop(columns=["coordinate"])
    return frame.astype({"M": "float64", "num_samples": "float64"}).to_dict("records")


def plot(frame, meta, config):
    fig, axes = plt.subplots(2, 3, figsize=(9.6, 5.4), sharex=True)
    names = estimators()
    palette = dict(zip(names, sns.color_palette("tab20", len(names))))
    for col, layer in enumerate((0, 1, 2)):
        for row, metric in enumerate(("mse", "cosine_m")):
            sub = frame[(frame.metric == metric) & (frame.layer == layer)]
            ax = axes[row, col]
            sns.lineplot(sub, x="M", y="value", hue="estimator", palette=palette, errorbar=("se", 2), seed=0, ax=ax,
                         legend=(row == 0 and col == 2), linewidth=1, marker="o", markersize=3)
            ax.set_xscale("log")
            if metric == "mse":
                ax.set_yscale("log")
            ax.set_title(("all coordinates" if layer == 0 else f"layer {layer}") if row == 0 else "")
            ax.set_ylabel(("MSE of the mean of M draws" if metric == "mse" else "cosine(mean of M draws, g)") if col == 0
                          else "")
            ax.set_xlabel("M (draws averaged)")
    axes[0, 2].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title="estimator")
    fig.tight_layout()
    return fig


def _mean_over_networks(rows) -> Reported:
    """The mean over the seeded networks; its error combines each network's Monte Carlo error (the networks
    themselves are fixed by their seeds, so a rerun reproduces them)."""
    if (rows.method == "exact").all():
        return exact(rows.value.mean())
    return estimate(rows.value.mean(), (rows.stderr.pow(2).sum()) ** 0.5 / len(rows))


def numbers(frame, config):
    top = frame[frame.layer == 0]
    at = top.groupby(["estimator", "metric", "M"], dropna=False).value.mean()
    best_1000 = at.xs("mse", level="metric").xs(1000.0, level="M").idxmin()

    def rows(estimator, metric, m):
        return top[(top.estimator == estimator) & (top.metric == metric) & (top.M == m)]

    return {"metricsSeeds": str(frame.cell_seed.nunique()),
            "metricsStCosOne": _mean_over_networks(rows("st", "cosine_m", 1.0)),
            "metricsStCosThousand": _mean_over_networks(rows("st", "cosine_m", 1000.0)),
            "metricsReinforceCosThousand": _mean_over_networks(rows("reinforce", "cosine_m", 1000.0)),
            "metricsDisarmCosThousand": _mean_over_networks(rows("disarm", "cosine_m", 1000.0)),
            "metricsBestMseThousand": best_1000.replace("_", "\\_")}


ANALYSIS = Analysis("fig_metrics", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
