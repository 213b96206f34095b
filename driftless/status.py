"""The status vocabulary: one set of words for every check and every run, wherever it is shown.

Check statuses (``Check``): per-window checks, deep diffs and repairs, in log lines, return values,
the ``etl`` JSON lines, the report (HTML and JSON) and the ``status`` column of ``etl_reconciliation``:

* ``PASS``: checked, source and target agree.
* ``WARN``: checked, a difference within the spec's tolerance, or records were quarantined.
* ``FAIL``: checked, source and target disagree beyond the tolerance.
* ``ERROR``: the check could not run (source or target unreachable, table missing); nothing is known.
* ``SKIP``: not checked, because the source cannot answer it (for example a deep diff of a REST
  source); the check's message says why. Never counted as a pass.
* ``REPAIRED``: a deep diff found differences, the repair fixed them and a second diff agrees.

Run statuses (``Run``): the ``status`` column of ``etl_runs`` and the ``status`` of ``etl run``:

* ``success``: the window was loaded and committed, and no check FAILed or ERRORed.
* ``checks_failed``: the window was loaded and committed, but a check FAILed or could not run (ERROR);
  the run record's message names the checks.
* ``failed``: nothing was committed (extract, validation threshold or load failed); the message says why.
* ``replay``: ``etl quarantine replay`` loaded quarantined records.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Check(StrEnum):
    """The outcome of one check (see the module docstring)."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    ERROR = "ERROR"
    SKIP = "SKIP"
    REPAIRED = "REPAIRED"


class Run(StrEnum):
    """The outcome of one attempt to sync a window (see the module docstring)."""

    SUCCESS = "success"
    CHECKS_FAILED = "checks_failed"
    FAILED = "failed"
    REPLAY = "replay"


#: how bad a status is, for showing the worst of several (SKIP: not checked, above a pass)
SEVERITY: dict[str, int] = {
    Check.PASS: 0, Check.REPAIRED: 0, Run.SUCCESS: 0, Run.REPLAY: 0,
    Check.SKIP: 1, Check.WARN: 2, Check.ERROR: 3, Run.CHECKS_FAILED: 3, Check.FAIL: 4, Run.FAILED: 4,
}

#: check statuses that fail the window's run (``checks_failed``) and the task that ran the checks
BAD: frozenset[str] = frozenset({Check.FAIL, Check.ERROR})


def worst(statuses: Iterable[str]) -> str | None:
    """The most severe of ``statuses``; SKIP only when nothing else was checked; None for none."""
    values = [str(s) for s in statuses]
    checked = [s for s in values if s != Check.SKIP] or values
    return max(checked, key=lambda s: SEVERITY.get(s, 0)) if checked else None
