"""The seed paper's table on MNIST: conditional computation through each estimator, with seeds and controls.

The paper's network and protocol (sec. 5 and appendix A of arXiv:1308.3432; ``gradstats.conditional``): 784 inputs
-> 400 tanh -> 2000 gates, a 784 -> 2000 linear expert path, the conditional layer, a softmax; sparsity target 0.1
(KL penalty on the gates' minibatch mean probability of being on; adaptive L1 for the rectifiers); minibatch 32;
plain SGD at learning rate 0.1 (the paper's); max-norm 2; gates thresholded to 10% on at test time; the reported
model is the epoch with the lowest validation error. The classic split: 50,000 training, 10,000 validation, 10,000
test images (``gradstats data mnist``).

Rows: the paper's seven (noisy rectifier, ST, STS as the paper writes it, the binary neuron with the unbiased
estimator, the rectifier, sigmoid + noise, sigmoid), STS as the authors' code samples it (``sts_code``:
Bernoulli(p), not Bernoulli(sqrt p)), ST-sigmoid', ReinMax and DisARM gates. Each gated row's gater rate (a
multiple of the rest's: :data:`SCALES`) is selected on the validation set from one run of :data:`SELECT_EPOCHS`
epochs per scale (seed :data:`SELECTION_SEED`), so that an estimator whose gradient is smaller than another's is
not judged at the other's step size. Controls: every gate on (``all_on``: the ungated expert path, a linear
classifier), a fixed random 10% of the units on (``random_fixed``), and a multinomial logistic regression on the
pixels (``linear_softmax``, scikit-learn, its L2 weight selected on the validation set; convex, so one run and no
seed error). Then :data:`REPORT_SEEDS` seeds a gated row and :data:`CONTROL_SEEDS` a trained control (whose error
is not tested, only compared), each trained for :data:`REPORT_EPOCHS` epochs with the validation error after every
epoch (the learning curves): the paper's rate for the first 80, then lowered linearly to 0 over the last
:data:`ANNEAL_EPOCHS` (:func:`gradstats.conditional.anneal_factor`). Why: at the paper's constant rate the
validation error keeps drifting down and jumps by tenths of a point from epoch to epoch, so the lowest of the
curve falls with every epoch added, whether the network improves or not (ST's report seed 0 trained for
:data:`CONSTANT_EPOCHS` epochs at the constant rate, the stage ``constant``). Why 80: the study's first budget, 40
epochs at the full rate (:data:`SHORT_EPOCHS` in all), left the slower gates short: report seed 0 of DisARM and
ReinMax ended 0.40 and 0.51 points lower after 80 (ST: 0.05), so every row's seed 0 trained with it is kept as the
stage ``short`` and the difference from its report run is shown. Whether 80 epochs at the full rate suffice is
checked by long runs, report seed 0 of :data:`LONG_GATES` (every gated row whose seed 0 gained at least 0.4
points from the first budget) trained at the full rate for :data:`LONG_EPOCHS` minus
:data:`ANNEAL_EPOCHS` epochs before the same annealing (the report run's initialisation and data order; queued
after every row's first :data:`LONG_AFTER_SEEDS` report seeds): the difference of their test errors from their report
runs', and whether each lies below its row's prediction interval for one report run (:func:`_long_reading`, a rule
fixed before they were trained). The constant, short and long runs are drawn beside the learning curves and are
not in the table. Paired tests against ST (Wilcoxon signed-rank over seeds, the same initialisation and data order
per seed) carry Holm's correction over the rows. Ten seeds, because the exact test of n pairs cannot give a p-value
below :math:`2/2^n`: 0.0625 with five seeds, so that no difference could be called significant at all, and 0.002
with ten, below the 0.005 that Holm's correction asks of the smallest of ten p-values.

Hours of computation (about ninety CPU-hours, one thread a run at about 25 s an epoch; a GPU machine trains each
gate's seeds as one stack), so its raw results are committed: each run's result is saved as it ends in
``figures/data/fig_mnist_runs/`` (one JSON per run, kept across code changes; a study interrupted resumes from
them, and the run in flight from its state after its last epoch, ``NAME.partial``, not committed), and
``figures/data/fig_mnist.csv`` holds every run's rows. ``make figures`` plots from that file; ``--recompute``
rebuilds it, training the runs the run directory lacks (remove the directory to train every run anew);
``--collect`` rebuilds it from the saved runs alone (an unfinished study: a row appears once its selection runs
are in; every run it has is shown); ``--verify`` (``make check-figures``) retrains the first committed ST run for
two epochs and compares its validation errors with the committed curve's. ``--stack`` trains one gate's missing
report runs at several seeds as one computation (a GPU runs a stack in about the time of one run;
``analyses/fig_mnist_device.sh`` runs one stack a gate on a GPU machine, each step compiled: ``--compile``,
:func:`gradstats.conditional.train_gated_many`); each run's file says where and how it ran (``meta.device``,
``meta.stack``, ``meta.compiled``). Several ``--recompute`` processes share the study: each takes the missing runs
in the study's order, claims a run before training it (``NAME.json.lock``, :func:`gradstats.checkpoint.claim`) and
goes on to the next one where another live process holds the claim, so that no run is trained twice and no process
idles while runs are left; a gate's report runs start once all its selection runs are in. On this 2-core CPU two
processes of one thread each (``OMP_NUM_THREADS=1``) trained at least as many runs an hour as one process of two
threads, and 2.1 to 2.7 times as many in the rounds (4 of 9) where the two threads ran at half speed (``python
benchmarks/conditional.py --processes 2``: median 1.1x); once every process has ended, ``--collect`` gathers their
runs. ``--recompute --compile`` compiles each report run's step (afresh for each run), which trained more runs an
hour in two one-thread processes than the eager step (median 1.22x for ST, 1.36x for DisARM over 3 rounds:
``python benchmarks/conditional.py --processes 2 --compile --gates st,disarm --repeats 3``); the run's file says
whether every step ran compiled (``meta.compiled``; a compiled run equals the eager one up to float rounding, so
that its trajectory, not its distribution, differs), and a run's saved state resumes only in a process that
compiles as the run did.

    python -m analyses.fig_mnist [--recompute [--compile] | --collect] [--verify] [--quick]
    python -m analyses.fig_mnist --stack GATE --seeds 1,2,3,4 --out DIR [--device cuda] [--compile]
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import scipy.stats
import torch

import gradstats as gs
from analyses._runner import (
    ROOT,
    Analysis,
    atomic_write,
    code_version,
    committed_path,
    estimate,
    format_estimate,
    macro_part,
    mean_estimate,
    run_cells,
    tex_number,
)
from gradstats import conditional as cc
from gradstats.checkpoint import InUseError, NotResumableError, claim
from gradstats.claims import seed_paper as notes_claim

LEARNING_RATE = 0.1
SCALES = (1.0, 0.1, 0.01)
SELECT_EPOCHS = 10
SELECTION_SEED = 1000
ANNEAL_EPOCHS = 20      # the report, short and long runs' last epochs: the rate falls linearly to 0
REPORT_EPOCHS = 100     # 80 at the paper's rate, then ANNEAL_EPOCHS
# the study's first budget, 40 epochs at the paper's rate before the annealing: report seed 0 of every row trained
# with it, the stage ``short``; what the 40 more epochs at the full rate of the report runs gained
SHORT_EPOCHS = 60
# do 80 epochs at the full rate suffice? These gates' report seed 0 (its initialisation and data order) trained at
# the full rate for LONG_EPOCHS - ANNEAL_EPOCHS epochs, then annealed: every gated row whose seed 0 gained at least
# 0.4 points of test error from SHORT_EPOCHS to REPORT_EPOCHS (DisARM's gain; DisARM and ReinMax, the first rows
# seen to gain, were queued first). Queued after every row's first LONG_AFTER_SEEDS report seeds (the study's order)
LONG_EPOCHS = 150
LONG_GATES = ("disarm", "reinmax", "sts", "reinforce", "sts_code")
LONG_AFTER_SEEDS = 5
# ST's report seed 0 at the paper's constant rate: the validation curve that the annealing answers
CONSTANT_EPOCHS = 100
# the rows and seeds that the claim NOTES-ST judges, defined once there
REPORT_SEEDS = notes_claim.NOTES_ST_SEEDS
CONTROL_SEEDS = notes_claim.NOTES_ST_CONTROL_SEEDS     # the trained controls' (the linear softmax: one fit)
GATED = notes_claim.NOTES_ST_GATED
CONTROLS = notes_claim.NOTES_ST_CONTROLS
LOGISTIC_C = (0.01, 0.1, 1.0, 10.0)      # the linear control's inverse L2 weights, selected on validation
VERIFY_EPOCHS = 2
RUNS = ROOT / "figures" / "data" / "fig_mnist_runs"
COLLECT = False    # --collect: the saved runs only, nothing trained
COMPILE = False    # --compile: a report run's every step one compiled graph (meta.compiled)
MISSING = r"\text{--}"   # a number that the unfinished study does not have yet


QUICK_SIZES = (1000, 500, 500)          # --quick: the first training, validation and test images
SIZES = (50_000, 10_000, 10_000)        # the classic split


@functools.lru_cache(maxsize=1)
def _data(quick: bool) -> gs.datasets.Split:
    """MNIST (the verified cache, read once per process); with ``--quick`` its first :data:`QUICK_SIZES` images."""
    data = gs.datasets.mnist()
    return data.head(*QUICK_SIZES) if quick else data


def _cell(stage: str, gate: str, scale: float, seed: int, epochs: int, anneal: int = 0) -> dict:
    cell = {"stage": stage, "gate": gate, "learning_rate": LEARNING_RATE, "gater_rate_scale": float(scale),
            "seed": int(seed), "epochs": int(epochs), "anneal_epochs": int(anneal)}
    return cell | ({"_collect": True} if COLLECT else {})   # collected cells are cached apart from trained ones


def _epochs(config, stage: str) -> tuple[int, int]:
    """A stage's epochs and how many of them are annealed."""
    if stage == "selection":
        return (2 if config.quick else SELECT_EPOCHS), 0
    return (2, 1) if config.quick else (REPORT_EPOCHS, ANNEAL_EPOCHS)


