"""``etl`` from a shell: the JSON line on success, an actionable message and non-zero exit on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import airflow_uri

REPO = Path(__file__).resolve().parents[2]


def etl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "etl"), *args], capture_output=True, text=True,
                          env=env or dict(os.environ), cwd=REPO, timeout=180)


@pytest.mark.integration
def test_etl_run_against_postgres_from_env(chinook_source, pg_url):
    env = dict(os.environ, AIRFLOW_CONN_CHINOOK=f"sqlite:///{chinook_source}",
               AIRFLOW_CONN_WAREHOUSE=airflow_uri(pg_url))
    proc = etl("run", "chinook_invoices", "--start", "2025-01-01", "--end", "2025-07-01", env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"pipeline", "window", "status", "extracted", "loaded", "duration_s", "watermark"}
    assert summary["pipeline"] == "chinook_invoices"
    assert summary["status"] == "success"
    assert summary["extracted"] == summary["loaded"] > 0
    assert summary["window"] == {"start": "2025-01-01T00:00:00+00:00", "end": "2025-07-01T00:00:00+00:00"}
    assert summary["watermark"] == "2025-07-01T00:00:00+00:00"


def test_unknown_connection_is_named(chinook_source):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["AIRFLOW_CONN_CHINOOK"] = f"sqlite:///{chinook_source}"
    proc = etl("run", "chinook_invoices", "--start", "2025-01-01", "--end", "2025-01-02", env=env)
    assert proc.returncode == 1
    assert "connection 'warehouse' is not defined" in proc.stderr
    assert "AIRFLOW_CONN_WAREHOUSE" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_password_is_redacted_in_errors(chinook_source):
    env = dict(os.environ, AIRFLOW_CONN_CHINOOK=f"sqlite:///{chinook_source}",
               AIRFLOW_CONN_WAREHOUSE="postgresql://etl:canary-s3cret@127.0.0.1:1/nowhere")
    proc = etl("run", "chinook_invoices", "--start", "2025-01-01", "--end", "2025-01-02", env=env)
    assert proc.returncode == 1
    assert "127.0.0.1:1" in proc.stderr and "***" in proc.stderr
    assert "canary-s3cret" not in proc.stderr + proc.stdout


def test_bad_window_is_rejected():
    proc = etl("run", "chinook_invoices", "--start", "2025-01-02", "--end", "2025-01-01")
    assert proc.returncode == 1
    assert "must be before window end" in proc.stderr
    proc = etl("run", "chinook_invoices", "--start", "yesterday", "--end", "2025-01-01")
    assert proc.returncode == 1 and "--start: 'yesterday' is not an ISO-8601" in proc.stderr


def test_unknown_pipeline_lists_known_ones():
    proc = etl("run", "nope", "--start", "2025-01-01", "--end", "2025-01-02")
    assert proc.returncode == 1
    assert "no pipeline named 'nope'" in proc.stderr and "chinook_invoices" in proc.stderr


def test_specs_check(tmp_path):
    proc = etl("specs", "check")
    assert proc.returncode == 0, proc.stderr
    assert "spec(s) valid" in proc.stdout
    (tmp_path / "broken.yaml").write_text("name: broken\nschedule: daily\n")
    proc = etl("specs", "check", str(tmp_path))
    assert proc.returncode == 1
    assert f"{tmp_path / 'broken.yaml'}:2: schedule:" in proc.stderr  # file:line: field
    assert f"{tmp_path / 'broken.yaml'}:1: source: Field required" in proc.stderr  # missing: the top level
