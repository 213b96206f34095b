"""The body of the ``consistency_report`` DAG's task: deep diff every pipeline, then write the report."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from etl import connections
from etl.report import build_report
from etl.spec import load_specs

log = logging.getLogger(__name__)


def report_dir(run_id: str) -> Path:
    """``$DRIFTLESS_REPORT_DIR/<run>``, else ``$AIRFLOW_HOME/driftless-reports/<run>``."""
    root = os.environ.get("DRIFTLESS_REPORT_DIR") or str(
        Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "driftless-reports")
    return Path(root) / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:120]


def consistency_report(specs_dir: str, run_id: str, repair: bool = False, out_dir: str | None = None,
                       use_airflow_connections: bool = True) -> dict[str, Any]:
    """Deep diff (and optionally repair) every pipeline of ``specs_dir``; write the report.

    A pipeline whose diff fails (target unreachable, table missing) is logged and shown in the
    report; the others still run. Returns the report's paths and each pipeline's status.
    """
    from etl.reconcile.run import check_pipeline

    if use_airflow_connections:
        connections.use_lookup(connections.airflow_lookup)
    specs = load_specs(specs_dir)
    statuses: dict[str, str] = {}
    for spec in specs:
        summary = check_pipeline(spec, repair=repair)  # SKIP / ERROR are recorded for the report too
        statuses[spec.name] = summary["status"]
        if summary.get("message"):
            log.warning("deep diff of %s: %s (%s)", spec.name, summary["status"], summary["message"])
        else:
            log.info("deep diff of %s: %s (missing %s, extra %s, changed %s)", spec.name, summary["status"],
                     summary["missing_in_target"], summary["extra_in_target"], summary["changed"])
    out = Path(out_dir) if out_dir else report_dir(run_id)
    paths = build_report(specs, out)
    log.info("consistency report written to %s (data: %s)", paths["html"], paths["json"])
    return {"html": str(paths["html"]), "json": str(paths["json"]), "statuses": statuses}
