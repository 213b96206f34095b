"""Per-window checks after each load: counts, rejects and sums of numeric columns.

Checks (thresholds from the spec's ``reconcile:`` section; statuses from ``driftless.status``):

* ``extracted_equals_loaded``: every extracted record is accounted for: extracted == loaded +
  quarantined + deduplicated; FAIL otherwise.
* ``quarantined``: how many of the window's records failed validation (kept in ``etl_quarantine``);
  PASS when none, WARN otherwise (the load step already failed the window above ``max_reject_ratio``).
* ``source_count_unchanged``: the source still holds as many rows in the window as were extracted;
  WARN otherwise (the source may change between extract and check). SKIP for sources that cannot
  count a window (REST: the API is not read a second time).
* ``null_cursor_rows``: rows whose cursor is NULL and what ``source.null_cursor`` did with them (see
  ``null_cursor_check``).
* ``sum_<column>``: for each of ``reconcile.sum_columns``, the sum over the window's rows in the source
  and in the target. Relative difference ``|s - t| / max(|s|, 1)``: PASS up to ``warn_ratio``,
  WARN up to ``fail_ratio``, FAIL above. A SQL source is summed by its database; for a REST source
  the source side is the sum over the records the extract staged for the window (computed by the
  extract step, so the API is not read again).

A check that cannot run (source table dropped, database unreachable) is ERROR with the cause; the
other checks still run. Results go into ``etl_reconciliation`` in the target and into the window's
JSON summary. A FAIL or ERROR marks the run ``checks_failed`` in ``etl_runs`` (the data stays
committed) and raises ``ChecksFailed`` naming each such check and by how much it is off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from driftless.connections import resolve_url
from driftless.errors import DriftlessError, ReconciliationFailed, error_detail
from driftless.reconcile.store import record_checks
from driftless.schema import sql_type, target_table
from driftless.sources.base import ChecksWindow, CountsNullCursors, CountsWindow
from driftless.spec import PipelineSpec
from driftless.state import set_run_status
from driftless.status import BAD, Check, Run
from driftless.targets.loaders import loader_for

log = logging.getLogger(__name__)

#: what a check that cannot run may raise; anything else is a bug and keeps its traceback
CHECK_ERRORS = (DriftlessError, SQLAlchemyError, OSError)


class ChecksFailed(ReconciliationFailed):
    """A committed window's checks FAILed or could not run; ``result`` is the window's result (with checks)."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


def grade(ratio: float, warn_ratio: float, fail_ratio: float) -> str:
    """PASS up to ``warn_ratio``, WARN up to ``fail_ratio``, FAIL above."""
    if ratio <= warn_ratio:
        return Check.PASS
    return Check.WARN if ratio <= fail_ratio else Check.FAIL


def relative_difference(source: Any, target: Any) -> float:
    s = Decimal(str(source or 0))
    t = Decimal(str(target or 0))
    return float(abs(s - t) / max(abs(s), Decimal(1)))


def target_sums(spec: PipelineSpec, engine, window, columns: list[str]) -> dict[str, Any]:
    """Sums of ``columns`` over the target rows whose cursor lies in the (widened) window."""
    table = target_table(spec)
    cursor_type = spec.column(spec.source.cursor).type
    # The rows the source's window reads (NULL-cursor rows too under every_window), as the source selects them.
    in_window = window.condition(table.c[spec.source.cursor], cursor_type, spec.source.lag,
                                 null_cursor=spec.source.null_cursor, bind_type=sql_type(cursor_type))
    stmt = select(*[func.sum(table.c[c]) for c in columns]).where(in_window)
    with engine.connect() as conn:
        row = conn.execute(stmt).one()
    return dict(zip(columns, row, strict=False))


def null_cursor_check(spec: PipelineSpec, source: Any, result: Any) -> dict[str, Any] | None:
    """``null_cursor_rows``: how many rows with a NULL cursor (in no window) the source holds and the window took.

    ``source``: NULL-cursor rows in the source now (SQL: counted; REST: the records the window's pages held).
    ``target``: those the window read (``every_window``), else 0. PASS when equal, WARN otherwise (``skip``,
    or rows that appeared after a ``fail`` window's extract). Left out under ``fail`` when there are none.
    """
    policy = spec.source.null_cursor
    found: int | None
    if isinstance(source, CountsNullCursors):
        found = source.null_cursor_count()
    else:  # what the window's reads saw (REST: records with a null or missing cursor)
        found = (result.metrics or {}).get("null_cursor_records")
    if found is None or (found == 0 and policy == "fail"):
        return None
    taken = found if policy == "every_window" else 0
    return {"check": "null_cursor_rows", "source": found, "target": taken, "difference": float(found - taken),
            "status": Check.PASS if found == taken else Check.WARN}


