"""A real Airflow on the CeleryExecutor: two Celery workers, Redis broker, PostgreSQL metadata and results.

Partitioned windows (``partition_by: day``) load into PostgreSQL and into MariaDB; their slices run on
both workers (the task instances' hostnames in the metadata database say so), each target ends equal to
one unpartitioned clean run of the window, and the watermark moves once, after every slice is in.
The stack is the one ``make airflow EXECUTOR=celery`` starts (``etl/airflow_local.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from datetime import UTC, datetime

import pytest
import yaml
from sqlalchemy import URL, create_engine, text

from etl.airflow_local import LocalAirflow, airflow_env, free_port, setup
from etl.partitions import split_window
from etl.pipeline import run_window
from etl.spec import load_spec, parse_spec
from etl.state import read_runs
from etl.window import Window
from tests.conftest import MARIADB_ADMIN, PG_ADMIN, airflow_uri, unavailable
from tests.helpers import INVOICES, fingerprint
from tests.test_airflow_live import metadata_db  # noqa: F401 - the fixture

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.integration]

BROKER = os.environ.get("DRIFTLESS_CELERY_BROKER", "redis://127.0.0.1:6379/0")
WINDOW = Window.parse("2025-11-03T00:00:00+00:00", "2025-11-09T00:00:00+00:00")  # 6 days: 6 slices
TARGETS = {"pg": "postgresql", "maria": "mariadb"}


def _spec_data(name: str) -> dict:
    data = json.loads(json.dumps(INVOICES))
    data.update(name=f"slices_{name}", partition_by="day",
                # No scheduled run gets in the way: the first yearly interval after today ends next year or later.
                schedule="0 0 1 1 *", start_date=datetime.now(UTC).date().isoformat())
    data["target"]["connection"] = f"wh_{name}"
    return data


@pytest.fixture(scope="module")
def broker_prefix():
    """A Redis key prefix of this stack's own; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(BROKER, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {BROKER}", exc)
    prefix = f"test_{uuid.uuid4().hex[:10]}"
    yield prefix
    keys = list(client.scan_iter(f"driftless_{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def databases():
    """Fresh target databases: ``{pg, maria}`` for Airflow's loads, ``{pg_ref, maria_ref}`` for the references."""
    pg_admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    maria_admin = create_engine(MARIADB_ADMIN)
    made: dict[str, URL] = {}
    try:
        for key in ("pg", "pg_ref", "maria", "maria_ref"):
            name = f"driftless_t_{uuid.uuid4().hex[:10]}"
            engine = pg_admin if key.startswith("pg") else maria_admin
            service = "PostgreSQL" if key.startswith("pg") else "MariaDB"
            try:
                with engine.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"' if key.startswith("pg")
                                      else f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                    conn.commit()
            except Exception as exc:  # noqa: BLE001
                unavailable(service, exc)
            made[key] = (PG_ADMIN if key.startswith("pg") else MARIADB_ADMIN).set(database=name)
        yield made
    finally:
        for key, url in made.items():
            engine = pg_admin if key.startswith("pg") else maria_admin
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)' if key.startswith("pg")
                                  else f"DROP DATABASE IF EXISTS `{url.database}`"))
                conn.commit()
        pg_admin.dispose()
        maria_admin.dispose()


@pytest.fixture(scope="module")
def celery(tmp_path_factory, chinook_source, metadata_db, broker_prefix, databases):  # noqa: F811
    """A running Airflow on the CeleryExecutor with two workers and the pipelines slices_pg, slices_maria."""
    root = tmp_path_factory.mktemp("celery")
    specs = root / "pipelines"
    specs.mkdir()
    source = root / "source.db"
    shutil.copyfile(chinook_source, source)
    for name in TARGETS:
        (specs / f"slices_{name}.yaml").write_text(yaml.safe_dump(_spec_data(name)))
    port = free_port()
    base = dict(os.environ)
    base.update({"DRIFTLESS_SPECS_DIR": str(specs), "AIRFLOW_CONN_SRC": f"sqlite:///{source}",
                 **{f"AIRFLOW_CONN_WH_{k.upper()}": airflow_uri(databases[k]) for k in TARGETS},
                 "DRIFTLESS_TASK_RETRIES": "2", "DRIFTLESS_RETRY_DELAY_S": "2"})
    env = airflow_env(root / "airflow", port, base=base, metadata_db=metadata_db, executor="celery",
                      broker_url=BROKER, broker_prefix=broker_prefix)
    setup(env, specs)
    stack = LocalAirflow(env, port, workers=2, concurrency=2)
    stack.start()
    try:
        stack.wait_ready(timeout=240)
        stack.wait_workers(timeout=180)
        token = stack.token()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the dag-processor parses the folder once it is up
            dags = {d["dag_id"] for d in stack.api("GET", "/dags", token)["dags"]}
            if {f"slices_{n}" for n in TARGETS} <= dags:
                break
            stack.check_alive()
            time.sleep(2)
        else:
            pytest.fail("the dag-processor did not register the pipeline DAGs within 180 s")
        for name in TARGETS:
            stack.api("PATCH", f"/dags/slices_{name}", token, json={"is_paused": False})
        yield {"stack": stack, "specs": specs, "source": source, "metadata": metadata_db}
    finally:
        stack.stop()