def _gated(config):
    return ("st", "reinforce") if config.quick else GATED


def _controls(config):
    return ("all_on", "linear_softmax") if config.quick else CONTROLS


def scales_of(config) -> tuple[float, ...]:
    """The gater rate scales that the selection tries."""
    return SCALES[:2] if config.quick else SCALES


def _selection(config) -> list[dict]:
    return [_cell("selection", g, s, SELECTION_SEED, *_epochs(config, "selection")) for g in _gated(config)
            for s in scales_of(config)]


def chosen_scales(frame: pd.DataFrame) -> dict[str, float]:
    """gate -> the gater rate scale whose selection run reached the lowest validation error (never a diverged one)."""
    sel = frame[(frame.cell_stage == "selection") & (frame.metric == "valid_error") & (frame.epoch == -1)]
    out = {}
    for row in sel.itertuples():
        value = row.value if math.isfinite(row.value) else math.inf
        if row.cell_gate not in out or value < out[row.cell_gate][1]:
            out[row.cell_gate] = (row.cell_gater_rate_scale, value)
    return {g: s for g, (s, _) in out.items()}


def cells(config) -> list[dict]:
    selection = _selection(config)
    frame = run_cells(config, selection, compute, parallel=False)
    if len(frame):   # a gate is selected once all its selection runs are in (another process may train some)
        counts = frame[(frame.metric == "test_error")].groupby("cell_gate").size()
        frame = frame[frame.cell_gate.isin(counts[counts == len(scales_of(config))].index)]
    chosen = chosen_scales(frame) if len(frame) else {}
    seeds = 2 if config.quick else REPORT_SEEDS
    report = []
    for seed in range(seeds):            # seed by seed, so that an unfinished study has every row
        cells_of_seed = [_cell("report", g, chosen[g], config.seed + seed, *_epochs(config, "report"))
                         for g in _gated(config) if g in chosen]
        cells_of_seed += [_cell("report", g, 1.0, config.seed + seed, *_epochs(config, "report"))
                          for g in _controls(config) if g != "linear_softmax" and seed < CONTROL_SEEDS]
        if seed == 0 and "linear_softmax" in _controls(config):    # one convex fit, no epochs
            cells_of_seed.append(_cell("report", "linear_softmax", 1.0, config.seed, 0))
        report.append(cells_of_seed)
    if config.quick:
        return selection + [c for cells_of_seed in report for c in cells_of_seed]
    constant = [_cell("constant", "st", chosen["st"], config.seed, CONSTANT_EPOCHS)] if "st" in chosen else []
    # the first budget's runs after report seed 0, whose runs they are compared with
    short = [_cell("short", c["gate"], c["gater_rate_scale"], c["seed"], SHORT_EPOCHS, ANNEAL_EPOCHS)
             for c in report[0] if c["gate"] != "linear_softmax"]
    long = [_cell("long", g, chosen[g], config.seed, LONG_EPOCHS, ANNEAL_EPOCHS) for g in LONG_GATES if g in chosen]
    flat = [[c for cells_of_seed in part for c in cells_of_seed]
            for part in (report[1:LONG_AFTER_SEEDS], report[LONG_AFTER_SEEDS:])]
    return selection + constant + report[0] + short + flat[0] + long + flat[1]


def _run_path(cell: dict) -> Path:
    anneal = f"-a{cell['anneal_epochs']}" if cell["anneal_epochs"] else ""
    return RUNS / (f"{cell['stage']}-{cell['gate']}-lr{cell['learning_rate']:g}-x{cell['gater_rate_scale']:g}"
                   f"-seed{cell['seed']}-e{cell['epochs']}{anneal}.json")


def _binomial_se(error: float, n: int) -> float:
    """The standard error of an error rate over ``n`` images: the scale at which a change of trajectory (another
    machine's float rounding) shows in it."""
    return math.sqrt(max(error * (1 - error), 1.0 / n) / n)


