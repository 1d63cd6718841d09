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


@pytest.mark.parametrize("gate", conditional.ALL_GATES)
def test_every_gate_trains_reproducibly_and_reaches_the_target_sparsity(data, gate):
    settings = conditional.Settings(gate, epochs=2, eval_every=1)
    first = conditional.train_gated(data, settings, seed=3, device="cpu")
    second = conditional.train_gated(data, settings, seed=3, device="cpu")
    assert first.test_error == second.test_error and first.valid_error == second.valid_error
    assert 0 <= first.test_error <= 1 and 0 <= first.valid_error <= 1
    if gate == "all_on":
        assert first.sparsity == 1.0 and first.on_history == (1.0, 1.0)
    elif gate not in conditional.RECTIFIERS:               # rectifiers cannot be on below 0: at most the target
        assert first.sparsity == pytest.approx(0.1, abs=0.03)
    else:
        assert first.sparsity <= 0.13


def test_sts_as_the_code_samples_it_is_bernoulli_p_times_sqrt_p_with_the_sts_gradient():
    a = torch.tensor([-2.0, 0.0, 3.0, -200.0], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([0.05, 0.6, 0.9, 0.0], dtype=torch.float64)
    p = torch.sigmoid(a.detach())
    h = conditional.gate_values(conditional.Settings("sts_code"), a, u)
    on = (u < p).to(a.dtype)                                  # b ~ Bernoulli(p): on, off, on, on (p = 1e-87)
    assert on.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert torch.allclose(h.detach(), on * p.sqrt())
    h.sum().backward()                                        # d(b sqrt p)/da = b sqrt(p) (1 - p) / 2, finite at p = 0
    assert torch.allclose(a.grad, on * p.sqrt() * (1 - p) / 2) and torch.isfinite(a.grad).all()
    sts = conditional.gate_values(conditional.Settings("sts"), a.detach(), u)   # the paper's: b ~ Bernoulli(sqrt p)
    assert torch.equal(sts != 0, u < p.sqrt())


def test_the_controls_gates_are_fixed_and_the_same_at_test_time(data):
    mask = conditional.fixed_gates(conditional.Settings("random_fixed"), 160, seed=4)
    assert mask.sum() == 16 and torch.equal(mask, conditional.fixed_gates(conditional.Settings("random_fixed"), 160, 4))
    assert not torch.equal(mask, conditional.fixed_gates(conditional.Settings("random_fixed"), 160, 5))
    assert conditional.fixed_gates(conditional.Settings("all_on"), 160, 4).sum() == 160
    run = conditional.train_gated(data, conditional.Settings("random_fixed", epochs=1), seed=4, device="cpu")
    assert run.sparsity == pytest.approx(0.1) and run.on_history == (pytest.approx(0.1),)
    assert 0 < run.train_criterion < math.log(10) + 1


def test_straight_through_gates_learn_the_digits(data):
    result = conditional.train_gated(data, conditional.Settings("st", learning_rate=0.3, epochs=10), seed=0, device="cpu")
    assert result.test_error < 0.2                       # chance is 0.9; 40 epochs reach about 0.03


def test_checkpoints_keep_the_parameters_and_change_nothing_else(data):
    settings = conditional.Settings("st", epochs=2, eval_every=1)
    plain = conditional.train_gated(data, settings, seed=4, device="cpu")
    kept = conditional.train_gated(data, settings, seed=4, device="cpu", checkpoints=(0, 2))
    assert kept.test_error == plain.test_error and plain.snapshots == {} and sorted(kept.snapshots) == [0, 2]
    start = conditional.initial_parameters(conditional.architecture_for(64, 10), 4)
    assert all(torch.equal(kept.snapshots[0][k], v) for k, v in start.items())
    assert not torch.equal(kept.snapshots[2]["Wg2"], start["Wg2"])
    with pytest.raises(ValueError, match="checkpoints"):
        conditional.train_gated(data, settings, seed=4, device="cpu", checkpoints=(3,))


def _tiny_gated(seed=0):
    """3 inputs, 2 tanh units, 3 gates, 2 classes, 2 examples: 2^3 gate states per example, enumerable."""
    g = torch.Generator().manual_seed(seed)
    params = conditional.initial_parameters(conditional.Architecture(3, 2, 3, 2), seed, dtype=torch.float64)
    params = {k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
    return params, torch.randn(2, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1])


def _exact_gater_gradient(params, x, y):
    """Enumeration: the gradient of mean_e sum_b P(b | x_e) CE(b * H_e, y_e) over the gater's parameters."""
    gater = {k: params[k].clone().requires_grad_() for k in conditional.GATER}
    p = torch.sigmoid(torch.tanh(x @ gater["Wg1"] + gater["bg1"]) @ gater["Wg2"] + gater["bg2"])     # [n, G]
    states = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * p.shape[1])       # [S, G]
    prob = (states[:, None] * p + (1 - states[:, None]) * (1 - p)).prod(-1)                            # [S, n]
    expert = x @ params["We"] + params["be"]
    logits = (states[:, None] * expert) @ params["Wo"] + params["bo"]                                  # [S, n, C]
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), y.repeat(len(states)), reduction="none")
    (prob * losses.reshape(prob.shape)).sum(0).mean().backward()
    return {k: v.grad for k, v in gater.items()}


