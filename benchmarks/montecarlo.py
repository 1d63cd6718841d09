"""W1: Monte Carlo throughput of streaming gradient statistics.

Workload (docs/performance.rst): input 8 -> 16 binary units -> linear readout
to 4 outputs, squared error; straight-through; each draw feeds the mean,
per-coordinate variance, per-draw sign agreement and cosine against the
exact gradient. Prints draws per second for

* gradstats (``gs.moments(..., method="mc")``, factored statistics, nothing
  materialised per draw), eager and fused (``fuse=True``: each chunk's draws and
  statistics compiled into one function; timed after a first call that compiles,
  whose time is printed), in float64 and with float32 per-draw arithmetic,
* a per-draw autograd loop (what most research code does),
* ``torch.func.vmap(grad)`` (per-draw gradients materialised, then reduced),

their ratios, and the share of the memory-bandwidth roofline: the draws per
second at which merely writing a materialised float64 per-draw gradient
(``8 D`` bytes) would saturate the bandwidth measured here by a large copy.
Then the fused rate at other chunk sizes (``--fused-chunks``), a profile of one
fused run (``--profile``: wall time against the device's busy time, and the
kernels that take it), and one row per registered estimator, eager, and fused
for those named by ``--fused``. Each path's mean is checked against the exact
ST mean (within 5 standard errors) before it is timed.

    python benchmarks/montecarlo.py [--draws 4194304] [--estimator-draws N] [--device cpu] [--threads 2]
        [--fused st,noisy_rectifier] [--fused-chunks 16777216] [--profile] [--json PATH]

``--json`` (default ``benchmarks/results/montecarlo.json``, ``montecarlo_estimators.json`` with
``--estimators-only``, ``_cuda`` before the suffix on a GPU; ``''`` for none) writes the figures for
``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from _record import default_path, write
from torch.func import grad, vmap

import gradstats as gs


def bandwidth(device: torch.device, megabytes: int = 512) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    x = torch.empty(megabytes * 2**20 // 8, dtype=torch.float64, device=device).fill_(1.0)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        y.copy_(x)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * x.numel() * 8 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def st_loss(params: dict, problem, u: torch.Tensor) -> torch.Tensor:
    """One draw's loss with the straight-through trick (for autograd baselines)."""
    a = params["W1"] @ problem.x.to(u) + params["c1"]
    hard = (u < torch.sigmoid(a)).to(a.dtype)
    h = hard + (a - a.detach())
    return problem.loss(h[None])[0]


def loop_draws(problem, params, u: torch.Tensor) -> torch.Tensor:
    out = []
    for row in u:
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        st_loss(leaves, problem, row).backward()
        out.append(torch.cat([leaves["W1"].grad.reshape(-1), leaves["c1"].grad]))
    return torch.stack(out)


def vmap_draws(problem, params, u: torch.Tensor) -> torch.Tensor:
    g = vmap(grad(st_loss), in_dims=(None, None, 0))(params, problem, u)
    return torch.cat([g["W1"].flatten(1), g["c1"]], 1)


def reduce_dense(dense: torch.Tensor, g: torch.Tensor) -> tuple:
    """What gradstats streams, from materialised gradients: mean, variance, sign agreement, cosine."""
    return (dense.mean(0), dense.var(0), (dense.sign() == g.sign()).double().mean(0),
            torch.nn.functional.cosine_similarity(dense, g[None], dim=1).mean())


def check(name: str, mean: torch.Tensor, exact: gs.Moments, n: int) -> None:
    tol = 5 * (exact.var / n).sqrt() + 1e-12
    if not ((mean.cpu() - exact.mean).abs() <= tol).all():
        raise AssertionError(f"{name}: mean disagrees with the exact ST mean")


