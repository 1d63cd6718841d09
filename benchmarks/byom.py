"""Bring your own model: per-draw gradients of a user's torch model streamed into GradientStats.

Workload: a two-layer straight-through network of binary units, 64 inputs -> 512 -> 160 -> 10
logits (116,970 parameters), cross-entropy on a fixed minibatch of 8 inputs; one draw is one
sample of every unit for the minibatch. All in one run, on the same uniforms, it prints draws per
second of

* ``gs.gradient_stats`` (``torch.func.vmap`` of ``grad`` over a chunk of draws, then one
  ``GradientStats.update`` per chunk);
* a hand-written ``vmap(grad)`` with ``randomness="different"`` that computes the per-draw
  gradients and nothing else (the cost of the gradients alone);
* BackPACK's ``BatchGrad`` (optional: ``pip install --no-deps backpack-for-pytorch==1.7.1 einops unfoldNd``;
  BatchGrad does not import its torchvision dependency) on the same network as
  ``nn.Module``s, its per-row gradients summed per draw and fed to the same ``GradientStats``;
* a per-draw loop of backward passes into the same statistics (what research code does without vmap);
* ``GradientStats.update`` alone, on chunks computed beforehand, in a stream of known length (as
  ``gs.gradient_stats`` runs it: the jackknife batches start at their final size, so none is merged on the
  way), the best of three passes, against the memory roofline: the bandwidth of a sum over a 256 MB buffer
  (the best of three), over the bytes of one draw's gradient (one read of the chunk), timed right after the
  update;

every path timed once a round, in ``--repeats`` rounds, and its median printed (a machine whose speed
drifts moves every path alike; each ratio is taken within a round, and its median over the rounds printed with
the rounds' range); with ``--processes N``, in N processes one after another, their rounds pooled (how a
process's memory happens to be laid out moves the bare gradients' rate from one process to the next); every path
scoring its draws against the same reference (the mean of 256 other draws), with the same statistics (moments to
the fourth, sign agreement, per-draw cosines, jackknife batches); and three ratios with their targets: update /
roofline (at least 0.40), gradient_stats / BackPACK (at least 1.5), gradient_stats / bare vmap(grad) (at least
0.75), the last with the most that any statistics reading each draw once could leave of the gradients' rate on
this machine: roofline / (roofline + bare vmap(grad)), the gradients followed by one read of each draw at the
memory roofline. ``--json`` (default ``benchmarks/results/byom.json``, ``byom_float32.json`` in float32,
``_cuda`` before the suffix on a GPU; ``''`` for none) writes them for ``benchmarks/report.py``, with every
round's rates.

``--profile`` also prints where the update spends its time (torch.profiler: on a GPU, every kernel it launches),
with the torch operations and compiled calls a chunk costs and its fixed cost: the time of an update whose chunk
has the model's groups at one coordinate each (host work and kernel launches, whatever the bytes). ``--sums``
picks the path of the update's sums (``auto``: the C kernel on a CPU, ``torch.compile`` elsewhere; ``compiled`` or
``eager``: torch's kernels, as an accelerator runs them; a record other than ``auto``'s gets the mode after
``byom``).

    python benchmarks/byom.py [--draws 2048] [--chunk 32] [--loop-draws 256] [--threads 2] [--device cpu]
                              [--dtype float64] [--repeats 5] [--processes 1] [--json out.json] [--profile]
                              [--sums auto|compiled|eager]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _record import default_path, write
from torch.nn import functional as F

import gradstats as gs
import gradstats.functional as gf
from gradstats.chunk_sums import ChunkSums

STATS_MODULE = importlib.import_module("gradstats.gradient_stats")   # the module (gs.gradient_stats: a function)
SIZES = (64, 512, 160, 10)
BATCH = 8
REFERENCE: dict | None = None   # what every path scores its draws against (set in main: a mean of 256 draws)


def model(device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {}
    for i, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:]), 1):
        params[f"W{i}"] = (torch.randn(m, n, generator=g, dtype=torch.float64) / m**0.5).to(device, dtype)
        params[f"c{i}"] = torch.zeros(n, dtype=dtype, device=device)
    x = torch.randn(BATCH, SIZES[0], generator=g, dtype=torch.float64).to(device, dtype)
    y = torch.randint(0, SIZES[-1], (BATCH,), generator=g).to(device)

    def loss(p, u):
        h1 = gf.straight_through(x @ p["W1"] + p["c1"], u=u["h1"])
        h2 = gf.straight_through(h1 @ p["W2"] + p["c2"], u=u["h2"])
        return F.cross_entropy(h2 @ p["W3"] + p["c3"], y)

    return params, loss, {"h1": (BATCH, SIZES[1]), "h2": (BATCH, SIZES[2])}


def model_data(device, dtype, seed=0):
    """The minibatch ``model`` closes over: the same generator calls, in the same order."""
    g = torch.Generator().manual_seed(seed)
    for m, n in zip(SIZES[:-1], SIZES[1:]):
        torch.randn(m, n, generator=g, dtype=torch.float64)
    x = torch.randn(BATCH, SIZES[0], generator=g, dtype=torch.float64).to(device, dtype)
    return x, torch.randint(0, SIZES[-1], (BATCH,), generator=g).to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_vmap(params, loss, noise, draws, chunk, device) -> tuple[float, gs.GradientStats]:
    sync(device)
    start = time.perf_counter()
    stats = gs.gradient_stats(loss, params, draws, noise_shape=noise, chunk_size=chunk, seed=1, reference=REFERENCE)
    sync(device)
    return time.perf_counter() - start, stats


def run_loop(params, loss, noise, draws, chunk, device) -> tuple[float, gs.GradientStats]:
    """The same uniforms as gs.per_draw_gradients (one CPU generator, drawn chunk by chunk), one backward per draw."""
    generator = torch.Generator().manual_seed(1)
    dtype = next(iter(params.values())).dtype
    stats = gs.GradientStats(reference=REFERENCE)
    sync(device)
    start = time.perf_counter()
    for lo in range(0, draws, chunk):
        rows = min(chunk, draws - lo)
        u = {k: torch.rand((rows, *s), generator=generator, dtype=torch.float64).to(device, dtype) for k, s in noise.items()}
        grads = {k: [] for k in params}
        for i in range(rows):
            leaf = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
            loss(leaf, {k: v[i] for k, v in u.items()}).backward()
            for k, v in leaf.items():
                grads[k].append(v.grad)
        stats.update({k: torch.stack(v) for k, v in grads.items()})
    sync(device)
    return time.perf_counter() - start, stats


def uniforms(noise, draws, chunk, device, dtype):
    """The chunks of uniforms gs.per_draw_gradients draws for seed 1 (one CPU generator, in draw order)."""
    generator = torch.Generator().manual_seed(1)
    for lo in range(0, draws, chunk):
        rows = min(chunk, draws - lo)
        yield {k: torch.rand((rows, *s), generator=generator, dtype=torch.float64).to(device, dtype)
               for k, s in noise.items()}


def run_bare_vmap(params, loss, noise, draws, chunk, device) -> float:
    """Seconds for the per-draw gradients alone: a hand-written vmap(grad), nothing accumulated."""
    from torch.func import grad, vmap

    per_draw = vmap(grad(loss), in_dims=(None, 0), randomness="different")
    dtype = next(iter(params.values())).dtype
    sync(device)
    start = time.perf_counter()
    for u in uniforms(noise, draws, chunk, device, dtype):
        per_draw(params, u)
    sync(device)
    return time.perf_counter() - start


class _StraightThrough(torch.nn.Module):
    """``h = 1[u < sigmoid(a)]`` with the uniforms in ``self.u``, and the identity backward, dL/da = dL/dh (as
    gf.straight_through)."""

    def forward(self, a):
        return a + ((self.u < torch.sigmoid(a)).to(a.dtype) - a).detach()


def backpack_model(params):
    """The workload as nn.Modules for BackPACK: Linear layers holding the same weights, ST modules between."""
    layers = []
    for i in range(1, len(SIZES)):
        linear = torch.nn.Linear(SIZES[i - 1], SIZES[i]).to(params["W1"])
        with torch.no_grad():
            linear.weight.copy_(params[f"W{i}"].T)
            linear.bias.copy_(params[f"c{i}"])
        layers.append(linear)
        if i < len(SIZES) - 1:
            layers.append(_StraightThrough())
    return torch.nn.Sequential(*layers)


def run_backpack(params, noise, draws, chunk, device, x, y) -> tuple[float, gs.GradientStats] | None:
    """BackPACK's BatchGrad on the same draws: each draw is one sample whose input is the minibatch (``[draws, 8,
    64]``; BackPACK sums a Linear layer's per-sample gradient over the extra axis), the loss the mean cross-entropy
    per draw summed over draws, the per-sample gradients fed to the same GradientStats; None without BackPACK."""
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad
    except ImportError:
        return None
    net = extend(backpack_model(params))
    straight = [m for m in net if isinstance(m, _StraightThrough)]
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    dtype = next(iter(params.values())).dtype
    stats = gs.GradientStats(reference=REFERENCE)
    sync(device)
    start = time.perf_counter()
    for u in uniforms(noise, draws, chunk, device, dtype):
        rows = u["h1"].shape[0]
        for module, key in zip(straight, ("h1", "h2")):
            module.u = u[key]
        net.zero_grad()
        with backpack(BatchGrad()):
            logits = net(x.expand(rows, *x.shape))
            F.cross_entropy(logits.reshape(-1, SIZES[-1]), y.repeat(rows), reduction="sum").div(BATCH).backward()
        grads = {}
        for i, linear in enumerate(linears, 1):
            grads[f"W{i}"] = linear.weight.grad_batch.transpose(1, 2)
            grads[f"c{i}"] = linear.bias.grad_batch
        stats.update(grads)
    sync(device)
    return time.perf_counter() - start, stats


def best_seconds(device, passes: int, run) -> float:
    """The least wall time of ``passes`` calls of ``run()``, the device synchronised before and after each."""
    best = math.inf
    for _ in range(passes):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def bandwidth(device) -> float:
    """Bytes per second of one read: the best of three sums over a 256 MB float64 buffer (out of every cache)."""
    buffer = torch.ones(2**25, dtype=torch.float64, device=device)
    return buffer.numel() * 8 / best_seconds(device, 3, buffer.sum)


def run_update(params, loss, noise, draws, chunk, device, passes=3) -> float:
    """Seconds for ``GradientStats.update`` alone on ``draws`` per-draw gradients computed beforehand (eight chunks
    in memory, fed in turn): the best of ``passes`` passes, as the roofline is the best of three sums (each the
    machine at its least disturbed), in a stream of known length whose first ``draws`` are a warm-up: the
    jackknife batches start at their final size, as ``gs.gradient_stats`` starts them (in a stream of unknown length
    the batches are merged pairwise each time the stream doubles, a cost per draw that halves with each doubling)."""
    chunks = list(gs.per_draw_gradients(loss, params, min(draws, 8 * chunk), noise_shape=noise, chunk_size=chunk,
                                        seed=1))
    stats = gs.GradientStats(reference=REFERENCE)._expect((passes + 1) * draws)

    def feed() -> int:
        done = 0
        while done < draws:
            for grads in chunks:
                stats.update(grads)
                done += next(iter(grads.values())).shape[0]
        return done

    done = feed()   # every pass feeds as many draws
    return best_seconds(device, passes, feed) * draws / done


def fixed_cost(params, chunk, device, passes=3, updates=32) -> float:
    """Seconds of one ``GradientStats.update`` of a chunk of ``chunk`` draws with the model's parameter groups cut
    to one coordinate each (the best of ``passes`` passes of ``updates`` updates, after a warm-up): what a chunk
    costs however few its bytes (host work, kernel launches, waits for the device)."""
    gen = torch.Generator().manual_seed(2)
    dtype = next(iter(params.values())).dtype
    reference = {k: torch.randn(1, generator=gen, dtype=torch.float64).to(device) for k in params}
    chunks = [{k: torch.randn(chunk, 1, generator=gen, dtype=torch.float64).to(device, dtype) for k in params}
              for _ in range(8)]
    stats = gs.GradientStats(reference=reference)._expect((passes + 2) * updates * chunk)
    for grads in chunks:
        stats.update(grads)

    def feed() -> None:
        for i in range(updates):
            stats.update(chunks[i % len(chunks)])

    return best_seconds(device, passes, feed) / updates


def profile_update(params, loss, noise, chunk, device, update_rate: float) -> None:
    """Where ``GradientStats.update`` spends its time on ``device``: which path computes the sums (the C kernel,
    ``torch.compile`` or eager), the fixed cost of a chunk (:func:`fixed_cost`) against the update's time a chunk
    (``update_rate``: draws per second), then torch.profiler's operations over eight chunks (after eight of
    warm-up), by their own time on the host and, on a GPU, on the device, with how many times each ran."""
    from torch.profiler import ProfilerActivity, profile

    chunks = list(gs.per_draw_gradients(loss, params, 8 * chunk, noise_shape=noise, chunk_size=chunk, seed=1))
    stats = gs.GradientStats(reference=REFERENCE)._expect(256 * chunk)   # batches longer than a chunk, as in a long run
    for grads in chunks:
        stats.update(grads)
    sums = STATS_MODULE._CHUNK_SUMS
    path = "C kernel" if device.type == "cpu" and sums._native else f"torch ({sums.mode})"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        for grads in chunks:
            stats.update(grads)
        sync(device)
    print(f"  profile of GradientStats.update, 8 chunks of {chunk} draws on {device}; the sums by the {path}")
    events = prof.key_averages()
    operations = sum(e.count for e in events if e.key.startswith("aten::")) / len(chunks)
    compiled = sum(e.count for e in events if e.key.startswith("Torch-Compiled Region")) / len(chunks)
    print(f"  a chunk costs {operations:.0f} torch operations (nested ones included) and {compiled:.0f} compiled calls")
    fixed, per_chunk = fixed_cost(params, chunk, device), chunk / update_rate
    print(f"  its fixed cost (the same groups at one coordinate each): {fixed * 1e3:.3f} ms an update, "
          f"{fixed / per_chunk:.2f} of the update's {per_chunk * 1e3:.3f} ms a chunk of the model")
    keys = ["self_cpu_time_total"] + (["self_cuda_time_total"] if device.type == "cuda" else [])
    for key in keys:
        print(events.table(sort_by=key, row_limit=15))


LABELS = {"gradient_stats": "gs.gradient_stats (vmap + update)", "bare_vmap_grad": "vmap(grad) alone, no statistics",
          "backpack_batchgrad": "BackPACK BatchGrad + update", "loop": "per-draw backward loop + update",
          "update_alone": "GradientStats.update alone", "roofline": "memory roofline (one read of a draw)"}
RATIOS = {"update_over_roofline": ("update_alone", "roofline", 0.40),
          "gradient_stats_over_backpack": ("gradient_stats", "backpack_batchgrad", 1.5),
          "gradient_stats_over_bare_vmap": ("gradient_stats", "bare_vmap_grad", 0.75),
          "gradient_stats_over_loop": ("gradient_stats", "loop", None)}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2048, help="draws for the vmap paths")
    parser.add_argument("--loop-draws", type=int, default=256, help="draws for the per-draw loop (it is slow)")
    parser.add_argument("--chunk", type=int, default=32, help="draws per chunk")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds, each timing every path once (the median is printed)")
    parser.add_argument("--processes", type=int, default=1,
                        help="processes, one after another, each running --repeats rounds; their rounds are pooled")
    parser.add_argument("--json", default=None, help="where to write the figures ('' for nowhere)")
    parser.add_argument("--profile", action="store_true",
                        help="also print where GradientStats.update spends its time (torch.profiler, eight chunks)")
    parser.add_argument("--sums", default="auto", choices=ChunkSums.MODES,
                        help="the path of GradientStats' sums (auto: the C kernel on a CPU, torch.compile elsewhere)")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.repeats < 1:
        parser.error(f"--processes and --repeats must be at least 1, got {args.processes} and {args.repeats}")
    if args.profile and args.processes > 1:
        parser.error("--profile runs in one process: leave out --processes")
    if args.json is None:
        name = "byom" + ("" if args.sums == "auto" else f"_{args.sums}")
        args.json = default_path(name if args.dtype == "float64" else f"{name}_{args.dtype}", args.device)
    return args


def run_rounds(args) -> tuple[list[dict], int]:
    """Every path timed once a round, in ``args.repeats`` rounds, in this process (after the check that the paths
    compute the same gradients): per round, draws per second of each path (the roofline's: one read of a draw at
    the bandwidth), and the model's parameter count (torch's threads as main sets them)."""
    if args.sums != "auto":
        STATS_MODULE._CHUNK_SUMS = ChunkSums(args.sums)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    params, loss, noise = model(device, dtype)
    x, y = model_data(device, dtype)
    global REFERENCE
    REFERENCE = {k: v.to(torch.float64) for k, v in gs.gradient_stats(loss, params, 256, noise_shape=noise,
                                                                       seed=99).mean.items()}
    dim = sum(v.numel() for v in params.values())
    print(f"byom: {dim:,} parameters, minibatch {BATCH}, {args.dtype}, {device} ({device_name(device)}), "
          f"{args.threads} threads, chunks of {args.chunk} draws, {args.repeats} rounds")
    # same uniforms, same gradients: the loop's and BackPACK's first draws against the vmap path's
    _, check_v = run_vmap(params, loss, noise, args.chunk, args.chunk, device)
    _, check_l = run_loop(params, loss, noise, args.chunk, args.chunk, device)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for label, other in (("loop", check_l), ("BackPACK", (run_backpack(params, noise, args.chunk, args.chunk, device,
                                                                        x, y) or (None, None))[1])):
        if other is None:
            print("  BackPACK is not installed (pip install --no-deps backpack-for-pytorch==1.7.1 einops unfoldNd): "
                  "its rate is left out")
            continue
        gap = max(float((check_v.mean[k] - other.mean[k]).abs().max()) for k in params)
        print(f"  same {args.chunk} draws, vmap vs {label}: largest difference of the mean gradient {gap:.2e}")
        assert gap < tolerance, (label, gap)

    # every path timed once a round, the rounds repeated: a machine whose speed drifts moves every path alike
    paths = {
        "gradient_stats": (args.draws, lambda: run_vmap(params, loss, noise, args.draws, args.chunk, device)[0]),
        "bare_vmap_grad": (args.draws, lambda: run_bare_vmap(params, loss, noise, args.draws, args.chunk, device)),
        "loop": (args.loop_draws, lambda: run_loop(params, loss, noise, args.loop_draws, args.chunk, device)[0]),
    }
    if run_backpack(params, noise, args.chunk, args.chunk, device, x, y) is not None:
        paths["backpack_batchgrad"] = (args.draws, lambda: run_backpack(params, noise, args.draws, args.chunk, device,
                                                                        x, y)[0])
    paths["update_alone"] = (args.draws, lambda: run_update(params, loss, noise, args.draws, args.chunk, device))
    bytes_per_draw = dim * torch.finfo(dtype).bits / 8
    paths["roofline"] = (1, lambda: bytes_per_draw / bandwidth(device))   # seconds for one read of a draw
    for _, run in paths.values():
        run()   # warm up
    per_round = []
    for _ in range(args.repeats):   # the bandwidth right after the update, as the update reads
        per_round.append({key: amount / run() for key, (amount, run) in paths.items()})
    if args.profile:
        profile_update(params, loss, noise, args.chunk, device, statistics.median(r["update_alone"] for r in per_round))
    return per_round, dim


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def in_processes(args) -> tuple[list[dict], int]:
    """``args.processes`` runs of this benchmark, one after another, each a process of its own (how the memory of a
    process happens to be laid out moves the bare gradients' rate by up to a fifth from one process to the next, a
    spread no number of rounds within one process samples): their rounds pooled, and the parameter count."""
    per_round, dim = [], 0
    flags = ["--draws", args.draws, "--loop-draws", args.loop_draws, "--chunk", args.chunk, "--threads", args.threads,
             "--device", args.device, "--dtype", args.dtype, "--repeats", args.repeats, "--sums", args.sums]
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.processes):
            out = Path(scratch) / f"process{i}.json"
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *map(str, flags), "--json", str(out)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"process {i + 1} of {args.processes} failed:\n{done.stdout}{done.stderr}")
            record = json.loads(out.read_text())
            rounds, dim = record["figures"]["per_round"], record["parameters"]
            ratios = [r["gradient_stats"] / r["bare_vmap_grad"] for r in rounds]
            print(f"  process {i + 1}: gs.gradient_stats over bare vmap(grad) {statistics.median(ratios):.2f} "
                  f"(rounds {min(ratios):.2f} to {max(ratios):.2f})")
            per_round += rounds
    return per_round, dim


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)   # the rounds' threads, and what the record says of the machine
    if args.processes > 1:
        print(f"byom: {args.processes} processes of {args.repeats} rounds each, {args.dtype}, {args.device}, "
              f"chunks of {args.chunk} draws")
        per_round, dim = in_processes(args)
    else:
        per_round, dim = run_rounds(args)
    # a path's rate: its median over the rounds; a ratio is taken within each round (both paths timed minutes apart at
    # most, on the machine as it then was), and its median over the rounds is printed with the rounds' range: the
    # spread is what a rerun can move it by
    rates = {key: statistics.median(r[key] for r in per_round) for key in per_round[0]}
    for key, rate in rates.items():
        print(f"  {LABELS[key]:38s} {rate:12,.0f} draws/s")
    # what the statistics could at best leave of the gradients' rate: one read of each draw at the roofline after
    # the gradients, roofline / (roofline + bare) per round
    bounds = [r["roofline"] / (r["roofline"] + r["bare_vmap_grad"]) for r in per_round]
    bound = {"gradient_stats_over_bare_vmap": statistics.median(bounds)}
    ratios, ranges = {}, {}
    for key, (num, den, target) in RATIOS.items():
        if num in rates and den in rates:
            rounds = [r[num] / r[den] for r in per_round]
            ratios[key], ranges[key] = statistics.median(rounds), [min(rounds), max(rounds)]
            goal = "" if target is None else f"   (target >= {target}: {'met' if ratios[key] >= target else 'NOT met'})"
            print(f"  ratio {key:32s} {ratios[key]:8.2f}  (rounds {ranges[key][0]:.2f} to {ranges[key][1]:.2f}){goal}")
            if key in bound:
                print(f"        {'':32s} at most {bound[key]:.2f} (rounds {min(bounds):.2f} to {max(bounds):.2f}): "
                      "the gradients, then one read of each draw at the roofline")
    write(args.json, "byom", f"a straight-through network 64-512-160-10 ({dim:,} parameters), a minibatch of {BATCH}"
          f" per draw, {args.dtype}", {"rates": rates, "ratios": ratios, "ratio_ranges": ranges, "bounds": bound,
                                       "per_round": per_round},
          args.device, parameters=dim, dtype=args.dtype, chunk=args.chunk, draws=args.draws, repeats=args.repeats,
          processes=args.processes)


if __name__ == "__main__":
    main()
