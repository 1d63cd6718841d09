"""STS: how fast E[f(h)] approaches f(p), and what its back-propagated gradient is worth.

Top: |E[f(h)] - f(p)| for the STS unit against p on log-log axes, exact
(``gs.exact_loss(..., "sts")``), with reference slopes 1/2 (the paper's
o(sqrt p) bound), 3/2 and 2 (f(h) = h is left out: its error is exactly 0).
Bottom: on one unit, the exact mean of the STS estimator (back-propagation
with b held fixed) divided by the exact gradient of the STS objective and of
the binary objective. As p -> 0 the first ratio tends to k/(k + 1) when
f(h) - f(0) ~ c h^k: 1/2 whenever f'(0) != 0. The y axes show [-0.6, 1.6], so the ratio's pole where
an exact gradient crosses 0 (for (h - 0.45)^2) runs off them.

    python analyses/fig_sts.py [--quick] [--seed 0]
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

# name -> loss on h[..., 1]
FUNCTIONS = {
    "h": lambda h: h[..., 0],
    "h^2": lambda h: h[..., 0] ** 2,
    "h^2 + h": lambda h: h[..., 0] ** 2 + h[..., 0],
    "exp(h)": lambda h: torch.exp(h[..., 0]),
    "sin(h)": lambda h: torch.sin(h[..., 0]),
    "h^3": lambda h: h[..., 0] ** 3,
    "(h - 0.45)^2": lambda h: (h[..., 0] - 0.45) ** 2,
}


def cells(config):
    ps = np.logspace(-7, -0.3, 8 if config.quick else 60).tolist()
    return [{"function": name, "ps": ps} for name in FUNCTIONS]


def compute(cell, config):
    f = FUNCTIONS[cell["function"]]
    rows = []
    for p in cell["ps"]:
        problem = gs.problems.independent(gs.losses.Loss(f, name=cell["function"]), [math.log(p) - math.log1p(-p)])
        value = gs.exact_loss(problem, "sts")
        f_p = float(f(torch.tensor([[p]], dtype=torch.float64)))
        mean = float(gs.moments(problem, "sts").mean)
        own, binary = float(gs.exact_gradient(problem, "sts")), float(gs.exact_gradient(problem))
        rows.append({"p": p, "error": abs(value - f_p), "sts_mean": mean, "own_gradient": own, "binary_gradient": binary,
                     "ratio_own": mean / own if own else float("nan"), "ratio_binary": mean / binary if binary else float("nan")})
    return rows


def plot(frame, meta, config):
    """Top left: the error's order against p; top right: the legend; bottom: the STS mean over the exact
    gradient of the STS objective and of the binary one."""
    fig, axes = plt.subplots(2, 2, figsize=(6.3, 4.6))
    palette = dict(zip(FUNCTIONS, sns.color_palette("colorblind", len(FUNCTIONS))))
    err = frame[frame.cell_function != "h"]  # E[h] = p exactly: its error is rounding
    sns.lineplot(err, x="p", y="error", hue="cell_function", palette=palette, ax=axes[0, 0], linewidth=1.2)
    p = np.array([1e-7, 1e-1])
    for slope, style in ((0.5, ":"), (1.5, "--"), (2.0, "-.")):
        axes[0, 0].plot(p, 1e-2 * (p / 1e-1) ** slope, color="black", linestyle=style, linewidth=0.8,
                        label=f"p^{slope:g}")
    axes[0, 0].set(xscale="log", yscale="log", xlabel="p", ylabel="|E[f(h)] - f(p)|", title="Prop. 2(c): the error's order")
    axes[0, 0].get_legend().remove()
    handles = [plt.Line2D([], [], color=palette[f], linewidth=1.2, label=f) for f in FUNCTIONS if f in set(frame.cell_function)]
    handles += [h for h in axes[0, 0].get_lines() if h.get_label().startswith("p^")]
    axes[0, 1].axis("off")
    axes[0, 1].legend(handles=handles, loc="center", ncol=2, title="f(h); top left: slopes", frameon=False)
    for ax, col, ref in ((axes[1, 0], "ratio_own", "STS objective"), (axes[1, 1], "ratio_binary", "binary objective")):
        sns.lineplot(frame, x="p", y=col, hue="cell_function", palette=palette, ax=ax, linewidth=1.2, legend=False)
        ax.axhline(0.5, color="black", linestyle=":", linewidth=0.8)
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set(xscale="log", xlabel="p", ylabel="STS mean / exact gradient" if col == "ratio_own" else "",
               title=f"against the {ref}", ylim=(-0.6, 1.6))
    fig.tight_layout()
    return fig


def numbers(frame, config):
    small = frame[frame.p == frame.p.min()]
    slopes = {}
    for name, sub in frame[frame.cell_function != "h"].groupby("cell_function"):
        tail = sub[sub.p < 1e-3]
        slopes[name] = np.polyfit(np.log(tail.p), np.log(tail.error), 1)[0]
    return {"stsSlopeSquare": exact(slopes["h^2"]), "stsSlopeCube": exact(slopes["h^3"]),
            "stsRatioOwnSmallP": exact(small[small.cell_function.isin(["h", "h^2 + h", "exp(h)", "sin(h)"])]
                                            .ratio_own.median()),
            "stsRatioOwnSmallPSquare": exact(small[small.cell_function == "h^2"].ratio_own.iloc[0]),
            "stsRatioBinaryLinear": exact(frame[frame.cell_function == "h"].ratio_binary.median()),
            "stsSmallestP": exact(frame.p.min(), 2)}


ANALYSIS = Analysis("fig_sts", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
