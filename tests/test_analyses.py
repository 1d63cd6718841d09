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


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_then_plot_from_saved_results_only(name, tmp_path):
    module = importlib.import_module(f"analyses.{name}")
    config = module.main(["--quick", "--out", str(tmp_path), "--device", "cpu"])
    results = pd.read_csv(config.results / "results.csv")
    meta = json.loads((config.results / "meta.json").read_text())
    assert len(results) > 0 and {"config", "seed", "device", "versions", "wall_seconds"} <= set(meta)
    assert (config.generated / f"{name}-quick.tex").exists()
    if name.startswith("fig_"):
        assert (config.figures / f"{name}-quick.png").exists() and (config.figures / f"{name}-quick.pdf").exists()

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
