"""The README's quick start, extracted and run as written against scratch databases, so it cannot rot.

Only the values of the two ``export AIRFLOW_CONN_...`` lines (the reader's own databases) are replaced.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import URL, create_engine, text

from tests.conftest import airflow_uri

REPO = Path(__file__).resolve().parents[2]


def quickstart_block() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"<!-- quickstart:begin.*?-->\s*```bash\n(.*?)```\s*<!-- quickstart:end -->", readme, re.S)
    assert section, "README.md lost its quick start block (<!-- quickstart:begin --> ```bash ... ``` <!-- end -->)"
    return section[1]


def test_quickstart_block_names_its_connections():
    block = quickstart_block()
    assert re.findall(r"^export (AIRFLOW_CONN_\w+)=", block, re.M) == ["AIRFLOW_CONN_SHOP", "AIRFLOW_CONN_WAREHOUSE"]
    assert [line.split()[1] for line in block.splitlines() if line.startswith("etl ")] == [
        "discover", "specs", "run", "status"]


@pytest.mark.integration
def test_readme_quickstart_runs_verbatim(tmp_path, pg_url, monkeypatch):
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, email varchar(80), "
                             "balance numeric(10,2), updated_at timestamptz NOT NULL)")
        for i in range(1, 9):
            conn.execute(text("INSERT INTO customers VALUES (:i, :n, :e, :b, :u)"),
                         {"i": i, "n": f"Kundin {i}", "e": None if i == 4 else f"c{i}@example.com", "b": f"{i}0.5",
                          "u": today - timedelta(days=i % 4 + 1, hours=i)})
    engine.dispose()
    warehouse = URL.create("sqlite", database=str(tmp_path / "warehouse.db"))
    block = quickstart_block()
    block = re.sub(r"^export AIRFLOW_CONN_SHOP='[^']*'", f"export AIRFLOW_CONN_SHOP='{airflow_uri(pg_url)}'", block,
                   flags=re.M)
    block = re.sub(r"^export AIRFLOW_CONN_WAREHOUSE='[^']*'", f"export AIRFLOW_CONN_WAREHOUSE='sqlite:///"
                   f"{warehouse.database}'", block, flags=re.M)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "DRIFTLESS_SPECS_DIR"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the `etl` command
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrote" in proc.stdout and "1 spec(s) valid" in proc.stdout and "Traceback" not in proc.stderr
    assert (tmp_path / "pipelines" / "customers.yaml").is_file()
    assert re.search(r"^customers\s.*\sok$", proc.stdout, re.M), proc.stdout  # etl status: fresh

    query = "SELECT id, name, email, balance, updated_at FROM customers ORDER BY id"
    with create_engine(pg_url).connect() as conn:  # timestamptz: aware datetimes, compared in UTC
        source = [(i, n, e, float(b), u.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))
                  for i, n, e, b, u in conn.execute(text(query))]
    with create_engine(warehouse).connect() as conn:  # SQLite: text 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC)
        target = [(i, n, e, float(b), str(u)[:19]) for i, n, e, b, u in conn.execute(text(query))]
    assert len(source) == 8 and target == source

    # "Under Airflow the same files are the DAGs": the shipped DAG file, pointed at the same directory.
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(tmp_path / "pipelines"))
    from tests.airflow.test_dags import load_dag_module

    module = load_dag_module()
    dag = module.customers
    assert dag.dag_id == "customers" and type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert [t.task_id for t in dag.topological_sort()] == ["extract", "load", "reconcile"]
