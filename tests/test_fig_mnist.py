"""The MNIST study's bookkeeping: its saved runs, the rows built from them, the selection and Holm's correction
(the training itself is tested in test_conditional; its quick grid in test_analyses)."""

import json

import pandas as pd
import pytest

from analyses import fig_mnist


def test_holm_adjusts_step_down_and_keeps_the_order():
    adjusted = fig_mnist.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": float("nan")})
    # sorted 0.01, 0.03, 0.04: times 3, 2, 1, then running maxima
    assert adjusted["a"] == pytest.approx(0.03) and adjusted["c"] == pytest.approx(0.06)
    assert adjusted["b"] == pytest.approx(0.06) and adjusted["d"] != adjusted["d"]
    assert fig_mnist.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def _run(valid: float, epochs: int) -> dict:
    curve = [valid + 0.01 * (epochs - e) for e in range(1, epochs + 1)]
    return {"valid_error": valid, "test_error": valid + 0.001, "train_criterion": 0.01, "sparsity": 0.1,
            "train_sparsity": 0.1, "best_epoch": epochs, "curve": curve, "on_curve": [0.1] * epochs, "seconds": 1.0}


def test_collect_builds_the_committed_rows_from_the_saved_runs_alone(tmp_path, monkeypatch):
    """An unfinished study: ST's three selection runs and two report seeds saved, REINFORCE's selection
    incomplete. --collect trains nothing, selects ST's scale from its runs, and leaves REINFORCE out."""
    monkeypatch.setattr(fig_mnist, "RUNS", tmp_path / "runs")

    def save(stage, gate, scale, seed, epochs, valid):
        cell = fig_mnist._cell(stage, gate, scale, seed, epochs)
        path = fig_mnist._run_path(cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": {"cell": cell}, "run": _run(valid, 3)}))

    for scale, valid in zip(fig_mnist.SCALES, (0.05, 0.03, 0.04)):
        save("selection", "st", scale, fig_mnist.SELECTION_SEED, fig_mnist.SELECT_EPOCHS, valid)
    save("selection", "reinforce", 1.0, fig_mnist.SELECTION_SEED, fig_mnist.SELECT_EPOCHS, 0.02)
    for seed, valid in ((0, 0.02), (1, 0.025)):
        save("report", "st", fig_mnist.SCALES[1], seed, fig_mnist.REPORT_EPOCHS, valid)

    def no_training(*args, **kwargs):
        raise AssertionError("--collect must not train")

    monkeypatch.setattr(fig_mnist, "_train", no_training)
    fig_mnist.main(["--collect", "--out", str(tmp_path), "--device", "cpu"])
    frame = pd.read_csv(tmp_path / "figures" / "data" / "fig_mnist.csv")
    finals = frame[(frame.metric == "test_error") & (frame.epoch == -1)]
    assert sorted(zip(finals.cell_stage, finals.cell_gate)) == [("report", "st")] * 2 + [("selection", "reinforce")] + \
        [("selection", "st")] * 3
    assert set(finals[finals.cell_stage == "report"].cell_gater_rate_scale) == {fig_mnist.SCALES[1]}
    curve = frame[(frame.cell_stage == "report") & (frame.cell_seed == 0) & (frame.metric == "valid_error")
                  & (frame.epoch > 0)]
    assert curve.value.tolist() == pytest.approx([0.04, 0.03, 0.02])
    numbers = json.loads((tmp_path / "paper" / "generated" / "fig_mnist.json").read_text())
    assert numbers["mnistStError"]["value"] == pytest.approx(2.35) and numbers["mnistStError"]["stderr"] == \
        pytest.approx(0.25)                                         # test errors 2.1% and 2.6%: mean, s.e. over seeds
    table = (tmp_path / "paper" / "generated" / "tab_mnist.tex").read_text()
    st_row = table.split("\nst &")[1].split("\\\\")[0]
    assert "n/a" not in st_row and st_row.endswith("$0.0033$ & $1.42$ & $1.39$ ")   # the paper's, as it prints them
