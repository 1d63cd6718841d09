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
import importlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
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
    jobs: int = 1
    perturb: bool = False
    scheduler: str | None = None     # a Dask scheduler's address, or "local" for a LocalCluster of `jobs` workers
    verify: bool = False              # recompute a committed study's reduced grid and compare (make check-figures)

    @property
    def rate_factor(self) -> float:
        """What learning rates are multiplied by: ``1 + 1e-12`` in a perturbed run, else 1."""
        return 1.0 + PERTURBATION if self.perturb else 1.0

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
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes for the cells (default 1; 0: one per CPU core)")
    parser.add_argument("--scheduler", default=None,
                        help="compute the cells on a Dask cluster: a running scheduler's address (tcp://host:8786; "
                        "start workers in the repository root), or 'local' for a LocalCluster of --jobs workers "
                        "(needs the distributed extra)")
    parser.add_argument("--perturb", action="store_true",
                        help="a change that must not matter: learning rates and every problem's parameters times "
                             "1 + 1e-12, another Monte Carlo chunk size (make check-figures)")
    parser.add_argument("--verify", action="store_true",
                        help="a study with committed results (figures/data/NAME.csv): recompute its reduced grid and "
                             "fail when a row moves beyond its error (make check-figures)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.jobs < 0:
        parser.error(f"--jobs must be >= 0 (0: one per CPU core), got {args.jobs}")
    jobs = args.jobs or os.cpu_count() or 1
    device = str(gs.noise.resolve_device(args.device)) if args.device else "cpu"
    if args.perturb:
        apply_perturbation()
    return Config(name, args.quick, args.seed, device, args.out.resolve(), args.recompute, args.plot_only, jobs,
                  args.perturb, args.scheduler, args.verify)


PERTURBATION = 1e-12
PERTURBED_CHUNK_SIZE = 2**16 - 4097


def apply_perturbation() -> None:
    """In this process: every Problem built from now on has its parameters (logits, weights) times
    ``1 + PERTURBATION``, and Monte Carlo runs default to another chunk size. Results must not move
    beyond their printed errors (``make check-figures``)."""
    from gradstats import montecarlo, problems

    original = problems.Problem.__init__
    if getattr(original, "perturbed", False):
        return

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.parameters = {k: v * (1.0 + PERTURBATION) for k, v in self.parameters.items()}

    init.perturbed = True
    problems.Problem.__init__ = init
    montecarlo.mc_moments.__kwdefaults__["chunk_size"] = PERTURBED_CHUNK_SIZE


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
    """A hash of the library's source (its Python and C) and the given files: results computed by other code are
    not reused."""
    digest = hashlib.sha256()
    library = sorted([*(ROOT / "gradstats").rglob("*.py"), *(ROOT / "gradstats").rglob("*.c")])
    for path in library + [Path(__file__).resolve(), *extra]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _key(cell: dict) -> str:
    return hashlib.sha256(json.dumps(cell, sort_keys=True, default=str).encode()).hexdigest()[:20]


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cached_rows(path: Path, cell: dict, config: Config) -> list[dict] | None:
    """The rows cached for ``cell``; ``None`` (compute it) when absent, stale, or unreadable (said on stderr)."""
    if not path.exists() or config.recompute:
        return None
    try:
        stored = json.loads(path.read_text())
        rows, same = stored["rows"], stored["cell"] == json.loads(json.dumps(cell, default=str))
        if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
            raise TypeError("rows is not a list of objects")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        print(f"  {config.name}: cached cell {path} is unreadable ({type(err).__name__}: {err}); recomputing that cell",
              file=sys.stderr)
        return None
    return rows if same else None


def _computed_rows(compute: Callable[[dict, Config], list[dict]], cell: dict, config: Config) -> tuple[list[dict], float]:
    start = time.perf_counter()
    # a cell's keys become columns, but those starting with "_" (a stack's list of runs: its rows name their run)
    rows = [{**{f"cell_{k}": v for k, v in cell.items() if k not in ("code", "perturb") and not k.startswith("_")}, **r}
            for r in compute(cell, config)]
    return rows, time.perf_counter() - start


def _compute_in_worker(cell: dict, config: Config) -> tuple[list[dict], float]:
    """A worker process computes a cell with the analysis module's own ``compute`` (found by name)."""
    module = importlib.import_module(f"analyses.{config.name}")
    return _computed_rows(module.ANALYSIS.compute, cell, config)


def _compute_on_dask(cell: dict, config: Config) -> tuple[list[dict], float]:
    """A Dask task: the worker's set-up (idempotent: Dask workers outlive tasks), then the worker computation."""
    _single_threaded(config.perturb)
    return _compute_in_worker(cell, config)


_DASK_CLIENTS: dict[tuple[str, int], object] = {}


def dask_executor(scheduler: str, jobs: int):
    """A ``concurrent.futures`` executor on a Dask cluster (one client per scheduler, kept for the process):
    ``"local"`` starts a LocalCluster of ``jobs`` single-threaded worker processes."""
    try:
        import distributed
    except ImportError as err:
        raise SystemExit("--scheduler needs Dask's distributed: pip install 'gradstats[distributed]'") from err
    key = (scheduler, jobs)
    if key not in _DASK_CLIENTS:
        if scheduler == "local":
            from gradstats.sweep import local_cluster

            _DASK_CLIENTS[key] = distributed.Client(local_cluster(jobs))
        else:
            _DASK_CLIENTS[key] = distributed.Client(scheduler)
    return _DASK_CLIENTS[key].get_executor()


def _exit_with_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:   # the parent died (even by SIGKILL): this worker must not outlive it
            os._exit(1)
        time.sleep(0.5)


def _single_threaded(perturb: bool) -> None:
    """A worker computes with one thread, perturbed when ``make check-figures`` asks."""
    torch.set_num_threads(1)
    if perturb:
        apply_perturbation()


def _worker_setup(parent: int, perturb: bool = False) -> None:
    """Each pool worker is single-threaded, and exits as soon as the process that started it is gone."""
    _single_threaded(perturb)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _gather(futures: dict, store: Callable, done: dict, stop: Callable[[], None]) -> None:
    """Store each cell as its future completes. Interrupted or failed: ``stop()`` the executor, keep what has
    finished, cancel the rest, and re-raise."""
    try:
        for future in as_completed(futures):
            store(futures[future], *future.result())
    except BaseException:
        stop()
        for future, i in futures.items():
            if i not in done and future.done() and not future.cancelled() and future.exception() is None:
                store(i, *future.result())
            future.cancel()
        raise


def run_cells(config: Config, cells: list[dict], compute: Callable[[dict, Config], list[dict]],
              parallel: bool = True, tasks_per_worker: int | None = None) -> pd.DataFrame:
    """Compute (or load) every cell; return all rows, in cell order, each tagged with its cell's config.

    With ``config.jobs > 1`` (and ``parallel``) the cells not in the cache are computed by that
    many worker processes of one thread each; each is written as soon as it is done. With
    ``tasks_per_worker``, always in worker processes (even one), each replaced after that many cells: what
    a cell's code leaks (a peer library's memory that grows across calls) goes with its process.
    """
    cache = config.results / "cells"
    code = code_version(ROOT / "analyses" / f"{config.name}.py")
    tagged = [{**c, "code": code, **({"perturb": True} if config.perturb else {})} for c in cells]
    paths = [cache / f"{_key(cell)}.json" for cell in tagged]
    done = {i: rows for i, (cell, path) in enumerate(zip(tagged, paths))
            if (rows := _cached_rows(path, cell, config)) is not None}
    pending = [i for i in range(len(tagged)) if i not in done]
    bar = tqdm(total=len(pending), desc=config.name, unit="cell", disable=not sys.stderr.isatty())

    def store(i: int, rows: list[dict], seconds: float) -> None:
        atomic_write(paths[i], json.dumps({"cell": tagged[i], "rows": rows, "seconds": seconds}, default=float))
        done[i] = rows
        bar.update(1)

    with bar:
        if parallel and config.scheduler and pending:
            executor = dask_executor(config.scheduler, config.jobs)
            _gather({executor.submit(_compute_on_dask, tagged[i], config): i for i in pending}, store, done,
                    stop=lambda: None)
        elif parallel and pending and (tasks_per_worker or (config.jobs > 1 and len(pending) > 1)):
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(config.jobs, mp_context=context, initializer=_worker_setup,
                                       initargs=(os.getpid(), config.perturb), max_tasks_per_child=tasks_per_worker)
            # interrupted: cancel what has not started and let the running cells finish, then keep them
            _gather({pool.submit(_compute_in_worker, tagged[i], config): i for i in pending}, store, done,
                    stop=lambda: pool.shutdown(wait=True, cancel_futures=True))
            pool.shutdown()
        else:
            for i in pending:
                store(i, *_computed_rows(compute, tagged[i], config))
    print(f"  {config.name}: {len(cells)} cells, {len(pending)} computed, {len(cells) - len(pending)} from cache")
    return pd.DataFrame([row for i in range(len(tagged)) for row in done[i]])


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


PAPER_TEXT_WIDTH_INCHES = (21.0 - 2 * 2.3) / 2.54   # A4 less the paper's 2.3 cm margins: every figure's width
MIN_POINTS_ON_PAGE = 7.0


def smallest_text_on_page(fig) -> float:
    """The smallest visible text of ``fig``, in points, once the saved figure (tight bounding box) is scaled
    to the paper's text width, as ``includegraphics[width=\\linewidth]`` sets it."""
    from matplotlib.text import Text

    width = fig.get_tightbbox(fig.canvas.get_renderer()).width
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes) * PAPER_TEXT_WIDTH_INCHES / width


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The Student t interval of the mean of ``values`` (for seaborn's ``errorbar=``): with few seeds, two
    standard errors would cover far less than 95% (74% at three)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean - half, mean + half


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of visible texts of ``fig`` whose drawn boxes overlap (by more than a pixel each way): labels that
    run into each other, or into another axes' tick labels."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    hidden = set()   # tick labels at locations outside the view are kept by matplotlib but not drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low <= tick.get_loc() <= high:
                    hidden.update({id(tick.label1), id(tick.label2)})
    boxes = [(t.get_text(), t.get_rotation() % 180, t.get_window_extent(renderer)) for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and id(t) not in hidden]
    out = []
    for i, (text_a, turn_a, a) in enumerate(boxes):
        for text_b, turn_b, b in boxes[i + 1:]:
            if turn_a == turn_b and turn_a not in (0, 90):
                continue     # parallel slanted texts (rotated tick labels): their upright boxes overlap, the glyphs not
            width = min(a.x1, b.x1) - max(a.x0, b.x0)
            height = min(a.y1, b.y1) - max(a.y0, b.y0)
            if width > 1 and height > 1:
                out.append((text_a, text_b))
    return out


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


KINDS = ("exact", "estimate", "timing")


@dataclass(frozen=True)
class Reported:
    """A number the paper quotes, with what a rerun may do to it.

    ``kind``: ``"exact"`` (enumeration or quadrature: a rerun gives it back to rounding),
    ``"estimate"`` (Monte Carlo or training: a rerun gives it back within ``stderr``, which is
    printed beside it), or ``"timing"`` (machine-dependent: not reproducible).
    """

    value: float
    stderr: float = 0.0
    kind: str = "exact"
    digits: int = 3

    def tex(self) -> str:
        if self.kind == "estimate":
            return format_estimate(self.value, self.stderr, tex=True)
        return tex_number(self.value, self.digits)


def exact(value: float, digits: int = 3) -> Reported:
    return Reported(float(value), 0.0, "exact", digits)


def estimate(value: float, stderr: float) -> Reported:
    return Reported(float(value), float(stderr), "estimate")


def mean_estimate(values) -> Reported:
    """The mean of independent values (one per seed, network, run or gate) with its standard error over them:
    their standard deviation (``n - 1``) over :math:`\\sqrt n`."""
    x = np.asarray(values, dtype=float)
    return estimate(x.mean(), x.std(ddof=1) / math.sqrt(len(x)))


def timing(value: float, digits: int = 2) -> Reported:
    return Reported(float(value), math.nan, "timing", digits)


def _error_digits(stderr: float) -> tuple[int, float]:
    """The decimal position to round to (as for ``round``) and the rounded error: one significant
    digit, two when the error's leading digit is 1 or 2 (so 0.014 stays 0.014, 0.06 is 0.06)."""
    exponent = math.floor(math.log10(stderr))
    significant = 2 if stderr / 10**exponent < 3 else 1
    places = significant - 1 - exponent
    rounded = round(stderr, places)
    if rounded >= 10 ** (exponent + 1) and significant == 1:   # 0.096 rounds to 0.1: one digit fewer
        places -= 1
    return places, round(stderr, places)


def format_estimate(value: float, stderr: float, tex: bool = False) -> str:
    """``value`` with its standard error, both rounded where the error's digits end:
    ``0.134 +- 0.021`` (``\\pm`` in LaTeX), ``(1.34 +- 0.21) x 10^-5`` outside [1e-3, 1e4)."""
    if not (math.isfinite(stderr) and stderr > 0):
        return tex_number(value) if tex else f"{value:.3g}"
    scale = max(abs(value), stderr)
    shift = math.floor(math.log10(scale)) if (scale < 1e-3 or scale >= 1e4) else 0
    v, s = value / 10**shift, stderr / 10**shift
    places, s = _error_digits(s)
    v = round(v, places)
    text_v = f"{v:.{max(places, 0)}f}"
    text_s = f"{s:.{max(places, 0)}f}"
    pm = " \\pm " if tex else " ± "
    if shift == 0:
        return f"{text_v}{pm}{text_s}"
    times = f" \\times 10^{{{shift}}}" if tex else f" x 10^{shift}"
    return f"({text_v}{pm}{text_s}){times}"


def macro_part(name: str) -> str:
    """A snake_case name as part of a macro name (letters only): ``"noisy_rectifier"`` -> ``"NoisyRectifier"``."""
    return "".join(part.capitalize() for part in name.split("_"))


def write_numbers(config: Config, numbers: dict[str, str | Reported]) -> Path:
    """``paper/generated/NAME.tex``: one ``\\newcommand`` per number (macro names: letters only), and
    ``NAME.json`` beside it with each :class:`Reported` number's value, error and kind (what
    ``make check-figures`` compares between reruns)."""
    lines = [f"% generated by analyses/{config.name}.py{' --quick' if config.quick else ''}; do not edit"]
    records = {}
    for macro, value in numbers.items():
        if not macro.isalpha():
            raise ValueError(f"macro names must be letters only, got {macro!r}")
        if isinstance(value, Reported):
            if value.kind not in KINDS:
                raise ValueError(f"{macro}: kind must be one of {KINDS}, got {value.kind!r}")
            records[macro] = {"value": value.value, "stderr": value.stderr, "kind": value.kind}
            value = value.tex()
        lines.append(f"\\newcommand{{\\{macro}}}{{{value}}}")
    stem = f"{config.name}{'-quick' if config.quick else ''}"
    path = config.generated / f"{stem}.tex"
    atomic_write(path, "\n".join(lines) + "\n")
    atomic_write(config.generated / f"{stem}.json", json.dumps(records, indent=1, sort_keys=True) + "\n")
    return path


VERIFY_Z = 4.0


def committed_path(config: Config) -> Path:
    """Where a study too long for make figures' budget keeps its full grid's rows: ``figures/data/NAME.csv``
    under ``--out`` (the repository's, where they are committed, by default)."""
    return config.out / "figures" / "data" / f"{config.name}.csv"


def write_committed(config: Config, frame: pd.DataFrame, seconds: float) -> Path:
    """The full grid's rows, as text (``figures/data/NAME.csv``), with how they were made (``NAME.json``)."""
    path = committed_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False, float_format="%.17g")
    os.replace(tmp, path)
    meta = {"analysis": config.name, "seed": config.seed, "device": config.device, "versions": versions(),
            "code": code_version(ROOT / "analyses" / f"{config.name}.py"), "wall_seconds": seconds,
            "recompute": f"python -m analyses.{config.name} --recompute"}
    atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=2, default=str) + "\n")
    return path


