"""gs.sweep: the same frame in-process and on a process pool; problems travel; failures are reported."""

import dataclasses
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import pytest
import torch

import gradstats as gs

PROBLEMS = [gs.problems.toy(0.45, 0.3), gs.problems.sbn([3, 2], seed=1)]
KWARGS = {"num_samples": 2000, "ms": (1, 10), "device": "cpu"}


def _sweep(executor=None, seed=0):
    return gs.sweep(PROBLEMS, ["st", "gumbel", "reinforce_loo"], executor=executor, seed=seed,
                    options={"reinforce_loo": [{"k": 2}, {"k": 3}]}, progress=False, **KWARGS)


def test_one_task_per_problem_estimator_and_option_set_with_spawned_seeds():
    frame = _sweep()
    tasks = frame.drop_duplicates("task")
    assert len(tasks) == 2 * 4 and list(tasks.task) == list(range(8))
    assert set(tasks.options) == {"{}", '{"k": 2}', '{"k": 3}'} and tasks.task_seed.nunique() == 8
    assert list(frame.columns[:5]) == ["task", "problem", "problem_index", "options", "task_seed"]
    one = frame[frame.task == 1]      # toy, gumbel (Monte Carlo): the task's seed is what evaluate used
    alone = gs.evaluate(PROBLEMS[0], ["gumbel"], seed=int(one.task_seed.iloc[0]), **KWARGS)
    assert one.value.to_numpy().tobytes() == alone.value.to_numpy().tobytes()
    assert one.stderr.to_numpy().tobytes() == alone.stderr.to_numpy().tobytes()
    assert not _sweep(seed=1).task_seed.equals(frame.task_seed)


def test_a_process_pool_gives_the_same_frame_bit_for_bit():
    here = _sweep()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = _sweep(executor=pool)
    columns = [c for c in here.columns if c != "seconds_per_draw"]
    pd.testing.assert_frame_equal(here[columns], there[columns], check_exact=True)


def test_built_in_problems_travel_and_a_lambda_loss_says_what_to_do():
    for problem in [*PROBLEMS, gs.problems.sbn([3, 2], "cross_entropy", seed=2), gs.problems.teacher_student([4, 3])[0],
                    gs.problems.independent(gs.losses.multilinear({(0,): 1.0, (0, 1): -2.0}, 2), [0.2, -0.4])]:
        copy = pickle.loads(pickle.dumps(problem))
        assert torch.equal(gs.exact_gradient(copy), gs.exact_gradient(problem)), problem.description
    with pytest.raises(TypeError, match="lambda or a local function.*gradstats.losses"):
        pickle.dumps(gs.problems.independent(lambda h: h.sum(-1), [0.1]))


def test_a_failed_task_is_reported_with_its_parameters_and_the_others_kept():
    with pytest.warns(UserWarning, match="1 of 2 sweep task"):
        frame = gs.sweep(PROBLEMS[0], ["st", "reinforce_loo"], options={"reinforce_loo": {"k": 1}}, progress=False,
                         **KWARGS)
    assert set(frame.estimator) == {"st"}
    (failure,) = frame.attrs["failures"]
    assert failure["estimator"] == "reinforce_loo" and failure["options"] == {"k": 1} and "k" in failure["error"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="problems"):
        gs.sweep([], ["st"])
    with pytest.raises(ValueError, match="estimators"):
        gs.sweep(PROBLEMS, [gs.estimators.get("st")])
    with pytest.raises(ValueError, match="not swept"):
        gs.sweep(PROBLEMS, ["st"], options={"gumbel": {}})
    with pytest.raises(ValueError, match="executor"):
        gs.sweep(PROBLEMS, ["st"], executor="local")


def test_a_dask_local_cluster_gives_the_same_frame_bit_for_bit():
    distributed = pytest.importorskip("distributed", reason="the distributed extra is not installed")
    here = _sweep()
    from gradstats.sweep import local_cluster

    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        there = _sweep(executor=client.get_executor())
    columns = [c for c in here.columns if c != "seconds_per_draw"]
    pd.testing.assert_frame_equal(here[columns], there[columns], check_exact=True)


def test_the_grid_is_checked_before_any_task_runs(monkeypatch):
    import importlib

    ran = []
    monkeypatch.setattr(importlib.import_module("gradstats.sweep").Task, "run",
                        lambda self, kwargs: ran.append(self) or pd.DataFrame())
    for estimators, options, kwargs, match in [
        (["st", "nonsense"], None, {}, "unknown estimator 'nonsense'; registered: "),
        (["st", "gumbel", "st"], None, {}, r"estimators names \['st'\] more than once"),
        (["st", "gumbel"], {"gumbel": {"temprature": 0.5}}, {}, r"task 1 .*gumbel.*unknown option\(s\) \['temprature'\]"),
        (["st"], None, {"num_sample": 10}, r"unknown argument\(s\) of gs.evaluate: \['num_sample'\]"),
        (["st"], None, {"reference": "exact"}, "reference must be one of"),
        (["st"], None, {"method": "fast"}, "method must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            gs.sweep(PROBLEMS, estimators, options=options, progress=False, **kwargs)
    one_layer = dataclasses.replace(gs.estimators.get("st"), name="st_one_layer", max_layers=1)
    monkeypatch.setitem(gs.estimators.base._REGISTRY, "st_one_layer", one_layer)
    with pytest.raises(ValueError, match=r"task 1 \(sbn\(3-2-2, seed=0\), st_one_layer.*at most 1 stochastic layer"):
        gs.sweep([PROBLEMS[0], gs.problems.sbn([3, 2, 2])], ["st_one_layer"], progress=False)
    assert ran == []


def test_a_forking_process_pool_is_refused_with_what_to_do_instead():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        with pytest.raises(ValueError, match=r"forks .*get_context\('spawn'\)"):
            gs.sweep(PROBLEMS, ["st"], executor=pool, progress=False, **KWARGS)


def test_a_worker_that_dies_loses_only_its_own_task(monkeypatch):
    import os

    from tests.data.dying import loss_that_kills_workers

    monkeypatch.setenv("GRADSTATS_TEST_PARENT", str(os.getpid()))
    deadly = gs.problems.independent(loss_that_kills_workers, [0.2, -0.4])
    problems = [PROBLEMS[0], deadly, PROBLEMS[1]]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.warns(UserWarning, match="1 of 3 sweep task"):
            frame = gs.sweep(problems, ["st"], executor=pool, progress=False, **KWARGS)
    (failure,) = frame.attrs["failures"]
    assert failure["task"] == 1 and "died while running this task" in failure["error"]
    assert sorted(set(frame.task)) == [0, 2]
