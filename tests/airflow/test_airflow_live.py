"""A real Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor; PostgreSQL metadata) on loopback.

Backfills created through the REST API and from the UI (headless Chromium) reprocess each window
exactly once and never move the forward watermark backwards. One stack serves both tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import URL, create_engine, text

from driftless.pipeline import run_window
from driftless.reconcile import table_fingerprint
from driftless.spec import load_spec
from driftless.state import read_state
from driftless.window import Window
from tests.conftest import PG_ADMIN, unavailable
from tests.helpers import INVOICES, LIVE_STACK, running_airflow
from tools.airflow_local import LocalAirflow, airflow_env, free_port

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.integration, LIVE_STACK]

REPO = Path(__file__).resolve().parents[2]
BROWSER_DIR = REPO / "tests" / "browser"
# The schedule is already ahead of the backfilled days: the watermark sits at 2025-12-23.
AHEAD = Window.parse("2025-12-01", "2025-12-23")


@pytest.fixture(scope="module")
def metadata_db():
    """A fresh PostgreSQL database for Airflow's metadata (Airflow creates no backfill on a busy SQLite)."""
    name = f"driftless_af_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    yield PG_ADMIN.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory, chinook_source, metadata_db):
    """A running Airflow whose DAG folder holds two pipelines: ``invoices_api`` and ``invoices_ui``."""
    root = tmp_path_factory.mktemp("live")
    specs = root / "pipelines"
    specs.mkdir()
    source = root / "source.db"
    shutil.copyfile(chinook_source, source)
    urls = {}
    for name in ("api", "ui"):
        spec = json.loads(json.dumps(INVOICES))
        spec["name"] = f"invoices_{name}"
        spec["source"]["connection"] = "src"
        spec["target"]["connection"] = f"wh_{name}"
        (specs / f"invoices_{name}.yaml").write_text(yaml.safe_dump(spec))
        urls[f"wh_{name}"] = URL.create("sqlite", database=str(root / f"warehouse_{name}.db"))
    port = free_port()
    base = dict(os.environ)
    base.update({"DRIFTLESS_SPECS_DIR": str(specs), "AIRFLOW__CORE__PARALLELISM": "3",
                 "AIRFLOW_CONN_SRC": f"sqlite:///{source}",
                 **{f"AIRFLOW_CONN_{k.upper()}": f"sqlite:///{u.database}" for k, u in urls.items()}})
    env = airflow_env(root / "airflow", port, base=base, metadata_db=metadata_db)
    with running_airflow(env, port, specs, {"invoices_api", "invoices_ui"}, report=False) as stack:
        yield {"stack": stack, "specs": specs, "urls": urls, "source": source, "root": root}


def _put_ahead(live, monkeypatch, name: str) -> None:
    """Load a later window first, as if the daily schedule had already synced up to 2025-12-23."""
    monkeypatch.setenv("AIRFLOW_CONN_SRC", f"sqlite:///{live['source']}")
    monkeypatch.setenv(f"AIRFLOW_CONN_WH_{name.upper()}", f"sqlite:///{live['urls'][f'wh_{name}'].database}")
    run_window(load_spec(live["specs"] / f"invoices_{name}.yaml"), AHEAD)


def _wait_runs(stack: LocalAirflow, token: str, dag_id: str, backfill_id: int | None, timeout: float) -> list[dict]:
    """Wait until the backfill's runs (and any other run of the DAG) are finished; return all runs."""
    deadline = time.monotonic() + timeout
    while True:
        runs = stack.api("GET", f"/dags/{dag_id}/dagRuns?limit=100", token)["dag_runs"]
        backfill_runs = [r for r in runs if r["run_type"] == "backfill"]
        done = backfill_runs and all(r["state"] in ("success", "failed") for r in runs)
        if backfill_id is not None:
            done = done and stack.api("GET", f"/backfills/{backfill_id}", token)["completed_at"] is not None
        if done:
            return runs
        if time.monotonic() > deadline:
            states = [(r["dag_run_id"], r["state"]) for r in runs]
            pytest.fail(f"runs of {dag_id} not finished within {timeout:.0f}s: {states}; logs in {stack.logs}")
        stack.check_alive()
        time.sleep(1)