def verify_committed(config: Config, analysis: Analysis) -> list[str]:
    """Recompute the analysis's reduced grid (``analysis.verify_cells``) and compare each row with the committed
    one of the same cell and identity: values with a standard error within ``VERIFY_Z`` combined errors, the
    rest to ``1e-6`` relative. A row of a metric the committed rows do not have at all (one added to the library
    after they were computed) cannot be compared: it is counted and named, not failed; a missing row of a
    metric they do have is a failure. The failures as lines."""
    committed = pd.read_csv(committed_path(config))
    fresh = run_cells(config, analysis.verify_cells(config), analysis.compute, parallel=analysis.parallel)
    keys = [c for c in fresh.columns if c.startswith("cell_")] + list(analysis.identity)
    for key in keys:   # a cell's list (its seeds, say) is stored in the CSV as its text: compare it as text
        fresh[key] = fresh[key].map(lambda v: str(v) if isinstance(v, (list, tuple, dict)) else v)
    merged = fresh.merge(committed, on=keys, how="left", suffixes=("", "_committed"), indicator="found")
    known = set(committed.metric) if "metric" in keys else None
    failures, compared, newer = [], 0, set()
    for row in merged.itertuples():
        where = ", ".join(f"{k}={getattr(row, k)}" for k in keys)
        if row.found != "both" and known is not None and row.metric not in known:
            newer.add(row.metric)
            continue
        if row.found != "both":
            failures.append(f"{config.name}: no committed row for {where}")
            continue
        a, b = float(row.value), float(row.value_committed)
        sa, sb = float(getattr(row, "stderr", 0.0)), float(getattr(row, "stderr_committed", 0.0))
        errors = [e for e in (sa, sb) if math.isfinite(e)]
        allowed = 1e-6 * max(abs(a), abs(b)) + 1e-12 + (VERIFY_Z * math.hypot(*errors) if errors else 0.0)
        same = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= allowed
        compared += 1
        if not same:
            failures.append(f"{config.name}: {where}: {a:.6g} against the committed {b:.6g} (allowed {allowed:.3g})")
    print(f"  {config.name}: {compared} recomputed rows against figures/data/{config.name}.csv, "
          f"{len(failures)} moved beyond their error"
          + (f"; not compared (metrics newer than the committed rows): {', '.join(sorted(newer))}" if newer else ""))
    return failures


