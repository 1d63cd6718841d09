r"""Metrics of an estimator against a reference gradient, with errors.

``g`` is the reference, :math:`\mu = E[\hat g]`, :math:`\Sigma = \mathrm{Cov}[\hat g]`.

=====================  =====================================================================
metric                 definition
=====================  =====================================================================
bias                   :math:`\mu_j - g_j` per coordinate
bias_norm              :math:`\lVert \mu - g \rVert` (plug-in: noise pushes it up)
relative_bias          :math:`\lVert \mu - g \rVert / \lVert g \rVert` (plug-in)
squared_bias           :math:`\lVert \mu - g \rVert^2`, debiased: :math:`\lVert \bar g - g \rVert^2 - \mathrm{tr}\,\hat\Sigma / n`
                       less the reference's own variance (can be negative; its error covers 0 when unbiased)
relative_squared_bias  ``squared_bias`` :math:`/ \lVert g \rVert^2`, the headline measure of bias
variance               :math:`\Sigma_{jj}` per coordinate
variance_trace         :math:`\mathrm{tr}\,\Sigma`
mse                    :math:`\lVert \mu - g \rVert^2 + \mathrm{tr}\,\Sigma / M` (mean of ``M`` draws)
cosine_mean            :math:`\cos(\mu, g)`
cosine_draw            :math:`E[\cos(\hat g, g)]` for one draw
cosine_m               :math:`E[\cos(\bar g_M, g)]`, the mean of ``M`` draws (Monte Carlo)
sign_agreement_mean    fraction of coordinates with :math:`\mathrm{sign}\,\mu_j = \mathrm{sign}\,g_j` (:func:`sign_agreement`)
sign_agreement_draw    mean over ``j`` of :math:`P(\mathrm{sign}\,\hat g_j = \mathrm{sign}\,g_j)`
                       (both leave out structural zeros, below; ``excluded`` counts what they left out)
descent                :math:`P(\langle \hat g, g \rangle > 0)`
snr                    :math:`|\mu_j| / \sqrt{\Sigma_{jj}}` per coordinate
=====================  =====================================================================

Every metric also exists per layer (``layer`` 1..L; 0 is all coordinates).
Exact moments give exact values (``stderr`` 0). Monte Carlo values come with
the delete-one-batch jackknife standard error over the contiguous batches of
:class:`~gradstats.accumulators.Moments` (Efron & Stein 1981), which also
serves the nonlinear metrics (norms, cosines). With Monte Carlo moments the
squared bias in ``squared_bias`` and ``mse`` is the unbiased :math:`\lVert \bar g - g \rVert^2 - \mathrm{tr}\,\hat\Sigma / n`
(the plug-in ``bias_norm`` and ``relative_bias`` are kept as they are, and are biased upwards by noise: an
unbiased estimator's ``relative_bias`` is about :math:`\sqrt{\mathrm{tr}\,\Sigma / n} / \lVert g \rVert`, many
standard errors from 0).
Conventions at the edges (values, never silently 0):

* ``sign(0) = 0``: a zero estimate agrees only with a zero gradient; a value within
  ``SIGN_TOLERANCE`` (1e-9) times the larger of the two vectors' largest magnitudes is rounding and
  counts as 0 (:func:`sign_agreement`); a single draw's sign is its raw sign, so an estimator's
  draw that is 0 in exact arithmetic must be 0 in floating point: passes that reach the same output
  are given one loss value (:func:`~gradstats.estimators.score_function.tied_losses`), and
  leave-one-out's terms of a unit whose samples agree are 0, on every device. A zero that comes
  from a coincidence of loss values at *different* outputs (a loss symmetric in some units, or
  leave-one-out with ``k >= 3`` whose losses satisfy a linear relation) keeps the loss's rounding,
  about 1e-16 of it, and that residue's sign counts;
* the cosine of a zero vector is 0; cosines of tiny or huge vectors are exact (both vectors
  are rescaled by their largest entry first, with no eps clamp);
* ``relative_bias`` against a zero reference is ``inf`` (0 when the bias is 0 too); norms are computed on
  vectors rescaled by their largest entry, so a gradient of 1e-200 has its true relative bias (its
  squares would underflow to 0); per-draw cosines rescale each draw by a power of two first;
* with one Monte Carlo draw the variance (``n - 1`` denominator) is NaN, and so are the metrics that
  use it (``variance_trace``, ``mse``, ``snr``): never 0;
* ``snr`` of a coordinate with zero variance is ``inf`` when its mean is nonzero, 0 when the
  mean is 0;
* a *structural zero* is a coordinate whose reference and every draw are exactly 0 (the weight of an
  input that is 0 in every example, such as a border pixel; :func:`structural_zero_coordinates`). It would agree in
  sign for free, so both sign agreements leave it out by default (``structural_zeros="exclude"``; the
  row's ``excluded`` says how many coordinates were left out, with an estimated reference's unresolved
  ones); ``"count"`` keeps the old convention.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .accumulators import Moments, Summary
from .numerics import SIGN_TOLERANCE, cosine, float64_vector, norm, ratio_or_inf, signs
from .problems import Problem

__all__ = ["MetricValue", "compute_metrics", "COORDINATE_METRICS", "SCALAR_METRICS", "SIGN_TOLERANCE", "signs",
           "sign_scale", "sign_agreement", "wrong_sign_coordinates", "nonzero_coordinates", "structural_zero_coordinates",
           "METRIC_ALIASES", "metric_name"]

COORDINATE_METRICS = ("bias", "variance", "snr")
SCALAR_METRICS = ("bias_norm", "relative_bias", "squared_bias", "relative_squared_bias", "variance_trace", "mse",
                  "cosine_mean", "cosine_draw", "cosine_m", "sign_agreement_mean", "sign_agreement_draw", "descent")
# other names of the debiased bias (the design's first names for them): metric_name() maps them to the table's
METRIC_ALIASES = {"bias2_debiased": "squared_bias", "relative_bias_debiased": "relative_squared_bias"}


def metric_name(name: str) -> str:
    """The tidy table's name of metric ``name``, which may be one of :data:`METRIC_ALIASES`; a ValueError lists the
    names there are."""
    name = METRIC_ALIASES.get(name, name)
    if name not in SCALAR_METRICS + COORDINATE_METRICS:
        raise ValueError(f"unknown metric {name!r}; the metrics are {', '.join(SCALAR_METRICS + COORDINATE_METRICS)} "
                         f"(aliases: {', '.join(METRIC_ALIASES)})")
    return name


def sign_scale(*vectors: Tensor) -> float:
    """The magnitude that sign tolerances are relative to: the largest entry of any of ``vectors``."""
    return max([float(v.abs().max()) for v in vectors if v.numel()] + [0.0])


def sign_agreement(estimate: Tensor, reference: Tensor, scale: float | None = None) -> Tensor:
    """Per coordinate, whether ``estimate`` and ``reference`` have the same sign (bool ``[D]``), each sign taken
    with :func:`~gradstats.numerics.signs`, relative to ``scale`` (default :func:`sign_scale` of both)."""
    scale = sign_scale(estimate, reference) if scale is None else scale
    return signs(estimate, scale) == signs(reference, scale)


def wrong_sign_coordinates(estimate: Tensor, reference: Tensor, scale: float | None = None) -> Tensor:
    """Coordinates where the reference is nonzero and the estimate's sign differs from it (bool ``[D]``)."""
    scale = sign_scale(estimate, reference) if scale is None else scale
    return (signs(reference, scale) != 0) & ~sign_agreement(estimate, reference, scale)


