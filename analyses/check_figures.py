"""``make check-figures``: every analysis's quick grid run twice, once with a change that must not matter.

The second run multiplies learning rates and every problem's parameters (logits, weights) by
``1 + 1e-12`` and computes Monte Carlo draws in chunks of another size (``--perturb``). Each number
an analysis reports (``paper/generated/NAME-quick.json``) must come back:

* ``exact`` (enumeration, quadrature): within ``1e-6`` relative (plus ``1e-12`` absolute);
* ``estimate`` (Monte Carlo, training): within ``Z = 4`` combined standard errors,
  ``|a - b| <= 4 sqrt(se_a^2 + se_b^2)`` (a false alarm has probability about 6e-5 per number if
  the errors are honest; the seeds are fixed, so the outcome is too);
* ``timing``: not compared (machine-dependent).

Studies whose full grid is committed (``figures/data/NAME.csv``: too long for ``make figures``' budget)
are also checked against it: each recomputes a reduced grid of its own cells (``--verify``), and every
row must come back within ``4`` combined standard errors (``1e-6`` relative where it has none).

Exit status 1, with a table of what moved, when any number moves further.

    python -m analyses.check_figures [--out DIR] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELATIVE = 1e-6
ABSOLUTE = 1e-12
Z = 4.0


def run(out: Path, perturb: bool, jobs: int) -> None:
    argv = [sys.executable, "-m", "analyses.run_all", "--quick", "--device", "cpu", "--jobs", str(jobs), "--out", str(out)]
    subprocess.run(argv + (["--perturb"] if perturb else []), cwd=ROOT, check=True)


def compare(first: dict, second: dict) -> tuple[bool, str]:
    """Whether ``second`` reproduces ``first`` within the stated error, and the allowed distance."""
    if first["kind"] != second["kind"]:
        return False, f"kind changed ({first['kind']} -> {second['kind']})"
    a, b = first["value"], second["value"]
    if first["kind"] == "timing":
        return True, "not compared (timing)"
    if not (math.isfinite(a) and math.isfinite(b)):
        same = (math.isnan(a) and math.isnan(b)) or a == b
        return same, "non-finite"
    allowed = RELATIVE * max(abs(a), abs(b)) + ABSOLUTE
    if first["kind"] == "estimate":
        sa, sb = first["stderr"], second["stderr"]
        if not (math.isfinite(sa) and math.isfinite(sb)):
            return False, "an estimate without a finite standard error"
        allowed += Z * math.hypot(sa, sb)
    return abs(a - b) <= allowed, f"|diff| {abs(a - b):.3g} <= {allowed:.3g}"


def check(plain: Path, perturbed: Path) -> list[str]:
    """Every reported number of ``plain`` against ``perturbed``; the failures as lines."""
    failures, compared = [], 0
    files = sorted((plain / "paper" / "generated").glob("*-quick.json"))
    if not files:
        return ["no reported numbers found (paper/generated/*-quick.json)"]
    for path in files:
        first = json.loads(path.read_text())
        other = perturbed / "paper" / "generated" / path.name
        second = json.loads(other.read_text()) if other.exists() else {}
        for macro, record in sorted(first.items()):
            if macro not in second:
                failures.append(f"{path.stem}: {macro} missing from the perturbed run")
                continue
            ok, detail = compare(record, second[macro])
            compared += 1
            line = (f"{path.stem:24s} {macro:32s} {record['kind']:8s} {record['value']:.6g} -> "
                    f"{second[macro]['value']:.6g} ({detail})")
            print(("   " if ok else "!! ") + line)
            if not ok:
                failures.append(line)
    print(f"check-figures: {compared} numbers compared, {len(failures)} moved beyond their stated error")
    return failures


def committed_analyses() -> list[str]:
    """The analyses that keep their full grid's rows in ``figures/data/`` (too long for make figures' budget)."""
    return sorted(path.stem for path in (ROOT / "figures" / "data").glob("*.csv"))


def verify(out: Path, jobs: int) -> list[str]:
    """Each committed study's reduced grid recomputed and compared with its committed rows (``--verify``)."""
    failures = []
    for name in committed_analyses():
        (out / "figures" / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "figures" / "data" / f"{name}.csv", out / "figures" / "data" / f"{name}.csv")
        argv = [sys.executable, "-m", f"analyses.{name}", "--verify", "--device", "cpu", "--jobs", str(jobs),
                "--out", str(out)]
        if subprocess.run(argv, cwd=ROOT).returncode != 0:
            failures.append(f"{name}: its reduced grid moved beyond its error against figures/data/{name}.csv")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analyses/check_figures.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the two runs write (default: a temporary folder)")
    parser.add_argument("--jobs", type=int, default=0, help="worker processes per analysis (default 0: one per core)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="check-figures-"))
    run(out / "plain", False, args.jobs)
    run(out / "perturbed", True, args.jobs)
    failures = check(out / "plain", out / "perturbed")
    failures += verify(out / "verify", args.jobs)
    for line in failures[-5:]:
        print("!! " + line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
