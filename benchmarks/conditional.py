"""The seed paper's conditional-computation network on MNIST: seconds per epoch per run, stacked and alone.

Workload: the paper's network (784 -> 400 tanh -> 2000 gates; a 784 -> 2000 linear expert; softmax), minibatch
32, float32, trained through ``gs.conditional.train_gated_many`` (``train_gated`` is a stack of one). An epoch
is 50,000 images (1,562 steps); the time of a step is measured on 6,400 images as (3 epochs - 1 epoch) / 400
steps, so that the one evaluation at the end cancels. Prints, in one run:

* seconds per epoch per run for stacks of 1, 4 and 8 runs (MNIST's network goes one run after another:
  ``conditional.BATCH_BYTES``) and, for comparison, 4 runs forced through the batched path;
* the multiply-adds of a step (forward, and the backward's two products per layer but the input's), the
  GFLOP/s reached, and a large float32 matrix product's GFLOP/s measured here (the roofline);
* for REINFORCE, leave-one-out and DisARM gates: seconds per step and per loss evaluation relative to ST;
* the digits network (64 -> 32 -> 160 gates) with 1, 4 and 16 runs stacked (batched): runs per second.

With ``--stacks DEVICE`` it measures instead, on DEVICE (a GPU), seconds per epoch of a stack of 1, 4 and 8
ST runs trained eagerly and with each step compiled (``train_gated_many(compile=True)``), timed between the ends
of the first and the last of 3 epochs of 6,400 images (so that compiling, in the first, is left out) and scaled
to 50,000 images; printed, nothing written.

With ``--processes N`` it measures instead how to share the CPU between runs (several ``analyses/fig_mnist.py
--recompute`` processes): ST's seconds per step in one process of N threads, then in N processes of one thread
at once (each its own run, as the study's processes train), and the runs per hour of the N processes over the
one: per round, then their median and range over ``--repeats`` rounds, the two setups alternating; nothing
written. With ``--processes N --compile`` it compares instead N one-thread processes training eagerly with N
whose every step is compiled (``train_gated_many(compile=True)``, as ``analyses/fig_mnist.py --recompute
--compile`` trains): each gate of ``--gates`` in turn, a step's time from the end of a run's first epoch (which
compiles) to the end of its fourth, the two setups alternating in each round.

    python benchmarks/conditional.py [--threads 2] [--gates st,reinforce,reinforce_loo,disarm] [--json PATH]
    python benchmarks/conditional.py --processes 2 [--repeats 9]
    python benchmarks/conditional.py --processes 2 --compile --gates st,disarm --repeats 3
    python benchmarks/conditional.py --stacks cuda

``--json`` (default ``benchmarks/results/conditional.json``; ``''`` for none) writes the figures for
``benchmarks/report.py``.

Needs MNIST (``gradstats data mnist``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import torch
from _record import default_path, write

import gradstats as gs
from gradstats import conditional as cc
from gradstats.datasets import Split

STEPS = 200
LOSS_EVALS = {"st": 1, "reinforce": 1, "reinforce_loo": 2, "disarm": 2}


def subset(data: Split, images: int) -> Split:
    return Split(data.name, (data.train[0][:images], data.train[1][:images]),
                 (data.validation[0][:256], data.validation[1][:256]), (data.test[0][:256], data.test[1][:256]))


def seconds_per_step(data: Split, gate: str, runs: int, batched: bool | None = None, repeats: int = 2) -> float:
    """Per run: (3 epochs - 1 epoch) / (2 epochs of STEPS steps), each the best of ``repeats``."""
    return min(_seconds_per_step(data, gate, runs, batched) for _ in range(repeats))


def _seconds_per_step(data: Split, gate: str, runs: int, batched: bool | None) -> float:
    times = []
    for epochs in (1, 3):
        settings = cc.Settings(gate, epochs=epochs, learning_rate=0.1, eval_every=100)
        limit = cc.BATCH_BYTES
        if batched:
            cc.BATCH_BYTES = 2**62
        try:
            start = time.perf_counter()
            cc.train_gated_many(data, [settings] * runs, list(range(runs)), device="cpu")
            times.append(time.perf_counter() - start)
        finally:
            cc.BATCH_BYTES = limit
    return (times[1] - times[0]) / (2 * STEPS) / runs


def stack_epoch_seconds(data: Split, gate: str, runs: int, device: str, compile: bool, epochs: int = 3) -> float:
    """Seconds per epoch of a stack of ``runs`` runs on ``device``: from the end of its first epoch to the end of
    its last (each epoch's end waits for the device: its on-fractions are read back)."""
    ends = []
    settings = cc.Settings(gate, epochs=epochs, learning_rate=0.1, eval_every=100)
    cc.train_gated_many(data, [settings] * runs, list(range(runs)), device=device, compile=compile,
                        progress=lambda line: ends.append(time.perf_counter()))
    return (ends[-1] - ends[0]) / (epochs - 1)


def compare_stacks(device: str) -> None:
    """:func:`stack_epoch_seconds` of ST stacks, eager and compiled, scaled to an epoch of MNIST's 50,000 images."""
    data = subset(gs.datasets.mnist(), 32 * STEPS)
    print(f"ST on MNIST on {device}, torch {torch.__version__}: seconds per epoch of 50,000 images, per stack")
    for runs in (1, 4, 8):
        eager = stack_epoch_seconds(data, "st", runs, device, False) * 50_000 / (32 * STEPS)
        compiled = stack_epoch_seconds(data, "st", runs, device, True) * 50_000 / (32 * STEPS)
        print(f"  {runs} run(s): eager {eager:6.2f} s, compiled {compiled:6.2f} s ({eager / compiled:.2f}x)", flush=True)


def multiply_adds(arch: cc.Architecture, minibatch: int = 32) -> int:
    """A training step's multiply-adds: the forward products, and in the backward each product's two (the
    weights' gradient and the input's), but the input's of the first layers (x needs none)."""
    forward = arch.inputs * arch.gater_hidden + arch.gater_hidden * arch.gates + arch.inputs * arch.gates \
        + arch.gates * arch.classes
    backward_inputs = arch.gater_hidden * arch.gates + arch.gates * arch.classes
    return minibatch * (2 * forward + backward_inputs)


def matmul_gflops(size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _in_processes(worker_args: list[str], threads: int, processes: int) -> list[float]:
    """The seconds per step that each of ``processes`` fresh processes of ``threads`` threads, started together
    as this script with ``worker_args``, prints last."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, *worker_args]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outputs = [w.communicate()[0] for w in workers]
    if any(w.returncode for w in workers):
        raise SystemExit(f"a worker failed: {outputs}")
    return [float(o.split()[-1]) for o in outputs]


def _step_in_process(threads: int, processes: int) -> list[float]:
    """ST's seconds per step (one run, best of 1) in each of ``processes`` fresh processes of ``threads`` threads
    started together."""
    return _in_processes(["--step-worker", str(threads)], threads, processes)


def _compiled_step_in_process(processes: int, gate: str, compile: bool) -> list[float]:
    """``gate``'s seconds per step (one run, epochs 2 to 4 of :func:`stack_epoch_seconds`) in each of ``processes``
    fresh one-thread processes started together, every step compiled or not."""
    return _in_processes(["--epoch-worker", "compiled" if compile else "eager", "--gates", gate], 1, processes)


def compare_compiled(processes: int, gates: list[str], repeats: int) -> None:
    """``processes`` one-thread processes eager against as many compiled (module docstring): each round's ms a step
    and the runs per hour of the compiled over the eager, then their median and range per gate."""
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}; on MNIST, {processes} one-thread "
          "processes at once, ms a step:")
    ratios = {g: [] for g in gates}
    for r in range(repeats):
        for gate in gates:
            eager = statistics.mean(_compiled_step_in_process(processes, gate, False))
            compiled = statistics.mean(_compiled_step_in_process(processes, gate, True))
            ratios[gate].append(eager / compiled)
            print(f"  round {r + 1}, {gate}: eager {eager * 1e3:.2f}, compiled {compiled * 1e3:.2f}; runs per hour "
                  f"{ratios[gate][-1]:.2f}x", flush=True)
    for gate, rs in ratios.items():
        print(f"  {gate}: runs per hour, compiled over eager: median {statistics.median(rs):.2f}x over {repeats} "
              f"rounds (from {min(rs):.2f}x to {max(rs):.2f}x)")


def compare_processes(processes: int, repeats: int) -> None:
    """One process of ``processes`` threads against ``processes`` processes of one thread (module docstring):
    each round's two figures and their ratio in runs per hour, then the median and range of the ratios (the rounds
    alternate the two setups, so a machine whose speed drifts moves both)."""
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}; ST on MNIST, ms a step:")
    ratios = []
    for r in range(repeats):
        threaded = _step_in_process(processes, 1)[0]
        shared = statistics.mean(_step_in_process(1, processes))
        ratios.append(processes * threaded / shared)
        print(f"  round {r + 1}: 1 process of {processes} threads {threaded * 1e3:.2f}; {processes} processes of 1 "
              f"thread at once {shared * 1e3:.2f} each; runs per hour {ratios[-1]:.2f}x", flush=True)
    print(f"  runs per hour, {processes} processes over 1: median {statistics.median(ratios):.2f}x over {repeats} "
          f"rounds (from {min(ratios):.2f}x to {max(ratios):.2f}x)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gates", default="st,reinforce,reinforce_loo,disarm")
    parser.add_argument("--json", default=default_path("conditional"), help="where to write the figures ('' for nowhere)")
    parser.add_argument("--processes", type=int, help="compare N one-thread processes with one N-thread process")
    parser.add_argument("--repeats", type=int, default=9, help="--processes: rounds (default 9)")
    parser.add_argument("--step-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--epoch-worker", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    parser.add_argument("--stacks", metavar="DEVICE", help="time ST stacks on DEVICE, eager and compiled")
    parser.add_argument("--compile", action="store_true",
                        help="--processes: compare N one-thread processes eager and compiled")
    args = parser.parse_args(argv)
    if args.stacks:
        torch.set_num_threads(args.threads)
        compare_stacks(args.stacks)
        return
    if args.step_worker:
        torch.set_num_threads(args.step_worker)
        print(seconds_per_step(subset(gs.datasets.mnist(), 32 * STEPS), "st", 1, repeats=1))
        return
    if args.epoch_worker:   # compare_compiled's worker: one thread, epochs 2 to 4 (the first compiles)
        torch.set_num_threads(1)
        data = subset(gs.datasets.mnist(), 32 * STEPS)
        gate = args.gates.split(",")[0]
        print(stack_epoch_seconds(data, gate, 1, "cpu", args.epoch_worker == "compiled", epochs=4) / STEPS)
        return
    if args.processes and args.compile:
        compare_compiled(args.processes, args.gates.split(","), args.repeats)
        return
    if args.processes:
        compare_processes(args.processes, args.repeats)
        return
    torch.set_num_threads(args.threads)
    mnist = subset(gs.datasets.mnist(), 32 * STEPS)
    arch = cc.architecture_for(784, 10)
    roofline = matmul_gflops()
    flops = 2 * multiply_adds(arch)
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"a 2048^3 float32 product: {roofline:.0f} GFLOP/s; a step: {flops / 1e6:.0f} MFLOP")
    out = {"matmul_gflops": roofline, "step_mflop": flops / 1e6, "mnist": [], "digits": []}
    st_step = None
    for gate in args.gates.split(","):
        for runs, batched in ((1, None), (4, None), (8, None), (4, True)):
            if gate != "st" and runs > 1:
                continue
            step = seconds_per_step(mnist, gate, runs, batched)
            st_step = step if (gate, runs) == ("st", 1) else st_step
            row = {"gate": gate, "runs": runs, "batched": bool(batched), "seconds_per_epoch_per_run": step * 1562,
                   "gflops": flops / step / 1e9, "share_of_roofline": flops / step / 1e9 / roofline}
            if gate != "st" and st_step:
                row["per_loss_evaluation_vs_st"] = step / LOSS_EVALS[gate] / st_step
            out["mnist"].append(row)
            how = "batched" if batched else "one after another" if runs > 1 else "alone"
            extra = f", {row['per_loss_evaluation_vs_st']:.2f}x ST per loss evaluation" if "per_loss_evaluation_vs_st" \
                in row else ""
            print(f"  MNIST {gate:14s} {runs} run(s) {how:18s} {row['seconds_per_epoch_per_run']:6.1f} s per epoch per "
                  f"run, {row['gflops']:5.1f} GFLOP/s ({row['share_of_roofline']:.0%} of the roofline){extra}",
                  flush=True)
    digits = gs.datasets.digits(seed=0)
    base = cc.Settings("st", epochs=5, learning_rate=0.3)
    for runs in (1, 4, 16):
        start = time.perf_counter()
        cc.train_gated_many(digits, [replace(base, learning_rate=0.3)] * runs, list(range(runs)), device="cpu")
        rate = runs / (time.perf_counter() - start)
        out["digits"].append({"gate": "st", "runs": runs, "runs_per_second": rate})
        print(f"  digits st {runs:2d} run(s) stacked: {rate:5.2f} runs/s (5 epochs each)", flush=True)
    write(args.json, "conditional", "the seed paper's gated network on MNIST (784 -> 400 tanh -> 2000 gates, a 784 -> "
          "2000 linear expert, softmax), minibatch 32, float32; the digits network (64 -> 32 -> 160 gates)", out)


if __name__ == "__main__":
    main()
