"""Every analysis runs in its --quick form, and its plot step reads only saved results."""

import importlib
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from analyses import run_all

NAMES = run_all.discover()


def test_every_figure_of_the_paper_has_an_analysis():
    assert {"fig_toy", "fig_st_sign", "fig_sts", "fig_baselines", "fig_metrics", "fig_noisy_rectifier", "fig_cost",
            "fig_training", "tab_claims"} <= set(NAMES)


def _needs_mnist(name: str) -> bool:
    from gradstats import datasets

    return name == "fig_mnist" and not (datasets.mnist_cache() / "train_images.npy").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_then_plot_from_saved_results_only(name, tmp_path):
    if _needs_mnist(name):
        pytest.skip("MNIST is not cached here: make data")
    module = importlib.import_module(f"analyses.{name}")
    config = module.main(["--quick", "--out", str(tmp_path), "--device", "cpu"])
    results = pd.read_csv(config.results / "results.csv")
    meta = json.loads((config.results / "meta.json").read_text())
    assert len(results) > 0 and {"config", "seed", "device", "versions", "wall_seconds"} <= set(meta)
    assert (config.generated / f"{name}-quick.tex").exists()
    if name.startswith("fig_"):
        assert (config.figures / f"{name}-quick.png").exists() and (config.figures / f"{name}-quick.pdf").exists()
    if name == "tab_claims":   # the verdicts' plain-text mathematics is set as LaTeX
        table = (config.generated / "tab_claims_table-quick.tex").read_text()
        for ascii_maths in (r"\^{}", r"\~{}", "+-", r"\textgreater{}", "!=", " sqrt"):
            assert ascii_maths not in table, ascii_maths

    # the plot step needs nothing but the saved files: computing anything now is an error
    def refuse(*args, **kwargs):
        raise AssertionError("the plot step computed a cell")

    original = module.ANALYSIS.compute
    object.__setattr__(module.ANALYSIS, "compute", refuse)  # frozen dataclass: patched for this test only
    try:
        for cell in (config.results / "cells").glob("*.json"):
            cell.unlink()
        (config.figures / f"{name}-quick.png").unlink(missing_ok=True)
        module.main(["--quick", "--out", str(tmp_path), "--plot-only"])
    finally:
        object.__setattr__(module.ANALYSIS, "compute", original)
    if name.startswith("fig_"):
        assert (config.figures / f"{name}-quick.png").exists()
        check_legible(module, config)


def test_the_smallest_text_on_the_page_is_the_smallest_visible_font_scaled_to_the_text_width():
    import matplotlib.pyplot as plt

    from analyses._runner import PAPER_TEXT_WIDTH_INCHES, smallest_text_on_page

    fig, ax = plt.subplots(figsize=(4.0, 3.0))
    ax.set_title("title", fontsize=12)
    ax.tick_params(labelsize=9)
    small = ax.text(0.5, 0.5, "small", fontsize=5)
    ax.text(0.5, 0.2, "   ", fontsize=2)                     # empty text is not text on the page
    try:
        scale = PAPER_TEXT_WIDTH_INCHES / fig.get_tightbbox(fig.canvas.get_renderer()).width
        assert smallest_text_on_page(fig) == pytest.approx(5 * scale)
        small.set_visible(False)                              # neither is hidden text
        assert smallest_text_on_page(fig) == pytest.approx(9 * scale)
    finally:
        plt.close(fig)


def check_legible(module, config):
    """No text of the figure is under 7 points once it is set at the paper's text width, and no two texts
    (labels, tick labels, titles, legend entries) overlap."""
    import matplotlib.pyplot as plt

    from analyses._runner import MIN_POINTS_ON_PAGE, load_results, overlapping_texts, smallest_text_on_page, style

    style()
    fig = module.ANALYSIS.plot(*load_results(config), config)
    try:
        smallest = smallest_text_on_page(fig)
        overlaps = overlapping_texts(fig)
    finally:
        plt.close(fig)
    assert smallest >= MIN_POINTS_ON_PAGE, f"{module.ANALYSIS.name}: text of {smallest:.1f} pt on the page"
    assert not overlaps, f"{module.ANALYSIS.name}: overlapping texts {overlaps[:5]}"


