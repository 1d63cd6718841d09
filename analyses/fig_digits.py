"""Beyond enumeration: every estimator's gradient on a real model, against a high-precision reference.

The model is a researcher's own torch code, not a gradstats problem: two layers
of 64 binary stochastic units on scikit-learn's handwritten digits (64 -> 64 ->
64 -> 10 softmax, about 9,000 parameters, 2^128 joint states per example),
cross-entropy on a fixed minibatch of 32 training images. Each estimator is
applied through the drop-ins of ``gradstats.functional`` (the antithetic ones
layer by layer with the layer above resampled from the same uniforms, as the
library does on networks; leave-one-out through its per-unit rule), its per-draw
gradients come from ``gs.per_draw_gradients`` (vmap, no loop), and
``gs.GradientStats`` scores them against the reference: the mean of DisARM over
many draws from an independent seed (``gs.estimate_reference``), whose standard
error the bias and the MSE carry. Scored at three points of training (the
network trained with straight-through and Adam, as practitioners do), over
three initialisations; the MSE compares estimators at an equal cost of 12 loss
evaluations (M = 12 / cost draws averaged). Bars: 95% t intervals over the initialisations.

    python analyses/fig_digits.py [--quick] [--seed 0] [--jobs N]
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import seaborn as sns
import torch
from torch.nn import functional as F

import gradstats as gs
import gradstats.functional as gf
from analyses._runner import Analysis, estimate, exact, mean_estimate, t_interval
from gradstats.estimators.score_function import leave_one_out_rule, tied_losses

HIDDEN = (64, 64)
MINIBATCH = 32
BUDGET = 12           # loss evaluations: each estimator averages BUDGET / cost draws
LAYERS = {"W1": "layer 1 (W1)", "W2": "layer 2 (W2)"}
# name -> (kind, drop-in or rule options, loss evaluations per draw)
ESTIMATORS = {
    "st": ("pathwise", {"dropin": "straight_through"}, 1),
    "st_sigmoid": ("pathwise", {"dropin": "straight_through", "variant": "sigmoid"}, 1),
    "st_gumbel": ("pathwise", {"dropin": "st_gumbel", "temperature": 1.0}, 1),
    "reinmax": ("pathwise", {"dropin": "reinmax", "temperature": 1.0}, 1),
    "gumbel": ("pathwise", {"dropin": "gumbel_sigmoid", "temperature": 1.0}, 1),
    "reinforce_loo": ("loo", {"k": 2}, 2),
    "arm": ("antithetic", {"dropin": "arm"}, 3),
    "disarm": ("antithetic", {"dropin": "disarm"}, 3),
}


def _data():
    split = gs.datasets.digits(seed=0)
    return split.train[0], split.train[1]


def _initial(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = (64, *HIDDEN, 10)
    params = {}
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:]), 1):
        params[f"W{i}"] = torch.randn(m, n, generator=g, dtype=torch.float64) * (2 / m**0.5)
        params[f"c{i}"] = torch.zeros(n, dtype=torch.float64)
    return params


def _readout(h2, p, y):
    """Per-example cross-entropy of the softmax readout of the second layer's units."""
    return F.cross_entropy(h2 @ p["W3"] + p["c3"], y, reduction="none")