def _train(cell: dict, data, device, stop: int | None = None, checkpoint: Path | None = None,
           compile: bool = False) -> dict:
    """One run: its result and curves (``stop``: train only that many epochs, the verify check). With
    ``checkpoint``, its state after each epoch is kept there and an interrupted run resumes from it; a state of
    another code version or a damaged one is set aside (said on stderr) and the run starts over. ``compile``:
    every step one compiled graph, compiled afresh for the run (``torch._dynamo.reset()``, so that a process
    training many runs stays under torch's recompile limit); ``compiled`` in the result says whether every step
    ran compiled (False where compiling failed and the run went on eagerly, as said on stderr)."""
    start = time.perf_counter()
    if cell["gate"] == "linear_softmax":
        return _logistic(data) | {"seconds": time.perf_counter() - start}
    if stop is not None and stop > cell["epochs"] - cell["anneal_epochs"]:
        raise ValueError(f"a verify run of {stop} epochs must end before the annealing, which starts after epoch "
                         f"{cell['epochs'] - cell['anneal_epochs']}")
    settings = cc.Settings(cell["gate"], learning_rate=cell["learning_rate"],
                           gater_rate_scale=cell["gater_rate_scale"], epochs=stop or cell["epochs"], eval_every=1,
                           anneal_epochs=0 if stop else cell["anneal_epochs"])
    def say(line: str) -> None:
        print(f"  fig_mnist: {cell['stage']} {cell['gate']} x{cell['gater_rate_scale']:g} seed {cell['seed']}: {line}",
              file=sys.stderr, flush=True)

    if compile:
        torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            r = cc.train_gated_many(data, settings, [cell["seed"]], device=device, progress=say,
                                    checkpoint_path=checkpoint, compile=compile)[0]
        except NotResumableError as err:   # another code version's state, or a damaged one
            say(f"{err}: starting over")
            checkpoint.unlink()
            r = cc.train_gated_many(data, settings, [cell["seed"]], device=device, progress=say,
                                    checkpoint_path=checkpoint, compile=compile)[0]
    compiled = compile and not _fell_back(caught, say)
    return _run(r, time.perf_counter() - start) | ({"compiled": compiled} if compile else {})


def _fell_back(caught, say) -> bool:
    """Whether the warnings ``caught`` during a training say that its compiled step failed and the runs went on
    eagerly (:func:`gradstats.conditional.train_gated_many`); each warning is said on stderr."""
    for w in caught:
        say(f"{w.category.__name__}: {w.message}")
    return any("compiled step failed" in str(w.message) for w in caught)


def _run(r: cc.Result, seconds: float) -> dict:
    """What a run's file keeps of its result (``seconds``: the wall time of the process that ended the run; one
    resumed from its saved state counts from the resumption)."""
    return {"valid_error": r.valid_error, "test_error": r.test_error, "train_criterion": r.train_criterion,
            "sparsity": r.sparsity, "train_sparsity": r.train_sparsity, "best_epoch": r.best_epoch,
            "curve": [v for _, v in r.history], "on_curve": list(r.on_history), "seconds": seconds}


def _save(path: Path, cell: dict, run: dict, device, **extra) -> None:
    """A finished run's file: its result and where it ran."""
    meta = {"cell": cell, "code": code_version(ROOT / "analyses" / "fig_mnist.py"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
            "device": str(device), "torch": torch.__version__,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())} | extra
    atomic_write(path, json.dumps({"meta": meta, "run": run}, indent=1) + "\n")


def _logistic(data) -> dict:
    """The linear control: multinomial logistic regression on the pixels, its L2 weight selected on validation."""
    from sklearn.linear_model import LogisticRegression

    (x, y), (xv, yv), (xt, yt) = ((a.numpy(), b.numpy()) for a, b in (data.train, data.validation, data.test))
    best = None
    for c in LOGISTIC_C:
        model = LogisticRegression(C=c, max_iter=500, tol=1e-4).fit(x, y)
        valid = float(np.mean(model.predict(xv) != yv))
        if best is None or valid < best[0]:
            best = (valid, model, c)
    valid, model, c = best
    proba = np.clip(model.predict_proba(x)[np.arange(len(y)), y], 1e-300, None)
    return {"valid_error": valid, "test_error": float(np.mean(model.predict(xt) != yt)),
            "train_criterion": float(-np.mean(np.log(proba))), "sparsity": math.nan, "train_sparsity": math.nan,
            "best_epoch": 0, "curve": [], "on_curve": [], "inverse_l2": c}


def _rows(run: dict, quick: bool, device: str) -> list[dict]:
    """A run's rows: its final metrics, its curves, and whether it ran on an accelerator (``device``: where)."""
    _, nv, nt = QUICK_SIZES if quick else SIZES
    rows = [{"metric": "valid_error", "epoch": -1, "value": run["valid_error"],
             "stderr": _binomial_se(run["valid_error"], nv)},
            {"metric": "test_error", "epoch": -1, "value": run["test_error"],
             "stderr": _binomial_se(run["test_error"], nt)}]
    rows += [{"metric": m, "epoch": -1, "value": run[m]} for m in ("train_criterion", "sparsity", "train_sparsity",
                                                                 "best_epoch", "seconds")]
    rows.append({"metric": "on_accelerator", "epoch": -1, "value": float(not device.startswith("cpu"))})
    rows += [{"metric": "valid_error", "epoch": e, "value": v, "stderr": _binomial_se(v, nv)}
             for e, v in enumerate(run["curve"], 1)]
    rows += [{"metric": "train_on", "epoch": e, "value": v} for e, v in enumerate(run["on_curve"], 1)]
    return rows


def compute(cell, config):
    """One run: read from the run directory when it is there (full study), else claimed, trained and saved there;
    no rows where another live process holds its claim (that process trains it)."""
    device = str(cc.resolve_device(config.device))
    if cell.get("_stop"):
        run = _train(cell, _data(config.quick), config.device, stop=cell["_stop"])
        return [r for r in _rows(run, config.quick, device) if r["metric"] == "valid_error" and r["epoch"] > 0]
    path = None if config.quick else _run_path(cell)
    if path is None:
        return _rows(_train(cell, _data(config.quick), config.device), config.quick, device)
    if not path.exists():
        if COLLECT:
            return []
        try:
            lock = claim(path)
        except InUseError:
            print(f"  fig_mnist: {path.name} is being trained by another process; going on", file=sys.stderr)
            return []
        try:
            if not path.exists():    # not saved by another process between the look and the claim
                run = _train(cell, _data(config.quick), config.device, checkpoint=path.with_suffix(".partial"),
                             compile=COMPILE)
                _save(path, cell, run, device, **({"compiled": run.pop("compiled")} if "compiled" in run else {}))
        finally:
            lock.unlink(missing_ok=True)
    saved = json.loads(path.read_text())
    return _rows(saved["run"], config.quick, saved["meta"]["device"])


def verify_cells(config) -> list[dict]:
    """The first committed ST run (a report run if there is one; while the study is unfinished and has none,
    its first committed run of a trained gate), retrained for :data:`VERIFY_EPOCHS` epochs at its setting: its
    validation errors after each epoch against the committed curve's."""
    frame = pd.read_csv(committed_path(config))
    runs = frame[(frame.metric == "test_error") & (frame.cell_gate != "linear_softmax")].copy()
    if not len(runs):
        raise SystemExit("fig_mnist: the committed rows have no trained run to verify")
    runs["not_st"] = runs.cell_gate != "st"
    runs["stage_order"] = runs.cell_stage.map({"report": 0, "short": 1, "long": 2, "constant": 3, "selection": 4})
    first = runs.sort_values(["not_st", "stage_order"], kind="stable").iloc[0]   # ST first, report before the rest
    return [_cell(first.cell_stage, first.cell_gate, first.cell_gater_rate_scale, int(first.cell_seed),
                  int(first.cell_epochs), int(first.cell_anneal_epochs)) | {"_stop": VERIFY_EPOCHS}]


