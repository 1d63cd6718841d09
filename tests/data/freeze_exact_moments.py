"""Write ``exact_moments.json``: the exact mean and variance of every estimator with exact moments, on
seeded problems, as hexadecimal floats (bit for bit).

The table is the reference that a refactoring of the estimators must reproduce
(``tests/test_frozen_moments.py``): bit-identical where the arithmetic is unchanged,
within 1e-12 relative where only the order of operations moved. Refreeze only when a
result is meant to change, and say why in the commit.

    python -m tests.data.freeze_exact_moments
"""

from __future__ import annotations

import json
from pathlib import Path

import gradstats as gs

PATH = Path(__file__).with_name("exact_moments.json")


def problems() -> dict:
    return {
        "toy(0.45, -1)": gs.problems.toy(0.45, -1.0),
        "independent(|h - 0.3|^3, 3 units)": gs.problems.independent(gs.losses.polynomial(0.3, 3.0), [0.4, -1.3, 2.2]),
        "sbn([3, 4], squared_error, seed 0)": gs.problems.sbn([3, 4], "squared_error", seed=0, weight_scale=2.0),
        "sbn([2, 3], cross_entropy, seed 1)": gs.problems.sbn([2, 3], "cross_entropy", seed=1, weight_scale=2.0),
        "sbn([2, 3, 2], squared_error, seed 2)": gs.problems.sbn([2, 3, 2], "squared_error", seed=2, weight_scale=2.0),
    }


CASES = {  # label -> (estimator, options)
    "reinforce": ("reinforce", {}),
    "reinforce (baseline 0.7)": ("reinforce", {"baseline": 0.7}),
    "reinforce (Eq. 10)": ("reinforce", {"baseline": "optimal"}),
    "st": ("st", {}),
    "st_sigmoid": ("st_sigmoid", {}),
    "sts": ("sts", {}),
    "reinmax": ("reinmax", {}),
    "reinmax (tau 0.7)": ("reinmax", {"temperature": 0.7}),
    "disarm": ("disarm", {}),
    "reinforce_loo (k 2)": ("reinforce_loo", {"k": 2}),
    "reinforce_loo (k 3)": ("reinforce_loo", {"k": 3}),
    "local_expectation": ("local_expectation", {}),
}


def applies(estimator: str, problem) -> bool:
    est = gs.estimators.get(estimator)
    deepest = est.exact_max_layers if est.exact_max_layers is not None else est.max_layers
    return est.noise == "discrete" and (deepest is None or problem.num_layers <= deepest)


def _hex(values) -> list[str]:
    return [float(v).hex() for v in values.tolist()]


def table() -> dict:
    from gradstats.estimators.score_function import arm_exact_moments

    out = {}
    for name, problem in problems().items():
        out[name] = {"exact gradient": {"mean": _hex(gs.exact_gradient(problem))},
                     "exact gradient (STS objective)": {"mean": _hex(gs.exact_gradient(problem, "sts"))}}
        if problem.num_layers == 1:
            mean, var = arm_exact_moments(problem)
            out[name]["arm (its 3^N cells)"] = {"mean": _hex(mean), "var": _hex(var)}
        for label, (estimator, options) in CASES.items():
            if applies(estimator, problem):
                m = gs.moments(problem, estimator, **options)
                out[name][label] = {"mean": _hex(m.mean), "var": _hex(m.var)}
    return out


if __name__ == "__main__":
    PATH.write_text(json.dumps(table(), indent=1) + "\n")
    print(f"wrote {PATH}")