def closure(name: str, x, y):
    """``(loss(params, u), noise_shape)``: one draw's loss (or surrogate) whose gradient is ``name``'s estimate
    of the gradient of the mean cross-entropy over the minibatch ``x, y``."""
    kind, options, _ = ESTIMATORS[name]
    options = dict(options)
    n = len(y)
    if kind == "pathwise":
        dropin = getattr(gf, options.pop("dropin"))

        def loss(p, u):
            h1 = dropin(x @ p["W1"] + p["c1"], u=u["1"], **options)
            h2 = dropin(h1 @ p["W2"] + p["c2"], u=u["2"], **options)
            return _readout(h2, p, y).mean()

        return loss, {"1": (n, HIDDEN[0]), "2": (n, HIDDEN[1])}
    if kind == "antithetic":
        rule = getattr(gf, options["dropin"])

        def loss(p, u):
            q = {k: v.detach() for k, v in p.items()}

            def from_layer_two(b1):   # the layer above resampled from the draw's own uniforms
                return _readout((u["2"] < torch.sigmoid(b1 @ q["W2"] + q["c2"])).to(b1), q, y)

            b1, s1 = rule(x @ p["W1"] + p["c1"], from_layer_two, u=u["1"])
            b2, s2 = rule(b1 @ p["W2"] + p["c2"], lambda b: _readout(b, q, y), u=u["2"])
            return (s1 + s2) / n + _readout(b2, p, y).mean()

        return loss, {"1": (n, HIDDEN[0]), "2": (n, HIDDEN[1])}
    k = options["k"]

    def loss(p, u):   # k passes through both layers; each layer's score times the leave-one-out centred loss
        a1 = x @ p["W1"] + p["c1"]
        b1 = (u["1"] < torch.sigmoid(a1.detach())).to(a1)                       # [k, n, H1]
        a2 = b1 @ p["W2"] + p["c2"]
        b2 = (u["2"] < torch.sigmoid(a2.detach())).to(a2)
        losses = _readout(b2.reshape(k * n, -1), {key: v.detach() for key, v in p.items()}, y.repeat(k)).reshape(k, n)
        losses = tied_losses(losses, b2, axis=0)                                  # equal outputs, equal losses
        d1 = leave_one_out_rule(a1.detach().expand_as(b1), b1, losses, axis=0)
        d2 = leave_one_out_rule(a2.detach(), b2, losses, axis=0, inputs=b1)   # layer 2's inputs differ per pass
        readout = _readout(b2.reshape(k * n, -1), p, y.repeat(k)).mean()
        return ((d1.detach() * a1).sum() + (d2.detach() * a2).sum()) / n + readout

    return loss, {"1": (k, n, HIDDEN[0]), "2": (k, n, HIDDEN[1])}


def train(params, x, y, steps: int, seed: int, rate: float):
    """Adam on the mean cross-entropy through straight-through, on random minibatches of the training set."""
    params = {k: v.clone().requires_grad_() for k, v in params.items()}
    optimiser = torch.optim.Adam(params.values(), lr=rate)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, len(y), (MINIBATCH,), generator=g)
        u = torch.rand((2, MINIBATCH, HIDDEN[0]), generator=g, dtype=torch.float64)
        h1 = gf.straight_through(x[rows] @ params["W1"] + params["c1"], u=u[0])
        h2 = gf.straight_through(h1 @ params["W2"] + params["c2"], u=u[1])
        optimiser.zero_grad()
        _readout(h2, params, y[rows]).mean().backward()
        optimiser.step()
    return {k: v.detach() for k, v in params.items()}


def cells(config):
    steps = (0, 5) if config.quick else (0, 100, 1000)
    seeds = (config.seed,) if config.quick else (config.seed, config.seed + 1, config.seed + 2)
    draws = 300 if config.quick else 8_000
    return [{"seed": s, "step": t, "draws": draws, "reference_draws": (8 if config.quick else 16) * draws,
             "rate": 0.01 * config.rate_factor}
            for s in seeds for t in steps]