# ---- the table, the figure and the numbers -----------------------------------------------------------------

def _final(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per report run: its final metrics as columns."""
    rep = frame[(frame.cell_stage == "report") & (frame.epoch == -1)]
    return rep.pivot(index=["cell_gate", "cell_seed"], columns="metric", values="value").reset_index()


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """:func:`gradstats.stats.holm` over the keys with a p-value (NaN ones left out of the family, kept NaN)."""
    tested = [k for k, p in pvalues.items() if math.isfinite(p)]
    adjusted = gs.stats.holm(torch.tensor([pvalues[k] for k in tested], dtype=torch.float64)).tolist() if tested else []
    return {k: math.nan for k in pvalues} | dict(zip(tested, adjusted))


def summary(frame: pd.DataFrame) -> dict[str, dict]:
    """Per row: means and standard errors over seeds (NaN for one run), the paired difference from ST and its
    Wilcoxon p-value, Holm-adjusted over the rows, and how many of its runs ran on an accelerator."""
    final = _final(frame)
    results = [cc.Result(r.cell_gate, int(r.cell_seed), None, r.valid_error, r.test_error, r.sparsity,
                         r.train_sparsity, int(r.best_epoch)) for r in final.itertuples()]
    out = cc.compare_with(results)
    # the family: every gated row against ST (the controls' differences are shown, not tested)
    adjusted = holm({g: row.get("wilcoxon_p", math.nan) for g, row in out.items() if g != "st" and g not in CONTROLS})
    for gate, row in out.items():
        sub = final[final.cell_gate == gate]
        for m in ("valid_error", "train_criterion"):
            values = sub[m].to_numpy(dtype=float)
            row[m] = float(values.mean())
            row[f"{m}_stderr"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
        row["runs"] = len(sub)
        row["accelerator_runs"] = int(sub["on_accelerator"].sum()) if "on_accelerator" in sub else 0
        if gate in adjusted:
            row["holm_p"] = adjusted[gate]
    return out


def _pm(mean: float, se: float, scale: float = 100.0, digits: int = 2, tex: bool = True) -> str:
    """A mean (in percent) with its standard error, rounded where the error's digits end (``format_estimate``);
    ``digits`` decimals where there is no error to round to (one run: "(n/a)"; runs that agree exactly: "± 0").
    LaTeX math by default, plain text with ``tex=False``."""
    if not math.isfinite(mean):
        return "--"
    dollar, pm = ("$", "\\pm") if tex else ("", "±")
    if not math.isfinite(se):
        return f"{dollar}{scale * mean:.{digits}f}{dollar} (n/a)"
    if se > 0:
        return f"{dollar}{format_estimate(scale * mean, scale * se, tex=tex)}{dollar}"
    return f"{dollar}{scale * mean:.{digits}f} {pm} 0{dollar}"


def _criterion(mean: float, se: float) -> str:
    """The train criterion (a mean cross-entropy in nats): with its standard error, rounded where the error's digits
    end (``format_estimate``); one run, two significant digits, as the paper prints it."""
    if not math.isfinite(mean):
        return "--"
    if not math.isfinite(se):
        return f"${tex_number(mean, 2)}$ (n/a)"
    return f"${format_estimate(mean, se, tex=True)}$" if se > 0 else f"${tex_number(mean, 2)} \\pm 0$"


def _order(rows: dict) -> list[str]:
    gated = sorted((g for g in rows if g not in CONTROLS), key=lambda g: rows[g]["mean"])
    return gated + [g for g in CONTROLS if g in rows]


def _table(rows: dict, config) -> None:
    """Ours beside the paper's (train criterion, validation and test error); "runs (GPU)": the row's seeds, and how
    many of them ran on an accelerator (the rest on a CPU)."""
    lines = ["% generated by analyses/fig_mnist.py; do not edit", "\\begin{tabular}{@{}lrrrrrrrrr@{}}", "\\toprule",
             "& \\multicolumn{6}{c}{ours (mean $\\pm$ s.e. over seeds)} & \\multicolumn{3}{c}{paper (one run)} \\\\",
             "\\cmidrule(lr){2-7}\\cmidrule(l){8-10}",
             "gate & runs (GPU) & train crit. & valid (\\%) & test (\\%) & minus ST's & Holm $p$ & train crit. & valid "
             "& test \\\\",
             "\\midrule"]
    for g in _order(rows):
        row = rows[g]
        diff = _pm(row["difference"], row["difference_stderr"]) if "difference" in row else ""
        p = f"${tex_number(row['holm_p'], 2)}$" if math.isfinite(row.get("holm_p", math.nan)) else ""
        name = g.replace("_", "\\_") + (" (control)" if g in CONTROLS else "")
        published = [f"${tex_number(table[g], digits)}$" if g in table else "--" for table, digits in
                     ((cc.PUBLISHED_TRAIN_CRITERION, 2), (cc.PUBLISHED_VALID_ERROR, 3), (cc.PUBLISHED_TEST_ERROR, 3))]
        criterion = _criterion(row["train_criterion"], row["train_criterion_stderr"])
        runs = f"{row['runs']} ({row['accelerator_runs']})"
        lines.append(f"{name} & {runs} & {criterion} & {_pm(row['valid_error'], row['valid_error_stderr'])} & "
                     f"{_pm(row['mean'], row['stderr'])} & {diff} & {p} & {' & '.join(published)} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    stem = f"tab_mnist{'-quick' if config.quick else ''}"
    atomic_write(config.generated / f"{stem}.tex", "\n".join(lines) + "\n")
    atomic_write(config.generated / f"{stem}.md", markdown_table(rows))


def markdown_table(rows: dict) -> str:
    """The test-error columns of the paper's table as Markdown, for the README (which quotes it verbatim between
    ``<!-- mnist table -->`` and ``<!-- end of mnist table -->``): each row's seeds, its test error and its paired
    difference from ST's (mean ± standard error over seeds, in percent, as :func:`_pm` writes them: "(n/a)" for a
    row of one run), the Holm-adjusted p of that difference, and the paper's test error (one run)."""
    lines = ["| gate | seeds | test error (%) | minus ST's (points) | Holm p | paper's test error (%) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for g in _order(rows):
        row = rows[g]
        name = f"`{g}`" + (" (control)" if g in CONTROLS else "")
        diff = _pm(row["difference"], row["difference_stderr"], tex=False) if "difference" in row else ""
        p = f"{row['holm_p']:.2g}" if math.isfinite(row.get("holm_p", math.nan)) else ""
        published = f"{cc.PUBLISHED_TEST_ERROR[g]:.2f}" if g in cc.PUBLISHED_TEST_ERROR else ""
        lines.append(f"| {name} | {row['runs']} | {_pm(row['mean'], row['stderr'], tex=False)} | {diff} | {p} | {published} |")
    return "\n".join(lines) + "\n"


def _selection_plot(frame):
    """An unfinished study without report runs yet: the selection runs' learning curves."""
    sel = frame[(frame.cell_stage == "selection") & (frame.metric == "valid_error") & (frame.epoch > 0)]
    fig, ax = plt.subplots(figsize=(6.3, 3.6))
    for (gate, scale), sub in sel.groupby(["cell_gate", "cell_gater_rate_scale"]):
        ax.plot(sub.epoch, 100 * sub.value, linewidth=0.8, label=f"{gate} x{scale:g}")
    ax.set(xlabel="epoch", ylabel="validation error (%)", yscale="log", title="selection runs (no report runs yet)")
    ax.legend(fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def _seed_range(rep: pd.DataFrame) -> str:
    """"k" or "k-m": the fewest and most seeds a trained row has."""
    counts = rep[rep.cell_gate != "linear_softmax"].groupby("cell_gate").cell_seed.nunique()
    if not len(counts):
        return "0"
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def plot(frame, meta, config):
    if not (frame.cell_stage == "report").any():
        atomic_write(config.generated / f"tab_mnist{'-quick' if config.quick else ''}.tex",
                     "% generated by analyses/fig_mnist.py; do not edit\n(no report runs yet)\n")
        return _selection_plot(frame)
    rows = summary(frame)
    _table(rows, config)
    order = _order(rows)
    rep = frame[frame.cell_stage == "report"]
    palette = dict(zip(order, plt.get_cmap("tab20")(np.linspace(0, 1, max(len(order), 2)))))
    fig, mosaic = plt.subplot_mosaic("AB;AC;DE", figsize=(6.3, 8.4), width_ratios=[1.1, 1])
    axes = [mosaic[k] for k in "ABCDE"]
    axes[0].remove()
    _test_error_panel(rows, order, _report_test_errors(frame), _seed_range(rep), fig, axes[0].get_subplotspec())
    for g in order:
        sub = rep[(rep.cell_gate == g) & (rep.epoch > 0)]
        for metric, ax in (("valid_error", axes[1]), ("train_on", axes[2])):
            curve = sub[sub.metric == metric].groupby("epoch").value.mean()
            if len(curve):
                ax.plot(curve.index, (100 if metric == "valid_error" else 1) * curve.to_numpy(), color=palette[g],
                        linewidth=0.8, label=g)
    axes[1].set(xlabel="epoch", ylabel="validation error (%)", title="learning curves (mean over seeds)")
    _log_axis(axes[1])
    axes[1].axvline(REPORT_EPOCHS - ANNEAL_EPOCHS, color="black", linewidth=0.5, linestyle=":")
    axes[2].set(xlabel="epoch", ylabel="fraction of gates on", title="sparsity in training")
    axes[2].axhline(0.1, color="black", linewidth=0.5, linestyle=":")
    _budget_panels(frame, axes[3], axes[4], palette)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize=7)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def _test_error_panel(rows: dict, order: list[str], seeds_errors: dict, seeds: str, fig, spec) -> None:
    """Each row's test error in the figure's cell ``spec``: its seeds (grey dots), their mean with two standard
    errors, the paper's run (red cross). The controls lie far above the gated rows, so where the two ranges are
    apart the x axis is broken, the gated rows and the controls each on an axis spanning its own points."""
    points = {g: [100 * rows[g]["mean"], *seeds_errors.get(g, ())] + (
        [cc.PUBLISHED_TEST_ERROR[g]] if g in cc.PUBLISHED_TEST_ERROR else []) for g in order}
    gated = [v for g in order if g not in CONTROLS for v in points[g]]
    controls = [v for g in order if g in CONTROLS for v in points[g]]
    broken = bool(gated and controls) and min(controls) - max(gated) > 0.5 * (max(gated) - min(gated))
    if broken:
        halves = spec.subgridspec(1, 2, width_ratios=[0.8, 0.2], wspace=0.06)
        ax, controls_ax = fig.add_subplot(halves[0]), fig.add_subplot(halves[1])
    else:
        ax = controls_ax = fig.add_subplot(spec)
    for i, g in enumerate(order):
        target = controls_ax if broken and g in CONTROLS else ax
        row = rows[g]
        values = seeds_errors.get(g, ())
        target.plot(values, np.full(len(values), i + 0.22), "o", color="#9a9a9a", markersize=1.8, linestyle="none")
        target.errorbar(100 * row["mean"], i, xerr=2 * 100 * row["stderr"] if math.isfinite(row["stderr"]) else 0,
                        fmt="o", color="black" if g not in CONTROLS else "#7f7f7f", markersize=3)
        if g in cc.PUBLISHED_TEST_ERROR:
            target.plot(cc.PUBLISHED_TEST_ERROR[g], i, marker="x", color="#d62728", markersize=4, linestyle="none")
    ax.set(yticks=range(len(order)), yticklabels=order, ylim=(len(order) - 0.5, -0.5), xlabel="test error (%)")
    ax.set_title(f"test error, {seeds} seed{'' if seeds == '1' else 's'} a row (dots):\nmean, 2 s.e.; x: paper",
                 loc="left")
    if not broken:
        return
    for axis, values in ((ax, gated), (controls_ax, controls)):
        pad = 0.08 * max(max(values) - min(values), 0.5)
        axis.set_xlim(min(values) - pad, max(values) + pad)
    controls_ax.set(ylim=ax.get_ylim(), yticks=range(len(order)), yticklabels=[])
    controls_ax.tick_params(axis="y", length=0)
    controls_ax.xaxis.set_major_locator(mticker.MultipleLocator(0.5))
    controls_ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.spines["right"].set_visible(False)
    controls_ax.spines["left"].set_visible(False)
    for axis, x in ((ax, 1), (controls_ax, 0)):       # the break: a pair of slanted strokes on each axis's edge
        axis.plot([x, x], [0, 1], transform=axis.transAxes, marker=[(-1, -1), (1, 1)], markersize=6,
                  linestyle="none", color="black", clip_on=False)


def _log_axis(ax) -> None:
    """A logarithmic y axis with plain numbers at its ticks."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))


def _budget_panels(frame, curves_ax, short_ax, palette) -> None:
    """Report seed 0 at other budgets: the long runs' and ST's constant-rate validation curves (left); each row's
    test error after the short budget against the report budget's (right; below the diagonal: the longer budget is
    better)."""
    extra = frame[frame.cell_stage.isin(["long", "constant"]) & (frame.metric == "valid_error") & (frame.epoch > 0)]
    for (stage, g), sub in extra.groupby(["cell_stage", "cell_gate"]):
        constant = stage == "constant"
        curves_ax.plot(sub.epoch, 100 * sub.value, color="#7f7f7f" if constant else palette.get(g, "black"),
                       linewidth=0.6 if constant else 0.8, linestyle="--" if constant else "-")
    for epochs in (REPORT_EPOCHS, LONG_EPOCHS):
        curves_ax.axvline(epochs - ANNEAL_EPOCHS, color="black", linewidth=0.5, linestyle=":")
    long_runs = extra[extra.cell_stage == "long"].cell_gate.nunique()
    curves_ax.set(xlabel="epoch", ylabel="validation error (%)", xlim=(0, max(LONG_EPOCHS, CONSTANT_EPOCHS)),
                  title=f"seed 0: {long_runs} of {len(LONG_GATES)} long runs\n(dashed: st, constant rate)")
    if len(extra):
        _log_axis(curves_ax)
    else:
        curves_ax.text(0.5, 0.5, "none finished yet", transform=curves_ax.transAxes, ha="center", va="center")
    pairs = _beside_report(frame, "short")
    pairs = 100 * pairs[pairs.index.isin(GATED)]
    for g, row in pairs.iterrows():
        short_ax.plot(row["short"], row["report"], "o", markersize=3, color=palette.get(g, "black"))
    if len(pairs):
        low, high = float(pairs.min().min()), float(pairs.max().max())
        short_ax.plot([low, high], [low, high], color="black", linewidth=0.5)
    short_ax.set(xlabel=f"test error (%), {SHORT_EPOCHS} epochs", ylabel=f"test error (%), {REPORT_EPOCHS} epochs",
                 title=f"seed 0: {len(pairs)} gated rows\nat both budgets")


def _beside_report(frame: pd.DataFrame, stage: str) -> pd.DataFrame:
    """Each ``stage`` run's test error beside the report run of its row and seed: columns ``stage`` and
    ``report``, indexed by gate (rows without a report run at that seed left out)."""
    ends = frame[(frame.metric == "test_error") & (frame.epoch == -1)].set_index(["cell_gate", "cell_seed"])
    runs = [ends[ends.cell_stage == s].value.rename(s) for s in (stage, "report")]
    return pd.concat(runs, axis=1, join="inner").reset_index(level="cell_seed", drop=True)


def _convergence(frame) -> dict[str, str]:
    """Whether the budget suffices, in four parts. The constant-rate run (:data:`CONSTANT_EPOCHS` epochs): its best
    epoch, how much lower its best validation error is than its best within the first budget's 40 epochs at the
    full rate (points), and its mean validation error (%) over epochs 31-40 and over its last ten. The annealed
    report runs (gated): their median best epoch, and the drift of their last ten epochs, the mean over runs of the
    validation error's mean over the last five minus over the five before (points; s.e. over runs). The short runs
    (the first budget, :data:`SHORT_EPOCHS` epochs) and the long ones (:data:`LONG_EPOCHS`): per row and over the
    rows that have both (s.e. over rows; how many gained), the test error of the longer budget minus the shorter's
    at the same seed (points; below 0: the longer budget is better)."""
    rate_epochs = REPORT_EPOCHS - ANNEAL_EPOCHS
    first_rate_epochs = SHORT_EPOCHS - ANNEAL_EPOCHS
    best = frame[(frame.cell_stage == "report") & (frame.metric == "best_epoch") & (frame.epoch == -1)
                 & frame.cell_gate.isin(GATED)].value
    out = {"mnistGatedReportRuns": str(len(best)),
           "mnistBestEpochMedian": tex_number(float(best.median()), 3) if len(best) else MISSING,
           "mnistRateEpochs": str(rate_epochs), "mnistAnnealEpochs": str(ANNEAL_EPOCHS),
           "mnistConstantEpochs": str(CONSTANT_EPOCHS), "mnistLongEpochs": str(LONG_EPOCHS),
           "mnistLongRateEpochs": str(LONG_EPOCHS - ANNEAL_EPOCHS), "mnistLongPlanned": str(len(LONG_GATES)),
           "mnistShortEpochs": str(SHORT_EPOCHS), "mnistShortRateEpochs": str(first_rate_epochs),
           "mnistShortPlanned": str(sum(g != "linear_softmax" for g in GATED + CONTROLS))}
    curves = frame[(frame.metric == "valid_error") & (frame.epoch > 0)]
    report = curves[(curves.cell_stage == "report") & curves.cell_gate.isin(GATED)]
    drifts = [100 * (sub.value.iloc[-5:].mean() - sub.value.iloc[-10:-5].mean())
              for _, sub in report.sort_values("epoch").groupby(["cell_gate", "cell_seed"]) if len(sub) >= 10]
    if len(drifts) > 1:
        out["mnistEndDrift"] = mean_estimate(drifts)
    for gate, sub in curves[curves.cell_stage == "constant"].groupby("cell_gate"):
        curve = sub.set_index("epoch").value.sort_index()
        key = macro_part(gate)
        out[f"mnistConstant{key}BestEpoch"] = str(int(curve.idxmin()))
        out[f"mnistConstant{key}Gain"] = tex_number(
            100 * float(curve.loc[:first_rate_epochs].min() - curve.min()), 2)
        # the curve is noisy: its lowest point falls with more epochs to select from even on a plateau, so the
        # means over the ten epochs up to epoch 40 and over the last ten say whether it still drifts
        out[f"mnistConstant{key}MeanAtBudget"] = tex_number(
            100 * float(curve.loc[first_rate_epochs - 9:first_rate_epochs].mean()), 3)
        out[f"mnistConstant{key}MeanAtEnd"] = tex_number(100 * float(curve.iloc[-10:].mean()), 3)
    for stage, key in (("short", "mnistShort"), ("long", "mnistLong")):
        # the test error of the longer budget minus the shorter's (points): report minus short, long minus report
        pairs = _beside_report(frame, stage)
        longer, shorter = ("report", stage) if stage == "short" else (stage, "report")
        by_gate = (100 * (pairs[longer] - pairs[shorter])).to_dict()
        out[f"{key}Runs"] = str(len(by_gate))
        for gate, gain in by_gate.items():
            out[f"{key}{macro_part(gate)}Gain"] = f"{gain:.2f}"     # test errors move in steps of 0.01 points
        if len(by_gate) > 1:
            out[f"{key}Gain"] = mean_estimate(list(by_gate.values()))
            out[f"{key}Helped"] = str(sum(g < 0 for g in by_gate.values()))
    return out


STS_FORMS = {"sts": "the paper's form", "sts_code": "the code's form"}   # Bernoulli(sqrt p) and Bernoulli(p)
# the paper's published rows other than STS, which the STS rule's offset and the published-rows reading ask of
PAPER_OTHER_ROWS = tuple(g for g in cc.PUBLISHED_TEST_ERROR if g not in STS_FORMS)


def _forms_phrase(forms: list[str]) -> str:
    if len(forms) == len(STS_FORMS):
        return "both forms"
    return STS_FORMS[forms[0]] if forms else "neither form"


def _report_test_errors(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each row's report runs' test errors (percent)."""
    return {g: 100 * sub.test_error.to_numpy(dtype=float) for g, sub in _final(frame).groupby("cell_gate")}