def nonzero_coordinates(summary: Summary, reference: Tensor, counted: str | None = None) -> Tensor:
    """Coordinates where some draw (or enumerated outcome of positive weight) is not 0 (bool ``[D]``): mean or
    centred second moment not 0. With ``counted``, the name of a reference (``reference``) whose sign agreement the
    summary counts draw by draw (Monte Carlo), also where the counts see a draw that is not 0: one agreeing with a
    nonzero sign of the reference, or not agreeing with a sign of 0 (:func:`~gradstats.numerics.signs`). A draw
    below about 1e-154 has a square that underflows, and a mean that can round to 0; the counts still see it."""
    nonzero = (summary.mean != 0) | (summary.m2 != 0)
    if counted is not None and counted in summary.sign_agree:
        agree = summary.sign_agree[counted]
        nonzero |= torch.where(signs(reference) == 0, agree < summary.weight, agree > 0)
    return nonzero


def structural_zero_coordinates(summary: Summary, reference: Tensor, counted: str | None = None) -> Tensor:
    """Coordinates whose reference and every draw are exactly 0 (bool ``[D]``): reference 0 and no draw (and no
    enumerated outcome of positive weight) other than 0, as :func:`nonzero_coordinates` tells with ``counted``."""
    return (reference == 0) & ~nonzero_coordinates(summary, reference, counted)


