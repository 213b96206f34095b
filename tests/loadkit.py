"""Helpers for loader tests: an orders spec, staged windows built from rows, reading the target back."""

from __future__ import annotations

import copy
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import URL, create_engine, select

from driftless.extract.staging import Manifest, StagingWriter
from driftless.load.modes import write_mode_for
from driftless.schema import arrow_schema, target_table
from driftless.spec import PipelineSpec, parse_spec
from driftless.state import as_utc, read_runs, read_state
from driftless.window import Window

ORDERS: dict[str, Any] = {
    "name": "orders_test",
    "chunk_size": 1000,
    "source": {"type": "sql", "connection": "src", "table": "orders", "primary_key": ["id"],
               "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "orders"},
    "columns": [
        {"name": "id", "type": "bigint", "nullable": False},
        {"name": "qty", "type": "integer"},
        {"name": "status", "type": "text"},
        {"name": "amount", "type": "numeric(12,2)"},
        {"name": "currency", "type": "varchar(3)"},
        {"name": "created_at", "type": "timestamptz"},
        {"name": "updated_at", "type": "timestamptz", "nullable": False},
        {"name": "note", "type": "text"},
        {"name": "is_deleted", "type": "boolean"},
    ],
}

T0 = datetime(2025, 3, 1, tzinfo=UTC)
DAY1 = Window(T0, T0 + timedelta(days=1))
DAY2 = Window(T0 + timedelta(days=1), T0 + timedelta(days=2))
ALL = Window(datetime(2000, 1, 1, tzinfo=UTC), T0 + timedelta(days=2))


def orders_spec(**target: Any) -> PipelineSpec:
    data = copy.deepcopy(ORDERS)
    data["target"].update(target)
    return parse_spec(data, "test")


def order(i: int, *, day: int = 0, version: int = 0, **overrides: Any) -> dict[str, Any]:
    row = {
        "id": i,
        "qty": i % 7,
        "status": ["new", "paid", "shipped"][(i + version) % 3],
        "amount": Decimal(i * 3 + version) + Decimal("0.25"),
        "currency": "EUR",
        "created_at": T0 + timedelta(days=day, seconds=i),
        "updated_at": T0 + timedelta(days=day, seconds=i * 10 + version, microseconds=7),
        "note": None if i % 4 == 0 else f"note {i} v{version}",
        "is_deleted": False,
    }
    row.update(overrides)
    return row


def stage_rows(root: Path, spec: PipelineSpec, window: Window, rows: list[dict[str, Any]], *,
               chunk: int = 1000, tag: str = "x") -> Manifest:
    """Write rows (sorted by cursor, like the SQL source reads them) as a window's staging files."""
    rows = sorted(rows, key=lambda r: (r["updated_at"], r["id"]))
    writer = StagingWriter(root / f"{window.key}-{tag}", spec.name, window.start.isoformat(), window.end.isoformat())
    schema = arrow_schema(spec)
    for i in range(0, len(rows), chunk):
        writer.write(pa.Table.from_pylist(rows[i : i + chunk], schema=schema))
    max_cursor = max((r["updated_at"] for r in rows), default=None)
    return writer.close(max_cursor.isoformat() if max_cursor else None)


def read_target(url: URL, spec: PipelineSpec) -> dict[int, dict[str, Any]]:
    """The target's rows by id, values normalized (datetimes UTC-aware, decimals as Decimal)."""
    table = write_mode_for(spec).table(target_table(spec))
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(select(table)).mappings()]
    finally:
        engine.dispose()
    out = {}
    for row in rows:
        for k, v in row.items():
            if isinstance(v, datetime):
                row[k] = as_utc(v)
            elif k == "is_deleted" and v is not None:
                row[k] = bool(v)
        out[row["id"]] = row
    return out


def state_of(url: URL, spec: PipelineSpec) -> tuple[Any, list[str]]:
    engine = create_engine(url)
    try:
        state = read_state(engine, spec.name)
        runs = [r["status"] for r in read_runs(engine, spec.name)]
        return (state.watermark if state else None), runs
    finally:
        engine.dispose()


def source_db(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A SQLite source with the orders table (values as text, as a messy source would hold them)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, qty INTEGER, status TEXT, amount TEXT, "
                   "currency TEXT, created_at TEXT, updated_at TEXT, note TEXT, is_deleted INTEGER)")
        for r in rows:
            db.execute("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (r["id"], r["qty"], r["status"], str(r["amount"]), r["currency"], r["created_at"].isoformat(),
                        r["updated_at"].isoformat(), r["note"], int(r["is_deleted"])))
    return path
