"""Throughput beside the peers: per-draw gradient statistics of REINFORCE on W1, gradstats against
storchastic 0.3.7 and pyro 1.9.2.

Workload W1 (docs/performance.rst: input 8 -> 16 binary units -> readout to 4 outputs, squared error),
with the estimator every library has: REINFORCE without a baseline (gradstats ``reinforce``,
storchastic ``ScoreFunction()``, pyro ``TraceGraph_ELBO()``). Draws per second of

* gradstats: ``gs.moments(..., method="mc")`` (streaming statistics, nothing materialised per draw);
* each peer's best batched way (``gradstats.audit``: each draw its own parameter rows in a plate, one
  backward pass per chunk), its per-draw gradients streamed into ``gs.GradientStats``;
* each peer's per-draw loop (one call and backward pass per draw, what its users write).

Every path's mean is checked against the exact gradient (within 5 standard errors); gradstats and the batched
paths are timed twice and the faster run kept (the first also compiles GradientStats' kernels); ratios are
against the same run.

    python benchmarks/audit.py [--draws 1048576] [--peer-draws 262144] [--loop-draws 300] [--threads 2] [--json PATH]

``--json`` (default ``benchmarks/results/audit.json``; ``''`` for none) writes the rates for
``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch
from _record import default_path, write

import gradstats as gs
from gradstats import audit


def check(name: str, mean: torch.Tensor, stderr: torch.Tensor, exact: torch.Tensor) -> None:
    z = ((mean - exact).abs() / stderr.clamp_min(1e-300)).max()
    if not float(z) <= 5:
        raise AssertionError(f"{name}: mean disagrees with the exact gradient (max |z| {float(z):.1f})")


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def streamed(chunks) -> gs.GradientStats:
    stats = gs.GradientStats()
    for chunk in chunks:
        stats.update(chunk)
    return stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2**20, help="draws for gradstats")
    parser.add_argument("--peer-draws", type=int, default=2**18, help="draws for each peer's batched path")
    parser.add_argument("--loop-draws", type=int, default=300, help="draws for each per-draw loop (slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=default_path("audit"), help="where to write the rates ('' for nowhere)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    problem = gs.problems.sbn([8, 16], "squared_error", seed=0)
    exact = gs.exact_gradient(problem)
    print(f"W1 audit throughput: sbn [8, 16] -> readout 4, squared error, REINFORCE; D = {problem.num_parameters}; "
          f"cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, {args.threads} threads")
    rows = []
    seconds, ours = min((timed(lambda: gs.moments(problem, "reinforce", method="mc", num_samples=args.draws, seed=0,
                                                  device="cpu", progress=False)) for _ in range(2)),
                        key=lambda pair: pair[0])
    check("gradstats", ours.mean, ours.mean_stderr, exact)
    rows.append(("gradstats (streaming)", args.draws / seconds))
    peers = {"storchastic": {e.name: e for e in audit.storchastic_estimators()}["ScoreFunction()"],
             "pyro": {e.name: e for e in audit.pyro_estimators()}["TraceGraph_ELBO()"]}
    for peer, est in peers.items():
        # best of two runs: the first also compiles GradientStats' kernels for the peer's chunks (shape, dtype)
        seconds, stats = min((timed(lambda est=est: streamed(audit.peer_gradients(est, problem, args.peer_draws, seed=1,
                                                                                  chunk_size=2**15)))
                              for _ in range(2)), key=lambda pair: pair[0])
        check(f"{peer} batched", stats.moments.mean, stats.moments.mean_stderr, exact)
        rows.append((f"{peer} batched (plate)", args.peer_draws / seconds))
        seconds, draws = timed(lambda est=est: audit.peer_loop_gradients(est, problem, args.loop_draws, seed=2))
        check(f"{peer} loop", draws.mean(0), draws.std(0) / len(draws) ** 0.5, exact)
        rows.append((f"{peer} per-draw loop", args.loop_draws / seconds))
    ours_rate = rows[0][1]
    print(f"{'path':32s} {'draws/s':>10s} {'gradstats is':>14s}")
    for label, rate in rows:
        print(f"{label:32s} {rate:10.3g} {ours_rate / rate:13.1f}x")
    write(args.json, "audit", f"W1: sbn [8, 16] -> readout 4, squared error, REINFORCE without a baseline; "
          f"D = {problem.num_parameters}", {"rows": [{"path": label, "draws_per_second": r} for label, r in rows]},
          draws=args.draws, peer_draws=args.peer_draws, loop_draws=args.loop_draws)


if __name__ == "__main__":
    main()
