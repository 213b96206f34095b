"""The body of the ``consistency_report`` DAG's task: deep diff every pipeline, then write the report.

What a finding does is the drift policy, ``on_drift``:

* ``fail`` (the default): a pipeline whose deep diff FAILs (rows missing, extra or changed) or could
  not run (ERROR) fails the report task, without retries; the failure alert names each such
  pipeline with its counts.
* ``warn``: the task succeeds, logs a warning and posts the same alert.

Set it per run in the trigger form (param ``on_drift``) or for every run with ``DRIFTLESS_ON_DRIFT``.
A pipeline that cannot be diffed as a whole table (a REST source, a SQL query) is SKIP, not a finding:
its windows are still checked after every load.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from driftless import connections
from driftless.errors import DriftlessError
from driftless.report import build_report
from driftless.settings import settings
from driftless.spec import load_specs
from driftless.status import Check

log = logging.getLogger(__name__)

# The status vocabulary is driftless.status.Check; these statuses are findings under ``on_drift``.
FINDING_STATUSES = (Check.FAIL, Check.ERROR)
SKIP = Check.SKIP
ERROR = Check.ERROR
ON_DRIFT_CHOICES = ("fail", "warn")
COUNTS = ("missing_in_target", "extra_in_target", "changed")


def default_on_drift() -> str:
    """``$DRIFTLESS_ON_DRIFT`` (``fail`` or ``warn``), else ``fail``."""
    value = (settings().on_drift or "fail").lower()
    if value not in ON_DRIFT_CHOICES:
        raise DriftlessError(f"DRIFTLESS_ON_DRIFT={value!r}: expected one of {', '.join(ON_DRIFT_CHOICES)}")
    return value


def report_dir(run_id: str) -> Path:
    """``$DRIFTLESS_REPORT_DIR/<run>``, else ``$AIRFLOW_HOME/driftless-reports/<run>``.

    The report is written there first, then published to the report store (``driftless.report.store``),
    which is this same directory unless ``DRIFTLESS_REPORT_STORE`` is set.
    """
    from driftless.report.store import run_key

    root = settings().report_dir or str(
        Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "driftless-reports")
    return Path(root) / run_key(run_id)


def describe(finding: dict[str, Any]) -> str:
    """One finding as text: ``chinook_invoices FAIL (missing 0, extra 0, changed 1)``."""
    if finding["status"] == ERROR:
        return f"{finding['pipeline']} ERROR ({finding.get('error') or 'the diff could not run'})"
    return (f"{finding['pipeline']} {finding['status']} (missing {finding.get('missing_in_target', 0)}, "
            f"extra {finding.get('extra_in_target', 0)}, changed {finding.get('changed', 0)})")


def findings_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The pipelines of a report result whose status is a finding under the drift policy."""
    return [p for p in result["pipelines"] if p["status"] in FINDING_STATUSES]


def consistency_report(specs_dir: str, run_id: str, repair: bool = False, out_dir: str | None = None,
                       use_airflow_connections: bool = True) -> dict[str, Any]:
    """Deep diff (and optionally repair) every pipeline of ``specs_dir``; write the report.

    A pipeline whose diff fails (target unreachable, table missing) is logged as ERROR and shown in
    the report; the others still run. Returns the report's paths, each pipeline's status and counts
    (``pipelines``: ``[{pipeline, status, missing_in_target, extra_in_target, changed, error}]``) and
    ``statuses`` (pipeline -> status).
    """
    from driftless.reconcile.run import check_pipeline

    if use_airflow_connections:
        connections.use_lookup(connections.airflow_lookup)
    specs = load_specs(specs_dir)
    results: list[dict[str, Any]] = []
    for spec in specs:
        summary = check_pipeline(spec, repair=repair)  # SKIP / ERROR are recorded for the report too
        entry: dict[str, Any] = {"pipeline": spec.name, "status": summary["status"], "error": summary.get("message"),
                                 **{k: summary.get(k) or 0 for k in COUNTS}}
        if entry["status"] in (SKIP, ERROR):
            log.log(logging.INFO if entry["status"] == SKIP else logging.WARNING, "deep diff of %s: %s (%s)",
                    spec.name, entry["status"], entry["error"])
        else:
            log.info("deep diff of %s", describe(entry))
        results.append(entry)
    out = Path(out_dir) if out_dir else report_dir(run_id)
    paths = build_report(specs, out)
    log.info("consistency report written to %s (data: %s)", paths["html"], paths["json"])
    return {"html": str(paths["html"]), "json": str(paths["json"]), "pipelines": results,
            "statuses": {r["pipeline"]: r["status"] for r in results}}


def summary_line(result: dict[str, Any]) -> str:
    """The task's closing log line: statuses counted, every finding with its counts."""
    tally: dict[str, int] = {}
    for p in result["pipelines"]:
        tally[p["status"]] = tally.get(p["status"], 0) + 1
    counted = ", ".join(f"{n} {status}" for status, n in sorted(tally.items())) or "no pipelines"
    found = findings_of(result)
    text = f"consistency report: {counted}"
    if found:
        text += "; " + "; ".join(describe(f) for f in found)
    return text
