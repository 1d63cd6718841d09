"""Training through each estimator, scored by the exact expected loss of the binary network.

Tasks: :func:`gradstats.problems.teacher_student` (8 examples; a deterministic
teacher of the same shape; readout squared error, so the infimum of the loss
is 0), with one stochastic layer (input 6 -> 8 units) and with two (6 -> 6 ->
6). Plain SGD from the same start; each step spends the same number of loss
evaluations per example (6: six draws of a one-pass estimator, fewer of ARM,
DisARM and leave-one-out). ``exact`` descends the exact gradient.

The runs of one (study, stage, optimizer, architecture, estimator) are trained together as one stack
(:func:`gradstats.training.train_many`: every task, rate and seed batched, each run what it would be
alone up to float rounding).

Protocol (a single trajectory can turn on whether one sampled unit flips, so that a last-bit change of the rate
moves its final loss: the gallery's report runs are rerun at the rate times 1 + :data:`PERTURBATION` and the
paper says how many moved; no result rests on one trajectory):

* every result is a mean over tasks and over :data:`REPORT_SEEDS` noise seeds
  per task, with its standard error over the noise (conditional on the tasks,
  which a rerun reproduces exactly);
* each estimator's learning rate is selected on other noise seeds
  (:data:`SELECTION_SEEDS`) than the ones reported, so the reported loss carries
  no winner's curse; the ST-variant study also selects on other *tasks*; a
  rate selected at an end of its grid extends the grid past it (up to
  :data:`MAX_GRID_EXTENSIONS` times), so no reported rate ends its grid unless
  the figure's numbers say so;
* "best" is the set of estimators whose mean final loss is not significantly
  above the lowest (one-sided z test at 5%, errors combined in quadrature).

Left: the final exact loss against the learning rate on the selection seeds
(stars: the selected rate). Middle: the exact loss along training at that rate
on the report seeds (bands: one standard error). Right: ST's two variants on
further tasks, each point a task's mean over noise seeds, each variant at the
rate selected on held-out tasks, with plain SGD and with Adam (which rescales
every coordinate and so takes the sigmoid' factor's overall scale out); sign
tests and Wilcoxon signed-rank tests on the log ratio of the final losses.

    python analyses/fig_training.py [--quick] [--seed 0]
"""

from __future__ import annotations

import math
import sys

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from scipy import stats

import gradstats as gs
from analyses._runner import Analysis, estimate, exact, run_cells, tex_number
from gradstats.training import EXACT, next_rate, train_many

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


GALLERY_TASKS = (0, 1, 2)
GALLERY_RATES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
ST3_SELECTION_TASKS = (30, 31, 32)   # the paired identity-vs-sigmoid' study selects its rates on these tasks
ST3_TASKS = tuple(range(10, 20))     # and reports on these
ST3_RATES = {"sgd": (0.3, 1.0, 3.0, 10.0, 30.0), "adam": (0.03, 0.1, 0.3, 1.0, 3.0)}
SELECTION_SEEDS = (1000, 1001)
REPORT_SEEDS = tuple(range(10))
STEPS = 200
SIGNIFICANCE_Z = 1.645                # one-sided 5 %: "not significantly worse than the best"
MAX_GRID_EXTENSIONS = 3               # a selected rate at an end of its grid extends the grid past it
PERTURBATION = 1e-14                  # the report runs again at the rate times 1 + this: is a run's end chaotic?
MOVED = 0.1                           # a final loss "moved" when it changed by more than this fraction


def _grid(config):
    """The studies' settings: (architectures, labels, tasks, rates, steps, selection seeds, report seeds, st3)."""
    if config.quick:
        return dict(architectures=["one layer"], labels=["exact", "st", "st_sigmoid"], tasks=(0,), rates=(0.3, 3.0),
                    steps=20, selection=(1000,), report=tuple(range(4)), st3_selection=(30,), st3_tasks=(10, 11, 12),
                    st3_rates={k: v[2:4] for k, v in ST3_RATES.items()})
    return dict(architectures=list(ARCHITECTURES), labels=list(ESTIMATORS), tasks=GALLERY_TASKS, rates=GALLERY_RATES,
                steps=STEPS, selection=SELECTION_SEEDS, report=REPORT_SEEDS, st3_selection=ST3_SELECTION_TASKS,
                st3_tasks=ST3_TASKS, st3_rates=ST3_RATES)


def _seeds(label: str, seeds: tuple) -> tuple:
    return seeds[:1] if label == "exact" else seeds   # exact gradient descent has no noise


