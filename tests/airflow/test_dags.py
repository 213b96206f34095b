"""The generated DAGs: they import cleanly and fast, and run a window end to end with ``dag.test()``."""

from __future__ import annotations

import importlib.util
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from driftless.airflow.dags import build_dag
from driftless.errors import SpecError
from driftless.pipeline import staging_dir
from driftless.window import Window
from tests.helpers import INVOICES, fingerprint, invoices_spec

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "driftless_pipelines.py"


def load_dag_module():
    spec = importlib.util.spec_from_file_location("driftless_pipelines_under_test", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.airflow
def test_dagbag_imports_without_errors_and_reports_parse_time(record_property):
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(REPO / "dags"))
    elapsed = time.perf_counter() - started
    record_property("dag_parse_seconds", round(elapsed, 3))
    print(f"\nparsed {len(bag.dags)} DAG(s) from dags/ in {elapsed:.3f}s")
    assert bag.import_errors == {}
    assert {"chinook_invoices", "chinook_invoice_lines"} <= set(bag.dag_ids)
    dag = bag.dags["chinook_invoices"]
    assert [t.task_id for t in dag.topological_sort()] == ["extract", "load", "reconcile"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    load = dag.get_task("load")
    assert load.retries >= 1 and load.retry_exponential_backoff
    assert [a.uri for a in load.outlets] == ["driftless://warehouse/default/invoices"]


def test_dag_file_reads_no_database_at_parse_time(monkeypatch):
    # No connection is defined: parsing must still succeed, because nothing connects at parse time.
    for key in ("AIRFLOW_CONN_CHINOOK", "AIRFLOW_CONN_WAREHOUSE"):
        monkeypatch.delenv(key, raising=False)
    module = load_dag_module()
    assert "chinook_invoices" in vars(module)


@pytest.mark.airflow
@pytest.mark.slow
def test_dag_test_end_to_end(airflow_db, tmp_path, monkeypatch, connections, chinook_source, target_url):
    connections(src=chinook_source, wh=target_url)
    specs_dir = tmp_path / "pipelines"
    specs_dir.mkdir()
    spec_path = specs_dir / "invoices_test.yaml"
    spec_path.write_text(yaml.safe_dump(INVOICES))
    # dag.test() re-parses the DAG folder, whose factory reads the specs of DRIFTLESS_SPECS_DIR.
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
    dag = build_dag(spec_path)

    # A manual window given through the trigger-form params: the whole of 2024.
    run = dag.test(logical_date=datetime(2025, 6, 1, tzinfo=UTC),
                   run_conf={"start": "2024-01-01T00:00:00+00:00", "end": "2025-01-01T00:00:00+00:00"})
    assert run.state == "success"
    fp = fingerprint(target_url, invoices_spec())
    assert fp["rows"] == 83
    assert fp["watermark"] == datetime(2025, 1, 1, tzinfo=UTC)
    # loaded and reconciled: the run's staging files are gone
    window = Window.parse("2024-01-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00")
    assert not staging_dir(invoices_spec(), window, run.run_id).exists()
    assert staging_dir(invoices_spec(), window, run.run_id).parent.parent.is_dir()  # the path is the real one

    # Without an override the run's data interval is the window. A manual run at 2025-12-23 gets the
    # interval that ended last, [2025-12-22, 2025-12-23), which holds one invoice.
    # (A fresh DAG object: dag.test() keeps the previous run's conf in the in-process params.)
    run = build_dag(spec_path).test(logical_date=datetime(2025, 12, 23, tzinfo=UTC))
    assert run.state == "success"
    assert (run.data_interval_start, run.data_interval_end) == (
        datetime(2025, 12, 22, tzinfo=UTC), datetime(2025, 12, 23, tzinfo=UTC))
    fp2 = fingerprint(target_url, invoices_spec())
    assert fp2["rows"] == 84
    assert fp2["watermark"] == datetime(2025, 12, 23, tzinfo=UTC)


def test_staging_of_a_loaded_window_is_removed_and_stale_runs_are_pruned(tmp_path):
    import os
    import time

    from driftless.extract.staging import discard, prune_stale

    root = tmp_path / "staging"
    fresh, stale, done = (root / "p" / "w1" / "run_a", root / "p" / "w2" / "run_b", root / "q" / "w3" / "run_c")
    for d in (fresh, stale, done):
        d.mkdir(parents=True)
        (d / "part-00000.parquet").write_bytes(b"x")
    week_ago = time.time() - 8 * 86400
    for path in (stale / "part-00000.parquet", stale):
        os.utime(path, (week_ago, week_ago))
    assert prune_stale(root) == [stale]
    assert fresh.exists() and not stale.exists()
    discard(done)
    assert not done.exists() and not done.parent.exists()  # the window's directory went with its last run
    assert fresh.exists()


def test_pipeline_dags_register_in_the_dag_files_globals_from_pipelines_beside_it(tmp_path, monkeypatch):
    from driftless.airflow.dags import pipeline_dags, report_dag

    monkeypatch.delenv("DRIFTLESS_SPECS_DIR", raising=False)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    namespace = {"__file__": str(tmp_path / "my_dags.py")}  # what globals() holds in a DAG file
    built = pipeline_dags(namespace)
    report = report_dag(namespace)
    assert set(built) == {"invoices_test"} and namespace["invoices_test"] is built["invoices_test"]
    assert namespace["consistency_report"] is report
    assert [a.uri for a in report.timetable.asset_condition.objects] == ["driftless://wh/default/invoices"]
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(tmp_path / "empty"))
    with pytest.raises(SpecError, match="empty: not a directory of pipeline specs"):  # an import error naming it
        pipeline_dags({"__file__": str(tmp_path / "my_dags.py")})
    (tmp_path / "empty").mkdir()
    assert pipeline_dags({"__file__": str(tmp_path / "my_dags.py")}) == {}  # the setting wins


@pytest.mark.parametrize("source, shown", [
    ({"type": "sql", "connection": "src", "table": "Invoice", "primary_key": ["id"], "cursor": "ts"}, "sql `Invoice`"),
    ({"type": "sql", "connection": "src", "query": "SELECT * FROM t", "primary_key": ["id"], "cursor": "ts"},
     "sql `a SQL query`"),
    ({"type": "rest", "connection": "api", "endpoint": "/v1/orders", "primary_key": ["id"], "cursor": "ts"},
     "rest `/v1/orders`"),
    ({"type": "file", "location": "/data/drops/", "glob": "*.csv", "format": "csv", "primary_key": ["id"],
      "cursor": "_file_time"}, "file `/data/drops/*.csv`"),
    ({"type": "queue", "broker": "redis_stream", "connection": "bus", "stream": "orders", "primary_key": ["id"],
      "cursor": "ts"}, "queue `redis_stream orders`"),
])
def test_dag_doc_names_what_each_kind_of_source_reads(source, shown):
    from driftless.airflow.dags import pipeline_doc
    from driftless.spec import parse_spec

    columns = [{"name": "id", "type": "bigint"}, {"name": "ts", "type": "timestamptz"},
               {"name": "_file_time", "type": "timestamptz"}]
    spec = parse_spec({"name": "p", "source": source, "target": {"connection": "wh", "table": "t"},
                       "columns": columns}, "p.yaml")
    assert f"**Source**: {shown} through connection" in pipeline_doc(spec, Path("p.yaml"))