def test_overlapping_labels_are_found_and_slanted_tick_labels_are_not_overlaps():
    import matplotlib.pyplot as plt

    from analyses._runner import overlapping_texts

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(3.0, 2.0))
    top.set_ylabel("a long label that runs down\ninto the axes below it\nand further", fontsize=12)
    bottom.set_ylabel("another label", fontsize=12)
    bottom.set_xticks(range(6), [f"name {i}" for i in range(6)], rotation=45)
    bottom.set_xlim(0, 2)                      # ticks outside the view are not drawn, so cannot overlap
    try:
        pairs = overlapping_texts(fig)
        assert any({"another label"} < set(p) for p in pairs)
        assert not any(a.startswith("name") and b.startswith("name") for a, b in pairs)
    finally:
        plt.close(fig)


def test_cells_are_cached_and_an_interrupted_run_keeps_what_it_computed(tmp_path):
    from analyses import fig_baselines as module

    calls = []
    original = module.ANALYSIS.compute

    def counting(cell, config):
        calls.append(cell["kind"])
        if len(calls) == 3 and not getattr(counting, "resumed", False):
            raise KeyboardInterrupt  # an interruption after two cells
        return original(cell, config)

    object.__setattr__(module.ANALYSIS, "compute", counting)
    try:
        with pytest.raises(KeyboardInterrupt):
            module.main(["--quick", "--out", str(tmp_path)])
        assert len(list((tmp_path / "results" / "fig_baselines-quick" / "cells").glob("*.json"))) == 2
        counting.resumed = True
        calls.clear()
        module.main(["--quick", "--out", str(tmp_path)])
        total = len(module.cells(SimpleNamespace(quick=True, seed=0)))
        assert len(calls) == total - 2            # the two finished cells were not recomputed
        calls.clear()
        module.main(["--quick", "--out", str(tmp_path)])
        assert calls == []                        # nothing changed: nothing recomputed
    finally:
        object.__setattr__(module.ANALYSIS, "compute", original)


def test_bad_arguments_are_clear(capsys):
    from analyses import fig_toy

    with pytest.raises(SystemExit):
        fig_toy.main(["--seed", "-1"])
    assert "--seed must be >= 0" in capsys.readouterr().err


