"""Dry runs: what loading a window's staged records would change in the target, without writing.

The staged records are compared with the target's rows of the same keys, chunk by chunk (memory
stays bounded by the chunk size): a key absent from the target would be inserted, a key whose
values differ would be updated, the rest are unchanged. Values are compared after normalizing
what drivers return differently (naive vs aware UTC timestamps, JSON text vs parsed JSON).
Nothing is written: no table is created, no watermark moves, no run record is added.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, MetaData, Table, inspect, select, tuple_

from etl.connections import redact, resolve_url, sql_engine
from etl.schema import target_table
from etl.spec import PipelineSpec
from etl.staging import Manifest

# Keys per SELECT: small enough for every dialect's bind-parameter limit (SQLite: 32766).
KEYS_PER_QUERY = 500
SAMPLE = 5


def _norm(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.dumps(json.loads(value), sort_keys=True)
        except ValueError:
            return value
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def _existing(engine: Engine, table: Table, keys: list[str], batch: list[tuple]) -> dict[tuple, dict[str, Any]]:
    cols = [table.c[k] for k in keys]
    where = cols[0].in_([k[0] for k in batch]) if len(cols) == 1 else tuple_(*cols).in_(batch)
    with engine.connect() as conn:
        rows = conn.execute(select(table).where(where)).mappings()
        return {tuple(r[k] for k in keys): dict(r) for r in rows}


def plan_window(spec: PipelineSpec, manifest: Manifest) -> dict[str, Any]:
    """Count the rows a load of ``manifest`` would insert, update or leave unchanged.

    Returns:
        ``{"dry_run": True, "pipeline", "window", "target", "staged", "would_insert",
        "would_update", "unchanged", "changed_columns": {column: rows}, "sample_keys": {...}}``
    """
    url = resolve_url(spec.target.connection)
    engine = sql_engine(url)
    table = target_table(spec, MetaData())
    keys = list(spec.source.primary_key)
    others = [c for c in spec.column_names if c not in keys]
    report: dict[str, Any] = {
        "dry_run": True,
        "pipeline": spec.name,
        "window": {"start": manifest.window_start, "end": manifest.window_end},
        "target": f"{redact(url)} {table.fullname}",
        "staged": manifest.records,
        "would_insert": 0,
        "would_update": 0,
        "unchanged": 0,
        "changed_columns": {},
        "sample_keys": {"insert": [], "update": []},
    }
    try:
        exists = inspect(engine).has_table(table.name, schema=table.schema)
        for chunk in manifest.tables():
            # Of two staged rows with one key the later (newer) one wins, as in the load.
            latest = {tuple(r[k] for k in keys): r for r in chunk.to_pylist()}
            staged_keys = list(latest)
            for i in range(0, len(staged_keys), KEYS_PER_QUERY):
                batch = staged_keys[i:i + KEYS_PER_QUERY]
                current = _existing(engine, table, keys, batch) if exists else {}
                for key in batch:
                    _classify(report, key, latest[key], current.get(key), others)
    finally:
        engine.dispose()
    return report


def _jsonable(key: tuple) -> list[Any]:
    return [k if isinstance(k, int | str) else str(k) for k in key]


def _classify(report: dict[str, Any], key: tuple, staged: dict[str, Any], current: dict[str, Any] | None,
              others: list[str]) -> None:
    if current is None:
        report["would_insert"] += 1
        if len(report["sample_keys"]["insert"]) < SAMPLE:
            report["sample_keys"]["insert"].append(_jsonable(key))
        return
    changed = [c for c in others if _norm(staged[c]) != _norm(current[c])]
    if not changed:
        report["unchanged"] += 1
        return
    report["would_update"] += 1
    for column in changed:
        report["changed_columns"][column] = report["changed_columns"].get(column, 0) + 1
    if len(report["sample_keys"]["update"]) < SAMPLE:
        report["sample_keys"]["update"].append(_jsonable(key))
