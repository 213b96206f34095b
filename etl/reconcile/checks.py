"""Per-window checks after each load: counts and sums of numeric columns, PASS / WARN / FAIL.

Checks (thresholds from the spec's ``reconcile:`` section):

* ``extracted_equals_loaded``: records extracted == loaded + quarantined + deduplicated; FAIL otherwise.
* ``source_count_unchanged``: the source still holds as many rows in the window as were extracted;
  WARN otherwise (the source may change between extract and check).
* ``sum_<column>``: for each of ``reconcile.sum_columns``, the sum over the window's rows in the source
  and in the target. Relative difference ``|s - t| / max(|s|, 1)``: PASS up to ``warn_ratio``,
  WARN up to ``fail_ratio``, FAIL above.

Results go into ``etl_reconciliation`` in the target and into the window's JSON summary; a FAIL
raises ``ReconciliationFailed`` naming the check and by how much it is off.
"""

from __future__ import annotations

import logging
from datetime import UTC
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import SQLAlchemyError

from etl.connections import resolve_url
from etl.errors import ReconciliationFailed, driver_error_summary
from etl.load import loader_for
from etl.reconcile.store import record_checks
from etl.schema import sql_type, target_table
from etl.spec import PipelineSpec

log = logging.getLogger(__name__)


def grade(ratio: float, warn_ratio: float, fail_ratio: float) -> str:
    """PASS up to ``warn_ratio``, WARN up to ``fail_ratio``, FAIL above."""
    if ratio <= warn_ratio:
        return "PASS"
    return "WARN" if ratio <= fail_ratio else "FAIL"


def relative_difference(source: Any, target: Any) -> float:
    s = Decimal(str(source or 0))
    t = Decimal(str(target or 0))
    return float(abs(s - t) / max(abs(s), Decimal(1)))


def _window_bounds(spec: PipelineSpec, window) -> tuple[Any, Any]:
    """The window's bounds as the cursor column compares them (same rules as the SQL source)."""
    cursor = spec.column(spec.source.cursor)
    start, end = window.widened(spec.source.lag).start, window.end
    if cursor.type == "timestamp":
        return start.astimezone(UTC).replace(tzinfo=None), end.astimezone(UTC).replace(tzinfo=None)
    if cursor.type == "date":
        return start.date(), end.date()
    return start, end


def target_sums(spec: PipelineSpec, engine, window, columns: list[str]) -> dict[str, Any]:
    """Sums of ``columns`` over the target rows whose cursor lies in the (widened) window."""
    table = target_table(spec)
    cursor = table.c[spec.source.cursor]
    start, end = _window_bounds(spec, window)
    kind = sql_type(spec.column(spec.source.cursor).type)
    stmt = select(*[func.sum(table.c[c]) for c in columns]).where(
        cursor >= bindparam("ws", start, type_=kind), cursor < bindparam("we", end, type_=kind))
    with engine.connect() as conn:
        row = conn.execute(stmt).one()
    return dict(zip(columns, row, strict=False))


def source_sums(source: Any, window, columns: list[str]) -> dict[str, Any] | None:
    """Sums over the source's window rows, for sources that can express them (SQL); None otherwise."""
    statement = getattr(source, "statement", None)
    if statement is None:
        return None
    sub = statement(window).order_by(None).subquery()
    with source.engine.connect() as conn:
        row = conn.execute(select(*[func.sum(sub.c[c]) for c in columns])).one()
    return dict(zip(columns, row, strict=False))


def run_window_checks(spec: PipelineSpec, result: Any, source: Any) -> list[dict[str, Any]]:
    """Run the window's checks, store them in ``etl_reconciliation``; raise on FAIL."""
    rc = spec.reconcile
    # Rows reduced as in-window duplicates (etl.quarantine) are accounted for like quarantined ones.
    quarantined = int(getattr(result, "quarantined", 0) or 0) + int(getattr(result, "deduplicated", 0) or 0)
    checks: list[dict[str, Any]] = [{
        "check": "extracted_equals_loaded",
        "source": result.extracted,
        "target": result.loaded + quarantined,
        "difference": float(result.extracted - result.loaded - quarantined),
        "status": "PASS" if result.extracted == result.loaded + quarantined else "FAIL",
    }]
    count = getattr(source, "count", None)  # sources that cannot count a window cheaply skip this check
    now_in_source = count(result.window) if count else None
    if now_in_source is not None:
        checks.append({
            "check": "source_count_unchanged",
            "source": now_in_source,
            "target": result.extracted,
            "difference": float(now_in_source - result.extracted),
            "status": "PASS" if now_in_source == result.extracted else "WARN",
        })
    loader = loader_for(resolve_url(spec.target.connection))
    try:
        if rc.sum_columns:
            src = source_sums(source, result.window, rc.sum_columns)
            if src is not None:
                tgt = target_sums(spec, loader.engine, result.window, rc.sum_columns)
                for col in rc.sum_columns:
                    ratio = relative_difference(src[col], tgt[col])
                    checks.append({
                        "check": f"sum_{col}",
                        "source": _plain(src[col]),
                        "target": _plain(tgt[col]),
                        "difference": ratio,
                        "status": grade(ratio, rc.warn_ratio, rc.fail_ratio),
                    })
        record_checks(loader.engine, spec.target.db_schema, spec.name, "window", checks, run_id=result.run_id,
                      window_start=result.window.start, window_end=result.window.end)
    except SQLAlchemyError as exc:
        detail = driver_error_summary(exc, loader.url)
        raise ReconciliationFailed(f"pipeline {spec.name!r}, window {result.window.key}: checks could not run: "
                                   f"{detail}") from None
    finally:
        loader.dispose()
    failed = [c for c in checks if c["status"] == "FAIL"]
    if failed:
        c = failed[0]
        if c["check"].startswith("sum_"):
            by = (f"relative difference {c['difference']:.6g} exceeds fail_ratio {rc.fail_ratio} "
                  f"(off by {_plain(Decimal(str(c['source'] or 0)) - Decimal(str(c['target'] or 0)))})")
        else:
            by = f"off by {abs(c['source'] - c['target'])}"
        raise ReconciliationFailed(
            f"pipeline {spec.name!r}, window {result.window.key}: check {c['check']} failed: "
            f"source {c['source']} vs target {c['target']} ({by})"
        )
    return checks


def _plain(value: Any) -> Any:
    """Decimals as strings in JSON (exact), other numbers as they are."""
    if isinstance(value, Decimal):
        return str(value)
    return value
