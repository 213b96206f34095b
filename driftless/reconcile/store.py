"""The ``etl_reconciliation`` table: every check result, kept in the target beside the data.

One row per check: the per-window checks after each load (``kind = 'window'``) and each deep
diff (``kind = 'deep'``, whose ``details`` hold the JSON summary with sample rows). The report
(``etl report``) reads it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
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
)

from driftless.state import UTC_TIMESTAMP

RECONCILIATION_TABLE = "etl_reconciliation"


def reconciliation_table(schema: str | None = None) -> Table:
    return Table(
        RECONCILIATION_TABLE,
        MetaData(schema=schema),
        Column("id", Integer().with_variant(BigInteger(), "postgresql", "mysql", "mariadb"), primary_key=True,
               autoincrement=True),
        Column("run_id", String(255)),
        Column("pipeline", String(128), nullable=False),
        Column("kind", String(16), nullable=False),
        Column("check_name", String(128), nullable=False),
        Column("window_start", UTC_TIMESTAMP),
        Column("window_end", UTC_TIMESTAMP),
        Column("status", String(8), nullable=False),
        Column("source_value", String(64)),
        Column("target_value", String(64)),
        Column("difference", Float),
        Column("message", Text),
        Column("details", Text),
        Column("checked_at", UTC_TIMESTAMP, nullable=False),
    )


def record_checks(engine: Engine, schema: str | None, pipeline: str, kind: str, checks: list[dict[str, Any]],
                  run_id: str | None = None, window_start: datetime | None = None,
                  window_end: datetime | None = None) -> None:
    """Store check results (dicts with ``check``, ``status``, ``source``, ``target``, ...)."""
    table = reconciliation_table(schema)
    now = datetime.now(UTC)
    rows = []
    for c in checks:
        details = c.get("details")
        rows.append({
            "run_id": run_id, "pipeline": pipeline, "kind": kind, "check_name": c["check"],
            "window_start": window_start, "window_end": window_end, "status": c["status"],
            "source_value": None if c.get("source") is None else str(c["source"])[:64],
            "target_value": None if c.get("target") is None else str(c["target"])[:64],
            "difference": c.get("difference"), "message": c.get("message"),
            "details": None if details is None else json.dumps(details, default=str),
            "checked_at": now,
        })
    with engine.begin() as conn:
        table.create(conn, checkfirst=True)
        if rows:
            conn.execute(insert(table), rows)


def read_checks(engine: Engine, pipeline: str, schema: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The latest check results of a pipeline, newest first (``details`` decoded)."""
    table = reconciliation_table(schema)
    if not inspect(engine).has_table(RECONCILIATION_TABLE, schema=schema):
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            select(table).where(table.c.pipeline == pipeline).order_by(table.c.id.desc()).limit(limit)
        ).mappings()
        out = []
        for r in rows:
            row = dict(r)
            row["details"] = json.loads(row["details"]) if row["details"] else None
            out.append(row)
        return out
