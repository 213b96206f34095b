"""Reconcile a whole pipeline: table checksum, deep diff, repair; what ``etl reconcile`` runs.

* quick (default): one count and hash sum of the whole table on each side; says whether source and
  target agree, not where they differ.
* ``deep``: the deep diff (``driftless.reconcile.diff``): which keys are missing, extra or changed.
* ``repair``: re-extracts exactly the drifted keys from the source and upserts them through the
  target's loader (same code as a window's load); deletes the target's extra rows when the spec
  says ``reconcile.propagate_deletes: true``; then diffs again to verify.

Every result is stored in ``etl_reconciliation`` in the target (``kind = 'deep'``). Statuses:
``driftless.status.Check``; ``check_pipeline`` (the report's entry point) also records a deep diff that
is not available (SKIP: REST and query sources) or could not run (ERROR), never a PASS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, column, delete, select, table, tuple_
from sqlalchemy.exc import SQLAlchemyError

from driftless.connections import resolve_url
from driftless.errors import DriftlessError, ReconciliationFailed, error_detail
from driftless.extract.validate import Validator
from driftless.load.entry import LoadResult, load_rows
from driftless.logs import event
from driftless.reconcile.diff import DeepDiff, DiffResult
from driftless.reconcile.store import record_checks
from driftless.redact import redact_url
from driftless.schema import read_type, target_table
from driftless.sources.sql.source import SqlSource
from driftless.spec import PipelineSpec
from driftless.status import Check
from driftless.targets.loaders import loader_for

log = logging.getLogger(__name__)

BATCH = 500


def _batches(items: list[Any], size: int = BATCH) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _key_filter(cols: list[Any], keys: list[tuple[Any, ...]]):
    if len(cols) == 1:
        return cols[0].in_([k[0] for k in keys])
    return tuple_(*cols).in_(keys)


def fetch_source_rows(spec: PipelineSpec, engine, keys: list[tuple[Any, ...]]) -> Iterable[pd.DataFrame]:
    """The source rows with these primary-key values, as the source reads them (raw values), in batches."""
    schema, _, name = (spec.source.table or "").rpartition(".")
    columns = spec.source_columns
    src = table(name, *[column(c.source_name, read_type(c.type)) for c in columns], schema=schema or None)
    key_cols = [src.c[spec.column(k).source_name] for k in spec.source.primary_key]
    names = [c.name for c in columns]
    with engine.connect() as conn:
        for batch in _batches(keys):
            stmt = select(*[src.c[c.source_name].label(c.name) for c in columns]).where(
                _key_filter(key_cols, batch))
            rows = conn.execute(stmt).all()
            yield pd.DataFrame.from_records([tuple(r) for r in rows], columns=names)


def repair(spec: PipelineSpec, diff: DiffResult) -> dict[str, int]:
    """Load the drifted keys from the source; delete extras if deletes propagate. Returns counts.

    The rows load through the one load (``driftless.load.entry.load_rows``) under the target's write mode
    (``append`` leaves keys already in the target alone; a soft-deleted row that returns is undeleted).
    """
    source = SqlSource(spec)
    loader = loader_for(resolve_url(spec.target.connection))
    counts = {"upserted": 0, "deleted": 0, "rejected": 0}
    validator = Validator(spec)  # the same conversion, transforms and checks as a window's extract

    def rows(conn: Connection, load: LoadResult) -> Iterator[pa.Table]:
        for frame in fetch_source_rows(spec, source.engine, diff.source_keys):
            if frame.empty:
                continue
            checked = validator.validate(frame)
            counts["rejected"] += len(checked.rejects)  # what a window would quarantine is not loaded by a repair
            counts["upserted"] += checked.good.num_rows
            yield checked.good

    def then(conn: Connection, load: LoadResult) -> None:
        if spec.reconcile.propagate_deletes and diff.extra_keys:
            key_cols = [load.target.c[k] for k in spec.source.primary_key]
            for batch in _batches(diff.extra_keys):
                gone = conn.execute(delete(load.target).where(_key_filter(key_cols, batch))).rowcount
                counts["deleted"] += max(gone, 0)

    try:
        load_rows(spec, rows, then=then, loader=loader)  # no window: no delete detection, replace writes by key
    except SQLAlchemyError as exc:
        raise ReconciliationFailed(
            f"pipeline {spec.name!r}: repair of {target_table(spec).fullname!r} in {redact_url(loader.url)} failed "
            f"(rolled back): {error_detail(exc, loader.url)}") from exc
    finally:
        source.engine.dispose()
        loader.dispose()
    event(log, "repair done", pipeline=spec.name, **counts)
    if counts["rejected"]:
        log.warning("pipeline %s: repair left %d source row(s) alone that fail validation (a window would quarantine "
                    "them; `etl run` the window to record them in etl_quarantine)", spec.name, counts["rejected"])
    return {**counts, "extras_kept": 0 if spec.reconcile.propagate_deletes else len(diff.extra_keys)}


def _quick(spec: PipelineSpec, source_url, target_url) -> dict[str, Any]:
    t0 = time.monotonic()
    with DeepDiff.for_spec(spec, source_url, target_url) as diff:
        (cs, hs), (ct, ht) = diff.quick()
        same = (cs, hs) == (ct, ht)
        if not same and not diff.exact_hashes:  # (JSON escapes in MariaDB): the rows decide
            same = diff.run().differences == 0
    return {
        "table": spec.target.table, "missing_in_target": None if not same else 0,
        "extra_in_target": None if not same else 0, "changed": None if not same else 0,
        "rows_source": cs, "rows_target": ct, "status": Check.PASS if same else Check.FAIL,
        "duration_s": round(time.monotonic() - t0, 3),
        "hint": None if same else "source and target differ; run with --deep to find the rows",
    }


def deep_diff_pipeline(spec: PipelineSpec, **options: Any) -> DiffResult:
    """The deep diff of a pipeline's source table and target table."""
    with DeepDiff.for_spec(spec, resolve_url(spec.source.connection), resolve_url(spec.target.connection),
                           **options) as diff:
        return diff.run()


