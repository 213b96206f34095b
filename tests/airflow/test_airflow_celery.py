"""A real Airflow on the CeleryExecutor: two Celery workers, Redis broker, PostgreSQL metadata and results.

Partitioned windows (``partition_by: day``) load into PostgreSQL and into MariaDB; their slices run on
both workers (the task instances' hostnames in the metadata database say so), each target ends equal to
one unpartitioned clean run of the window, and the watermark moves once, after every slice is in.
The stack is the one ``make airflow EXECUTOR=celery`` starts (``tools/airflow_local.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import yaml
from sqlalchemy import URL, create_engine, text

from driftless.airflow.partitions import split_window
from driftless.pipeline import run_window
from driftless.spec import load_spec, parse_spec
from driftless.state import read_runs
from driftless.window import Window
from tests.airflow.test_airflow_live import metadata_db  # noqa: F401 - the fixture
from tests.conftest import MARIADB_ADMIN, PG_ADMIN, airflow_uri, unavailable
from tests.helpers import INVOICES, LIVE_STACK, fingerprint, running_airflow
from tools.airflow_local import LocalAirflow, airflow_env, free_port

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.integration, LIVE_STACK]

BROKER = os.environ.get("DRIFTLESS_CELERY_BROKER", "redis://127.0.0.1:6379/0")
WINDOW = Window.parse("2025-11-03T00:00:00+00:00", "2025-11-09T00:00:00+00:00")  # 6 days: 6 slices
TARGETS = {"pg": "postgresql", "maria": "mariadb"}
KILLED = {"kpg": "pg", "kmaria": "maria"}  # pipelines of the worker-kill test: fresh targets of each dialect
# The pool test: 8 pipelines into one target (connection wh_pgpool) through a pool of 2 slots. 8 loads are 4 times
# the pool's slots and twice the 4 task slots of the executor (2 workers x 2 processes), so without the pool up to
# 4 loads could run at once; the test asserts that more loads than slots were waiting at one time, and that no more
# than 2 ran at once.
POOLED = [f"pool_{i:02d}" for i in range(8)]
POOL_SLOTS = 2


def _spec_data(name: str) -> dict:
    """``slices_<name>``: the invoices, partitioned by day, into connection ``wh_<name>``."""
    data = json.loads(json.dumps(INVOICES))
    data.update(name=f"slices_{name}", partition_by="day",
                # No scheduled run gets in the way: the first yearly interval after today ends next year or later.
                schedule="0 0 1 1 *", start_date=datetime.now(UTC).date().isoformat())
    data["target"]["connection"] = f"wh_{name}"
    return data


def _pooled_spec_data(name: str) -> dict:
    """``<name>``: the invoices, unpartitioned, into table ``invoices_<name>`` of the one connection ``wh_pgpool``."""
    data = json.loads(json.dumps(INVOICES))
    data.update(name=name, schedule="0 0 1 1 *", start_date=datetime.now(UTC).date().isoformat())
    data["target"].update(connection="wh_pgpool", table=f"invoices_{name}")
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
        for key in ("pg", "pg_ref", "maria", "maria_ref", *KILLED, "pgpool"):
            name = f"driftless_t_{uuid.uuid4().hex[:10]}"
            engine = pg_admin if key.startswith(("pg", "kpg")) else maria_admin
            service = "PostgreSQL" if key.startswith(("pg", "kpg")) else "MariaDB"
            try:
                with engine.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"' if engine is pg_admin
                                      else f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                    conn.commit()
            except Exception as exc:  # noqa: BLE001
                unavailable(service, exc)
            made[key] = (PG_ADMIN if engine is pg_admin else MARIADB_ADMIN).set(database=name)
        yield made
    finally:
        def drop(url: URL) -> None:
            pg = url.get_backend_name() == "postgresql"
            with (pg_admin if pg else maria_admin).connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)' if pg
                                  else f"DROP DATABASE IF EXISTS `{url.database}`"))
                conn.commit()

        # At once: each PostgreSQL DROP DATABASE waits for a checkpoint, and concurrent ones share it.
        with ThreadPoolExecutor(max_workers=len(made) or 1) as ex:
            list(ex.map(drop, made.values()))
        pg_admin.dispose()
        maria_admin.dispose()


@pytest.fixture(scope="module")
def celery(tmp_path_factory, chinook_source, metadata_db, broker_prefix, databases):  # noqa: F811
    """A running Airflow on the CeleryExecutor with two workers, the slices_* pipelines and the pool_* ones."""
    root = tmp_path_factory.mktemp("celery")
    specs = root / "pipelines"
    specs.mkdir()
    source = root / "source.db"
    shutil.copyfile(chinook_source, source)
    for name in [*TARGETS, *KILLED]:
        (specs / f"slices_{name}.yaml").write_text(yaml.safe_dump(_spec_data(name)))
    for name in POOLED:
        (specs / f"{name}.yaml").write_text(yaml.safe_dump(_pooled_spec_data(name)))
    dag_ids = {*(f"slices_{n}" for n in [*TARGETS, *KILLED]), *POOLED}
    port = free_port()
    base = dict(os.environ)
    base.update({"DRIFTLESS_SPECS_DIR": str(specs), "AIRFLOW_CONN_SRC": f"sqlite:///{source}",
                 **{f"AIRFLOW_CONN_WH_{k.upper()}": airflow_uri(databases[k]) for k in [*TARGETS, *KILLED, "pgpool"]},
                 "DRIFTLESS_TASK_RETRIES": "2", "DRIFTLESS_RETRY_DELAY_S": "2",
                 # A task whose worker died is failed (and retried) after 40 s without a heartbeat, not 300 s.
                 "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "40",
                 "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5"})
    env = airflow_env(root / "airflow", port, base=base, metadata_db=metadata_db, executor="celery",
                      broker_url=BROKER, broker_prefix=broker_prefix)
    with running_airflow(env, port, specs, dag_ids, workers=2, report=False) as stack:
        token = stack.token()
        for dag_id in sorted(dag_ids):
            stack.api("PATCH", f"/dags/{dag_id}", token, json={"is_paused": False})
        yield {"stack": stack, "specs": specs, "source": source, "metadata": metadata_db}


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
        time.sleep(1)


def _task_instances(metadata: str, dag_id: str, run_id: str) -> list[dict]:
    """The run's task instances as the metadata database has them (hostname, times, tries)."""
    engine = create_engine(metadata)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT task_id, map_index, state, hostname, scheduled_dttm, start_date, end_date, try_number, pool "
                "FROM task_instance WHERE dag_id = :d AND run_id = :r ORDER BY task_id, map_index"),
                {"d": dag_id, "r": run_id}).mappings().all()
    finally:
        engine.dispose()
    return [dict(r) for r in rows]