def _trigger(stack: LocalAirflow, dag_id: str, window: Window) -> str:
    run = stack.api("POST", f"/dags/{dag_id}/dagRuns", stack.token(),
                    json={"logical_date": None, "conf": window.as_dict()})
    return run["dag_run_id"]


def _wait(stack: LocalAirflow, dag_id: str, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}", stack.token())
        if run["state"] in ("success", "failed"):
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"{dag_id} {run_id} not finished in {timeout:.0f}s ({run['state']}); logs in {stack.logs}")
        stack.check_alive()
        time.sleep(2)


def _task_instances(metadata: str, dag_id: str, run_id: str) -> list[dict]:
    """The run's task instances as the metadata database has them (hostname, times, tries)."""
    engine = create_engine(metadata)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT task_id, map_index, state, hostname, start_date, end_date, try_number, pool "
                "FROM task_instance WHERE dag_id = :d AND run_id = :r ORDER BY task_id, map_index"),
                {"d": dag_id, "r": run_id}).mappings().all()
    finally:
        engine.dispose()
    return [dict(r) for r in rows]


@pytest.mark.timeout(600)
def test_partition_slices_run_on_both_workers_and_load_exactly_once(celery, databases, monkeypatch):
    stack: LocalAirflow = celery["stack"]
    t0 = time.monotonic()
    runs = {name: _trigger(stack, f"slices_{name}", WINDOW) for name in TARGETS}
    for name, run_id in runs.items():
        assert _wait(stack, f"slices_{name}", run_id, timeout=420)["state"] == "success", stack.logs
    elapsed = time.monotonic() - t0

    slices = len(split_window(WINDOW, "day"))
    hosts_seen: dict[str, list[str]] = {}
    monkeypatch.setenv("AIRFLOW_CONN_SRC", f"sqlite:///{celery['source']}")
    for name, run_id in runs.items():
        tis = _task_instances(celery["metadata"], f"slices_{name}", run_id)
        by_task = {(t["task_id"], t["map_index"]): t for t in tis}
        mapped = [t for t in tis if t["task_id"] == "sync_slice"]
        assert sorted(t["map_index"] for t in mapped) == list(range(slices))
        assert all(t["state"] == "success" and t["pool"] == f"driftless_wh_{name}" for t in mapped)
        hosts = sorted({t["hostname"] for t in tis})
        hosts_seen[name] = [t["hostname"] for t in mapped]
        # Every task ran on one of the two Celery workers, and the slices on both of them.
        assert set(hosts) <= set(stack.workers), hosts
        assert [t["try_number"] for t in tis] == [1] * len(tis)  # a clean run: nothing failed and retried
        assert {t["hostname"] for t in mapped} == set(stack.workers), hosts_seen[name]
        finish = by_task[("finish", -1)]
        assert finish["state"] == "success" and finish["start_date"] >= max(t["end_date"] for t in mapped)

        # The target equals one unpartitioned clean run of the window into a fresh database.
        spec = load_spec(celery["specs"] / f"slices_{name}.yaml")
        got = fingerprint(databases[name], spec)
        reference_spec = parse_spec({k: v for k, v in _spec_data(name).items() if k != "partition_by"}, "reference")
        monkeypatch.setenv(f"AIRFLOW_CONN_WH_{name.upper()}", airflow_uri(databases[f"{name}_ref"]))
        run_window(reference_spec, WINDOW)
        expected = fingerprint(databases[f"{name}_ref"], reference_spec)
        assert got["rows"] > 0 and (got["rows"], got["sha256"]) == (expected["rows"], expected["sha256"])

        # The watermark moved once: one run row per slice without a watermark, then finish's, after them all.
        assert got["watermark"] == WINDOW.end
        engine = create_engine(databases[name])
        try:
            records = read_runs(engine, spec.name)
        finally:
            engine.dispose()
        moved = [r for r in records if r["watermark"] is not None]
        assert len(records) == slices + 1 and len(moved) == 1, [
            (r["run_id"], r["status"], r["watermark"], r["message"], r["started_at"]) for r in records] + [
            (t["task_id"], t["map_index"], t["hostname"], t["try_number"], t["start_date"]) for t in tis]
        assert moved[0]["run_id"] == run_id and moved[0]["status"] == "success"
        assert moved[0]["started_at"] >= max(r["finished_at"] for r in records if r["watermark"] is None)
    print(f"\ncelery: {len(TARGETS)} partitioned runs of {slices} slices in {elapsed:.1f}s; slice hosts {hosts_seen}")
