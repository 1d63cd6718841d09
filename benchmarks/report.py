"""The performance page and the README's performance table, written from the benchmarks' records.

Every benchmark writes its latest figures to ``benchmarks/results/NAME.json`` (``benchmarks/_record.py``):
what it measured, the machine, the date and the command. This script renders them, so that no figure is
copied by hand:

* ``docs/performance_figures.inc``: every record in full, a table per benchmark (the docs' performance page
  includes it);
* the README's compact table, between the markers ``<!-- performance table -->`` and
  ``<!-- end of performance table -->``.

    python benchmarks/report.py            # rewrite both
    python benchmarks/report.py --check    # exit 1 when either differs from what the records give

``tests/test_readme.py`` runs the check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
PAGE = ROOT / "docs" / "performance_figures.inc"
BEGIN, END = "<!-- performance table -->", "<!-- end of performance table -->"


def records(results: Path = RESULTS) -> dict[str, dict]:
    """Every record in ``results``, by file stem, in name order."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(results.glob("*.json"))}


def rate(x: float) -> str:
    """A rate or a count as the tables print it: 3 significant digits, ``1.18e9`` above 100,000."""
    if x >= 1e5:
        mantissa, exponent = f"{x:.2e}".split("e")
        return f"{float(mantissa):.3g}e{int(exponent)}"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def times(x: float) -> str:
    """A ratio: ``525x``, ``10.8x``, ``1.34x``, ``0.29x``."""
    return f"{x:,.0f}x" if x >= 100 else f"{x:.3g}x"


def seconds(x: float) -> str:
    """A wall time: ``0.27 s``, ``10.9 s``, ``267 s``."""
    return f"{x:.3g} s" if x < 100 else f"{x:,.0f} s"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def machine(record: dict, short: bool = False) -> str:
    """``Intel Xeon Processor, 2 cores, 2 threads``, and the device when it is not the CPU."""
    m = record["machine"]
    threads = f"{m['threads']} thread" + ("s" if m["threads"] != 1 else "")
    cpu = f"{m['cpu'].replace('(R)', '').replace('(TM)', '')}, {m['cores']} cores, {threads}"
    if m["device"] != "cpu":
        return m["device"] if short else f"{m['device']}; host {cpu}"
    return cpu if short else f"{cpu}; torch {m['torch']}"


# --- the README's compact table: one line per headline figure --------------------------------------------

def _rounds(spread: dict, key: str, bounds: dict | None = None) -> str:
    """`` (rounds a to b)``: a ratio's range over the benchmark's rounds (the machine's spread), where recorded, and
    ``; at most c with one read of each draw`` where the benchmark recorded the most the machine allows for it."""
    parts = [f"rounds {spread[key][0]:.2f} to {spread[key][1]:.2f}"] if key in spread else []
    if bounds and key in bounds:
        parts.append(f"at most {bounds[key]:.2f} with one read of each draw")
    return f" ({'; '.join(parts)})" if parts else ""


