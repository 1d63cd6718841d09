"""Gradient quality during conditional computation: what each estimator's gater gradient is, along training.

The gated network of ``fig_conditional`` on the digits, trained with straight-through at the
learning rate its validation selection chose there (the same cells, read from its cache), is
stopped at a few epochs; at each checkpoint every estimator of Bernoulli gates
(``gradstats.conditional.GRADIENT_GATES``) estimates the gradient of the expected cross-entropy of
a fixed minibatch of 32 training images with respect to the gater's parameters
(``conditional.gater_gradient``: the expert and readout held fixed, the sparsity penalty left out,
since every estimator has its exact gradient). The reference is the mean of many DisARM draws from
an independent seed (unbiased; ``gs.estimate_reference``), whose standard error the bias carries;
REINFORCE uses the per-unit baseline of eq. 10 estimated from a pilot of independent draws (what
the paper's running averages track, held fixed so that it stays unbiased). Per layer of the gater
(``Wg1``: input to tanh units; ``Wg2``: tanh units to gates): the cosine of the estimator's mean
with the reference, its relative bias, its variance relative to the squared reference norm and
the probability that one draw has a coordinate's sign; means over three training seeds with
their standard errors; bands: 95% t intervals over the seeds.

    python analyses/fig_gate_gradients.py [--quick] [--seed 0] [--jobs N]
"""

from __future__ import annotations

import sys
from dataclasses import replace

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

import gradstats as gs
from analyses import fig_conditional
from analyses._runner import Analysis, estimate, exact, macro_part, mean_estimate, run_cells, t_interval
from gradstats import conditional as cc

MINIBATCH = 32
LAYERS = {"Wg1": "gater layer 1 (input to tanh, Wg1)", "Wg2": "gater layer 2 (tanh to gates, Wg2)"}
GROUPS = ("all", *LAYERS)
METRICS = ("cosine_mean", "relative_bias", "variance_trace", "sign_agreement_draw")


def _st_rate(config) -> float:
    """Straight-through's learning rate as fig_conditional's validation selection chose it (its cached cells)."""
    cond = replace(config, name="fig_conditional")
    selection = [c for c in fig_conditional._selection(cond) if c["gate"] == "st"]
    return fig_conditional.chosen_settings(run_cells(cond, selection, fig_conditional.compute))["st"][0]


