"""``etl status``: fresh, stale, failing and unreadable pipelines, as a table and as JSON, with exit codes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, update

from driftless.catchup import last_boundary
from driftless.state import state_tables
from tests.conftest import airflow_uri

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
SPEC = {
    "name": "events",
    "schedule": "@daily",
    "start_date": (TODAY - timedelta(days=2)).date().isoformat(),
    "max_reject_ratio": 0.5,
    "source": {"type": "sql", "connection": "src", "table": "events", "primary_key": ["id"], "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "events"},
    "columns": [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "amount", "type": "numeric(10,2)", "nullable": False},
        {"name": "updated_at", "type": "timestamp", "nullable": False},
    ],
}


def etl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "driftless.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def setup(tmp_path: Path, target_url, spec: dict | None = None) -> tuple[Path, dict[str, str]]:
    source = tmp_path / "source.db"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, amount TEXT, updated_at TEXT)")
        for i in range(10):  # rows over the last two days; one amount does not convert (quarantined)
            stamp = TODAY - timedelta(days=2) + timedelta(hours=4 * i)
            db.execute("INSERT INTO events VALUES (?, ?, ?)",
                       (i, "n/a" if i == 3 else f"{i}.50", stamp.strftime("%Y-%m-%d %H:%M:%S.000000")))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "events.yaml").write_text(yaml.safe_dump(spec or SPEC))
    env = dict(os.environ, AIRFLOW_CONN_SRC=f"sqlite:///{source}", AIRFLOW_CONN_WH=airflow_uri(target_url),
               DRIFTLESS_SPECS_DIR=str(specs))
    return specs, env


def status(env: dict[str, str], *args: str) -> tuple[int, list[dict]]:
    proc = etl(["status", "--json", *args], env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_fresh_pipeline_is_ok(tmp_path, sqlite_url):
    _, env = setup(tmp_path, sqlite_url)
    assert etl(["run", "events"], env).returncode == 0
    code, [row] = status(env, "events")
    assert code == 0
    assert row["health"] == "ok" and row["last_run_status"] == "success"
    assert row["watermark"] == last_boundary("@daily", datetime.now(UTC)).isoformat()
    assert row["behind_s"] == 0 and row["interval_s"] == 86400 and row["stale_after_s"] == 2 * 86400 + 3600
    assert row["quarantined_open"] == 1 and row["failing_checks"] == []
    assert row["source"] == "src:events" and row["target"] == "wh:events"
    table = etl(["status"], env)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["PIPELINE", "SOURCE", "->"]
    assert "src:events -> wh:events" in table.stdout and " ok" in table.stdout


def test_stale_pipeline_shows_as_stale(tmp_path, wh):
    _, env = setup(tmp_path, wh)
    assert etl(["run", "events"], env).returncode == 0
    # The last run was three days ago: move the watermark back in the target's etl_state.
    state, _ = state_tables()
    old = datetime.now(UTC) - timedelta(days=3)
    engine = create_engine(wh)
    with engine.begin() as conn:
        conn.execute(update(state).where(state.c.pipeline == "events").values(
            watermark=old if wh.get_backend_name() == "postgresql" else old.replace(tzinfo=None)))
    engine.dispose()
    code, [row] = status(env)
    assert code == 2
    assert row["health"] == "stale"
    assert row["behind_s"] > 2 * 86400 and row["lag_s"] > 3 * 86400 - 60
    assert "more than 2 schedule intervals (24.0h each) + 60m grace" in row["reasons"][0]
    table = etl(["status"], env)
    assert table.returncode == 2 and "STALE" in table.stdout and "events: stale: watermark" in table.stdout
    # A longer grace accepts it.
    code, [row] = status(env, "--grace", "P2D")
    assert code == 0 and row["health"] == "ok"


def test_failing_and_never_run_and_unreadable(tmp_path, sqlite_url):
    # Started three days ago: more than 2 intervals + 1 h grace whatever the time of day (two days ago was not
    # stale before 01:00 UTC).
    start = (TODAY - timedelta(days=3)).date().isoformat()
    specs, env = setup(tmp_path, sqlite_url, dict(SPEC, max_reject_ratio=0.01, start_date=start))
    code, [row] = status(env)
    assert code == 2 and row["health"] == "stale" and row["last_run_status"] is None  # never ran, due for 3 days
    assert "no watermark, start_date" in row["reasons"][0]

    run = etl(["run", "events", "--start", start, "--end", TODAY.isoformat()], env)
    assert run.returncode == 1  # one bad row of 10 is above 1%: the window fails, nothing committed
    code, [row] = status(env)
    assert code == 2 and row["health"] == "failing" and row["last_run_status"] == "failed"

    (specs / "later.yaml").write_text(yaml.safe_dump(dict(SPEC, name="later", start_date=TODAY.date().isoformat())))
    (specs / "lost.yaml").write_text(yaml.safe_dump(dict(SPEC, name="lost", target={"connection": "gone",
                                                                                       "table": "x"})))
    code, rows = status(env)
    by_name = {r["pipeline"]: r for r in rows}
    assert by_name["later"]["health"] == "pending"
    assert by_name["lost"]["health"] == "error" and "connection 'gone' is not defined" in by_name["lost"]["reasons"][0]
    assert code == 2
    (specs / "events.yaml").unlink()
    code, rows = status(env)
    assert code == 1 and {r["health"] for r in rows} == {"pending", "error"}


def test_prometheus_output_holds_the_latest_run(tmp_path, sqlite_url):
    _, env = setup(tmp_path, sqlite_url)
    assert etl(["run", "events"], env).returncode == 0
    proc = etl(["status", "--prometheus"], env)
    assert proc.returncode == 0, proc.stderr
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in proc.stdout.splitlines()
               if line and not line.startswith("#")}
    _, [row] = status(env, "events")  # the latest run (the catch-up's last window) is what the metrics hold
    assert samples['driftless_rows_loaded{pipeline="events"}'] == row["rows_loaded"] > 0
    assert samples['driftless_run_status{pipeline="events"}'] == 0  # success
    assert samples['driftless_freshness_lag_s{pipeline="events"}'] == pytest.approx(row["lag_s"], abs=120)
    assert "# TYPE driftless_freshness_lag_s gauge" in proc.stdout
