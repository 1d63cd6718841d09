"""The ``gradstats`` command.

    gradstats estimators [--json]
    gradstats claims [--json] [--explore] [--id ST1]
    gradstats moments --estimator st [--problem toy --target 0.45 --logit -1]
                      [--problem sbn --sizes 8,5,5 --loss squared_error --seed 0]
                      [--method exact|mc --num-samples N --device auto]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from . import estimators, problems
from .exact import exact_gradient
from .moments import moments


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
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':16s} {'noise':10s} {'unbiased':8s} {'dL/dh':5s} {'objective':15s} summary")
    for r in rows:
        print(f"{r['name']:16s} {r['noise']:10s} {str(r['unbiased']):8s} {str(r['needs_dL_dh']):5s} "
              f"{r['objective']:15s} {r['summary']}")
    return 0


def _problem(args) -> problems.Problem:
    if args.problem == "toy":
        return problems.toy(args.target, args.logit)
    sizes = [int(s) for s in args.sizes.split(",")]
    return problems.sbn(sizes, args.loss, seed=args.seed)


def _cmd_moments(args) -> int:
    problem = _problem(args)
    kwargs = {"num_samples": args.num_samples, "seed": args.seed, "device": args.device} if args.method == "mc" else {}
    m = moments(problem, args.estimator, method=args.method, **kwargs)
    reference = exact_gradient(problem)
    bias = m.mean - reference
    print(f"{problem!r}, estimator {m.estimator}, method {m.method}"
          + (f", {m.num_samples:,} draws" if m.num_samples else ""))
    print(f"{'coordinate':14s} {'exact grad':>12s} {'mean':>12s} {'bias':>12s} {'variance':>12s}")
    for name, g, mu, b, v in zip(problem.coordinate_names(), reference, m.mean, bias, m.var):
        print(f"{name:14s} {g:12.5g} {mu:12.5g} {b:12.5g} {v:12.5g}")
    cos = torch.nn.functional.cosine_similarity(m.mean, reference, dim=0)
    print(f"|bias| = {bias.norm():.5g}, |bias|/|g| = {bias.norm() / reference.norm():.5g}, "
          f"trace(cov) = {m.trace:.5g}, cos(mean, g) = {cos:.5g}")
    return 0


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _cmd_claims(args) -> int:
    from . import claims

    settings = claims.CheckSettings.exploring() if args.explore else claims.CheckSettings()
    rows = claims.run(args.id or None, settings)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        print(f"{r['id']:10s} {r['status'].upper():13s} {r['reference']}")
        print(f"  finding:        {_short(r['summary'], 300)}")
        print(f"  statement:      {_short(r['statement'], 200)}")
        print(f"  conditions:     {_short(r['conditions'], 200)}")
        print(f"  evidence:       {_short(r['evidence'], 600)}")
        if r["holds_when"]:
            print(f"  holds when:     {_short(r['holds_when'], 400)}")
        if r["counterexample"]:
            ce = {k: v for k, v in r["counterexample"].items() if k != "spec"}
            print(f"  counterexample: {_short(json.dumps(ce, default=str), 400)}")
        print(f"  cases: {r['cases']}, {r['seconds']} s; test: {r['test']}; rerun: gradstats claims --id {r['id']}")
    counts = {s: sum(r["status"] == s for r in rows) for s in claims.STATUSES}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradstats", description="Statistics of gradient estimators "
                                     "for stochastic neurons against exact references (arXiv:1308.3432).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_est = sub.add_parser("estimators", help="list the registered estimators and their flags")
    p_est.add_argument("--json", action="store_true")
    p_est.set_defaults(run=_cmd_estimators)
    p_mom = sub.add_parser("moments", help="an estimator's moments against the exact gradient")
    p_mom.add_argument("--estimator", required=True)
    p_mom.add_argument("--problem", choices=["toy", "sbn"], default="toy")
    p_mom.add_argument("--target", type=float, default=0.45)
    p_mom.add_argument("--logit", type=float, default=0.0)
    p_mom.add_argument("--sizes", default="8,5,5")
    p_mom.add_argument("--loss", default="squared_error")
    p_mom.add_argument("--seed", type=int, default=0)
    p_mom.add_argument("--method", choices=["exact", "mc"], default="exact")
    p_mom.add_argument("--num-samples", type=int, default=100_000)
    p_mom.add_argument("--device", default="auto")
    p_mom.set_defaults(run=_cmd_moments)
    p_cl = sub.add_parser("claims", help="check the claims of arXiv:1308.3432 and later work; print the verdicts")
    p_cl.add_argument("--json", action="store_true", help="a list of objects with id, status, statement, reference, "
                      "conditions, evidence, counterexample, holds_when, cases, data, test")
    p_cl.add_argument("--explore", action="store_true", help="search longer, with fresh randomness")
    p_cl.add_argument("--id", action="append", help="check only this claim (repeatable)")
    p_cl.set_defaults(run=_cmd_claims)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        print(f"gradstats: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