def test_cells_computed_by_worker_processes_give_the_same_results(tmp_path):
    from analyses import fig_toy

    one = fig_toy.main(["--quick", "--out", str(tmp_path / "one"), "--device", "cpu"])
    two = fig_toy.main(["--quick", "--out", str(tmp_path / "two"), "--device", "cpu", "--jobs", "2"])
    assert two.jobs == 2
    a, b = pd.read_csv(one.results / "results.csv"), pd.read_csv(two.results / "results.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=1e-15)  # in cell order, whichever finished first


def test_cells_computed_on_a_dask_local_cluster_give_the_same_results(tmp_path):
    pytest.importorskip("distributed", reason="the distributed extra is not installed")
    from analyses import fig_toy

    one = fig_toy.main(["--quick", "--out", str(tmp_path / "one"), "--device", "cpu"])
    two = fig_toy.main(["--quick", "--out", str(tmp_path / "two"), "--device", "cpu", "--jobs", "2",
                        "--scheduler", "local"])
    assert two.scheduler == "local"
    a, b = pd.read_csv(one.results / "results.csv"), pd.read_csv(two.results / "results.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=1e-15)
    assert len(list((two.results / "cells").glob("*.json"))) == len(a.drop_duplicates([c for c in a if c.startswith("cell_")]))


def test_a_failing_cell_in_a_worker_stops_the_run_and_keeps_the_finished_cells(tmp_path, monkeypatch):
    from analyses import _runner

    def compute(cell, config):
        return [{"value": cell["i"]}]

    monkeypatch.setattr(_runner, "_compute_in_worker", _value_or_fail)  # workers find it by name
    config = _runner.Config("fig_toy", True, 0, "cpu", tmp_path, False, False, jobs=2)
    with pytest.raises(ValueError, match="cell 3 fails"):
        _runner.run_cells(config, [{"i": i} for i in range(6)], compute)
    kept = list((config.results / "cells").glob("*.json"))
    assert 1 <= len(kept) <= 5  # cell 3 starts only after cell 0 or 1 has finished, and finished cells are kept
    frame = _runner.run_cells(_runner.Config("fig_toy", True, 0, "cpu", tmp_path, False, False, jobs=1),
                              [{"i": i} for i in range(6) if i != 3], compute)
    assert frame.value.tolist() == [0, 1, 2, 4, 5]


def _value_or_fail(cell, config):
    """A worker's compute: cell 3 fails."""
    from analyses import _runner

    if cell["i"] == 3:
        raise ValueError("cell 3 fails")
    return _runner._computed_rows(lambda c, _: [{"value": c["i"]}], cell, config)


def test_a_corrupted_cached_cell_is_named_and_recomputed_alone(tmp_path, capsys):
    from analyses import _runner

    computed = []

    def compute(cell, config):
        computed.append(cell["i"])
        return [{"value": cell["i"]}]

    config = _runner.Config("fig_toy", True, 0, "cpu", tmp_path, False, False, jobs=1)
    cells = [{"i": i} for i in range(4)]
    _runner.run_cells(config, cells, compute)
    paths = sorted((config.results / "cells").glob("*.json"))
    victim = next(p for p in paths if json.loads(p.read_text())["cell"]["i"] == 2)
    victim.write_text(victim.read_text()[:25])   # truncated mid-way
    computed.clear()
    frame = _runner.run_cells(config, cells, compute)
    assert computed == [2] and frame.value.tolist() == [0, 1, 2, 3]
    assert f"cached cell {victim} is unreadable" in capsys.readouterr().err


_KILLED_PARENT = """
import os, sys, time
from pathlib import Path
from analyses import _runner


def slow(cell, config):
    (Path(sys.argv[2]) / f"started-{os.getpid()}").write_text("")   # the test's signal: this worker computes
    time.sleep(3600)
    return [], 0.0


if __name__ == "__main__":
    _runner._compute_in_worker = slow
    config = _runner.Config("fig_toy", True, 0, "cpu", Path(sys.argv[1]), False, False, jobs=2)
    _runner.run_cells(config, [{"i": i} for i in range(4)], lambda c, _: [])
"""

GUARD_SECONDS = 900   # a broken run fails after this; a working one moves on as soon as its signal comes


def _wait_for(condition, what: str) -> None:
    """Poll ``condition`` until it holds (a signal from the processes under test); fail after GUARD_SECONDS."""
    import time

    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < GUARD_SECONDS, f"{what} did not happen in {GUARD_SECONDS} s"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killing_the_runner_leaves_no_worker_behind(tmp_path):
    """Both workers signal that they are computing (a file each); then the parent is killed, and the test waits for
    the workers to exit (they poll for their parent twice a second): no sleep decides the outcome."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(_KILLED_PARENT)
    signals = tmp_path / "signals"
    signals.mkdir()
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(signals)], cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        _wait_for(lambda: len(list(signals.glob("started-*"))) == 2, "both workers starting their cells")
        workers = [int(p.name.split("-")[1]) for p in signals.glob("started-*")]
        assert sorted(workers) == sorted(_children(parent.pid))
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _wait_for(lambda: not any(_alive(w) for w in workers), "the workers' exit after their parent died")
    finally:
        parent.kill()
        for w in _children(parent.pid):
            os.kill(w, signal.SIGKILL)


def test_numbers_are_printed_with_the_digits_their_error_supports():
    from analyses._runner import format_estimate

    assert format_estimate(0.1342, 0.021) == "0.134 ± 0.021"
    assert format_estimate(0.1342, 0.0061) == "0.134 ± 0.006"
    assert format_estimate(1.3e-5, 2.1e-6, tex=True) == r"(1.30 \pm 0.21) \times 10^{-5}"
    assert format_estimate(-0.36212, 0.00012) == "-0.36212 ± 0.00012"
    assert format_estimate(0.5, 0.0) == "0.5"   # an exact value keeps its significant digits


def test_check_figures_compares_each_kind_by_its_own_rule():
    from analyses.check_figures import compare

    exact = {"kind": "exact", "stderr": 0.0}
    assert compare({**exact, "value": 1.0}, {**exact, "value": 1.0 + 1e-9})[0]
    assert not compare({**exact, "value": 1.0}, {**exact, "value": 1.001})[0]
    est = {"kind": "estimate", "stderr": 0.01}
    assert compare({**est, "value": 0.50}, {**est, "value": 0.55})[0]            # 0.05 <= 4 * 0.014
    assert not compare({**est, "value": 0.50}, {**est, "value": 0.60})[0]
    assert not compare({**est, "value": 0.5}, {**est, "value": 0.5, "stderr": float("nan")})[0]
    timing = {"kind": "timing", "stderr": float("nan")}
    assert compare({**timing, "value": 1.0}, {**timing, "value": 3.0})[0]


def test_the_claims_table_sets_its_mathematics_in_latex():
    from analyses.tab_claims import _tex_with_maths
    assert _tex_with_maths("the error is O(p^(3/2)), far below o(sqrt p)") == \
        r"the error is $O(p^{3/2})$, far below $o(\sqrt{p})$"
    assert _tex_with_maths("2.95 +- 0.26% (identity), p = 0.055, to 4e-16") == \
        r"$2.95 \pm 0.26$\% (identity), $p = 0.055$, to $4 \times 10^{-16}$"
    assert _tex_with_maths("for dL/da_i: W_ij, weighted by h_j^2; st_sigmoid & |bias|") == \
        r"for $\partial L/\partial a_i$: $W_{ij}$, weighted by $h_{j}^{2}$; st\_sigmoid \& $|\mathrm{bias}|$"
    assert _tex_with_maths("as p -> 0 when f(h) - f(0) ~ c h^k, whenever f'(0) != 0") == \
        r"as $p \to 0$ when $f(h) - f(0) \sim c\,h^k$, whenever $f'(0) \neq 0$"


def test_the_audit_names_the_first_rejections_its_confirmation_did_not_repeat():
    from analyses.tab_audit import unconfirmed_sentence

    note = ("seed 0 disagreed (max |z| {z} at {n} draws); this is seed 1000003's audit, where it did not recur")
    rows = pd.DataFrame({"peer": ["storchastic", "pyro", "storchastic"],
                         "estimator": ["ScoreFunction()", "TraceGraph_ELBO()", "DisARM()"],
                         "problem": ["categorical(1, K=4, seed=0)"] * 3, "status": ["agrees", "agrees", "disagrees"],
                         "notes": [note.format(z="4.09", n="136,475"), "no baseline; " + note.format(z="4.09", n="136,475"),
                                   "confirmed at seed 1000003: max |z| 9.00 at 2,000 draws"]})
    text = unconfirmed_sentence(rows)
    assert text.startswith("Two first rejections (storchastic's ScoreFunction() on 1 unit, K=4, $|z| = 4.09$; pyro's "
                           "TraceGraph\\_ELBO() on 1 unit, K=4, $|z| = 4.09$)")
    assert "those rows agree; rejections with equal $|z|$" in text and "DisARM" not in text
    assert unconfirmed_sentence(rows.iloc[2:]) == "Every first rejection recurred at the confirmation's seed."
    one = unconfirmed_sentence(rows.iloc[:1].assign(status="inconclusive"))
    assert one.startswith("One first rejection (") and one.endswith("and that row is now inconclusive.")


def test_a_committed_study_replots_from_its_rows_and_verify_catches_a_row_that_moved(tmp_path, capsys):
    """A study too long for make figures keeps its full grid's rows in figures/data/NAME.csv: make figures plots
    from them, --recompute recomputes them, --verify recomputes a reduced grid and fails when a row moves."""
    import pandas as pd

    from analyses import _runner

    computed = []

    def cells(config):   # a list in the cell, as a study's seeds are: the CSV keeps its text
        return [{"i": i, "seeds": [i, i + 1]} for i in range(3)]

    def compute(cell, config):
        computed.append(cell["i"])
        return [{"metric": "m", "value": cell["i"] + 0.5, "stderr": 0.1}]

    study = _runner.Analysis("fig_toy", "a study", cells, compute, lambda frame, meta, config: None, committed=True,
                             verify_cells=lambda config: cells(config)[:2], identity=("metric",))
    argv = ["--out", str(tmp_path)]
    study.main(argv)
    rows = tmp_path / "figures" / "data" / "fig_toy.csv"
    assert computed == [0, 1, 2] and rows.exists() and (tmp_path / "figures" / "data" / "fig_toy.json").exists()
    computed.clear()
    study.main(argv)
    assert computed == [] and "plotted from figures/data/fig_toy.csv" in capsys.readouterr().out
    study.main([*argv, "--recompute"])
    assert computed == [0, 1, 2]
    computed.clear()
    study.main([*argv, "--verify", "--recompute"])                   # the reduced grid, within its errors
    assert computed == [0, 1]
    frame = pd.read_csv(rows)
    frame.loc[frame.cell_i == 1, "value"] += 1.0                     # 10 standard errors off
    frame.to_csv(rows, index=False)
    with pytest.raises(SystemExit):
        study.main([*argv, "--verify", "--recompute"])
    assert "cell_i=1, cell_seeds=[1, 2], metric=m: 1.5 against the committed 2.5" in capsys.readouterr().out


def test_verify_compares_committed_metrics_and_names_newer_ones(tmp_path, monkeypatch):
    from analyses import _runner

    config = _runner.parse("fake", "fake", ["--out", str(tmp_path)])
    committed = pd.DataFrame({"cell_seed": [0, 0], "metric": ["a", "a"], "group": ["x", "y"],
                              "value": [1.0, 2.0], "stderr": [0.1, 0.1]})
    path = _runner.committed_path(config)
    path.parent.mkdir(parents=True)
    committed.to_csv(path, index=False)
    analysis = _runner.Analysis("fake", "fake", lambda c: [], lambda cell, c: [], lambda f, m, c: None,
                                committed=True, verify_cells=lambda c: [], identity=("metric", "group"))

    def fresh(rows):
        monkeypatch.setattr(_runner, "run_cells", lambda *args, **kwargs: pd.DataFrame(rows))

    fresh({"cell_seed": [0, 0, 0], "metric": ["a", "a", "b"], "group": ["x", "y", "x"],
           "value": [1.05, 2.0, 7.0], "stderr": [0.1, 0.1, 0.1]})
    assert _runner.verify_committed(config, analysis) == []           # "b" is newer than the rows: not compared
    fresh({"cell_seed": [0, 0], "metric": ["a", "a"], "group": ["x", "z"], "value": [3.0, 2.0], "stderr": [0.1, 0.1]})
    failures = _runner.verify_committed(config, analysis)
    assert len(failures) == 2 and "against the committed 1" in failures[0] and "no committed row" in failures[1]


def test_t_interval_is_the_student_interval_and_a_point_for_one_value():
    from analyses._runner import t_interval

    # mean 2, sd 1; with 2 degrees of freedom the quantile is closed-form: t_q = (2q - 1) sqrt(2 / (4 q (1 - q)))
    t = 0.95 * (2 / (4 * 0.975 * 0.025)) ** 0.5
    low, high = t_interval([1.0, 2.0, 3.0])
    assert low == pytest.approx(2 - t / 3**0.5, rel=1e-12) and high == pytest.approx(2 + t / 3**0.5, rel=1e-12)
    assert t_interval([5.0]) == (5.0, 5.0)


def test_the_lowest_mse_by_budget_is_read_per_budget_and_told_as_runs():
    from analyses.fig_metrics import crossover_text, lowest_mse_by_budget

    frame = pd.DataFrame({"layer": 0, "metric": "mse", "budget": [18.0, 18.0, 180.0, 180.0, 1800.0, 1800.0],
                          "variant": ["st_sigmoid", "disarm"] * 3, "value": [0.1, 0.5, 0.05, 0.04, 0.03, 0.01]})
    ranking = lowest_mse_by_budget(frame)
    assert ranking == [(18.0, "st_sigmoid"), (180.0, "disarm"), (1800.0, "disarm")]
    assert crossover_text(ranking) == "st\\_sigmoid (18), disarm (180--1800)"
