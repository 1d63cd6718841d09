"""Small numerical helpers every layer of the library uses (imports nothing from gradstats)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["safe_divide", "cosine", "norm", "ratio_or_inf", "coordinate_labels", "summary_text", "positive_int",
           "positive_finite", "seed_value", "optional_bool", "float64_vector", "float64_references", "MAX_SEED",
           "SIGN_TOLERANCE", "signs", "lower_median8"]


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (a ratio of averages before any weight has arrived)."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, 1.0), 0.0)


SIGN_TOLERANCE = 1e-9


def signs(values: Tensor, scale: float | None = None) -> Tensor:
    """``sign`` with magnitudes up to ``SIGN_TOLERANCE * scale`` counted as 0: rounding, not sign (``scale``
    defaults to ``max |values|``). Sign agreement is defined on it in :mod:`gradstats.metrics`."""
    if scale is None:
        scale = float(values.abs().max()) if values.numel() else 0.0
    return torch.where(values.abs() <= SIGN_TOLERANCE * scale, 0.0, values.sign())


# the 19 comparators of the optimal sorting network of eight inputs, in six layers (Knuth, The Art of Computer
# Programming, vol. 3, section 5.3.4, Fig. 49); that it sorts every input is tested on all 256 inputs of 0s and 1s
SORT8 = ((0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7), (0, 1), (2, 3), (4, 5), (6, 7), (2, 4),
         (3, 5), (1, 4), (3, 6), (1, 2), (3, 4), (5, 6))


def lower_median8(rows: Tensor) -> Tensor:
    """The lower median over dim 0 of ``rows`` (``[k, ...]``, ``1 <= k <= 8``): the ``(k - 1) // 2``-th smallest,
    what ``rows.median(0)`` gives, by the eight-input sorting network :data:`SORT8` on whole rows (38 elementwise
    minima and maxima; ``Tensor.median`` sorts each column alone, 4x slower on a chunk of 117,000 columns).
    Missing rows count as ``+inf``; a NaN may spread to the other values of its column."""
    k = rows.shape[0]
    if not 1 <= k <= 8:
        raise ValueError(f"rows must have 1 to 8 rows, got {k}")
    values = list(rows.unbind(0)) + [torch.full_like(rows[0], math.inf)] * (8 - k)
    for a, b in SORT8:
        values[a], values[b] = torch.minimum(values[a], values[b]), torch.maximum(values[a], values[b])
    return values[(k - 1) // 2]


def cosine(x: Tensor, y: Tensor) -> float:
    """``<x, y> / (|x| |y|)`` computed on ``x / max|x|`` and ``y / max|y|``, so that vectors of any
    scale (1e-200 or 1e200) give their exact cosine; 0 when either vector is zero (no clamp by an eps)."""
    sx, sy = x.abs().max(), y.abs().max()
    if x.numel() == 0 or float(sx) == 0.0 or float(sy) == 0.0:
        return 0.0
    xs, ys = x / sx, y / sy
    return float((xs @ ys) / (xs.norm() * ys.norm()))


def norm(x: Tensor) -> float:
    """``|x|`` computed on ``x / max|x|``, so that vectors of any scale (1e-200 or 1e200) neither underflow nor
    overflow when squared; 0 for a zero vector, inf where an entry is infinite."""
    if x.numel() == 0:
        return 0.0
    top = float(x.abs().max())
    if top == 0.0 or not math.isfinite(top):
        return top
    return top * float((x / top).norm())


def ratio_or_inf(num: float, den: float) -> float:
    """``num / den`` for ``den > 0``; for ``den == 0``: 0 when ``num == 0`` (nothing to compare), else an infinity
    of ``num``'s sign."""
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1 (integral floats such as 1e6 accepted), else a ValueError naming ``name``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def positive_finite(name: str, value, unit: str = "") -> float:
    """``value`` as a finite float > 0 (no bool), else a ValueError naming ``name`` (``unit``: " of seconds")."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number{unit} > 0, got {value!r}")
    return float(value)


MAX_SEED = 2**63 - 1


def seed_value(name: str, value) -> int:
    """A seed: an integer in ``[0, 2^63)`` (no float is truncated), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, 2^63), got {value!r}")
    return int(value)


def optional_bool(name: str, value) -> bool | None:
    """``True``, ``False`` or ``None``, else a ValueError naming ``name`` (no truthiness of strings or tensors)."""
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be True, False or None, got {value!r}")


def coordinate_labels(coordinate_names, dim: int) -> list:
    """``coordinate_names`` as a list of ``dim`` row labels (``0 .. dim-1`` when ``None``), else a ValueError."""
    names = list(range(dim)) if coordinate_names is None else list(coordinate_names)
    if len(names) != dim:
        raise ValueError(f"coordinate_names must have D = {dim} entries, got {len(names)}")
    return names


def summary_text(lines: list[str], frame, max_rows: int) -> str:
    """A result's ``summary()``: its ``lines`` of facts, then ``frame`` as text (at most ``max_rows`` rows, the
    first and last kept, six significant digits, the index dropped)."""
    max_rows = positive_int("max_rows", max_rows)
    table = frame.to_string(index=False, max_rows=max_rows, min_rows=max_rows, float_format=lambda x: f"{x:.6g}")
    return "\n".join([*lines, table])


def float64_vector(name: str, value, size: int) -> Tensor:
    """``value`` as a finite float64 tensor of shape ``[size]`` exactly, else a ValueError naming ``name`` (a complex
    value is refused, not cut to its real part)."""
    try:
        t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be {size} numbers: {err}") from err
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real numbers, got dtype {t.dtype}")
    t = t.to(device="cpu", dtype=torch.float64)
    if tuple(t.shape) != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        bad = torch.nonzero(~torch.isfinite(t)).flatten().tolist()
        raise ValueError(f"{name} must be finite, got non-finite entries at {bad}")
    return t


def float64_references(references, size: int) -> dict[str, Tensor]:
    """A dict name -> reference gradient, each checked by :func:`float64_vector` (``None``: no references)."""
    if references is None:
        return {}
    if not isinstance(references, dict):
        raise ValueError(f"references must be a dict name -> gradient [{size}], got {type(references).__name__}")
    return {str(name): float64_vector(f"references[{name!r}]", ref, size) for name, ref in references.items()}