def _selection_cells(config, grid) -> list[dict]:
    """One stacked cell per (study, optimizer, architecture, estimator): its tasks x rates x selection seeds."""
    out = []
    for arch in grid["architectures"]:
        for label in grid["labels"]:
            if label == "reinmax" and len(ARCHITECTURES[arch]) > 2:
                continue  # defined for one stochastic layer
            out.append(_cell("gallery", "select", "sgd", arch, label, grid["tasks"], grid["rates"],
                             _seeds(label, grid["selection"]), grid, config))
        for optimizer, rates in grid["st3_rates"].items():
            for label in ("st", "st_sigmoid"):
                out.append(_cell("st3", "select", optimizer, arch, label, grid["st3_selection"], rates,
                                 grid["selection"], grid, config))
    return out


def _cell(study, stage, optimizer, arch, label, tasks, rates, seeds, grid, config) -> dict:
    """A stack of runs (every task with every rate and seed), trained as one computation (``train_many``)."""
    steps = grid["steps"]
    record = (5 if config.quick else 20) if (stage == "report" and study == "gallery") else steps
    return {"study": study, "stage": stage, "optimizer": optimizer, "architecture": arch, "estimator": label,
            "steps": steps, "record_every": record,
            "_runs": [[task, float(rate), config.seed + seed] for task in tasks for rate in rates for seed in seeds]}


def _key(cell: dict) -> tuple:
    return cell["study"], cell["optimizer"], cell["architecture"], cell["estimator"]


def _extensions(selection: list[dict], chosen: dict) -> list[dict]:
    """A selection stack one rate past each selected rate that sits at an end of the rates tried for its key: every
    task of the key with the new rate and the selection seeds."""
    tried: dict[tuple, set] = {}
    for c in selection:
        tried.setdefault(_key(c), set()).update(rate for _, rate, _ in c["_runs"])
    extra = []
    for key, rate in chosen.items():
        rates = sorted(tried[key])
        if rate not in (rates[0], rates[-1]):
            continue
        new = next_rate(rate, up=rate == rates[-1])
        runs = sorted({(task, seed) for c in selection if _key(c) == key for task, r, seed in c["_runs"] if r == rate})
        base = next(c for c in selection if _key(c) == key)
        extra.append({**base, "_runs": [[task, new, seed] for task, seed in runs]})
    return extra


def cells(config):
    """The selection cells (the rate grid extended while a selected rate sits at an end of it), then (computed
    or cached first) the report cells at the selected rates."""
    grid = _grid(config)
    selection = _selection_cells(config, grid)
    chosen = selected_rates(run_cells(config, selection, compute))
    for _ in range(0 if config.quick else MAX_GRID_EXTENSIONS):
        extra = _extensions(selection, chosen)
        if not extra:
            break
        selection += extra
        chosen = selected_rates(run_cells(config, selection, compute))
    report = []
    for (study, optimizer, arch, label), rate in chosen.items():
        tasks = grid["tasks"] if study == "gallery" else grid["st3_tasks"]
        report.append(_cell(study, "report", optimizer, arch, label, tasks, [rate], _seeds(label, grid["report"]),
                            grid, config))
        if study == "gallery":
            report.append(_cell(study, "perturbed", optimizer, arch, label, tasks, [rate * (1 + PERTURBATION)],
                                _seeds(label, grid["report"]), grid, config))
    return selection + report


def compute(cell, config):
    """Every run of the stack, trained together (each on its own task); one row per run and recorded step."""
    name, options = ESTIMATORS[cell["estimator"]]
    tasks = {t: task(cell["architecture"], t) for t in sorted({t for t, _, _ in cell["_runs"]})}
    runs = train_many([tasks[t] for t, _, _ in cell["_runs"]], name, steps=cell["steps"],
                      learning_rates=[r * config.rate_factor for _, r, _ in cell["_runs"]],
                      seeds=[s for _, _, s in cell["_runs"]],
                      draws_per_step=draws_per_step(name, options, next(iter(tasks.values()))[0]),
                      record_every=cell["record_every"], optimizer=cell["optimizer"], **options)
    return [{"cell_task": t, "cell_learning_rate": rate, "cell_seed": seed, "step": s, "loss": v,
             "draws_per_step": run.draws_per_step, "loss_evals_per_step": run.loss_evals_per_step}
            for (t, rate, seed), run in zip(cell["_runs"], runs) for s, v in zip(run.steps, run.loss)]


KEYS = ["cell_study", "cell_optimizer", "cell_architecture", "cell_estimator"]


def final_rows(frame):
    """Each run's last recorded row."""
    runs = frame.groupby([*KEYS, "cell_stage", "cell_learning_rate", "cell_task", "cell_seed"])
    return frame[frame.step == runs.step.transform("max")]


