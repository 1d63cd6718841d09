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
    """Left: ST's wrong-sign region for t in [0, 1] (the sigmoid variant's is the same region: its mean is ST's
    times sigmoid'(a) > 0). Right: sign agreement against depth, a line per estimator with a band of one
    standard error over networks."""
    fig, axes = plt.subplots(1, 2, figsize=(6.5, 2.9), gridspec_kw={"width_ratios": [1, 1.35]})
    region = frame[(frame.cell_kind == "region") & (frame.cell_estimator == "st")]
    sub = region.pivot_table(index="t", columns="p", values="wrong_sign", aggfunc="max")
    ax = axes[0]
    ax.pcolormesh(sub.columns, sub.index, sub.to_numpy(dtype=float), cmap="Reds", vmin=0, vmax=1.3, shading="nearest",
                  rasterized=True)
    p = np.linspace(0.01, 0.99, 200)
    ax.plot(p, p, color="black", linewidth=0.8, linestyle="--")
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    ax.text(0.03, 0.52, "t = 1/2", fontsize=7, va="bottom")
    ax.text(0.58, 0.66, "t = p", fontsize=7, rotation=45, va="bottom", ha="center")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="p = sigmoid(a)", ylabel="target t", title="ST's wrong sign (red)")
    depth = frame[frame.cell_kind == "depth"].astype({"depth": int})
    summary = depth.groupby(["estimator", "depth"]).sign_agreement.agg(["mean", "sem"]).reset_index()
    colours = dict(zip(DEPTH_ESTIMATORS, sns.color_palette("colorblind", len(DEPTH_ESTIMATORS))))
    ax = axes[1]
    for name in DEPTH_ESTIMATORS:
        rows = summary[summary.estimator == name]
        if rows.empty:
            continue
        exact_rows = (depth[depth.estimator == name].method == "exact").all()
        under = name == "reinforce"   # drawn wide beneath arm, which it overlaps where both are right everywhere
        ax.plot(rows.depth, rows["mean"], marker="o", markersize=5 if under else 3, color=colours[name],
                linewidth=3.5 if under else 1.2, linestyle="--" if exact_rows else "-", label=name,
                zorder=1 if under else 2)
        ax.fill_between(rows.depth, rows["mean"] - rows["sem"], rows["mean"] + rows["sem"], color=colours[name],
                        alpha=0.2, linewidth=0)
    ax.set(xticks=[1, 2, 3, 4], xlabel="stochastic layers", ylabel="share of coordinates\nwith the right sign",
           title=f"random networks ({depth.seed.nunique()} per depth)")
    ax.plot([], [], color="0.3", linestyle="--", label="(dashed: exact)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
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

    sigmoid = frame[(frame.cell_kind == "region") & (frame.cell_estimator == "st_sigmoid")]
    ours = region.set_index(["p", "t"]).wrong_sign
    same = ours.equals(sigmoid.set_index(["p", "t"]).wrong_sign.reindex(ours.index))
    outside = region[(region.t < 0) | (region.t > 1)]
    return {"stSignRegionShare": exact(region.wrong_sign.mean()),
            "stSigmoidSameRegion": "the same" if same else "not the same",
            "stSignWrongOutsideUnit": str(int(outside.wrong_sign.sum())),
            "stSignDepthOne": share("st", 1), "stSignDepthFour": share("st", 4),
            "stSigmoidSignDepthFour": share("st_sigmoid", 4),
            "stSignSeeds": str(depth.seed.nunique())}


ANALYSIS = Analysis("fig_st_sign", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
