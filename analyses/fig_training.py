"""Training through each estimator, scored by the exact expected loss of the binary network.

Tasks: :func:`gradstats.problems.teacher_student` (8 examples; a deterministic
teacher of the same shape; readout squared error, so the infimum of the loss
is 0), with one stochastic layer (input 6 -> 8 units) and with two (6 -> 6 ->
6), three task seeds each. Plain SGD for 400 steps from the same start, over a
grid of learning rates; each step spends the same number of loss evaluations
per example (6: six draws of a one-pass estimator, fewer of ARM, DisARM and
leave-one-out). ``exact`` descends the exact gradient. Left: the final exact
loss against the learning rate (mean over tasks). Middle: the exact loss along
training at each estimator's best learning rate. Right: ST's two variants on
20 more tasks per architecture, task by task, each at its best mean rate, with
plain SGD (rates 0.3 to 30) and with Adam (0.03 to 3), which rescales every
coordinate and so takes the sigmoid' factor's overall scale out of the
comparison; two-sided sign tests.

    python analyses/fig_training.py [--quick] [--seed 0]
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from scipy import stats

import gradstats as gs
from analyses._runner import Analysis, tex_number
from gradstats.training import EXACT, train

ARCHITECTURES = {"one layer": [6, 8], "two layers": [6, 6, 6]}
ESTIMATORS = {  # label -> (name, options)
    "exact": (EXACT, {}),
    "st": ("st", {}),
    "st_sigmoid": ("st_sigmoid", {}),
    "sts": ("sts", {}),
    "gumbel": ("gumbel", {"temperature": 1.0}),
    "st_gumbel": ("st_gumbel", {"temperature": 1.0}),
    "reinmax": ("reinmax", {"temperature": 1.0}),
    "reinforce (running)": ("reinforce", {"baseline": "running", "decay": 0.99}),
    "reinforce_loo": ("reinforce_loo", {"k": 2}),
    "arm": ("arm", {}),
    "disarm": ("disarm", {}),
}
LOSS_EVALS_PER_EXAMPLE = 6
NUM_EXAMPLES = 8


def task(architecture: str, task_seed: int):
    return gs.problems.teacher_student(ARCHITECTURES[architecture], NUM_EXAMPLES, seed=task_seed)


def draws_per_step(name: str, options: dict, problem) -> int:
    if name == EXACT:
        return 1
    est = gs.estimators.get(name)
    return max(1, LOSS_EVALS_PER_EXAMPLE // est.loss_evals(problem, gs.estimators.resolve_options(est, problem, options)))


ST3_TASKS = range(10, 30)   # the paired identity-vs-sigmoid' study: 20 more tasks per architecture
ST3_RATES = {"sgd": [0.3, 1.0, 3.0, 10.0, 30.0], "adam": [0.03, 0.1, 0.3, 1.0, 3.0]}


def cells(config):
    quick = config.quick
    architectures = ["one layer"] if quick else list(ARCHITECTURES)
    labels = ["exact", "st", "st_sigmoid"] if quick else list(ESTIMATORS)
    rates = [0.3, 3.0] if quick else [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
    steps = 20 if quick else 400
    out = []
    for arch in architectures:
        for label in labels:
            if label == "reinmax" and len(ARCHITECTURES[arch]) > 2:
                continue  # defined for one stochastic layer
            for task_seed in ([0] if quick else [0, 1, 2]):
                for rate in rates:
                    out.append({"study": "gallery", "optimizer": "sgd", "architecture": arch, "estimator": label,
                                "task": task_seed, "learning_rate": rate, "steps": steps,
                                "record_every": 5 if quick else 20, "seed": config.seed + task_seed})
        for optimizer, study_rates in ST3_RATES.items():
            for label in ("st", "st_sigmoid"):
                for task_seed in (ST3_TASKS[:2] if quick else ST3_TASKS):
                    for rate in (study_rates[2:4] if quick else study_rates):
                        out.append({"study": "st3", "optimizer": optimizer, "architecture": arch, "estimator": label,
                                    "task": task_seed, "learning_rate": rate, "steps": steps, "record_every": steps,
                                    "seed": config.seed + task_seed})
    return out


def compute(cell, config):
    problems = task(cell["architecture"], cell["task"])
    name, options = ESTIMATORS[cell["estimator"]]
    run = train(problems, name, steps=cell["steps"], learning_rate=cell["learning_rate"],
                draws_per_step=draws_per_step(name, options, problems[0]), seed=cell["seed"],
                record_every=cell["record_every"], optimizer=cell["optimizer"], **options)
    return [{"step": s, "loss": v, "draws_per_step": run.draws_per_step, "loss_evals_per_step": run.loss_evals_per_step}
            for s, v in zip(run.steps, run.loss)]


def final_rows(frame):
    """Each run's last recorded row."""
    runs = frame.groupby(["cell_architecture", "cell_estimator", "cell_learning_rate", "cell_task"])
    return frame[frame.step == runs.step.transform("max")]


