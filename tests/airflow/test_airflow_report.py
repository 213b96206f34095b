"""The consistency_report DAG as an operator meets it: drift fails the run (or warns) and alerts with the counts."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from driftless.airflow import alerts
from driftless.pipeline import run_window
from driftless.report.tasks import consistency_report, findings_of, summary_line
from driftless.window import Window
from tests.helpers import INVOICES, invoices_spec

REPO = Path(__file__).resolve().parents[2]
WINDOW = Window.parse("2021-01-01", "2026-01-01")  # the whole history: a whole-table diff
REST_SPEC = yaml.safe_load((REPO / "dags" / "pipelines" / "chinook_customers_api.yaml").read_text())


def load_report_dag(specs_dir: Path, monkeypatch):
    """dags/consistency_report.py, imported fresh for ``specs_dir`` (it reads the specs at parse time)."""
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
    path = REPO / "dags" / "consistency_report.py"
    spec = importlib.util.spec_from_file_location(f"consistency_report_{specs_dir.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.consistency_report


@pytest.fixture
def drifted(tmp_path, connections, chinook_copy, sqlite_url):
    """A loaded invoices target with one changed row, and a REST pipeline beside it (cannot be diffed whole)."""
    connections(src=chinook_copy, wh=sqlite_url)
    specs = tmp_path / "pipelines"
    specs.mkdir()
    (specs / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    (specs / "customers_api.yaml").write_text(yaml.safe_dump({**REST_SPEC, "name": "customers_api",
                                                              "target": {"connection": "wh",
                                                                         "table": "customers"}}))
    spec = invoices_spec()
    run_window(spec, WINDOW)
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        key = conn.execute(text("SELECT min(invoice_id) FROM invoices")).scalar_one()
        conn.execute(text("UPDATE invoices SET total = total + 100 WHERE invoice_id = :k"), {"k": key})
    engine.dispose()
    return {"specs": specs, "key": key, "tmp": tmp_path}


def test_drift_is_a_finding_and_a_rest_pipeline_is_skipped(drifted):
    result = consistency_report(str(drifted["specs"]), "manual__x", out_dir=str(drifted["tmp"] / "r"),
                                use_airflow_connections=False)
    by_name = {p["pipeline"]: p for p in result["pipelines"]}
    assert by_name["invoices_test"]["status"] == "FAIL"
    assert (by_name["invoices_test"]["missing_in_target"], by_name["invoices_test"]["extra_in_target"],
            by_name["invoices_test"]["changed"]) == (0, 0, 1)
    assert by_name["customers_api"]["status"] == "SKIP" and "SQL source table" in by_name["customers_api"]["error"]
    assert [f["pipeline"] for f in findings_of(result)] == ["invoices_test"]
    assert summary_line(result) == ("consistency report: 1 FAIL, 1 SKIP; invoices_test FAIL (missing 0, extra 0, "
                                    "changed 1)")


def _alert_conn(httpserver, monkeypatch):
    httpserver.expect_request("/hooks/driftless", method="POST").respond_with_data("ok")
    monkeypatch.setenv("AIRFLOW_CONN_DRIFTLESS_ALERTS", json.dumps(
        {"conn_type": "http", "password": httpserver.url_for("/hooks/driftless")}))


@pytest.mark.airflow
@pytest.mark.slow
def test_drift_fails_the_report_run_and_the_alert_carries_the_counts(airflow_db, drifted, httpserver, monkeypatch):
    _alert_conn(httpserver, monkeypatch)
    monkeypatch.setenv("DRIFTLESS_REPORT_DIR", str(drifted["tmp"] / "reports"))
    dag = load_report_dag(drifted["specs"], monkeypatch)
    assert dag.params["on_drift"] == "fail"  # the default policy
    run = dag.test(logical_date=datetime(2026, 1, 1, tzinfo=UTC))
    assert run.state == "failed"
    (ti,) = run.get_task_instances()
    assert ti.state == "failed" and ti.try_number == 1  # AirflowFailException: no retries
    assert len(httpserver.log) == 1
    payload = httpserver.log[0][0].get_json()
    assert payload["driftless"]["pipeline"] == "invoices_test" and payload["driftless"]["dag"] == "consistency_report"
    assert payload["driftless"]["findings"] == [{"pipeline": "invoices_test", "status": "FAIL", "missing_in_target": 0,
                                                 "extra_in_target": 0, "changed": 1, "error": None}]
    assert "invoices_test FAIL (missing 0, extra 0, changed 1)" in payload["text"]


@pytest.mark.airflow
@pytest.mark.slow
def test_warn_policy_keeps_the_run_green_and_still_alerts(airflow_db, drifted, httpserver, monkeypatch):
    _alert_conn(httpserver, monkeypatch)
    monkeypatch.setenv("DRIFTLESS_ON_DRIFT", "warn")
    monkeypatch.setenv("DRIFTLESS_REPORT_DIR", str(drifted["tmp"] / "reports"))
    dag = load_report_dag(drifted["specs"], monkeypatch)
    assert dag.params["on_drift"] == "warn"
    run = dag.test(logical_date=datetime(2026, 1, 2, tzinfo=UTC))
    assert run.state == "success"
    assert len(httpserver.log) == 1
    payload = httpserver.log[0][0].get_json()
    assert payload["driftless"]["findings"][0]["changed"] == 1
    assert payload["text"].startswith(":warning:") and "changed 1" in payload["text"]


def test_alert_for_a_start_only_run_names_no_window():
    context = {"params": {"start": "2025-01-01T00:00:00+00:00", "end": None}, "run_id": "manual__1",
               "data_interval_start": datetime(2025, 6, 1, tzinfo=UTC),
               "data_interval_end": datetime(2025, 6, 2, tzinfo=UTC),
               "exception": RuntimeError("param 'start' is set but 'end' is not")}
    message = alerts.build_message(context)
    assert message["driftless"]["window"] is None
    assert "params were rejected before any window ran" in message["text"]
    assert "2025-06-01" not in json.dumps(message)


@pytest.mark.airflow
def test_report_dag_is_created_unpaused_and_runs_on_loads_or_daily(monkeypatch):
    from airflow.sdk import AssetAny, AssetOrTimeSchedule

    dag = load_report_dag(REPO / "dags" / "pipelines", monkeypatch)
    # Airflow 3 queues asset events only for unpaused DAGs: created paused, the report would miss loads.
    assert dag.is_paused_upon_creation is False
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 6 * * *"
    assert {a.uri for a in dag.timetable.asset_condition.objects} == {
        "driftless://warehouse/default/invoices", "driftless://warehouse/default/invoice_lines",
        "driftless://warehouse/default/customers", "driftless://warehouse/default/tracks"}
    monkeypatch.setenv("DRIFTLESS_REPORT_SCHEDULE", "none")
    assert isinstance(load_report_dag(REPO / "dags" / "pipelines", monkeypatch).timetable.asset_condition, AssetAny)


# --- the report, one click away -------------------------------------------------------------------

@pytest.mark.airflow
@pytest.mark.slow
def test_report_task_links_to_the_stored_report_even_when_drift_fails_it(airflow_db, drifted, monkeypatch):
    from airflow.serialization.serialized_objects import DagSerialization

    from driftless.report import store

    monkeypatch.setenv("DRIFTLESS_REPORT_DIR", str(drifted["tmp"] / "reports"))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080")
    dag = load_report_dag(drifted["specs"], monkeypatch)
    # The serialized DAG (what the api-server reads) knows the button without any driftless code.
    ser = DagSerialization.to_dict(dag)
    (task,) = ser["dag"]["tasks"]
    assert task["__var"]["_operator_extra_links"] == {"Consistency report": "_link_ConsistencyReportLink"}
    run = dag.test(logical_date=datetime(2026, 1, 3, tzinfo=UTC))
    assert run.state == "failed"
    ti = run.get_task_instance("diff_and_report")
    url = ti.xcom_pull(task_ids="diff_and_report", key="_link_ConsistencyReportLink")
    key = store.run_key(run.run_id)
    assert url == f"http://airflow.example:8080/driftless/reports/{key}/report.html"
    assert "invoice_id" in store.read(key, "report.html").decode()
    data = json.loads(store.read(key, "report.json"))
    (invoices,) = [p for p in data["pipelines"] if p["pipeline"] == "invoices_test"]
    assert invoices["latest_diff"]["changed"] == 1
    assert invoices["latest_diff"]["samples"]["changed"][0]["key"] == {"invoice_id": drifted["key"]}


def _write_report(root: Path, key: str, mtime: float) -> None:
    import os

    folder = root / key
    folder.mkdir(parents=True)
    (folder / "report.html").write_text(f"<html>{key}</html>")
    (folder / "report.json").write_text("{}")
    os.utime(folder / "report.json", (mtime, mtime))


def test_report_store_keeps_a_bounded_history(tmp_path, monkeypatch):
    from driftless.report import store

    monkeypatch.setenv("DRIFTLESS_REPORT_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("DRIFTLESS_REPORT_KEEP", "2")
    for i in range(3):
        _write_report(tmp_path / "reports", f"run_{i}", 1_000_000 + i)
    local = tmp_path / "elsewhere"
    _write_report(tmp_path, "elsewhere", 2_000_000)
    store.publish(local, "run_3")
    assert [f.name for f in store.history()] == ["run_3", "run_2"]
    assert not (tmp_path / "reports" / "run_0").exists()
    assert store.read("run_3", "report.html") == b"<html>elsewhere</html>"
    assert store.read("..", "report.html") is None and store.read("run_3", "../x") is None
    monkeypatch.setenv("DRIFTLESS_REPORT_STORE", (tmp_path / "shared").as_uri())
    store.publish(local, "run_4")
    assert (tmp_path / "shared" / "run_4" / "report.json").is_file()


def test_the_api_server_plugin_serves_reports_to_logged_in_users_only(tmp_path, monkeypatch):
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    monkeypatch.setenv("DRIFTLESS_REPORT_DIR", str(tmp_path / "reports"))
    from driftless.report import plugin

    anonymous = TestClient(plugin.app)
    assert anonymous.get("/reports/latest", follow_redirects=False).status_code == 401
    plugin.app.dependency_overrides[get_user] = lambda: object()
    client = TestClient(plugin.app)
    assert client.get("/reports/latest", follow_redirects=False).status_code == 404
    _write_report(tmp_path / "reports", "old", 1_000_000)
    _write_report(tmp_path / "reports", "new", 2_000_000)
    latest = client.get("/reports/latest", follow_redirects=False)
    assert latest.status_code == 307 and latest.headers["location"] == "/driftless/reports/new/report.html"
    page = client.get("/reports/new/report.html")
    assert page.status_code == 200 and page.text == "<html>new</html>" and page.headers["content-type"].startswith(
        "text/html")
    assert client.get("/reports/nope/report.html").status_code == 404
    assert client.get("/reports/new/secret.txt").status_code == 404
    assert 'href="new/report.html"' in client.get("/reports/").text
    assert plugin.DriftlessReports.fastapi_apps[0]["url_prefix"] == "/driftless"


def test_the_plugins_folder_file_steps_aside_when_the_entry_point_registers_the_plugin(monkeypatch):
    """plugins/driftless_reports.py defines the plugin only for an install without the entry point (no twice)."""
    from driftless.report import plugin

    def plugins_file():
        path = REPO / "plugins" / "driftless_reports.py"
        spec = importlib.util.spec_from_file_location("driftless_reports_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    monkeypatch.setattr(plugin, "registered_by_entry_point", lambda: False)
    assert plugins_file().DriftlessReports is plugin.DriftlessReports
    monkeypatch.setattr(plugin, "registered_by_entry_point", lambda: True)
    assert not hasattr(plugins_file(), "DriftlessReports")
