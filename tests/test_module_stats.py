"""Any nn.Module as it is written: per-draw gradients with the module's own randomness, under vmap."""

import math

import pytest
import torch
from scipy import stats as scipy_stats
from torch import nn
from torch.nn import functional as F

import gradstats as gs


class BernoulliST(nn.Module):
    """Three binary units sampled with torch.bernoulli, straight-through; a frozen scale, an integer buffer and a
    parameter the loss never uses."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64))
        self.scale = nn.Parameter(torch.ones(3, dtype=torch.float64), requires_grad=False)
        self.unused = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.register_buffer("calls", torch.tensor(0))

    def forward(self, target):
        p = torch.sigmoid(self.a).expand_as(target)
        return self.scale * (p + (torch.bernoulli(p) - p).detach())


TARGET = torch.tensor([[0.3, 0.3, 0.3]], dtype=torch.float64)


def _loss(h, target):
    return ((h - target) ** 2).sum()


def _draws(module, grads):
    """The binary draws, read back from ST's per-draw gradient 2 (h - t) p (1 - p)."""
    p = torch.sigmoid(module.a.detach())
    return grads["a"] / (2 * p * (1 - p)) + TARGET[0]


def test_each_draw_gets_its_own_bernoulli_sample_at_the_right_rate():
    module = BernoulliST()
    grads = torch.cat([c["a"] for c in gs.module_per_draw_gradients(module, _loss, TARGET, 4000, seed=3)])
    h = _draws(module, {"a": grads})
    assert torch.allclose(h, h.round(), atol=1e-12) and set(h.round().unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(module.a.detach())
    for j in range(3):   # two-sided binomial test per unit; fixed seed, false-alarm rate 1e-3 each
        ones = int(h[:, j].round().sum())
        assert scipy_stats.binomtest(ones, 4000, float(p[j])).pvalue > 1e-3, j


def test_frozen_parameters_are_left_out_and_an_unused_one_is_reported_not_scored():
    module = BernoulliST()
    reference = {"a": torch.zeros(3, dtype=torch.float64), "unused": torch.zeros(2, dtype=torch.float64)}
    stats = gs.module_gradient_stats(module, _loss, TARGET, 200, seed=0, reference=reference)
    assert stats.layout.names == ["a", "unused"]
    with pytest.warns(RuntimeWarning, match="unused got no gradient"):
        frame = stats.to_frame()
    assert frame[(frame.group == "unused") & (frame.metric == "cosine_draw")].value.isna().all()
    assert int(module.calls) == 0   # the integer buffer is left as it was


def test_the_same_seed_gives_the_same_draws_and_the_callers_generator_is_untouched():
    module = BernoulliST()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = gs.module_gradient_stats(module, _loss, TARGET, 300, params=["a"], seed=7, chunk_size=50)
    assert torch.equal(torch.get_rng_state(), state)
    again = gs.module_gradient_stats(module, _loss, TARGET, 300, params=["a"], seed=7, chunk_size=50)
    other = gs.module_gradient_stats(module, _loss, TARGET, 300, params=["a"], seed=8, chunk_size=50)
    assert torch.equal(first.mean["a"], again.mean["a"]) and not torch.equal(first.mean["a"], other.mean["a"])


def test_a_deterministic_module_gives_autograds_gradient_in_every_draw():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)

    def loss(out, batch):
        return F.mse_loss(out, batch[1])

    loss(module(x), (x, y)).backward()
    expected = {k: v.grad for k, v in module.named_parameters()}
    for chunk in gs.module_per_draw_gradients(module, loss, (x, y), 5, chunk_size=3):
        assert list(chunk) == list(expected)
        for k, g in chunk.items():
            assert torch.allclose(g, expected[k].expand_as(g), rtol=1e-12, atol=1e-15), k


def test_gumbel_softmax_and_dropout_need_no_rewrite():
    torch.manual_seed(1)
    linear = nn.Linear(4, 3).double()

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(F.gumbel_softmax(self.linear(x), tau=0.5, hard=True))

    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.warns(UserWarning):   # torch's own note that scatter_ has no batching rule yet
        grads = next(gs.module_per_draw_gradients(Gated(), lambda out, b: out[:, 0].sum(), x, 64))
    distinct = torch.unique(grads["linear.weight"].reshape(64, -1), dim=0)
    assert len(distinct) > 2   # the draws differ


