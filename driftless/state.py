"""Incremental state and run records, kept in the target database beside the data.

``etl_state`` holds one row per pipeline:

* ``watermark``: the end of the latest window loaded. The schedule's forward position; a backfill
  or a re-run of an older window never moves it backwards.
* ``max_cursor``: the highest cursor value ever loaded (never moves backwards either).

``etl_runs`` holds one row per attempt to sync a window, successful or not: a load writes it inside
its transaction (data, watermark and run record commit together); the window's checks then set its
status to ``checks_failed`` when one FAILs or could not run; a failed extract or load leaves a
``failed`` row. Statuses: ``driftless.status.Run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    update,
)

from driftless.load.evolution import add_missing_nullable_columns
from driftless.schema import UTC_TIMESTAMP
from driftless.status import Run
from driftless.window import Window

STATE_TABLE = "etl_state"
RUNS_TABLE = "etl_runs"



def state_tables(schema: str | None = None) -> tuple[Table, Table]:
    md = MetaData(schema=schema)
    state = Table(
        STATE_TABLE,
        md,
        Column("pipeline", String(128), primary_key=True),
        Column("cursor_column", String(128), nullable=False),
        Column("watermark", UTC_TIMESTAMP),
        Column("max_cursor", UTC_TIMESTAMP),
        Column("last_window_start", UTC_TIMESTAMP),
        Column("last_window_end", UTC_TIMESTAMP),
        Column("last_run_id", String(255)),
        Column("updated_at", UTC_TIMESTAMP, nullable=False),
    )
    runs = Table(
        RUNS_TABLE,
        md,
        Column("id", Integer().with_variant(BigInteger(), "postgresql", "mysql", "mariadb"), primary_key=True,
               autoincrement=True),
        Column("run_id", String(255), nullable=False),
        Column("pipeline", String(128), nullable=False),
        Column("window_start", UTC_TIMESTAMP, nullable=False),
        Column("window_end", UTC_TIMESTAMP, nullable=False),
        Column("status", String(16), nullable=False),
        Column("extracted", BigInteger),
        Column("loaded", BigInteger),
        Column("written", BigInteger),
        Column("watermark", UTC_TIMESTAMP),
        Column("started_at", UTC_TIMESTAMP, nullable=False),
        Column("finished_at", UTC_TIMESTAMP, nullable=False),
        Column("duration_s", Float),
        Column("message", Text),
        Column("metrics", Text),  # JSON: what the source's request loop did (REST sources)
        # Validation (driftless.extract): extracted = loaded + quarantined + deduplicated for each window.
        Column("quarantined", BigInteger),
        Column("deduplicated", BigInteger),
        Column("schema_changes", Text),  # JSON list of the target DDL this run made (driftless.load.evolution)
    )
    return state, runs


@overload
def as_utc(value: datetime | str) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
@overload
def as_utc(value: datetime | str | None) -> datetime | None: ...
def as_utc(value: datetime | str | None) -> datetime | None:
    """Datetimes come back naive from SQLite and MySQL; all stored values are UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    values = [as_utc(v) for v in (a, b) if v is not None]
    return max(values) if values else None


@dataclass
class PipelineState:
    pipeline: str
    watermark: datetime | None
    max_cursor: datetime | None
    last_run_id: str | None


def ensure_state_tables(conn: Connection, schema: str | None = None) -> None:
    state, runs = state_tables(schema)
    existing = set(inspect(conn).get_table_names(schema=schema))
    for table in (state, runs):
        if table.name not in existing:
            table.create(conn, checkfirst=True)
    if runs.name in existing:  # made by an older version: add the columns it lacks
        add_missing_nullable_columns(conn, runs)


def read_state(bind: Engine | Connection, pipeline: str, schema: str | None = None) -> PipelineState | None:
    state, _ = state_tables(schema)
    if not inspect(bind).has_table(STATE_TABLE, schema=schema):
        return None
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            row = conn.execute(select(state).where(state.c.pipeline == pipeline)).first()
    else:
        row = bind.execute(select(state).where(state.c.pipeline == pipeline)).first()
    if row is None:
        return None
    return PipelineState(pipeline, as_utc(row.watermark), as_utc(row.max_cursor), row.last_run_id)


def advance_state(
    conn: Connection,
    pipeline: str,
    cursor_column: str,
    window: Window,
    max_cursor: datetime | None,
    run_id: str,
    schema: str | None = None,
    until: datetime | None = None,
) -> datetime:
    """Move the watermark to ``max(old, window.end)``, within the caller's transaction; return it.

    ``until`` caps the new position (the time the source was read, for a window ending after it): the
    watermark never claims rows the source could not have had yet.
    The caller holds the target's load lock, so reading then writing the row is safe.
    """
    state, _ = state_tables(schema)
    row = conn.execute(select(state).where(state.c.pipeline == pipeline)).first()
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "cursor_column": cursor_column,
        "watermark": _later(row.watermark if row else None, window.end if until is None else min(until, window.end)),
        "max_cursor": _later(row.max_cursor if row else None, max_cursor),
        "last_window_start": window.start,
        "last_window_end": window.end,
        "last_run_id": run_id,
        "updated_at": now,
    }
    if row is None:
        conn.execute(insert(state).values(pipeline=pipeline, **values))
    else:
        conn.execute(update(state).where(state.c.pipeline == pipeline).values(**values))
    return values["watermark"]


def record_run(conn: Connection, schema: str | None = None, **fields: Any) -> None:
    """Insert one row into ``etl_runs`` (fields are its columns)."""
    _, runs = state_tables(schema)
    conn.execute(insert(runs).values(**fields))


def set_run_status(engine: Engine, schema: str | None, run_id: str, status: str, message: str | None) -> int:
    """Record the outcome of a committed window's checks on its run record; returns the rows changed.

    Only the committed attempt's row (status ``success`` or ``checks_failed``) changes; failed attempts
    of the same run id keep theirs.
    """
    _, runs = state_tables(schema)
    # Back to success (the checks of a retry passed) clears the failure's message; a success stays as it is.
    before = [Run.CHECKS_FAILED] if status == Run.SUCCESS else [Run.SUCCESS, Run.CHECKS_FAILED]
    with engine.begin() as conn:
        changed = conn.execute(
            update(runs).where(runs.c.run_id == run_id, runs.c.status.in_(before))
            .values(status=status, message=None if message is None else message[:2000])
        ).rowcount
    return max(changed, 0)


def read_runs(engine: Engine, pipeline: str, schema: str | None = None) -> list[dict[str, Any]]:
    _, runs = state_tables(schema)
    if not inspect(engine).has_table(RUNS_TABLE, schema=schema):
        return []
    with engine.connect() as conn:
        rows = conn.execute(select(runs).where(runs.c.pipeline == pipeline).order_by(runs.c.id)).mappings()
        return [dict(r) for r in rows]