_STRUCTURAL_ZEROS = ("exclude", "count")


@dataclass(frozen=True)
class MetricValue:
    """One metric's value; ``layer`` 0 is all coordinates, ``coordinate`` is set for per-coordinate metrics;
    ``excluded`` is, for the sign agreements, how many of the layer's coordinates were left out (structural
    zeros, and an estimated reference's unresolved coordinates), ``None`` for other metrics."""

    metric: str
    value: float
    stderr: float
    layer: int = 0
    coordinate: str = ""
    m: int | None = None
    excluded: int | None = None


def _square(value: float, what: str) -> float:
    """``value * value`` for a finite ``value`` whose square float64 holds, else a ValueError naming ``what`` (a
    squared bias of inf would make the debiased bias and the MSE inf or NaN, unsaid)."""
    square = value * value
    if math.isfinite(value) and not math.isfinite(square):
        raise ValueError(f"{what} is {value:.3g}: its square overflows float64 (beyond about 1.3e154); rescale the "
                         "gradients and the reference")
    return square


def _values(s: Summary, exact: bool, problem: Problem, reference: Tensor, name: str,
            ms: tuple[int, ...], reference_var: Tensor | None, counted_signs: Tensor) -> dict[tuple, float | Tensor]:
    """Every metric from a summary, keyed by ``(metric, layer, m)``; per-coordinate ones are ``[D]`` tensors.
    ``reference_var`` (the squared standard error of an estimated reference) is taken out of the squared bias;
    the sign agreements count the coordinates in ``counted_signs`` (bool ``[D]``, fixed by all the draws, so
    that the jackknife's leave-one-out values count the same ones)."""
    n = s.count
    var = s.m2 / s.weight if exact else s.m2 / (n - 1) if n > 1 else torch.full_like(s.m2, math.nan)
    mean = s.mean
    bias = mean - reference
    sd = var.sqrt()
    snr = torch.where(sd > 0, mean.abs() / torch.where(sd > 0, sd, 1.0), torch.where(mean != 0, torch.inf, 0.0))
    out: dict[tuple, float | Tensor] = {("bias", 0, None): bias, ("variance", 0, None): var, ("snr", 0, None): snr}
    layers = problem.coordinate_layers().to(mean.device)
    agree = sign_agreement(mean, reference)
    for layer in range(problem.num_layers + 1):
        sel = torch.ones_like(layers, dtype=torch.bool) if layer == 0 else layers == layer
        if layer > 0 and problem.num_layers == 1:
            continue
        b, g, mu, v = bias[sel], reference[sel], mean[sel], var[sel]
        trace = float(v.sum())
        bias_norm, reference_norm = norm(b), norm(g)
        bias2 = _square(bias_norm, "the norm of the mean minus the reference")
        out[("bias_norm", layer, None)] = bias_norm
        out[("relative_bias", layer, None)] = ratio_or_inf(bias_norm, reference_norm)
        out[("variance_trace", layer, None)] = trace
        sq_bias = bias2 if exact else bias2 - trace / n
        if reference_var is not None:
            sq_bias -= float(reference_var[sel].sum())
        out[("squared_bias", layer, None)] = sq_bias
        out[("relative_squared_bias", layer, None)] = ratio_or_inf(sq_bias, _square(reference_norm, "the reference's norm"))
        for m in ms:
            out[("mse", layer, m)] = sq_bias + trace / m
        out[("cosine_mean", layer, None)] = cosine(mu, g)
        counted = sel & counted_signs
        out[("sign_agreement_mean", layer, None)] = float(agree[counted].to(torch.float64).mean())
        if name in s.sign_agree:
            out[("sign_agreement_draw", layer, None)] = float(s.sign_agree[name][counted].mean() / s.weight)
            out[("cosine_draw", layer, None)] = float(s.cosine[name][layer] / s.weight)
            out[("descent", layer, None)] = float(s.descent[name][layer] / s.weight)
            for m in ms:
                if m == 1:
                    out[("cosine_m", layer, 1)] = out[("cosine_draw", layer, None)]
                elif s.groups.get(m, 0) > 0:
                    out[("cosine_m", layer, m)] = float(s.cosine_m[name][m][layer] / s.groups[m])
    return out


