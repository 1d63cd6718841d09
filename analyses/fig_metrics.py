"""MSE and cosine of the mean of draws at equal cost in loss evaluations, per estimator and per layer.

Networks: input 6 -> 4 -> 4 binary units -> squared-error readout to 4,
weight scale 2, several seeds. ``gs.evaluate`` gives every metric against the
exact binary gradient: exact values where the noise is discrete, Monte Carlo
(common random numbers, jackknife errors) otherwise; the cosine of the mean
of M > 1 draws always comes from Monte Carlo.

Equal cost: a draw of estimator e costs c_e loss evaluations (1 for one-pass
estimators and REINFORCE, 1 + L for ARM and DisARM on L layers, k for
leave-one-out, 1 + U for the local expectation over U units, 1 + 2L for REBAR
and RELAX, 1 + (k - 1)L for ARMS), so a budget of B evaluations buys
M = floor(B / c_e) draws (at least 1), and every curve is drawn against the
budget B; where c_e does not divide B the estimator spends M c_e <= B (the
column ``loss_evals``), never more.
MSE(M) = |bias|^2 + tr(Cov)/M: its floor is the squared bias, its slope -1
part the variance. REINFORCE appears plain, with Eq. 10's per-unit baseline
(computed exactly) and with the paper's running averages (Monte Carlo, the
state carried across draws). The local-expectation estimator (every unit's
two values summed exactly, the rest held fixed) is unbiased with the lowest
variance per draw here, an oracle line for the score-function family.
Bands: 95% bootstrap intervals of the mean over the seeded networks (so they
stay inside the axis: positive MSE, cosines at most 1). The networks are
draws from one population (gs.problems.sbn at weight scale 2, seeds 0-11);
a number quoted for it carries the standard error over the networks, which
holds each network's Monte Carlo error as well.

    python analyses/fig_metrics.py [--quick] [--seed 0] [--device auto]
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import NullFormatter

import gradstats as gs
from analyses._runner import Analysis, Reported, estimate, mean_estimate

BUDGETS = (18, 54, 180, 540, 1800, 5400)   # loss evaluations; costs 1, 2, 3, 9 divide them, 4, 5, 7 spend up to B
QUICK_BUDGETS = (18, 180)
REPORT_BUDGET = 1800
ORACLE = "local_expectation"


def variants() -> dict[str, tuple[str, dict]]:
    """label -> (estimator, options): every estimator defined on networks, REINFORCE also with the paper's baselines."""
    out = {}
    for name in gs.estimators.names(kind="sbn"):
        if gs.estimators.get(name).max_layers is None:
            out[name] = (name, {})
            if name == "reinforce":
                out["reinforce (Eq. 10)"] = (name, {"baseline": "optimal"})
                out["reinforce (running)"] = (name, {"baseline": "running"})
    return out


def problem_for(seed: int):
    return gs.problems.sbn([6, 4, 4], "squared_error", seed=seed, weight_scale=2.0)


def cells(config):
    seeds = range(config.seed, config.seed + (1 if config.quick else 12))
    n = 20_000 if config.quick else 400_000  # at least 20 groups of the largest M: a complete group for every M
    budgets = QUICK_BUDGETS if config.quick else BUDGETS
    return [{"seed": s, "num_samples": n, "variant": label, "budgets": list(budgets)}
            for s in seeds for label in variants()]