def cells(config):
    epochs = (0, 1) if config.quick else (0, 1, 10, 40)
    seeds = (config.seed,) if config.quick else (config.seed, config.seed + 1, config.seed + 2)
    draws = 400 if config.quick else 8_000
    rate = _st_rate(config)
    return [{"seed": s, "epoch": e, "learning_rate": rate, "draws": draws,
             "reference_draws": (8 if config.quick else 16) * draws, "baseline_draws": draws // 2}
            for s in seeds for e in epochs]


def compute(cell, config):
    data = gs.datasets.digits(seed=0)
    settings = cc.Settings("st", learning_rate=cell["learning_rate"] * config.rate_factor,
                           epochs=max(cell["epoch"], 1))
    run = cc.train_gated(data, settings, cell["seed"], device="cpu", checkpoints=(cell["epoch"],))
    params = {k: v.to(torch.float64) for k, v in run.snapshots[cell["epoch"]].items()}
    gater = {k: params[k] for k in cc.GATER}
    x, y = data.train[0][:MINIBATCH].to(torch.float64), data.train[1][:MINIBATCH]
    loss, noise = cc.gater_gradient("disarm", params, x, y)
    reference, stderr = gs.estimate_reference(loss, gater, cell["reference_draws"], noise_shape=noise,
                                              chunk_size=500, seed=1_000_003 + cell["seed"])
    rows = []
    for gate in cc.GRADIENT_GATES:
        baseline = (cc.reinforce_baseline(params, x, y, cell["baseline_draws"], seed=2_000_003 + cell["seed"])
                    if gate == "reinforce" else 0.0)
        loss, noise = cc.gater_gradient(gate, params, x, y, baseline=baseline)
        stats = gs.gradient_stats(loss, gater, cell["draws"], noise_shape=noise, chunk_size=500, seed=cell["seed"],
                                  reference=reference, reference_stderr=stderr)
        frame = stats.to_frame(ms=(1,))
        frame = frame[frame.group.isin(GROUPS) & frame.metric.isin(METRICS)]
        rows += [{"estimator": gate, "group": r.group, "metric": r.metric, "value": r.value, "stderr": r.stderr}
                 for r in frame.itertuples()]
    for group in GROUPS:
        parts = cc.GATER if group == "all" else (group,)
        ref = torch.cat([reference[k].flatten() for k in parts])
        err = torch.cat([stderr[k].flatten() for k in parts])
        rows += [{"estimator": "reference", "group": group, "metric": "norm2", "value": float(ref.square().sum()),
                  "stderr": 0.0},
                 {"estimator": "reference", "group": group, "metric": "relative_stderr",
                  "value": float(err.norm() / ref.norm()), "stderr": 0.0}]
    return rows


def _with_relative_variance(frame):
    """Adds ``relative_variance``: the variance's trace over the reference's squared norm, per cell and group."""
    norm2 = frame[(frame.estimator == "reference") & (frame.metric == "norm2")]
    key = ["cell_seed", "cell_epoch", "group"]
    var = frame[frame.metric == "variance_trace"].merge(norm2[key + ["value"]].rename(columns={"value": "norm2"}),
                                                         on=key)
    var = var.assign(metric="relative_variance", value=var.value / var.norm2, stderr=var.stderr / var.norm2)
    return var.drop(columns="norm2")


PANELS = (("cosine_mean", "cosine of\nthe mean", None), ("relative_bias", "relative bias\n|E ĝ - g| / |g|", "log"),
          ("relative_variance", "variance\ntr Var ĝ / |g|²", "log"),
          ("sign_agreement_draw", "P(one draw's\nsign right)", None))


def plot(frame, meta, config):
    data = frame[frame.estimator.isin(cc.GRADIENT_GATES)]
    data = data[data.group.isin(list(LAYERS))]
    data = pd.concat([data, _with_relative_variance(frame[frame.group.isin(list(LAYERS))])])
    fig, axes = plt.subplots(len(PANELS), 2, figsize=(6.3, 7.3), sharex=True)
    palette = dict(zip(cc.GRADIENT_GATES, sns.color_palette("colorblind", len(cc.GRADIENT_GATES))))
    epochs = sorted(data.cell_epoch.unique())
    for row, (metric, label, scale) in enumerate(PANELS):
        for col, group in enumerate(LAYERS):
            ax = axes[row, col]
            sub = data[(data.metric == metric) & (data.group == group)].copy()
            sub["epoch"] = sub.cell_epoch.map(epochs.index)
            sns.lineplot(sub, x="epoch", y="value", hue="estimator", hue_order=list(cc.GRADIENT_GATES),
                         palette=palette, errorbar=t_interval, marker="o", markersize=4, ax=ax,
                         legend=(row, col) == (0, 1))
            ax.set(ylabel=label if col == 0 else "", xlabel="epochs of ST training" if row == len(PANELS) - 1 else "",
                   yscale=scale or "linear", title=LAYERS[group] if row == 0 else "",
                   xticks=range(len(epochs)), xticklabels=[str(int(e)) for e in epochs])
            if metric == "cosine_mean":
                ax.axhline(1.0, color="black", linewidth=0.5)
    handles, names = axes[0, 1].get_legend_handles_labels()
    axes[0, 1].get_legend().remove()
    fig.align_ylabels(axes[:, 0])
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return fig


def numbers(frame, config):
    last = frame.cell_epoch.max()

    def value(estimator, metric, group="all", epoch=last):
        """Mean over training seeds at one checkpoint, with its standard error over them."""
        sub = frame[(frame.estimator == estimator) & (frame.metric == metric) & (frame.group == group)
                    & (frame.cell_epoch == epoch)]
        if metric == "relative_variance":
            sub = _with_relative_variance(frame)
            sub = sub[(sub.estimator == estimator) & (sub.group == group) & (sub.cell_epoch == epoch)]
        if len(sub) == 1:
            return estimate(sub.value.iloc[0], sub.stderr.iloc[0])
        return mean_estimate(sub.value)

    ref = frame[(frame.estimator == "reference") & (frame.metric == "relative_stderr")]
    out = {"gatesEpochs": ", ".join(str(int(e)) for e in sorted(frame.cell_epoch.unique())),
           "gatesLastEpoch": str(int(last)), "gatesSeeds": str(frame.cell_seed.nunique()),
           "gatesDraws": f"{int(frame.cell_draws.iloc[0]):,}".replace(",", "{,}"),
           "gatesReferenceDraws": f"{int(frame.cell_reference_draws.iloc[0]):,}".replace(",", "{,}"),
           "gatesReferenceRelativeStderr": exact(ref.value.max(), 2),
           "gatesStRate": f"{frame.cell_learning_rate.iloc[0]:g}"}
    for gate in cc.GRADIENT_GATES:
        key = "gates" + macro_part(gate)
        out[key + "Cosine"] = value(gate, "cosine_mean")
        out[key + "CosineStart"] = value(gate, "cosine_mean", epoch=0)
        out[key + "RelativeBias"] = value(gate, "relative_bias")
        out[key + "RelativeVariance"] = value(gate, "relative_variance")
        out[key + "SignDraw"] = value(gate, "sign_agreement_draw")
    out["gatesStCosineLayerOne"] = value("st", "cosine_mean", "Wg1")
    out["gatesStCosineLayerTwo"] = value("st", "cosine_mean", "Wg2")
    return out


def verify_cells(config):
    """The reduced grid ``make check-figures`` recomputes against the committed rows: the first seed at the start."""
    return [c for c in cells(config) if c["seed"] == config.seed and c["epoch"] == 0]


ANALYSIS = Analysis("fig_gate_gradients", __doc__.splitlines()[0], cells, compute, plot, numbers, committed=True,
                    verify_cells=verify_cells, identity=("estimator", "group", "metric"))
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
