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
    assert cli.main(["claims", "--json", "--no-cache", "--id", "P2a", "--id", "ST1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == ["P2a", "ST1"]
    for r in rows:
        assert {"id", "status", "qualifier", "kind", "statement", "reference", "reading", "evidence", "counterexample"} <= set(r)
        assert r["status"] in ("confirmed", "refuted", "inconclusive")


def test_cli_claims_table_and_unknown_id(capsys):
    assert cli.main(["claims", "--no-cache", "--id", "P1"]) == 0
    out = capsys.readouterr().out
    assert "P1" in out and "CONFIRMED" in out and "gradstats claims --id P1" in out
    assert cli.main(["claims", "--no-cache", "--id", "P9"]) == 2
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


def test_import_is_light_and_claims_load_on_first_use(run_python):
    code = ("import sys, gradstats; heavy = [m for m in ('hypothesis', 'seaborn', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy; gradstats.claims.run; assert 'hypothesis' in sys.modules")
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr


def test_result_objects_print_short_and_give_frames():
    from gradstats.stats import unbiasedness_test
    from gradstats.training import train

    net = gs.problems.sbn([3, 2], seed=0)
    exact = gs.moments(net, "st")
    mc = gs.moments(net, "st", method="mc", num_samples=1000, seed=0, progress=False)
    assert repr(exact).startswith("Moments(estimator='st', method='exact', D=8, num_outcomes=4,")
    assert "num_samples=1,000" in repr(mc) and "\n" not in repr(mc)
    frame = mc.to_frame(net.coordinate_names())
    assert list(frame.columns) == ["coordinate", "mean", "var", "mean_stderr"] and frame["coordinate"][0] == "W1[0,0]"
    assert frame["mean"].tolist() == mc.mean.tolist() and exact.to_frame()["mean_stderr"].isna().all()
    with pytest.raises(ValueError, match="coordinate_names must have D = 8 entries"):
        mc.to_frame(["a"])
    test = unbiasedness_test(mc, gs.exact_gradient(net))
    assert test.pvalue == test.global_p and repr(test).startswith("TestResult(verdict='rejected', global_method='holm', pvalue=")
    assert list(test.to_frame().columns) == ["coordinate", "statistic", "p_value", "adjusted", "rejected", "untested",
                                             "reliable", "required_draws", "skewness", "kurtosis"]
    run = train(gs.problems.teacher_student([3, 2], num_examples=2), "st", steps=20, learning_rate=1.0)
    assert "\n" not in repr(run) and "tensor" not in repr(run)
    assert run.to_frame()["loss"].tolist() == list(run.loss)



def test_result_summaries_state_how_they_were_computed_and_show_a_bounded_table():
    from gradstats.stats import unbiasedness_test
    from gradstats.training import train

    net = gs.problems.sbn([3, 2], seed=0)
    names = net.coordinate_names()
    mc = gs.moments(net, "st", method="mc", num_samples=1000, seed=0, progress=False)
    text = mc.summary(names, max_rows=4)
    lines = text.splitlines()
    assert lines[0].startswith("Moments of 'st': Monte Carlo, 1,000 draws, 1 loss evaluation per draw")
    assert f"trace(Cov) = {mc.trace:.6g}" in lines[1]
    # header, two rows from each end and the ellipsis row: 8 coordinates shown as 4
    assert lines[2].split() == ["coordinate", "mean", "var", "mean_stderr"] and len(lines) == 2 + 1 + 4 + 1
    assert lines[3].split()[0] == names[0] and lines[-1].split()[0] == names[-1] and "..." in lines[5]
    assert len(mc.summary(names, max_rows=100).splitlines()) == 2 + 1 + 8
    assert "exact, over 4 outcomes" in gs.moments(net, "st").summary()
    with pytest.raises(ValueError, match="max_rows"):
        mc.summary(max_rows=0)

    test = unbiasedness_test(mc, gs.exact_gradient(net))
    first, second = test.summary().splitlines()[:2]
    assert first == f"Global test (holm): p = {test.pvalue:.4g}, {test.verdict} at alpha = 0.05"
    assert second.startswith(f"{int(test.rejected.sum())} of 8 coordinates rejected after Holm")

    data = gs.problems.teacher_student([3, 2], num_examples=2)
    run = train(data, "st", steps=20, learning_rate=1.0, record_every=5)
    lines = run.summary().splitlines()
    assert lines[0].startswith("Training with 'st': sgd, learning rate 1, 1 draw per example and ")
    low = min(run.loss)
    assert lines[1].endswith(f"lowest {low:.6g} at step {run.steps[run.loss.index(low)]}") and len(lines) == 2 + 1 + 5
    exact = train(data, "exact", steps=5, learning_rate=1.0)
    assert "the exact gradient and " in exact.summary().splitlines()[0]

def test_cli_moments_json_gives_standard_errors_and_rebuilds_its_problem(capsys):
    assert cli.main(["moments", "--estimator", "st", "--problem", "sbn", "--sizes", "3,2", "--method", "mc",
                     "--num-samples", "3000", "--seed", "1", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    problem = eval(out["problem"], {"gs": gs})
    exact = gs.exact_gradient(problem)
    assert [c["exact_gradient"] for c in out["coordinates"]] == exact.tolist()
    m = gs.moments(problem, "st", method="mc", num_samples=3000, seed=1, device="cpu", progress=False)
    assert [c["mean_stderr"] for c in out["coordinates"]] == m.mean_stderr.tolist()
    assert out["num_samples"] == 3000 and out["relative_bias"] >= 0


def test_cli_estimators_table_shows_the_flags(capsys):
    assert cli.main(["estimators"]) == 0
    out = capsys.readouterr().out
    assert "max layers" in out and "options" in out and "temperature=1.0" in out


def test_cli_claims_stream_their_verdicts_and_reuse_them_from_the_cache(capsys, tmp_path):
    args = ["claims", "--id", "P1", "--id", "P2a", "--cache-dir", str(tmp_path)]
    assert cli.main(args) == 0
    first = capsys.readouterr()
    assert "[1/2] P1: confirmed" in first.err and "[2/2] P2a:" in first.err
    assert first.out.index("P1 ") < first.out.index("P2a ") and "from the cache" not in first.out
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert cli.main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["cached"] for r in rows] == [True, True] and rows[0]["status"] == "confirmed"
    assert cli.main(args + ["--json", "--quick"]) == 0       # other settings: checked again, cached apart
    assert [r["cached"] for r in json.loads(capsys.readouterr().out)] == [False, False]
    assert len(list(tmp_path.glob("*.json"))) == 4
