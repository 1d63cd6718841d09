"""REINFORCE baselines: variance against the constant baseline with Eq. 10 marked, and the paper's
running averages converging to Eq. 10.

Left: exact variance of (h - p)(f - b) on one unit, f(b) = (b - t)^2,
t = 0.45, for three logits, against the constant b; dots at Eq. 10's
E[(h - p)^2 f] / E[(h - p)^2]. Middle: on a one-layer network (input 3 -> 4
units -> squared-error readout), the trace of the covariance against one
shared constant, with the trace at Eq. 10's per-unit baselines as a line.
Right: the paper's two running averages per unit (minibatches of 32,
decays 0.9 and 0.99) over training steps, against Eq. 10 (dashed).

    python analyses/fig_baselines.py [--quick] [--seed 0]
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

import gradstats as gs
import gradstats.functional as gf
from analyses._runner import Analysis, estimate, exact

TOY_LOGITS = (-1.0, 0.0, 2.0)


def network():
    return gs.problems.sbn([3, 4], "squared_error", seed=2, weight_scale=2.0)


def cells(config):
    grid = np.linspace(-1.0, 2.0, 7 if config.quick else 121).round(6).tolist()
    steps = 200 if config.quick else 3000
    out = [{"kind": "toy", "logit": a, "baselines": grid} for a in TOY_LOGITS]
    out.append({"kind": "network", "baselines": np.linspace(-2.0, 8.0, 7 if config.quick else 101).round(6).tolist()})
    seeds = range(config.seed, config.seed + (3 if config.quick else 10))   # a running average is one noisy trajectory
    out += [{"kind": "running", "decay": d, "steps": steps, "batch": 32, "seed": s} for d in (0.9, 0.99) for s in seeds]
    return out


def compute(cell, config):
    if cell["kind"] == "toy":
        problem = gs.problems.toy(0.45, cell["logit"])
        best = float(gs.estimators.optimal_baseline(problem)[0])
        rows = [{"baseline": b, "variance": float(gs.moments(problem, "reinforce", baseline=b).var[0]), "optimal": False}
                for b in cell["baselines"]]
        rows.append({"baseline": best, "variance": float(gs.moments(problem, "reinforce", baseline=best).var[0]),
                     "optimal": True})
        return rows
    problem = network()
    best = gs.estimators.optimal_baseline(problem)
    if cell["kind"] == "network":
        rows = [{"baseline": b, "trace": gs.moments(problem, "reinforce", baseline=b).trace, "optimal": False}
                for b in cell["baselines"]]
        rows.append({"baseline": float("nan"), "trace": gs.moments(problem, "reinforce", baseline="optimal").trace,
                     "optimal": True})
        return rows
    g = torch.Generator().manual_seed(cell["seed"])
    a = problem.logits(0, problem.x[None], batch_size=1).expand(cell["batch"], -1)
    state = gf.RunningBaseline.zeros(problem.num_units, decay=cell["decay"])
    rows = []
    for step in range(1, cell["steps"] + 1):
        h, _ = gf.reinforce(a, generator=g)
        state = state.update(h, torch.sigmoid(a), problem.loss(h))
        if step % 10 == 0 or step == 1:
            rows += [{"step": step, "unit": i, "value": float(v), "eq10": float(best[i])} for i, v in enumerate(state.value())]
    return rows


def plot(frame, meta, config):
    fig, grid = plt.subplots(2, 2, figsize=(6.3, 4.8))
    axes = [grid[0, 0], grid[0, 1], grid[1, 0]]
    toy = frame[frame.cell_kind == "toy"]
    palette = sns.color_palette("colorblind", 4)
    for color, (a, sub) in zip(palette, toy.groupby("cell_logit")):
        curve, best = sub[~sub.optimal.astype(bool)], sub[sub.optimal.astype(bool)]
        axes[0].plot(curve.baseline, curve.variance, color=color, linewidth=1, label=f"a = {a:g}")
        axes[0].plot(best.baseline, best.variance, "o", color=color, markersize=4)
    axes[0].set(xlabel="constant baseline b", ylabel="variance", title="one unit (dots: Eq. 10)")
    axes[0].legend()
    net = frame[frame.cell_kind == "network"]
    curve, best = net[~net.optimal.astype(bool)], net[net.optimal.astype(bool)]
    axes[1].plot(curve.baseline, curve.trace, color=palette[0], linewidth=1, label="one shared constant")
    axes[1].axhline(float(best.trace.iloc[0]), color="black", linestyle="--", linewidth=0.8, label="Eq. 10, per unit")
    axes[1].set(xlabel="shared constant baseline", ylabel="trace of the covariance", yscale="log",
                title="one-layer network")
    axes[1].legend()
    run = frame[frame.cell_kind == "running"]
    for color, (_unit, sub) in zip(palette, run.groupby("unit")):
        for decay, part in sub.groupby("cell_decay"):   # mean over seeds, band: the seeds' standard deviation
            by_step = part.groupby("step").value.agg(["mean", "std"])
            axes[2].plot(by_step.index, by_step["mean"], color=color, linewidth=1.4 if decay == 0.99 else 0.7,
                         linestyle="-" if decay == 0.99 else ":")
            axes[2].fill_between(by_step.index, by_step["mean"] - by_step["std"], by_step["mean"] + by_step["std"],
                                 color=color, alpha=0.25 if decay == 0.99 else 0.1, linewidth=0)
        axes[2].axhline(float(sub.eq10.iloc[0]), color=color, linestyle="--", linewidth=0.8)
    axes[2].set(xlabel="training step (minibatch of 32)", ylabel="running baseline",
                title=f"running averages, {run.cell_seed.nunique()} seeds")
    grid[1, 1].axis("off")
    grid[1, 1].legend(handles=[plt.Line2D([], [], color="0.3", linewidth=1.4, label="decay 0.99 (mean over seeds)"),
                               plt.Line2D([], [], color="0.3", linewidth=0.7, linestyle=":", label="decay 0.9"),
                               plt.Line2D([], [], color="0.3", linewidth=0.8, linestyle="--", label="Eq. 10"),
                               plt.matplotlib.patches.Patch(color="0.3", alpha=0.25, label="band: the seeds' sd")],
                      loc="center left", title="bottom left: one colour a unit", frameon=False)
    fig.tight_layout()
    return fig


def numbers(frame, config):
    net = frame[frame.cell_kind == "network"]
    curve, best = net[~net.optimal.astype(bool)], net[net.optimal.astype(bool)]
    run = frame[(frame.cell_kind == "running") & (frame.cell_decay == 0.99)]
    last = run[run.step == run.step.max()]
    toy = frame[(frame.cell_kind == "toy") & frame.optimal.astype(bool)]
    # per seed, the largest relative distance of a unit's running baseline from Eq. 10 at the last step
    worst = ((last.value - last.eq10).abs() / last.eq10.abs()).groupby(last.cell_seed).max()
    return {"baselineToyOptimalVariance": exact(float(toy.variance.max()), 2),
            "baselineSharedBestTrace": exact(curve.trace.min()), "baselineEqTenTrace": exact(best.trace.iloc[0]),
            "baselineNoneTrace": exact(curve.iloc[(curve.baseline - 0).abs().argmin()].trace),
            "runningRelErrorFinal": estimate(100 * worst.mean(), 100 * worst.sem() if len(worst) > 1 else float("nan")),
            "runningSeeds": str(len(worst)), "runningSteps": str(int(run.step.max()))}


ANALYSIS = Analysis("fig_baselines", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
