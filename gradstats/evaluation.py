"""``gs.evaluate``: every metric of several estimators on one problem, as a tidy DataFrame.

Estimators evaluated together share their uniforms (one seed for all), so
differences between them are measured with common random numbers. Discrete
estimators get exact values (and a Monte Carlo pass for the cosine of the
mean of ``M > 1`` draws, which has no exact form here); continuous ones get
Monte Carlo values with jackknife standard errors.

References: ``"binary"`` is the exact gradient of the binary network's
objective; ``"own"`` that of the objective the estimator's own unit defines:
the binary one for estimators of the binary neuron, the exact STS gradient
for ``sts``; for an objective that cannot be enumerated (the noisy
rectifier's, a relaxation's) the Monte Carlo mean of the estimator itself
from an independent seed, which is unbiased for it because those estimators
are pathwise derivatives of their own objective (the row says ``mc``, and the
bias's standard error includes the reference's).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from . import enumeration
from .estimators import Estimator, get
from .exact import exact_gradient, exact_moments
from .metrics import compute_metrics
from .montecarlo import mc_moments
from .numerics import positive_int
from .problems import Problem, check_problem

__all__ = ["evaluate", "check_evaluate_arguments", "REFERENCES"]

REFERENCES = ("binary", "own")
_OWN_REFERENCE_SEED_OFFSET = 1_000_003


def _enumerable(problem: Problem, max_states: int) -> bool:
    return 2**problem.num_units <= max_states


def _scope(layer: int, coordinate: str) -> str:
    """What a metric's row aggregates, in words."""
    return "coordinate" if coordinate else "all layers" if layer == 0 else "layer"


def check_evaluate_arguments(**kwargs) -> None:
    """The arguments of :func:`evaluate` other than the problem and estimators, checked without computing anything
    (what :func:`gradstats.sweep` does before its tasks run): known names, references, the method, positive
    sizes. A ValueError names the first that is wrong."""
    import inspect

    names = [p for p in inspect.signature(evaluate).parameters if p not in ("problem", "estimators")]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise ValueError(f"unknown argument(s) of gs.evaluate: {unknown}; it takes {', '.join(names)}")
    if "reference" in kwargs:
        _references(kwargs["reference"])
    if "method" in kwargs:
        _method(kwargs["method"])
    if "num_samples" in kwargs:
        positive_int("num_samples", kwargs["num_samples"])
    for m in kwargs.get("ms", ()):
        positive_int("ms entries", m)
    if kwargs.get("chunk_size") is not None:
        positive_int("chunk_size", kwargs["chunk_size"])


def _references(reference) -> list[str]:
    refs = [reference] if isinstance(reference, str) else list(reference)
    for r in refs:
        if r not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES} (or several), got {r!r}")
    return refs


def _method(method) -> str:
    if method not in ("auto", "exact", "mc"):
        raise ValueError(f"method must be 'auto', 'exact' or 'mc', got {method!r}")
    return method