def _prediction_interval(x: np.ndarray) -> tuple[float, float]:
    """The 95% prediction interval for one more run of a row from its runs ``x`` (at least two):
    :math:`\\bar x \\pm t_{0.975, n-1}\\, s \\sqrt{1 + 1/n}`, :math:`s` their standard deviation."""
    half = scipy.stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) * math.sqrt(1 + 1 / len(x))
    return x.mean() - half, x.mean() + half


def _side(value: float, low: float, high: float) -> str:
    """Where ``value`` lies against the interval ``[low, high]``: "below", "within" or "above"."""
    return "below" if value < low else "above" if value > high else "within"


def _sts_reading(frame) -> dict[str, str]:
    """Which STS form reproduces the paper's test error, by a rule fixed while the rows were incomplete. The
    paper's value is one run, a single draw of its row, so a form reproduces it where it lies in the form's 95%
    prediction interval for one run (:func:`_prediction_interval` over the form's seeds). Asked twice: of the
    paper's value as printed, and of it shifted by the reproduction's offset, the mean over the paper's other
    published rows of our mean minus theirs (a difference of protocol, such as the unstated schedule and number of
    epochs, moves every row, not STS alone; the offset's own error is not in the interval). Percent; :data:`MISSING`
    until both forms have two seeds."""
    errors = _report_test_errors(frame)
    out = {f"mnist{macro_part(g)}Interval": MISSING for g in STS_FORMS}
    out |= {k: MISSING for k in ("mnistPaperOffset", "mnistStsReproduces", "mnistStsReproducesShifted")}
    others = [g for g in PAPER_OTHER_ROWS if g in errors]
    if any(len(errors.get(g, ())) < 2 for g in STS_FORMS) or len(others) < 2:
        return out
    offset = mean_estimate([errors[g].mean() - cc.PUBLISHED_TEST_ERROR[g] for g in others])
    out["mnistPaperOffset"] = offset
    published = cc.PUBLISHED_TEST_ERROR["sts"]
    reproduces = {"mnistStsReproduces": [], "mnistStsReproducesShifted": []}
    for gate in STS_FORMS:
        low, high = _prediction_interval(errors[gate])
        out[f"mnist{macro_part(gate)}Interval"] = f"{low:.2f}\\text{{--}}{high:.2f}"
        for key, value in (("mnistStsReproduces", published), ("mnistStsReproducesShifted", published + offset.value)):
            if low <= value <= high:
                reproduces[key].append(gate)
    return out | {key: _forms_phrase(forms) for key, forms in reproduces.items()}


