"""Airflow operations: trigger-form params, dry runs, alerts, partitioned windows, pools, compose file, lineage."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine

from driftless.airflow import alerts, lineage
from driftless.airflow.dags import build_dag
from driftless.airflow.params import InvalidParams, run_options
from driftless.airflow.partitions import finish_window, split_window
from driftless.airflow.pools import pool_name, pools_for
from driftless.errors import LoadError
from driftless.pipeline import extract_window, run_window
from driftless.state import read_runs
from driftless.window import Window
from tests.helpers import INVOICES, fingerprint, invoices_spec

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "driftless_pipelines.py"
COMPOSE = REPO / "docker-compose.integration.yml"
SPEC = invoices_spec()
DAY = ("2025-01-01T00:00:00+00:00", "2025-01-02T00:00:00+00:00")


def load_dag_module(name: str = "driftless_pipelines_ops"):
    spec = importlib.util.spec_from_file_location(name, DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- trigger-form params -------------------------------------------------------------------------

def test_params_default_to_the_data_interval():
    opts = run_options(SPEC, {"start": None, "end": None, "full_refresh": False, "dry_run": False}, *DAY)
    assert opts.window == Window.parse(*DAY) and not opts.dry_run and not opts.overridden


def test_params_override_the_window():
    opts = run_options(SPEC, {"start": "2024-03-01", "end": "2024-04-01T00:00:00Z", "dry_run": True}, *DAY)
    assert opts.window == Window.parse("2024-03-01", "2024-04-01") and opts.dry_run and opts.overridden


@pytest.mark.parametrize(("params", "message"), [
    ({"start": "2024-03-01"}, "param 'start' is set but 'end' is not"),
    ({"end": "2024-03-01"}, "param 'end' is set but 'start' is not"),
    ({"start": "2024-03-02", "end": "2024-03-01"}, "must be before 'end'"),
    ({"start": "2024-03-01", "end": "2024-03-01"}, "must be before 'end'"),
    ({"start": "yesterday", "end": "2024-03-01"}, "param 'start': 'yesterday' is not an ISO-8601"),
    ({"start": "2024-03-01", "end": "2024-03-02", "full_refresh": True}, "exclude each other"),
    ({"dry_run": "maybe"}, "param 'dry_run': expected true or false"),
    ({"strat": "2024-03-01"}, "unknown param(s) ['strat']"),
])
def test_bad_params_are_rejected_with_a_clear_message(params, message):
    with pytest.raises(InvalidParams) as err:
        run_options(SPEC, params, *DAY)
    assert message in str(err.value)


def test_full_refresh_reads_from_the_spec_start_date():
    opts = run_options(SPEC, {"full_refresh": True}, *DAY)
    assert opts.window == Window.parse("2025-01-01", DAY[1]) and opts.full_refresh
    spec = invoices_spec(start_date="2021-01-01")
    assert run_options(spec, {"full_refresh": "true"}, *DAY).window.start == datetime(2021, 1, 1, tzinfo=UTC)


def test_trigger_form_json_schema_rejects_malformed_values():
    from airflow.sdk import ParamsDict
    from airflow.sdk.definitions.param import ParamValidationError

    from driftless.airflow.params import trigger_params

    params = ParamsDict(trigger_params())
    assert params.validate() == {"start": None, "end": None, "full_refresh": False, "dry_run": False}
    params["start"] = "2025-01-01T00:00:00+00:00"
    params["dry_run"] = True
    with pytest.raises(ParamValidationError, match="dry_run|not-a-bool|boolean"):
        params["dry_run"] = "not-a-bool"
    with pytest.raises(ParamValidationError):
        params["start"] = 20250101


# --- dry runs --------------------------------------------------------------------------------------

def test_dry_run_reports_inserts_updates_and_unchanged_without_writing(connections, chinook_copy, sqlite_url,
                                                                       tmp_path):
    from driftless.dry_run import plan_window

    connections(src=chinook_copy, wh=sqlite_url)
    window = Window.parse("2024-01-01", "2025-01-01")
    # Empty target (no table yet): everything would be inserted, and no table gets created.
    report = plan_window(SPEC, extract_window(SPEC, window, "dry1", tmp_path))
    assert (report["staged"], report["would_insert"], report["would_update"], report["unchanged"]) == (83, 83, 0, 0)
    assert not Path(sqlite_url.database).exists() or fingerprint_or_none(sqlite_url) is None

    run_window(SPEC, window)
    before = fingerprint(sqlite_url, SPEC)
    with sqlite3.connect(chinook_copy) as db:  # change two invoices' totals, one city; add nothing new
        ids = [r[0] for r in db.execute("SELECT InvoiceId FROM Invoice WHERE updated_at >= '2024-01-01' "
                                        "AND updated_at < '2025-01-01' ORDER BY InvoiceId LIMIT 2")]
        db.execute(f"UPDATE Invoice SET Total = Total + 1 WHERE InvoiceId IN ({ids[0]}, {ids[1]})")
        db.execute(f"UPDATE Invoice SET BillingCity = 'Nowhere' WHERE InvoiceId = {ids[0]}")
    report = plan_window(SPEC, extract_window(SPEC, window, "dry2", tmp_path))
    assert (report["would_insert"], report["would_update"], report["unchanged"]) == (0, 2, 81)
    assert report["changed_columns"] == {"total": 2, "billing_city": 1}
    assert sorted(k[0] for k in report["sample_keys"]["update"]) == sorted(ids)
    assert fingerprint(sqlite_url, SPEC) == before  # nothing written, watermark unchanged


@pytest.mark.airflow
@pytest.mark.slow
def test_dry_run_through_the_dag_writes_nothing(airflow_db, tmp_path, monkeypatch, connections, chinook_copy,
                                                sqlite_url):
    connections(src=chinook_copy, wh=sqlite_url)
    run_window(SPEC, Window.parse("2024-01-01", "2025-01-01"))
    before = fingerprint(sqlite_url, SPEC)
    with sqlite3.connect(chinook_copy) as db:
        db.execute("UPDATE Invoice SET Total = Total + 1 "
                   "WHERE updated_at >= '2024-02-01' AND updated_at < '2024-03-01'")
    specs_dir = tmp_path / "pipelines"
    specs_dir.mkdir()
    (specs_dir / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
    dag = build_dag(specs_dir / "invoices_test.yaml")
    run = dag.test(logical_date=datetime(2025, 6, 1, tzinfo=UTC), run_conf={
        "start": "2024-01-01T00:00:00+00:00", "end": "2025-01-01T00:00:00+00:00", "dry_run": True})
    assert run.state == "success"
    report = run.get_task_instance("extract").xcom_pull(task_ids="extract")
    assert report["dry_run"] is True and report["would_update"] >= 1 and report["would_insert"] == 0
    assert report["changed_columns"] == {"total": report["would_update"]}
    assert report["unchanged"] == 83 - report["would_update"]
    assert fingerprint(sqlite_url, SPEC) == before
    # The load (whose outlet is the target's Asset) is skipped: a dry run announces no update.
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "extract": "success", "load": "skipped", "reconcile": "skipped"}
    assert asset_events(run.run_id) == []


def asset_events(run_id: str) -> list[dict]:
    """The asset events a run produced (Airflow's metadata database)."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return [{"uri": e.uri, "extra": e.extra} for e in
                session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == run_id))]


