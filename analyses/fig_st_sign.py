"""Straight-through's sign: where one unit's ST mean points the wrong way, and sign agreement against depth.

Left: on one unit with f(b) = (b - t)^2, the exact ST mean 2(p - t) against
the exact gradient p(1 - p)(1 - 2t), over a grid of (p, t): the wrong-sign
region. Right: on random networks of 1 to 4 layers (input 4, 3 binary units
a layer, squared-error readout to 4, weight scale 2), the fraction of
coordinates whose mean estimate has the sign of the exact gradient, per
estimator (exact where the noise is discrete, Monte Carlo otherwise).

    python analyses/fig_st_sign.py [--quick] [--seed 0] [--device auto]
"""

from __future__ import annotations

import math
import sys

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

import gradstats as gs
from analyses._runner import Analysis, estimate, exact
from gradstats.claims.common import gradient_scale
from gradstats.metrics import wrong_sign_coordinates

DEPTH_ESTIMATORS = ("st", "st_sigmoid", "sts", "st_gumbel", "gumbel", "reinforce", "arm")


def cells(config):
    grid = 11 if config.quick else 81
    ps = np.linspace(0.01, 0.99, grid).round(6).tolist()
    ts = np.linspace(-0.2, 1.2, grid).round(6).tolist()
    out = [{"kind": "region", "estimator": e, "ps": ps, "t": t} for e in ("st", "st_sigmoid") for t in ts]
    seeds = range(config.seed, config.seed + (2 if config.quick else 25))
    for depth in (1, 2, 3, 4):
        for seed in seeds:
            out.append({"kind": "depth", "depth": depth, "seed": seed, "estimators": list(DEPTH_ESTIMATORS),
                        "num_samples": 2_000 if config.quick else 200_000})
    return out


def compute(cell, config):
    if cell["kind"] == "region":
        rows = []
        for p in cell["ps"]:
            problem = gs.problems.toy(cell["t"], math.log(p / (1 - p)))
            g = gs.exact_gradient(problem)
            mean = gs.moments(problem, cell["estimator"]).mean
            rows.append({"p": p, "t": cell["t"], "wrong_sign": bool(wrong_sign_coordinates(mean, g, gradient_scale(problem))[0]),
                         "mean": float(mean), "gradient": float(g)})
        return rows
    problem = gs.problems.sbn([4] + [3] * cell["depth"], "squared_error", seed=cell["seed"], weight_scale=2.0)
    g = gs.exact_gradient(problem)
    scale = gradient_scale(problem)
    rows = []
    for name in cell["estimators"]:
        m = gs.moments(problem, name, method="auto", num_samples=cell["num_samples"], seed=cell["seed"],
                       device=config.device, full_covariance=False, progress=False)
        considered = g.abs() > 1e-9 * scale
        if m.mean_stderr is not None:  # Monte Carlo: count a coordinate only where its sign is resolved
            considered &= m.mean.abs() > 3 * m.mean_stderr
        right = ~wrong_sign_coordinates(m.mean, g, scale)
        rows.append({"estimator": name, "depth": cell["depth"], "seed": cell["seed"], "method": m.method,
                     "sign_agreement": float(right[considered].double().mean()) if considered.any() else float("nan"),
                     "coordinates": int(considered.sum()),
                     "cosine": float(torch.nn.functional.cosine_similarity(m.mean, g, dim=0))})
    return rows


def plot(frame, meta, config):
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 2.9), gridspec_kw={"width_ratios": [1, 1, 1.5]})
    region = frame[frame.cell_kind == "region"]
    for ax, est in zip(axes[:2], ("st", "st_sigmoid")):
        sub = region[region.cell_estimator == est].pivot_table(index="t", columns="p", values="wrong_sign", aggfunc="max")
        ax.imshow(sub.to_numpy(dtype=float), origin="lower", aspect="auto", cmap="Reds", vmin=0, vmax=1.3,
                  extent=[sub.columns.min(), sub.columns.max(), sub.index.min(), sub.index.max()])
        p = np.linspace(0.01, 0.99, 200)
        ax.plot(p, p, color="black", linewidth=0.6, linestyle="--")
        ax.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
        ax.set_xlabel("p = sigmoid(a)")
        ax.set_ylabel("target t" if est == "st" else "")
        ax.set_title(f"{est}: wrong sign in red")
    depth = frame[frame.cell_kind == "depth"].astype({"depth": int})
    sns.pointplot(depth, x="depth", y="sign_agreement", hue="estimator", ax=axes[2], dodge=0.4, errorbar=("ci", 95),
                  seed=0, markersize=3, linewidth=1)
    axes[2].set_ylabel("share of coordinates, right sign")
    axes[2].set_title("random networks (mean, 95% CI over seeds)")
    axes[2].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), title="estimator")
    return fig


def numbers(frame, config):
    region = frame[(frame.cell_kind == "region") & (frame.cell_estimator == "st")]
    depth = frame[frame.cell_kind == "depth"]
    def share(estimator, d):
        """Mean over networks; exact where every network's moments were, else with the spread over networks."""
        rows = depth[(depth.estimator == estimator) & (depth.depth == d)]
        if (rows.method == "exact").all():
            return exact(rows.sign_agreement.mean())
        return estimate(rows.sign_agreement.mean(), rows.sign_agreement.sem())

    return {"stSignRegionShare": exact(region.wrong_sign.mean()),
            "stSignDepthOne": share("st", 1), "stSignDepthFour": share("st", 4),
            "stSigmoidSignDepthFour": share("st_sigmoid", 4),
            "stSignSeeds": str(depth.seed.nunique())}


ANALYSIS = Analysis("fig_st_sign", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
