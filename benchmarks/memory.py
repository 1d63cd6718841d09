"""What GradientStats holds for a model of ``D`` parameters: while streaming, and while its metrics are read.

Workload: ``--draws`` draws of a ``D``-coordinate float64 gradient (normal noise about a fixed reference) streamed in
chunks of 32 into a ``GradientStats`` with a reference and ``--num-batches`` jackknife batches, then
``to_frame()`` read once. Prints, per coordinate and jackknife batch,

* the bytes the batches hold while streaming (each storage counted once), against the own-model guide's 48;
* the bytes they hold once read (the folded summaries kept for the next read), against its 88;
* how far the process grew while ``to_frame()`` ran (its peak resident size, reset just before, less its
  resident size then, with the memory freed earlier given back first: Linux and glibc), and the seconds
  ``to_frame()`` took.

The process grows by what the allocator keeps as well, so this figure is an upper bound on what the reading needed.

    python benchmarks/memory.py [--coordinates 200000] [--num-batches 20] [--draws 1280]
"""

from __future__ import annotations

import argparse
import ctypes
import time
import warnings

import torch

import gradstats as gs


def resident_mb(field: str = "VmRSS") -> float:
    """The process's resident size (``VmRSS``) or its peak since the last reset (``VmHWM``), in MB."""
    with open("/proc/self/status") as status:
        return int(status.read().split(f"{field}:")[1].split()[0]) / 1024


def reset_peak() -> None:
    """Memory freed earlier given back to the system (glibc's ``malloc_trim``), then the peak reset."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinates", type=int, default=200_000)
    parser.add_argument("--num-batches", type=int, default=20)
    parser.add_argument("--draws", type=int, default=1280)
    args = parser.parse_args(argv)
    dim = args.coordinates
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(dim, generator=gen, dtype=torch.float64)
    stats = gs.GradientStats(reference=reference, num_batches=args.num_batches)._expect(args.draws)
    for start in range(0, args.draws, 32):
        rows = min(32, args.draws - start)
        stats.update(reference + torch.randn(rows, dim, generator=gen, dtype=torch.float64))
    batches = len(stats._batches)

    def per(nbytes: float) -> float:
        return nbytes / dim / batches

    streaming = per(stats._held_bytes())
    reset_peak()
    before = resident_mb()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats.to_frame()
    seconds = time.perf_counter() - start
    grown = (resident_mb("VmHWM") - before) * 2**20
    print(f"memory: {dim:,} coordinates, {batches} jackknife batches, {args.draws:,} draws in chunks of 32")
    print(f"  held while streaming: {streaming:5.1f} bytes a coordinate a batch (the guide: 48)")
    print(f"  held once read:       {per(stats._held_bytes()):5.1f} (the guide: 88)")
    print(f"  grown while reading:  {per(grown):5.1f} at most, to_frame() in {seconds:.2f} s")


if __name__ == "__main__":
    main()