def fingerprint_or_none(url):
    from sqlalchemy import inspect

    engine = create_engine(url)
    try:
        return True if inspect(engine).has_table("invoices") else None
    finally:
        engine.dispose()


# --- alerts ----------------------------------------------------------------------------------------

def test_webhook_url_from_connection_fields():
    assert alerts.webhook_url({"password": "https://hooks.example/T/B/X"}) == "https://hooks.example/T/B/X"
    assert alerts.webhook_url({"host": "http://127.0.0.1:9/hook"}) == "http://127.0.0.1:9/hook"
    assert alerts.webhook_url({"host": "hooks.example", "password": "services/T/B/X"}) == \
        "https://hooks.example/services/T/B/X"
    assert alerts.webhook_url({"host": "", "password": ""}) is None


def test_alert_message_masks_secrets():
    context = {
        "dag_run": None, "params": {"start": "2025-01-01T00:00:00+00:00", "end": "2025-01-02T00:00:00+00:00"},
        "run_id": "manual__1",
        "exception": RuntimeError("cannot reach postgresql://bob:hunter2pw@db:5432/wh; posted to "
                                  "https://hooks.example/T/B/sekrit-token\nsecond line"),
    }
    message = alerts.build_message(context, secrets=("https://hooks.example/T/B/sekrit-token",))
    text = json.dumps(message)
    assert "hunter2pw" not in text and "sekrit-token" not in text
    assert "postgresql://bob:***@db:5432/wh" in message["driftless"]["error"]
    assert "(+1 more line(s) in the log)" in message["driftless"]["error"]
    assert message["driftless"]["window"] == {"start": "2025-01-01T00:00:00+00:00",
                                              "end": "2025-01-02T00:00:00+00:00"}


