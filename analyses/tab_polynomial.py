"""ReinMax's polynomial programming benchmark, scored by its exact objective.

The task of Liu, Dong, Liu, Yu & Gao (2023, sec. 6.1, the authors' ``poly/poly_programming.py``): ``L = 128``
categorical variables of two classes, ``X_i`` the indicator of the first class, and the loss
:math:`\\frac1L \\sum_i |X_i - c|^p` with ``c = 0.45`` for ``p`` in 1.5, 2 and 3; logits initialised uniform on
[-0.01, 0.01], Adam at rate 1e-3, 64 samples a step, 40 epochs of 200 steps, temperature 1. Each gradient
estimator trains its logits on its own samples; we score every run by the exact expected loss
:math:`\\frac1L \\sum_i (\\pi_{i,1}|1 - c|^p + \\pi_{i,2}\\, c^p)` (the units are independent, so enumeration
is per unit; checked against ``gs.exact_loss`` on a small instance), and report the mean over seeds with its
standard error, and the last epoch's mean training loss as the authors' script prints it. ``exact`` descends
the exact gradient; leave-one-out uses the 64 samples of a step as its ``k``. The full grid (10 seeds, 40 epochs,
about an hour and a half on one core) keeps its rows in ``figures/data/tab_polynomial.csv``; ``make figures``
plots from them.

    python -m analyses.tab_polynomial [--quick] [--seed 0] [--recompute]
"""

from __future__ import annotations

import math
import sys

import matplotlib.pyplot as plt
import seaborn as sns
import torch

import gradstats as gs
import gradstats.functional as gf
from analyses._runner import Analysis, atomic_write, estimate, exact

UNITS, TARGET, RATE, BATCH, STEPS_PER_EPOCH, EPOCHS = 128, 0.45, 1e-3, 64, 200, 40
QUICK_STEPS_PER_EPOCH = 50   # --quick: 2 seeds, 2 epochs of 50 steps (a smoke run of the pipeline)
POWERS = (1.5, 2.0, 3.0)
METHODS = ("categorical_st", "categorical_st_gumbel", "categorical_gumbel_rao", "categorical_reinmax",
           "categorical_reinforce_loo", "exact")
LABELS = {"categorical_st": "ST", "categorical_st_gumbel": "ST-Gumbel", "categorical_gumbel_rao": "Gumbel-Rao (k = 10)",
          "categorical_reinmax": "ReinMax", "categorical_reinforce_loo": "REINFORCE, leave-one-out (k = 64)",
          "exact": "exact gradient"}


def cells(config):
    seeds = [config.seed + s for s in range(2 if config.quick else 10)]
    epochs = 2 if config.quick else EPOCHS
    steps = {"steps": QUICK_STEPS_PER_EPOCH} if config.quick else {}   # the full grid's cells keep their keys
    return [{"power": p, "method": m, "seeds": seeds, "epochs": epochs, **steps} for p in POWERS for m in METHODS]


def class_losses(power: float) -> torch.Tensor:
    """The loss of each class of a unit: ``|1 - c|^p`` (first class, X = 1) and ``c^p``."""
    return torch.tensor([abs(1 - TARGET) ** power, TARGET ** power], dtype=torch.float64)


def exact_objective(logits: torch.Tensor, power: float) -> torch.Tensor:
    """E[(1/L) sum_i |X_i - c|^p] for logits ``[..., L, 2]``: per unit, its two states' probabilities times their
    losses (the units are independent)."""
    return (torch.softmax(logits, -1) * class_losses(power).to(logits)).sum(-1).mean(-1)


def check_exact_objective(power: float) -> None:
    """The closed form against gs.exact_loss's enumeration on 4 units (16 joint states)."""
    logits = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-2.0, 0.1], [0.0, 0.7]], dtype=torch.float64)
    loss = gs.losses.Loss(lambda h: (h[..., 0::2] - TARGET).abs().pow(power).mean(-1), name=f"|X - c|^{power}")
    problem = gs.problems.categorical([4], num_classes=2, loss=loss, logits=logits)
    closed = float(exact_objective(logits, power))
    if not math.isclose(closed, gs.exact_loss(problem), rel_tol=1e-12):
        raise AssertionError(f"the closed-form objective {closed} disagrees with enumeration {gs.exact_loss(problem)}")


def sample_loss(first_class: torch.Tensor, power: float) -> torch.Tensor:
    """(1/L) sum_i |X_i - c|^p of each sample, from ``X`` ``[..., L]``."""
    return (first_class - TARGET).abs().pow(power).mean(-1)


