"""Checkpoints cannot lie (a run resumes only its own work) or attack (loading runs no code)."""

import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

import gradstats as gs
from gradstats import checkpoint as ckpt

KW = dict(method="mc", num_samples=20_000, seed=0, device="cpu", chunk_size=1024, progress=False)


def _interrupted(problem, estimator, path, monkeypatch, **options):
    """Run with a checkpoint, interrupted at the third piece; the checkpoint is left behind."""
    calls = {"n": 0}
    check = gs.montecarlo.check_gradient

    def counting(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return check(*args)

    with monkeypatch.context() as m:
        m.setattr(gs.montecarlo, "check_gradient", counting)
        with pytest.raises(KeyboardInterrupt):
            gs.moments(problem, estimator, checkpoint=path, **KW, **options)
    assert path.exists()


def test_a_different_lambda_loss_is_another_run(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    _interrupted(gs.problems.independent(lambda h: h.sum(-1), [0.0, 1.0]), "reinforce", path, monkeypatch)
    other = gs.problems.independent(lambda h: 100 * (h**2).sum(-1) - 7 * h.prod(-1), [0.0, 1.0])
    with pytest.raises(ValueError, match="belongs to another run"):
        gs.moments(other, "reinforce", checkpoint=path, **KW)
    assert path.exists()
    # the same code and values written again are the same run: it resumes and completes
    same = gs.problems.independent(lambda h: h.sum(-1), [0.0, 1.0])
    resumed = gs.moments(same, "reinforce", checkpoint=path, **KW)
    fresh = gs.moments(same, "reinforce", **KW)
    assert torch.equal(resumed.mean, fresh.mean) and not path.exists()


def test_closure_values_and_user_estimators_with_one_name_are_told_apart(tmp_path, monkeypatch):
    def loss_with(t):
        return lambda h: (h - t).square().sum(-1)

    path = tmp_path / "run.ckpt"
    _interrupted(gs.problems.independent(loss_with(0.25), [0.0, 1.0]), "st", path, monkeypatch)
    with pytest.raises(ValueError, match="belongs to another run"):
        gs.moments(gs.problems.independent(loss_with(0.75), [0.0, 1.0]), "st", checkpoint=path, **KW)

    def make(scale):
        def estimate(problem, u):   # two user estimators, one __name__
            return scale * (u[:, 0] < 0.5).to(torch.float64).reshape(-1, problem.num_parameters)
        return estimate

    problem = gs.problems.independent(lambda h: h.sum(-1), [0.0])
    path2 = tmp_path / "user.ckpt"
    _interrupted(problem, make(1.0), path2, monkeypatch)
    with pytest.raises(ValueError, match="belongs to another run"):
        gs.moments(problem, make(2.0), checkpoint=path2, **KW)


def test_an_unidentifiable_callable_refuses_a_checkpoint_rather_than_guess(tmp_path):
    lock = threading.Lock()

    def loss(h):
        with lock:
            return h.sum(-1)

    problem = gs.problems.independent(loss, [0.0, 1.0])
    with pytest.raises(ValueError, match="cannot be used: .*closure variable 'lock'.*identity cannot be established"):
        gs.moments(problem, "reinforce", checkpoint=tmp_path / "run.ckpt", **KW)
    assert gs.moments(problem, "reinforce", **KW).num_samples == KW["num_samples"]   # without a checkpoint it runs


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_never_runs_code_and_bad_files_are_kept_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problem = gs.problems.toy()
    path = tmp_path / "run.ckpt"
    torch.save({"format": ckpt.FORMAT, "signature": "x", "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="cannot be read as a gradstats checkpoint.*left in place"):
        gs.moments(problem, "st", checkpoint=path, **KW)
    assert not (tmp_path / "pwned").exists() and path.exists()

    torch.save({"weights": torch.ones(3)}, path)   # a foreign file
    with pytest.raises(ValueError, match=f"is not a {ckpt.FORMAT} file"):
        gs.moments(problem, "st", checkpoint=path, **KW)
    assert path.exists()


def test_a_truncated_or_damaged_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    problem = gs.problems.sbn([2, 2], seed=1)
    path = tmp_path / "run.ckpt"
    _interrupted(problem, "st", path, monkeypatch)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"checkpoint {str(path)!r} cannot be read"):
        gs.moments(problem, "st", checkpoint=path, **KW)
    assert path.read_bytes() == data[: len(data) // 2]

    _interrupted(problem, "st", tmp_path / "ok.ckpt", monkeypatch)
    record = torch.load(tmp_path / "ok.ckpt", weights_only=True)
    record["accumulators"][0]["summary"]["mean"] = torch.zeros(3, dtype=torch.float64)   # the wrong shape
    torch.save(record, path)
    with pytest.raises(ValueError, match=f"checkpoint {str(path)!r} fails its checksum"):
        gs.moments(problem, "st", checkpoint=path, **KW)
    record.pop("checksum")
    record["checksum"] = ckpt.content_checksum(record)   # an edit that also forges the checksum
    torch.save(record, path)
    with pytest.raises(ValueError, match="batch 0: mean must be a float64 tensor of shape"):
        gs.moments(problem, "st", checkpoint=path, **KW)


@pytest.mark.parametrize("seconds", [float("nan"), 0, -1.0, float("inf"), True, "30"])
def test_checkpoint_seconds_must_be_positive_and_finite(tmp_path, seconds):
    with pytest.raises(ValueError, match="checkpoint_seconds must be a finite number of seconds > 0"):
        gs.moments(gs.problems.toy(), "st", checkpoint=tmp_path / "c", checkpoint_seconds=seconds, **KW)


_SIGTERM_CHILD = """
import sys, gradstats as gs
from gradstats import montecarlo

loop = montecarlo._Run.loop


def loop_that_says_when_draws_are_in(self, advance, after_chunk):
    def advance_and_say(count):
        advance(count)
        print("drawn", flush=True)   # the parent waits for the first of these before it signals

    return loop(self, advance_and_say, after_chunk)


montecarlo._Run.loop = loop_that_says_when_draws_are_in
gs.moments(gs.problems.sbn([4, 4], seed=0), "st", method="mc", num_samples=2**28, chunk_size=4096, device="cpu",
           progress=False, checkpoint=sys.argv[1], checkpoint_seconds=3600)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_saves_like_sigint(tmp_path):
    path = tmp_path / "run.ckpt"
    child = subprocess.Popen([sys.executable, "-c", _SIGTERM_CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "drawn"   # some draws are in; the periodic save is an hour away
        child.send_signal(signal.SIGTERM)
        child.stdout.read()   # the rest of what it says, so that it never blocks on a full pipe
        assert child.wait() == 128 + signal.SIGTERM
    finally:
        child.kill()
    record = torch.load(path, weights_only=True)
    assert record["format"] == ckpt.FORMAT and 0 < record["position"] < 2**28


def test_fingerprints_follow_values_not_objects():
    assert ckpt.fingerprint(lambda h: h + 1) == ckpt.fingerprint(lambda h: h + 1)
    assert ckpt.fingerprint(lambda h: h + 1) != ckpt.fingerprint(lambda h: h + 2)
    assert ckpt.fingerprint(torch.tensor([1.0, 2.0])) != ckpt.fingerprint(torch.tensor([1.0, 2.5]))
    assert ckpt.fingerprint(gs.problems.sbn([3, 2], seed=0)) == ckpt.fingerprint(gs.problems.sbn([3, 2], seed=0))
    assert ckpt.fingerprint(gs.problems.sbn([3, 2], seed=0)) != ckpt.fingerprint(gs.problems.sbn([3, 2], seed=1))
    assert ckpt.fingerprint(gs.estimators.get("st")) != ckpt.fingerprint(gs.estimators.get("st_sigmoid"))