# the gated rows as the paper's text names them
ROW_NAMES = {"noisy_rectifier": "the noisy rectifier", "st": "ST", "reinforce": "REINFORCE",
             "rectifier": "the rectifier", "sigmoid_noise": "sigmoid + noise", "sigmoid": "the sigmoid",
             "sts": "STS as the paper writes it", "sts_code": "STS as the authors' code samples it",
             "st_sigmoid": "ST-sigmoid'", "reinmax": "ReinMax", "disarm": "DisARM"}


def _outside_phrase(outside: list[str]) -> str:
    if not outside:
        return "none of them"
    return outside[0] if len(outside) == 1 else ", ".join(outside[:-1]) + " and " + outside[-1]


def _published_rows_reading(frame) -> dict[str, str]:
    """The STS rule of :func:`_sts_reading` asked after the fact of the paper's other published rows
    (:data:`PAPER_OTHER_ROWS`), so descriptive, not a test fixed in advance: which rows' published test error (one run)
    lies outside the row's 95% prediction interval for one of our runs, as printed and shifted by the offset of the
    other rows (leave-one-out: the mean over the rest of our mean minus theirs, so that a row's own gap does not shift
    it). Each row outside is named with its value, its side and its interval (percent); :data:`MISSING` until three
    rows have two seeds each."""
    errors = _report_test_errors(frame)
    rows = [g for g in PAPER_OTHER_ROWS if len(errors.get(g, ())) >= 2]
    keys = ("mnistPaperRowsAsked", "mnistPaperRowsOutside", "mnistPaperRowsOutsideShifted")
    if len(rows) < 3:
        return dict.fromkeys(keys, MISSING)
    gap = {g: errors[g].mean() - cc.PUBLISHED_TEST_ERROR[g] for g in rows}
    outside = {"mnistPaperRowsOutside": [], "mnistPaperRowsOutsideShifted": []}
    for gate in rows:
        low, high = _prediction_interval(errors[gate])
        offset = np.mean([gap[g] for g in rows if g != gate])
        for key, value in (("mnistPaperRowsOutside", cc.PUBLISHED_TEST_ERROR[gate]),
                           ("mnistPaperRowsOutsideShifted", cc.PUBLISHED_TEST_ERROR[gate] + offset)):
            if (side := _side(value, low, high)) != "within":
                outside[key].append(f"{ROW_NAMES[gate]} ({value:.2f}\\% {side} {low:.2f}--{high:.2f}\\%)")
    return {"mnistPaperRowsAsked": str(len(rows))} | {key: _outside_phrase(v) for key, v in outside.items()}


