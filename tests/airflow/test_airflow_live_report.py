"""A real Airflow (api-server, scheduler, dag-processor, triggerer) with default settings, as `make airflow` sets it up.

A dry run creates no asset event; a load makes consistency_report run by itself; drift planted in the
target makes the next report run fail, alert with the counts, and link to a report that names the
drifted key; headless Chromium opens that report from the UI and reads a task log line with the row count.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml
from sqlalchemy import create_engine, text

from tests.airflow.test_airflow_live import BROWSER_DIR, metadata_db  # noqa: F401 - the fixture
from tests.helpers import INVOICES, LIVE_STACK, running_airflow
from tools.airflow_local import UNPAUSED, LocalAirflow, airflow_env, free_port

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.integration, LIVE_STACK]

FULL = {"start": "2021-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:00+00:00"}
LATE = {"start": "2025-12-01T00:00:00+00:00", "end": "2025-12-02T00:00:00+00:00"}


class _Hooks(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Hooks.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory, chinook_source, metadata_db):  # noqa: F811
    root = tmp_path_factory.mktemp("live_report")
    specs = root / "pipelines"
    specs.mkdir()
    source, warehouse = root / "source.db", root / "warehouse.db"
    shutil.copyfile(chinook_source, source)
    (specs / "invoices_live.yaml").write_text(yaml.safe_dump({**INVOICES, "name": "invoices_live"}))
    hooks = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    port = free_port()
    base = dict(os.environ)
    base.update({"DRIFTLESS_SPECS_DIR": str(specs), "AIRFLOW__CORE__PARALLELISM": "3",
                 "AIRFLOW_CONN_SRC": f"sqlite:///{source}", "AIRFLOW_CONN_WH": f"sqlite:///{warehouse}",
                 "AIRFLOW_CONN_DRIFTLESS_ALERTS": json.dumps(
                     {"conn_type": "http", "password": f"http://127.0.0.1:{hooks.server_address[1]}/hook"}),
                 "DRIFTLESS_TASK_RETRIES": "0"})
    base.pop("DRIFTLESS_REPORT_DIR", None)
    env = airflow_env(root / "airflow", port, base=base, metadata_db=metadata_db)
    try:
        with running_airflow(env, port, specs, {"invoices_live", "consistency_report"}) as af:
            dags = {d["dag_id"]: d for d in af.api("GET", "/dags", af.token())["dags"]}
            yield {"af": af, "warehouse": warehouse, "dags": dags, "hooks": _Hooks.received}
    finally:
        hooks.shutdown()


def _trigger(af: LocalAirflow, dag_id: str, conf: dict) -> str:
    run = af.api("POST", f"/dags/{dag_id}/dagRuns", af.token(), json={"logical_date": None, "conf": conf})
    return run["dag_run_id"]


def _wait(af: LocalAirflow, dag_id: str, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = af.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}", af.token())
        if run["state"] in ("success", "failed"):
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"{dag_id} {run_id} not finished in {timeout:.0f}s ({run['state']}); logs in {af.logs}")
        af.check_alive()
        time.sleep(1)


def _events(af: LocalAirflow, run_id: str) -> list[dict]:
    return af.api("GET", "/assets/events", af.token(), params={"source_run_id": run_id})["asset_events"]


def _first_scheduled_run(af: LocalAirflow, dag_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = af.api("GET", f"/dags/{dag_id}/dagRuns?limit=10", af.token())["dag_runs"]
        scheduled = [r["dag_run_id"] for r in runs if r["run_type"] == "scheduled"]
        if scheduled:
            return scheduled[0]
        af.check_alive()
        time.sleep(1)
    pytest.fail(f"no scheduled run of {dag_id} within {timeout:.0f}s of unpausing it")


def _report_runs(af: LocalAirflow) -> list[dict]:
    return af.api("GET", "/dags/consistency_report/dagRuns?limit=100&order_by=-run_after", af.token())["dag_runs"]


def _next_report_run(af: LocalAirflow, seen: set[str], timeout: float = 240) -> dict:
    """Wait for a consistency_report run not in ``seen``, triggered by an asset event, to finish."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [r for r in _report_runs(af) if r["dag_run_id"] not in seen and r["run_type"] == "asset_triggered"]
        if new:
            return _wait(af, "consistency_report", new[0]["dag_run_id"], timeout)
        af.check_alive()
        time.sleep(1)
    pytest.fail(f"consistency_report did not run by itself within {timeout:.0f}s; logs in {af.logs}")


def _log(af: LocalAirflow, dag_id: str, run_id: str, task_id: str) -> str:
    data = af.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1?full_content=true",
                  af.token(), headers={"Accept": "application/json"})
    return json.dumps(data["content"])


