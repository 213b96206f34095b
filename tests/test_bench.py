"""``make bench`` at a small N: every case runs, figures are the cases' own, a broken case fails the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import MARIADB_ADMIN, PG_ADMIN

REPO = Path(__file__).resolve().parent.parent
# Both tests run benchmarks/run.py, whose data files (bench-results/) have fixed names: under `make test`'s
# pytest-xdist they run in one worker (see LIVE_STACK in tests/helpers.py). Their databases are named by a
# BENCH_DB_PREFIX of their own, so a `make bench` running beside the tests cannot drop them, and are dropped after.
pytestmark = pytest.mark.xdist_group("bench")
PREFIX = f"driftless_bench_t{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True, scope="module")
def _drop_bench_databases():
    yield
    pg = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    maria = create_engine(MARIADB_ADMIN)
    try:
        with pg.connect() as conn:
            names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                                 {"p": f"{PREFIX}%"}).scalars().all()
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        with maria.connect() as conn:
            names = conn.execute(text("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE :p"),
                                 {"p": f"{PREFIX}%"}).scalars().all()
            for name in names:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        pg.dispose()
        maria.dispose()


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=1200,
                          env={**os.environ, "PYTHONPATH": str(REPO), "BENCH_DB_PREFIX": PREFIX})


@pytest.mark.slow
def test_bench_small_n_ends_with_its_json_line(pg_url):
    proc = _bench("--n", "2000", "--reps", "1", "--no-dlt")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [k for k in summary if k.endswith("_error")]
    assert summary["dag_specs"] == 50 and summary["dags"] == 50 and summary["import_errors"] == 0
    assert summary["validate_rows"] == 2000
    # Each case's own peak (VmHWM), at least its baseline (interpreter + imports) and far from a shared maximum.
    peaks = {k: v for k, v in summary.items() if k.endswith("_peak_rss_mb") and v is not None}
    assert {"pg_upsert_peak_rss_mb", "window_pg_to_pg_peak_rss_mb"} <= set(peaks)
    assert summary["window_pg_to_pg_peak_rss_mb"] >= summary["window_pg_to_pg_baseline_rss_mb"] > 0
    assert summary["pg_raw_copy_peak_rss_mb"] < summary["window_pg_to_pg_peak_rss_mb"]
    # File and queue cases: each figure from the case's own process, every row and message accounted for.
    for case in ("raw_copy_csv", "driftless_csv", "raw_copy_parquet", "driftless_parquet"):
        assert summary[f"files_{case}_rss_mb"] >= summary[f"files_{case}_baseline_rss_mb"] > 0
    for kind in ("rabbitmq", "redis_stream"):
        driftless, naive = summary[f"{kind}_driftless"], summary[f"{kind}_naive"]
        assert driftless["messages"] == naive["messages"] == 2000
        assert driftless["peak_rss_mb"] >= driftless["baseline_rss_mb"] > naive["baseline_rss_mb"] > 0


def test_a_failing_case_fails_the_run_and_prints_no_json(pg_url, tmp_path):
    # An unknown case name fails inside the case process: the run must exit non-zero, name it, print no JSON.
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from benchmarks import bench_loaders, run; "
         "bench_loaders.CASES.append(('no_such_case', 'a case that fails', 'pg')); "
         "sys.exit(run.main(['--n', '100', '--reps', '1', '--only', 'loaders', '--case', 'no_such', '--no-dlt']))"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no_such_case" in proc.stderr and "benchmark FAILED" in proc.stderr
    assert not any(line.startswith("{") for line in proc.stdout.splitlines())