def _with_reference_error(errors: dict, full: dict, bias: Tensor, reference: Tensor, reference_var: Tensor,
                          problem: Problem, exact: bool) -> dict:
    r"""Errors of ``bias_norm``, ``squared_bias``, ``relative_squared_bias`` and ``mse`` with an estimated
    reference's variance added in quadrature (delta method: :math:`\partial \lVert b \rVert / \partial g_j = -b_j /
    \lVert b \rVert`, :math:`\partial \lVert b \rVert^2 / \partial g_j = -2 b_j`, and for :math:`B / G` with
    :math:`G = \lVert g \rVert^2`: :math:`-(2 b_j G + 2 B g_j) / G^2`); the reference is independent of the draws."""
    out = dict(errors)
    layers = problem.coordinate_layers().to(bias.device)
    for key in full:
        metric, layer = key[0], key[1]
        if metric not in ("bias_norm", "squared_bias", "relative_squared_bias", "mse"):
            continue
        sel = torch.ones_like(layers, dtype=torch.bool) if layer == 0 else layers == layer
        b, var = bias[sel], reference_var[sel]
        if metric == "bias_norm":
            norm = float(b.norm())
            extra = float((b.square() * var).sum()) / (norm * norm) if norm > 0 else float(var.sum())
        elif metric == "relative_squared_bias":
            g = reference[sel]
            scale = float(g.square().sum())
            if scale == 0:
                continue
            # (2 b G + 2 B g) / G^2 as (2 b + 2 B g / G) / G: G^2 overflows float64 where |g| passes 1e77
            extra = float((((2 * b + 2 * full[("squared_bias", layer, None)] * g / scale) / scale).square() * var).sum())
        else:
            extra = float((4 * b.square() * var).sum())
        base = out.get(key, 0.0 if exact else math.nan)
        out[key] = math.sqrt(float(base) * float(base) + extra)
    return out


def _leave_one_out(batches: list[Summary]) -> Iterator[Summary]:
    """For each batch in turn, the merge of all the others: batches ``0..i-1`` merged left to right, then merged with
    batches ``i+1..k-1`` merged right to left. The suffixes are computed first and each is dropped once used, the
    prefix grows as it goes, so about ``k`` summaries are held at once (not ``2k``, nor the ``k`` merges). The
    metrics read two moments, so the merges leave out the third and fourth (the same mean and second moment)."""
    batches = [replace(b, m3=None, m4=None) for b in batches]
    k = len(batches)
    after: list[Summary | None] = [None] * k      # after[i]: batches i..k-1 merged (for i >= 1)
    after[k - 1] = batches[k - 1]
    for i in range(k - 2, 0, -1):
        after[i] = batches[i].merged(after[i + 1])
    before = None                                 # batches 0..i-1 merged
    for i in range(k):
        if i == 0:
            yield after[1]
        elif i == k - 1:
            yield before
        else:
            yield before.merged(after[i + 1])
        if i + 1 < k:
            after[i + 1] = None
        before = batches[0] if before is None else before.merged(batches[i])