def compute(cell, config):
    problem = problem_for(cell["seed"])
    name, options = variants()[cell["variant"]]
    est = gs.estimators.get(name)
    cost = est.loss_evals(problem, gs.estimators.resolve_options(est, problem, options))
    draws_for = {b: max(1, b // cost) for b in cell["budgets"]}
    frame = gs.evaluate(problem, name, reference="binary", num_samples=cell["num_samples"],
                        ms=sorted(set(draws_for.values())), seed=cell["seed"], device=config.device,
                        options={name: options} if options else None, progress=False)
    frame = frame[(frame.coordinate == "") & frame.metric.isin(["mse", "cosine_m"])].drop(columns=["coordinate"])
    rows = [frame[frame.M == m].assign(budget=float(b), loss_evals=float(m * cost)) for b, m in draws_for.items()]
    frame = pd.concat(rows, ignore_index=True).assign(variant=cell["variant"], cost=float(cost))
    return frame.astype({"M": "float64", "num_samples": "float64"}).to_dict("records")


def plot(frame, meta, config):
    fig, axes = plt.subplots(2, 3, figsize=(6.3, 5.4), sharex=True)
    labels = list(dict.fromkeys(frame.variant))
    distinct = sns.color_palette("colorblind") + [(0.0, 0.0, 0.5), (0.35, 0.2, 0.0), (0.6, 0.6, 0.0), (0.6, 0.0, 0.15),
                                                  (0.0, 0.45, 0.45), (0.8, 0.0, 0.8), (0.45, 0.75, 0.0), (0.35, 0.35, 0.35)]
    palette = dict(zip([label for label in labels if label != ORACLE], distinct))
    palette[ORACLE] = (0.0, 0.0, 0.0)
    dashes = {label: (4, 2) if label == ORACLE else (1, 1) if label.startswith("reinforce (") else "" for label in labels}
    for col, layer in enumerate((0, 1, 2)):
        for row, metric in enumerate(("mse", "cosine_m")):
            sub = frame[(frame.metric == metric) & (frame.layer == layer)]
            ax = axes[row, col]
            sns.lineplot(sub, x="budget", y="value", hue="variant", style="variant", dashes=dashes, palette=palette,
                         errorbar=("ci", 95), n_boot=1000, seed=0, ax=ax, legend=(row == 0 and col == 2), linewidth=1,
                         markers=False)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            if metric == "mse":
                ax.set_yscale("log")
            ax.set_title(("all coordinates" if layer == 0 else f"layer {layer}") if row == 0 else "")
            ax.set_ylabel(("MSE of the mean" if metric == "mse" else "cosine(mean, g)") if col == 0 else "")
            ax.set_xlabel("loss evaluations" if row == 1 else "")
    handles, names = axes[0, 2].get_legend_handles_labels()
    axes[0, 2].get_legend().remove()
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return fig


def _mean_over_networks(rows) -> Reported:
    """The mean over the seeded networks with its standard error over the networks: the population the seeds
    draw from is what the number describes (each network's Monte Carlo error is inside that spread)."""
    if len(rows) < 2:   # a quick run's single network: only its Monte Carlo error is known
        return estimate(rows.value.mean(), float(rows.stderr.fillna(0.0).iloc[0]))
    return mean_estimate(rows.value)


def _tex(label: str) -> str:
    return label.replace("_", "\\_")


def lowest_mse_by_budget(frame) -> list[tuple[float, str]]:
    """Per budget, the estimator with the lowest MSE of the mean (all coordinates, mean over the networks)."""
    top = frame[(frame.layer == 0) & (frame.metric == "mse")]
    means = top.groupby(["budget", "variant"]).value.mean()
    return [(float(b), str(means.xs(b, level="budget").idxmin())) for b in sorted(top.budget.unique())]


def crossover_text(ranking: list[tuple[float, str]]) -> str:
    """``st_sigmoid (18--180), disarm (540--5400)``: runs of budgets with the same lowest-MSE estimator."""
    runs: list[list] = []
    for budget, name in ranking:
        if runs and runs[-1][0] == name:
            runs[-1][2] = budget
        else:
            runs.append([name, budget, budget])
    return ", ".join(f"{_tex(name)} ({lo:g}" + (f"--{hi:g})" if hi != lo else ")") for name, lo, hi in runs)


def numbers(frame, config):
    top = frame[frame.layer == 0]
    budget = float(REPORT_BUDGET if not config.quick else max(QUICK_BUDGETS))
    at = top[top.budget == budget].groupby(["variant", "metric"]).value.mean()
    best = at.xs("mse", level="metric").idxmin()

    def rows(label, metric):
        return top[(top.variant == label) & (top.metric == metric) & (top.budget == budget)]

    out = {"metricsSeeds": str(frame.cell_seed.nunique()), "metricsBudget": str(int(budget)),
           "metricsBestMse": _tex(best), "metricsLowestMseByBudget": crossover_text(lowest_mse_by_budget(frame)),
           "metricsLowestMseByBudgetWithoutReinmax": crossover_text(
               lowest_mse_by_budget(frame[frame.variant != "reinmax"]))}
    for label, macro in (("st", "St"), ("reinforce", "Reinforce"), ("reinforce (Eq. 10)", "ReinforceEqTen"),
                         ("reinforce (running)", "ReinforceRunning"), ("disarm", "Disarm"), ("gumbel", "Gumbel"),
                         ("st_sigmoid", "StSigmoid"), ("reinmax", "Reinmax"), (ORACLE, "Oracle"), ("rebar", "Rebar"),
                         ("relax", "Relax"), ("arms", "Arms"), ("double_cv", "DoubleCv"), ("gumbel_rao", "GumbelRao")):
        if not rows(label, "cosine_m").empty:
            out[f"metrics{macro}Cos"] = _mean_over_networks(rows(label, "cosine_m"))
            out[f"metrics{macro}Mse"] = _mean_over_networks(rows(label, "mse"))
    return out


ANALYSIS = Analysis("fig_metrics", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
