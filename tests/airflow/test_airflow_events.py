"""Event-driven runs on a real Airflow: a message on a Redis pub/sub channel, or a new file, starts a pipeline.

The stack is the one ``make airflow`` starts (api-server, scheduler, dag-processor, triggerer; LocalExecutor;
PostgreSQL metadata). Two pipelines, each scheduled only by its trigger: ``orders_events`` drains a Redis
Stream and has ``trigger: {on: redis}``; the test writes entries, publishes a notification on the channel,
and the run that follows (by itself) loads them. ``files_events`` reads CSV drops and has
``trigger: {on: file}``: a dropped file runs it. A second round shows the watchers listen again after they
fired (and the file watcher does not fire again for the first file).
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

from tests.airflow.test_airflow_live import metadata_db  # noqa: F401 - the fixture
from tests.conftest import unavailable
from tests.helpers import LIVE_STACK
from tools.airflow_local import LocalAirflow, airflow_env, free_port, setup

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.integration, LIVE_STACK]

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
    # Not tests.helpers.running_airflow, which has the DAG folder parsed only once: tried, the triggerer then ran
    # 0 watchers for 3 minutes (the asset watchers appear to be registered by a parse after the unpause).
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
        # The consistency report (unpaused at creation) would run after every load here: CPU this test needs.
        while True:
            try:
                stack.api("PATCH", "/dags/consistency_report", stack.token(), json={"is_paused": True})
                break
            except RuntimeError:  # not registered yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        yield {"stack": stack, "warehouse": warehouse, "drops": drops, "files_warehouse": files_warehouse}
    finally:
        stack.stop(timeout=5)  # nothing to finish cleanly (the triggerer would wait 10 s for its watchers)


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


def _drop(drops, name: str, rows: str) -> None:
    """Write a CSV drop as a producer would: under a temporary name, then renamed into the glob."""
    part = drops / f".{name}.part"
    part.write_text("id,amount\n" + rows)
    part.rename(drops / name)


def _windows(warehouse) -> list[tuple]:
    engine = create_engine(f"sqlite:///{warehouse}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT window_start, window_end FROM etl_runs WHERE status = 'success' ORDER BY window_end"))]
    finally:
        engine.dispose()


@pytest.mark.timeout(900)
def test_a_message_or_a_new_file_runs_its_pipeline_and_the_data_lands(events_stack, redis_names):
    """Both pipelines at once (they run side by side, which keeps the test short), in two rounds."""
    stack, client, drops = events_stack["stack"], redis_names["client"], events_stack["drops"]
    stream, channel = redis_names["stream"], redis_names["channel"]
    token = stack.token()
    for dag_id in (DAG_ID, FILES_DAG_ID):  # nothing ran on its own: no message, no file
        assert stack.api("GET", f"/dags/{dag_id}/dagRuns", token)["total_entries"] == 0

    _write(client, stream, [(1, "10.50", "2025-01-01T10:00:00Z"), (2, "20.00", "2025-01-01T11:00:00Z"),
                            (3, "30.25", "2025-01-01T12:00:00Z")])
    _drop(drops, "orders_1.csv", "1,1.50\n2,2.50\n")
    _notify_until_heard(stack, client, channel)
    for dag_id in (DAG_ID, FILES_DAG_ID):
        (run,) = _wait_success(stack, 1, dag_id=dag_id)
        assert run["run_type"] == "asset_triggered"
    assert _rows(events_stack["warehouse"]) == {1: Decimal("10.50"), 2: Decimal("20.00"), 3: Decimal("30.25")}
    assert _rows(events_stack["files_warehouse"], "file_orders") == {1: Decimal("1.50"), 2: Decimal("2.50")}

    # The watchers listen again after they fired: new data and a notification make second runs.
    _write(client, stream, [(1, "11.00", "2025-01-02T09:00:00Z"), (4, "40.00", "2025-01-02T09:30:00Z")])
    _drop(drops, "orders_2.csv", "2,2.75\n3,3.50\n")
    _notify_until_heard(stack, client, channel)
    runs = {dag_id: _wait_success(stack, 2, dag_id=dag_id) for dag_id in (DAG_ID, FILES_DAG_ID)}
    for dag_id, its_runs in runs.items():
        assert [r["run_type"] for r in its_runs] == ["asset_triggered", "asset_triggered"], dag_id
    assert _rows(events_stack["warehouse"]) == {1: Decimal("11.00"), 2: Decimal("20.00"), 3: Decimal("30.25"),
                                                4: Decimal("40.00")}
    assert client.xinfo_groups(stream)[0]["pending"] == 0  # every entry acknowledged after its load
    assert _rows(events_stack["files_warehouse"], "file_orders") == {1: Decimal("1.50"), 2: Decimal("2.75"),
                                                                     3: Decimal("3.50")}
    assert sorted(p.name for p in drops.iterdir()) == ["orders_1.csv", "orders_2.csv"]  # nothing deleted
    last = runs[DAG_ID][1]["dag_run_id"]
    tis = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{last}/taskInstances", token)["task_instances"]
    assert [t["task_id"] for t in tis] == ["sync"]

    # The window of each run: from the watermark (the previous run's end) to the run's run_after.
    for warehouse in (events_stack["warehouse"], events_stack["files_warehouse"]):
        windows = _windows(warehouse)
        assert len(windows) == 2 and str(windows[1][0])[:19] == str(windows[0][1])[:19], windows