def compute(cell, config):
    x, y = _data()
    params = train(_initial(cell["seed"]), x, y, cell["step"], cell["seed"] + 7, cell["rate"])
    xb, yb = x[:MINIBATCH], y[:MINIBATCH]
    loss, noise = closure("disarm", xb, yb)
    reference, stderr = gs.estimate_reference(loss, params, cell["reference_draws"], noise_shape=noise,
                                              chunk_size=500, seed=1_000_003 + cell["seed"])
    rows = []
    for name, (_, _, cost) in ESTIMATORS.items():
        loss, noise = closure(name, xb, yb)
        stats = gs.gradient_stats(loss, params, cell["draws"], noise_shape=noise, chunk_size=500, seed=cell["seed"],
                                  reference=reference, reference_stderr=stderr)
        frame = stats.to_frame(ms=(1, BUDGET // cost))
        frame = frame[frame.group.isin(["all", *LAYERS])]
        for r in frame.itertuples():
            metric = r.metric
            if metric == "mse":
                if r.M != BUDGET // cost:
                    continue
                metric = "mse_equal_cost"
            rows.append({"estimator": name, "cost": cost, "group": r.group, "metric": metric,
                         "value": r.value, "stderr": r.stderr})
    rows.append({"estimator": "reference", "cost": 3, "group": "all", "metric": "relative_stderr",
                 "value": float(torch.cat([v.flatten() for v in stderr.values()]).norm()
                                / torch.cat([v.flatten() for v in reference.values()]).norm()), "stderr": 0.0})
    return rows


PANELS = (("cosine_mean", "cosine of\nthe mean", None), ("relative_bias", "relative bias\n|E ĝ - g| / |g|", "log"),
          ("sign_agreement_draw", "P(one draw's\nsign right)", None),
          ("mse_equal_cost", f"MSE at {BUDGET}\nloss evaluations", "log"))


def plot(frame, meta, config):
    data = frame[frame.group.isin(list(LAYERS)) & (frame.estimator != "reference")].copy()
    data["layer"] = data.group.map(LAYERS)
    data["trained"] = data.cell_step.map(lambda s: f"step {s}")
    fig, axes = plt.subplots(len(PANELS), 2, figsize=(6.3, 7.0), sharex=True)
    order = list(ESTIMATORS)
    steps = sorted(data.cell_step.unique())
    palette = dict(zip([f"step {s}" for s in steps], sns.color_palette("crest", len(steps))))
    for row, (metric, label, scale) in enumerate(PANELS):
        for col, group in enumerate(LAYERS):
            ax = axes[row, col]
            sub = data[(data.metric == metric) & (data.group == group)]
            sns.pointplot(sub, x="estimator", y="value", hue="trained", order=order, palette=palette, ax=ax,
                          dodge=0.45, linestyle="none", errorbar=t_interval, markersize=3, legend=(row, col) == (0, 1))
            ax.set(ylabel=label if col == 0 else "", xlabel="", yscale=scale or "linear",
                   title=LAYERS[group] if row == 0 else "")
            ax.tick_params(axis="x", rotation=45, labelsize=7)
            if metric == "cosine_mean":
                ax.axhline(1.0, color="black", linewidth=0.5)
    handles, names = axes[0, 1].get_legend_handles_labels()
    axes[0, 1].get_legend().remove()
    fig.align_ylabels(axes[:, 0])
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False, bbox_to_anchor=(0.5, 0.0),
               title="ST-trained to")
    return fig


def numbers(frame, config):
    first, last = frame.cell_step.min(), frame.cell_step.max()

    def value(estimator, metric, group="W1", step=last):
        """Mean over initialisations at one point of training, with its standard error over them."""
        sub = frame[(frame.estimator == estimator) & (frame.metric == metric) & (frame.group == group)
                    & (frame.cell_step == step)]
        if len(sub) == 1:
            return estimate(sub.value.iloc[0], sub.stderr.iloc[0])
        return mean_estimate(sub.value)

    ref = frame[frame.estimator == "reference"]
    mse = frame[(frame.metric == "mse_equal_cost") & (frame.group == "W1") & (frame.cell_step == last)]
    best = mse.groupby("estimator").value.mean().idxmin()
    return {"digitsBestMse": best.replace("_", r"\_"),
            "digitsInitialisations": str(frame.cell_seed.nunique()),
            "digitsLastStep": str(int(last)),
            "digitsStCosineStart": value("st", "cosine_mean", step=first),
            "digitsStCosineLayerOne": value("st", "cosine_mean"),
            "digitsStCosineLayerTwo": value("st", "cosine_mean", "W2"),
            "digitsStSigmoidCosineLayerOne": value("st_sigmoid", "cosine_mean"),
            "digitsReinmaxCosineLayerOne": value("reinmax", "cosine_mean"),
            "digitsGumbelCosineLayerOne": value("gumbel", "cosine_mean"),
            "digitsStRelativeBiasLayerOne": value("st", "relative_bias"),
            "digitsStSignDrawLayerOne": value("st", "sign_agreement_draw"),
            "digitsStSigmoidSignDrawLayerOne": value("st_sigmoid", "sign_agreement_draw"),
            "digitsDisarmSignDrawLayerOne": value("disarm", "sign_agreement_draw"),
            "digitsBestMseValue": value(best, "mse_equal_cost"),
            "digitsStMseValue": value("st", "mse_equal_cost"),
            "digitsDisarmMseValue": value("disarm", "mse_equal_cost"),
            "digitsReferenceRelativeStderr": exact(ref.value.max(), 2),
            "digitsReferenceDraws": str(int(frame.cell_reference_draws.iloc[0])),
            "digitsDraws": str(int(frame.cell_draws.iloc[0]))}


def verify_cells(config):
    """The reduced grid ``make check-figures`` recomputes against the committed rows: the first seed, untrained."""
    return [c for c in cells(config) if c["seed"] == config.seed and c["step"] == 0]


ANALYSIS = Analysis("fig_digits", __doc__.splitlines()[0], cells, compute, plot, numbers, committed=True,
                    verify_cells=verify_cells, identity=("estimator", "group", "metric"))
main = ANALYSIS.main

if __name__ == "__main__":
    main(sys.argv[1:])