def staged_sums(spec: PipelineSpec, window, tables: Iterable[pa.Table]) -> dict[str, str | None]:
    """Sums of ``reconcile.sum_columns`` over staged records whose cursor lies in the (widened) window.

    What the extract step stores in the manifest for sources that cannot sum a window themselves
    (REST): the same rows the target's side of the check selects. Exact (decimals as text); None
    for a column without values.
    """
    columns = spec.reconcile.sum_columns
    start, end = window.bounds(spec.column(spec.source.cursor).type, spec.source.lag)
    totals: dict[str, Any] = dict.fromkeys(columns)
    for table in tables:
        cursor = table.column(spec.source.cursor)
        inside = pc.and_(pc.greater_equal(cursor, pa.scalar(start, type=cursor.type)),
                         pc.less(cursor, pa.scalar(end, type=cursor.type)))
        kept = table.select(columns).filter(inside)
        for name in columns:
            value = pc.sum(kept.column(name)).as_py()
            if value is not None:
                totals[name] = value if totals[name] is None else totals[name] + value
    return {k: None if v is None else str(v) for k, v in totals.items()}


def _count_checks(spec: PipelineSpec, result: Any) -> list[dict[str, Any]]:
    # Rows reduced as in-window duplicates (driftless.extract.dedup) are accounted for like quarantined ones.
    quarantined = int(getattr(result, "quarantined", 0) or 0)
    deduplicated = int(getattr(result, "deduplicated", 0) or 0)
    accounted = result.loaded + quarantined + deduplicated
    checks: list[dict[str, Any]] = [{
        "check": "extracted_equals_loaded",
        "source": result.extracted,
        "target": accounted,
        "difference": float(result.extracted - accounted),
        "status": Check.PASS if result.extracted == accounted else Check.FAIL,
    }]
    share = quarantined / result.extracted if result.extracted else 0.0
    checks.append({
        "check": "quarantined",
        "source": result.extracted,
        "target": result.loaded,
        "difference": float(quarantined),
        # Rejects and nothing loaded is never a success (windows of other sources fail before writing; a queue's
        # window commits its quarantine so the messages can be acknowledged, and this FAIL marks the run).
        "status": (Check.FAIL if result.loaded == 0 else Check.WARN) if quarantined else Check.PASS,
        "message": (f"{quarantined} of {result.extracted} records ({share:.2%}) failed validation and are in "
                    f"etl_quarantine (max_reject_ratio {spec.max_reject_ratio:g}); see `etl quarantine list "
                    f"{spec.name}`" + ("; nothing was loaded" if result.loaded == 0 else "")) if quarantined else None,
    })
    return checks


def _source_count_check(spec: PipelineSpec, result: Any, source: Any, source_error: str | None) -> dict[str, Any]:
    name = "source_count_unchanged"
    if source_error is not None:
        return {"check": name, "status": Check.ERROR, "message": f"could not run: {source_error}"}
    if not isinstance(source, CountsWindow):
        return {"check": name, "status": Check.SKIP,
                "message": f"not checked: a {spec.source.type} source cannot count a window again"}
    try:
        now_in_source = source.count(result.window)
    except CHECK_ERRORS as exc:
        return {"check": name, "target": result.extracted, "status": Check.ERROR,
                "message": f"could not run: counting the window in the source failed: {error_detail(exc)}"}
    return {
        "check": name,
        "source": now_in_source,
        "target": result.extracted,
        "difference": float(now_in_source - result.extracted),
        "status": Check.PASS if now_in_source == result.extracted else Check.WARN,
    }


def _sum_checks(spec: PipelineSpec, result: Any, source: Any, source_error: str | None,
                engine) -> list[dict[str, Any]]:
    rc = spec.reconcile
    columns = rc.sum_columns
    staged = getattr(result, "staged_sums", None) or {}
    note = None

    def every(status: str, message: str) -> list[dict[str, Any]]:
        return [{"check": f"sum_{c}", "status": status, "message": message} for c in columns]

    try:
        if isinstance(source, CountsWindow):
            src = source.sums(result.window, columns)
        elif set(columns) <= set(staged):
            src, note = staged, "source: sum over the records extracted in this window (the source is not read again)"
        elif source_error is not None:
            return every(Check.ERROR, f"could not run: {source_error}")
        else:
            return every(Check.SKIP, "not checked: the extract did not compute the window's sums")
    except CHECK_ERRORS as exc:
        return every(Check.ERROR, f"could not run: summing the window in the source failed: {error_detail(exc)}")
    try:
        tgt = target_sums(spec, engine, result.window, columns)
    except CHECK_ERRORS as exc:
        return every(Check.ERROR, f"could not run: summing the window in the target failed: {error_detail(exc)}")
    checks = []
    for col in columns:
        ratio = relative_difference(src[col], tgt[col])
        checks.append({
            "check": f"sum_{col}",
            "source": _plain(src[col]),
            "target": _plain(tgt[col]),
            "difference": ratio,
            "status": grade(ratio, rc.warn_ratio, rc.fail_ratio),
            **({"message": note} if note else {}),
        })
    return checks