def _long_reading(frame) -> dict[str, str]:
    """Whether :data:`REPORT_EPOCHS` epochs left a row of :data:`LONG_GATES` short, by a rule fixed before the long
    runs were trained: where its long run's test error lies below the row's 95% prediction interval for one report
    run (:func:`_prediction_interval` over its report seeds; the interval takes the long run for a new draw of the
    row, though it shares report seed 0's initialisation and data order). Per row, a phrase for the paper: the
    long run's test error and its difference from the report run it extends (percent, points; one seed's
    difference, which the rule does not read), and where it lies (below, within or above the interval, percent);
    or why it cannot be read yet. Over the rows: how many were read, and which of them the rule finds short."""
    errors = _report_test_errors(frame)
    beside = 100 * _beside_report(frame, "long")       # beside report seed 0, which the long run extends
    out, sides = {}, {}
    for gate in LONG_GATES:
        if gate not in beside.index:
            reading = "is not in yet"
        elif len(errors.get(gate, ())) < 2:
            reading = "waits for two report seeds"
        else:
            low, high = _prediction_interval(errors[gate])
            long, report = beside.loc[gate, "long"], beside.loc[gate, "report"]
            sides[gate] = _side(long, low, high)
            reading = (f"({long:.2f}\\%, ${long - report:+.2f}$ points from its report run) lies "
                       f"{sides[gate]} its row's interval ({low:.2f}--{high:.2f}\\%)")
        out[f"mnistLong{macro_part(gate)}Reading"] = reading
    short = [ROW_NAMES[g] for g, side in sides.items() if side == "below"]
    return out | {"mnistLongRead": str(len(sides)), "mnistLongShortRows": _outside_phrase(short)}


CONTROL_NAMES = {"all_on": "every gate on", "random_fixed": "random fixed gates",
                 "linear_softmax": "the logistic regression"}


def _rule_reading(rows: dict) -> dict[str, str]:
    """NOTES-ST's rule (:func:`gradstats.claims.seed_paper.notes_st_rule`, the claim's own) read on the rows in so
    far (:func:`summary`), as a phrase for the paper: whether ST's test error lies more than two standard errors
    below every control's, and which gated rows are significantly better than ST with their Holm-adjusted p, or,
    where none is, the lowest adjusted p of the rows below ST and the rows that have it. While rows are short of
    seeds it is a reading, not the verdict."""
    if "st" not in rows:
        return {"mnistRuleReading": MISSING}
    holm_p = {g: r["holm_p"] for g, r in rows.items() if math.isfinite(r.get("holm_p", math.nan))}
    not_beaten, better = notes_claim.notes_st_rule(rows, holm_p)
    controls = ("ST's test error lies more than two standard errors below every control's" if not not_beaten else
                "ST's test error is not two standard errors below that of " +
                _outside_phrase([CONTROL_NAMES[c] for c in not_beaten]))
    if better:
        gated = (f"{_outside_phrase([ROW_NAMES[g] for g in better])} {'is' if len(better) == 1 else 'are'} "
                 f"significantly better than ST (Holm-adjusted $p$ "
                 f"{_outside_phrase([tex_number(holm_p[g], 2) for g in better])})")
    elif below := {g: p for g, p in holm_p.items() if rows[g]["difference"] < 0}:
        lowest = min(below.values())      # Holm's adjustment often ties rows: name each row at the lowest
        at = [ROW_NAMES[g] for g in GATED if g in below and below[g] <= lowest * (1 + 1e-12)]
        whose = f"{at[0]}'s" if len(at) == 1 else f"that of {_outside_phrase(at)}"
        gated = (f"no gated row is significantly better than ST (of the rows below it, the lowest Holm-adjusted "
                 f"$p$ is {tex_number(lowest, 2)}, {whose})")
    elif holm_p:
        gated = "no gated row is below ST"
    else:
        gated = "no gated row has a paired test against ST yet"
    return {"mnistRuleReading": f"{controls}, and {gated}"}


