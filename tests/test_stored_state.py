"""Accumulated state is checked, merged by name and never mixed; checkpoints never lose work.

Every check here is exact (no randomness is asserted on)."""

import math
import multiprocessing
import os

import pytest
import torch

import gradstats as gs
from gradstats import checkpoint as ckpt
from tests.test_montecarlo import _interrupt_at_piece

KW = dict(method="mc", num_samples=20_000, seed=0, device="cpu", chunk_size=1024, progress=False)


def _stats(order=("a", "b"), value=None, reference=True):
    """Draws of two parameters, a [2] always 5 and b [3] always -1, given in ``order``."""
    draws = {"a": torch.full((40, 2), 5.0, dtype=torch.float64), "b": torch.full((40, 3), -1.0, dtype=torch.float64)}
    if value is not None:
        draws["a"] = draws["a"] + value
    ref = {"a": torch.ones(2, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}
    stats = gs.GradientStats(reference={k: ref[k] for k in order} if reference else None)
    return stats.update({k: draws[k] for k in order})


def test_merging_statistics_of_the_same_parameters_in_another_order_matches_them_by_name():
    ab, ba = _stats(("a", "b")), _stats(("b", "a"))
    for merged in (ab.merge(ba), ba.merge(ab)):
        assert torch.equal(merged.mean["a"], torch.full((2,), 5.0, dtype=torch.float64))
        assert torch.equal(merged.mean["b"], torch.full((3,), -1.0, dtype=torch.float64))
        assert merged.count == 80
    frame_ab, frame_merged = ab.to_frame(), ab.merge(ba).to_frame()
    assert frame_ab.value.tolist() == pytest.approx(frame_merged.value.tolist(), nan_ok=True)


def test_loading_a_state_of_the_same_parameters_in_another_order_matches_them_by_name():
    restored = _stats(("a", "b"))
    restored.load_state_dict(_stats(("b", "a")).state_dict())
    assert torch.equal(restored.mean["a"], torch.full((2,), 5.0, dtype=torch.float64))
    assert restored.to_frame().value.tolist() == pytest.approx(_stats().to_frame().value.tolist(), nan_ok=True)


def test_other_parameters_are_refused():
    other = gs.GradientStats().update({"a": torch.zeros(4, 2, dtype=torch.float64),
                                       "c": torch.zeros(4, 3, dtype=torch.float64)})
    plain = _stats(reference=False)
    with pytest.raises(ValueError, match="different parameters"):
        plain.merge(other)
    with pytest.raises(ValueError, match="different parameters"):
        plain.load_state_dict(other.state_dict())


def test_parameter_names_must_be_strings():
    with pytest.raises(ValueError, match=r"parameter names must be strings .* 0 \(int\)"):
        gs.GradientStats().update({0: torch.zeros(4, 2)})
    with pytest.raises(ValueError, match="parameter names must be strings"):
        gs.GradientStats(reference={1: torch.zeros(2)})


def test_a_complex_reference_is_refused_not_cut_to_its_real_part():
    with pytest.raises(ValueError, match="reference must be real numbers, got dtype torch.complex128"):
        gs.GradientStats(reference=torch.zeros(3, dtype=torch.complex128))
    with pytest.raises(ValueError, match="reference_stderr must be real numbers"):
        gs.GradientStats(reference=torch.zeros(3), reference_stderr=torch.ones(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="reference must be real"):
        gs.metrics.compute_metrics(gs.moments(gs.problems.toy(), "st"), gs.problems.toy(),
                                   torch.zeros(1, dtype=torch.complex128), "g")


def _damaged(edit):
    """A state_dict with ``edit`` applied and its checksum made anew (a forger's edit, not a flipped bit)."""
    state = _stats().state_dict()
    edit(state)
    state.pop("checksum")
    state["checksum"] = ckpt.content_checksum(state)
    return state


@pytest.mark.parametrize("edit, match", [
    (lambda s: s["batches"][0].update(count=-3, weight=-3.0), "count -3 < 0"),
    (lambda s: s["batches"][0].update(count=2.5), "count must be an integer"),
    (lambda s: s["batches"][0]["m2"].fill_(-1.0), "m2 has negative entries"),
    (lambda s: s["batches"][0]["mean"].fill_(math.nan), "mean is not finite"),
    (lambda s: s["batches"][0].update(weight=math.nan), "weight nan is not a finite number"),
    (lambda s: s["batches"][0].update(weight=7.0), "weight 7.0 differs from the count"),
    (lambda s: s["batches"][0].update(count=10_000, weight=10_000.0), r"10000 draws, outside 1\.\.\d+"),
    (lambda s: s["batches"][0]["sign_agree"]["reference"].fill_(1e6), "sign_agree.* outside what"),
    (lambda s: s.update(batch_size=0), "batch_size must be an integer >= 1"),
    (lambda s: s.update(version=1), "version 1; this gradstats reads versions 2 and 3"),
    (lambda s: s.update(ms=[5]), r"ms \(5,\); this one has \(\)"),
])
def test_a_stored_state_whose_invariants_fail_is_refused_and_nothing_changes(edit, match):
    stats = _stats()
    before = stats.to_frame()
    with pytest.raises(ValueError, match=match):
        stats.load_state_dict(_damaged(edit))
    assert stats.to_frame().equals(before)


def test_a_flipped_bit_is_refused_by_the_checksum():
    state = _stats().state_dict()
    mean = state["batches"][1]["mean"]
    bits = mean.view(torch.int64)
    bits[0] ^= 1 << 20                        # one bit of one float
    with pytest.raises(ValueError, match="fails its checksum: it was altered after it was stored"):
        _stats().load_state_dict(state)


# ---- checkpoints ------------------------------------------------------------------------------

def _interrupted_run(path, problem, monkeypatch) -> None:
    """A run with a checkpoint at ``path``, interrupted at its third piece: the checkpoint is left behind."""
    with monkeypatch.context() as m:
        _interrupt_at_piece(m, 3)
        with pytest.raises(KeyboardInterrupt):
            gs.moments(problem, "st", checkpoint=path, **KW)
    assert path.exists()


def test_a_checkpoint_of_another_run_at_the_same_path_is_never_deleted(tmp_path, monkeypatch):
    path = tmp_path / "shared.ckpt"
    problem = gs.problems.sbn([2, 2], seed=1)
    _interrupted_run(path, problem, monkeypatch)
    saved = path.read_bytes()
    # a run of another seed cannot take the path over, and leaves it as it was
    with pytest.raises(ValueError, match="belongs to another run"):
        gs.moments(problem, "st", checkpoint=path, **{**KW, "seed": 1})
    assert path.read_bytes() == saved
    # another run's file written while this run computes is not this run's to delete
    real_loop = gs.montecarlo._Run.loop

    def loop_then_someone_else_writes(self, advance, after_chunk):
        real_loop(self, advance, after_chunk)
        path.write_bytes(b"another run's checkpoint")

    path.unlink()
    monkeypatch.setattr(gs.montecarlo._Run, "loop", loop_then_someone_else_writes)
    gs.moments(problem, "st", checkpoint=path, checkpoint_seconds=1e-9, **KW)
    assert path.read_bytes() == b"another run's checkpoint"


def test_a_run_resumed_from_its_checkpoint_removes_it_at_the_end(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    problem = gs.problems.sbn([2, 2], seed=1)
    _interrupted_run(path, problem, monkeypatch)
    resumed = gs.moments(problem, "st", checkpoint=path, **KW)
    assert not path.exists() and not path.with_name("run.ckpt.lock").exists()
    assert torch.equal(resumed.mean, gs.moments(problem, "st", **KW).mean)


def test_a_path_that_cannot_be_written_is_refused_before_any_draw(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(gs.montecarlo._Run, "loop", lambda *a: called.append(a))
    with pytest.raises(ValueError, match="its directory .*missing.* does not exist"):
        gs.moments(gs.problems.toy(), "st", checkpoint=tmp_path / "missing" / "run.ckpt", **KW)
    with pytest.raises(ValueError, match="is a directory"):
        gs.moments(gs.problems.toy(), "st", checkpoint=tmp_path, **KW)
    if os.geteuid() != 0:   # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot be written"):
            gs.moments(gs.problems.toy(), "st", checkpoint=locked / "run.ckpt", **KW)
    assert called == []


def _hold(path, ready, release):
    """Another process that holds a checkpoint path (its lock) until told to let go."""
    lock = ckpt.claim(path)
    ready.set()
    release.wait()
    lock.unlink()


def test_two_runs_at_once_cannot_share_a_path_and_a_dead_runs_lock_is_taken_over(tmp_path):
    path = tmp_path / "run.ckpt"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(600), "the holding process did not start"
        with pytest.raises(ckpt.InUseError, match="is in use by another run"):
            gs.moments(gs.problems.toy(), "st", checkpoint=path, **KW)
    finally:
        release.set()
        holder.join()
    # a lock whose process is gone (killed before it could remove it) does not block the path
    path.with_name("run.ckpt.lock").write_text(f"{holder.pid} {__import__('socket').gethostname()}\n")
    assert gs.moments(gs.problems.toy(), "st", checkpoint=path, **KW).num_samples == KW["num_samples"]


def test_a_save_that_fails_mid_run_keeps_the_result(tmp_path, monkeypatch):
    def failing_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save", failing_save)
    problem = gs.problems.sbn([2, 2], seed=1)
    with pytest.warns(RuntimeWarning, match="could not save checkpoint .*No space left on device.*goes on"):
        result = gs.moments(problem, "st", checkpoint=tmp_path / "run.ckpt", checkpoint_seconds=1e-9, **KW)
    assert torch.equal(result.mean, gs.moments(problem, "st", **KW).mean)


def _grouped(order=("a", "b")):
    """Draws of two parameters with the cosine of the mean of 4 and 6 draws accumulated (45 draws: partial groups
    pending), given in ``order``."""
    gen = torch.Generator().manual_seed(0)
    draws = {"a": torch.randn(45, 2, generator=gen, dtype=torch.float64) + 1,
             "b": torch.randn(45, 3, generator=gen, dtype=torch.float64)}
    ref = {"a": torch.ones(2, dtype=torch.float64), "b": torch.full((3,), 0.5, dtype=torch.float64)}
    stats = gs.GradientStats(reference={k: ref[k] for k in order}, ms=(4, 6), loss_evals_per_draw=2)
    return stats.update({k: draws[k][:20] for k in order}).update({k: draws[k][20:] for k in order})


def test_group_cosines_survive_a_state_dict_in_another_parameter_order():
    stats = _grouped()
    other = gs.GradientStats(reference={"b": torch.full((3,), 0.5, dtype=torch.float64),
                                        "a": torch.ones(2, dtype=torch.float64)}, ms=(4, 6), loss_evals_per_draw=2)
    other.load_state_dict(stats.state_dict())
    mine, theirs = stats.to_frame(), other.to_frame()
    key = ["metric", "group", "M"]
    pd_mine = mine.sort_values(key).reset_index(drop=True)
    pd_theirs = theirs.sort_values(key).reset_index(drop=True)
    assert pd_mine[key + ["loss_evals"]].equals(pd_theirs[key + ["loss_evals"]])
    # sums over all coordinates run in another order: equal to rounding
    assert pd_mine.value.to_numpy() == pytest.approx(pd_theirs.value.to_numpy(), rel=1e-12, abs=1e-15)
    assert pd_mine.stderr.to_numpy() == pytest.approx(pd_theirs.stderr.to_numpy(), rel=1e-9, abs=1e-15)
    # the pending partial groups came along: one more draw completes a group of 6 in both
    extra = {"a": torch.ones(3, 2, dtype=torch.float64), "b": torch.ones(3, 3, dtype=torch.float64)}
    stats.update(extra)
    other.update(extra)
    assert stats._groups[6].groups == other._groups[6].groups == 8


@pytest.mark.parametrize("edit, match", [
    (lambda s: s["groups"][0].update(pending_count=4), "bad counts"),
    (lambda s: s["groups"][0]["total"].fill_(1e6), "outside what"),
    (lambda s: s["groups"][0]["total_sq"].fill_(-1.0), "outside what"),
    (lambda s: s["groups"][0]["pending"].pop(), "pending group's sums do not match"),
    (lambda s: s["groups"].pop(), r"group cosines are of M = \[4\], expected \[4, 6\]"),
])
def test_damaged_group_cosines_are_refused(edit, match):
    stats = _grouped()
    state = stats.state_dict()
    edit(state)
    state.pop("checksum")
    state["checksum"] = ckpt.content_checksum(state)
    fresh = gs.GradientStats(reference=stats._given_reference, ms=(4, 6), loss_evals_per_draw=2)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(state)
    assert fresh.count == 0


def test_a_version_2_state_without_groups_is_still_read():
    stats = _stats()
    state = stats.state_dict()
    for key in ("checksum", "ms", "loss_evals_per_draw", "budgets", "groups"):
        state.pop(key)
    state["version"] = 2
    state["checksum"] = ckpt.content_checksum(state)
    fresh = gs.GradientStats(reference=stats._given_reference)
    fresh.load_state_dict(state)
    assert fresh.to_frame().equals(stats.to_frame())