@pytest.mark.timeout(900)
def test_report_runs_by_itself_and_drift_fails_it_with_the_counts(stack):
    af: LocalAirflow = stack["af"]
    # Default settings: the report is unpaused from the start (an operator unpauses the pipeline).
    assert stack["dags"]["consistency_report"]["is_paused"] is False and UNPAUSED == {"consistency_report"}
    seen = {r["dag_run_id"] for r in _report_runs(af)}
    af.api("PATCH", "/dags/invoices_live", af.token(), json={"is_paused": False})
    # Unpausing starts the latest scheduled interval (a day); its load runs the report by itself.
    scheduled = _first_scheduled_run(af, "invoices_live")
    assert _wait(af, "invoices_live", scheduled)["state"] == "success"
    _next_report_run(af, seen)  # a partial target: its state depends on the day, not asserted
    seen = {r["dag_run_id"] for r in _report_runs(af)}

    dry = _trigger(af, "invoices_live", {**FULL, "dry_run": True})
    assert _wait(af, "invoices_live", dry)["state"] == "success"
    assert _events(af, dry) == []
    assert _events(af, scheduled)  # the query finds a load's event

    load = _trigger(af, "invoices_live", FULL)
    assert _wait(af, "invoices_live", load)["state"] == "success"
    (event,) = _events(af, load)
    assert event["extra"]["window"] == FULL and event["extra"]["loaded"] == 412 and event["extra"]["run_id"] == load
    assert "load summary: window [2021-01-01T00:00:00+00:00, 2026-01-01T00:00:00+00:00): loaded 412 rows" in _log(
        af, "invoices_live", load, "load")
    first = _next_report_run(af, seen)
    assert first["state"] == "success", first
    seen |= {r["dag_run_id"] for r in _report_runs(af)}

    engine = create_engine(f"sqlite:///{stack['warehouse']}")
    with engine.begin() as conn:
        key = conn.execute(text("SELECT min(invoice_id) FROM invoices")).scalar_one()
        conn.execute(text("UPDATE invoices SET billing_city = 'Driftville' WHERE invoice_id = :k"), {"k": key})
    engine.dispose()
    again = _trigger(af, "invoices_live", LATE)
    assert _wait(af, "invoices_live", again)["state"] == "success"
    failed = _next_report_run(af, seen)
    assert failed["state"] == "failed", failed
    run_id = failed["dag_run_id"]
    log = _log(af, "consistency_report", run_id, "diff_and_report")
    assert "drift found: invoices_live FAIL (missing 0, extra 0, changed 1)" in log
    alerts = [a for a in stack["hooks"] if a.get("driftless", {}).get("dag") == "consistency_report"]
    assert alerts and alerts[-1]["driftless"]["findings"][0]["changed"] == 1
    assert alerts[-1]["driftless"]["pipeline"] == "invoices_live"

    links = af.api("GET", f"/dags/consistency_report/dagRuns/{run_id}/taskInstances/diff_and_report/links",
                   af.token())["extra_links"]
    url = links["Consistency report"]
    assert url.startswith(f"{af.url}/driftless/reports/")
    assert requests.get(url, timeout=30).status_code == 401  # behind the UI's login
    page = requests.get(url, headers={"Authorization": f"Bearer {af.token()}"}, timeout=30)
    assert page.status_code == 200 and "Driftville" in page.text and f"invoice_id = {key}" in page.text

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    node = shutil.which("node")
    if not chromium or not node or not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        missing = "chromium" if not chromium else "node" if not node else "tests/browser/node_modules"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{missing} is missing; run `make browser-deps`", pytrace=False)
        pytest.skip(f"{missing} is missing; run `make browser-deps` (the API checks above passed)")
    proc = subprocess.run(
        ["node", str(BROWSER_DIR / "report_ui.mjs")],
        env={**os.environ, "AIRFLOW_URL": af.url, "AIRFLOW_USER": af.user, "AIRFLOW_PASSWORD": af.password,
             "REPORT_RUN_ID": run_id, "LOAD_DAG_ID": "invoices_live", "LOAD_RUN_ID": load, "CHROMIUM": chromium,
             "EXPECT_IN_REPORT": "Driftville", "EXPECT_IN_LOG": "loaded 412 rows",
             "SCREENSHOTS": os.environ.get("DRIFTLESS_SCREENSHOTS")
             or str(Path(af.env["AIRFLOW_HOME"]) / "screenshots")},
        capture_output=True, text=True, timeout=300, cwd=BROWSER_DIR)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["report_has_drifted_value"] and result["log_has_row_count"]
    assert result["report_url"] == url  # the page the UI's link opened