def _check_one_clean_run_per_window(live, monkeypatch, name: str, runs: list[dict], tmp_path: Path) -> None:
    assert runs and all(r["state"] == "success" for r in runs), [(r["dag_run_id"], r["state"]) for r in runs]
    spec = load_spec(live["specs"] / f"invoices_{name}.yaml")
    windows = sorted({Window.parse(r["data_interval_start"], r["data_interval_end"]) for r in runs})
    # The reference: a fresh target, one clean run of the later window and of each run's window.
    reference = URL.create("sqlite", database=str(tmp_path / f"reference_{name}.db"))
    monkeypatch.setenv(f"AIRFLOW_CONN_WH_{name.upper()}", f"sqlite:///{reference.database}")
    for window in [AHEAD, *windows]:
        run_window(spec, window)
    got_engine, ref_engine = create_engine(live["urls"][f"wh_{name}"]), create_engine(reference)
    try:
        got = table_fingerprint(got_engine, spec.target.table, spec.source.primary_key)
        expected = table_fingerprint(ref_engine, spec.target.table, spec.source.primary_key)
        assert got == expected and got["rows"] > 0
        watermark = read_state(got_engine, spec.name).watermark
        # Never backwards: at least where the schedule was before the backfill (and no further than
        # the latest window any run loaded, e.g. the scheduled run that unpausing creates).
        assert watermark >= AHEAD.end
        assert watermark == max([AHEAD.end, *(w.end for w in windows)])
    finally:
        got_engine.dispose()
        ref_engine.dispose()


@pytest.mark.timeout(600)
def test_backfill_through_rest_api_reprocesses_each_window_once(live, monkeypatch, tmp_path):
    stack: LocalAirflow = live["stack"]
    _put_ahead(live, monkeypatch, "api")
    token = stack.token()
    # The setup created one pool per target connection; the loads run in it.
    pool = stack.api("GET", "/pools/driftless_wh_api", token)
    assert pool["slots"] == 4
    stack.api("PATCH", "/dags/invoices_api", token, json={"is_paused": False})
    backfill = stack.api("POST", "/backfills", token, json={
        "dag_id": "invoices_api",
        "from_date": "2025-11-03T00:00:00Z",
        "to_date": "2025-11-06T00:00:00Z",
        "reprocess_behavior": "completed",
        "max_active_runs": 2,
    })
    runs = _wait_runs(stack, token, "invoices_api", backfill["id"], timeout=360)
    backfilled = sorted(datetime.fromisoformat(r["data_interval_start"]) for r in runs if r["run_type"] == "backfill")
    assert len(backfilled) >= 3
    assert backfilled[0] == datetime(2025, 11, 3, tzinfo=UTC)
    run_id = next(r["dag_run_id"] for r in runs if r["run_type"] == "backfill")
    tis = stack.api("GET", f"/dags/invoices_api/dagRuns/{run_id}/taskInstances", token)["task_instances"]
    assert {t["task_id"]: t["pool"] for t in tis} == {"extract": "default_pool", "load": "driftless_wh_api",
                                                       "reconcile": "default_pool"}
    _check_one_clean_run_per_window(live, monkeypatch, "api", runs, tmp_path)


@pytest.mark.timeout(600)
def test_backfill_from_the_ui_in_headless_chromium(live, monkeypatch, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    node = shutil.which("node")
    if not chromium or not node or not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        missing = "chromium" if not chromium else "node" if not node else "tests/browser/node_modules"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{missing} is missing; run `make browser-deps`", pytrace=False)
        pytest.skip(f"{missing} is missing; run `make browser-deps`")
    stack: LocalAirflow = live["stack"]
    _put_ahead(live, monkeypatch, "ui")
    shots = tmp_path / "screenshots"
    proc = subprocess.run(
        [node, str(BROWSER_DIR / "backfill_ui.mjs")],
        env={**os.environ, "AIRFLOW_URL": stack.url, "AIRFLOW_USER": stack.user, "AIRFLOW_PASSWORD": stack.password,
             "DAG_ID": "invoices_ui", "FROM_DATE": "2025-10-03", "TO_DATE": "2025-10-05", "CHROMIUM": chromium,
             "SCREENSHOTS": str(shots), "TIMEOUT_S": "420"},
        capture_output=True, text=True, timeout=480, cwd=BROWSER_DIR)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backfill_runs"] >= 2 and result["succeeded_in_ui"] >= 2
    token = stack.token()
    runs = _wait_runs(stack, token, "invoices_ui", None, timeout=60)
    assert sorted(r["data_interval_start"][:10] for r in runs if r["run_type"] == "backfill")[0] == "2025-10-03"
    _check_one_clean_run_per_window(live, monkeypatch, "ui", runs, tmp_path)
