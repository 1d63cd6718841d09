"""Cost: Monte Carlo draws per second and exact enumeration time against network size.

Top left: draws/s of streaming statistics (mean, variance, per-draw sign
agreement and cosine against the exact gradient) for ST on input 8 -> n
binary units -> squared-error readout to 4, against n. Bottom: draws/s of
every estimator at n = 16 (workload W1). Top right: wall time of the exact
gradient and of exact ST moments (mean, variance, full covariance) against
the number of joint states 2^U, networks 8 -> U/2 -> U/2. Each timing is the
best of two runs on the device named in the legend; cells are keyed by the
machine, so timings from another machine are not reused.

    python analyses/fig_cost.py [--quick] [--device auto]
"""

from __future__ import annotations

import os
import platform
import sys
import time

import matplotlib.pyplot as plt
import seaborn as sns
import torch

import gradstats as gs
from analyses._runner import Analysis, timing


def machine() -> str:
    return f"{platform.machine()}-{os.cpu_count()}cpu-torch{torch.__version__}"


def devices(config) -> list[str]:
    return ["cpu"] + (["cuda"] if config.device.startswith("cuda") else [])


def cells(config):
    draws = 2**14 if config.quick else 2**21
    out = []
    for device in devices(config):
        draws_dev = draws * (32 if device == "cuda" else 1)
        out += [{"kind": "width", "width": n, "draws": draws_dev, "device": device, "machine": machine()}
                for n in ((4, 16) if config.quick else (4, 8, 16, 32, 64))]
        out += [{"kind": "estimator", "estimator": e, "draws": draws_dev, "device": device, "machine": machine()}
                for e in gs.estimators.names(kind="sbn")]
    sizes = (2, 4, 6) if config.quick else (2, 4, 6, 8, 10)
    out += [{"kind": "exact", "half": k, "machine": machine()} for k in sizes]
    return out


def best_of_two(fn) -> float:
    times = []
    for _ in range(2):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def compute(cell, config):
    if cell["kind"] == "exact":
        k = cell["half"]
        problem = gs.problems.sbn([8, k, k], "squared_error", seed=0)
        return [{"units": 2 * k, "states": 2 ** (2 * k), "task": "exact gradient",
                 "seconds": best_of_two(lambda: gs.exact_gradient(problem))},
                {"units": 2 * k, "states": 2 ** (2 * k), "task": "exact ST moments (with covariance)",
                 "seconds": best_of_two(lambda: gs.moments(problem, "st", full_covariance=True))}]
    width = cell.get("width", 16)
    estimator = cell.get("estimator", "st")
    problem = gs.problems.sbn([8, width], "squared_error", seed=0)
    g = gs.exact_gradient(problem) if width <= 16 else torch.zeros(problem.num_parameters, dtype=torch.float64)
    chunk = 2**16 if cell["device"] == "cpu" else 2**20
    seconds = best_of_two(lambda: gs.moments(problem, estimator, method="mc", num_samples=cell["draws"], seed=0,
                                             device=cell["device"], chunk_size=chunk, references={"binary": g},
                                             full_covariance=False, progress=False))
    est = gs.estimators.get(estimator)
    return [{"width": width, "estimator": estimator, "device": cell["device"], "draws_per_second": cell["draws"] / seconds,
             "loss_evals_per_draw": est.loss_evals(problem, dict(est.defaults or {}))}]


def plot(frame, meta, config):
    fig, mosaic = plt.subplot_mosaic("AC;BB", figsize=(6.3, 6.6), height_ratios=[1, 1.7])
    axes = [mosaic["A"], mosaic["B"], mosaic["C"]]
    width = frame[frame.cell_kind == "width"]
    sns.lineplot(width, x="width", y="draws_per_second", hue="device", marker="o", ax=axes[0])
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(sorted(width.width.unique()), [str(int(n)) for n in sorted(width.width.unique())])
    axes[0].minorticks_off()
    axes[0].set(yscale="log", xlabel="binary units n (8 -> n -> 4)", ylabel="draws per second",
                title=f"ST, streaming ({meta['versions']['machine']})")
    est = frame[frame.cell_kind == "estimator"]
    sns.barplot(est, y="estimator", x="draws_per_second", hue="device", ax=axes[1], orient="h")
    axes[1].set(xlabel="draws per second", ylabel="", title="every estimator, W1 (n = 16)", xscale="log")
    exact = frame[frame.cell_kind == "exact"]
    sns.lineplot(exact, x="states", y="seconds", hue="task", marker="o", ax=axes[2])
    axes[2].set(xscale="log", yscale="log", xlabel="joint states 2^U", ylabel="seconds (CPU)",
                title="exact, 8 -> U/2 -> U/2")
    axes[2].legend(loc="upper left")
    fig.tight_layout()
    return fig


def numbers(frame, config):
    est = frame[(frame.cell_kind == "estimator") & (frame.device == "cpu")].set_index("estimator")
    exact = frame[frame.cell_kind == "exact"]
    largest = exact[exact.units == exact.units.max()].set_index("task")
    return {"costStDrawsPerSecond": timing(est.loc["st", "draws_per_second"]),
            "costSlowestEstimator": est.draws_per_second.idxmin().replace("_", "\\_"),
            "costSlowestDrawsPerSecond": timing(est.draws_per_second.min()),
            "costExactUnits": str(int(exact.units.max())),
            "costExactGradientSeconds": timing(largest.loc["exact gradient", "seconds"]),
            "costExactMomentsSeconds": timing(largest.loc["exact ST moments (with covariance)", "seconds"])}


ANALYSIS = Analysis("fig_cost", __doc__.splitlines()[0], cells, compute, plot, numbers, parallel=False)
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
