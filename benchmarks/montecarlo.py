"""W1: Monte Carlo throughput of streaming gradient statistics.

Workload (DESIGN.md section 7): input 8 -> 16 binary units -> linear readout
to 4 outputs, squared error; straight-through; each draw feeds the mean,
per-coordinate variance, per-draw sign agreement and cosine against the
exact gradient. Prints draws per second for

* gradstats (``gs.moments(..., method="mc")``, factored statistics, nothing
  materialised per draw),
* a per-draw autograd loop (what most research code does),
* ``torch.func.vmap(grad)`` (per-draw gradients materialised, then reduced),

their ratios, and the share of the memory-bandwidth roofline: the draws per
second at which merely writing a materialised float64 per-draw gradient
(``8 D`` bytes) would saturate the bandwidth measured here by a large copy.
Then one row per registered estimator. Each baseline's mean is checked
against the exact ST mean (within 5 standard errors) before it is timed.

    python benchmarks/montecarlo.py [--draws 4194304] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=float, default=2**22)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=2**16)
    parser.add_argument("--loop-draws", type=int, default=2000)
    parser.add_argument("--vmap-draws", type=int, default=2**16)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = gs.noise.resolve_device(args.device)
    n = int(args.draws)
    problem = gs.problems.sbn([8, 16], "squared_error", seed=0)
    exact = gs.moments(problem, "st")
    g = gs.exact_gradient(problem)
    d = problem.num_parameters
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"W1: sbn [8, 16] -> readout 4, squared error, ST; D = {d}; {device.type} ({name}), "
          f"torch {torch.__version__}, {args.threads} CPU threads")

    def ours(estimator="st", draws=n):
        return gs.moments(problem, estimator, method="mc", num_samples=draws, seed=0, device=device,
                          chunk_size=args.chunk_size, references={"binary": g}, full_covariance=False, progress=False)

    check("gradstats", ours(draws=min(n, 2**20)).mean, exact, min(n, 2**20))
    params = {k: v.to(device) for k, v in problem.parameters.items()}
    gen = torch.Generator(device=device).manual_seed(0)
    u_loop = torch.rand(args.loop_draws, 16, generator=gen, device=device, dtype=torch.float64)
    u_vmap = torch.rand(args.vmap_draws, 16, generator=gen, device=device, dtype=torch.float64)
    check("per-draw loop", loop_draws(problem, params, u_loop).mean(0), exact, args.loop_draws)
    check("vmap(grad)", vmap_draws(problem, params, u_vmap).mean(0), exact, args.vmap_draws)

    r_ours = rate(lambda: ours(), n, device, repeat=3)
    r_loop = rate(lambda: reduce_dense(loop_draws(problem, params, u_loop), g.to(device)), args.loop_draws, device, 1)
    r_vmap = rate(lambda: reduce_dense(vmap_draws(problem, params, u_vmap), g.to(device)), args.vmap_draws, device)
    bw = bandwidth(device)
    roofline = bw / (8 * d)
    print(f"memory bandwidth (copy): {bw / 1e9:.1f} GB/s -> roofline {roofline:.3g} draws/s "
          f"for {8 * d} bytes of materialised float64 gradient per draw")
    print(f"{'method':28s} {'draws/s':>10s} {'vs loop':>9s} {'vs vmap':>9s} {'of roofline':>12s}")
    for label, r in (("gradstats (streaming)", r_ours), ("per-draw autograd loop", r_loop), ("torch.func vmap(grad)", r_vmap)):
        print(f"{label:28s} {r:10.3g} {r / r_loop:8.0f}x {r / r_vmap:8.2f}x {r / roofline:11.0%}")
    print(f"\nper estimator (gradstats, {n:,} draws, same statistics):")
    print(f"{'estimator':18s} {'draws/s':>10s} {'loss evals/draw':>16s}")
    for est in gs.estimators.names():
        m = ours(est)
        print(f"{est:18s} {n / m.seconds:10.3g} {m.loss_evals_per_draw:16d}")


if __name__ == "__main__":
    main()