def step_loss(method: str, theta: torch.Tensor, power: float, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """A scalar whose gradient with respect to ``theta [S, L, 2]`` is each seed's estimate (the mean over the step's
    samples), and the samples' mean training loss."""
    if method == "exact":
        value = exact_objective(theta, power)
        return value.sum(), float(value.detach().mean())
    if method == "categorical_reinforce_loo":
        samples, surrogate = gf.categorical_reinforce_loo(
            theta, lambda b: sample_loss(b[..., 0], power), k=BATCH, generator=generator)
        return surrogate / BATCH, float(sample_loss(samples[..., 0], power).mean())
    logits = theta[:, None].expand(-1, BATCH, -1, -1)
    if method == "categorical_gumbel_rao":
        h = gf.categorical_gumbel_rao(logits, k=10, generator=generator)
    else:
        drop_in = {"categorical_st": gf.categorical_straight_through, "categorical_reinmax": gf.categorical_reinmax,
                   "categorical_st_gumbel": gf.categorical_st_gumbel}[method]
        h = drop_in(logits, generator=generator)
    losses = sample_loss(h[..., 0], power)               # [S, B]
    return losses.mean(1).sum(), float(losses.detach().mean())


def compute(cell, config):
    power, method, seeds = cell["power"], cell["method"], cell["seeds"]
    check_exact_objective(power)
    init = torch.Generator().manual_seed(seeds[0])
    theta = torch.stack([torch.empty(UNITS, 2, dtype=torch.float64).uniform_(-0.01, 0.01,
                                                                             generator=init.manual_seed(s))
                         for s in seeds]).requires_grad_(True)
    noise = torch.Generator().manual_seed(10_000 + seeds[0] + 1000 * METHODS.index(method) + int(10 * power))
    optimizer = torch.optim.Adam([theta], lr=RATE)
    rows = []
    steps = cell.get("steps", STEPS_PER_EPOCH)
    for epoch in range(1, cell["epochs"] + 1):
        train = 0.0
        for _ in range(steps):
            optimizer.zero_grad()
            loss, mean = step_loss(method, theta, power, noise)
            loss.backward()
            optimizer.step()
            train += mean / steps
        with torch.no_grad():
            objective = exact_objective(theta, power)
        rows += [{"seed": s, "epoch": epoch, "metric": "exact_loss", "value": float(objective[i]), "stderr": 0.0}
                 for i, s in enumerate(seeds)]
        rows.append({"seed": -1, "epoch": epoch, "metric": "train_loss_epoch_mean", "value": train, "stderr": 0.0})
    return rows


def final(frame):
    """Per power and method, the exact loss after the last epoch: mean over seeds, its standard error, the seeds."""
    last = frame[(frame.epoch == frame.epoch.max()) & (frame.metric == "exact_loss")]
    return last.groupby(["cell_power", "cell_method"]).value.agg(["mean", "sem", "count"]).reset_index()


def _table(frame, config) -> None:
    summary = final(frame)
    infimum = {p: float(class_losses(p).min()) for p in POWERS}
    lines = ["% generated by analyses/tab_polynomial.py; do not edit",
             "\\begin{tabular}{@{}l" + "r" * len(POWERS) + "@{}}", "\\toprule",
             "estimator & " + " & ".join(f"$p = {p:g}$" for p in POWERS) + " \\\\", "\\midrule"]
    for method in METHODS:
        cells_ = []
        for p in POWERS:
            row = summary[(summary.cell_power == p) & (summary.cell_method == method)].iloc[0]
            cells_.append(f"${estimate(row['mean'], row['sem']).tex()}$")
        lines.append(f"{LABELS[method]} & " + " & ".join(cells_) + " \\\\")
    lines += ["\\midrule", "infimum & " + " & ".join(f"${infimum[p]:.4f}$" for p in POWERS) + " \\\\",
              "\\bottomrule", "\\end{tabular}"]
    atomic_write(config.generated / f"tab_polynomial_table{'-quick' if config.quick else ''}.tex", "\n".join(lines) + "\n")


def plot(frame, meta, config):
    _table(frame, config)
    fig, axes = plt.subplots(1, len(POWERS), figsize=(9.6, 3.0), sharey=False)
    palette = dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS))))
    for ax, p in zip(axes, POWERS):
        sub = frame[(frame.cell_power == p) & (frame.metric == "exact_loss")]
        sub = sub.assign(gap=sub.value - float(class_losses(p).min()))
        for method in METHODS:
            rows = sub[sub.cell_method == method].groupby("epoch").gap.mean()
            ax.plot(rows.index, rows.values, color=palette[method], linewidth=1.2, label=LABELS[method])
        ax.set(yscale="log", xlabel="epoch (200 Adam steps)", title=f"p = {p:g}",
               ylabel="exact loss minus its infimum" if p == POWERS[0] else "")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def numbers(frame, config):
    summary = final(frame)

    def value(method, p):
        row = summary[(summary.cell_power == p) & (summary.cell_method == method)].iloc[0]
        return estimate(row["mean"], row["sem"])

    names = {"categorical_st": "St", "categorical_st_gumbel": "StGumbel", "categorical_gumbel_rao": "GumbelRao",
             "categorical_reinmax": "Reinmax", "categorical_reinforce_loo": "Loo", "exact": "Exact"}
    powers = {1.5: "OneHalf", 2.0: "Two", 3.0: "Three"}
    out = {f"poly{names[m]}{powers[p]}": value(m, p) for m in METHODS for p in POWERS}
    out["polySeeds"] = str(int(summary["count"].min()))
    out["polyInfimumTwo"] = exact(float(class_losses(2.0).min()), 4)
    out["polyStartTwo"] = exact(float(exact_objective(torch.zeros(UNITS, 2, dtype=torch.float64), 2.0)), 4)
    return out


def verify_cells(config):
    """The reduced grid ``make check-figures`` recomputes against the committed rows: exact gradient descent, which
    draws nothing (its rows depend only on the objective, the initialisation and Adam)."""
    return [c for c in cells(config) if c["method"] == "exact"]


ANALYSIS = Analysis("tab_polynomial", __doc__.splitlines()[0], cells, compute, plot, numbers, committed=True,
                    verify_cells=verify_cells, identity=("seed", "epoch", "metric"))
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