@dataclass(frozen=True)
class Analysis:
    """An analysis: its cells, how to compute one, how to plot the saved results, and the paper's numbers.

    A *committed* analysis (a study too long for ``make figures``' budget) keeps its full grid's rows in
    ``figures/data/NAME.csv``: ``make figures`` plots from them, ``--recompute`` computes them anew and
    rewrites them, and ``--verify`` (run by ``make check-figures``) recomputes ``verify_cells`` (a reduced
    grid of the same cells) and fails when a row moves beyond its error. ``identity`` names the columns
    that tell a cell's rows apart (besides the cell's own)."""

    name: str
    description: str
    cells: Callable[[Config], list[dict]]
    compute: Callable[[dict, Config], list[dict]]
    plot: Callable[[pd.DataFrame, dict, Config], object]
    numbers: Callable[[pd.DataFrame, Config], dict[str, str]] | None = None
    parallel: bool = True   # False where cells time themselves (they must not share the CPU)
    committed: bool = False
    verify_cells: Callable[[Config], list[dict]] | None = None
    identity: tuple[str, ...] = ()
    # cells a worker process computes before it is replaced (run_cells), on the full grid; a --quick grid's cells are
    # small enough to share the process
    tasks_per_worker: int | None = None

    def main(self, argv: list[str] | None = None) -> Config:
        config = parse(self.name, self.description, argv)
        if config.verify:
            if not self.committed:
                raise SystemExit(f"{self.name} keeps no committed results: nothing to verify")
            failures = verify_committed(config, self)
            for line in failures:
                print("!! " + line)
            if failures:
                raise SystemExit(1)
            return config
        full = self.committed and not config.quick and not config.perturb
        if not config.plot_only:
            start = time.perf_counter()
            if full and committed_path(config).exists() and not config.recompute:
                frame = pd.read_csv(committed_path(config))
                print(f"  {self.name}: plotted from figures/data/{self.name}.csv (python -m analyses.{self.name} "
                      "--recompute computes it anew)")
                save_results(config, frame, extra={"from": f"figures/data/{self.name}.csv"})
            else:
                frame = run_cells(config, self.cells(config), self.compute, parallel=self.parallel,
                                  tasks_per_worker=None if config.quick else self.tasks_per_worker)
                seconds = time.perf_counter() - start
                save_results(config, frame, seconds=seconds)
                if full:
                    write_committed(config, frame, seconds)
        frame, meta = load_results(config)
        style()
        fig = self.plot(frame, meta, config)
        if fig is not None:
            save_figure(config, fig)
        if self.numbers is not None:
            write_numbers(config, self.numbers(frame, config))
        return config
