"""``etl_messages``: the message ids a queue pipeline has processed, written in the load's transaction.

One row per pipeline and message id (loaded, quarantined, deduplicated or superseded: every message the
run took). Written by ``QueueSource.record_loaded`` beside the data and the watermark, so a crash leaves
either both or neither; a message redelivered after a crash (its acknowledgement never reached the broker)
is found here and absorbed instead of loaded again. Rows older than ``source.keep_ids`` are pruned by the
load: a message is redelivered only until it is acknowledged, which follows the commit within seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, Connection, Engine, MetaData, String, Table, Text, delete, func, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from driftless.errors import LoadError
from driftless.state import UTC_TIMESTAMP

MESSAGES_TABLE = "etl_messages"
BATCH = 1000


def messages_table(schema: str | None = None) -> Table:
    return Table(
        MESSAGES_TABLE,
        MetaData(schema=schema),
        Column("pipeline", String(128), primary_key=True),
        Column("message_key", String(64), primary_key=True, comment="sha256 of the message id"),
        Column("message_id", Text, nullable=False),
        Column("run_id", String(255), nullable=False),
        Column("loaded_at", UTC_TIMESTAMP, nullable=False, index=True),
    )


def message_key(message_id: str) -> str:
    return hashlib.sha256(message_id.encode()).hexdigest()


def ensure_messages_table(engine: Engine, schema: str | None = None) -> None:
    """Create ``etl_messages`` (before the load's transaction: DDL commits implicitly on MariaDB)."""
    with engine.begin() as conn:
        if not inspect(conn).has_table(MESSAGES_TABLE, schema=schema):
            messages_table(schema).create(conn, checkfirst=True)


def messages_table_exists(conn: Connection, schema: str | None = None) -> bool:
    """Whether ``etl_messages`` exists (before a pipeline's first load it does not)."""
    return inspect(conn).has_table(MESSAGES_TABLE, schema=schema)


def processed(conn: Connection, pipeline: str, ids: Iterable[str], schema: str | None = None,
              exists: bool | None = None) -> set[str]:
    """Which of ``ids`` the pipeline has processed (in ``conn``'s view; empty before the table exists).

    ``exists``: whether ``etl_messages`` exists, when the caller knows (a drain asks once, not per batch).
    """
    ids = list(ids)
    if not ids or not (messages_table_exists(conn, schema) if exists is None else exists):
        return set()
    table = messages_table(schema)
    found: set[str] = set()
    for i in range(0, len(ids), BATCH):
        keys = [message_key(m) for m in ids[i:i + BATCH]]
        found.update(r[0] for r in conn.execute(
            select(table.c.message_id).where(table.c.pipeline == pipeline, table.c.message_key.in_(keys))))
    return found


def record_processed(conn: Connection, pipeline: str, ids: list[str], run_id: str, keep: timedelta,
                     schema: str | None = None) -> list[str]:
    """Record ``ids`` as processed by ``run_id`` in the caller's transaction; returns those recorded before.

    Ids recorded meanwhile by another run are returned (and not written): the caller rolls back. The table's
    primary key finds them: the inserts run in a savepoint, and only when one hits the key are the ids looked
    up (no lookup of every id on the way to a commit). Also prunes ids older than ``keep``.
    """
    table = messages_table(schema)
    now = datetime.now(UTC)
    try:
        with conn.begin_nested():
            for i in range(0, len(ids), BATCH):
                conn.execute(insert(table), [{"pipeline": pipeline, "message_key": message_key(m), "message_id": m,
                                              "run_id": run_id, "loaded_at": now} for m in ids[i:i + BATCH]])
    except IntegrityError as exc:
        before = sorted(processed(conn, pipeline, ids, schema, exists=True))
        if before:
            return before
        raise LoadError(f"pipeline {pipeline!r}: recording the run's message ids in {MESSAGES_TABLE} failed: "
                        f"{str(exc.orig).strip().splitlines()[0][:300]}") from exc
    conn.execute(delete(table).where(table.c.pipeline == pipeline, table.c.loaded_at < now - keep))
    return []


def recorded_by_run(engine: Engine, pipeline: str, run_id: str, schema: str | None = None) -> int:
    """How many message ids ``run_id`` recorded."""
    table = messages_table(schema)
    with engine.connect() as conn:
        if not inspect(conn).has_table(MESSAGES_TABLE, schema=schema):
            return 0
        return int(conn.execute(select(func.count()).select_from(table).where(
            table.c.pipeline == pipeline, table.c.run_id == run_id)).scalar_one())
