"""Event-driven runs on a real Airflow: a message on a Redis pub/sub channel, or a new file, starts a pipeline.

The stack is the one ``make airflow`` starts (api-server, scheduler, dag-processor, triggerer; LocalExecutor;
PostgreSQL metadata). Two pipelines, each scheduled only by its trigger: ``orders_events`` drains a Redis
Stream and has ``trigger: {on: redis}``; the test writes entries, publishes a notification on the channel,
and the run that follows (by itself) loads them; a second round shows the watcher listens again after it
fired. ``files_events`` reads CSV drops and has ``trigger: {on: file}``: a dropped file runs it, twice.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import yaml
from sqlalchemy import create_engine, text

from etl.airflow_local import LocalAirflow, airflow_env, free_port, setup
from tests.conftest import unavailable
from tests.test_airflow_live import metadata_db  # noqa: F401 - the fixture

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.integration]

REDIS = os.environ.get("DRIFTLESS_TEST_REDIS", "redis://127.0.0.1:6379/0")
DAG_ID = "orders_events"
FILES_DAG_ID = "files_events"


@pytest.fixture(scope="module")
def redis_names():
    """A stream and a channel of this test's own; the stream is deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS}", exc)
    suffix = uuid.uuid4().hex[:10]
    names = {"stream": f"driftless_events_{suffix}", "channel": f"driftless_events_{suffix}.arrived",
             "client": client}
    yield names
    client.delete(names["stream"])
    client.close()


@pytest.fixture(scope="module")
def events_stack(tmp_path_factory, metadata_db, redis_names):  # noqa: F811 - the fixture
    root = tmp_path_factory.mktemp("events")
    specs = root / "pipelines"
    specs.mkdir()
    spec = {
        "name": DAG_ID,
        "start_date": datetime.now(UTC).date().isoformat(),
        "source": {"type": "queue", "broker": "redis_stream", "connection": "rs", "stream": redis_names["stream"],
                   "primary_key": ["id"], "cursor": "at", "idle_seconds": 0.3, "max_seconds": 30},
        "target": {"connection": "wh", "table": "orders"},
        "columns": [{"name": "id", "type": "integer", "nullable": False}, {"name": "amount", "type": "numeric(10,2)"},
                    {"name": "at", "type": "timestamptz"}],
        # No schedule: only messages on the channel start runs.
        "trigger": {"on": "redis", "connection": "events", "channels": [redis_names["channel"]], "poll_interval": 1},
    }
    (specs / f"{DAG_ID}.yaml").write_text(yaml.safe_dump(spec))
    drops = root / "drops"
    drops.mkdir()
    files = {
        "name": FILES_DAG_ID,
        "start_date": datetime.now(UTC).date().isoformat(),
        "source": {"type": "file", "location": str(drops), "glob": "*.csv", "format": "csv", "primary_key": ["id"],
                   "cursor": "_file_time"},
        "target": {"connection": "wh_files", "table": "file_orders"},
        "columns": [{"name": "id", "type": "integer", "nullable": False}, {"name": "amount", "type": "numeric(10,2)"},
                    {"name": "_file_time", "type": "timestamptz"}],
        "trigger": {"on": "file", "poll_interval": 1},
    }
    (specs / f"{FILES_DAG_ID}.yaml").write_text(yaml.safe_dump(files))
    warehouse, files_warehouse = root / "warehouse.db", root / "files_warehouse.db"
    port = free_port()
    base = dict(os.environ)
    base.update({"DRIFTLESS_SPECS_DIR": str(specs), "AIRFLOW_CONN_RS": REDIS, "AIRFLOW_CONN_EVENTS": REDIS,
                 "AIRFLOW_CONN_WH": f"sqlite:///{warehouse}", "AIRFLOW_CONN_WH_FILES": f"sqlite:///{files_warehouse}",
                 "DRIFTLESS_TASK_RETRIES": "0",
                 # The triggerer looks for new triggers every few seconds (default 5).
                 "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2"})
    env = airflow_env(root / "airflow", port, base=base, metadata_db=metadata_db)
    setup(env, specs)
    stack = LocalAirflow(env, port)
    stack.start()
    try:
        stack.wait_ready(timeout=240)
        deadline = time.monotonic() + 180
        while stack.unpause({DAG_ID, FILES_DAG_ID}):  # waits for the dag-processor to register the DAGs
            if time.monotonic() > deadline:
                pytest.fail(f"the dag-processor did not register the DAGs within 180 s; logs in {stack.logs}")
            stack.check_alive()
            time.sleep(2)
        yield {"stack": stack, "warehouse": warehouse, "drops": drops, "files_warehouse": files_warehouse}
    finally:
        stack.stop()


def _notify_until_heard(stack: LocalAirflow, client, channel: str, timeout: float = 180) -> None:
    """PUBLISH a notification until a subscriber (the triggerer's watcher) received it."""
    deadline = time.monotonic() + timeout
    while client.publish(channel, json.dumps({"event": "orders written"})) < 1:
        if time.monotonic() > deadline:
            pytest.fail(f"nobody subscribed to {channel!r} within {timeout:.0f} s (is the triggerer running? "
                        f"logs in {stack.logs})")
        stack.check_alive()
        time.sleep(1)