@pytest.fixture(scope="module")
def expected(databases, chinook_source):
    """Fingerprints of one unpartitioned clean run of WINDOW into fresh PostgreSQL and MariaDB databases."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_SRC", f"sqlite:///{chinook_source}")
        for name in TARGETS:
            spec = parse_spec({k: v for k, v in _spec_data(name).items() if k != "partition_by"}, "reference")
            mp.setenv(f"AIRFLOW_CONN_WH_{name.upper()}", airflow_uri(databases[f"{name}_ref"]))
            run_window(spec, WINDOW)
            out[name] = fingerprint(databases[f"{name}_ref"], spec)
    return out


def _check_exact(celery, databases, expected, name: str, run_id: str, tis: list[dict]) -> list[dict]:
    """The target equals one clean unpartitioned run; the watermark moved once, after every slice was in."""
    slices = len(split_window(WINDOW, "day"))
    mapped = [t for t in tis if t["task_id"] == "sync_slice"]
    assert sorted(t["map_index"] for t in mapped) == list(range(slices))
    assert all(t["state"] == "success" and t["pool"] == f"driftless_wh_{name}" for t in mapped)
    finish = next(t for t in tis if t["task_id"] == "finish")
    assert finish["state"] == "success" and finish["start_date"] >= max(t["end_date"] for t in mapped)
    spec = load_spec(celery["specs"] / f"slices_{name}.yaml")
    got = fingerprint(databases[name], spec)
    reference = expected[KILLED.get(name, name)]
    assert got["rows"] > 0 and (got["rows"], got["sha256"]) == (reference["rows"], reference["sha256"])
    assert got["watermark"] == WINDOW.end
    engine = create_engine(databases[name])
    try:
        records = read_runs(engine, spec.name)
    finally:
        engine.dispose()
    # One success per slice, none moving the watermark, then finish's, which moved it, after them all. A killed
    # attempt's transaction died with it; it may still have recorded itself as failed (etl_runs is the whole
    # history), never as a success.
    moved = [r for r in records if r["watermark"] is not None]
    succeeded = [r for r in records if r["status"] == "success"]
    assert len(succeeded) == slices + 1 and len(moved) == 1, [
        (r["run_id"], r["status"], r["watermark"], r["message"], r["started_at"]) for r in records] + [
        (t["task_id"], t["map_index"], t["hostname"], t["try_number"], t["start_date"]) for t in tis]
    assert len({r["run_id"] for r in succeeded}) == slices + 1  # each slice's run id succeeded exactly once
    assert all(r["status"] == "failed" and r["watermark"] is None for r in records if r["status"] != "success")
    assert moved[0]["run_id"] == run_id
    assert moved[0]["started_at"] >= max(r["finished_at"] for r in succeeded if r["watermark"] is None)
    return mapped


@pytest.mark.timeout(600)
def test_partition_slices_run_on_both_workers_and_load_exactly_once(celery, databases, expected):
    stack: LocalAirflow = celery["stack"]
    t0 = time.monotonic()
    runs = {name: _trigger(stack, f"slices_{name}", WINDOW) for name in TARGETS}
    for name, run_id in runs.items():
        assert _wait(stack, f"slices_{name}", run_id, timeout=420)["state"] == "success", stack.logs
    elapsed = time.monotonic() - t0
    hosts_seen: dict[str, list[str]] = {}
    for name, run_id in runs.items():
        tis = _task_instances(celery["metadata"], f"slices_{name}", run_id)
        # Every task ran on one of the two Celery workers, once (a clean run: nothing failed and retried).
        assert {t["hostname"] for t in tis} <= set(stack.workers), tis
        assert [t["try_number"] for t in tis] == [1] * len(tis)
        mapped = _check_exact(celery, databases, expected, name, run_id, tis)
        hosts_seen[name] = [t["hostname"] for t in mapped]
    # The slices spread over both workers. Which worker takes which slice is Celery's choice: each worker reserves
    # at most `concurrency` (2) tasks at a time, so the 12 slices queued at once cannot all go to one worker, but
    # one run's 6 can (seen once under a loaded machine), so the spread is asserted over both runs' slices.
    assert {h for hosts in hosts_seen.values() for h in hosts} == set(stack.workers), hosts_seen
    print(f"\ncelery: {len(runs)} partitioned runs of {len(split_window(WINDOW, 'day'))} slices in {elapsed:.1f}s; "
          f"slice hosts {hosts_seen}")


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals ``[start, end)`` that were open at one instant (one ending as another starts: not both)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in events:  # at one timestamp ends (-1) sort before starts (+1)
        now += step
        most = max(most, now)
    return most


@pytest.mark.timeout(600)
def test_more_pipelines_at_once_than_pool_slots_never_load_more_than_the_pool_allows(celery, databases, expected):
    stack: LocalAirflow = celery["stack"]
    pool = "driftless_wh_pgpool"
    token = stack.token()
    # The pool exists (created at setup with the default slots); this test narrows it to 2.
    stack.api("PATCH", f"/pools/{pool}", token, params={"update_mask": "slots"},
              json={"pool": pool, "slots": POOL_SLOTS, "include_deferred": False})
    assert stack.api("GET", f"/pools/{pool}", token)["slots"] == POOL_SLOTS
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(POOLED)) as ex:  # all triggered at once
        runs = dict(zip(POOLED, ex.map(lambda name: _trigger(stack, name, WINDOW), POOLED), strict=True))
    states = {name: _wait(stack, name, run_id, timeout=420)["state"] for name, run_id in runs.items()}
    elapsed = time.monotonic() - t0
    assert states == dict.fromkeys(POOLED, "success"), (states, stack.logs)
    loads: list[tuple[datetime, datetime]] = []
    waits: list[tuple[datetime, datetime]] = []  # from ready to run (its extract done) to finished
    hosts: set[str] = set()
    for name, run_id in runs.items():
        tis = {t["task_id"]: t for t in _task_instances(celery["metadata"], name, run_id)}
        assert {k: t["state"] for k, t in tis.items()} == dict.fromkeys(("extract", "load", "reconcile"), "success")
        load = tis["load"]  # the one task of an unpartitioned pipeline that writes into the target
        assert load["pool"] == pool
        loads.append((load["start_date"], load["end_date"]))
        assert load["scheduled_dttm"] <= load["start_date"], load
        waits.append((load["scheduled_dttm"], load["end_date"]))
        hosts.add(load["hostname"])
        # Every target table holds the window's rows: equal to one clean run into a fresh database.
        got = fingerprint(databases["pgpool"], load_spec(celery["specs"] / f"{name}.yaml"))
        assert (got["rows"], got["sha256"], got["watermark"]) == (
            expected["pg"]["rows"], expected["pg"]["sha256"], WINDOW.end), name
    most, wanted = _max_overlap(loads), _max_overlap(waits)
    # Never more loads at once than the pool's slots, and the pool was the limit: the loads did contend (at one
    # time more loads were ready to run, or running, than the pool has slots) and filled every slot.
    assert wanted > POOL_SLOTS, sorted(waits)
    assert most == POOL_SLOTS, sorted(loads)
    print(f"\ncelery pool: {len(runs)} pipelines into one target, pool {POOL_SLOTS} slots: all succeeded in "
          f"{elapsed:.1f}s; at most {most} loads at once, {wanted} ready at once; loads on {sorted(hosts)}")


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_load_its_slices_retry_on_the_other_and_end_exact(celery, databases, expected,
                                                                               tmp_path):
    stack: LocalAirflow = celery["stack"]
    doomed, survivor = stack.workers
    marker = tmp_path / "frozen"
    # The doomed worker freezes every slice it runs in the middle of its load (rows staged, not committed).
    stack.kill_worker(doomed, graceful=True)
    stack.start_worker(doomed, {"DRIFTLESS_FAILPOINT": "mid_load", "DRIFTLESS_FAILPOINT_MARKER": str(marker)})
    stack.wait_workers()
    t0 = time.monotonic()
    runs = {name: _trigger(stack, f"slices_{name}", WINDOW) for name in KILLED}
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert time.monotonic() < deadline, f"no slice reached the fail point on {doomed}; logs in {stack.logs}"
        stack.check_alive()
        time.sleep(0.5)
    frozen = int(marker.read_text())
    killed = stack.kill_worker(doomed)  # SIGKILL: the worker and its task processes, mid-load
    assert frozen in killed
    killed_at = time.monotonic() - t0
    for name, run_id in runs.items():
        assert _wait(stack, f"slices_{name}", run_id, timeout=420)["state"] == "success", stack.logs
    elapsed = time.monotonic() - t0
    retried: dict[str, list[int]] = {}
    for name, run_id in runs.items():
        tis = _task_instances(celery["metadata"], f"slices_{name}", run_id)
        mapped = _check_exact(celery, databases, expected, name, run_id, tis)
        retried[name] = [t["map_index"] for t in mapped if t["try_number"] > 1]
        # A retried slice ran its last try on the surviving worker.
        assert all(t["hostname"] == survivor for t in mapped if t["try_number"] > 1), mapped
    assert sum(len(v) for v in retried.values()) >= 1, retried  # at least the frozen slice was killed and retried
    print(f"\ncelery kill: {doomed} killed {killed_at:.1f}s after the trigger; both runs done in {elapsed:.1f}s; "
          f"slices retried on {survivor}: {retried}")
