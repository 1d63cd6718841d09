"""
Metrics of your own estimator
=============================

A surrogate-derivative (pathwise) estimator is one function: the derivative
:math:`s(a, b)` that replaces :math:`dh/da` on the way back. Register it with
:func:`gradstats.estimators.pathwise` and every engine takes it like a built-in one:
exact moments by enumeration, Monte Carlo, :func:`gradstats.evaluate`'s tidy table,
training and claims. Here "half straight-through" (:math:`s = 1/2`) is set against
straight-through and its sigmoid-derivative variant on a small network.
"""

import matplotlib.pyplot as plt
import torch

import gradstats as gs


def half(a, b):
    return 0.5 * torch.ones_like(a)


gs.estimators.pathwise("half_st", half, replace=True)
net = gs.problems.sbn([8, 5, 5], loss="squared_error", seed=0)
frame = gs.evaluate(net, ["st", "st_sigmoid", "half_st"], progress=False)   # exact: discrete noise

# scope 'all layers': the aggregate over every coordinate of every layer
rows = frame.query("scope == 'all layers' and reference == 'binary' "
                   "and metric in ['cosine_draw', 'relative_bias', 'sign_agreement_draw']")
table = rows.pivot(index="estimator", columns="metric", values="value")
print(table.round(4).to_string())

fig, ax = plt.subplots(figsize=(5, 2.8), layout="constrained")
table["cosine_draw"].plot.barh(ax=ax, color="tab:blue")
ax.set(xlabel="E[cos(one draw, exact gradient)]", ylabel="")
plt.show()
