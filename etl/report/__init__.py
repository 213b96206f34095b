"""The data-consistency report: one self-contained HTML page and a JSON file.

``etl report --out DIR`` reads, for every pipeline spec, the target's ``etl_runs``, ``etl_state``
and ``etl_reconciliation`` tables, and writes ``DIR/report.html`` (inline CSS and inline SVG charts:
no network needed to view it) and ``DIR/report.json`` (the same data). Per pipeline: the last runs,
rows extracted / loaded / quarantined, reconciliation status, freshness lag of the target, charts
of rows per run and reject ratio over time, the latest diff with sample rows from both sides; and an
integration catalog of all pipelines (source, target, schedule, last status, watermark).

A target that cannot be read shows up as an error in its pipeline's section, not as a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etl.connections import redact, resolve_url
from etl.errors import DriftlessError, driver_error_summary
from etl.spec import PipelineSpec, default_specs_dir, load_specs

log = logging.getLogger(__name__)

RUNS_SHOWN = 30
STATUS_ORDER = {"FAIL": 3, "failed": 3, "WARN": 2, "PASS": 1, "REPAIRED": 1, "success": 1}


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value


def _lag(seconds: float | None) -> str:
    if seconds is None:
        return "never loaded"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {rest % 60}s"


def pipeline_data(spec: PipelineSpec, now: datetime | None = None) -> dict[str, Any]:
    """Everything the report shows about one pipeline, as JSON-ready data."""
    from etl.load import loader_for
    from etl.reconcile.store import read_checks
    from etl.state import as_utc, read_runs, read_state

    now = now or datetime.now(UTC)
    entry: dict[str, Any] = {
        "pipeline": spec.name,
        "description": spec.description,
        "schedule": spec.schedule,
        "source": {"type": spec.source.type, "connection": spec.source.connection,
                   "table": getattr(spec.source, "table", None) or getattr(spec.source, "endpoint", None)
                   or "(query)", "cursor": spec.source.cursor,
                   "primary_key": spec.source.primary_key},
        "target": {"connection": spec.target.connection, "schema": spec.target.db_schema,
                   "table": spec.target.table},
        "columns": len(spec.columns),
        "error": None, "runs": [], "state": None, "checks": [], "latest_diff": None,
    }
    try:
        url = resolve_url(spec.target.connection)
        entry["target"]["database"] = redact(url)
        loader = loader_for(url)
    except DriftlessError as exc:
        entry["error"] = str(exc)
        return entry
    try:
        schema = spec.target.db_schema
        runs = read_runs(loader.engine, spec.name, schema)[-RUNS_SHOWN:]
        state = read_state(loader.engine, spec.name, schema)
        checks = read_checks(loader.engine, spec.name, schema)
    except Exception as exc:  # an unreachable target is reported, not fatal to the report
        entry["error"] = f"cannot read {redact(url)}: {driver_error_summary(exc, url, limit=200)}"
        return entry
    finally:
        loader.dispose()
    entry["runs"] = [{
        "run_id": r["run_id"], "window_start": _iso(as_utc(r["window_start"])),
        "window_end": _iso(as_utc(r["window_end"])), "status": r["status"], "extracted": r.get("extracted") or 0,
        "loaded": r.get("loaded") or 0, "quarantined": r.get("quarantined") or 0, "written": r.get("written") or 0,
        "finished_at": _iso(as_utc(r["finished_at"])), "duration_s": r.get("duration_s"),
        "message": r.get("message"),
    } for r in runs]
    if state:
        lag = (now - state.max_cursor).total_seconds() if state.max_cursor else None
        entry["state"] = {"watermark": _iso(state.watermark), "max_cursor": _iso(state.max_cursor),
                          "last_run_id": state.last_run_id, "freshness_lag_s": lag, "freshness_lag": _lag(lag)}
    entry["checks"] = [{
        "kind": c["kind"], "check": c["check_name"], "status": c["status"], "source": c["source_value"],
        "target": c["target_value"], "difference": c["difference"], "run_id": c["run_id"],
        "window_start": _iso(as_utc(c["window_start"])), "checked_at": _iso(as_utc(c["checked_at"])),
    } for c in checks[:50]]
    deep = next((c for c in checks if c["kind"] == "deep" and c["check_name"] in ("deep_diff", "table_checksum")),
                None)
    if deep:
        entry["latest_diff"] = {**(deep["details"] or {}), "checked_at": _iso(as_utc(deep["checked_at"])),
                                "check": deep["check_name"]}
        repair = next((c for c in checks if c["kind"] == "deep" and c["check_name"] == "repair"
                       and c["id"] > deep["id"]), None)
        if repair:
            entry["latest_diff"]["repair"] = repair["details"]
    last_run = entry["runs"][-1] if entry["runs"] else None
    latest_window = [c for c in entry["checks"] if c["kind"] == "window" and last_run
                     and c["run_id"] == last_run["run_id"]]
    statuses = [c["status"] for c in latest_window]
    if deep:
        statuses.append(deep["status"])
    entry["last_status"] = last_run["status"] if last_run else "never run"
    entry["reconciliation_status"] = max(statuses, key=lambda s: STATUS_ORDER.get(s, 0)) if statuses else "none"
    return entry


def build_report(specs: list[PipelineSpec], out_dir: str | Path, now: datetime | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir``; returns their paths."""
    from etl.report.html import render_html

    now = now or datetime.now(UTC)
    data = {
        "generated_at": now.isoformat(),
        "pipelines": [pipeline_data(s, now) for s in sorted(specs, key=lambda s: s.name)],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    html_path.write_text(render_html(data), encoding="utf-8")
    return {"html": html_path, "json": json_path}


def report_command(args: argparse.Namespace) -> int:
    specs = load_specs(args.specs_dir or default_specs_dir())
    if getattr(args, "deep", False):
        from etl.reconcile.run import reconcile_pipeline

        for spec in specs:
            try:
                reconcile_pipeline(spec, deep=True)
            except DriftlessError as exc:
                log.warning("deep diff of %s failed: %s", spec.name, exc)
    paths = build_report(specs, args.out)
    print(json.dumps({"html": str(paths["html"]), "json": str(paths["json"]), "pipelines": len(specs)}))
    return 0