def compute_metrics(moments: Moments, problem: Problem, reference: Tensor, reference_name: str,
                    ms: tuple[int, ...] = (1, 10, 100, 1000), reference_stderr: Tensor | None = None,
                    structural_zeros: str = "exclude", per_coordinate: bool = True) -> list[MetricValue]:
    """Every metric of ``moments`` against ``reference`` (its per-draw metrics need
    ``moments`` to have been computed with ``references={reference_name: reference}``).

    A reference that is itself a Monte Carlo estimate passes its ``reference_stderr``: the
    per-coordinate bias's error adds it in quadrature (the two are independent), so do
    ``bias_norm``'s and ``mse``'s (delta method), and ``mse``'s squared bias has the reference's
    variance taken out, as it has the estimate's; the sign agreements count only the coordinates
    whose reference sign is resolved (:math:`|g_j| > 3` standard errors; NaN when none is). Other
    metrics' errors are conditional on the reference. ``structural_zeros``: ``"exclude"`` (default) leaves
    the coordinates that are 0 in the reference and in every draw out of the sign agreements,
    ``"count"`` counts them as agreeing; their rows say how many coordinates were left out (``excluded``).
    ``per_coordinate=False`` leaves out the per-coordinate rows (bias, variance, snr), and with them their
    jackknife, which holds ``3 D`` numbers a batch.
    """
    if structural_zeros not in _STRUCTURAL_ZEROS:
        raise ValueError(f"structural_zeros must be one of {_STRUCTURAL_ZEROS}, got {structural_zeros!r}")
    reference = float64_vector("reference", reference, problem.num_parameters)
    if reference_stderr is not None:
        reference_stderr = float64_vector("reference_stderr", reference_stderr, problem.num_parameters)
    exact = moments.method == "exact"
    reference_var = None if reference_stderr is None else reference_stderr.square()
    statistics = moments.statistics
    # an estimated reference's sign counts only where it is resolved (|g_j| > 3 standard errors)
    counted = (torch.ones_like(reference, dtype=torch.bool) if reference_var is None
               else reference.abs() > 3 * reference_var.sqrt())
    if structural_zeros == "exclude":
        counted = counted & ~structural_zero_coordinates(statistics, reference, None if exact else reference_name)
    full = _values(statistics, exact, problem, reference, reference_name, ms, reference_var, counted)
    if not per_coordinate:
        full = {key: value for key, value in full.items() if not isinstance(value, Tensor)}
    errors: dict[tuple, float | Tensor] = {}
    if not exact and len(moments.batches) >= 2:
        leave_one_out: dict[tuple, list] = {key: [] for key in full}   # what the errors need, and no more
        for rest in _leave_one_out(moments.batches):
            values = _values(rest, False, problem, reference, reference_name, ms, reference_var, counted)
            for key, vals in leave_one_out.items():
                if key in values:
                    vals.append(values[key])
        for key, vals in leave_one_out.items():
            if len(vals) < 2:
                continue
            stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in vals])
            errors[key] = ((len(vals) - 1) / len(vals) * (stacked - stacked.mean(0)).square().sum(0)).sqrt()
    if reference_var is not None:
        errors = _with_reference_error(errors, full, moments.mean - reference, reference, reference_var, problem, exact)
    names = problem.coordinate_names() if per_coordinate else None
    layers = problem.coordinate_layers()
    excluded = {layer: int((~counted & ((layers == layer) if layer else True)).sum())
                for layer in range(problem.num_layers + 1)}
    rows = []
    for (metric, layer, m), value in full.items():
        err = errors.get((metric, layer, m), 0.0 if exact else math.nan)
        if metric == "bias" and not exact:
            err = moments.mean_stderr  # the exact standard error of a mean, rather than its jackknife twin
        if metric == "bias" and reference_stderr is not None:
            err = (torch.as_tensor(err, dtype=torch.float64).square() + reference_stderr.square()).sqrt()
        if isinstance(value, Tensor):
            err = torch.as_tensor(err, dtype=torch.float64).expand_as(value)
            rows += [MetricValue(metric, float(v), float(e), int(lay), c)
                     for v, e, c, lay in zip(value.tolist(), err.tolist(), names, problem.coordinate_layers().tolist())]
        else:
            rows.append(MetricValue(metric, float(value), float(err), layer, "", m,
                                    excluded[layer] if metric.startswith("sign_agreement") else None))
    return rows
