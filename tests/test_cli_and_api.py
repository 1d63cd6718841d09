"""The public face: what ``import gradstats`` exposes, and the command line."""

import json

import pytest

import gradstats as gs
from gradstats import cli


def test_public_names():
    assert set(gs.__all__) >= {"exact_gradient", "exact_loss", "moments", "Moments", "problems", "estimators",
                               "losses", "units", "functional"}
    for name in gs.__all__:
        assert hasattr(gs, name), name


def test_cli_estimators_json(capsys):
    assert cli.main(["estimators", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(gs.estimators.names())


def test_cli_moments_prints_the_exact_bias(capsys):
    assert cli.main(["moments", "--estimator", "st", "--logit", "-1"]) == 0
    out = capsys.readouterr().out
    # E[ST] = 2 (p - t) = -0.36212 for p = sigmoid(-1), t = 0.45; the exact gradient is +0.019661
    assert "0.019661" in out and "-0.36212" in out and "cos(mean, g) = -1" in out


def test_cli_bad_input_is_a_clear_error(capsys):
    assert cli.main(["moments", "--estimator", "foo"]) == 2
    assert "unknown estimator 'foo'; registered:" in capsys.readouterr().err


def test_cli_train_prints_the_exact_loss_of_the_run(capsys):
    argv = ["train", "--estimator", "st_sigmoid", "--sizes", "3,4", "--examples", "2", "--steps", "6",
            "--record-every", "3", "--learning-rate", "1", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    run = gs.training.train(gs.problems.teacher_student([3, 4], 2), "st_sigmoid", steps=6, learning_rate=1.0,
                            draws_per_step=6, record_every=3)
    assert out["steps"] == [0, 3, 6] and out["exact_loss"] == list(run.loss)
    assert cli.main(["train", "--estimator", "st", "--sizes", "6,x"]) == 2
    assert "--sizes must be integers separated by commas" in capsys.readouterr().err
    assert cli.main(["train", "--estimator", "st", "--learning-rate", "-1"]) == 2
    assert "learning_rate must be a finite number > 0" in capsys.readouterr().err


def test_cli_claims_json_has_the_contract_keys(capsys):
    assert cli.main(["claims", "--json", "--id", "P2a", "--id", "ST1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == ["P2a", "ST1"]
    for r in rows:
        assert {"id", "status", "qualifier", "kind", "statement", "reference", "reading", "evidence", "counterexample"} <= set(r)
        assert r["status"] in ("confirmed", "refuted", "inconclusive")


def test_cli_claims_table_and_unknown_id(capsys):
    assert cli.main(["claims", "--id", "P1"]) == 0
    out = capsys.readouterr().out
    assert "P1" in out and "CONFIRMED" in out and "gradstats claims --id P1" in out
    assert cli.main(["claims", "--id", "P9"]) == 2
    assert "unknown claim 'P9'" in capsys.readouterr().err


def test_a_user_registers_a_claim():
    from gradstats import claims

    claim = claims.Claim("USER-1", "one plus one is two", "arithmetic", "always",
                         lambda settings: claims.Verdict("confirmed", evidence="1 + 1 == 2", cases=1))
    claims.register(claim)
    try:
        assert claims.run(["USER-1"])[0]["status"] == "confirmed"
    finally:
        claims.registry._CLAIMS.pop("USER-1")


def test_a_user_registers_a_claim_with_its_metadata_beside_the_check():
    from gradstats import claims

    @claims.claim("USER-2", statement="two plus two is four", reference="arithmetic", reading="always",
                  kind="mathematical")
    def check(settings):
        return claims.Verdict("confirmed", evidence="2 + 2 == 4", qualifier="in base ten", cases=1)

    try:
        row = claims.run(["USER-2"])[0]
        assert (row["status"], row["qualifier"], row["reading"], row["kind"]) == ("confirmed", "in base ten", "always",
                                                                                  "mathematical")
        with pytest.raises(ValueError, match="kind must be one of"):
            claims.claim("USER-3", statement="", reference="", reading="", kind="anecdotal")(check)
    finally:
        claims.registry._CLAIMS.pop("USER-2")


def test_import_is_light_and_claims_load_on_first_use():
    import subprocess
    import sys

    code = ("import sys, gradstats; heavy = [m for m in ('hypothesis', 'seaborn', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy; gradstats.claims.run; assert 'hypothesis' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