def headline_rows(found: dict[str, dict]) -> list[tuple[str, str, str, dict]]:
    """(what, gradstats' figure, against what, the record) for the figures the README shows."""
    rows = []
    if "exact" in found:
        f = found["exact"]["figures"]
        rows.append(("exact gradient, 2^20 joint states (W2)", seconds(f["gradient_seconds"]),
                     f"{times(f['loop_gradient_seconds'] / f['gradient_seconds'])} a Python loop over the states",
                     found["exact"]))
        rows.append(("exact ST moments with full covariance (W2)", seconds(f["st_moments_seconds"]),
                     f"{times(f['loop_st_moments_seconds'] / f['st_moments_seconds'])} the loop", found["exact"]))
    for name in ("montecarlo", "montecarlo_cuda"):
        if name in found:
            f, where = found[name]["figures"], "" if name == "montecarlo" else ", GPU"
            best = max([f["fused"], *f.get("fused_by_chunk", {}).values()])
            rows.append((f"Monte Carlo statistics, ST (W1{where})", f"{rate(f['eager'])} draws/s eager, "
                         f"{rate(best)} fused", f"{times(f['eager'] / f['loop'])} a per-draw autograd loop, "
                         f"{times(f['eager'] / f['vmap_grad'])} `vmap(grad)`", found[name]))
            slowest = min(f["rows"], key=lambda r: r["eager_draws_per_second"])
            rows.append((f"the slowest estimator (W1{where})", f"{rate(slowest['eager_draws_per_second'])} draws/s",
                         f"{slowest['estimator']}: {slowest['over_st']:.2f} of ST's rate, "
                         f"{plural(slowest['loss_evals_per_draw'], 'loss evaluation')} a draw", found[name]))
    for name in ("byom", "byom_cuda"):
        if name in found:
            r, q = found[name]["figures"]["rates"], found[name]["figures"]["ratios"]
            spread = found[name]["figures"].get("ratio_ranges", {})
            bounds = found[name]["figures"].get("bounds", {})
            against = [f"{times(q['gradient_stats_over_loop'])} a per-draw backward loop"]
            if "gradient_stats_over_backpack" in q:
                against.append(f"{times(q['gradient_stats_over_backpack'])} BackPACK's BatchGrad")
            if "gradient_stats_over_bare_vmap" in q:
                against.append(f"{q['gradient_stats_over_bare_vmap']:.2f}"
                               f"{_rounds(spread, 'gradient_stats_over_bare_vmap', bounds)} of a bare `vmap(grad)`")
            if "update_over_roofline" in q:
                against.append(f"the update alone {q['update_over_roofline']:.2f}{_rounds(spread, 'update_over_roofline')} "
                               "of one read at the memory bandwidth")
            rows.append((f"your own model, {found[name]['parameters']:,} parameters", f"{rate(r['gradient_stats'])} "
                         "draws/s", ", ".join(against), found[name]))
    if "training" in found:
        ratios = [r["ratio"] for r in found["training"]["figures"]["rows"]]
        rows.append(("many training runs as one (`train_many`)", f"{min(ratios):.3g}x to {max(ratios):.3g}x the "
                     "runs per second", "`train` one run at a time", found["training"]))
    if "conditional" in found:
        alone = next(r for r in found["conditional"]["figures"]["mnist"] if r["gate"] == "st" and r["runs"] == 1)
        rows.append(("the seed paper's gated network on MNIST", f"{seconds(alone['seconds_per_epoch_per_run'])} an "
                     "epoch", f"{alone['share_of_roofline']:.0%} of the CPU's float32 matrix-product rate",
                     found["conditional"]))
    if "audit" in found:
        by = {r["path"]: r["draws_per_second"] for r in found["audit"]["figures"]["rows"]}
        ours = by["gradstats (streaming)"]
        rows.append(("REINFORCE's statistics beside the peers (W1)", f"{rate(ours)} draws/s",
                     f"{times(ours / by['storchastic batched (plate)'])} storchastic, "
                     f"{times(ours / by['pyro batched (plate)'])} pyro (their batched paths)", found["audit"]))
    if "sweep" in found:
        f = found["sweep"]["figures"]
        rows.append(("a sweep on a Dask cluster of 2 workers", seconds(f["workers_2_seconds"]),
                     f"{times(f['workers_1_seconds'] / f['workers_2_seconds'])} 1 worker", found["sweep"]))
    return rows


def readme_table(found: dict[str, dict]) -> str:
    lines = ["| workload | gradstats | against | machine, date | command |", "| --- | --- | --- | --- | --- |"]
    for what, ours, against, record in headline_rows(found):
        lines.append(f"| {what} | {ours} | {against} | {machine(record, short=True)}, {record['date']} | "
                     f"`{record['command']}` |")
    return "\n".join(lines)


def with_readme_table(text: str, table: str) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"README.md has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


# --- the docs page: every record in full --------------------------------------------------------------------

TITLES = {"exact": "Exact enumeration on the CPU (W2)", "exact_device": "Exact enumeration on a device (W4)",
          "montecarlo": "Monte Carlo statistics (W1)", "montecarlo_estimators": "Monte Carlo, per estimator (W1)",
          "byom": "Your own model", "training": "Many training runs as one", "conditional": "The gated network",
          "audit": "Beside the peers", "sweep": "Sweeps on Dask"}


def list_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *body]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return lines + [""]