def reconcile_pipeline(spec: PipelineSpec, deep: bool = False, do_repair: bool = False,
                       samples: int = 5) -> dict[str, Any]:
    """Compare a pipeline's source and target (and repair them); returns the summary, also stored.

    Args:
        spec: the pipeline.
        deep: find the differing rows (otherwise only whether the tables agree).
        do_repair: fix what the deep diff found (implies ``deep``), then verify with a second diff.
        samples: how many sample rows per kind of difference the summary carries.
    """
    t0 = time.monotonic()
    unavailable = deep_unavailable(spec)
    if unavailable:
        raise ReconciliationFailed(f"pipeline {spec.name!r}: {unavailable}")
    source_url, target_url = resolve_url(spec.source.connection), resolve_url(spec.target.connection)
    if not (deep or do_repair):
        summary = _quick(spec, source_url, target_url)
        checks = [{"check": "table_checksum", "status": summary["status"], "source": summary["rows_source"],
                   "target": summary["rows_target"], "details": summary}]
    else:
        found = deep_diff_pipeline(spec)
        summary = {"pipeline": spec.name, **found.summary(samples)}
        checks = [{"check": "deep_diff", "status": found.status, "source": found.rows_source,
                   "target": found.rows_target, "difference": float(found.differences), "details": summary}]
        if do_repair and found.differences:
            changes = repair(spec, found)
            after = deep_diff_pipeline(spec)
            summary["repaired"] = changes
            summary["after"] = {k: v for k, v in after.summary(samples).items() if k != "samples"}
            summary["status"] = Check.REPAIRED if after.status == Check.PASS else Check.FAIL
            checks.append({"check": "repair", "status": after.status, "source": after.rows_source,
                           "target": after.rows_target, "difference": float(after.differences),
                           "details": {**changes, "after": summary["after"]}})
    summary["pipeline"] = spec.name
    summary["duration_s"] = round(time.monotonic() - t0, 3)
    loader = loader_for(target_url)
    try:
        record_checks(loader.engine, spec.target.db_schema, spec.name, "deep", checks)
    finally:
        loader.dispose()
    return summary


def deep_unavailable(spec: PipelineSpec) -> str | None:
    """Why the pipeline's whole table cannot be compared (deep diff, repair); None when it can."""
    if spec.source.table:
        return None
    kind = f"{spec.source.type!r}{' with a query' if spec.source.type == 'sql' else ''}"
    sums = ", sums of " + ", ".join(spec.reconcile.sum_columns) if spec.reconcile.sum_columns else ""
    return (f"reconciling a whole table needs a SQL source table (source type {kind}): no deep diff or repair; "
            f"its windows are checked after every load (record counts{sums})")


def check_pipeline(spec: PipelineSpec, repair: bool = False, samples: int = 5) -> dict[str, Any]:
    """The deep diff (and repair) of one pipeline for the report: the outcome is always a status, and stored.

    SKIP when the deep diff is not available for the source (``message`` says why), ERROR when it could
    not run (``message`` holds the cause); both are recorded in ``etl_reconciliation`` (best effort) so
    that the report shows what the task returned.
    """
    unavailable = deep_unavailable(spec)
    summary: dict[str, Any]
    if unavailable is None:
        try:
            return reconcile_pipeline(spec, deep=True, do_repair=repair, samples=samples)
        except (DriftlessError, SQLAlchemyError) as exc:
            summary = {"pipeline": spec.name, "status": Check.ERROR,
                       "message": f"the deep diff could not run: {error_detail(exc)}"}
    else:
        summary = {"pipeline": spec.name, "status": Check.SKIP, "message": f"not checked: {unavailable}"}
    summary.update(dict.fromkeys(("missing_in_target", "extra_in_target", "changed", "rows_source", "rows_target")))
    try:
        loader = loader_for(resolve_url(spec.target.connection))
        try:
            record_checks(loader.engine, spec.target.db_schema, spec.name, "deep", [
                {"check": "deep_diff", "status": summary["status"], "message": summary["message"],
                 "details": summary}])
        finally:
            loader.dispose()
    except (DriftlessError, SQLAlchemyError) as exc:  # the target may be what is down
        log.warning("could not record the deep diff of %s: %s", spec.name, error_detail(exc)[:200])
    return summary