@pytest.mark.parametrize("call, match", [
    (lambda m: gs.module_gradient_stats("model", _loss, TARGET, 10), "module must be a torch.nn.Module"),
    (lambda m: gs.module_gradient_stats(m, _loss, TARGET, 10, params=["b"]), r"params names \['b'\], not parameters"),
    (lambda m: gs.module_gradient_stats(m, _loss, TARGET, 10, params="a"), "params must be a list"),
    (lambda m: gs.module_gradient_stats(m, _loss, TARGET, 10, params=["a", "a"]), "more than once"),
    (lambda m: gs.module_gradient_stats(m, _loss, TARGET, 0), "num_draws must be"),
    (lambda m: gs.module_gradient_stats(m, _loss, {"x": TARGET}, 10), "batch must be a tensor"),
    (lambda m: gs.module_gradient_stats(m, lambda out, b: out, TARGET, 10), "loss_fn must return a scalar"),
    (lambda m: gs.module_gradient_stats(m, 3, TARGET, 10), "loss_fn must be a function"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(BernoulliST())


def test_a_complex_parameter_is_named_and_can_be_left_out():
    """A complex parameter cannot be measured: it is named with its dtype before any draw (GradientStats refused
    the first chunk's gradients, naming none), and params=[...] leaves it out."""
    class Phase(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.zeros(3, dtype=torch.float64))
            self.phase = nn.Parameter(torch.ones(3, dtype=torch.complex128))

        def forward(self, x):
            return (torch.bernoulli(torch.sigmoid(self.a).expand_as(x)) * (self.phase * x).abs()).sum() + self.a.sum()

    with pytest.raises(ValueError, match=r"params: only real .* phase \(torch.complex128\) of Phase is not"):
        gs.module_gradient_stats(Phase(), lambda out, b: out, TARGET, 8)
    assert gs.module_gradient_stats(Phase(), lambda out, b: out, TARGET, 8, params=["a"]).layout.names == ["a"]


def test_a_fully_frozen_module_is_refused():
    module = BernoulliST()
    for p in module.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to measure"):
        gs.module_gradient_stats(module, _loss, TARGET, 10)


def test_unbiased_and_biased_module_estimators_are_told_apart():
    """REINFORCE written as a plain module is unbiased for E[(h - t)^2]; ST is not (unit a = 2: ST's mean
    2 (p - t) p (1 - p) against the exact (1 - 2t) p (1 - p))."""
    module = BernoulliST()

    class Reinforce(BernoulliST):
        def forward(self, target):
            p = torch.sigmoid(self.a).expand_as(target)
            h = torch.bernoulli(p.detach())
            log_prob = (h * torch.log(p) + (1 - h) * torch.log1p(-p)).sum()
            loss = ((h - target) ** 2).sum()
            return loss + loss.detach() * log_prob - (loss + loss.detach() * log_prob).detach()

    reinforce = Reinforce()
    p = torch.sigmoid(module.a.detach())
    exact = {"a": (1 - 2 * TARGET[0]) * p * (1 - p)}
    unbiased = gs.module_gradient_stats(reinforce, lambda out, b: out, TARGET, 20_000, params=["a"], seed=1,
                                        reference=exact)
    biased = gs.module_gradient_stats(module, _loss, TARGET, 20_000, params=["a"], seed=1, reference=exact)
    # fixed seeds; an unbiased estimator's test rejects at alpha = 0.01 in 1% of seeds
    assert unbiased.unbiasedness_test(alpha=0.01).verdict == "not rejected"
    assert biased.unbiasedness_test(alpha=0.01).verdict == "rejected"
    assert math.isfinite(float(unbiased.to_frame().set_index("metric").value["relative_squared_bias"]))


def _autograd_gradients(module, loss, batch):
    """The gradient of one forward pass of a copy of ``module`` (in its mode), by autograd."""
    import copy

    twin = copy.deepcopy(module)
    loss(twin(batch[0]), batch).backward()
    return {k: v.grad for k, v in twin.named_parameters()}


def _buffers(module):
    return {k: v.clone() for k, v in module.named_buffers()}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_is_measured_in_the_modules_mode_and_its_buffers_are_left_as_they_were(mode):
    """In training mode each draw is normalised by its own batch statistics (the gradient autograd gives for one
    training step), in eval mode by the running statistics; the running statistics and num_batches_tracked are not
    touched either way."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():   # running statistics unlike any batch's, so that the two modes differ
        module[1].running_mean.fill_(0.3)
        module[1].running_var.fill_(2.0)
    getattr(module, mode)()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)

    def loss(out, batch):
        return F.mse_loss(out, batch[1])

    before = _buffers(module)
    expected = _autograd_gradients(module, loss, (x, y))
    other = _autograd_gradients(module.train(mode == "eval"), loss, (x, y))   # the other mode's gradient
    getattr(module, mode)()
    for chunk in gs.module_per_draw_gradients(module, loss, (x, y), 5, chunk_size=3):
        for k, g in chunk.items():
            assert torch.allclose(g, expected[k].expand_as(g), rtol=1e-12, atol=1e-15), k
    assert not all(torch.allclose(expected[k], other[k]) for k in expected)
    assert all(torch.equal(v, before[k]) for k, v in module.named_buffers())


def test_batchnorm_in_training_behind_random_units_is_reproducible_and_leaves_the_generator():
    torch.manual_seed(3)

    class Stochastic(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.norm, self.out = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 1)
            self.drop = nn.Dropout(0.2)

        def forward(self, x):
            p = torch.sigmoid(self.linear(x))
            return self.out(self.drop(self.norm(p + (torch.bernoulli(p) - p).detach())))

    module = Stochastic().double().train()
    x = torch.randn(8, 4, dtype=torch.float64)
    state, before = torch.get_rng_state(), _buffers(module)
    first = torch.cat([c["linear.weight"] for c in gs.module_per_draw_gradients(module, lambda o, b: o.mean(), x, 40,
                                                                                 chunk_size=16, seed=4)])
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, before[k]) for k, v in module.named_buffers())
    again = torch.cat([c["linear.weight"] for c in gs.module_per_draw_gradients(module, lambda o, b: o.mean(), x, 40,
                                                                                 chunk_size=16, seed=4)])
    assert torch.equal(first, again) and len(torch.unique(first.reshape(40, -1), dim=0)) == 40


def test_a_forward_pass_that_writes_to_a_plain_tensor_attribute_is_named():
    class Tally(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 1)
            self.total = torch.zeros(1)   # not a buffer

        def forward(self, x):
            out = self.linear(x).sum()
            self.total.add_(out.detach())
            return out

    with pytest.raises(ValueError, match="neither a parameter nor a buffer"):
        gs.module_gradient_stats(Tally(), lambda out, b: out, torch.rand(4, 3), 8)



D = torch.distributions
# how research code samples from a layer's output a, by name: the ways the own-model guide says run as they are,
# those it says are refused, and the rewrites the refusals suggest
SAMPLERS = {
    "Bernoulli": lambda a: (lambda d: (lambda b: b * a + d.log_prob(b))(d.sample()))(D.Bernoulli(logits=a)),
    "Categorical": lambda a: (lambda d: d.log_prob(d.sample()))(D.Categorical(logits=a)),
    "RelaxedBernoulli": lambda a: D.RelaxedBernoulli(torch.tensor(0.5, dtype=a.dtype), logits=a).rsample(),
    "RelaxedOneHotCategorical": lambda a: D.RelaxedOneHotCategorical(torch.tensor(0.5, dtype=a.dtype),
                                                                     logits=a).rsample(),
    "Gumbel": lambda a: D.Gumbel(a, 1.0).rsample(),
    "Uniform": lambda a: D.Uniform(a, a + 1).rsample(),
    "torch.normal": lambda a: torch.normal(a, 1.0),
    "Normal": lambda a: D.Normal(a, 1.0).rsample(),
    "LogNormal": lambda a: D.LogNormal(a, 1.0).rsample(),
    "MultivariateNormal": lambda a: D.MultivariateNormal(a, torch.eye(4, dtype=a.dtype)).rsample(),
    "Laplace": lambda a: D.Laplace(a, 1.0).rsample(),
    "Exponential": lambda a: D.Exponential(a.exp()).rsample(),
    "F.one_hot": lambda a: F.one_hot(a.argmax(-1), 4) * a,
    "OneHotCategorical": lambda a: (lambda d: d.log_prob(d.sample()))(D.OneHotCategorical(logits=a)),
    "Beta": lambda a: D.Beta(a.exp(), 1.0).rsample(),
    "Dirichlet": lambda a: D.Dirichlet(a.exp()).rsample(),
    "randn_like, for Normal": lambda a: a + 1.0 * torch.randn_like(a),
    "one_hot_of, for F.one_hot": lambda a: gs.units.one_hot_of(a.argmax(-1), 4, a.dtype) * a,
}
RUN = ["Bernoulli", "Categorical", "RelaxedBernoulli", "RelaxedOneHotCategorical", "Gumbel", "Uniform",
       "randn_like, for Normal", "one_hot_of, for F.one_hot"]
REFUSED = {"Normal": r"in place .* rsample.*randn_like\(loc\)", "LogNormal": "in place", "MultivariateNormal": "in place",
           "Laplace": "in place", "Exponential": "in place", "F.one_hot": r"branches on it .*units.one_hot_of",
           "OneHotCategorical": "branches on it", "Beta": "setup_context", "Dirichlet": "setup_context"}


class Sampled(nn.Module):
    """A linear layer whose output is sampled by one of :data:`SAMPLERS`."""

    def __init__(self, how: str):
        super().__init__()
        self.linear, self.how = nn.Linear(3, 4).double(), how

    def forward(self, x):
        return SAMPLERS[self.how](self.linear(x))


def _squared(out, batch):
    return out.pow(2).mean()


@pytest.mark.parametrize("how", REFUSED)
def test_what_vmap_cannot_batch_is_named_with_the_line_and_the_rewrite(how):
    """torch's refusal to batch a draw becomes a ValueError naming the argument, this file's line that called the
    refused step, and how to write that step instead."""
    with pytest.raises(ValueError, match=REFUSED[how]) as refused:
        gs.module_gradient_stats(Sampled(how), _squared, torch.rand(5, 3, dtype=torch.float64), 8)
    said = str(refused.value)
    assert said.startswith("module or loss_fn: ") and f"{__file__}:" in said and "torch says: " in said


@pytest.mark.parametrize("how", RUN)
def test_the_samplers_the_guide_lists_and_the_rewrites_run_with_noise_of_their_own_per_draw(how):
    """What the guide says runs as it is, and each rewrite a refusal suggests, is batched, one draw's gradient
    differing from another's (F.one_hot's rewrite has no noise: its draws are equal)."""
    grads = next(gs.module_per_draw_gradients(Sampled(how), _squared, torch.rand(5, 3, dtype=torch.float64), 16,
                                              chunk_size=16))
    weight = grads["linear.weight"].reshape(16, -1)
    assert torch.isfinite(weight).all()
    assert len(torch.unique(weight, dim=0)) == (1 if how.startswith("one_hot_of") else 16)


def test_torch_normal_runs_but_passes_no_gradient_to_its_mean():
    """What the guide warns of: torch defines torch.normal(mean, std) to pass no gradient to ``mean``, so a module
    that samples with it is batched and measured, and every draw's gradient is 0."""
    grads = next(gs.module_per_draw_gradients(Sampled("torch.normal"), _squared,
                                              torch.rand(5, 3, dtype=torch.float64), 16, chunk_size=16))
    assert torch.equal(grads["linear.weight"], torch.zeros(16, 4, 3, dtype=torch.float64))


def test_a_loss_that_vmap_cannot_batch_is_named():
    """The same for gs.per_draw_gradients' ``loss``."""
    def loss(p, u):
        return D.Normal(p["a"], 1.0).rsample().sum() + u.sum()

    with pytest.raises(ValueError, match=r"^loss: one draw's computation draws random numbers in place"):
        next(gs.per_draw_gradients(loss, {"a": torch.zeros(3)}, 8, noise_shape=(3,)))


def test_a_recurrent_module_is_batched_without_onednn_for_the_same_gradients():
    """The own-model guide's advice: a float32 nn.LSTM on a CPU runs draw by draw inside vmap through oneDNN, where
    torch's build uses it (torch warns of a performance drop), and under torch.backends.mkldnn.flags(enabled=False)
    it is batched (no warning), for the same per-draw gradients to float32 rounding."""
    import warnings

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.out = nn.LSTM(4, 6, batch_first=True), nn.Linear(6, 3)

        def forward(self, x):
            p = torch.sigmoid(self.rnn(x)[0][:, -1])
            return self.out(p + (torch.bernoulli(p) - p).detach())

    torch.manual_seed(0)
    module, x, y = Recurrent(), torch.randn(5, 7, 4), torch.randint(0, 3, (5,))
    grads, drops = {}, {}
    for enabled in (True, False):
        with torch.backends.mkldnn.flags(enabled=enabled), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grads[enabled] = next(gs.module_per_draw_gradients(module, lambda out, b: F.cross_entropy(out, b[1]),
                                                               (x, y), 16, chunk_size=16, seed=2))
        drops[enabled] = any("performance drop" in str(w.message) for w in caught)
    assert not drops[False]
    for name, value in grads[False].items():
        assert torch.allclose(value, grads[True][name], rtol=1e-5, atol=1e-6), name