def selection_curves(frame):
    """Mean final loss over selection tasks and seeds, per (study, optimizer, architecture, estimator, rate)."""
    last = final_rows(frame[frame.cell_stage == "select"])
    return last.groupby([*KEYS, "cell_learning_rate"]).loss.mean().reset_index()


def selected_rates(frame) -> dict:
    """(study, optimizer, architecture, estimator) -> the rate with the lowest mean selection loss."""
    curves = selection_curves(frame)
    best = curves.loc[curves.groupby(KEYS).loss.idxmin()]
    return {tuple(row[k] for k in KEYS): float(row.cell_learning_rate) for _, row in best.iterrows()}


def task_means(frame):
    """Report stage: per (study, optimizer, architecture, estimator, task) the mean final loss over noise seeds,
    its variance over seeds and the number of seeds."""
    last = final_rows(frame[frame.cell_stage == "report"])
    return last.groupby([*KEYS, "cell_task"]).loss.agg(["mean", "var", "count"]).reset_index()


def reported(frame):
    """Per (study, optimizer, architecture, estimator): mean over tasks of the task means, its standard error over
    the noise (conditional on the tasks), and the rate it was trained at."""
    per_task = task_means(frame)
    per_task["var_of_mean"] = per_task["var"].fillna(0.0) / per_task["count"]
    out = per_task.groupby(KEYS).agg(mean=("mean", "mean"), var_sum=("var_of_mean", "sum"), tasks=("mean", "size"))
    out["stderr"] = out.var_sum.pow(0.5) / out.tasks
    rates = frame[frame.cell_stage == "report"].groupby(KEYS).cell_learning_rate.first()
    return out.join(rates).reset_index()


def not_worse_than_best(table):
    """The labels whose mean is not significantly above the lowest (one-sided z at 5 %), lowest first."""
    best = table.loc[table["mean"].idxmin()]
    z = (table["mean"] - best["mean"]) / (table.stderr.pow(2) + best.stderr**2).pow(0.5).clip(lower=1e-300)
    keep = table[(z <= SIGNIFICANCE_Z) | (table.cell_estimator == best.cell_estimator)]
    return keep.sort_values("mean")


def paired(frame, study: str, optimizer: str, arch: str):
    """Per task: each ST variant's mean final loss over noise seeds."""
    per_task = task_means(frame)
    sub = per_task[(per_task.cell_study == study) & (per_task.cell_optimizer == optimizer)
                   & (per_task.cell_architecture == arch)]
    return sub.pivot(index="cell_task", columns="cell_estimator", values="mean").dropna()


def paired_tests(pairs) -> dict:
    """Sign test and Wilcoxon signed-rank test (two-sided) of st_sigmoid against st over tasks."""
    n = len(pairs)
    wins = int((pairs["st_sigmoid"] < pairs["st"]).sum())
    log_ratio = np.log(pairs["st_sigmoid"]) - np.log(pairs["st"])
    sign_p = float(stats.binomtest(wins, n, 0.5).pvalue) if n else float("nan")
    wilcoxon_p = float(stats.wilcoxon(log_ratio).pvalue) if n >= 2 and (log_ratio != 0).any() else float("nan")
    return {"wins": wins, "tasks": n, "sign_p": sign_p, "wilcoxon_p": wilcoxon_p,
            "median_ratio": float(np.exp(np.median(log_ratio))) if n else float("nan")}


def perturbed_pairs(frame):
    """The gallery's report runs beside the same runs (task, noise seed) at the rate times 1 + :data:`PERTURBATION`:
    per run its final loss at both rates (columns ``report`` and ``perturbed``)."""
    last = final_rows(frame[(frame.cell_study == "gallery") & frame.cell_stage.isin(["report", "perturbed"])])
    return last.pivot_table(index=["cell_architecture", "cell_estimator", "cell_task", "cell_seed"],
                            columns="cell_stage", values="loss").dropna()