def final_losses(frame):
    """Final exact loss per (architecture, estimator, learning rate): mean and spread over tasks."""
    last = final_rows(frame)
    return (last.groupby(["cell_architecture", "cell_estimator", "cell_learning_rate"]).loss
            .agg(["mean", "min", "max"]).reset_index())


def best_rates(frame):
    """Each estimator's learning rate with the lowest mean final loss, per architecture."""
    final = final_losses(frame)
    return final.loc[final.groupby(["cell_architecture", "cell_estimator"])["mean"].idxmin()].set_index(
        ["cell_architecture", "cell_estimator"])


def gallery(frame):
    return frame[frame.cell_study == "gallery"]


def paired_finals(frame, first: str, second: str):
    """Per (architecture, task): the final loss of ``first`` and of ``second``, each at its best (mean) rate."""
    best = best_rates(frame)
    last = final_rows(frame)
    rows = []
    for (arch, task), sub in last.groupby(["cell_architecture", "cell_task"]):
        if (arch, first) not in best.index or (arch, second) not in best.index:
            continue
        rows.append({"architecture": arch, "task": task, **{
            label: float(sub[(sub.cell_estimator == label)
                             & (sub.cell_learning_rate == best.loc[(arch, label), "cell_learning_rate"])].loss.iloc[0])
            for label in (first, second)}})
    return pd.DataFrame(rows)


def study_pairs(frame):
    """The ST3 study's pairs, per optimizer: each variant at its best mean rate for that optimizer."""
    study = frame[frame.cell_study == "st3"]
    parts = [paired_finals(study[study.cell_optimizer == optimizer], "st", "st_sigmoid").assign(optimizer=optimizer)
             for optimizer in ST3_RATES if (study.cell_optimizer == optimizer).any()]
    return pd.concat(parts, ignore_index=True)


def sign_test(pairs, better: str, worse: str) -> tuple[int, int, float]:
    """Tasks on which ``better`` ends lower, of all tasks, and the two-sided sign test's p-value."""
    wins, n = int((pairs[better] < pairs[worse]).sum()), len(pairs)
    return wins, n, float(stats.binomtest(wins, n, 0.5).pvalue) if n else float("nan")


