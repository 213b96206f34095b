"""Validation cost: per 1M rows of 8 columns, and its share of a whole window (extract + load).

``run(n)`` builds a SQLite source of ``n`` rows (bigint key, integer, numeric(12,2), varchar(40), text,
boolean, timestamptz, timestamp cursor; three column checks), then syncs one window into PostgreSQL
(127.0.0.1:5432; SQLite when it is unreachable) twice, into two fresh tables:

* ``with``: the pipeline as it is (transform + pandera validation + quarantine staging);
* ``without``: the same pipeline with the validate step replaced by a plain one: every column
  converted (``driftless.extract.transform.convert_for``, which the raw source values need) and ``frame_to_arrow``;
  no checks, no quarantine, no dedup. (Transforms still run: the bench's spec has none.)

Goal: validation adds no more than 30% to a 1M-row window.

    python benchmarks/bench_validate.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
from sqlalchemy import URL, create_engine, text  # noqa: E402

import driftless.extract.validate as validate_step  # noqa: E402  (pipeline._extract takes Validator from here)
import driftless.pipeline as pipeline  # noqa: E402
from driftless.extract.transform import convert_for, frame_to_arrow  # noqa: E402
from driftless.extract.validate import ChunkResult, Validator  # noqa: E402
from driftless.spec import parse_spec  # noqa: E402
from driftless.window import Window  # noqa: E402

PG_ADMIN = URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=5432, database="postgres")
WINDOW = Window.parse("2024-01-01", "2025-01-01")
COLUMNS = [
    {"name": "id", "type": "bigint", "nullable": False},
    {"name": "customer_id", "type": "integer", "checks": {"min": 1, "max": 100_000}},
    {"name": "amount", "type": "numeric(12,2)", "checks": {"min": 0}},
    {"name": "name", "type": "varchar(40)"},
    {"name": "country", "type": "text", "checks": {"allowed": ["NO", "FR", "DE", "PT"]}},
    {"name": "active", "type": "boolean"},
    {"name": "created_at", "type": "timestamptz"},
    {"name": "updated_at", "type": "timestamp", "nullable": False},
]


def spec_for(table: str):
    return parse_spec({
        "name": f"bench_{table}", "chunk_size": 50_000,
        "source": {"type": "sql", "connection": "bench_src", "table": "orders", "primary_key": "id",
                   "cursor": "updated_at"},
        "target": {"connection": "bench_wh", "table": table},
        "columns": COLUMNS,
    }, "bench")


def _ts(base: datetime, seconds: int) -> str:
    return (base + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S.000000")


def make_source(path: Path, n: int) -> None:
    base = datetime(2024, 3, 1)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount NUMERIC, name TEXT, "
                   "country TEXT, active INTEGER, created_at TEXT, updated_at TEXT)")
        db.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ((i, 1 + i % 99_999, f"{(i * 7919) % 1_000_000 / 100:.2f}", f"customer {i}",
              ("NO", "FR", "DE", "PT")[i % 4], i % 2, _ts(base, i), _ts(base, i)) for i in range(1, n + 1)),
        )
        db.execute("CREATE INDEX ix_orders_updated_at ON orders (updated_at)")


class _PlainValidator(Validator):
    """Conversion (the source hands over raw values) and frame_to_arrow; no checks, no quarantine, no dedup."""

    def check(self, chunk):
        frame = chunk.raw
        typed = pd.DataFrame({c.name: convert_for(c, frame[c.name]).values for c in self.spec.columns})
        good = frame_to_arrow(typed, self.spec)
        rejects = pd.DataFrame({c: pd.Series(dtype=object) for c in ("record_key", "entry_key", "record", "errors")})
        return ChunkResult(good, rejects, pd.DataFrame())  # an empty index: nothing for the dedup step


class _TimedValidator(Validator):
    spent = 0.0

    def check(self, chunk):
        t0 = time.perf_counter()
        try:
            return super().check(chunk)
        finally:
            _TimedValidator.spent += time.perf_counter() - t0


def _window(spec, root: Path) -> tuple[float, float, Any]:
    run_id = f"bench_{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    manifest = pipeline.extract_window(spec, WINDOW, run_id, root)
    t1 = time.perf_counter()
    result = pipeline.load_window(spec, WINDOW, manifest, run_id)
    return t1 - t0, time.perf_counter() - t1, result


def run(n: int = 1_000_000, repeat: int = 2) -> dict[str, Any]:
    """Measure; returns flat ``validate_*`` keys (seconds, shares) for ``benchmarks/run.py``.

    Each variant runs ``repeat`` times (alternating); the fastest run of each is reported.
    """
    work = Path(tempfile.mkdtemp(prefix="bench-validate-"))
    pg_db = None
    old_env = {k: os.environ.get(k) for k in ("AIRFLOW_CONN_BENCH_SRC", "AIRFLOW_CONN_BENCH_WH")}
    try:
        t0 = time.perf_counter()
        make_source(work / "source.db", n)
        source_s = time.perf_counter() - t0
        os.environ["AIRFLOW_CONN_BENCH_SRC"] = f"sqlite:///{work / 'source.db'}"
        try:
            pg_db = f"driftless_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{pg_db}"'))
            admin.dispose()
            os.environ["AIRFLOW_CONN_BENCH_WH"] = PG_ADMIN.set(database=pg_db).render_as_string(hide_password=False)
            target = "postgresql"
        except Exception:  # noqa: BLE001 - no PostgreSQL here: measure on SQLite
            pg_db = None
            os.environ["AIRFLOW_CONN_BENCH_WH"] = f"sqlite:///{work / 'warehouse.db'}"
            target = "sqlite"

        # Alternate the two variants and keep each one's fastest run: the box is shared, so single runs are noisy.
        plain_runs, valid_runs, validate_runs = [], [], []
        for attempt in range(repeat):
            original_validator = validate_step.Validator
            try:
                validate_step.Validator = _PlainValidator
                plain_runs.append(_window(spec_for(f"orders_plain_{attempt}"), work / f"plain{attempt}"))
            finally:
                validate_step.Validator = original_validator
            try:
                validate_step.Validator = _TimedValidator
                _TimedValidator.spent = 0.0
                valid_runs.append(_window(spec_for(f"orders_validated_{attempt}"), work / f"validated{attempt}"))
                validate_runs.append(_TimedValidator.spent)
            finally:
                validate_step.Validator = original_validator
            shutil.rmtree(work / f"plain{attempt}", ignore_errors=True)
            shutil.rmtree(work / f"validated{attempt}", ignore_errors=True)
        plain_extract, plain_load, plain = min(plain_runs, key=lambda r: r[0] + r[1])
        valid_extract, valid_load, validated = min(valid_runs, key=lambda r: r[0] + r[1])
        validate_s = min(validate_runs)
        assert validated.loaded == plain.loaded == n, (validated.loaded, plain.loaded, n)

        plain_total, valid_total = plain_extract + plain_load, valid_extract + valid_load
        print(f"  window of {n:,} rows SQLite -> {target}: without validation {plain_total:.2f} s, with "
              f"{valid_total:.2f} s; inside Validator.validate {validate_s:.2f} s "
              f"({100 * validate_s / plain_total:.1f}% of the plain window; goal <= 30%)", flush=True)
        return {
            "validate_rows": n,
            "validate_target": target,
            "validate_source_build_s": round(source_s, 2),
            "validate_s": round(validate_s, 3),
            "validate_s_per_1m_rows": round(validate_s * 1_000_000 / n, 3),
            "validate_window_without_s": round(plain_total, 2),
            "validate_window_with_s": round(valid_total, 2),
            "validate_extract_without_s": round(plain_extract, 2),
            "validate_extract_with_s": round(valid_extract, 2),
            "validate_load_without_s": round(plain_load, 2),
            "validate_load_with_s": round(valid_load, 2),
            # Time inside Validator.validate (transforms, conversion, pandera, Arrow) over the plain window: an
            # upper bound of what validation adds, since it includes the Arrow conversion the plain path does too.
            "validate_added_pct": round(100 * validate_s / plain_total, 1),
            "validate_share_of_window_pct": round(100 * validate_s / valid_total, 1),
            # The two windows' difference; on a shared 2-core box it is within the noise (can be negative).
            "validate_ab_difference_pct": round(100 * (valid_total - plain_total) / plain_total, 1),
            "validate_goal_added_pct_max": 30,
            "validate_repeats": repeat,
        }
    finally:
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if pg_db:
            admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'))
            admin.dispose()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant; the fastest is reported")
    args = parser.parse_args()
    figures = run(args.n, args.repeat)
    print(json.dumps(figures | {"measured_at": datetime.now(UTC).isoformat(timespec="seconds")}, indent=1))