def perturbation_numbers(frame, table) -> dict:
    """How far the rate's last-bit change moves the report runs: the share of runs whose final loss changed at all
    (beyond 1e-9 relative) and by more than :data:`MOVED`, each with its binomial standard error over runs; which
    estimators' runs moved; and the largest shift of an estimator's mean in units of its standard error (``table``:
    :func:`reported`)."""
    pairs = perturbed_pairs(frame)
    if pairs.empty or "perturbed" not in pairs:
        return {}
    change = np.abs(np.log(pairs["perturbed"]) - np.log(pairs["report"]))
    n = len(pairs)

    def share(mask):
        p = float(mask.mean())
        return estimate(100 * p, 100 * math.sqrt(p * (1 - p) / n))

    moved = change > math.log1p(MOVED)
    counts = moved.groupby(level=["cell_architecture", "cell_estimator"], sort=False).agg(["sum", "size"])
    listed = [f"{label.replace('_', chr(92) + '_')} on {arch} ({int(k)} of {int(m)})"
              for (arch, label), (k, m) in counts.iterrows() if k]
    means = pairs.groupby(level=["cell_architecture", "cell_estimator", "cell_task"]).mean()
    means = means.groupby(level=["cell_architecture", "cell_estimator"]).mean()
    gallery = table[table.cell_study == "gallery"].set_index(["cell_architecture", "cell_estimator"])
    stderr = gallery.loc[means.index, "stderr"].to_numpy()
    shift = np.abs(means["perturbed"] - means["report"]).to_numpy()
    shift = np.where(shift > 1e-9 * means["report"].abs().to_numpy(), shift, 0.0)     # rounding is not a shift
    shifts = np.where(stderr > 0, shift / np.where(stderr > 0, stderr, 1.0), np.where(shift > 0, np.inf, 0.0))
    return {"trainPerturbRuns": str(n), "trainPerturbChangedShare": share(change > 1e-9),
            "trainPerturbMovedShare": share(moved), "trainPerturbMovedList": ", ".join(listed) or "none",
            "trainPerturbMaxShift": tex_number(float(shifts.max()), 2)}


HIGHLIGHTED = ("exact", "st", "st_sigmoid", "gumbel", "st_gumbel", "reinforce_loo")   # in colour; the rest grey


def plot(frame, meta, config):
    """Columns: the architectures. Rows: the learning-rate selection, training at the selected rate, and ST's two
    variants on further tasks. A few estimators in colour, the others grey; one legend below the panels."""
    table = reported(frame)
    curves = selection_curves(frame)
    gallery = frame[(frame.cell_study == "gallery") & (frame.cell_stage == "report")]
    architectures = list(dict.fromkeys(gallery.cell_architecture))
    labels = [label for label in ESTIMATORS if label in set(gallery.cell_estimator)]
    colours = dict(zip(HIGHLIGHTED[1:], sns.color_palette("colorblind", len(HIGHLIGHTED) - 1)), exact="black")
    fig, axes = plt.subplots(3, len(architectures), figsize=(6.5, 6.8), squeeze=False)

    def style(label):
        if label in colours:
            return dict(color=colours[label], linewidth=1.6, linestyle="--" if label == "exact" else "-", zorder=3)
        return dict(color="0.65", linewidth=0.9, linestyle="-", zorder=2)

    for col, arch in zip(axes.T, architectures):
        for label in labels:
            sel = curves[(curves.cell_study == "gallery") & (curves.cell_architecture == arch)
                         & (curves.cell_estimator == label)]
            if sel.empty:
                continue
            col[0].plot(sel.cell_learning_rate, sel.loss, marker="o", markersize=2.5, **style(label))
            rep = table[(table.cell_study == "gallery") & (table.cell_architecture == arch) & (table.cell_estimator == label)]
            rate = float(rep.cell_learning_rate.iloc[0])
            col[0].plot([rate], [float(sel[sel.cell_learning_rate == rate].loss.iloc[0])], marker="*", markersize=8,
                        color=style(label)["color"], zorder=4)
            runs = gallery[(gallery.cell_architecture == arch) & (gallery.cell_estimator == label)]
            # mean over tasks and seeds; error over the noise only: per task the variance of its seeds' mean
            per_task = runs.groupby(["step", "cell_task"]).loss.agg(["mean", "var", "count"])
            per_task["var_of_mean"] = per_task["var"].fillna(0.0) / per_task["count"]
            by_step = per_task.groupby(level="step")
            mean = by_step["mean"].mean()
            err = by_step["var_of_mean"].sum().pow(0.5) / by_step.size()
            col[1].plot(mean.index, mean.values, **style(label))
            col[1].fill_between(mean.index, (mean - err).clip(lower=1e-12), mean + err, color=style(label)["color"],
                                alpha=0.2, linewidth=0)
        col[0].set(xscale="log", yscale="log", xlabel="learning rate", title=f"{arch}: selecting the rate")
        col[1].set(yscale="log", xlabel="step", title=f"{arch}: at the selected rate")
        ends = []
        for optimizer, marker in (("sgd", "o"), ("adam", "^")):
            pairs = paired(frame, "st3", optimizer, arch)
            if pairs.empty:
                continue
            col[2].scatter(pairs["st"], pairs["st_sigmoid"], s=14, marker=marker, label=optimizer.upper() if optimizer == "sgd"
                           else "Adam", facecolor=colours["st_sigmoid"] if marker == "o" else "none",
                           edgecolor=colours["st_sigmoid"])
            ends += [float(pairs.min().min()), float(pairs.max().max())]
        if ends:
            low, high = min(ends) * 0.8, max(ends) * 1.25
            col[2].plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--", zorder=0)
            col[2].set(xlim=(low, high), ylim=(low, high))
            col[2].legend(loc="upper left", title="optimizer", title_fontsize=7)
        col[2].set(xscale="log", yscale="log", xlabel="final E[L], st", title=f"{arch}: ST variants, further tasks")
    axes[0, 0].set_ylabel("final exact E[L]\n(selection seeds)")
    axes[1, 0].set_ylabel("exact E[L]\n(report seeds and tasks)")
    axes[2, 0].set_ylabel("final E[L], st_sigmoid")
    handles = [plt.Line2D([], [], **{k: v for k, v in style(label).items() if k != "zorder"}, label=label)
               for label in labels if label in colours]
    others = [label for label in labels if label not in colours]
    if others:
        handles.append(plt.Line2D([], [], color="0.65", linewidth=0.9, label="grey: " + ", ".join(others)))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return fig


