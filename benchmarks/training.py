"""Many training runs as one computation: the training study's cells, stacked against one run at a time.

Workload: the cells of ``analyses/fig_training.py``: teacher-student tasks (8 examples), 200 SGD steps,
6 loss evaluations per example and step, the exact loss recorded at the end; one cell is a stack of runs that
differ in task, learning rate and noise seed (a selection cell: 3 tasks x 7 rates x 2 seeds). Prints runs per
second of

* ``gs.training.train_many`` (the runs batched with ``torch.func.vmap``: what the analysis does),
* ``gs.training.train`` called once per run (the runs one at a time),

and their ratio, measured in the same process, alternating, best of ``--repeats``; and checks that the
stacked runs end where the runs alone do (to float rounding).

    python benchmarks/training.py [--repeats 3] [--threads 1] [--json PATH]

``--json`` (default ``benchmarks/results/training.json``; ``''`` for none) writes the rows for
``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from _record import default_path, write

import gradstats as gs
from gradstats.training import train, train_many

RATES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SEEDS = (1000, 1001)
TASKS = (0, 1, 2)
CELLS = [  # (architecture sizes, estimator, options, draws per example and step)
    ([6, 8], "st", {}, 6),
    ([6, 8], "reinforce_loo", {"k": 2}, 3),
    ([6, 6, 6], "st", {}, 6),
    ([6, 6, 6], "disarm", {}, 3),
    ([6, 8], "exact", {}, 1),
]


def best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def cell(sizes, name, options, draws, steps, repeats) -> dict:
    """One selection cell of the study: every task x rate x seed, stacked and one at a time."""
    tasks = {t: gs.problems.teacher_student(sizes, 8, seed=t) for t in TASKS}
    runs = [(t, rate, seed) for t in TASKS for rate in RATES for seed in SEEDS]
    kw = dict(steps=steps, draws_per_step=draws, record_every=steps, **options)

    def alone(selected=runs):
        return [train(tasks[t], name, learning_rate=r, seed=s, **kw) for t, r, s in selected]

    def stacked():
        return train_many([tasks[t] for t, _, _ in runs], name, learning_rates=[r for _, r, _ in runs],
                          seeds=[s for _, _, s in runs], **kw)

    alone_seconds = stacked_seconds = float("inf")
    for _ in range(repeats):   # alternating, so that both meet the same machine
        alone_seconds = min(alone_seconds, best_of(1, alone))
        stacked_seconds = min(stacked_seconds, best_of(1, stacked))
    checked = runs[::10]
    gap = max(float(((a.parameters - b.parameters).abs() / (1 + b.parameters.abs())).max())
              for a, b in zip(alone(checked), stacked()[::10]))
    return {"architecture": "-".join(map(str, sizes)), "estimator": name, "runs": len(runs),
            "alone_runs_per_s": len(runs) / alone_seconds, "stacked_runs_per_s": len(runs) / stacked_seconds,
            "ratio": alone_seconds / stacked_seconds, "largest_relative_gap": gap}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the analyses' workers use 1)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", default=default_path("training"), help="where to write the rows ('' for nowhere)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; "
          f"a cell: {len(TASKS)} tasks x {len(RATES)} rates x {len(SEEDS)} seeds, {args.steps} steps each")
    rows = []
    for sizes, name, options, draws in CELLS:
        row = cell(sizes, name, options, draws, args.steps, args.repeats)
        rows.append(row)
        print(f"  {row['architecture']:6s} {name:14s} one at a time {row['alone_runs_per_s']:6.2f} runs/s, stacked "
              f"{row['stacked_runs_per_s']:6.1f} runs/s: {row['ratio']:5.1f}x  (largest relative gap of the final "
              f"parameters, stacked against alone, over every tenth run: {row['largest_relative_gap']:.1e})",
              flush=True)
    write(args.json, "training", f"the training study's cells: {len(TASKS)} teacher-student tasks x {len(RATES)} "
          f"rates x {len(SEEDS)} seeds, {args.steps} SGD steps", {"rows": rows}, steps=args.steps, repeats=args.repeats)


if __name__ == "__main__":
    main()
