"""Quarantine storage: the ``etl_quarantine`` table in the target database, written and read.

Load (``write_quarantine``): inside the load transaction, the window's rejected records (staged as
``quarantine-*.parquet`` by the extract) are upserted into ``etl_quarantine`` (one entry per pipeline and
primary key, or per record when the key itself is invalid; ``first_seen``/``last_seen``/``times_seen``
track repeats), and entries whose key the window loaded with a cursor at least as recent are removed
(the row was fixed at the source).

Read (``iter_quarantine``, ``list_quarantine``): a pipeline's entries, filtered by run, window or reason.
Replay lives in ``driftless.quarantine.replay``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import mysql

from driftless.errors import LoadError
from driftless.extract.staging import Manifest, read_parquet
from driftless.schema import UTC_TIMESTAMP
from driftless.spec import PipelineSpec
from driftless.window import Window

log = logging.getLogger(__name__)

QUARANTINE_TABLE = "etl_quarantine"
BATCH = 500
RESOLVE_MAX = 50_000


def quarantine_table(schema: str | None = None) -> Table:
    """``etl_quarantine``: one row per rejected record (per pipeline and key) with the reasons."""
    return Table(
        QUARANTINE_TABLE,
        MetaData(schema=schema),
        Column("id", Integer().with_variant(BigInteger(), "postgresql", "mysql", "mariadb"), primary_key=True,
               autoincrement=True),
        Column("pipeline", String(128), nullable=False),
        Column("entry_key", String(64), nullable=False, comment="sha256 of the key values (or of the record)"),
        Column("record_key", Text, comment="JSON list of the primary key values; null when the key is invalid"),
        Column("run_id", String(255), nullable=False),
        Column("window_start", UTC_TIMESTAMP, nullable=False),
        Column("window_end", UTC_TIMESTAMP, nullable=False),
        Column("record", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False,
               comment="the record as extracted, JSON"),
        Column("errors", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False,
               comment="JSON list of {column, check, message}"),
        Column("first_seen", UTC_TIMESTAMP, nullable=False),
        Column("last_seen", UTC_TIMESTAMP, nullable=False),
        Column("times_seen", Integer, nullable=False),
        UniqueConstraint("pipeline", "entry_key", name="uq_etl_quarantine_entry"),
    )


def ensure_quarantine_table(engine: Engine, schema: str | None = None) -> None:
    with engine.begin() as conn:
        if not inspect(conn).has_table(QUARANTINE_TABLE, schema=schema):
            quarantine_table(schema).create(conn, checkfirst=True)


def quarantined_rows(manifest: Manifest) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in manifest.quarantine_files:
        path = Path(manifest.directory) / name
        try:
            rows += read_parquet(path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise LoadError(f"staging file {path} is unreadable ({exc}); re-run the extract step") from exc
    return rows


def _upsert_entries(conn: Connection, spec: PipelineSpec, rows: list[dict[str, Any]], run_id: str,
                    window_start: datetime, window_end: datetime, now: datetime) -> None:
    """Insert new entries; refresh (record, errors, last_seen, times_seen) of entries seen before.

    Portable on purpose (select, then update or insert): the caller holds the target's load lock.
    """
    q = quarantine_table(spec.target.db_schema)
    for start in range(0, len(rows), BATCH):
        batch = {r["entry_key"]: r for r in rows[start:start + BATCH]}
        existing = dict(conn.execute(
            select(q.c.entry_key, q.c.id).where(q.c.pipeline == spec.name, q.c.entry_key.in_(list(batch)))
        ).all())
        updates = [{"b_id": existing[k], "record": r["record"], "errors": r["errors"], "record_key": r["record_key"],
                    "run_id": run_id, "window_start": window_start, "window_end": window_end, "last_seen": now}
                   for k, r in batch.items() if k in existing]
        inserts = [{"pipeline": spec.name, "entry_key": k, "record_key": r["record_key"], "run_id": run_id,
                    "window_start": window_start, "window_end": window_end, "record": r["record"],
                    "errors": r["errors"], "first_seen": now, "last_seen": now, "times_seen": 1}
                   for k, r in batch.items() if k not in existing]
        if updates:
            conn.execute(
                update(q).where(q.c.id == bindparam("b_id")).values(
                    record=bindparam("record"), errors=bindparam("errors"), record_key=bindparam("record_key"),
                    run_id=bindparam("run_id"), window_start=bindparam("window_start"),
                    window_end=bindparam("window_end"), last_seen=bindparam("last_seen"),
                    times_seen=q.c.times_seen + 1),
                updates,
            )
        if inserts:
            conn.execute(insert(q), inserts)


def write_quarantine(conn: Connection, spec: PipelineSpec, window: Window, run_id: str, manifest: Manifest) -> int:
    """Upsert the window's rejected records into ``etl_quarantine`` (in the load transaction); returns them."""
    rows = quarantined_rows(manifest)
    if len(rows) != manifest.quarantined:
        raise LoadError(f"staging holds {len(rows)} quarantined records but the extract reported "
                        f"{manifest.quarantined}; re-run the extract step")
    if rows:
        _upsert_entries(conn, spec, rows, run_id, window.start, window.end, datetime.now(UTC))
    resolved = resolve_loaded(conn, spec, manifest)
    if resolved:
        log.info("pipeline %s: %d quarantined record(s) resolved by rows loaded in this window", spec.name, resolved)
    return len(rows)


