"""The (b - t)^2 toy: bias and standard deviation of every estimator against the logit.

One binary unit h with f(h) = (h - t)^2, t = 0.45 and 0.499 (near 1/2 the
gradient p(1 - p)(1 - 2t) is tiny while ST's mean 2(p - t) is not). Exact
moments for estimators with discrete noise, Monte Carlo with the same seed
(common random numbers) otherwise.

    python analyses/fig_toy.py [--quick] [--seed 0] [--device auto]
"""

from __future__ import annotations

import math
import sys

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

import gradstats as gs
from analyses._runner import Analysis, exact
from gradstats.metrics import wrong_sign_coordinates

TARGETS = (0.45, 0.499)


def cells(config):
    logits = np.linspace(-6, 6, 7 if config.quick else 49).round(6).tolist()
    n = 2_000 if config.quick else 200_000
    return [{"t": t, "estimator": e, "logits": logits, "num_samples": n, "seed": config.seed}
            for t in TARGETS for e in gs.estimators.names()]


def compute(cell, config):
    est = gs.estimators.get(cell["estimator"])
    rows = []
    for a in cell["logits"]:
        problem = gs.problems.toy(cell["t"], a)
        g = float(gs.exact_gradient(problem))
        m = gs.moments(problem, est.name, method="auto", num_samples=cell["num_samples"], seed=cell["seed"],
                       device=config.device, progress=False)
        rows.append({"logit": a, "p": 1 / (1 + math.exp(-a)), "gradient": g, "mean": float(m.mean),
                     "bias": float(m.mean) - g, "sd": math.sqrt(float(m.var)),
                     "bias_stderr": 0.0 if m.mean_stderr is None else float(m.mean_stderr), "method": m.method})
    return rows


def plot(frame, meta, config):
    fig, axes = plt.subplots(2, len(TARGETS), figsize=(7.2, 5.0), sharex=True)
    palette = dict(zip(gs.estimators.names(), sns.color_palette("tab20", len(gs.estimators.names()))))
    for col, t in enumerate(TARGETS):
        sub = frame[frame.cell_t == t]
        for row, (metric, label) in enumerate((("bias", "bias against the exact gradient"), ("sd", "standard deviation"))):
            ax = axes[row, col]
            sns.lineplot(sub, x="logit", y=metric, hue="cell_estimator", palette=palette, ax=ax, legend=(row == 0 and col == 1),
                         linewidth=1)
            ax.set_ylabel(label if col == 0 else "")
            ax.set_title(f"t = {t}" if row == 0 else "")
            if metric == "bias":
                ax.set_yscale("symlog", linthresh=1e-3)
                ax.plot(sub.logit.unique(), 0 * sub.logit.unique(), color="black", linewidth=0.5)
            else:
                ax.set_yscale("log")
    axes[0, 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title="estimator")
    fig.suptitle("One unit, f(b) = (b - t)^2: bias and spread of each estimator", fontsize=9)
    return fig


def numbers(frame, config):
    st = frame[(frame.cell_estimator == "st") & (frame.cell_t == 0.45)]
    at_zero = st.iloc[(st.logit - 0).abs().argmin()]
    wrong = st[[bool(wrong_sign_coordinates(torch.tensor([m]), torch.tensor([g]))[0])
                for m, g in zip(st["mean"], st.gradient)]]
    st499 = frame[(frame.cell_estimator == "st") & (frame.cell_t == 0.499)]
    ratio = (st499["mean"].abs() / st499.gradient.abs()).median()            # the median of |ratio|
    signed = (st499["mean"] / st499.gradient).median()                        # and of the signed ratio
    return {"toyStBiasAtZero": exact(at_zero.bias), "toyStGradientAtZero": exact(at_zero.gradient),
            "toyStWrongSignMaxLogit": exact(wrong.logit.max() if len(wrong) else float("nan")),
            "toyStMedianRatioNearHalf": exact(ratio), "toyStMedianSignedRatioNearHalf": exact(signed),
            "toyGridPoints": str(frame.logit.nunique())}


ANALYSIS = Analysis("fig_toy", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
