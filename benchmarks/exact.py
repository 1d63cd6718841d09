"""W2: exact gradient and exact ST moments of a 2-layer network of 10 + 10 binary units (and, in the same run, the
exact gradient over as many states of a network of 5 + 5 categorical units of 4 classes).

Prints gradstats' wall time for each and the ratio against a plain Python loop
over ``itertools.product`` states (numpy per state). The loop is timed on the
first ``--baseline-states`` states and extrapolated linearly to all 2^20 (it
does the same work per state); its correctness is checked first by running it
to completion on a smaller network and comparing with gradstats.

    python benchmarks/exact.py [--sizes 8,10,10] [--baseline-states 16384] [--threads 2] [--json PATH]

``--json`` (default ``benchmarks/results/exact.json``; ``''`` for none) writes the figures for
``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time

import numpy as np
import torch
from _record import default_path, write

import gradstats as gs


def loop_exact(problem, objective_only=False, states_limit=None):
    """Exact gradient and ST moments by a Python loop over states (the baseline)."""
    params = {k: v.numpy() for k, v in problem.parameters.items()}
    sizes = problem.layer_sizes
    layers = len(sizes)
    d = problem.num_parameters
    grad = np.zeros(d)
    st_mean, st_second = np.zeros(d), np.zeros((d, d))
    states = itertools.product((0.0, 1.0), repeat=sum(sizes))
    if states_limit is not None:
        states = itertools.islice(states, states_limit)
    x = problem.x.numpy()
    for s in states:
        s = np.asarray(s)
        hs = np.split(s, np.cumsum(sizes)[:-1])
        inp, logp, score, inputs, logits = x, 0.0, [], [], []
        for li in range(layers):
            a = params[f"W{li + 1}"] @ inp + params[f"c{li + 1}"]
            p = 1 / (1 + np.exp(-a))
            logp += np.sum(np.where(hs[li] > 0, np.log(p), np.log1p(-p)))
            score.append(hs[li] - p)
            inputs.append(inp)
            logits.append(a)
            inp = hs[li]
        prob = np.exp(logp)
        h_t = torch.from_numpy(hs[-1])[None]
        loss, dl = problem.loss.value_and_grad(h_t)
        loss, dl = float(loss[0]), dl[0].numpy()
        parts = []
        for li in range(layers):
            parts += [np.outer(score[li], inputs[li]).ravel(), score[li]]
        grad += prob * loss * np.concatenate(parts)
        if objective_only:
            continue
        deltas = [None] * layers
        up = dl
        for li in reversed(range(layers)):
            deltas[li] = up
            up = params[f"W{li + 1}"].T @ up
        g = np.concatenate([q for li in range(layers) for q in (np.outer(deltas[li], inputs[li]).ravel(), deltas[li])])
        st_mean += prob * g
        st_second += prob * np.outer(g, g)
    return grad, st_mean, st_second - np.outer(st_mean, st_mean)


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,10,10")
    parser.add_argument("--baseline-states", type=int, default=2**14)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=default_path("exact"), help="where to write the figures ('' for nowhere)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]

    check = gs.problems.sbn([sizes[0], 4, 4], seed=0)
    loop_grad, loop_mean, loop_cov = loop_exact(check)
    m = gs.moments(check, "st")
    assert np.allclose(loop_grad, gs.exact_gradient(check).numpy(), rtol=1e-10, atol=1e-13)
    assert np.allclose(loop_mean, m.mean.numpy(), rtol=1e-10, atol=1e-13)
    assert np.allclose(loop_cov, m.cov.numpy(), rtol=1e-8, atol=1e-12)

    problem = gs.problems.sbn(sizes, seed=0)
    states = 2**problem.num_units
    print(f"W2: sbn {sizes}, {states:,} joint states, D = {problem.num_parameters}; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    t_grad, _ = timed(lambda: gs.exact_gradient(problem))
    categorical = gs.problems.categorical([sizes[0], 5, 5], num_classes=4, seed=0)   # 4^10 = 2^20 states too
    t_categorical, _ = timed(lambda: gs.exact_gradient(categorical))
    t_st, _ = timed(lambda: gs.moments(problem, "st"), repeat=1)
    k = min(args.baseline_states, states)
    t_loop_grad, _ = timed(lambda: loop_exact(problem, objective_only=True, states_limit=k), repeat=1)
    t_loop_st, _ = timed(lambda: loop_exact(problem, states_limit=k), repeat=1)
    scale = states / k
    rows = [("exact gradient", t_grad, t_loop_grad * scale), ("exact ST moments (mean, var, cov)", t_st, t_loop_st * scale)]
    print(f"baseline: Python loop over itertools.product, timed on {k:,} states and extrapolated x{scale:g}")
    print(f"{'task':36s} {'gradstats':>12s} {'loop (extrap.)':>15s} {'speed-up':>9s}")
    for name, ours, loop in rows:
        print(f"{name:36s} {ours:10.2f} s {loop:13.1f} s {loop / ours:8.0f}x")
    print(f"the same 2^20 states as 10 categorical units of 4 classes ({categorical.description}, "
          f"D = {categorical.num_parameters}): exact gradient {t_categorical:.2f} s")
    write(args.json, "exact", f"W2: sbn {sizes} -> readout 4, squared error; {states:,} joint states, "
          f"D = {problem.num_parameters}",
          {"gradient_seconds": t_grad, "st_moments_seconds": t_st, "loop_gradient_seconds": t_loop_grad * scale,
           "loop_st_moments_seconds": t_loop_st * scale, "loop_states_timed": k,
           "categorical_gradient_seconds": t_categorical, "categorical_parameters": categorical.num_parameters})


if __name__ == "__main__":
    main()
