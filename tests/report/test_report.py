"""`etl report` (self-contained HTML + JSON) and the consistency_report DAG."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from driftless.cli import main
from driftless.pipeline import run_window
from driftless.reconcile.run import reconcile_pipeline
from driftless.report import build_report
from driftless.spec import load_spec, spec_files
from driftless.window import Window
from tests.conftest import REPO
from tests.helpers import INVOICES, invoices_spec

PASSWORD = "s3cret-Pw"


@pytest.mark.integration
def test_report_html_is_self_contained_and_json_complete(chinook_copy, pg_url, connections, tmp_path):
    connections(src=chinook_copy, wh=pg_url.set(password=PASSWORD))  # trust auth ignores the password
    spec = invoices_spec(reconcile={"sum_columns": ["total"], "row_digest": True})
    for start, end in (("2021-01-01", "2022-01-01"), ("2022-01-01", "2023-01-01"), ("2023-01-01", "2026-01-01")):
        run_window(spec, Window.parse(start, end))
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE invoices SET billing_city = NULL WHERE invoice_id = 12"))
        conn.execute(text("DELETE FROM invoices WHERE invoice_id = 13"))
    engine.dispose()
    reconcile_pipeline(spec, deep=True)
    broken = invoices_spec(name="broken_test", target={"connection": "nowhere"})
    paths = build_report([spec, broken], tmp_path / "out")

    html = paths["html"].read_text()
    data = json.loads(paths["json"].read_text())
    for content in (html, paths["json"].read_text()):
        assert PASSWORD not in content
    assert not re.search(r"<(script|link|img)\b|\bsrc=|https?://", html)  # nothing to fetch: opens offline
    assert html.count("<svg") == 2 * 1  # rows-per-run and reject-ratio charts of the one readable pipeline
    assert "Integration catalog" in html and "connection &#39;nowhere&#39; is not defined" in html

    by_name = {p["pipeline"]: p for p in data["pipelines"]}
    p = by_name["invoices_test"]
    assert [r["loaded"] for r in p["runs"]] == [83, 83, 246]
    assert p["state"]["watermark"].startswith("2026-01-01") and p["state"]["freshness_lag_s"] > 0
    assert p["reconciliation_status"] == "FAIL" and p["last_status"] == "success"
    diff = p["latest_diff"]
    assert (diff["missing_in_target"], diff["changed"], diff["extra_in_target"]) == (1, 1, 0)
    assert diff["samples"]["changed"][0]["columns"]["billing_city"]["target"] is None
    assert {c["check"] for c in p["checks"]} >= {"sum_total", "extracted_equals_loaded", "deep_diff"}
    assert p["source"]["table"] == "Invoice" and p["schedule"] == "@daily"
    assert by_name["broken_test"]["error"].startswith("connection 'nowhere' is not defined")
    assert "billing_city = NULL" in html  # the changed sample shows NULL, not an empty cell
    assert diff["row_digest"] == {"source": False, "target": True}  # SQLite source hashed, PG target's digest read
    assert "stored row digest read on\nsource: no, target: yes" in html


def test_report_command_writes_both_files(chinook_copy, sqlite_url, connections, tmp_path, capsys):
    connections(src=chinook_copy, wh=sqlite_url)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    assert main(["run", "invoices_test", "--specs-dir", str(specs), "--start", "2021-01-01",
                 "--end", "2026-01-01"]) == 0
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path / "r"), "--specs-dir", str(specs), "--deep"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(line["html"]).is_file() and line["pipelines"] == 1
    data = json.loads(Path(line["json"]).read_text())
    assert data["pipelines"][0]["latest_diff"]["status"] == "PASS"


def _airflow_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update({"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False", **extra})
    return env


@pytest.mark.airflow
def test_consistency_report_dag_parses_and_is_scheduled_on_target_assets(tmp_path):
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        "import json\n"
        "b = DagBag('dags')\n"
        "d = b.dags['consistency_report']\n"
        "print(json.dumps({'errors': list(b.import_errors), 'dags': sorted(b.dags),"
        " 'uris': sorted(a.uri for a in d.timetable.asset_condition.objects),"
        " 'kind': type(d.timetable.asset_condition).__name__, 'params': sorted(d.params)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_airflow_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == []
    assert {"consistency_report", "chinook_invoices", "chinook_invoice_lines"} <= set(out["dags"])
    specs = [load_spec(p) for p in spec_files(REPO / "dags" / "pipelines")]
    assert out["uris"] == sorted(f"driftless://{s.target.connection}/default/{s.target.table}" for s in specs)
    assert {"driftless://warehouse/default/invoice_lines", "driftless://warehouse/default/invoices"} <= set(out["uris"])
    assert out["kind"] == "AssetAny" and out["params"] == ["on_drift", "out_dir", "repair"]


@pytest.mark.airflow
@pytest.mark.slow
def test_consistency_report_dag_runs_and_logs_where_the_report_is(chinook_copy, tmp_path):
    warehouse = tmp_path / "wh.db"
    env = _airflow_env(tmp_path, AIRFLOW_CONN_CHINOOK=f"sqlite:///{chinook_copy}",
                       AIRFLOW_CONN_WAREHOUSE=f"sqlite:///{warehouse}", DRIFTLESS_REPORT_DIR=str(tmp_path / "reports"))
    airflow = str(Path(sys.executable).parent / "airflow")
    etl = str(Path(sys.executable).parent / "etl")
    for name in ("chinook_invoices", "chinook_invoice_lines"):
        subprocess.run([etl, "run", name, "--start", "2021-01-01", "--end", "2026-01-01"], cwd=REPO, env=env,
                       check=True, capture_output=True, timeout=120)
    sqlite_db = create_engine(f"sqlite:///{warehouse}")
    with sqlite_db.begin() as conn:
        conn.execute(text("DELETE FROM invoices WHERE invoice_id = 3"))
    sqlite_db.dispose()
    subprocess.run([airflow, "db", "migrate"], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    proc = subprocess.run([airflow, "dags", "test", "consistency_report", "2026-01-01T00:00:00+00:00",
                           "--conf", json.dumps({"repair": True})], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    where = re.search(r"consistency report written to (\S+report\.html)", log)
    assert where, log[-3000:]
    assert Path(where[1]).is_file() and Path(where[1]).parent.parent == tmp_path / "reports"
    data = json.loads((Path(where[1]).parent / "report.json").read_text())
    diffs = {p["pipeline"]: p["latest_diff"] for p in data["pipelines"]}
    assert diffs["chinook_invoices"]["missing_in_target"] == 1  # found ...
    assert diffs["chinook_invoices"]["repair"]["after"]["status"] == "PASS"  # ... and repaired
