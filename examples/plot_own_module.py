"""
A plain ``nn.Module``, as it is written
=======================================

A binary autoencoder written the way research code writes it: an ``nn.Module`` whose
stochastic units call ``torch.bernoulli``, with no explicit uniforms and no gradstats
inside. :func:`gradstats.module_gradient_stats` measures its encoder's gradient draw by
draw (``torch.func.functional_call`` and ``vmap(randomness="different")``: every draw
gets its own Bernoulli samples), against a reference from the same module run with an
unbiased estimator (REINFORCE with a leave-one-out baseline over 4 samples, 4 loss
evaluations a draw), and compares straight-through with it at equal cost.
"""

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

import gradstats as gs

torch.manual_seed(0)
images = torch.tensor(load_digits().data[:8] / 16.0, dtype=torch.float64)   # a minibatch of 8 digits, 64 pixels


class BinaryAutoencoder(nn.Module):
    """64 pixels -> 16 Bernoulli units -> 64 pixel logits; ``estimator`` picks the gradient through the units."""

    def __init__(self, estimator="st", samples=4):
        super().__init__()
        self.encoder, self.decoder = nn.Linear(64, 16), nn.Linear(16, 64)
        self.estimator, self.samples = estimator, samples

    def forward(self, x):
        p = torch.sigmoid(self.encoder(x))
        if self.estimator == "st":                      # straight-through: sample forward, identity backward
            return self.decoder(p + (torch.bernoulli(p) - p).detach()), None
        # REINFORCE with a leave-one-out baseline: k samples per image, each one's loss against the others' mean
        h = torch.bernoulli(p.detach().expand(self.samples, *p.shape))
        log_prob = (h * torch.log(p) + (1 - h) * torch.log1p(-p)).sum(-1)
        return self.decoder(h), log_prob


def loss_fn(output, x):
    logits, log_prob = output
    per_image = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    if log_prob is None:
        return per_image.mean()
    k = per_image.shape[0]
    baseline = (per_image.sum(0, keepdim=True) - per_image) / (k - 1)
    score = ((per_image - baseline).detach() * log_prob).mean()
    return per_image.mean() + score                    # the encoder's gradient: the score-function term only


model = BinaryAutoencoder().double()
reinforce = BinaryAutoencoder("reinforce").double()
reinforce.load_state_dict(model.state_dict())
encoder = ["encoder.weight", "encoder.bias"]
reference = gs.module_gradient_stats(reinforce, loss_fn, images, 10_000, params=encoder, seed=1)
ref, ref_stderr = reference.mean, reference.mean_stderr

budgets = (4, 40)   # loss evaluations: ST averages 4 or 40 draws, leave-one-out 1 or 10
st = gs.module_gradient_stats(model, loss_fn, images, 2_000, params=encoder, seed=2, reference=ref,
                              reference_stderr=ref_stderr, loss_evals_per_draw=1, budgets=budgets)
loo = gs.module_gradient_stats(reinforce, loss_fn, images, 2_000, params=encoder, seed=3, reference=ref,
                               reference_stderr=ref_stderr, loss_evals_per_draw=4, budgets=budgets)

rows = []
for name, stats in (("straight-through", st), ("leave-one-out", loo)):
    frame = stats.to_frame(ms=(1,))
    frame = frame[frame.group == "all"]
    print(name)
    print(frame[frame.metric.isin(["relative_squared_bias", "sign_agreement_draw"])]
          [["metric", "value", "stderr", "n_excluded"]].to_string(index=False))
    at_budget = frame[frame.metric.isin(["mse", "cosine_m"]) & frame.loss_evals.isin(budgets)]
    print(at_budget[["metric", "M", "loss_evals", "value", "stderr"]].to_string(index=False))
    rows.append((name, at_budget))

fig, axes = plt.subplots(1, 2, figsize=(7, 2.6), layout="constrained")
for ax, metric, label in zip(axes, ("mse", "cosine_m"), ("MSE of the average", "cos(average, reference)")):
    for offset, (name, at_budget) in zip((-0.1, 0.1), rows):
        r = at_budget[at_budget.metric == metric]
        ax.errorbar(r.loss_evals.astype(float) * (1 + offset), r.value, yerr=2 * r.stderr, fmt="o", label=name)
    ax.set(xscale="log", xlabel="loss evaluations", ylabel=label)
axes[0].set_yscale("log")
axes[1].legend(fontsize=8)
plt.show()
