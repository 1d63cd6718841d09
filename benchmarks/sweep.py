"""Scaling of ``gs.sweep`` on Dask: one grid in-process, then on a LocalCluster of 1 and of 2 workers.

The grid: 4 networks (``sbn([6, 8])`` and ``sbn([6, 4, 4])``, seeds 0 and 1) x 4 estimators (st,
gumbel, reinforce_loo with k = 2 and 4, disarm), with 1,000,000 Monte Carlo draws where the noise is
continuous. Each worker has one thread and is warmed up (gradstats imported) before the clock starts.
Checks that every run gives the in-process frame bit for bit, then prints wall times and speed-ups
against the 1-worker cluster.

    python benchmarks/sweep.py [--draws 1000000] [--json PATH]

``--json`` (default ``benchmarks/results/sweep.json``; ``''`` for none) writes the wall times for
``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from _record import default_path, write

import gradstats as gs
from gradstats.sweep import local_cluster


def grid():
    problems = [gs.problems.sbn(sizes, seed=s) for sizes in ([6, 8], [6, 4, 4]) for s in (0, 1)]
    return problems, ["st", "gumbel", "reinforce_loo", "disarm"], {"reinforce_loo": [{"k": 2}, {"k": 4}]}


def _warm() -> None:
    torch.set_num_threads(1)
    gs.evaluate(gs.problems.toy(), ["st"], device="cpu", progress=False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1_000_000)
    parser.add_argument("--json", default=default_path("sweep"), help="where to write the figures ('' for nowhere)")
    args = parser.parse_args(argv)
    import distributed

    problems, estimators, options = grid()
    kwargs = {"num_samples": args.draws, "ms": (1, 10), "device": "cpu", "progress": False, "options": options}
    torch.set_num_threads(1)
    start = time.perf_counter()
    reference = gs.sweep(problems, estimators, **kwargs)
    rows = [("in-process (1 thread)", time.perf_counter() - start)]
    columns = [c for c in reference.columns if c != "seconds_per_draw"]
    tasks = reference.task.nunique()
    for workers in (1, 2):
        with local_cluster(workers) as cluster, distributed.Client(cluster) as client:
            client.run(_warm)                 # import gradstats and torch in every worker before timing
            start = time.perf_counter()
            frame = gs.sweep(problems, estimators, executor=client.get_executor(), **kwargs)
            rows.append((f"Dask LocalCluster, {workers} worker(s)", time.perf_counter() - start))
        pd.testing.assert_frame_equal(reference[columns], frame[columns], check_exact=True)
    print(f"gs.sweep: {tasks} tasks ({len(problems)} networks x {len(estimators)} estimators, option sets), "
          f"{args.draws:,} draws each where Monte Carlo; every frame equals the in-process one bit for bit")
    one_worker = rows[1][1]
    for label, seconds in rows:
        print(f"  {label:32s} {seconds:7.1f} s   speed-up vs 1 worker {one_worker / seconds:4.2f}x")
    write(args.json, "sweep", f"gs.sweep of {tasks} tasks ({len(problems)} networks x {len(estimators)} estimators "
          f"and option sets), {args.draws:,} draws each where Monte Carlo, one thread per worker",
          {"in_process_seconds": rows[0][1], "workers_1_seconds": rows[1][1], "workers_2_seconds": rows[2][1]},
          draws=args.draws, tasks=int(tasks))


if __name__ == "__main__":
    main()
