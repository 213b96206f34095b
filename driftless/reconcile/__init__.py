"""Reconciliation: does the target hold what the source holds?"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import Engine, MetaData, Table, func, select


def table_fingerprint(engine: Engine, table_name: str, key: list[str], schema: str | None = None) -> dict[str, Any]:
    """Row count and a SHA-256 over every row in key order: equal fingerprints mean equal tables."""
    table = Table(table_name, MetaData(), autoload_with=engine, schema=schema)
    digest = hashlib.sha256()
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(table)).scalar_one()
        for row in conn.execute(select(table).order_by(*[table.c[k] for k in key])):
            digest.update(repr(tuple(row)).encode())
    return {"rows": count, "sha256": digest.hexdigest()}
