"""The conditional-computation experiment: the gated network, its gates, the protocol and the CLI."""

import json
import math

import pytest
import torch

import gradstats as gs
from gradstats import cli, conditional


@pytest.fixture(scope="module")
def data():
    return gs.datasets.digits(seed=0)


def test_architecture_is_the_papers_scaled_to_the_input():
    assert conditional.architecture_for(784, 10) == conditional.Architecture(784, 400, 2000, 10)
    assert conditional.architecture_for(64, 10) == conditional.Architecture(64, 32, 160, 10)


def test_test_gates_are_deterministic_and_thresholded():
    a = torch.tensor([[-1.0, 0.5, 2.0]])
    st = conditional.Settings("st")
    assert conditional.test_gates(st, a, 0.0).tolist() == [[0.0, 1.0, 1.0]]
    sts = conditional.test_gates(conditional.Settings("sts"), a, 1.0)
    assert sts[0, 2] == pytest.approx(math.sqrt(1 / (1 + math.exp(-2.0)))) and sts[0, 1] == 0
    assert conditional.test_gates(conditional.Settings("rectifier"), a, 0.0).tolist() == [[0.0, 0.5, 2.0]]


@pytest.mark.parametrize("gate", conditional.GATES)
def test_every_gate_trains_reproducibly_and_reaches_the_target_sparsity(data, gate):
    settings = conditional.Settings(gate, epochs=2, eval_every=1)
    first = conditional.train_gated(data, settings, seed=3, device="cpu")
    second = conditional.train_gated(data, settings, seed=3, device="cpu")
    assert first.test_error == second.test_error and first.valid_error == second.valid_error
    assert 0 <= first.test_error <= 1 and 0 <= first.valid_error <= 1
    if gate not in conditional.RECTIFIERS:               # rectifiers cannot be on below 0: at most the target
        assert first.sparsity == pytest.approx(0.1, abs=0.03)
    else:
        assert first.sparsity <= 0.13


def test_straight_through_gates_learn_the_digits(data):
    result = conditional.train_gated(data, conditional.Settings("st", learning_rate=0.3, epochs=10), seed=0, device="cpu")
    assert result.test_error < 0.2                       # chance is 0.9; 40 epochs reach about 0.03


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="gate must be one of"):
        conditional.Settings("nope")
    with pytest.raises(ValueError, match="learning_rate"):
        conditional.Settings("st", learning_rate=-1.0)
    with pytest.raises(ValueError, match="sparsity"):
        conditional.Settings("st", sparsity=1.5)
    with pytest.raises(ValueError, match="unknown estimator"):
        conditional.run_study(gs.datasets.digits(), ["st", "nope"], seeds=1)


def test_paired_comparison_with_st():
    settings = conditional.Settings("st")
    results = [conditional.Result(g, s, settings, 0.0, e, 0.1, 0.1, 1)
               for g, s, e in [("st", 0, 0.10), ("st", 1, 0.20), ("st", 2, 0.30), ("sts", 0, 0.15), ("sts", 1, 0.26),
                               ("sts", 2, 0.37)]]
    summary = conditional.compare_with(results)
    assert summary["st"]["mean"] == pytest.approx(0.2) and "difference" not in summary["st"]
    assert summary["sts"]["difference"] == pytest.approx(0.06) and 0 < summary["sts"]["wilcoxon_p"] <= 1


def test_cli_json_rows(capsys):
    code = cli.main(["conditional", "--quick", "--json", "--estimators", "st", "reinforce", "--seeds", "1",
                     "--epochs", "1", "--device", "cpu"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["estimator"] for r in rows] == ["st", "reinforce"]
    for r in rows:
        assert {"estimator", "seed", "test_error", "valid_error", "sparsity"} <= set(r)
        assert 0 <= r["test_error"] <= 1 and 0 <= r["sparsity"] <= 1