def _describe(spec: PipelineSpec, c: dict[str, Any]) -> str:
    """One check that failed or could not run, in words."""
    if c["status"] == Check.ERROR:
        return f"check {c['check']} {c.get('message') or 'could not run'}"
    rc = spec.reconcile
    if c["check"].startswith("sum_"):
        by = (f"relative difference {c['difference']:.6g} exceeds fail_ratio {rc.fail_ratio} "
              f"(off by {_plain(Decimal(str(c['source'] or 0)) - Decimal(str(c['target'] or 0)))})")
    else:
        by = f"off by {abs(c['source'] - c['target'])}"
    return f"check {c['check']} failed: source {c['source']} vs target {c['target']} ({by})"


def run_window_checks(spec: PipelineSpec, result: Any, source: Any, source_error: str | None = None
                      ) -> list[dict[str, Any]]:
    """Run the window's checks, store them in ``etl_reconciliation`` and the run's outcome in ``etl_runs``.

    Args:
        spec: the pipeline.
        result: the window's ``WindowResult`` (committed); its ``checks`` and ``status`` are set.
        source: the spec's source connector (None when it could not be built).
        source_error: why the source could not be built; its checks are then ERROR.

    Raises:
        ChecksFailed: a check FAILed or could not run (ERROR); the data stays committed and the run is
            recorded as ``checks_failed``.
    """
    checks = _count_checks(spec, result)
    checks.append(_source_count_check(spec, result, source, source_error))
    try:
        nulls = null_cursor_check(spec, source, result)
    except CHECK_ERRORS as exc:
        nulls = {"check": "null_cursor_rows", "status": Check.ERROR,
                 "message": f"could not run: counting NULL-cursor rows in the source failed: {error_detail(exc)}"}
    if nulls is not None:
        checks.append(nulls)
    if isinstance(source, ChecksWindow):  # checks of the source's own (file sources)
        try:
            checks += source.window_checks(result)
        except CHECK_ERRORS as exc:
            checks.append({"check": "source_checks", "status": Check.ERROR,
                           "message": f"could not run: {error_detail(exc)}"})
    store_error = None
    try:
        loader = loader_for(resolve_url(spec.target.connection))
    except DriftlessError as exc:
        loader, store_error = None, str(exc)
    try:
        if spec.reconcile.sum_columns:
            if loader is None:
                checks += [{"check": f"sum_{c}", "status": Check.ERROR, "message": f"could not run: {store_error}"}
                           for c in spec.reconcile.sum_columns]
            else:
                checks += _sum_checks(spec, result, source, source_error, loader.engine)
        bad = [c for c in checks if c["status"] in BAD]
        result.checks = checks
        result.status = Run.CHECKS_FAILED if bad else Run.SUCCESS
        problems = "; ".join(_describe(spec, c) for c in bad)
        if loader is not None:
            try:
                record_checks(loader.engine, spec.target.db_schema, spec.name, "window", checks,
                              run_id=result.run_id, window_start=result.window.start, window_end=result.window.end)
                set_run_status(loader.engine, spec.target.db_schema, result.run_id, result.status,
                               f"loaded and committed; {problems}" if bad else None)
            except SQLAlchemyError as exc:
                store_error = f"storing them in the target failed: {error_detail(exc)}"
    finally:
        if loader is not None:
            loader.dispose()
    for c in checks:
        log.log(logging.WARNING if c["status"] in BAD else logging.INFO, "pipeline %s, window %s: check %s: %s%s",
                spec.name, result.window.key, c["check"], c["status"], f" ({c['message']})" if c.get("message") else "")
    if store_error is not None:
        listed = ", ".join(f"{c['check']} {c['status']}" for c in checks)
        raise ChecksFailed(
            f"pipeline {spec.name!r}, window {result.window.key}: the window is loaded and committed (loaded "
            f"{result.loaded}), but its checks could not be recorded: {store_error}; etl_runs may still say "
            f"success. Checks: {listed}", result)
    if bad:
        raise ChecksFailed(
            f"pipeline {spec.name!r}, window {result.window.key}: the window is loaded and committed (loaded "
            f"{result.loaded}, quarantined {result.quarantined}), but {len(bad)} check(s) failed or could not run "
            f"(run recorded as {Run.CHECKS_FAILED}): {problems}. Fix the cause and run the window again "
            "(re-running a window is safe)", result)
    return checks


def _plain(value: Any) -> Any:
    """Decimals as strings in JSON (exact), other numbers as they are."""
    if isinstance(value, Decimal):
        return str(value)
    return value
