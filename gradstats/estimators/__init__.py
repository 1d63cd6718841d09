"""Estimator registry: :func:`names`, :func:`get`, :func:`register`, the builder :func:`pathwise`.

The built-in estimators come in two families, each defined once as its per-unit rule:
:mod:`.surrogate` (pathwise: back-propagation with a surrogate derivative; st, st_sigmoid, sts,
noisy_rectifier, gumbel, st_gumbel, reinmax) and :mod:`.score_function` (score-function and antithetic,
unbiased; reinforce, reinforce_loo, arm, disarm, local_expectation), with :mod:`.control_variates` (rebar,
relax) and :mod:`.multi_sample` (arms, double_cv) after them. :mod:`.categorical` holds the estimators of
categorical units (``categorical_*``), which take only :func:`gradstats.problems.categorical` problems.
:mod:`.base` holds the contract; ``names(kind=...)`` lists those that take a kind of problem.
"""

from . import categorical, control_variates, multi_sample, score_function, surrogate
from .base import (
    Estimator,
    NonFiniteError,
    backpropagate,
    backpropagate_loss,
    check_gradient,
    check_options,
    get,
    make_pathwise,
    names,
    pathwise,
    register,
    resolve_options,
    sample_trajectory,
)
from .score_function import RunningBaseline, optimal_baseline

__all__ = [
    "BUILT_IN",
    "Estimator",
    "NonFiniteError",
    "RunningBaseline",
    "backpropagate",
    "backpropagate_loss",
    "check_gradient",
    "get",
    "make_pathwise",
    "names",
    "optimal_baseline",
    "pathwise",
    "register",
    "check_options",
    "resolve_options",
    "sample_trajectory",
    "categorical",
    "control_variates",
    "multi_sample",
    "score_function",
    "surrogate",
]

# The order in which tables, figures and the CLI list them (the seed paper's first).
BUILT_IN = (
    score_function.REINFORCE,
    surrogate.ST,
    surrogate.ST_SIGMOID,
    surrogate.STS_ESTIMATOR,
    surrogate.NOISY_RECTIFIER,
    surrogate.GUMBEL,
    surrogate.ST_GUMBEL,
    score_function.ARM,
    score_function.DISARM,
    score_function.REINFORCE_LOO,
    surrogate.REINMAX,
    score_function.LOCAL_EXPECTATION,
    surrogate.GUMBEL_RAO,
    control_variates.REBAR,
    control_variates.RELAX,
    multi_sample.ARMS,
    multi_sample.DOUBLE_CV,
    categorical.CATEGORICAL_ST,
    categorical.CATEGORICAL_GUMBEL,
    categorical.CATEGORICAL_ST_GUMBEL,
    categorical.CATEGORICAL_REINMAX,
    categorical.CATEGORICAL_GUMBEL_RAO,
    categorical.CATEGORICAL_REINFORCE_LOO,
    categorical.CATEGORICAL_CARMS,
)
for _estimator in BUILT_IN:
    register(_estimator)
