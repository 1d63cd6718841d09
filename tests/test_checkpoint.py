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


class _Binary(torch.nn.Module):
    """Straight-through Bernoulli units, sampled with torch's own generator."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = torch.nn.Linear(6, 4), torch.nn.Linear(4, 6)

    def forward(self, x):
        p = torch.sigmoid(self.enc(x))
        return self.dec(p + (torch.bernoulli(p) - p).detach())


def _reconstruction(out, x):
    return ((out - x) ** 2).mean()


def _interrupt_update(monkeypatch, at: int):
    """GradientStats.update raises KeyboardInterrupt at its ``at``-th call (the chunks before it are in)."""
    calls, update = {"n": 0}, gs.GradientStats.update

    def interrupted(self, grads):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return update(self, grads)

    monkeypatch.setattr(gs.GradientStats, "update", interrupted)


def test_own_model_statistics_resume_from_their_checkpoint(tmp_path, monkeypatch):
    """An interrupted module_gradient_stats saves whole chunks; the rerun computes only the rest and gives the
    uninterrupted run's statistics (to float64 rounding), then removes its file; another module is another run."""
    torch.manual_seed(0)
    model, x = _Binary().double(), torch.rand(5, 6, dtype=torch.float64)
    reference = {k: 0.1 * v.detach() + 0.01 for k, v in model.named_parameters()}     # any reference will do
    run = dict(seed=3, chunk_size=32, ms=(1, 4), reference=reference)
    whole = gs.module_gradient_stats(model, _reconstruction, x, 200, **run).to_frame()
    path = tmp_path / "own.ckpt"
    with monkeypatch.context() as m:
        _interrupt_update(m, at=4)
        with pytest.raises(KeyboardInterrupt):
            gs.module_gradient_stats(model, _reconstruction, x, 200, checkpoint=path, checkpoint_seconds=3600, **run)
    assert torch.load(path, weights_only=True)["position"] == 96       # three chunks of 32 were in
    other = _Binary().double()
    with pytest.raises(ValueError, match="belongs to another run"):
        gs.module_gradient_stats(other, _reconstruction, x, 200, checkpoint=path, **run)
    computed = {"n": 0}
    update = gs.GradientStats.update

    def counting(self, grads):
        computed["n"] += 1
        return update(self, grads)

    with monkeypatch.context() as m:
        m.setattr(gs.GradientStats, "update", counting)
        resumed = gs.module_gradient_stats(model, _reconstruction, x, 200, checkpoint=path, **run).to_frame()
    assert computed["n"] == 4                                            # draws 96 to 200: four chunks
    assert not path.exists() and not list(tmp_path.iterdir())           # the file and its lock are gone
    assert list(resumed.metric) == list(whole.metric)
    assert resumed.value.to_numpy() == pytest.approx(whole.value.to_numpy(), rel=1e-12, abs=1e-15, nan_ok=True)


def test_a_stream_of_explicit_uniforms_resumes_mid_way_on_the_same_draws(tmp_path, monkeypatch):
    params = {"w": torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)}

    def loss(p, u):
        return ((u < torch.sigmoid(p["w"])).double() + torch.sigmoid(p["w"]) - torch.sigmoid(p["w"]).detach()).sum()

    run = dict(noise_shape=(3,), chunk_size=16, seed=5)
    tail = list(gs.per_draw_gradients(loss, params, 70, start=32, **run))
    full = list(gs.per_draw_gradients(loss, params, 70, **run))
    assert len(tail) == 3 and all(torch.equal(a["w"], b["w"]) for a, b in zip(tail, full[2:]))
    with pytest.raises(ValueError, match=r"start must be a multiple of chunk_size \(16\) in \[0, num_draws = 70\]"):
        next(gs.per_draw_gradients(loss, params, 70, start=20, **run))
    whole = gs.gradient_stats(loss, params, 70, **run).to_frame()
    path = tmp_path / "stream.ckpt"
    with monkeypatch.context() as m:
        _interrupt_update(m, at=3)
        with pytest.raises(KeyboardInterrupt):
            gs.gradient_stats(loss, params, 70, checkpoint=path, **run)
    resumed = gs.gradient_stats(loss, params, 70, checkpoint=path, **run).to_frame()
    assert resumed.value.to_numpy() == pytest.approx(whole.value.to_numpy(), rel=1e-12, abs=1e-15, nan_ok=True)
    assert not path.exists()


def test_a_damaged_own_model_checkpoint_is_named_and_kept(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model, x = _Binary().double(), torch.rand(3, 6, dtype=torch.float64)
    path = tmp_path / "own.ckpt"
    with monkeypatch.context() as m:
        _interrupt_update(m, at=2)
        with pytest.raises(KeyboardInterrupt):
            gs.module_gradient_stats(model, _reconstruction, x, 64, chunk_size=16, checkpoint=path)
    path.write_bytes(path.read_bytes()[:-40])                               # truncated
    with pytest.raises(ValueError, match="own.ckpt.* cannot be read as a gradstats checkpoint"):
        gs.module_gradient_stats(model, _reconstruction, x, 64, chunk_size=16, checkpoint=path)
    assert path.exists() and not (tmp_path / "own.ckpt.lock").exists()    # kept, and the path released