def estimator_table(rows: list[dict]) -> list[str]:
    fused = any("fused_draws_per_second" in r for r in rows)
    header = ["estimator", "draws/s (eager)", "over ST's", "loss evaluations a draw"] + (["fused draws/s"] * fused)
    body = [[f"``{r['estimator']}``", rate(r["eager_draws_per_second"]), f"{r['over_st']:.2f}",
             str(r["loss_evals_per_draw"])] + ([rate(r["fused_draws_per_second"]) if "fused_draws_per_second" in r
                                                else ""] * fused) for r in rows]
    return list_table(header, body)


def body(kind: str, record: dict) -> list[str]:
    f = record["figures"]
    if kind == "exact":
        return list_table(["task", "gradstats", "Python loop over the states (extrapolated)", "speed-up"], [
            ["exact gradient", seconds(f["gradient_seconds"]), seconds(f["loop_gradient_seconds"]),
             times(f["loop_gradient_seconds"] / f["gradient_seconds"])],
            ["exact ST moments (mean, variance, full covariance)", seconds(f["st_moments_seconds"]),
             seconds(f["loop_st_moments_seconds"]), times(f["loop_st_moments_seconds"] / f["st_moments_seconds"])]]
            + ([[f"exact gradient, 2^20 states of 5 + 5 categorical units of 4 classes (D = {f['categorical_parameters']})",
                 seconds(f["categorical_gradient_seconds"]), "", ""]] if "categorical_gradient_seconds" in f else []))
    if kind == "exact_device":
        rows = [[str(r["units"]), f"{r['states']:.2g}", seconds(r["seconds"])] for r in f["rows"]]
        lines = list_table(["units", "joint states", "seconds"], rows)
        if f.get("cpu_seconds") is not None:
            lines += [f"The same gradient of {f['cpu_units']} units on the host's CPU: {seconds(f['cpu_seconds'])}.", ""]
        return lines
    if kind == "montecarlo":
        paths = [("gradstats, eager (streaming, nothing materialised per draw)", f["eager"]),
                 ("gradstats, fused (``fuse=True``)", f["fused"]), ("gradstats, fused, float32", f["fused_float32"]),
                 *[(f"gradstats, fused, chunks of {int(c):,}", r) for c, r in f.get("fused_by_chunk", {}).items()],
                 ("``torch.func.vmap(grad)``, materialised, then reduced", f["vmap_grad"]),
                 ("a per-draw autograd loop", f["loop"]), ("the noise stream alone (no gradients)", f["noise_alone"])]
        lines = list_table(["path", "draws/s", "over the loop", "over vmap(grad)", "share of the roofline"],
                           [[label, rate(r), times(r / f["loop"]), times(r / f["vmap_grad"]),
                             f"{r / f['roofline']:.0%}"] for label, r in paths])
        lines += [f"The roofline is the rate at which merely writing a materialised float64 per-draw gradient "
                  f"would saturate the memory bandwidth measured by a large copy in the same run "
                  f"({f['bandwidth_bytes_per_second'] / 1e9:.1f} GB/s: {rate(f['roofline'])} draws/s). The fused "
                  f"path compiled once in {f['compile_seconds']:.1f} s (float64)"
                  + (f"; a profile of it found the device busy {f['profile_busy_share']:.0%} of the time."
                     if "profile_busy_share" in f else "."), "",
                  f"Per estimator, {record['estimator_draws']:,} draws each, same statistics:", ""]
        return lines + estimator_table(f["rows"])
    if kind == "montecarlo_estimators":
        return estimator_table(f["rows"])
    if kind == "byom":
        labels = {"gradient_stats": "``gs.gradient_stats`` (vmap of grad, then ``GradientStats.update``)",
                  "bare_vmap_grad": "a hand-written ``vmap(grad)``, the gradients alone",
                  "backpack_batchgrad": "BackPACK ``BatchGrad``, into the same ``GradientStats``",
                  "loop": "a per-draw loop of backward passes, into the same ``GradientStats``",
                  "update_alone": "``GradientStats.update`` alone (a stream of known length)",
                  "roofline": "memory roofline: one read of a draw's gradient"}
        lines = list_table(["path", "draws/s"], [[labels[k], rate(v)] for k, v in f["rates"].items()])
        targets = {"update_over_roofline": ("the update over the roofline", 0.40),
                   "gradient_stats_over_backpack": ("``gs.gradient_stats`` over BackPACK", 1.5),
                   "gradient_stats_over_bare_vmap": ("``gs.gradient_stats`` over the gradients alone", 0.75),
                   "gradient_stats_over_loop": ("``gs.gradient_stats`` over the loop", None)}
        spread, bounds = f.get("ratio_ranges", {}), f.get("bounds", {})
        lines += list_table(["ratio", "measured (median of the rounds)", "rounds", "target", "at most"], [
            [targets[k][0], f"{v:.2f}", f"{spread[k][0]:.2f} to {spread[k][1]:.2f}" if k in spread else "",
             "" if targets[k][1] is None else f"at least {targets[k][1]}", f"{bounds[k]:.2f}" if k in bounds else ""]
            for k, v in f["ratios"].items()])
        if bounds:
            lines += ["The most the statistics could leave of the gradients' rate is the gradients followed by one "
                      "read of each draw at the roofline, measured in each round: roofline / (roofline + gradients "
                      "alone), its median over the rounds.", ""]
        return lines
    if kind == "training":
        return list_table(["architecture", "estimator", "runs", "one at a time (runs/s)", "stacked (runs/s)",
                           "speed-up", "largest relative gap"],
                          [[r["architecture"], f"``{r['estimator']}``", str(r["runs"]), f"{r['alone_runs_per_s']:.3g}",
                            f"{r['stacked_runs_per_s']:.3g}", times(r["ratio"]), f"{r['largest_relative_gap']:.1e}"]
                           for r in f["rows"]])
    if kind == "conditional":
        lines = list_table(["gate", "runs", "how", "seconds an epoch a run", "GFLOP/s", "share of the matrix "
                            "product's rate", "a loss evaluation over ST's"],
                           [[f"``{r['gate']}``", str(r["runs"]), "batched" if r["batched"] else
                             ("one after another" if r["runs"] > 1 else "alone"),
                             f"{r['seconds_per_epoch_per_run']:.1f}", f"{r['gflops']:.1f}",
                             f"{r['share_of_roofline']:.0%}", f"{r['per_loss_evaluation_vs_st']:.2f}"
                             if "per_loss_evaluation_vs_st" in r else ""] for r in f["mnist"]])
        lines += [f"A step is {f['step_mflop']:.0f} MFLOP; a 2048^3 float32 matrix product runs at "
                  f"{f['matmul_gflops']:.0f} GFLOP/s here. The digits network, stacked:", ""]
        return lines + list_table(["runs", "runs/s (5 epochs each)"],
                                  [[str(r["runs"]), f"{r['runs_per_second']:.3g}"] for r in f["digits"]])
    if kind == "audit":
        ours = f["rows"][0]["draws_per_second"]
        return list_table(["path", "draws/s", "gradstats is"], [[r["path"], rate(r["draws_per_second"]),
                                                                  times(ours / r["draws_per_second"])] for r in f["rows"]])
    if kind == "sweep":
        one = f["workers_1_seconds"]
        return list_table(["where", "wall time", "over 1 worker"], [
            ["in-process (1 thread)", seconds(f["in_process_seconds"]), times(one / f["in_process_seconds"])],
            ["Dask LocalCluster, 1 worker", seconds(one), "1x"],
            ["Dask LocalCluster, 2 workers", seconds(f["workers_2_seconds"]), times(one / f["workers_2_seconds"])]])
    raise ValueError(f"no renderer for benchmark {kind!r}")


def page(found: dict[str, dict]) -> str:
    lines = [".. This file is written by benchmarks/report.py from benchmarks/results/*.json; do not edit it.", ""]
    for stem, record in found.items():
        title = TITLES.get(record["benchmark"], stem)
        if record["machine"]["device"] != "cpu":
            title += f", {record['machine']['device']}"
        lines += [title, "~" * len(title), "", f":workload: {record['workload']}",
                  f":machine: {machine(record)}", f":date: {record['date']}", f":command: ``{record['command']}``",
                  f":record: ``benchmarks/results/{stem}.json``", ""]
        lines += body(record["benchmark"], record)
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that both are up to date")
    args = parser.parse_args(argv)
    found = records()
    readme = with_readme_table(README.read_text(), readme_table(found))
    stale = [path for path, text in ((README, readme), (PAGE, page(found)))
             if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is not what benchmarks/report.py writes from benchmarks/results/: "
                  "run python benchmarks/report.py", file=sys.stderr)
        return 1 if stale else 0
    README.write_text(readme)
    PAGE.write_text(page(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
