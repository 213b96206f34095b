"""Failures around a window's load are reported as what they are, and etl_runs holds every attempt.

* After the commit: the data stays, the checks that cannot run are ERROR, the run is ``checks_failed``
  in etl_runs and in the CLI's JSON line, and the CLI prints a message, never a traceback.
* Before any write (extract failures: HTTP 401, an unreachable source): a ``failed`` run record.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine

from driftless.errors import SourceError
from driftless.pipeline import run_window
from driftless.reconcile.store import read_checks
from driftless.sources.rest.reliability import reset_breakers
from driftless.state import read_runs, read_state
from driftless.window import Window
from tests.conftest import REPO
from tests.helpers import INVOICES, invoices_spec
from tests.rest_server import ApiServer, Reply
from tests.sources.test_rest import rest_spec

WINDOW = Window.parse("2021-01-01", "2026-01-01")


def test_source_table_dropped_between_load_and_checks(chinook_copy, tmp_path):
    """A real `etl run`, frozen at the failpoint after the commit while the test drops the source table."""
    warehouse = tmp_path / "wh.db"
    specs = tmp_path / "specs"
    specs.mkdir()
    data = {**INVOICES, "reconcile": {"sum_columns": ["total"]}}
    (specs / "invoices_test.yaml").write_text(yaml.safe_dump(data))
    marker, resume = tmp_path / "at_failpoint", tmp_path / "resume"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update(AIRFLOW_CONN_SRC=f"sqlite:///{chinook_copy}", AIRFLOW_CONN_WH=f"sqlite:///{warehouse}",
               DRIFTLESS_FAILPOINT="before_checks", DRIFTLESS_FAILPOINT_MARKER=str(marker),
               DRIFTLESS_FAILPOINT_RESUME=str(resume), DRIFTLESS_FAILPOINT_SLEEP="120")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "etl"), "run", "invoices_test", "--specs-dir",
                             str(specs), "--start", "2021-01-01", "--end", "2026-01-01"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "etl run ended without reaching the failpoint before the checks"
            assert time.monotonic() < deadline, "etl run did not reach the failpoint"
            time.sleep(0.05)
        with sqlite3.connect(chinook_copy) as db:
            db.execute("DROP TABLE Invoice")
        resume.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "loaded and committed" in err and "no such table: Invoice" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "checks_failed" and summary["loaded"] == 412
    checks = {c["check"]: c for c in summary["checks"]}
    assert checks["extracted_equals_loaded"]["status"] == "PASS"
    assert checks["source_count_unchanged"]["status"] == "ERROR"
    assert checks["sum_total"]["status"] == "ERROR"
    assert "no such table: Invoice" in checks["source_count_unchanged"]["message"]

    engine = create_engine(f"sqlite:///{warehouse}")
    try:
        (run,) = read_runs(engine, "invoices_test")
        stored = {c["check_name"]: c["status"] for c in read_checks(engine, "invoices_test")}
        state = read_state(engine, "invoices_test")
    finally:
        engine.dispose()
    # The run record says what the CLI said: loaded and committed, checks failed.
    assert run["status"] == "checks_failed" and run["loaded"] == 412
    assert "source_count_unchanged could not run" in run["message"]
    assert stored["source_count_unchanged"] == "ERROR" and stored["sum_total"] == "ERROR"
    assert state is not None and state.watermark == WINDOW.end  # the data is committed


def test_checks_passing_on_a_retry_set_the_run_back_to_success(chinook_copy, sqlite_url, connections, tmp_path):
    """The reconcile step of an Airflow run can be retried: its run record follows the latest outcome."""
    from driftless.pipeline import extract_window, load_window, reconcile_window
    from driftless.reconcile.checks import ChecksFailed

    connections(src=chinook_copy, wh=sqlite_url)
    spec = invoices_spec()
    manifest = extract_window(spec, WINDOW, "run-1", tmp_path)
    result = load_window(spec, WINDOW, manifest, "run-1")
    moved = tmp_path / "moved.db"
    chinook_copy.rename(moved)  # the source is away while the checks run
    sqlite3.connect(chinook_copy).close()  # an empty database in its place: no table
    with pytest.raises(ChecksFailed, match="source_count_unchanged could not run"):
        reconcile_window(spec, result)
    engine = create_engine(sqlite_url)
    assert [r["status"] for r in read_runs(engine, spec.name)] == ["checks_failed"]
    moved.replace(chinook_copy)
    assert reconcile_window(spec, result).status == "success"
    (run,) = read_runs(engine, spec.name)
    engine.dispose()
    assert run["status"] == "success" and run["message"] is None


def test_http_401_leaves_a_failed_run_record(connections, sqlite_url):
    reset_breakers()
    with ApiServer(lambda req: Reply(401, {"error": "bad token"})) as server:
        connections(api=server.url, wh=sqlite_url)
        with pytest.raises(SourceError, match="401"):
            run_window(rest_spec(), Window.parse("2025-01-01", "2025-01-02"), run_id="run-401")
    reset_breakers()
    engine = create_engine(sqlite_url)
    try:
        (run,) = read_runs(engine, "rest_test")
        assert read_state(engine, "rest_test") is None  # nothing loaded, the watermark did not move
    finally:
        engine.dispose()
    assert run["status"] == "failed" and run["run_id"] == "run-401" and run["loaded"] == 0
    assert run["message"].startswith("extract failed:") and "401" in run["message"]


def test_unreachable_source_leaves_a_failed_run_record(connections, sqlite_url, tmp_path):
    connections(src=f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'source.db'}", wh=sqlite_url)
    spec = invoices_spec()
    with pytest.raises(SourceError, match="unable to open database file"):
        run_window(spec, WINDOW, run_id="run-unreachable")
    engine = create_engine(sqlite_url)
    try:
        (run,) = read_runs(engine, spec.name)
    finally:
        engine.dispose()
    assert run["status"] == "failed" and run["run_id"] == "run-unreachable"
    assert "extract failed:" in run["message"] and "unable to open database file" in run["message"]
