"""Run every analysis script in this folder (``make figures``).

An analysis is a module ``analyses/fig_*.py`` or ``analyses/tab_*.py`` with a ``main(argv)`` function;
each is run in turn with the arguments given here (``--quick`` for a smoke
run). Fails loudly when one fails.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def discover() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith(("fig_", "tab_")))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = discover()
    if not names:
        print("make figures: no analyses exist yet (analyses/fig_*.py); nothing to regenerate.")
        return 0
    print(f"make figures: running {len(names)} analyses: {', '.join(names)}")
    for name in names:
        start = time.perf_counter()
        importlib.import_module(f"analyses.{name}").main(argv)
        print(f"  {name}: done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