def plot(frame, meta, config):
    pairs = study_pairs(frame)
    frame = gallery(frame)
    architectures = list(dict.fromkeys(frame.cell_architecture))
    labels = [label for label in ESTIMATORS if label in set(frame.cell_estimator)]
    palette = dict(zip(labels, sns.color_palette("tab20", len(labels))))
    final, best = final_losses(frame), best_rates(frame)
    fig, axes = plt.subplots(len(architectures), 3, figsize=(13.5, 3.1 * len(architectures)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 0.62]})
    for row, arch in zip(axes, architectures):
        sub = pairs[pairs.architecture == arch]
        counts = []
        for optimizer, marker in (("sgd", "o"), ("adam", "^")):
            part = sub[sub.optimizer == optimizer]
            wins, n, p = sign_test(part, "st_sigmoid", "st")
            row[2].scatter(part["st"], part["st_sigmoid"], s=14, marker=marker, label=optimizer,
                           facecolor=palette.get("st_sigmoid", "C1") if marker == "o" else "none",
                           edgecolor=palette.get("st_sigmoid", "C1"))
            counts.append(f"{optimizer} {wins}/{n} (p = {p:.2g})")
        low, high = min(sub["st"].min(), sub["st_sigmoid"].min()) * 0.8, max(sub["st"].max(), sub["st_sigmoid"].max()) * 1.25
        row[2].plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--")
        row[2].legend(loc="lower right")
        row[2].set(xscale="log", yscale="log", xlabel="final E[L], st (identity)", ylabel="final E[L], st_sigmoid",
                   title="further tasks, st_sigmoid lower (below the\ndiagonal): " + ", ".join(counts))
        for label in labels:
            sub = final[(final.cell_architecture == arch) & (final.cell_estimator == label)]
            if sub.empty:
                continue
            style = dict(color=palette[label], linewidth=2.0 if label in ("st", "st_sigmoid", "exact") else 1.0,
                         linestyle="--" if label == "exact" else "-")
            row[0].plot(sub.cell_learning_rate, sub["mean"], marker="o", markersize=3, label=label, **style)
            if label in ("st", "st_sigmoid", "exact"):  # the spread over tasks of the three compared in the text
                row[0].fill_between(sub.cell_learning_rate, sub["min"], sub["max"], color=palette[label], alpha=0.12,
                                    linewidth=0)
            rate = best.loc[(arch, label), "cell_learning_rate"]
            row[0].plot([rate], [best.loc[(arch, label), "mean"]], marker="*", markersize=9, color=palette[label])
            run = frame[(frame.cell_architecture == arch) & (frame.cell_estimator == label)
                        & (frame.cell_learning_rate == rate)].groupby("step").loss.mean()
            row[1].plot(run.index, run.values, label=f"{label} ({rate:g})", **style)
        row[0].set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final exact E[L] (mean of tasks)",
                   title=f"{arch}: after {int(frame.step.max())} steps (stars: best rate; bands: tasks' range)")
        row[1].set(yscale="log", xlabel="step", ylabel="exact E[L] (mean of tasks)",
                   title=f"{arch}: at each estimator's best learning rate")
        row[1].legend(ncol=2, fontsize=6)
    fig.tight_layout()
    return fig


def numbers(frame, config):
    study = study_pairs(frame)
    frame = gallery(frame)
    best = best_rates(frame)
    macros = {}
    for arch in dict.fromkeys(frame.cell_architecture):
        prefix = "trainOne" if arch == "one layer" else "trainTwo"
        for label, macro in (("exact", "Exact"), ("st", "St"), ("st_sigmoid", "StSigmoid")):
            if (arch, label) in best.index:
                macros[f"{prefix}{macro}Loss"] = tex_number(float(best.loc[(arch, label), "mean"]), 2)
                macros[f"{prefix}{macro}Rate"] = tex_number(float(best.loc[(arch, label), "cell_learning_rate"]), 2)
        sub = best.loc[arch]
        winner = sub["mean"].idxmin()
        macros[f"{prefix}BestEstimator"] = winner.replace("_", r"\_")
        macros[f"{prefix}BestLoss"] = tex_number(float(sub.loc[winner, "mean"]), 2)
        macros[f"{prefix}StartLoss"] = tex_number(float(frame[(frame.cell_architecture == arch)
                                                              & (frame.step == 0)].loss.mean()), 3)
    wins, tasks, _ = sign_test(paired_finals(frame, "st", "st_sigmoid"), "st_sigmoid", "st")
    macros["trainStSigmoidWins"], macros["trainPairedTasks"] = str(wins), str(tasks)
    for optimizer, infix in (("sgd", ""), ("adam", "Adam")):
        pairs = study[study.optimizer == optimizer]
        wins, tasks, p = sign_test(pairs, "st_sigmoid", "st")
        macros[f"trainStudy{infix}Wins"], macros[f"trainStudy{infix}Tasks"] = str(wins), str(tasks)
        macros[f"trainStudy{infix}P"] = tex_number(p, 2)
        for arch, suffix in (("one layer", "One"), ("two layers", "Two")):
            wins, tasks, p = sign_test(pairs[pairs.architecture == arch], "st_sigmoid", "st")
            if tasks:
                macros[f"trainStudy{infix}Wins{suffix}"], macros[f"trainStudy{infix}P{suffix}"] = str(wins), tex_number(p, 2)
    macros["trainSteps"] = str(int(frame.step.max()))
    macros["trainRates"] = ", ".join(f"{r:g}" for r in sorted(set(frame.cell_learning_rate)))
    macros["trainTasks"] = str(frame.cell_task.nunique())
    return macros


ANALYSIS = Analysis("fig_training", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