def _wait_success(stack: LocalAirflow, count: int, timeout: float = 240, dag_id: str = DAG_ID) -> list[dict]:
    """Wait until the DAG has ``count`` finished runs; all must have succeeded."""
    deadline = time.monotonic() + timeout
    token = stack.token()
    while True:
        runs = stack.api("GET", f"/dags/{dag_id}/dagRuns?order_by=run_after&limit=100", token)["dag_runs"]
        finished = [r for r in runs if r["state"] in ("success", "failed")]
        if len(finished) >= count and len(finished) == len(runs):
            assert all(r["state"] == "success" for r in runs), [(r["dag_run_id"], r["state"]) for r in runs]
            return runs
        if time.monotonic() > deadline:
            pytest.fail(f"{count} run(s) of {dag_id} not finished within {timeout:.0f} s: "
                        f"{[(r['dag_run_id'], r['state']) for r in runs]}; logs in {stack.logs}")
        stack.check_alive()
        time.sleep(2)


def _rows(warehouse, table: str = "orders") -> dict[int, Decimal]:
    engine = create_engine(f"sqlite:///{warehouse}")
    try:
        with engine.connect() as conn:
            return {r.id: Decimal(str(r.amount)) for r in conn.execute(text(f"SELECT id, amount FROM {table}"))}
    finally:
        engine.dispose()


def _write(client, stream: str, rows: list[tuple[int, str, str]]) -> None:
    for i, amount, at in rows:
        client.xadd(stream, {"body": json.dumps({"id": i, "amount": amount, "at": at})})


@pytest.mark.timeout(900)
def test_a_message_on_the_watched_channel_runs_the_pipeline_and_the_data_lands(events_stack, redis_names):
    stack, client = events_stack["stack"], redis_names["client"]
    stream, channel = redis_names["stream"], redis_names["channel"]
    token = stack.token()
    assert stack.api("GET", f"/dags/{DAG_ID}/dagRuns", token)["total_entries"] == 0  # nothing ran on its own

    _write(client, stream, [(1, "10.50", "2025-01-01T10:00:00Z"), (2, "20.00", "2025-01-01T11:00:00Z"),
                            (3, "30.25", "2025-01-01T12:00:00Z")])
    _notify_until_heard(stack, client, channel)
    (run,) = _wait_success(stack, 1)
    assert run["run_type"] == "asset_triggered"
    assert _rows(events_stack["warehouse"]) == {1: Decimal("10.50"), 2: Decimal("20.00"), 3: Decimal("30.25")}

    # The watcher listens again after it fired: a second write and notification make a second run.
    _write(client, stream, [(1, "11.00", "2025-01-02T09:00:00Z"), (4, "40.00", "2025-01-02T09:30:00Z")])
    _notify_until_heard(stack, client, channel)
    runs = _wait_success(stack, 2)
    assert [r["run_type"] for r in runs] == ["asset_triggered", "asset_triggered"]
    assert _rows(events_stack["warehouse"]) == {1: Decimal("11.00"), 2: Decimal("20.00"), 3: Decimal("30.25"),
                                                4: Decimal("40.00")}
    assert client.xinfo_groups(stream)[0]["pending"] == 0  # every entry acknowledged after its load

    # The window of each run: from the watermark (the previous run's end) to the run's run_after.
    tis = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{runs[1]['dag_run_id']}/taskInstances", token)["task_instances"]
    assert [t["task_id"] for t in tis] == ["sync"]
    engine = create_engine(f"sqlite:///{events_stack['warehouse']}")
    try:
        with engine.connect() as conn:
            windows = [tuple(r) for r in conn.execute(text(
                "SELECT window_start, window_end FROM etl_runs WHERE status = 'success' ORDER BY window_end"))]
    finally:
        engine.dispose()
    assert len(windows) == 2 and str(windows[1][0])[:19] == str(windows[0][1])[:19], windows


def _drop(drops, name: str, rows: str) -> None:
    """Write a CSV drop as a producer would: under a temporary name, then renamed into the glob."""
    part = drops / f".{name}.part"
    part.write_text("id,amount\n" + rows)
    part.rename(drops / name)


@pytest.mark.timeout(600)
def test_a_new_file_in_the_watched_location_runs_the_pipeline_and_the_data_lands(events_stack):
    stack, drops = events_stack["stack"], events_stack["drops"]
    token = stack.token()
    assert stack.api("GET", f"/dags/{FILES_DAG_ID}/dagRuns", token)["total_entries"] == 0  # no file, no run

    _drop(drops, "orders_1.csv", "1,1.50\n2,2.50\n")
    (run,) = _wait_success(stack, 1, dag_id=FILES_DAG_ID)
    assert run["run_type"] == "asset_triggered"
    assert _rows(events_stack["files_warehouse"], "file_orders") == {1: Decimal("1.50"), 2: Decimal("2.50")}

    _drop(drops, "orders_2.csv", "2,2.75\n3,3.50\n")
    runs = _wait_success(stack, 2, dag_id=FILES_DAG_ID)
    assert [r["run_type"] for r in runs] == ["asset_triggered", "asset_triggered"]
    assert _rows(events_stack["files_warehouse"], "file_orders") == {1: Decimal("1.50"), 2: Decimal("2.75"),
                                                                     3: Decimal("3.50")}
    assert sorted(p.name for p in drops.iterdir()) == ["orders_1.csv", "orders_2.csv"]  # nothing deleted
