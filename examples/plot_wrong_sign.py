"""
Straight-through's sign on one binary unit
==========================================

One unit :math:`h = 1[u < \\sigma(a)]` with loss :math:`f(h) = (h - t)^2`. Its exact
gradient is :math:`p(1-p)(1-2t)` with :math:`p = \\sigma(a)`; straight-through's mean
is :math:`2(p - t)`. Both are computed here by enumeration (float64), with no
sampling error: where the two curves lie on opposite sides of zero, straight-through
points the wrong way on average.
"""

import matplotlib.pyplot as plt
import torch

import gradstats as gs

logit = -1.0
targets = torch.linspace(0.0, 1.0, 41)
exact, st_mean = [], []
for t in targets.tolist():
    toy = gs.problems.toy(target=t, logit=logit)
    exact.append(float(gs.exact_gradient(toy)[0]))
    st_mean.append(float(gs.moments(toy, "st").mean[0]))   # exact: the noise is one Bernoulli draw

p = torch.sigmoid(torch.tensor(logit)).item()
wrong = [t for t, g, s in zip(targets.tolist(), exact, st_mean) if g * s < 0]
print(f"p = {p:.4f}; straight-through has the wrong sign for t in [{min(wrong):.3f}, {max(wrong):.3f}]")

fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
ax.plot(targets, exact, label="exact gradient")
ax.plot(targets, st_mean, label="E[straight-through]")
ax.axhline(0.0, color="grey", lw=0.8)
ax.axvspan(min(wrong), max(wrong), color="tab:red", alpha=0.15, label="wrong sign")
ax.set(xlabel="target t", ylabel="d E[f] / d a", title=f"one unit, a = {logit}")
ax.legend(frameon=False)
plt.show()
