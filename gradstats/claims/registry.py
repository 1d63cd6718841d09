"""The claims registry: :class:`Claim`, :class:`Verdict`, :func:`register` and the :func:`claim` decorator,
:func:`run`, and :func:`search` for counterexamples (hypothesis)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck
from hypothesis import strategies as st

__all__ = ["Claim", "Verdict", "CheckSettings", "SearchResult", "register", "claim", "claims", "get", "run", "search",
           "STATUSES", "KINDS"]

STATUSES = ("confirmed", "refuted", "inconclusive")
KINDS = ("mathematical", "empirical")


@dataclass(frozen=True)
class CheckSettings:
    """How hard a check searches: ``max_examples`` per hypothesis search; ``explore`` uses fresh randomness;
    ``quick`` shrinks the training an empirical check runs (a smoke run: its numbers are not the reported ones)."""

    max_examples: int = 150
    explore: bool = False
    seed: int = 0
    quick: bool = False

    @staticmethod
    def exploring() -> CheckSettings:
        return CheckSettings(max_examples=2000, explore=True)

    @staticmethod
    def smoke() -> CheckSettings:
        """A quick run: 30 examples per search and shortened training (``gradstats claims --quick``, the
        analyses' ``--quick``)."""
        return CheckSettings(max_examples=30, quick=True)


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check.

    Attributes
    ----------
    status
        One of :data:`STATUSES`, on the claim's reading.
    evidence
        What was computed and found, in words and numbers.
    qualifier
        What must be read with the status (where it holds, where it fails), or "".
    summary
        The finding in one line (defaults to the evidence's first clause).
    counterexample
        A JSON-able description of a minimal counterexample (``None`` if none).
    holds_when
        The narrower conditions under which the claim does hold (when refuted).
    cases
        Problem instances examined.
    data
        The numbers behind the evidence (JSON-able).
    """

    status: str
    evidence: str
    qualifier: str = ""
    summary: str = ""
    counterexample: dict | None = None
    holds_when: str = ""
    cases: int = 0
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


@dataclass(frozen=True)
class Claim:
    """A claim: its id, verbatim statement, reference, the reading its check tests, its kind and its check;
    ``inputs``, for a check that reads saved results rather than computing them, a digest of those results
    (part of the key a cached verdict is kept under)."""

    id: str
    statement: str
    reference: str
    reading: str
    check: Callable[[CheckSettings], Verdict]
    test: str = ""
    kind: str = "mathematical"
    inputs: Callable[[], str] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


_CLAIMS: dict[str, Claim] = {}


def register(claim: Claim) -> Claim:
    """Add a claim (ids are unique)."""
    if claim.id in _CLAIMS:
        raise ValueError(f"a claim with id {claim.id!r} is already registered")
    _CLAIMS[claim.id] = claim
    return claim


def claim(id: str, *, statement: str, reference: str, reading: str, test: str = "",
          kind: str = "mathematical") -> Callable[[Callable[[CheckSettings], Verdict]], Callable[[CheckSettings], Verdict]]:
    """Register the decorated check as the claim ``id``, its metadata written beside it: put
    ``@claim("MY1", statement=..., reference=..., reading=...)`` above
    ``def check_my1(settings: CheckSettings) -> Verdict``."""
    def decorate(check: Callable[[CheckSettings], Verdict]) -> Callable[[CheckSettings], Verdict]:
        register(Claim(id, statement, reference, reading, check, test, kind))
        return check

    return decorate


def claims() -> list[Claim]:
    """Every registered claim, in registration order."""
    return list(_CLAIMS.values())


def get(claim_id: str) -> Claim:
    """The claim with this id (a ValueError lists the valid ids)."""
    if claim_id not in _CLAIMS:
        raise ValueError(f"unknown claim {claim_id!r}; registered: {', '.join(_CLAIMS)}")
    return _CLAIMS[claim_id]


def run(ids: list[str] | None = None, settings: CheckSettings | None = None, *,
        on_row: Callable[[dict[str, Any]], None] | None = None,
        cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Check claims; one JSON-able row each with ``id, status, qualifier, kind, statement, reference, reading,
    evidence, summary, counterexample, holds_when, cases, data, test, seconds, cached``.

    ``on_row(row)`` is called as each verdict is ready (before the next check starts). With ``cache_dir``,
    the verdict of a built-in claim under derandomized settings is stored there, keyed by the claim, the
    settings, a hash of gradstats' source (:func:`gradstats.checkpoint.library_identity`) and the digest of the
    results a check reads (:attr:`Claim.inputs`), and read back instead of rechecked while all are unchanged;
    ``cached`` says which rows were.
    """
    settings = settings or CheckSettings()
    rows = []
    for claim in ([get(i) for i in ids] if ids else claims()):
        path = _cache_path(claim, settings, cache_dir)
        row = _read_cached(path)
        if row is None:
            start = time.perf_counter()
            verdict = claim.check(settings)
            row = {"id": claim.id, "status": verdict.status, "qualifier": verdict.qualifier, "kind": claim.kind,
                   "statement": claim.statement, "reference": claim.reference, "reading": claim.reading,
                   "evidence": verdict.evidence,
                   "summary": verdict.summary or verdict.evidence.split(";")[0],
                   "counterexample": verdict.counterexample, "holds_when": verdict.holds_when,
                   "cases": verdict.cases, "data": verdict.data, "test": claim.test,
                   "seconds": round(time.perf_counter() - start, 2), "cached": False}
            if path is not None:
                _write_cached(path, row)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def _cache_path(claim: Claim, settings: CheckSettings, cache_dir: str | Path | None) -> Path | None:
    """Where a verdict is cached, or ``None``: no cache asked for, fresh randomness, or a check outside gradstats
    (whose code the source hash does not cover)."""
    if cache_dir is None or settings.explore or not getattr(claim.check, "__module__", "").startswith("gradstats."):
        return None
    from ..checkpoint import library_identity

    key = json.dumps({"library": library_identity(), "claim": claim.id, "settings": dataclasses.asdict(settings),
                      "inputs": claim.inputs() if claim.inputs is not None else None}, sort_keys=True)
    return Path(cache_dir) / f"{claim.id}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def _read_cached(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None          # a damaged entry is rechecked and rewritten
    return {**row, "cached": True} if isinstance(row, dict) and "status" in row else None


def _write_cached(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(row, default=str))
    os.replace(temporary, path)


@dataclass(frozen=True)
class SearchResult:
    """A hypothesis search: the minimal counterexample found (``None`` if none) and the cases examined."""

    example: Any
    tried: int

    @property
    def found(self) -> bool:
        return self.example is not None


def search(strategy: st.SearchStrategy, is_counterexample: Callable[[Any], bool],
           settings: CheckSettings) -> SearchResult:
    """Search ``strategy`` for an example with ``is_counterexample``; a found one is shrunk to a minimal one.

    Deterministic unless ``settings.explore``.
    """
    tried = 0

    def condition(example) -> bool:
        nonlocal tried
        tried += 1
        return bool(is_counterexample(example))

    hyp_settings = hypothesis.settings(max_examples=settings.max_examples, derandomize=not settings.explore,
                                       database=None, deadline=None, suppress_health_check=list(HealthCheck))
    try:
        example = hypothesis.find(strategy, condition, settings=hyp_settings,
                                  random=None if settings.explore else random.Random(settings.seed))
    except hypothesis.errors.NoSuchExample:
        return SearchResult(None, tried)
    return SearchResult(example, tried)
