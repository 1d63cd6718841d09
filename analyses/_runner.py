"""What every analysis shares: a frozen config from the command line, cached cells, tidy results,
plots from saved results only, and numbers for the paper.

An analysis is a grid of independent *cells*, each a pure function of its
config (a JSON-able dict). A cell's rows are written atomically to
``results/NAME/cells/KEY.json`` (``KEY`` a hash of the config and of the
source of the library and the analysis), so an unchanged cell is never recomputed and an interrupted run loses nothing
computed. Then all rows go to ``results/NAME/results.csv`` with
``results/NAME/meta.json`` (config, seed, versions, device, wall time); the
plot step reads only those files; numbers quoted by the paper go to
``paper/generated/NAME.tex`` as ``\\newcommand`` macros.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

import gradstats as gs

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    """The command line of an analysis, validated once."""

    name: str
    quick: bool
    seed: int
    device: str
    out: Path
    recompute: bool
    plot_only: bool

    @property
    def results(self) -> Path:
        return self.out / "results" / (self.name + ("-quick" if self.quick else ""))

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @property
    def generated(self) -> Path:
        return self.out / "paper" / "generated"

    @property
    def figure_name(self) -> str:
        return self.name + ("-quick" if self.quick else "")


def parse(name: str, description: str, argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog=f"analyses/{name}.py", description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run on a small grid (the test suite runs it)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of every cell (default 0)")
    parser.add_argument("--device", default="auto", help="Monte Carlo device: auto (CUDA when present), cpu, cuda")
    parser.add_argument("--out", type=Path, default=ROOT, help="root for results/, figures/, paper/generated/")
    parser.add_argument("--recompute", action="store_true", help="ignore cached cells")
    parser.add_argument("--plot-only", action="store_true", help="plot from saved results, compute nothing")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    device = str(gs.noise.resolve_device(args.device)) if args.device else "cpu"
    return Config(name, args.quick, args.seed, device, args.out.resolve(), args.recompute, args.plot_only)


def versions() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "gradstats": gs.__version__,
            "pandas": pd.__version__, "git_commit": commit, "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def code_version(*extra: Path) -> str:
    """A hash of the library's source and the given files: results computed by other code are not reused."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "gradstats").rglob("*.py")) + [Path(__file__).resolve(), *extra]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _key(cell: dict) -> str:
    return hashlib.sha256(json.dumps(cell, sort_keys=True, default=str).encode()).hexdigest()[:20]


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_cells(config: Config, cells: list[dict], compute: Callable[[dict, Config], list[dict]]) -> pd.DataFrame:
    """Compute (or load) every cell; return all rows, each tagged with its cell's config."""
    cache = config.results / "cells"
    rows, computed = [], 0
    show = sys.stderr.isatty()
    code = code_version(ROOT / "analyses" / f"{config.name}.py")
    for cell in tqdm([{**c, "code": code} for c in cells], desc=config.name, unit="cell", disable=not show):
        path = cache / f"{_key(cell)}.json"
        if path.exists() and not config.recompute:
            stored = json.loads(path.read_text())
            if stored["cell"] == json.loads(json.dumps(cell, default=str)):
                rows += stored["rows"]
                continue
        start = time.perf_counter()
        cell_rows = [{**{f"cell_{k}": v for k, v in cell.items() if k != "code"}, **r} for r in compute(cell, config)]
        atomic_write(path, json.dumps({"cell": cell, "rows": cell_rows, "seconds": time.perf_counter() - start},
                                      default=float))
        rows += cell_rows
        computed += 1
    print(f"  {config.name}: {len(cells)} cells, {computed} computed, {len(cells) - computed} from cache")
    return pd.DataFrame(rows)


def save_results(config: Config, frame: pd.DataFrame, extra: dict | None = None, seconds: float = 0.0) -> None:
    config.results.mkdir(parents=True, exist_ok=True)
    tmp = config.results / "results.csv.tmp"
    frame.to_csv(tmp, index=False)
    os.replace(tmp, config.results / "results.csv")
    meta = {"config": {k: str(v) for k, v in asdict(config).items()}, "seed": config.seed, "device": config.device,
            "versions": versions(), "wall_seconds": seconds, **(extra or {})}
    atomic_write(config.results / "meta.json", json.dumps(meta, indent=2, default=str))


def load_results(config: Config) -> tuple[pd.DataFrame, dict]:
    """The saved results: the only input of a plot."""
    path = config.results / "results.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the analysis without --plot-only first")
    return pd.read_csv(path), json.loads((config.results / "meta.json").read_text())


def style() -> None:
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0,
                  rc={"figure.dpi": 150, "savefig.bbox": "tight", "axes.titlesize": 9, "legend.fontsize": 7})


def save_figure(config: Config, fig, stem: str | None = None) -> list[Path]:
    config.figures.mkdir(parents=True, exist_ok=True)
    stem = stem or config.figure_name
    paths = [config.figures / f"{stem}.png", config.figures / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def tex_number(value: float, digits: int = 3) -> str:
    """A number for LaTeX: ``digits`` significant digits, scientific notation as ``a \\times 10^{b}``."""
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa} \\times 10^{{{int(exponent)}}}"
    return text


def write_numbers(config: Config, numbers: dict[str, str]) -> Path:
    """``paper/generated/NAME.tex``: one ``\\newcommand`` per number (macro names: letters only)."""
    lines = [f"% generated by analyses/{config.name}.py{' --quick' if config.quick else ''}; do not edit"]
    for macro, value in numbers.items():
        if not macro.isalpha():
            raise ValueError(f"macro names must be letters only, got {macro!r}")
        lines.append(f"\\newcommand{{\\{macro}}}{{{value}}}")
    path = config.generated / f"{config.name}{'-quick' if config.quick else ''}.tex"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class Analysis:
    """An analysis: its cells, how to compute one, how to plot the saved results, and the paper's numbers."""

    name: str
    description: str
    cells: Callable[[Config], list[dict]]
    compute: Callable[[dict, Config], list[dict]]
    plot: Callable[[pd.DataFrame, dict, Config], object]
    numbers: Callable[[pd.DataFrame, Config], dict[str, str]] | None = None

    def main(self, argv: list[str] | None = None) -> Config:
        config = parse(self.name, self.description, argv)
        if not config.plot_only:
            start = time.perf_counter()
            frame = run_cells(config, self.cells(config), self.compute)
            save_results(config, frame, seconds=time.perf_counter() - start)
        frame, meta = load_results(config)
        style()
        fig = self.plot(frame, meta, config)
        if fig is not None:
            save_figure(config, fig)
        if self.numbers is not None:
            write_numbers(config, self.numbers(frame, config))
        return config
