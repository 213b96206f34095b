"""A window many times larger than ``chunk_size`` runs in memory bounded by the chunk, not by the window.

Each window runs in a fresh process (``etl run``'s ``run_window``) that reports its peak RSS (VmHWM, reset by
``exec``) and its baseline once imports are done. A window 10x larger must not raise the peak by more than a
few MB: before the dedup index was spilled to disk (``driftless.extract.dedup``), it grew by about 120 bytes per row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import airflow_uri

REPO = Path(__file__).resolve().parents[2]
CHUNK = 4_000

RUN = """
import json, sys
from benchmarks import rss
from driftless.pipeline import run_window
from driftless.spec import parse_spec
from driftless.window import Window
spec = parse_spec(json.loads(sys.argv[1]), "memory-test")
baseline = rss.baseline_mb()
result = run_window(spec, Window.parse("2024-01-01", "2026-01-01"))
print(json.dumps({"loaded": result.loaded, "deduplicated": result.deduplicated, "status": result.status,
                  "baseline_mb": baseline, "peak_mb": rss.peak_mb()}))
"""


def _window(source_url, target_url, table: str, tmp_path: Path) -> dict:
    spec = {
        "name": f"mem_{table}", "chunk_size": CHUNK,
        "source": {"type": "sql", "connection": "src", "table": table, "primary_key": ["id"], "cursor": "updated_at"},
        "target": {"connection": "wh", "table": table},
        "columns": [{"name": "id", "type": "bigint", "nullable": False},
                    {"name": "updated_at", "type": "timestamptz", "nullable": False},
                    {"name": "amount", "type": "numeric(12,2)"}, {"name": "note", "type": "text"}],
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW_CONN_SRC": airflow_uri(source_url),
           "AIRFLOW_CONN_WH": airflow_uri(target_url), "DRIFTLESS_STAGING_DIR": str(tmp_path / "staging"),
           "ARROW_DEFAULT_MEMORY_POOL": "system"}
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(spec)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_window(pg_databases, tmp_path):
    source_url, target_url = pg_databases(), pg_databases()
    engine = create_engine(source_url)
    with engine.begin() as conn:
        for table, rows in (("small", 40_000), ("big", 400_000)):
            # the big window also repeats 1% of its keys (a query-like source), so dedup has work to do
            conn.execute(text(
                f"CREATE TABLE {table} AS SELECT CASE WHEN i % 100 = 0 THEN i - 1 ELSE i END::bigint AS id, "
                "timestamptz '2025-01-01' + i * interval '1 second' AS updated_at, "
                "(i % 100000) / 100.0::numeric(12,2) AS amount, 'note ' || i AS note FROM generate_series(1, :n) i"
            ), {"n": rows})
    engine.dispose()
    small = _window(source_url, target_url, "small", tmp_path)
    big = _window(source_url, target_url, "big", tmp_path)
    assert (small["loaded"], small["deduplicated"]) == (39_600, 400)
    assert (big["loaded"], big["deduplicated"]) == (396_000, 4_000)
    # 10x the rows (100 chunks): the peak may differ by allocator noise, not by ~120 bytes per row (43 MB here).
    print("small:", small, "big:", big)
    growth = (big["peak_mb"] - big["baseline_mb"]) - (small["peak_mb"] - small["baseline_mb"])
    assert growth < 15, (small, big)


def test_integer_keys_hash_as_python_hashes_them():
    # The dedup index buckets entries by Python's hash; an integer key column is hashed by numpy instead and must
    # land in the same bucket as the same key reaching the index as Python ints, Decimals or floats.
    from decimal import Decimal

    import numpy as np
    import pandas as pd

    from driftless.extract.dedup import _hashes

    edges = [0, 1, -1, -2, 2**61 - 2, 2**61 - 1, 2**61, 2**61 + 1, -(2**61 - 1), -(2**61), 2**63 - 1, -(2**63)]
    values = np.concatenate([np.array(edges, dtype=np.int64),
                             np.random.default_rng(7).integers(-(2**63), 2**63 - 1, 5000, dtype=np.int64)])
    index = pd.DataFrame({"id": pd.array(values, dtype="Int64"), "_ident": None})
    expected = [hash(int(v)) for v in values]
    assert _hashes(index, ["id"]).tolist() == expected
    assert [hash(Decimal(int(v))) for v in edges] == expected[:len(edges)]