def numbers(frame, config):
    table = reported(frame)
    gallery = table[table.cell_study == "gallery"]
    grid = _grid(config)
    macros = {}
    for arch in dict.fromkeys(gallery.cell_architecture):
        prefix = "trainOne" if arch == "one layer" else "trainTwo"
        sub = gallery[gallery.cell_architecture == arch]
        by_label = sub.set_index("cell_estimator")
        for label, macro in (("exact", "Exact"), ("st", "St"), ("st_sigmoid", "StSigmoid")):
            if label in by_label.index:
                macros[f"{prefix}{macro}Loss"] = estimate(by_label.loc[label, "mean"], by_label.loc[label, "stderr"])
                macros[f"{prefix}{macro}Rate"] = exact(by_label.loc[label, "cell_learning_rate"], 2)
        best = not_worse_than_best(sub)
        first = best.iloc[0]
        macros[f"{prefix}BestEstimator"] = first.cell_estimator.replace("_", r"\_")
        macros[f"{prefix}BestLoss"] = estimate(first["mean"], first.stderr)
        macros[f"{prefix}BestSet"] = ", ".join(label.replace("_", r"\_") for label in best.cell_estimator)
        tried = frame[(frame.cell_stage == "select") & (frame.cell_study == "gallery") & (frame.cell_architecture == arch)]
        ends = tried.groupby("cell_estimator").cell_learning_rate.agg(["min", "max"])
        edge = [label for label, rate in zip(sub.cell_estimator, sub.cell_learning_rate)
                if rate in (ends.loc[label, "min"], ends.loc[label, "max"])]
        macros[f"{prefix}EdgeRates"] = ", ".join(label.replace("_", r"\_") for label in edge) or "none"
        start = frame[(frame.cell_study == "gallery") & (frame.cell_architecture == arch) & (frame.step == 0)]
        macros[f"{prefix}StartLoss"] = exact(start.loss.mean(), 3)
    for optimizer, infix in (("sgd", ""), ("adam", "Adam")):
        for arch, suffix in (("one layer", "One"), ("two layers", "Two")):
            pairs = paired(frame, "st3", optimizer, arch)
            if pairs.empty:
                continue
            result = paired_tests(pairs)
            macros[f"trainStudy{infix}Wins{suffix}"] = str(result["wins"])
            # test outcomes over tasks (p-values, the median ratio): statistics of the task means, not measurements
            macros[f"trainStudy{infix}P{suffix}"] = tex_number(result["sign_p"], 2)
            macros[f"trainStudy{infix}WilcoxonP{suffix}"] = tex_number(result["wilcoxon_p"], 2)
            macros[f"trainStudy{infix}Ratio{suffix}"] = tex_number(result["median_ratio"], 2)
    macros["trainStudyTasks"] = str(len(grid["st3_tasks"]))
    macros["trainSteps"] = str(grid["steps"])
    macros["trainRates"] = ", ".join(f"{r:g}" for r in grid["rates"])
    macros["trainTasks"] = str(len(grid["tasks"]))
    macros["trainSeeds"] = str(len(grid["report"]))
    macros["trainSelectionSeeds"] = str(len(grid["selection"]))
    return macros | perturbation_numbers(frame, table)


ANALYSIS = Analysis("fig_training", __doc__.splitlines()[0], cells, compute, plot, numbers)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
