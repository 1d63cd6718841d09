"""The claims registry: a quoted statement, its reading, and a check that returns a verdict.

A :class:`Claim` quotes its source verbatim (``statement``), names where it is
made (``reference``), states the narrowest faithful ``reading`` that the check
tests, says whether it is ``"mathematical"`` (a statement that can be checked
exactly) or ``"empirical"`` (a report of what experiments showed: judged on its
own task, else ``"inconclusive"`` with a proxy as evidence, never refuted by a
proxy), and carries a check. The check returns a :class:`Verdict` on that
reading: ``"confirmed"``, ``"refuted"`` (with a minimal counterexample, shrunk
by hypothesis, and the narrower conditions under which it does hold) or
``"inconclusive"``, with the evidence (exact values, or estimates with
intervals, and the number of cases examined) and a ``qualifier`` that travels
with the status wherever it is printed. Register your own with
:func:`register`::

    from gradstats.claims import Verdict, claim

    @claim("MY1", statement="...", reference="...", reading="...")
    def check_my1(settings):
        return Verdict("confirmed", evidence="...")

``gradstats claims`` prints the table; ``gradstats claims --json`` the list of
objects; ``--id ST1`` reruns one row; ``--explore`` searches longer.
"""

# The built-in claims register on import, in the order of the table: control_variates imports later_work, which
# imports seed_paper, first.
from . import control_variates  # noqa: F401
from .registry import (
    KINDS,
    STATUSES,
    CheckSettings,
    Claim,
    SearchResult,
    Verdict,
    claim,
    claims,
    get,
    register,
    run,
    search,
)

__all__ = ["Claim", "Verdict", "CheckSettings", "SearchResult", "register", "claim", "claims", "get", "run", "search",
           "STATUSES", "KINDS"]
