"""Deterministic orders-like data for the benchmarks, generated in Arrow chunks (bounded memory).

Columns: id bigint (key), customer_id integer, qty integer, status text, amount numeric(12,2),
currency char(3), created_at and updated_at timestamptz (the cursor), note nullable text.
The "nightly" variant changes 10% of the rows (id % 10 == 3): status, qty, amount, note, updated_at.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHUNK = 50_000
BASE_TS = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
# Python lists, made Arrow arrays only when data is generated: pyarrow's first ``pa.array`` imports pandas (its
# pandas shim), which would put pandas into a measured case's baseline.
STATUSES = ["new", "paid", "packed", "shipped", "delivered"]
CURRENCIES = ["EUR", "USD", "PLN", "GBP"]

SPEC: dict[str, Any] = {
    "name": "bench_orders",
    "chunk_size": CHUNK,
    "source": {"type": "sql", "connection": "src", "table": "orders", "primary_key": ["id"], "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "orders"},
    "columns": [
        {"name": "id", "type": "bigint", "nullable": False},
        {"name": "customer_id", "type": "integer", "nullable": False},
        {"name": "qty", "type": "integer", "nullable": False},
        {"name": "status", "type": "text", "nullable": False},
        {"name": "amount", "type": "numeric(12,2)", "nullable": False},
        {"name": "currency", "type": "varchar(3)", "nullable": False},
        {"name": "created_at", "type": "timestamptz", "nullable": False},
        {"name": "updated_at", "type": "timestamptz", "nullable": False},
        {"name": "note", "type": "text"},
    ],
}
WINDOW = ("2024-01-01T00:00:00Z", "2026-01-01T00:00:00Z")  # covers every generated cursor value


def orders_chunk(lo: int, hi: int, nightly: bool = False) -> pa.Table:
    """Rows with ids ``lo+1 .. hi``; ``nightly`` changes every row with ``id % 10 == 3``."""
    ids = np.arange(lo + 1, hi + 1, dtype=np.int64)
    changed = (ids % 10 == 3) if nightly else np.zeros(len(ids), dtype=bool)
    bump = changed.astype(np.int64)
    created = BASE_TS + ids * 1_000_000 + (ids * 7) % 1_000_000
    updated = created + (ids % 86_400) * 1_000_000 + bump * 30 * 86_400 * 1_000_000
    cents = (ids * 1237) % 100_000_000 + bump * 99
    note_text = pc.binary_join_element_wise(
        pa.array(np.where(changed, "changed note ", "note ")), pc.cast(pa.array(ids), pa.string()), "")
    note = pc.if_else(pa.array(ids % 3 == 0), pa.scalar(None, pa.string()), note_text)
    return pa.table({
        "id": pa.array(ids),
        "customer_id": pa.array(((ids * 7919) % 100_000).astype(np.int32)),
        "qty": pa.array((ids % 50 + 1 + bump).astype(np.int32)),
        "status": pc.take(pa.array(STATUSES), pa.array((ids * 31 + bump) % 5)),
        # decimal128 keeps the unscaled integer: cents as decimal(19,0) viewed as decimal(19,2).
        "amount": pc.cast(pc.cast(pa.array(cents), pa.decimal128(19, 0)).view(pa.decimal128(19, 2)),
                          pa.decimal128(12, 2)),
        "currency": pc.take(pa.array(CURRENCIES), pa.array(ids % 4)),
        "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
        "updated_at": pa.array(updated, pa.timestamp("us", tz="UTC")),
        "note": note,
    })


def prepare(root: Path, n: int) -> dict[str, str]:
    """Staging directories (driftless manifests) for the first and the nightly load, made once per N."""
    from driftless.extract.staging import StagingWriter

    out = {}
    for variant in ("base", "nightly"):
        directory = root / f"n{n}" / variant
        if (directory / "_manifest.json").is_file():
            out[variant] = str(directory)
            continue
        writer = StagingWriter(directory, SPEC["name"], *WINDOW)
        max_cursor = None
        for lo in range(0, n, CHUNK):
            chunk = orders_chunk(lo, min(lo + CHUNK, n), nightly=variant == "nightly")
            writer.write(chunk)
            top = pc.max(chunk["updated_at"]).as_py()
            max_cursor = top if max_cursor is None or top > max_cursor else max_cursor
        writer.close(max_cursor.isoformat() if max_cursor else None)
        out[variant] = str(directory)
    return out


def manifest_files(directory: str) -> list[str]:
    data = json.loads((Path(directory) / "_manifest.json").read_text())
    return [str(Path(directory) / f) for f in data["files"]]
