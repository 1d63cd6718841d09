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
from gradstats.metrics import compute_metrics, wrong_sign_coordinates

TARGETS = (0.45, 0.499)


def cells(config):
    logits = np.linspace(-6, 6, 7 if config.quick else 49).round(6).tolist()
    n = 2_000 if config.quick else 200_000
    return [{"t": t, "estimator": e, "logits": logits, "num_samples": n, "seed": config.seed}
            for t in TARGETS for e in gs.estimators.names(kind="toy")]


def compute(cell, config):
    est = gs.estimators.get(cell["estimator"])
    rows = []
    for a in cell["logits"]:
        problem = gs.problems.toy(cell["t"], a)
        g = float(gs.exact_gradient(problem))
        m = gs.moments(problem, est.name, method="auto", num_samples=cell["num_samples"], seed=cell["seed"],
                       device=config.device, progress=False)
        sd = math.sqrt(float(m.var))
        sd_stderr = 0.0
        if m.method == "mc":   # the jackknife error of the variance, through d sd = d var / (2 sd)
            var = next(r for r in compute_metrics(m, problem, torch.tensor([g]), "exact", ms=()) if r.metric == "variance")
            sd_stderr = var.stderr / (2 * sd) if sd > 0 else math.nan
        rows.append({"logit": a, "p": 1 / (1 + math.exp(-a)), "gradient": g, "mean": float(m.mean),
                     "bias": float(m.mean) - g, "sd": sd, "sd_stderr": sd_stderr,
                     "bias_stderr": 0.0 if m.mean_stderr is None else float(m.mean_stderr), "method": m.method})
    return rows


PATHWISE = ("st", "st_sigmoid", "reinmax", "st_gumbel", "gumbel_rao", "gumbel", "sts", "noisy_rectifier")
UNBIASED = ("reinforce", "reinforce_loo", "arm", "disarm", "arms", "double_cv", "rebar", "relax", "local_expectation")
FAMILIES = {"pathwise (biased)": PATHWISE, "unbiased": UNBIASED}
OFF_AXIS = "noisy_rectifier"   # its bias grows with the logit, so it is drawn to the pathwise panels' edge and named


def _note(ax, text: str) -> None:
    """A remark in a panel's lower right corner, on white."""
    ax.text(0.97, 0.04, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})


def plot(frame, meta, config):
    """Rows: each family's bias, then each family's standard deviation; columns: the targets. Bands: two
    standard errors of the Monte Carlo estimates (exact values have none)."""
    fig, axes = plt.subplots(4, len(TARGETS), figsize=(6.5, 7.2), sharex=True, sharey="row", squeeze=False)
    colours = {name: colour for members in FAMILIES.values()
               for name, colour in zip(members, sns.color_palette("colorblind", len(members)))}
    rows = [(family, "bias", members) for family, members in FAMILIES.items()]
    rows += [(family, "sd", members) for family, members in FAMILIES.items()]
    in_frame = set(frame.cell_estimator)
    for r, (family, metric, members) in enumerate(rows):
        for c, t in enumerate(TARGETS):
            ax = axes[r, c]
            if metric == "bias":
                ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
            for name in (m for m in members if m in in_frame):
                sub = frame[(frame.cell_t == t) & (frame.cell_estimator == name)].sort_values("logit")
                err = 2 * sub[f"{metric}_stderr"]
                ax.plot(sub.logit, sub[metric], color=colours[name], linewidth=1.2, label=name)
                ax.fill_between(sub.logit, sub[metric] - err, sub[metric] + err, color=colours[name], alpha=0.25,
                                linewidth=0)
            if metric == "sd":
                ax.set_yscale("log")
            ax.set_title(f"t = {t}" if r == 0 else "")
        if metric == "bias" and OFF_AXIS in members:
            others = frame[frame.cell_estimator.isin([m for m in members if m != OFF_AXIS])]
            low, high = others.bias.min(), others.bias.max()
            pad = 0.08 * (high - low)
            axes[r, 0].set_ylim(low - pad, high + pad)
            top = frame[frame.cell_estimator == OFF_AXIS].bias.max()
            for ax in axes[r]:
                _note(ax, f"{OFF_AXIS} leaves the axis\n(bias up to {top:.3g})")
        if metric == "sd":
            sds = frame[frame.cell_estimator.isin(members)]
            low = sds[sds.sd > 0].sd
            axes[r, 0].set_ylim(max(low.min() / 2, 1e-6), low.max() * 3)
            # a standard deviation that is 0 up to rounding has no place on a log axis: say so
            zero = [m for m in members if m in in_frame and (sds[sds.cell_estimator == m].sd <= 1e-12 * low.max()).all()]
            for ax in axes[r] if zero else ():
                _note(ax, "0 (up to rounding): " + ", ".join(zero))
        axes[r, 0].set_ylabel(f"{'bias' if metric == 'bias' else 'standard deviation'}\n{family}")
        if metric == "bias":
            axes[r, -1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel("logit a")
    fig.tight_layout()
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
            "toyGridPoints": str(frame.logit.nunique()),
            "toyDraws": f"{int(frame.cell_num_samples.max()):,}".replace(",", "{,}")}


ANALYSIS = Analysis("fig_toy", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