def _planned(config) -> dict[str, int]:
    """The report seeds each row plans: NOTES-ST's (:func:`notes_st_planned_seeds`; with ``--quick``, 2 a trained row
    and one fit of the linear softmax)."""
    rows = list(_gated(config)) + list(_controls(config))
    if config.quick:
        return {g: 1 if g == "linear_softmax" else 2 for g in rows}
    return {g: notes_claim.notes_st_planned_seeds(g) for g in rows}


def numbers(frame, config):
    """The paper's numbers; while the study is unfinished, a row or check without runs yet reads :data:`MISSING`."""
    rep = frame[frame.cell_stage == "report"]
    planned = _planned(config)
    have = rep.groupby("cell_gate").cell_seed.nunique()                 # each row's report seeds in so far
    seeds = have.reindex(list(_gated(config)), fill_value=0)             # the gated rows'
    out = {"mnistSelectionRuns": str(int(((frame.cell_stage == "selection") & (frame.metric == "test_error")).sum())),
           "mnistReportRuns": str(int(((frame.cell_stage == "report") & (frame.metric == "test_error")).sum())),
           "mnistSeeds": str(int(seeds.min())), "mnistEpochs": str(_epochs(config, "report")[0]),
           "mnistRows": str(len(planned)),
           "mnistPlannedRuns": str(sum(planned.values())),
           "mnistControlSeeds": str(CONTROL_SEEDS), "mnistGatedSeeds": str(REPORT_SEEDS)}
    for gate, error in cc.PUBLISHED_TEST_ERROR.items():   # the paper's test errors (%), one run each
        out[f"mnistPaper{macro_part(gate)}Error"] = tex_number(error, 3)
    defaults = {f"mnist{k}": MISSING for k in ("EndDrift", "BestEpochMedian", "LongGain", "LongHelped", "ShortGain",
                                                "ShortHelped")}
    defaults |= {f"mnistLong{macro_part(g)}Gain": MISSING for g in LONG_GATES}
    defaults |= {f"mnistShort{macro_part(g)}Gain": MISSING for g in GATED + CONTROLS if g != "linear_softmax"}
    defaults |= {f"mnistConstantSt{k}": MISSING for k in ("BestEpoch", "Gain", "MeanAtBudget", "MeanAtEnd")}
    out |= defaults | {f"mnist{macro_part(g)}Error": MISSING for g in planned} | _convergence(frame)
    out |= _sts_reading(frame) | _published_rows_reading(frame) | _long_reading(frame)
    out["mnistComplete"] = str(int(all(have.get(g, 0) >= n for g, n in planned.items())))
    out |= {"mnistRuleReading": MISSING}
    if not len(rep):
        return out
    rows = summary(frame)
    out |= _rule_reading(rows)
    for gate, row in rows.items():
        key = macro_part(gate)
        out[f"mnist{key}Error"] = (estimate(100 * row["mean"], 100 * row["stderr"]) if math.isfinite(row["stderr"])
                                   else tex_number(100 * row["mean"], 3))
        if "difference" in row and math.isfinite(row["difference_stderr"]):
            out[f"mnist{key}Diff"] = estimate(100 * row["difference"], 100 * row["difference_stderr"])
            if math.isfinite(row.get("holm_p", math.nan)):
                out[f"mnist{key}P"] = tex_number(row["holm_p"], 2)
    return out


ANALYSIS = Analysis("fig_mnist", __doc__.splitlines()[0], cells, compute, plot, numbers, committed=True,
                    verify_cells=verify_cells, identity=("metric", "epoch"), parallel=False)


def train_stack(gate: str, seeds: list[int], device, out: Path, compile: bool = False) -> list[Path]:
    """The report runs of ``gate`` at ``seeds`` that the run directory lacks, trained as one stack
    (:func:`gradstats.conditional.train_gated_many`: one computation, which a GPU runs in about the time of one
    run) at the gater rate scale that the committed selection runs chose; each run's file is written to ``out``
    (copy it into the run directory) when the stack ends, and says whether the step was compiled
    (``compile``: ``meta.compiled``; the same runs up to float rounding). Returns the files written."""
    if gate in CONTROLS:
        scale = 1.0
        if gate == "linear_softmax":
            raise ValueError("train_stack: linear_softmax is one convex fit, not a stack of seeds")
    else:
        frame = pd.read_csv(ROOT / "figures" / "data" / "fig_mnist.csv")
        chosen = chosen_scales(frame)
        if gate not in chosen:
            raise ValueError(f"train_stack: the committed rows have no selection of {gate!r}'s gater rate scale")
        scale = chosen[gate]
    todo = [c for c in (_cell("report", gate, scale, s, REPORT_EPOCHS, ANNEAL_EPOCHS) for s in seeds)
            if not _run_path(c).exists()]
    if not todo:
        return []
    settings = cc.Settings(gate, learning_rate=LEARNING_RATE, gater_rate_scale=scale, epochs=REPORT_EPOCHS,
                           eval_every=1, anneal_epochs=ANNEAL_EPOCHS)
    seeds = [c["seed"] for c in todo]

    def say(line: str) -> None:
        print(f"  fig_mnist: report {gate} x{scale:g} seeds {seeds}: {line}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        results = cc.train_gated_many(_data(False), settings, seeds, device=device, progress=say, compile=compile)
    seconds = time.perf_counter() - start
    compiled = compile and not _fell_back(caught, say)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cell, r in zip(todo, results):
        path = out / _run_path(cell).name
        _save(path, cell, _run(r, seconds), device, stack=seeds, compiled=compiled)
        written.append(path)
    return written


def main(argv: list[str] | None = None):
    """The analysis's command line, with ``--collect`` (the committed rows from the saved runs alone) and
    ``--stack GATE --seeds 1,2,3,4 --out DIR [--device cuda] [--compile]`` (:func:`train_stack`)."""
    global COLLECT, COMPILE
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--stack" in argv:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m analyses.fig_mnist --stack")
        parser.add_argument("--stack", required=True, choices=GATED + CONTROLS[:2], help="the gate")
        parser.add_argument("--seeds", required=True, help="comma-separated report seeds, e.g. 1,2,3,4")
        parser.add_argument("--out", required=True, type=Path, help="where each run's file is written")
        parser.add_argument("--device", default="auto")
        parser.add_argument("--compile", action="store_true",
                            help="each step as one compiled graph (for a GPU, where the eager step waits on launches)")
        args = parser.parse_args(argv)
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
        for path in train_stack(args.stack, seeds, args.device, args.out, compile=args.compile):
            print(path)
        return None
    COLLECT = "--collect" in argv
    COMPILE = "--compile" in argv
    argv = [a for a in argv if a != "--compile"]
    if COLLECT:
        argv = [a for a in argv if a != "--collect"] + ["--recompute"]
    try:
        return ANALYSIS.main(argv)
    finally:
        COLLECT = COMPILE = False


if __name__ == "__main__":
    main()
