"""Claims of later work about the same estimators, as executable checks."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from .. import losses, problems, units
from ..estimators.score_function import arm_exact_moments
from ..exact import exact_gradient
from ..moments import moments
from ..testing import categorical_problems, networks, single_layer_problems
from . import seed_paper  # noqa: F401  (the seed paper's claims register first)
from .common import describe, exact_mean, gradient_scale
from .registry import CheckSettings, Claim, Verdict, register, search

TOLERANCE = 1e-10


# ---- ST and multilinear losses ----------------------------------------------------------------

def st_factor_gap(problem) -> float:
    """``max |E[ST] p (1 - p) - g|`` over the coordinates of a single layer (``p (1 - p)`` of each
    coordinate's unit), relative to the gradient's scale."""
    mean, g = exact_mean(problem, "st"), exact_gradient(problem)
    x = None if problem.x is None else problem.x[None]
    a = problem.logits(0, x, batch_size=1).reshape(-1)
    factor = torch.sigmoid(a) * torch.sigmoid(-a)
    w_cols, c_cols = problem.layer_slices()[0]
    scaled = mean.clone()
    scaled[c_cols] *= factor
    if w_cols is not None:
        scaled[w_cols] *= factor.repeat_interleave(problem.x.numel())
    return float((scaled - g).abs().max()) / gradient_scale(problem)


def check_st_multilinear(settings: CheckSettings) -> Verdict:
    inside = search(single_layer_problems(max_units=4, loss_kinds=("multilinear",)),
                    lambda p: st_factor_gap(p) > TOLERANCE, settings)
    deep = search(networks(min_layers=2, max_layers=2, max_total_units=5, loss_kinds=("multilinear",)),
                  lambda p: float((exact_mean(p, "st_sigmoid") - exact_gradient(p)).abs().max()) > 1e-6 * gradient_scale(p),
                  settings)
    if inside.found:
        return Verdict("refuted", cases=inside.tried, evidence="a multilinear single layer where ST is not a positive "
                       "multiple of the gradient per coordinate", counterexample=describe(inside.example))
    return Verdict(
        "confirmed", cases=inside.tried + deep.tried, summary="exact on one layer; not on two",
        qualifier="on one layer; on two layers the factor is no longer per coordinate",
        evidence=(f"exact: on {inside.tried} random single layers with multilinear losses, E[ST_j] p_i (1 - p_i) = g_j "
                  f"to 1e-10 on every coordinate (so the sigmoid' variant is exactly unbiased there)"
                  + (f"; it stops on two layers: shrunk example {deep.example.description}, found after {deep.tried} cases"
                     if deep.found else "")),
        data={"two_layer_counterexample": describe(deep.example) if deep.found else None},
    )


# ---- ReinMax and quadratic losses -----------------------------------------------------------

@st.composite
def _quadratic_single_layers(draw):
    base = draw(single_layer_problems(max_units=3, loss_kinds=("multilinear",)))
    n = base.layer_sizes[-1]
    which = draw(st.sampled_from(["readout", "power"]))
    if which == "readout":
        loss = losses.random_readout("squared_error", n, draw(st.integers(1, 3)), seed=draw(st.integers(0, 1000)))
    else:
        loss = losses.power_sum([[draw(st.floats(-3, 3)), draw(st.floats(-3, 3))] for _ in range(n)])
    return problems.Problem(base.kind, base.layers, base.parameters, loss, base.x, base.description)


def check_reinmax_quadratic(settings: CheckSettings) -> Verdict:
    found = search(_quadratic_single_layers(),
                   lambda p: float((exact_mean(p, "reinmax") - exact_gradient(p)).abs().max()) > TOLERANCE * gradient_scale(p),
                   settings)
    if found.found:
        return Verdict("refuted", cases=found.tried, evidence="a quadratic loss where ReinMax is biased",
                       counterexample=describe(found.example))
    categorical = search(categorical_problems(loss_kinds=("quadratic",)),
                         lambda p: float((exact_mean(p, "categorical_reinmax") - exact_gradient(p)).abs().max())
                         > TOLERANCE * gradient_scale(p), settings)
    if categorical.found:
        return Verdict("refuted", cases=found.tried + categorical.tried,
                       evidence="a quadratic loss where the categorical ReinMax is biased",
                       counterexample=describe(categorical.example))
    cubic = problems.independent(losses.power_sum([[0.0, 0.0, 1.0]]), [0.4])
    c_mean, c_grad = exact_mean(cubic, "reinmax"), exact_gradient(cubic)
    return Verdict(
        "confirmed", cases=found.tried + categorical.tried + 1,
        summary=f"exact on one layer, binary and categorical; {float(c_mean / c_grad):.2g} times the gradient for h^3",
        qualifier=f"exact for quadratic losses on one layer, binary or categorical (2 to 5 classes); not beyond degree "
                  f"two ({float(c_mean / c_grad):.2g} times the gradient for h^3)",
        evidence=(f"exact: at temperature 1, on {found.tried} random single layers of binary units with quadratic losses "
                  f"(squared-error readouts, separable quadratics) the ReinMax mean equals the exact gradient to 1e-10, "
                  f"and so does the categorical form (Algorithm 2) on {categorical.tried} random single layers of "
                  f"categorical units of 2 to 5 classes, by enumeration of their K^N states; the degree matters: for "
                  f"f(h) = h^3 at a = 0.4 it gives {float(c_mean):.5f} against {float(c_grad):.5f} (3/2 times)"),
        data={"cubic_reinmax": float(c_mean), "cubic_gradient": float(c_grad)},
    )


# ---- DisARM's variance against ARM's --------------------------------------------------------

DISARM_SUBSTANTIAL_RATIO = 0.5   # "substantial" read as at least halving the trace of the covariance


def check_disarm_variance(settings: CheckSettings) -> Verdict:
    trace_ratios = []   # tr Cov(DisARM) / tr Cov(ARM) on every searched problem where ARM has variance

    def violates(p) -> bool:
        _, arm_var = arm_exact_moments(p)
        disarm_var = moments(p, "disarm", full_covariance=False).var
        if float(arm_var.sum()) > 0:
            trace_ratios.append(float(disarm_var.sum() / arm_var.sum()))
        return bool((disarm_var > arm_var + 1e-12 * (1 + arm_var.abs())).any())

    found = search(single_layer_problems(max_units=4), violates, settings)
    if found.found:
        return Verdict("refuted", cases=found.tried, evidence="a coordinate where DisARM's variance exceeds ARM's",
                       counterexample=describe(found.example))
    toy = problems.toy(0.45, -1.0)
    ratio = float(moments(toy, "disarm").var / arm_exact_moments(toy)[1])
    quartiles = [float(q) for q in np.quantile(trace_ratios, [0.0, 0.25, 0.5, 0.75, 1.0])]
    substantial = float(np.mean(np.array(trace_ratios) <= DISARM_SUBSTANTIAL_RATIO))
    spread = (f"min {quartiles[0]:.3f}, quartiles {quartiles[1]:.2f}, {quartiles[2]:.2f}, {quartiles[3]:.2f}, "
              f"max {quartiles[4]:.4f}")
    return Verdict(
        "confirmed", cases=found.tried,
        summary=(f"exact, per coordinate, one layer (Rao-Blackwellisation); the trace is at least halved on "
                 f"{100 * substantial:.0f}% of the searched layers (median ratio {quartiles[2]:.2f})"),
        qualifier=(f"never more variance, coordinate by coordinate; substantial (the trace at least halved) on "
                   f"{100 * substantial:.0f}% of {len(trace_ratios)} searched single layers, median ratio "
                   f"{quartiles[2]:.2f}, and close to none on some (up to {quartiles[4]:.4f})"),
        evidence=(f"exact per-coordinate variances on {found.tried} random single layers (every loss class): DisARM's "
                  f"never exceeds ARM's (ARM's computed exactly over the 3^N cells of u); DisARM is ARM conditioned on "
                  f"(b, b~), so this is Rao-Blackwellisation, which guarantees no increase, not a size. The ratio of the "
                  f"covariance traces, DisARM's over ARM's, over the {len(trace_ratios)} searched layers where ARM has "
                  f"variance: {spread}; at most {DISARM_SUBSTANTIAL_RATIO:g} (what we take 'substantial' to mean) on "
                  f"{100 * substantial:.0f}% of them. On the toy t = 0.45, a = -1 the ratio is {ratio:.3f}"),
        data={"toy_variance_ratio": ratio, "trace_ratio_quantiles": quartiles, "trace_ratio_substantial_share": substantial,
              "trace_ratio_problems": len(trace_ratios), "trace_ratios": trace_ratios},
    )


# ---- Gumbel: bias and variance against temperature ------------------------------------------

GUMBEL_TEMPERATURES = (4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01)
GUMBEL_TOYS = [(t, a) for t in (0.0, 0.2, 0.45, 0.499, 0.8, 1.0, 1.5) for a in (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)]


def gumbel_toy_moments(t: float, a: float, temperatures=GUMBEL_TEMPERATURES, points: int = 1_000_000):
    """Signed bias against the binary gradient and variance of the Gumbel estimator on the toy, per temperature,
    by the midpoint rule over ``u`` (smooth integrand; error well below 1e-6 at ``points = 1e6`` for
    temperatures >= 0.01)."""
    u = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    g = float(exact_gradient(problems.toy(t, a)))
    out = []
    for tau in temperatures:
        h = units.relaxed(torch.tensor(a, dtype=torch.float64), u, tau)
        d = 2 * (h - t) * h * (1 - h) / tau
        out.append((tau, float(d.mean()) - g, float(d.var())))
    return out


GUMBEL_DRAW_COUNTS = (1, 10, 100)            # M: the trade-off is an interior minimum of MSE(tau) at fixed M
GUMBEL_NETWORK_SEEDS = range(4)              # 3-3-3 networks, squared-error readout, weight scale 2
GUMBEL_NETWORK_DRAWS = 20_000


def gumbel_network_moments(seed: int, draws: int = GUMBEL_NETWORK_DRAWS, temperatures=GUMBEL_TEMPERATURES):
    """Per temperature, on a seeded 3-3-3 network, from ``draws`` draws of the Gumbel estimator: ``(tau, squared
    bias, trace of the covariance, the squared bias's standard error)``, the squared bias against the binary
    gradient with its Monte Carlo part taken out (``squared_bias`` of :mod:`gradstats.metrics`, jackknife error)."""
    from ..metrics import compute_metrics
    from ..montecarlo import mc_moments

    problem = problems.sbn([3, 3, 3], "squared_error", seed=seed, weight_scale=2.0)
    g = exact_gradient(problem)
    out = []
    for tau in temperatures:
        m = mc_moments(problem, "gumbel", num_samples=draws, seed=seed, device="cpu", temperature=tau, progress=False)
        rows = {r.metric: r for r in compute_metrics(m, problem, g, "binary", ms=()) if r.layer == 0 and not r.coordinate}
        out.append((tau, rows["squared_bias"].value, rows["variance_trace"].value, rows["squared_bias"].stderr))
    return out


# Categorical networks (sizes, K, seed), squared-error readout, weight scale 2; the Gumbel-softmax's best temperature
# at one draw lies near 2 to 4 there, so their grid reaches higher.
GUMBEL_CATEGORICAL = (([3, 2, 2], 3, 0), ([3, 2, 1], 4, 1), ([2, 2, 2], 3, 2), ([3, 1, 2], 5, 3))
GUMBEL_CATEGORICAL_TEMPERATURES = (64.0, 32.0, 16.0, 8.0) + GUMBEL_TEMPERATURES[:7]


def gumbel_categorical_moments(sizes, k: int, seed: int, draws: int = GUMBEL_NETWORK_DRAWS,
                               temperatures=GUMBEL_CATEGORICAL_TEMPERATURES):
    """As :func:`gumbel_network_moments`, for the categorical Gumbel-softmax on a network of categorical units of
    ``k`` classes (``gs.problems.categorical(sizes, k, "squared_error", seed=seed, weight_scale=2)``), against the
    exact gradient of its network of one-hot units."""
    from ..metrics import compute_metrics
    from ..montecarlo import mc_moments

    problem = problems.categorical(sizes, num_classes=k, loss="squared_error", seed=seed, weight_scale=2.0)
    g = exact_gradient(problem)
    out = []
    for tau in temperatures:
        m = mc_moments(problem, "categorical_gumbel", num_samples=draws, seed=seed, device="cpu", temperature=tau,
                       progress=False)
        rows = {r.metric: r for r in compute_metrics(m, problem, g, "binary", ms=()) if r.layer == 0 and not r.coordinate}
        out.append((tau, rows["squared_bias"].value, rows["variance_trace"].value, rows["squared_bias"].stderr))
    return out


def _interior_minimum(rows, draw_count: int, temperatures=GUMBEL_TEMPERATURES) -> dict:
    """Where ``bias^2 + tr Cov / M`` is lowest over the temperature grid (rows: ``(tau, bias^2, tr Cov)``)."""
    mse = [b2 + v / draw_count for b2, v in rows]
    best = int(np.argmin(mse))
    return {"best_temperature": temperatures[best], "interior": 0 < best < len(mse) - 1, "mse": mse}


def check_gumbel_temperature(settings: CheckSettings) -> Verdict:
    toy_rows = {(t, a): gumbel_toy_moments(t, a) for t, a in GUMBEL_TOYS}
    network_draws = GUMBEL_NETWORK_DRAWS // (10 if settings.quick else 1)
    networks_rows = {seed: gumbel_network_moments(seed, network_draws) for seed in GUMBEL_NETWORK_SEEDS}
    minima = {m: {"networks": [_interior_minimum([(b2, v) for _, b2, v, _ in rows], m)
                               for rows in networks_rows.values()],
                  "toys": [_interior_minimum([(b * b, v) for _, b, v in rows], m) for rows in toy_rows.values()]}
              for m in GUMBEL_DRAW_COUNTS}
    categorical_rows = {f"{sizes}, K={k}, seed={seed}": gumbel_categorical_moments(sizes, k, seed, network_draws)
                        for sizes, k, seed in GUMBEL_CATEGORICAL}
    categorical = {m: [_interior_minimum([(b2, v) for _, b2, v, _ in rows], m, GUMBEL_CATEGORICAL_TEMPERATURES)
                       for rows in categorical_rows.values()] for m in GUMBEL_DRAW_COUNTS}
    categorical_interior = all(r["interior"] for rows in categorical.values() for r in rows)
    categorical_where = "; ".join(f"M = {m}: " + ", ".join(f"{r['best_temperature']:g}" for r in rows)
                                  for m, rows in categorical.items())
    interior_everywhere = all(r["interior"] for m in minima.values() for r in m["networks"]) and categorical_interior
    best = [[minima[m]["networks"][i]["best_temperature"] for m in GUMBEL_DRAW_COUNTS] for i in range(len(networks_rows))]
    falls_with_draws = all(list(b) == sorted(b, reverse=True) for b in best)
    where = "; ".join(f"M = {m}: best temperature on the networks "
                      + ", ".join(f"{r['best_temperature']:g}" for r in v["networks"])
                      + f", interior on {sum(r['interior'] for r in v['toys'])} of {len(v['toys'])} toys"
                      for m, v in minima.items())
    steps, var_breaks, slopes = [], [], []
    low = [tau for tau in GUMBEL_TEMPERATURES if tau <= 0.05]
    for (t, a), rows in toy_rows.items():
        biases = [abs(b) for tau, b, _ in rows if tau in low]
        if min(biases) > 0:
            slopes.append(float(np.polyfit(np.log(low), np.log(biases), 1)[0]))
        for (tau1, b1, v1), (tau2, b2, v2) in zip(rows, rows[1:]):
            steps.append({"target": t, "logit": a, "from_temperature": tau1, "to_temperature": tau2,
                          "bias": [b1, b2], "rises": abs(b2) > abs(b1), "crosses": b1 * b2 < 0})
            if v2 <= v1:
                var_breaks.append({"target": t, "logit": a, "temperatures": [tau1, tau2], "variance": [v1, v2]})
    rises = [r for r in steps if r["rises"]]
    cases = len(GUMBEL_TOYS)
    # the temperature below which |bias| falls at every step on every toy
    monotone_below = min([r["to_temperature"] for r in rises], default=GUMBEL_TEMPERATURES[0])
    variance_ok = not var_breaks
    # the trade-off holds when the variance always rises and the bias falls over some range of small temperatures
    # (monotone_below above the smallest temperature; the whole grid when the bias never rises)
    status = ("confirmed" if variance_ok and interior_everywhere and monotone_below > GUMBEL_TEMPERATURES[-1]
              else "refuted")
    worst = max(rises, key=lambda r: abs(r["bias"][1]) - abs(r["bias"][0])) if rises else None
    return Verdict(
        status, cases=cases,
        qualifier=(f"the MSE of the mean of M draws is lowest at an interior temperature on every network for M in "
                   f"{', '.join(map(str, GUMBEL_DRAW_COUNTS))}, binary and categorical (3 to 5 classes; best "
                   f"temperatures there {categorical_where})"
                   + (", the best temperature falling as M grows; " if falls_with_draws else "; ") +
                   f"the variance rises at every step; the bias vanishes like the temperature below "
                   f"{monotone_below:g}, but above it the |bias| can rise as the temperature falls "
                   f"({len(rises)} of {len(steps)} steps)"),
        summary=(f"variance rises at every step; |bias| falls monotonically (as O(tau)) only for temperatures "
                 f"<= {monotone_below:g}; above, it rises at {len(rises)} of {len(steps)} steps"),
        counterexample=({"problem": f"toy(t={worst['target']:g}, a={worst['logit']:g})", **worst} if worst else None),
        holds_when=(f"temperatures at most {monotone_below:g}: there the |bias| against the binary gradient falls at "
                    f"every step on all {cases} toys, with fitted order {np.median(slopes):.2f} in the temperature "
                    f"(median over toys, temperatures {', '.join(f'{x:g}' for x in low)})"),
        evidence=(f"a trade-off read as an interior minimum: at a fixed number M of draws, the MSE of their mean, "
                  f"bias^2 + tr Cov / M against the binary gradient, is lowest strictly inside the temperature grid "
                  f"{GUMBEL_TEMPERATURES}. On {len(networks_rows)} seeded 3-3-3 networks (squared-error readout, "
                  f"{network_draws:,} Monte Carlo draws per temperature, the "
                  f"squared bias less its Monte Carlo part) it is "
                  f"{'interior on every network' if interior_everywhere else 'not interior on every network'}: "
                  f"{where}. On {len(categorical_rows)} seeded networks of categorical units of 3 to 5 classes "
                  f"({', '.join(categorical_rows)}; the Gumbel-softmax of Jang et al., temperatures "
                  f"{GUMBEL_CATEGORICAL_TEMPERATURES}) it is "
                  f"{'interior on every one' if categorical_interior else 'not interior on every one'}: "
                  f"best temperatures {categorical_where}. On one unit, "
                  f"quadrature (1e6 midpoints) on {cases} toys (t, a), temperatures {GUMBEL_TEMPERATURES}: the "
                  f"variance rises as the temperature falls at {'every' if variance_ok else 'not every'} step on "
                  f"every toy{'' if variance_ok else f' ({len(var_breaks)} exceptions)'}; the |bias| against the "
                  f"binary gradient rises at {len(rises)} of {len(steps)} steps, all of them starting at temperature "
                  f">= {min([r['from_temperature'] for r in rises], default=float('nan')):g}, {sum(r['crosses'] for r in rises)} "
                  f"of them sign crossings (the bias passes through 0)"
                  + (f"; largest rise {abs(worst['bias'][0]):.4f} -> {abs(worst['bias'][1]):.4f} at t = "
                     f"{worst['target']:g}, a = {worst['logit']:g}, temperature {worst['from_temperature']:g} -> "
                     f"{worst['to_temperature']:g}" if worst else "")
                  + f". Below temperature {monotone_below:g} the |bias| falls at every step, about linearly "
                  f"(fitted order {np.median(slopes):.2f}, median over toys): the trade-off the source describes"),
        data={"bias_rises": rises, "variance_breaks": var_breaks, "monotone_below": monotone_below,
              "steps": len(steps), "toys": cases, "bias_order_median": float(np.median(slopes)),
              "sign_crossings": sum(r["crosses"] for r in rises),
              "interior_minimum": {str(m): v for m, v in minima.items()},
              "interior_everywhere_on_networks": interior_everywhere, "best_temperature_falls_with_draws": falls_with_draws,
              "networks": {str(seed): rows for seed, rows in networks_rows.items()},
              "categorical_networks": categorical_rows,
              "categorical_interior_minimum": {str(m): v for m, v in categorical.items()}},
    )


register(Claim("ST-ML", "on one layer of binary units, the straight-through mean is the exact gradient times a positive "
               "factor 1/(p_i (1 - p_i)) per coordinate when the loss is multilinear on the binary cube",
               "this project's result (proof in the docstring of gradstats.claims.common.st_sign_condition): for a "
               "multilinear f, df/dh_i at a binary h equals f(h_i = 1) - f(h_i = 0)",
               "a single layer of binary units; exact equality E[ST_j] p_i (1 - p_i) = g_j on every coordinate",
               check_st_multilinear, "tests/claims/test_later_work.py::test_st_multilinear"))
register(Claim("REINMAX-Q", "Guided by our findings, we propose ReinMax, which achieves second-order accuracy by integrating "
               "Heun's method, a second-order numerical method for solving ODEs.",
               "Liu, Dong, Liu, Yu & Gao 2023, Bridging Discrete and Backpropagation: Straight-Through and Beyond "
               "(NeurIPS), abstract",
               "second-order accuracy read as exactness for losses of degree two: for binary units and for categorical "
               "units of 2 to 5 classes (the paper's Algorithm 2), one layer, temperature 1, E[ReinMax] equals the "
               "exact gradient when f is quadratic in the units' values",
               check_reinmax_quadratic, "tests/claims/test_later_work.py::test_reinmax_quadratic"))
register(Claim("DISARM-V", "We show that ARM can be improved by analytically integrating out the randomness introduced by "
               "the augmentation process, guaranteeing substantial variance reduction.",
               "Dong, Mnih & Tucker 2020, DisARM: An Antithetic Gradient Estimator for Binary Latent Variables "
               "(NeurIPS), abstract",
               "the guarantee: DisARM's variance is at most ARM's on every coordinate, for one layer of binary units "
               "and any loss; 'substantial' is a size no theorem gives for every problem: we take it as a covariance "
               "trace at least halved and report on how many of the searched problems it holds",
               check_disarm_variance, "tests/claims/test_later_work.py::test_disarm_variance"))
register(Claim("GUMBEL-T", "For learning, there is a tradeoff between small temperatures, where samples are close to one-hot "
               "but the variance of the gradients is large, and large temperatures, where samples are smooth but the "
               "variance of the gradients is small (Figure 1).",
               "Jang, Gu & Poole 2017, Categorical Reparameterization with Gumbel-Softmax (ICLR), sec. 2; the same "
               "trade-off in Maddison, Mnih & Teh 2017 (Concrete)",
               "for the binary Concrete (Gumbel-sigmoid) estimator on one unit with f(b) = (b - t)^2: as the temperature "
               "falls, the variance of the gradient rises and the samples, so the gradient's mean, approach the binary "
               "ones (its bias against the binary gradient vanishes); we report the temperatures where the bias falls "
               "monotonically; on networks of binary and of categorical units (3 to 5 classes), the MSE of the mean "
               "of M draws is lowest at an interior temperature",
               check_gumbel_temperature, "tests/claims/test_later_work.py::test_gumbel_temperature"))