@pytest.mark.parametrize("gate", ["disarm", "reinforce_loo", "reinforce"])
def test_unbiased_gater_gradients_match_enumeration(gate):
    """Every coordinate within 4.5 standard errors of the exact gradient (17 coordinates; a false failure
    has probability below 1.2e-4 per estimator; fixed seeds)."""
    params, x, y = _tiny_gated()
    exact = _exact_gater_gradient(params, x, y)
    baseline = conditional.reinforce_baseline(params, x, y, draws=4096, seed=9) if gate == "reinforce" else 0.0
    loss, shape = conditional.gater_gradient(gate, params, x, y, baseline=baseline)
    stats = gs.gradient_stats(loss, {k: params[k] for k in conditional.GATER}, 100_000, noise_shape=shape,
                              chunk_size=10_000, seed=2)
    for k in conditional.GATER:
        z = (stats.mean[k] - exact[k]) / stats.mean_stderr[k]
        assert float(z.abs().max()) < 4.5, (k, z)
    if gate == "reinforce":        # the baseline is eq. 10's: it lowers the variance below a zero baseline's
        plain = gs.gradient_stats(conditional.gater_gradient(gate, params, x, y)[0],
                                  {k: params[k] for k in conditional.GATER}, 100_000, noise_shape=shape,
                                  chunk_size=10_000, seed=2)
        assert float(stats.var["Wg2"].sum()) < float(plain.var["Wg2"].sum())


def test_straight_through_gater_gradient_is_biased_and_only_binary_gates_apply():
    params, x, y = _tiny_gated()
    exact = _exact_gater_gradient(params, x, y)
    loss, shape = conditional.gater_gradient("st", params, x, y)
    stats = gs.gradient_stats(loss, {k: params[k] for k in conditional.GATER}, 100_000, noise_shape=shape,
                              chunk_size=10_000, seed=2)
    z = (stats.mean["Wg2"] - exact["Wg2"]) / stats.mean_stderr["Wg2"]
    assert float(z.abs().max()) > 10          # ST's missing sigmoid' shows on the gate layer
    for gate in ("sts", "noisy_rectifier", "rectifier", "nonsense"):
        with pytest.raises(ValueError, match="gate must be one of"):
            conditional.gater_gradient(gate, params, x, y)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="gate must be one of"):
        conditional.Settings("nope")
    with pytest.raises(ValueError, match="learning_rate"):
        conditional.Settings("st", learning_rate=-1.0)
    with pytest.raises(ValueError, match="sparsity"):
        conditional.Settings("st", sparsity=1.5)
    with pytest.raises(ValueError, match="unknown estimator"):
        conditional.run_study(gs.datasets.digits(), ["st", "nope"], seeds=1)
    for bad in (-1, 41, 2.0, True):
        with pytest.raises(ValueError, match=r"anneal_epochs must be an integer in 0..epochs \(40\)"):
            conditional.Settings("st", anneal_epochs=bad)