@pytest.mark.airflow
@pytest.mark.slow
def test_failing_run_posts_alert_to_webhook(airflow_db, httpserver, tmp_path, monkeypatch, connections,
                                            sqlite_url):
    # The source is a PostgreSQL URL with a password on a port where nothing listens: extract fails.
    connections(src="postgresql://alice:pa55w0rd-secret@127.0.0.1:9/nowhere", wh=sqlite_url)
    httpserver.expect_request("/hooks/driftless", method="POST").respond_with_data("ok")
    monkeypatch.setenv("AIRFLOW_CONN_DRIFTLESS_ALERTS", json.dumps(
        {"conn_type": "http", "password": httpserver.url_for("/hooks/driftless")}))
    monkeypatch.setenv("DRIFTLESS_TASK_RETRIES", "0")
    specs_dir = tmp_path / "pipelines"
    specs_dir.mkdir()
    (specs_dir / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
    dag = build_dag(specs_dir / "invoices_test.yaml")
    run = dag.test(logical_date=datetime(2025, 6, 1, tzinfo=UTC),
                   run_conf={"start": "2024-01-01T00:00:00+00:00", "end": "2025-01-01T00:00:00+00:00"})
    assert run.state == "failed"
    assert len(httpserver.log) == 1
    request, _ = httpserver.log[0]
    payload = request.get_json()
    body = request.get_data(as_text=True)
    assert "pa55w0rd-secret" not in body
    d = payload["driftless"]
    assert (d["pipeline"], d["task"]) == ("invoices_test", "extract")
    assert d["window"] == {"start": "2024-01-01T00:00:00+00:00", "end": "2025-01-01T00:00:00+00:00"}
    assert d["error"] and "invoices_test" in payload["text"] and payload["blocks"]


# --- partitioned windows ---------------------------------------------------------------------------

def test_split_window_into_days_and_hours():
    window = Window.parse("2025-01-01T00:00:00Z", "2025-01-03T12:00:00Z")
    assert [w.key for w in split_window(window, "day")] == [
        "20250101T000000Z_20250102T000000Z", "20250102T000000Z_20250103T000000Z", "20250103T000000Z_20250103T120000Z"]
    assert len(split_window(window, "hour")) == 60
    with pytest.raises(LoadError, match="more than 1024 mapped tasks"):
        split_window(Window.parse("2020-01-01", "2025-01-01"), "day")


def test_finish_refuses_a_window_with_a_missing_slice(connections, chinook_source, sqlite_url):
    connections(src=chinook_source, wh=sqlite_url)
    spec = invoices_spec(partition_by="day")
    run_window(spec, Window.parse("2025-12-01", "2025-12-23"))
    window = Window.parse("2025-11-03", "2025-11-05")
    one = {"slice": 0, "window": Window.parse("2025-11-03", "2025-11-04").as_dict(), "extracted": 2, "loaded": 2,
           "written": 2, "max_cursor": None}
    with pytest.raises(LoadError, match="20251104T000000Z_20251105T000000Z.*watermark stays"):
        finish_window(spec, window, [one], "run1")
    assert fingerprint(sqlite_url, spec)["watermark"] == datetime(2025, 12, 23, tzinfo=UTC)


@pytest.mark.airflow
@pytest.mark.slow
def test_partitioned_dag_maps_one_task_per_day_and_moves_watermark_once(
        airflow_db, tmp_path, monkeypatch, connections, chinook_source, sqlite_url, another_target):
    connections(src=chinook_source, wh=sqlite_url)
    data = json.loads(json.dumps(INVOICES))
    data["partition_by"] = "day"
    specs_dir = tmp_path / "pipelines"
    specs_dir.mkdir()
    (specs_dir / "invoices_test.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
    dag = build_dag(specs_dir / "invoices_test.yaml")
    assert [t.task_id for t in dag.topological_sort()] == ["plan", "sync_slice", "finish"]
    assert dag.get_task("sync_slice").pool == "driftless_wh" and dag.get_task("finish").pool == "driftless_wh"
    window = ("2025-11-03T00:00:00+00:00", "2025-11-07T00:00:00+00:00")  # 4 days, 4 invoices
    run = dag.test(logical_date=datetime(2025, 12, 1, tzinfo=UTC), run_conf={"start": window[0], "end": window[1]})
    assert run.state == "success"
    slices = [ti for ti in run.get_task_instances() if ti.task_id == "sync_slice"]
    assert sorted(ti.map_index for ti in slices) == [0, 1, 2, 3]
    assert all(ti.state == "success" for ti in slices)

    spec = invoices_spec(partition_by="day")
    got = fingerprint(sqlite_url, spec)
    assert got["watermark"] == datetime(2025, 11, 7, tzinfo=UTC)
    runs = read_runs(create_engine(sqlite_url), spec.name)
    assert sorted(r["watermark"] is None for r in runs) == [False] + [True] * 4  # 4 slices + 1 finish
    # The same as one clean unpartitioned run of the window.
    reference = another_target()
    connections(wh=reference)
    run_window(invoices_spec(), Window.parse(*window))
    expected = fingerprint(reference, invoices_spec())
    assert (got["rows"], got["sha256"]) == (expected["rows"], expected["sha256"]) and got["rows"] == 4


# --- pools -----------------------------------------------------------------------------------------

@pytest.mark.airflow
def test_write_tasks_run_in_one_pool_per_target_connection():
    module = load_dag_module()
    for dag_id, target in (("chinook_invoices", "warehouse"), ("chinook_invoice_lines", "warehouse")):
        dag = getattr(module, dag_id)
        assert dag.get_task("load").pool == f"driftless_{target}"
        assert dag.get_task("extract").pool == "default_pool"
        assert dag.on_failure_callback is None and dag.default_args["on_failure_callback"] is alerts.on_failure
        assert set(dag.params) == {"start", "end", "full_refresh", "dry_run"}
    assert pool_name(SPEC) == "driftless_wh"
    assert pools_for(REPO / "dags" / "pipelines") == {
        "driftless_warehouse": "driftless loads into connection 'warehouse'"}


# --- docker-compose.integration.yml ------------------------------------------------------------------

def test_compose_file_has_the_whole_stack():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    airflow = ["airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
               "airflow-triggerer", "airflow-worker"]
    assert set(services) == {"postgres", "mariadb", "redis", *airflow}
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["mariadb"]["image"].startswith("mariadb:10.11")
    assert services["redis"]["image"].startswith("redis:")
    assert "127.0.0.1:5432:5432" in services["postgres"]["ports"]
    assert "127.0.0.1:3306:3306" in services["mariadb"]["ports"]
    assert "127.0.0.1:8080:8080" in services["airflow-apiserver"]["ports"]
    assert "./docker/initdb:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    assert "CREATE DATABASE warehouse" in (REPO / "docker" / "initdb" / "01-databases.sql").read_text()
    commands = {name: services[name]["command"] for name in airflow}
    assert commands["airflow-apiserver"] == "api-server" and commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor" and commands["airflow-triggerer"] == "triggerer"
    assert commands["airflow-worker"] == "celery worker"
    init = commands["airflow-init"][-1]
    assert "airflow db migrate" in init and "tools.airflow_local pools" in init
    secrets = set()
    for name in airflow:
        svc = services[name]
        assert svc["image"] == "apache/airflow:3.3.2-python3.11", name
        assert ".:/opt/driftless" in svc["volumes"] and "staging:/opt/driftless-staging" in svc["volumes"], name
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://") \
            and env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/driftless/dags"
        assert env["DRIFTLESS_STAGING_DIR"] == "/opt/driftless-staging"  # shared by all workers
        assert env["AIRFLOW_CONN_WAREHOUSE"].endswith("@postgres:5432/warehouse")
        assert env["PYTHONPATH"] == "/opt/driftless"
        secrets.add(env["AIRFLOW__API_AUTH__JWT_SECRET"])
        if name != "airflow-init":
            assert svc["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert len(secrets) == 1  # one JWT secret for every component
    assert set(compose["volumes"]) == {"postgres-data", "mariadb-data", "staging"}


def test_workflows_run_lint_typecheck_tests_and_compose():
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    steps = [s.get("run", "") for job in ci["jobs"].values() for s in job["steps"]]
    assert {"make lint", "make typecheck", "make test"} <= set(steps)
    services = ci["jobs"]["test"]["services"]
    assert services["postgres"]["image"] == "postgres:15" and services["mariadb"]["image"] == "mariadb:10.11"
    integration = yaml.safe_load((REPO / ".github" / "workflows" / "integration.yml").read_text())
    runs = " ".join(s.get("run", "") for s in integration["jobs"]["compose"]["steps"])
    assert "docker compose -f docker-compose.integration.yml up" in runs and "pytest" in runs


# --- lineage -----------------------------------------------------------------------------------------

def test_lineage_is_a_no_op_without_the_openlineage_provider(monkeypatch):
    if lineage.provider_installed():
        pytest.skip("the OpenLineage provider is installed here")
    monkeypatch.setenv("OPENLINEAGE_URL", "http://127.0.0.1:9/")
    assert lineage.configured() and not lineage.enabled()
    assert lineage.emit(SPEC, None) is False


def test_lineage_dataset_names_carry_no_credentials():
    from sqlalchemy import make_url

    uri = lineage.dataset_uri(make_url("postgresql+psycopg://bob:pw@db.internal/wh"), "invoices", None)
    assert uri == "postgres://db.internal:5432/wh.public.invoices"
    assert lineage.dataset_uri(make_url("mysql+pymysql://root@127.0.0.1/test"), "t") == "mysql://127.0.0.1:3306/test.t"
    assert lineage.dataset_uri(make_url("sqlite:////data/w.db"), "t") == "file:///data/w.db#t"



# --- parse time with many specs ------------------------------------------------------------------------

@pytest.mark.airflow
def test_dagbag_with_50_generated_specs_reports_parse_time(record_property):
    sys.path.insert(0, str(REPO))
    from benchmarks.bench_dags import run

    result = run(50)
    record_property("dag_parse_seconds_50_specs", result["dag_parse_s"])
    print(f"\nparsed {result['dags']} DAGs from 50 generated specs in {result['dag_parse_s']:.3f}s")
    assert (result["dags"], result["import_errors"]) == (50, 0)
    assert result["dags_total"] == 51  # the 50 pipelines and the consistency report