def rate(fn, draws: int, device: torch.device, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return draws / best


def profile(fn, draws: int, device: torch.device, top: int = 12) -> float:
    """Wall time of ``fn`` against the time the device (or, on the CPU, the operators) was busy, and where;
    returns the busy share."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    sync(device)
    with torch_profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        sync(device)
        wall = time.perf_counter() - start
    if device.type == "cuda":   # kernels only (an operator's device time is that of the kernels it launched)
        events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        key = "self_device_time_total"
    else:
        events, key = list(prof.key_averages()), "self_cpu_time_total"
    busy = sum(getattr(e, key) for e in events) / 1e6
    print(f"\nprofile of one fused ST run, {draws:,} draws: wall {wall:.3f} s ({draws / wall:.3g} draws/s under the "
          f"profiler), {device.type} busy {busy:.3f} s ({busy / wall:.0%})")
    for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]:
        print(f"  {getattr(e, key) / 1e6:8.4f} s {e.count:7d} calls  {e.key[:90]}")
    return busy / wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=float, default=2**22)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=2**16)
    parser.add_argument("--loop-draws", type=int, default=2000)
    parser.add_argument("--vmap-draws", type=int, default=2**16)
    parser.add_argument("--estimator-draws", type=float, default=None, help="draws per estimator (default: --draws)")
    parser.add_argument("--fused", default="st,noisy_rectifier,reinforce,disarm",
                        help="estimators timed on the fused path too (each compiles once; '' for none)")
    parser.add_argument("--fused-chunks", default="", help="other chunk sizes to time the fused ST path at (comma-separated)")
    parser.add_argument("--profile", action="store_true", help="profile one fused ST run of the draws (at most 2^26)")
    parser.add_argument("--estimators-only", action="store_true",
                        help="only the per-estimator table (eager, and fused for --fused), with each rate over ST's")
    parser.add_argument("--json", default=None, help="where to write the figures ('' for nowhere)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = gs.noise.resolve_device(args.device)
    if args.json is None:
        args.json = default_path("montecarlo_estimators" if args.estimators_only else "montecarlo", device)
    n = int(args.draws)
    problem = gs.problems.sbn([8, 16], "squared_error", seed=0)
    exact = gs.moments(problem, "st")
    g = gs.exact_gradient(problem)
    d = problem.num_parameters
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"W1: sbn [8, 16] -> readout 4, squared error, ST; D = {d}; {device.type} ({name}), "
          f"torch {torch.__version__}, {args.threads} CPU threads")

    def ours(estimator="st", draws=n, fuse=False, dtype=torch.float64, chunk_size=args.chunk_size):
        return gs.moments(problem, estimator, method="mc", num_samples=draws, seed=0, device=device,
                          chunk_size=chunk_size, references={"binary": g}, full_covariance=False, progress=False,
                          fuse=fuse, dtype=dtype)

    def compiled(estimator="st", dtype=torch.float64):
        """Compile (timed) and check the fused path; returns the compilation's seconds."""
        start = time.perf_counter()
        m = ours(estimator, min(n, 2**20), True, dtype)
        if estimator == "st":
            check(f"gradstats fused {dtype}", m.mean, exact, min(n, 2**20))
        return time.perf_counter() - start

    workload = f"W1: sbn [8, 16] -> readout 4, squared error; D = {d}"
    if args.estimators_only:
        rows = per_estimator(args, ours, compiled, n, device)
        write(args.json, "montecarlo_estimators", workload, {"rows": rows}, device,
              estimator_draws=int(args.estimator_draws or n))
        return
    check("gradstats", ours(draws=min(n, 2**20)).mean, exact, min(n, 2**20))
    compile_seconds = {dtype: compiled("st", dtype) for dtype in (torch.float64, torch.float32)}
    params = {k: v.to(device) for k, v in problem.parameters.items()}
    gen = torch.Generator(device=device).manual_seed(0)
    u_loop = torch.rand(args.loop_draws, 16, generator=gen, device=device, dtype=torch.float64)
    u_vmap = torch.rand(args.vmap_draws, 16, generator=gen, device=device, dtype=torch.float64)
    check("per-draw loop", loop_draws(problem, params, u_loop).mean(0), exact, args.loop_draws)
    check("vmap(grad)", vmap_draws(problem, params, u_vmap).mean(0), exact, args.vmap_draws)

    r_ours = rate(lambda: ours(), n, device, repeat=3)
    r_fused = {dtype: rate(lambda dtype=dtype: ours(fuse=True, dtype=dtype), n, device, repeat=3) for dtype in compile_seconds}
    r_loop = rate(lambda: reduce_dense(loop_draws(problem, params, u_loop), g.to(device)), args.loop_draws, device, 1)
    r_vmap = rate(lambda: reduce_dense(vmap_draws(problem, params, u_vmap), g.to(device)), args.vmap_draws, device)
    stream = gs.noise.NoiseStream(0, (1, problem.num_units), device)

    def noise_only():
        for start in range(0, n, args.chunk_size):
            stream.uniforms(start, min(start + args.chunk_size, n))

    r_noise = rate(noise_only, n, device)
    bw = bandwidth(device)
    roofline = bw / (8 * d)
    print(f"memory bandwidth (copy): {bw / 1e9:.1f} GB/s -> roofline {roofline:.3g} draws/s "
          f"for {8 * d} bytes of materialised float64 gradient per draw")
    print(f"{'method':28s} {'draws/s':>10s} {'vs loop':>9s} {'vs vmap':>9s} {'of roofline':>12s}")
    for label, r in (("gradstats (streaming)", r_ours), ("gradstats fused", r_fused[torch.float64]),
                     ("gradstats fused, float32", r_fused[torch.float32]), ("per-draw autograd loop", r_loop),
                     ("torch.func vmap(grad)", r_vmap)):
        print(f"{label:28s} {r:10.3g} {r / r_loop:8.0f}x {r / r_vmap:8.2f}x {r / roofline:11.0%}")
    print(f"the noise stream alone (no gradients, no statistics): {r_noise:.3g} draws/s")
    print("fused: compiled once per process in " + ", ".join(f"{s:.1f} s ({str(t).replace('torch.', '')})"
                                                              for t, s in compile_seconds.items()))
    figures = {"eager": r_ours, "fused": r_fused[torch.float64], "fused_float32": r_fused[torch.float32],
               "loop": r_loop, "vmap_grad": r_vmap, "noise_alone": r_noise, "bandwidth_bytes_per_second": bw,
               "roofline": roofline, "compile_seconds": compile_seconds[torch.float64],
               "compile_seconds_float32": compile_seconds[torch.float32], "fused_by_chunk": {}}
    for chunk in (int(c) for c in args.fused_chunks.split(",") if c):
        ours(fuse=True, draws=min(n, 4 * chunk), chunk_size=chunk)   # piece sizes this chunk meets may compile anew
        r = rate(lambda c=chunk: ours(fuse=True, chunk_size=c), n, device)
        figures["fused_by_chunk"][str(chunk)] = r
        print(f"gradstats fused, chunks of {chunk:,}: {r:.3g} draws/s")
    if args.profile:
        figures["profile_busy_share"] = profile(lambda: ours(fuse=True, draws=min(n, 2**26)), min(n, 2**26), device)
    figures["rows"] = per_estimator(args, ours, compiled, n, device)
    write(args.json, "montecarlo", workload, figures, device, draws=n, chunk_size=args.chunk_size,
          estimator_draws=int(args.estimator_draws or n), loop_draws=args.loop_draws, vmap_draws=args.vmap_draws)


def per_estimator(args, ours, compiled, n, device) -> list[dict]:
    """Every registered estimator's draws per second on W1 (same statistics), eager and (for ``--fused``) fused,
    with its rate over ST's eager rate measured in the same run: one row each."""
    fused = [e for e in args.fused.split(",") if e]
    per = int(args.estimator_draws or n)
    print(f"\nper estimator (gradstats, {per:,} draws, same statistics; fused after its compilation):")
    print(f"{'estimator':18s} {'eager draws/s':>14s} {'over st':>8s} {'fused draws/s':>14s} {'compile s':>10s} "
          f"{'loss evals/draw':>16s}")
    rows, st_rate = [], None
    for est in ["st"] + [e for e in gs.estimators.names(kind="sbn") if e != "st"]:
        m = ours(est, per)
        eager = per / m.seconds
        st_rate = st_rate or eager
        row = {"estimator": est, "eager_draws_per_second": eager, "over_st": eager / st_rate,
               "loss_evals_per_draw": m.loss_evals_per_draw}
        line = f"{est:18s} {eager:14.3g} {eager / st_rate:8.2f}"
        if est in fused:
            seconds = compiled(est)
            # best of two: the first run may still compile for piece sizes the warm-up did not meet
            row["fused_draws_per_second"] = rate(lambda est=est: ours(est, per, fuse=True), per, device)
            row["compile_seconds"] = seconds
            line += f" {row['fused_draws_per_second']:14.3g} {seconds:10.1f}"
        else:
            line += f" {'':>14s} {'':>10s}"
        print(f"{line} {m.loss_evals_per_draw:16d}")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
