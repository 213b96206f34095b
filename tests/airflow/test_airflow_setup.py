"""`make airflow`'s setup makes every shipped DAG runnable; a missing connection fails at once, naming it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from driftless.airflow import tasks as airflow_tasks
from driftless.airflow.dags import build_dag
from tests.helpers import INVOICES
from tools.airflow_local import demo_environment, stop_process

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "dags" / "pipelines"
WINDOW = {"start": "2021-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:00+00:00"}


def load_dags(specs_dir: Path, monkeypatch, file: str):
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
    spec = importlib.util.spec_from_file_location(f"{file}_{specs_dir.name}", REPO / "dags" / f"{file}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_missing_connection_fails_the_task_without_retries_naming_it(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    path = tmp_path / "invoices_test.yaml"
    path.write_text(yaml.safe_dump({**INVOICES, "source": {**INVOICES["source"], "connection": "nowhere"}}))
    monkeypatch.delenv("AIRFLOW_CONN_NOWHERE", raising=False)
    monkeypatch.setenv("DRIFTLESS_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setattr(airflow_tasks, "_setup", lambda: None)  # no Airflow lookup outside a task
    context = {"params": {**WINDOW}, "run_id": "manual__1", "data_interval_start": None,
               "data_interval_end": None}
    with pytest.raises(AirflowFailException) as err:
        airflow_tasks.extract(str(path), context)
    message = str(err.value)
    assert "connection 'nowhere' is not defined" in message
    assert "Connection Id 'nowhere'" in message and "AIRFLOW_CONN_NOWHERE" in message and "not retried" in message


@pytest.mark.airflow
@pytest.mark.slow
def test_a_missing_connection_fails_on_the_first_try_in_a_run(airflow_db, tmp_path, monkeypatch):
    specs = tmp_path / "pipelines"
    specs.mkdir()
    (specs / "invoices_test.yaml").write_text(yaml.safe_dump(
        {**INVOICES, "source": {**INVOICES["source"], "connection": "nowhere"}}))
    monkeypatch.delenv("AIRFLOW_CONN_NOWHERE", raising=False)
    monkeypatch.setenv("DRIFTLESS_TASK_RETRIES", "3")
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs))
    dag = build_dag(specs / "invoices_test.yaml")
    assert dag.get_task("extract").retries == 3
    run = dag.test(logical_date=datetime(2025, 6, 1, tzinfo=UTC), run_conf=WINDOW)
    assert run.state == "failed"
    extract = run.get_task_instance("extract")
    assert (extract.state, extract.try_number) == ("failed", 1)  # not up_for_retry


@pytest.mark.airflow
@pytest.mark.slow
def test_every_shipped_dag_runs_under_the_make_airflow_setup(airflow_db, tmp_path, monkeypatch, chinook_source):
    source = tmp_path / "source.db"
    shutil.copyfile(chinook_source, source)
    env = {**os.environ, "AIRFLOW_CONN_CHINOOK": f"sqlite:///{source}",
           "AIRFLOW_CONN_WAREHOUSE": f"sqlite:///{tmp_path / 'warehouse.db'}"}
    env.pop("AIRFLOW_CONN_CHINOOK_API", None)
    api = demo_environment(env)  # what `make airflow` does: the demo API, and connection chinook_api for it
    try:
        assert api is not None and json.loads(env["AIRFLOW_CONN_CHINOOK_API"])["extra"]["token"]
        for key in ("AIRFLOW_CONN_CHINOOK", "AIRFLOW_CONN_WAREHOUSE", "AIRFLOW_CONN_CHINOOK_API"):
            monkeypatch.setenv(key, env[key])
        monkeypatch.setenv("DRIFTLESS_REPORT_DIR", str(tmp_path / "reports"))
        module = load_dags(SHIPPED, monkeypatch, "driftless_pipelines")
        shipped = sorted(p.stem for p in SHIPPED.glob("*.yaml"))
        assert shipped == ["chinook_customers_api", "chinook_invoice_lines", "chinook_invoices", "chinook_tracks_csv"]
        for i, name in enumerate(shipped):
            run = getattr(module, name).test(logical_date=datetime(2026, 1, 1, 2, i, tzinfo=UTC), run_conf=WINDOW)
            states = {ti.task_id: ti.state for ti in run.get_task_instances()}
            assert run.state == "success", (name, states)
            assert run.get_task_instance("load").xcom_pull(task_ids="load")["loaded"] > 0, name
        report = load_dags(SHIPPED, monkeypatch, "consistency_report").consistency_report
        run = report.test(logical_date=datetime(2026, 1, 1, 6, tzinfo=UTC))
        assert run.state == "success"
        statuses = run.get_task_instance("diff_and_report").xcom_pull(task_ids="diff_and_report")["statuses"]
        assert statuses == {"chinook_customers_api": "SKIP", "chinook_invoice_lines": "PASS",
                            "chinook_invoices": "PASS", "chinook_tracks_csv": "SKIP"}  # REST, files: per window
    finally:
        stop_process(api)


def test_make_airflow_runs_a_triggerer_and_a_metadata_db_per_checkout():
    from tools import airflow_local

    assert "triggerer" in airflow_local.COMPONENTS
    name = airflow_local.metadata_db_name()
    assert name.startswith("driftless_airflow_") and len(name) == len("driftless_airflow_") + 8
    assert name == airflow_local.metadata_db_name()  # stable for one checkout


@pytest.mark.airflow
def test_dag_docs_say_source_target_schedule_params_and_where_the_report_is(monkeypatch):
    module = load_dags(SHIPPED, monkeypatch, "driftless_pipelines")
    doc = module.chinook_invoices.doc_md
    for needle in ("**Source**: sql `Invoice`", "connection `chinook`", "table `invoices`",
                   "driftless://warehouse/default/invoices", "Schedule", "`dry_run`", "backfill ignores these options"):
        assert needle in doc, needle
    report = load_dags(SHIPPED, monkeypatch, "consistency_report").consistency_report.doc_md
    for needle in ("on_drift", "`fail`", "`warn`", "Consistency report", "DRIFTLESS_REPORT_STORE", "0 6 * * *",
                   "driftless://warehouse/default/customers"):
        assert needle in report, needle
