"""Exactly once under concurrency and faults: serialized concurrent loads, killed connections, killed processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import URL, create_engine, text

from driftless.pipeline import load_window
from tests.loadkit import DAY1, DAY2, order, orders_spec, read_target, stage_rows, state_of

RUNNER = Path(__file__).resolve().parents[1] / "load_runner.py"




def start_runner(spec, window, manifest, run_id, tmp_path, failpoint, sleep) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / f"{run_id}.marker"
    env = {**os.environ, "DRIFTLESS_FAILPOINT": failpoint, "DRIFTLESS_FAILPOINT_MARKER": str(marker),
           "DRIFTLESS_FAILPOINT_SLEEP": str(sleep)}
    proc = subprocess.Popen(
        [sys.executable, str(RUNNER), json.dumps(spec.model_dump(mode="json", by_alias=True, exclude_none=True)),
         window.start.isoformat(), window.end.isoformat(), manifest.directory, run_id],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"runner exited early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("runner never reached its fail point")
        time.sleep(0.05)
    return proc, marker


@pytest.mark.slow
def test_concurrent_loads_serialize_and_match_serial(wh, tmp_path):
    spec = orders_spec()
    base = [order(i) for i in range(1, 201)]
    day2 = [order(i, day=1, version=1) for i in range(150, 251)]
    load_window(spec, DAY1, stage_rows(tmp_path, spec, DAY1, base, tag="base"), "base")
    m1 = stage_rows(tmp_path, spec, DAY1, base, tag="one", chunk=50)
    m2 = stage_rows(tmp_path, spec, DAY2, day2, tag="two", chunk=50)
    # Load one stops before its commit, holding the target's lock; load two starts meanwhile.
    proc, _ = start_runner(spec, DAY1, m1, "one", tmp_path, "before_commit", 2)
    t0 = time.monotonic()
    two = load_window(spec, DAY2, m2, "two")
    waited = time.monotonic() - t0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert waited > 1.0  # it waited for the lock instead of interleaving
    assert two.written == 101
    concurrent = read_target(wh, spec)
    # The same loads one after the other, into a fresh SQLite database.
    serial = URL.create("sqlite", database=str(tmp_path / "serial.db"))
    os.environ["AIRFLOW_CONN_WH"] = f"sqlite:///{serial.database}"
    for window, m, run in ((DAY1, stage_rows(tmp_path, spec, DAY1, base, tag="s0"), "s0"), (DAY1, m1, "s1"),
                           (DAY2, m2, "s2")):
        load_window(spec, window, m, run)
    assert concurrent == read_target(serial, spec)
    assert len(concurrent) == 250
    assert state_of(wh, spec) == (DAY2.end, ["success"] * 3)
    os.environ["AIRFLOW_CONN_WH"] = ""  # monkeypatch restores the fixture's value


def _backend_of_load(url: URL) -> tuple[str, object]:
    """How to kill the connection that holds the load lock of ``orders``."""
    engine = create_engine(url)
    with engine.connect() as conn:
        if url.get_backend_name() == "postgresql":
            pid = conn.execute(text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                                    "database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                                    )).scalar_one()
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killed = ("pg_terminate_backend", pid)
        else:
            # The load lock is named after the database and table (named locks are server-wide).
            cid = conn.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": f"driftless:{url.database}.orders"}).scalar_one()
            conn.exec_driver_sql(f"KILL {int(cid)}")
            killed = ("KILL", cid)
    engine.dispose()
    return killed


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid_load", "before_commit"])
def test_killed_load_leaves_target_unchanged_and_retry_is_exactly_once(wh, tmp_path, point):
    spec = orders_spec()
    base = [order(i) for i in range(1, 101)]
    load_window(spec, DAY1, stage_rows(tmp_path, spec, DAY1, base, tag="base"), "base")
    before = read_target(wh, spec)
    rows = [order(i, day=1, version=1) for i in range(50, 301)]
    manifest = stage_rows(tmp_path, spec, DAY2, rows, tag="day2", chunk=40)
    if wh.get_backend_name() == "sqlite":
        proc, _ = start_runner(spec, DAY2, manifest, "doomed", tmp_path, point, 600)
        os.kill(proc.pid, signal.SIGKILL)  # SQLite has no server: the crash is the process's
        proc.communicate(timeout=30)
    else:
        proc, _ = start_runner(spec, DAY2, manifest, "doomed", tmp_path, point, 1.5)
        how, _ = _backend_of_load(wh)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, f"{how} did not fail the load: {err}"
        assert "load failed" in err
    assert read_target(wh, spec) == before
    watermark, runs = state_of(wh, spec)
    assert watermark == DAY1.end and "success" not in runs[1:]
    # The task's retry: the same window, the same staged files.
    retry = load_window(spec, DAY2, manifest, "retry")
    assert (retry.loaded, retry.written) == (251, 251)
    after = read_target(wh, spec)
    assert len(after) == 300
    assert after[60] == order(60, day=1, version=1) and after[10] == order(10)
    watermark, runs = state_of(wh, spec)
    assert watermark == DAY2.end and runs.count("success") == 2


@pytest.mark.slow
def test_replace_readers_never_see_a_half_table(wh, tmp_path):
    spec = orders_spec(write_mode="replace")
    load_window(spec, DAY1, stage_rows(tmp_path, spec, DAY1, [order(i) for i in range(1, 101)], tag="a"), "a")
    new = [order(i, day=1, version=1) for i in range(500, 531)]
    proc, _ = start_runner(spec, DAY2, stage_rows(tmp_path, spec, DAY2, new, tag="b", chunk=10), "b", tmp_path,
                           "before_commit", 3)
    # The swap is done but not committed: a reader sees the old table whole (or waits, on PostgreSQL).
    engine = create_engine(wh)
    with engine.connect() as conn:
        if wh.get_backend_name() == "postgresql":
            conn.exec_driver_sql("SET lock_timeout = '300ms'")
        try:
            ids = sorted(r[0] for r in conn.exec_driver_sql("SELECT id FROM orders"))
        except Exception as exc:  # noqa: BLE001
            assert "lock timeout" in str(exc)
            ids = list(range(1, 101))
        assert ids == list(range(1, 101))
    engine.dispose()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(read_target(wh, spec)) == list(range(500, 531))