def test_annealing_lowers_the_rates_linearly_to_zero_over_the_last_epochs():
    """3 epochs of 4 steps, the last 2 annealed: full rate for the first epoch and the first annealed step, then
    (T - t) / A down to 1/A at the last step (T = 12 steps, A = 8); no annealing: the full rate throughout."""
    settings = conditional.Settings("st", epochs=3, anneal_epochs=2)
    factors = [conditional.anneal_factor(settings, t, 4) for t in range(12)]
    assert factors == [1.0] * 5 + [7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    assert {conditional.anneal_factor(conditional.Settings("st", epochs=3), t, 4) for t in range(12)} == {1.0}


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


# ---- many runs as one computation -------------------------------------------------------------------------

@pytest.mark.parametrize("gate", ["st", "reinforce", "reinforce_loo", "rectifier", "noisy_rectifier"])
def test_a_run_in_a_stack_is_the_run_alone(data, gate):
    """Batched over runs (small networks), each run keeps its initialisation, minibatch order, noise, baseline or
    L1 weight and rates: its parameters after 3 epochs equal the run alone's to 1e-5 relative (float32 rounding of
    batched products; observed: equal to the bit on this CPU), and so do its validation errors."""
    from dataclasses import replace

    base = conditional.Settings(gate, epochs=3, eval_every=1, learning_rate=0.3)
    settings = [base, replace(base, learning_rate=0.1), replace(base, learning_rate=0.3, gater_rate_scale=0.01)]
    seeds = [5, 6, 5]
    stack = conditional.train_gated_many(data, settings, seeds, device="cpu", checkpoints=(3,))
    for run, s, seed in zip(stack, settings, seeds):
        alone = conditional.train_gated(data, s, seed, device="cpu", checkpoints=(3,))
        for k, v in alone.snapshots[3].items():
            assert torch.allclose(run.snapshots[3][k], v, rtol=1e-5, atol=1e-6), k
        assert [e for _, e in run.history] == pytest.approx([e for _, e in alone.history], abs=1 / 359 + 1e-12)
        assert run.settings == s and run.seed == seed


def test_annealed_runs_follow_the_constant_run_until_the_annealing_and_stacks_anneal_as_runs_alone(data):
    """Annealing changes nothing before its first epoch: the validation errors of a 4-epoch run whose last 2 are
    annealed equal the constant run's for epochs 1-2 (the same trajectory, bit for bit), and its parameters move
    less in its last epoch than the constant run's do; a stack anneals each run as it would alone (the batched
    update scales the rates by the same factor)."""
    from dataclasses import replace

    constant = conditional.Settings("st", epochs=4, eval_every=1, learning_rate=0.3)
    annealed = replace(constant, anneal_epochs=2)
    a = conditional.train_gated(data, constant, 3, device="cpu", checkpoints=(3, 4))
    b = conditional.train_gated(data, annealed, 3, device="cpu", checkpoints=(3, 4))
    assert a.history[:2] == b.history[:2]

    def moved(run):
        return sum(float((run.snapshots[4][k] - run.snapshots[3][k]).norm() ** 2) for k in run.snapshots[3]) ** 0.5

    assert moved(b) < 0.5 * moved(a)
    stack = conditional.train_gated_many(data, [annealed, replace(annealed, learning_rate=0.1)], [3, 4], device="cpu",
                                         checkpoints=(4,))
    alone = conditional.train_gated(data, replace(annealed, learning_rate=0.1), 4, device="cpu", checkpoints=(4,))
    for k, v in b.snapshots[4].items():
        assert torch.allclose(stack[0].snapshots[4][k], v, rtol=1e-5, atol=1e-6), k
    for k, v in alone.snapshots[4].items():
        assert torch.allclose(stack[1].snapshots[4][k], v, rtol=1e-5, atol=1e-6), k


def test_large_networks_go_one_run_after_another_bit_for_bit(data, monkeypatch):
    monkeypatch.setattr(conditional, "BATCH_BYTES", 0)          # as if the digits network were MNIST's
    settings = conditional.Settings("st", epochs=2, eval_every=1)
    stack = conditional.train_gated_many(data, settings, [1, 2], device="cpu")
    for run, seed in zip(stack, [1, 2]):
        alone = conditional.train_gated(data, settings, seed, device="cpu")
        assert run.valid_error == alone.valid_error and run.test_error == alone.test_error and run.history == alone.history


@pytest.mark.parametrize("gate", ["st", "sts", "sts_code", "reinmax", "noisy_rectifier", "rectifier", "sigmoid_noise",
                                  "sigmoid", "reinforce", "reinforce_loo", "disarm", "gumbel", "random_fixed"])
def test_a_run_alone_steps_by_autograd_with_torch_funcs_numbers_bit_for_bit(data, gate):
    """A run alone takes its step's gradient by plain autograd, a stack by ``torch.func.grad``: on the same
    parameters, minibatch, noise, baseline and L1 weight, every gradient and the step's on-fraction and baseline
    are equal to the bit (a control's unused gater: zeros in both)."""
    from torch.func import grad

    settings = conditional.Settings(gate)
    arch = conditional.architecture_for(data.num_inputs, data.num_classes)
    params = conditional.initial_parameters(arch, 4)
    x, y = data.train[0][:32].float(), data.train[1][:32]
    u = torch.rand(conditional._noise_shape(settings, 32, arch.gates), generator=torch.Generator().manual_seed(1))
    baseline = (torch.full((arch.gates,), 0.3, dtype=torch.float64), torch.full((arch.gates,), 0.2, dtype=torch.float64))
    l1, mask = torch.tensor(1e-3, dtype=torch.float64), conditional.fixed_gates(settings, arch.gates, 4)
    got, (on, base) = conditional._step_gradient(settings, params, x, y, u, baseline, l1, mask)
    want, (on_f, base_f) = grad(lambda q: conditional._step_loss(settings, q, x, y, u, baseline, l1, mask),
                                has_aux=True)(params)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert torch.equal(on, on_f) and all(torch.equal(a, b) for a, b in zip(base, base_f))
    if gate == "random_fixed":
        assert not any(got[k].any() for k in ("Wg1", "bg1", "Wg2", "bg2"))


@pytest.mark.parametrize("stacked", [False, True])
def test_max_norm_rewrites_only_the_columns_over_the_bound_with_the_products_numbers(stacked):
    """Columns over the bound scaled to it, the rest untouched, every entry equal to the bit to
    ``W * where(norm > bound, bound / norm, 1)`` (columns below, at and over the bound, a zero column, a stack)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"Wg1": (30, 7), "Wg2": (7, 40), "We": (30, 40), "Wo": (40, 3)}
    params = {k: torch.randn((2, *s) if stacked else s, generator=g) * 0.5 for k, s in shapes.items()}
    params["We"][..., 0] = 0.0
    params["Wg2"][..., 1] *= 2.0 / params["Wg2"][..., 1].norm(dim=-1, keepdim=True)   # on the bound, about
    want = {}
    for k, w in params.items():
        norms = w.square().sum(-2, keepdim=True).sqrt()
        want[k] = w * torch.where(norms > 2.0, 2.0 / norms.clamp_min(1e-30), 1.0)
    over = {k: int((w.square().sum(-2).sqrt() > 2.0).sum()) for k, w in params.items()}
    assert over["We"] > 0 and over["Wg1"] > 0
    conditional._max_norm(params, 2.0)
    for k, w in params.items():
        assert torch.equal(w, want[k]), k
        assert bool((w.norm(dim=-2) <= 2.0 * (1 + 1e-6)).all()), k


@pytest.mark.parametrize("gate", ["st", "reinforce"])
def test_a_compiled_stack_trains_as_the_eager_one_up_to_rounding(data, gate):
    """``compile=True`` (every step one compiled graph) gives each run of a stack the eager run's parameters after
    2 epochs, the second annealed, to 1e-4 relative (float32 rounding of fused kernels; observed: 4e-7), and the
    same validation errors; no warning (the step compiled)."""
    import warnings

    s = conditional.Settings(gate, epochs=2, eval_every=1, learning_rate=0.3, anneal_epochs=1)
    eager = conditional.train_gated_many(data, [s, s], [5, 6], device="cpu", checkpoints=(2,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        compiled = conditional.train_gated_many(data, [s, s], [5, 6], device="cpu", checkpoints=(2,), compile=True)
    for a, b in zip(eager, compiled):
        for k, v in a.snapshots[2].items():
            assert torch.allclose(b.snapshots[2][k], v, rtol=1e-4, atol=1e-6), k
        assert [e for _, e in b.history] == [e for _, e in a.history]


def test_a_step_that_does_not_compile_is_said_and_the_runs_go_on_eagerly(data, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(conditional, "_compiled_update", lambda settings, rates: refuse)
    s = conditional.Settings("st", epochs=1, eval_every=1, learning_rate=0.3)
    with pytest.warns(RuntimeWarning, match="compiled step failed .*no compiler here.*eagerly"):
        got = conditional.train_gated_many(data, [s, s], [5, 6], device="cpu", compile=True)
    want = conditional.train_gated_many(data, [s, s], [5, 6], device="cpu")
    assert [r.history for r in got] == [r.history for r in want]
    assert [r.test_error for r in got] == [r.test_error for r in want]


def test_a_step_past_the_recompile_limit_is_said_and_runs_eagerly(data):
    """Beyond torch's recompile limit (here 1 graph: a second gate needs another) the compiled step does not
    silently run eagerly: the warning says so, and the run equals the eager one bit for bit."""
    import torch._dynamo

    torch._dynamo.reset()
    limit = torch._dynamo.config.recompile_limit
    st = conditional.Settings("st", epochs=1, eval_every=1, learning_rate=0.3)
    reinforce = conditional.Settings("reinforce", epochs=1, eval_every=1, learning_rate=0.3)
    with torch._dynamo.config.patch(recompile_limit=1):   # torch's own way: restored on leaving, also on failure
        conditional.train_gated_many(data, st, [5], device="cpu", compile=True)
        with pytest.warns(RuntimeWarning, match="compiled step failed .*eagerly"):
            got = conditional.train_gated_many(data, reinforce, [5], device="cpu", compile=True)
    torch._dynamo.reset()
    assert torch._dynamo.config.recompile_limit == limit
    want = conditional.train_gated_many(data, reinforce, [5], device="cpu")
    assert (got[0].history, got[0].test_error) == (want[0].history, want[0].test_error)


def test_a_stack_refuses_runs_that_differ_in_more_than_their_rates(data):
    from dataclasses import replace

    base = conditional.Settings("st", epochs=1)
    with pytest.raises(ValueError, match="may differ only in learning_rate and gater_rate_scale"):
        conditional.train_gated_many(data, [base, replace(base, epochs=2)], [1, 2], device="cpu")
    with pytest.raises(ValueError, match="the same number of runs"):
        conditional.train_gated_many(data, [base, base], [1, 2, 3], device="cpu")


def test_cli_prints_na_for_one_seed_and_trains_at_a_given_rate(capsys):
    code = cli.main(["conditional", "--estimators", "st", "all_on", "--seeds", "1", "--epochs", "1",
                     "--learning-rate", "0.3", "--device", "cpu"])
    assert code == 0
    captured = capsys.readouterr()
    assert "learning rate 0.3, not selected" in captured.out and "nan" not in captured.out
    assert "+- n/a" in captured.out and "p = n/a" in captured.out
    assert "st: epoch 1/1:" in captured.err                   # per-epoch progress with the elapsed time
    for flag, value in (("--learning-rate", "0"), ("--learning-rate", "nan"), ("--epochs", "0"), ("--seeds", "-1"),
                        ("--anneal-epochs", "-1")):
        with pytest.raises(SystemExit):
            cli.main(["conditional", flag, value])
        assert f"{flag} must be" in capsys.readouterr().err
    assert cli.main(["conditional", "--epochs", "2", "--anneal-epochs", "3"]) == 2
    assert "--anneal-epochs must be at most the epochs trained (2), got 3" in capsys.readouterr().err


@pytest.mark.parametrize("gate", ["st", "reinforce", "rectifier"])
def test_an_interrupted_stack_resumes_from_its_checkpoint_and_ends_as_uninterrupted(data, gate, tmp_path):
    """The state after each epoch (parameters, best models, curves, running baseline or L1 weight, generators) is
    saved; interrupted during epoch 2, the stack resumes after epoch 1 and ends bit for bit as one never stopped;
    the file is removed at the end, and one of other settings, or of the same compiled (whose steps round
    otherwise), is refused with its path named."""
    settings = conditional.Settings(gate, epochs=4, eval_every=1, learning_rate=0.3)
    whole = conditional.train_gated_many(data, settings, [3, 4], device="cpu")
    path = tmp_path / "state.pt"

    class Interrupt(Exception):
        pass

    def interrupt(line):
        if line.startswith("epoch 2/"):
            raise Interrupt

    with pytest.raises(Interrupt):
        conditional.train_gated_many(data, settings, [3, 4], device="cpu", checkpoint_path=path, progress=interrupt)
    assert path.exists() and not (tmp_path / "state.pt.lock").exists()
    with pytest.raises(gs.checkpoint.NotResumableError, match="belongs to another run"):
        conditional.train_gated_many(data, settings, [3, 5], device="cpu", checkpoint_path=path)
    with pytest.raises(gs.checkpoint.NotResumableError, match="belongs to another run"):   # compiled steps round
        conditional.train_gated_many(data, settings, [3, 4], device="cpu", checkpoint_path=path, compile=True)
    assert not (tmp_path / "state.pt.lock").exists()                 # a refused state releases its path
    epochs = []
    resumed = conditional.train_gated_many(data, settings, [3, 4], device="cpu", checkpoint_path=path,
                                           progress=epochs.append)
    assert [line.split(":")[0] for line in epochs] == ["epoch 2/4", "epoch 3/4", "epoch 4/4"]
    for a, b in zip(whole, resumed):
        assert (a.valid_error, a.test_error, a.history, a.on_history, a.train_criterion) == \
            (b.valid_error, b.test_error, b.history, b.on_history, b.train_criterion)
    assert not path.exists()