def evaluate(problem: Problem, estimators: str | Iterable, reference: str | Iterable[str] = "binary", *,
             num_samples: int = 100_000, ms: tuple[int, ...] = (1, 10, 100, 1000), seed: int = 0, device="auto",
             chunk_size: int | None = None, method: str = "auto", options: Mapping[str, Mapping[str, Any]] | None = None,
             max_states: int = enumeration.DEFAULT_MAX_STATES, progress: bool | None = None) -> pd.DataFrame:
    """Tidy metrics: one row per (estimator, reference, metric, layer[, coordinate][, M]).

    Parameters
    ----------
    estimators
        Names, :class:`Estimator` objects or callables.
    reference
        ``"binary"``, ``"own"``, or both.
    num_samples
        Monte Carlo draws per estimator (continuous noise; cosine of ``M`` draws).
    ms
        The ``M`` of ``mse`` and ``cosine_m``.
    method
        ``"auto"`` (exact where the noise is discrete and the states enumerable),
        ``"exact"`` or ``"mc"``.
    options
        Estimator name -> its options.

    Columns: ``estimator, options, reference, reference_method, metric, scope, layer, coordinate, M, value,
    stderr, method, num_samples, loss_evals_per_draw, seconds_per_draw, n_excluded``; ``n_excluded`` is, on the
    sign-agreement rows, how many coordinates they left out (structural zeros: 0 in the reference and in every
    draw, see :mod:`gradstats.metrics`; missing on other rows); ``options`` is the JSON of the options
    given (``"{}"`` for none), so frames of one estimator with several option sets can be concatenated.
    ``scope`` says in words what a row aggregates: ``"all layers"`` (``layer`` 0, ``coordinate`` ``""``),
    ``"layer"`` (one layer's coordinates together) or ``"coordinate"`` (one coordinate). The documentation's
    guide "Reading the tidy table" describes every column.
    """
    check_problem(problem)
    refs = _references(reference)
    _method(method)
    n = positive_int("num_samples", num_samples)
    ms = tuple(positive_int("ms entries", m) for m in ms)
    if isinstance(estimators, (str, Estimator)) or callable(estimators):
        estimators = [estimators]
    try:
        ests: list[Estimator] = [get(e) for e in estimators]
    except TypeError as err:
        raise ValueError(f"estimators must be a name, an Estimator, a callable or a list of them, "
                         f"got {type(estimators).__name__}") from err
    if not ests:
        raise ValueError("estimators is empty: name at least one (gs.estimators.names() lists them)")
    names = [e.name for e in ests]
    if len(set(names)) != len(names):
        raise ValueError(f"estimators names one estimator twice: {names}")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options must be a dict estimator name -> its options, got {type(options).__name__}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"options names estimator(s) {unknown} that are not being evaluated ({', '.join(names)})")
    for name, opts in options.items():
        if not isinstance(opts, Mapping):
            raise ValueError(f"options[{name!r}] must be a dict of that estimator's options, got {type(opts).__name__}")
    mc_kw = dict(num_samples=n, seed=seed, device=device, progress=progress)
    if chunk_size is not None:
        mc_kw["chunk_size"] = chunk_size
    binary_ref = exact_gradient(problem, "binary", max_states=max_states) if _enumerable(problem, max_states) else None
    frames = []
    for est in ests:
        opts = dict(options.get(est.name, {}))
        references, ref_method, ref_stderr = {}, {}, {}
        for r in refs:
            objective = "binary" if r == "binary" else est.objective
            if objective == "binary":
                if binary_ref is None:
                    raise ValueError(f"the binary reference needs 2^{problem.num_units} states, over max_states = {max_states:,}")
                references[r], ref_method[r] = binary_ref, "exact"
            elif objective == "sts":
                references[r], ref_method[r] = exact_gradient(problem, "sts", max_states=max_states), "exact"
            else:
                own = mc_moments(problem, est, **{**mc_kw, "seed": seed + _OWN_REFERENCE_SEED_OFFSET},
                                 full_covariance=False, **opts)
                references[r], ref_method[r], ref_stderr[r] = own.mean, "mc", own.mean_stderr
        use_exact = method != "mc" and est.exact_possible(problem, opts, max_states)
        if method == "exact" and not use_exact:
            why = "continuous noise" if est.noise != "discrete" else "too many states or layers"
            raise ValueError(f"estimator {est.name!r} cannot be evaluated exactly on {problem.description} ({why}); "
                             "use method='auto'")
        if use_exact:
            main = exact_moments(problem, est, references=references, max_states=max_states, **opts)
            extra = mc_moments(problem, est, references=references, ms=ms, full_covariance=False, **mc_kw, **opts) \
                if any(m > 1 for m in ms) else None
        else:
            main = mc_moments(problem, est, references=references, ms=ms, full_covariance=False, **mc_kw, **opts)
            extra = None
        seconds_per_draw = (extra or main).seconds / n if (extra or main).num_samples else float("nan")
        options_json = json.dumps(opts, sort_keys=True, default=repr)
        for r, g in references.items():
            rows = compute_metrics(main, problem, g, r, ms, reference_stderr=ref_stderr.get(r))
            if extra is not None:
                rows += [v for v in compute_metrics(extra, problem, g, r, ms) if v.metric == "cosine_m" and v.m > 1]
            frame = pd.DataFrame([{
                "estimator": est.name, "options": options_json, "reference": r, "reference_method": ref_method[r],
                "metric": v.metric, "scope": _scope(v.layer, v.coordinate),
                "layer": v.layer, "coordinate": v.coordinate, "M": v.m, "value": v.value, "stderr": v.stderr,
                "method": "mc" if (v.metric == "cosine_m" and v.m and v.m > 1) else main.method,
                "num_samples": n if (main.method == "mc" or (v.metric == "cosine_m" and v.m and v.m > 1)) else None,
                "loss_evals_per_draw": main.loss_evals_per_draw, "seconds_per_draw": seconds_per_draw,
                "n_excluded": v.excluded,
            } for v in rows])
            frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["M"] = out["M"].astype("Int64")
    out["num_samples"] = out["num_samples"].astype("Int64")
    out["n_excluded"] = out["n_excluded"].astype("Int64")
    return out
