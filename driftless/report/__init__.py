"""The data-consistency report: one self-contained HTML page and a JSON file.

``etl report --out DIR`` reads, for every pipeline spec, the target's ``etl_runs``, ``etl_state``
and ``etl_reconciliation`` tables, and writes ``DIR/report.html`` (inline CSS and inline SVG charts:
no network needed to view it) and ``DIR/report.json`` (the same data). Per pipeline: the last runs,
rows extracted / loaded / quarantined, reconciliation status, freshness lag of the target, charts
of rows per run and reject ratio over time, the latest diff with sample rows from both sides; and an
integration catalog of all pipelines (source, target, schedule, last status, watermark), and what is
checked for each (``checked``: a REST source gets counts and sums per window, no deep diff). Statuses
are those of ``driftless.status`` everywhere: the window checks, the deep diff and their worst
(``reconciliation_status``, where SKIP shows only when nothing was checked).

A target that cannot be read shows up as an error in its pipeline's section, not as a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftless.connections import resolve_url
from driftless.errors import DriftlessError, driver_error_summary
from driftless.redact import redact_url
from driftless.spec import PipelineSpec, default_specs_dir, load_specs
from driftless.status import BAD, Check, worst

log = logging.getLogger(__name__)

RUNS_SHOWN = 30


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


def coverage(spec: PipelineSpec) -> dict[str, Any]:
    """What is checked for a pipeline, in words: per window, and for the whole table (deep diff)."""
    from driftless.reconcile.run import deep_unavailable

    window = ["records: extracted = loaded + quarantined + deduplicated", "quarantined records counted"]
    if spec.source.type == "sql":
        window.append("source count of the window re-read")
    sums = ", ".join(spec.reconcile.sum_columns)
    if sums:
        window.append(f"sums of {sums}" + ("" if spec.source.type == "sql" else
                                           " (source side: the records extracted in the window)"))
    unavailable = deep_unavailable(spec)
    return {"window": window, "deep_diff": unavailable is None,
            "not_checked": [] if unavailable is None else [f"deep diff and repair: {unavailable}"]}


def pipeline_data(spec: PipelineSpec, now: datetime | None = None) -> dict[str, Any]:
    """Everything the report shows about one pipeline, as JSON-ready data."""
    from driftless.reconcile.store import read_checks
    from driftless.state import as_utc, read_runs, read_state
    from driftless.targets.loaders import loader_for

    now = now or datetime.now(UTC)
    entry: dict[str, Any] = {
        "pipeline": spec.name,
        "description": spec.description,
        "schedule": spec.schedule_text,
        "source": {"type": spec.source.type, "connection": spec.source.connection,
                   "table": getattr(spec.source, "table", None) or getattr(spec.source, "endpoint", None)
                   or "(query)", "cursor": spec.source.cursor,
                   "primary_key": spec.source.primary_key},
        "target": {"connection": spec.target.connection, "schema": spec.target.db_schema,
                   "table": spec.target.table},
        "columns": len(spec.columns),
        "checked": coverage(spec),
        "error": None, "runs": [], "state": None, "checks": [], "latest_diff": None,
    }
    try:
        url = resolve_url(spec.target.connection)
        entry["target"]["database"] = redact_url(url)
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
        entry["error"] = f"cannot read {redact_url(url)}: {driver_error_summary(exc, url, limit=200)}"
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
        "target": c["target_value"], "difference": c["difference"], "message": c["message"], "run_id": c["run_id"],
        "window_start": _iso(as_utc(c["window_start"])), "checked_at": _iso(as_utc(c["checked_at"])),
    } for c in checks[:50]]
    deep = next((c for c in checks if c["kind"] == "deep" and c["check_name"] in ("deep_diff", "table_checksum")),
                None)
    if deep:
        entry["latest_diff"] = {**(deep["details"] or {}), "checked_at": _iso(as_utc(deep["checked_at"])),
                                "check": deep["check_name"], "status": deep["status"], "message": deep["message"]}
        repair = next((c for c in checks if c["kind"] == "deep" and c["check_name"] == "repair"
                       and c["id"] > deep["id"]), None)
        if repair:
            entry["latest_diff"]["repair"] = repair["details"]
    last_run = entry["runs"][-1] if entry["runs"] else None
    latest_window = [c for c in entry["checks"] if c["kind"] == "window" and last_run
                     and c["run_id"] == last_run["run_id"]]
    entry["last_status"] = last_run["status"] if last_run else "never run"
    entry["window_status"] = worst(c["status"] for c in latest_window) or "none"
    entry["deep_status"] = deep["status"] if deep else ("none" if entry["checked"]["deep_diff"] else Check.SKIP)
    entry["reconciliation_status"] = worst(
        s for s in (entry["window_status"], deep and deep["status"]) if s and s != "none") or "none"
    return entry


def build_report(specs: list[PipelineSpec], out_dir: str | Path, now: datetime | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir``; returns their paths."""
    from driftless.report.html import render_html

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
    """``etl report``: exit status 0, or with ``--deep`` 2 when a deep diff FAILs, 1 when one is ERROR."""
    specs = load_specs(args.specs_dir or default_specs_dir())
    statuses: dict[str, str] = {}
    if getattr(args, "deep", False):
        from driftless.reconcile.run import check_pipeline

        for spec in specs:
            summary = check_pipeline(spec)
            statuses[spec.name] = summary["status"]
            level = logging.WARNING if summary["status"] in BAD else logging.INFO
            log.log(level, "deep diff of %s: %s%s", spec.name, summary["status"],
                    f" ({summary['message']})" if summary.get("message") else "")
    paths = build_report(specs, args.out)
    line: dict[str, Any] = {"html": str(paths["html"]), "json": str(paths["json"]), "pipelines": len(specs)}
    if statuses:
        line["statuses"] = statuses
    print(json.dumps(line))
    if Check.FAIL in statuses.values():
        print(f"etl: deep diff FAIL: {', '.join(n for n, s in statuses.items() if s == Check.FAIL)} (see the "
              "report)", file=sys.stderr)
        return 2
    if Check.ERROR in statuses.values():
        print(f"etl: deep diff could not run (ERROR): {', '.join(n for n, s in statuses.items() if s == Check.ERROR)} "
              "(see the report)", file=sys.stderr)
        return 1
    return 0
