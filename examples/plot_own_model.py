"""
Metrics for your own model
==========================

Where the network is too large to enumerate, :func:`gradstats.gradient_stats`
streams per-draw gradients of any loss written in torch into
:class:`gradstats.GradientStats`: mean, variance, cosines and sign agreement against
a reference, with jackknife standard errors. The reference here is the mean of many
draws of an unbiased estimator (REINFORCE with a leave-one-out baseline, from
:func:`gradstats.estimate_reference`), so the bias carries that reference's error.
"""

import matplotlib.pyplot as plt
import torch

import gradstats as gs
import gradstats.functional as gf

g = torch.Generator().manual_seed(0)
x = torch.randn(16, 20, generator=g, dtype=torch.float64)          # a minibatch of 16 inputs
params = {"W": torch.randn(20, 30, generator=g, dtype=torch.float64) / 20**0.5,
          "V": torch.randn(30, 1, generator=g, dtype=torch.float64) / 30**0.5}


def st_loss(p, u):                      # one draw: every unit of the minibatch sampled from u [16, 30]
    h = gf.straight_through(x @ p["W"], u=u)
    return ((h @ p["V"]) ** 2).mean()


def loo_loss(p, u):                     # unbiased: REINFORCE with a leave-one-out baseline over 4 samples
    _, surrogate = gf.reinforce_loo(x @ p["W"], lambda b: ((b @ p["V"].detach()) ** 2).squeeze(-1), k=4, u=u)
    h = gf.straight_through(x @ p["W"], u=u[0])                      # V's gradient comes straight from the loss
    return surrogate / 16 + ((h.detach() @ p["V"]) ** 2).mean()


reference, stderr = gs.estimate_reference(loo_loss, params, 4_000, noise_shape=(4, 16, 30), seed=1)
stats = gs.gradient_stats(st_loss, params, 1_000, noise_shape=(16, 30), seed=2,
                          reference=reference, reference_stderr=stderr)
frame = stats.to_frame()
print(frame[frame.metric.isin(["cosine_draw", "sign_agreement_draw", "relative_bias"])].to_string())

cosine = frame[frame.metric == "cosine_draw"]
fig, ax = plt.subplots(figsize=(5, 2.6), layout="constrained")
ax.barh(cosine["group"], cosine["value"], xerr=2 * cosine["stderr"], color="tab:orange")
ax.set(xlabel="straight-through: E[cos(one draw, reference)], ± 2 s.e.")
plt.show()
