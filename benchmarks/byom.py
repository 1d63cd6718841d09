"""Bring your own model: per-draw gradients of a user's torch model streamed into GradientStats.

Workload: a two-layer straight-through network of binary units, 64 inputs -> 512 -> 160 -> 10
logits (about 1.2e5 parameters), cross-entropy on a fixed minibatch of 8 inputs; one draw is one
sample of every unit for the minibatch. Prints draws per second of

* ``gs.gradient_stats`` (``torch.func.vmap`` of ``grad`` over a chunk of draws, then one
  ``GradientStats.update`` per chunk),
* a per-draw loop of backward passes on the same uniforms, its gradients stacked per chunk into the
  same ``GradientStats`` (what research code does without vmap),

and their ratio, after checking that both give the same mean gradient. Both paths feed the same
``GradientStats.update``, so it also times that update alone on chunks computed beforehand: the loop's
time per draw over the update's time per draw is the largest ratio any path that materialises
per-draw gradients can reach against this loop here (Amdahl's bound).

    python benchmarks/byom.py [--draws 2048] [--chunk 32] [--loop-draws 256] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.nn import functional as F

import gradstats as gs
import gradstats.functional as gf

SIZES = (64, 512, 160, 10)
BATCH = 8


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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_vmap(params, loss, noise, draws, chunk, device) -> tuple[float, gs.GradientStats]:
    sync(device)
    start = time.perf_counter()
    stats = gs.gradient_stats(loss, params, draws, noise_shape=noise, chunk_size=chunk, seed=1)
    sync(device)
    return time.perf_counter() - start, stats


def run_loop(params, loss, noise, draws, chunk, device) -> tuple[float, gs.GradientStats]:
    """The same uniforms as gs.per_draw_gradients (one CPU generator, drawn chunk by chunk), one backward per draw."""
    generator = torch.Generator().manual_seed(1)
    dtype = next(iter(params.values())).dtype
    stats = gs.GradientStats()
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


def run_update(params, loss, noise, draws, chunk) -> float:
    """Seconds for ``GradientStats.update`` alone on ``draws`` per-draw gradients computed beforehand."""
    chunks = list(gs.per_draw_gradients(loss, params, min(draws, 8 * chunk), noise_shape=noise, chunk_size=chunk,
                                        seed=1))
    stats = gs.GradientStats()
    start = time.perf_counter()
    done = 0
    while done < draws:
        for grads in chunks:
            stats.update(grads)
            done += next(iter(grads.values())).shape[0]
    return (time.perf_counter() - start) * draws / done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2048, help="draws for the vmap path")
    parser.add_argument("--loop-draws", type=int, default=256, help="draws for the per-draw loop (it is slow)")
    parser.add_argument("--chunk", type=int, default=32, help="draws per chunk")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    params, loss, noise = model(device, dtype)
    dim = sum(v.numel() for v in params.values())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"byom: {dim:,} parameters, minibatch {BATCH}, {args.dtype}, {device} ({name}), {args.threads} threads")
    # same uniforms, same gradients: the loop's first draws against the vmap path's first draws
    _, check_v = run_vmap(params, loss, noise, args.chunk, args.chunk, device)
    _, check_l = run_loop(params, loss, noise, args.chunk, args.chunk, device)
    gap = max(float((check_v.mean[k] - check_l.mean[k]).abs().max()) for k in params)
    print(f"  same {args.chunk} draws, vmap vs loop: largest difference of the mean gradient {gap:.2e}")
    assert gap < (1e-10 if dtype == torch.float64 else 1e-4), gap
    run_vmap(params, loss, noise, args.chunk, args.chunk, device)  # warm up
    t_vmap, stats = run_vmap(params, loss, noise, args.draws, args.chunk, device)
    t_loop, _ = run_loop(params, loss, noise, args.loop_draws, args.chunk, device)
    t_update = run_update(params, loss, noise, args.draws, args.chunk) if device.type == "cpu" else None
    rate_vmap, rate_loop = args.draws / t_vmap, args.loop_draws / t_loop
    print(f"  gs.gradient_stats (vmap):   {rate_vmap:10.1f} draws/s ({args.draws} draws in {t_vmap:.2f} s)")
    print(f"  per-draw backward loop:     {rate_loop:10.1f} draws/s ({args.loop_draws} draws in {t_loop:.2f} s)")
    print(f"  ratio vmap / loop:          {rate_vmap / rate_loop:10.1f}x")
    if t_update is not None:
        rate_update = args.draws / t_update
        print(f"  GradientStats.update alone: {rate_update:10.1f} draws/s (shared by both paths)")
        print(f"  bound on the ratio (loop time / update time): {rate_update / rate_loop:.1f}x")
    print(f"  ({stats})")


if __name__ == "__main__":
    main()
