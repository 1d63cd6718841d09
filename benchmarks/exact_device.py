"""W4: the exact gradient of two-layer networks of 24, 28 and 30 binary units, on a device.

Each network is ``sbn([6, n, n])`` (2n binary units, 2^(2n) joint states). First a
16-unit network's exact gradient on the device is checked against the CPU's (float64,
relative 1e-10); then each size is timed once on the device, and the baseline, the
24-unit network on this machine's CPU, in the same run. A size whose estimate (from
the one before, at 4x a step of two units) exceeds ``--budget`` seconds is skipped
and says so.

    python benchmarks/exact_device.py [--device cuda] [--units 24,28,30] [--chunk-size 2097152] [--threads 2]
        [--json PATH]

``--json`` (default ``benchmarks/results/exact_device_DEVICE.json``; ``''`` for none) writes the times for
``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from _record import default_path, write

import gradstats as gs


def network(units: int) -> gs.problems.Problem:
    if units % 2:
        raise ValueError(f"--units must be even (two layers of units / 2), got {units}")
    return gs.problems.sbn([6, units // 2, units // 2], seed=0)


def timed_gradient(problem, device, chunk_size) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    g = gs.exact_gradient(problem, device=device, chunk_size=chunk_size, max_states=2**problem.num_units)
    sync(device)
    return time.perf_counter() - start, g


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--units", default="24,28,30")
    parser.add_argument("--cpu-units", type=int, default=24, help="the CPU baseline's size (0: none)")
    parser.add_argument("--chunk-size", type=int, default=None, help="states per pass (default: the device's)")
    parser.add_argument("--budget", type=float, default=120.0, help="skip a size estimated to take longer (s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="where to write the times ('' for nowhere)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = gs.noise.resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"W4: exact gradient of sbn([6, n/2, n/2]) on {device.type} ({name}), torch {torch.__version__}, "
          f"{args.threads} CPU threads, chunk {args.chunk_size or 'default'}")

    check = network(16)
    on_device = gs.exact_gradient(check, device=device, chunk_size=args.chunk_size)
    assert torch.allclose(on_device, gs.exact_gradient(check), rtol=1e-10, atol=1e-14), "device and CPU disagree"
    print("16 units: device gradient = CPU gradient (rtol 1e-10)")

    cpu_seconds = None
    if args.cpu_units:
        cpu_seconds, _ = timed_gradient(network(args.cpu_units), torch.device("cpu"), None)
        print(f"baseline: {args.cpu_units} units on the CPU ({platform.processor() or platform.machine()}): "
              f"{cpu_seconds:.2f} s")
    print(f"{'units':>5s} {'states':>15s} {'seconds':>9s} {'states/s':>10s} {'vs CPU':>8s}")
    previous, rows = None, []
    for units in (int(u) for u in args.units.split(",")):
        if previous is not None and previous[1] * 2 ** (units - previous[0]) > args.budget:
            print(f"{units:5d} skipped: estimated {previous[1] * 2 ** (units - previous[0]):.0f} s > --budget")
            continue
        seconds, g = timed_gradient(network(units), device, args.chunk_size)
        if not bool(torch.isfinite(g).all()):
            raise AssertionError(f"{units} units: non-finite gradient")
        ratio = f"{cpu_seconds / seconds:7.1f}x" if cpu_seconds is not None and units == args.cpu_units else ""
        print(f"{units:5d} {2**units:15,d} {seconds:9.2f} {2**units / seconds:10.3g} {ratio:>8s}")
        previous = (units, seconds)
        rows.append({"units": units, "states": 2**units, "seconds": seconds})
    if args.json is None:
        args.json = default_path("exact_device", "cuda") if device.type == "cuda" else default_path("exact_device_cpu")
    write(args.json, "exact_device", "W4: the exact gradient of sbn([6, n/2, n/2]), two layers of n binary units",
          {"rows": rows, "cpu_units": args.cpu_units, "cpu_seconds": cpu_seconds}, device,
          chunk_size=args.chunk_size)


if __name__ == "__main__":
    main()