def resolve_loaded(conn: Connection, spec: PipelineSpec, manifest: Manifest) -> int:
    """Remove quarantine entries whose key this window loaded with a cursor at least as recent.

    Such an entry was fixed at the source (a good version of the row arrived); keeping it would only
    offer a stale record for replay. Skipped when the pipeline has more than ``RESOLVE_MAX`` entries.
    """
    q = quarantine_table(spec.target.db_schema)
    has_key = and_(q.c.pipeline == spec.name, q.c.record_key.is_not(None))
    count = conn.execute(select(func.count()).select_from(q).where(has_key)).scalar_one()
    if count == 0 or manifest.records == 0:
        return 0
    if count > RESOLVE_MAX:
        log.warning("pipeline %s: %d quarantined records; not checking which of them this window resolved",
                    spec.name, count)
        return 0
    entries = conn.execute(select(q.c.id, q.c.record_key, q.c.record).where(has_key)).all()
    # Imported here: the comparison converts with the extract's rules (pandas), needed only when entries exist;
    # the load path stays free of pandas (the load's memory, an Airflow load task's import time).
    from driftless.quarantine.resolve import resolved_entries

    resolved = resolved_entries(spec, manifest, entries)
    if resolved:
        conn.execute(delete(q).where(q.c.id.in_(sorted(resolved))))
    return len(resolved)


def reasons_of_entry(errors: list[dict[str, Any]]) -> list[str]:
    """An entry's reasons as ``"column: check"`` (``"(row): check"`` for a row-level failure)."""
    return [f"{e.get('column') or '(row)'}: {e.get('check')}" for e in errors]


def _matches(errors: list[dict[str, Any]], reason: str) -> bool:
    """Whether one of the errors has ``reason`` as its check, its column or its ``column: check``."""
    return any(reason in (e.get("check"), e.get("column") or "(row)", text)
               for e, text in zip(errors, reasons_of_entry(errors), strict=True))


def iter_quarantine(engine: Engine, spec: PipelineSpec, *, run_id: str | None = None, window: Window | None = None,
                    reason: str | None = None) -> Generator[dict[str, Any], None, None]:
    """The pipeline's quarantined records, oldest first (errors and record decoded from JSON), streamed.

    Filters: ``run_id`` (the run that last saw the record), ``window`` (records last seen by a run of a
    window inside it), ``reason`` (see ``_matches``).
    """
    schema = spec.target.db_schema
    if not inspect(engine).has_table(QUARANTINE_TABLE, schema=schema):
        return
    q = quarantine_table(schema)
    stmt = select(q).where(q.c.pipeline == spec.name).order_by(q.c.id)
    if run_id is not None:
        stmt = stmt.where(q.c.run_id == run_id)
    if window is not None:
        stmt = stmt.where(q.c.window_start >= window.start, q.c.window_end <= window.end)
    with engine.connect() as conn:
        for mapping in conn.execution_options(yield_per=BATCH).execute(stmt).mappings():
            row = dict(mapping)
            row["record"] = json.loads(row["record"])
            row["errors"] = json.loads(row["errors"])
            row["record_key"] = json.loads(row["record_key"]) if row["record_key"] else None
            if reason is None or _matches(row["errors"], reason):
                yield row


def list_quarantine(engine: Engine, spec: PipelineSpec, limit: int | None = None,
                    **filters: Any) -> list[dict[str, Any]]:
    """The pipeline's quarantined records, oldest first, at most ``limit``; filters as ``iter_quarantine``."""
    entries = iter_quarantine(engine, spec, **filters)
    try:
        return list(islice(entries, limit) if limit else entries)
    finally:
        entries.close()
