"""Queue sources (``source.type: queue``) on real RabbitMQ and Redis: drain, acknowledge after the commit,
quarantine and dead letters, ordering against the target, redelivery absorbed by ``etl_messages``, crashes."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from driftless.errors import SpecError
from driftless.pipeline import extract_window, load_window, run_window
from driftless.reconcile.checks import ChecksFailed
from driftless.sources.queues.source import QueueSource
from driftless.spec import parse_spec
from driftless.status import Check
from driftless.window import Window
from tests.conftest import airflow_uri, unavailable

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS = "redis://127.0.0.1:6379/0"
WINDOW = Window.parse("2025-01-01", "2025-01-02")

BASE: dict[str, Any] = {
    "name": "orders_queue",
    "chunk_size": 10,
    "max_reject_ratio": 1,
    "source": {"type": "queue", "broker": "rabbitmq", "connection": "mq", "primary_key": ["id"], "cursor": "at",
               "idle_seconds": 0.3, "max_seconds": 30},
    "target": {"connection": "wh", "table": "orders"},
    "columns": [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "amount", "type": "numeric(10,2)"},
        {"name": "at", "type": "timestamptz"},
        {"name": "_message_id", "type": "text"},
    ],
}


class Rabbit:
    broker = "rabbitmq"

    def __init__(self) -> None:
        import pika

        self.pika = pika
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP))
        self.channel = self.conn.channel()
        self.names: list[str] = []

    def create(self) -> str:
        name = f"driftless_t_{uuid.uuid4().hex[:10]}"
        self.channel.queue_declare(name)
        self.names.append(name)
        return name

    def publish(self, name: str, body: bytes | str, message_id: str | None) -> None:
        self.channel.basic_publish("", name, body, self.pika.BasicProperties(message_id=message_id))

    def left(self, name: str) -> int:
        """Messages ready in the queue (not those a consumer holds unacknowledged)."""
        return self.channel.queue_declare(name, passive=True).method.message_count

    def take_all(self, name: str) -> list[tuple[Any, bytes]]:
        out = []
        while True:
            method, props, body = self.channel.basic_get(name, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))

    def source(self, name: str) -> dict[str, Any]:
        return {"broker": "rabbitmq", "queue": name}

    def close(self) -> None:
        for name in self.names:
            self.channel.queue_delete(name)
        self.conn.close()


class Redis:
    broker = "redis_stream"

    def __init__(self) -> None:
        import redis

        self.client = redis.Redis.from_url(REDIS)
        self.client.ping()
        self.names: list[str] = []

    def create(self) -> str:
        name = f"driftless_t_{uuid.uuid4().hex[:10]}"
        self.client.xadd(name, {"init": "1"})  # the stream must exist; this entry has no body field
        self.client.xtrim(name, maxlen=0)
        self.names.append(name)
        return name

    def publish(self, name: str, body: bytes | str, message_id: str | None) -> None:
        self.client.xadd(name, {"body": body})

    def left(self, name: str) -> int:
        """Entries the group has not acknowledged (pending) plus those not yet delivered."""
        groups = self.client.xinfo_groups(name)
        return sum(int(g["pending"]) + int(g.get("lag") or 0) for g in groups)

    def take_all(self, name: str) -> list[tuple[Any, bytes]]:
        return [(fields, fields.get(b"body")) for _, fields in self.client.xrange(name)]

    def source(self, name: str) -> dict[str, Any]:
        return {"broker": "redis_stream", "stream": name}

    def close(self) -> None:
        for name in self.names:
            self.client.delete(name)
        self.client.close()


@pytest.fixture(params=["rabbitmq", "redis_stream"])
def broker(request):
    try:
        b = Rabbit() if request.param == "rabbitmq" else Redis()
    except Exception as exc:  # broker not running
        unavailable(request.param, exc)
    yield b
    b.close()


@pytest.fixture
def env(connections, sqlite_url):
    connections(mq=AMQP, rs=REDIS, wh=airflow_uri(sqlite_url))
    return sqlite_url


def make_spec(b, name: str, **source: Any) -> Any:
    data = copy.deepcopy(BASE)
    data["source"].update(b.source(name), connection="mq" if b.broker == "rabbitmq" else "rs", **source)
    return parse_spec(data, "test.yaml")


def order(i: int, amount: Any = None, day: int = 1) -> str:
    return json.dumps({"id": i, "amount": amount if amount is not None else f"{i}.25",
                       "at": f"2025-01-{day:02d}T00:00:00Z"})


def rows(url, sql: str = "SELECT id, amount, at FROM orders ORDER BY id") -> list[tuple]:
    with create_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_spec_errors_name_the_field():
    data = copy.deepcopy(BASE)
    with pytest.raises(SpecError, match=r"test.yaml: source: .*broker rabbitmq reads a 'queue'"):
        parse_spec(data, "test.yaml")
    data["source"].update(broker="redis_stream", queue="q")
    with pytest.raises(SpecError, match=r"broker redis_stream reads a 'stream'"):
        parse_spec(data, "test.yaml")
    data["source"].update(broker="kafka", stream="s", queue=None)
    with pytest.raises(SpecError, match=r"source.broker: .*'rabbitmq' or 'redis_stream'"):
        parse_spec(data, "test.yaml")
    data["source"].update(broker="rabbitmq", queue="q", stream=None, max_messages=0)
    with pytest.raises(SpecError, match=r"source.max_messages: "):
        parse_spec(data, "test.yaml")
    data["source"].pop("max_messages")
    with pytest.raises(SpecError, match=r"reconcile.sum_columns: a queue source"):
        parse_spec({**data, "reconcile": {"sum_columns": ["amount"]}}, "test.yaml")
    with pytest.raises(SpecError, match=r"partition_by: a queue source"):
        parse_spec({**data, "partition_by": "day"}, "test.yaml")
    assert parse_spec(data, "test.yaml").source.queue == "q"


def test_drain_loads_latest_per_key_and_acknowledges(broker, env):
    name = broker.create()
    for i in range(25):
        broker.publish(name, order(i), f"m{i}")
    broker.publish(name, order(3, "99.00", day=2), "m3-new")  # a later version of key 3
    broker.publish(name, order(4, "0.00", day=1), "m4-same-time")  # same cursor: queue order wins
    spec = make_spec(broker, name)
    result = run_window(spec, WINDOW)
    assert (result.status, result.extracted, result.loaded, result.deduplicated) == ("success", 27, 25, 2)
    got = {r[0]: r[1] for r in rows(env)}
    assert len(got) == 25 and str(got[3]) in ("99", "99.00", "99.0") and float(got[4]) == 0.0
    assert float(got[7]) == 7.25
    assert broker.left(name) == 0, "every message taken is acknowledged after the commit"
    assert rows(env, "SELECT count(*) FROM etl_messages")[0][0] == 27
    check = next(c for c in result.checks if c["check"] == "queue_messages")
    assert check["status"] == Check.PASS and check["source"] == 27
    assert result.metrics["acknowledged"] == 27

    again = run_window(spec, WINDOW)  # the queue is empty now
    assert (again.status, again.extracted, again.loaded) == ("success", 0, 0)


def test_max_messages_leaves_the_rest_in_the_queue(broker, env):
    name = broker.create()
    for i in range(30):
        broker.publish(name, order(i), f"m{i}")
    spec = make_spec(broker, name, max_messages=12)
    assert run_window(spec, WINDOW).loaded == 12
    assert broker.left(name) == 18
    assert run_window(spec, WINDOW).loaded == 12
    assert run_window(spec, WINDOW).loaded == 6
    assert [r[0] for r in rows(env)] == list(range(30))


def test_bad_messages_quarantined_with_id_dead_lettered_and_acknowledged(broker, env):
    name, dead = broker.create(), broker.create()
    broker.publish(name, order(1), "ok-1")
    broker.publish(name, b"{not json", "broken")
    broker.publish(name, order(2, amount="twelve"), "bad-amount")
    broker.publish(name, json.dumps({"id": 3, "amount": "1.00", "at": None}), "no-cursor")
    spec = make_spec(broker, name, dead_letter=dead)
    result = run_window(spec, WINDOW)
    assert (result.status, result.loaded, result.quarantined) == ("success", 1, 3)
    assert broker.left(name) == 0, "quarantined messages are acknowledged too: they cannot block the queue"
    entries = rows(env, "SELECT record, errors FROM etl_quarantine")
    by_reason = {json.loads(e)[0]["message"].split(" (")[0]: json.loads(r) for r, e in entries}
    ids = {r["_message_id"] for r in by_reason.values()}
    if broker.broker == "rabbitmq":
        assert ids == {"broken", "bad-amount", "no-cursor"}
    assert len(ids) == 3 and all(ids)
    broken = by_reason["the message is not JSON"]
    assert broken["_body"] == "{not json"
    assert any("'at' is empty" in k for k in by_reason)
    letters = broker.take_all(dead)
    assert len(letters) == 3
    bodies = {body for _, body in letters}
    assert b"{not json" in bodies
    if broker.broker == "rabbitmq":
        reasons = {props.message_id: props.headers["x-driftless-reason"] for props, _ in letters}
        assert "amount" in reasons["bad-amount"] and "not JSON" in reasons["broken"]
    else:
        assert {f[b"message_id"].decode() for f, _ in letters} == ids
        assert any(b"not JSON" in f[b"reason"] for f, _ in letters)


def test_rabbitmq_message_without_id_is_quarantined(env):
    try:
        b = Rabbit()
    except Exception as exc:
        unavailable("rabbitmq", exc)
    try:
        name = b.create()
        b.publish(name, order(1), None)
        b.publish(name, json.dumps({"event_id": "e2", "id": 2, "amount": "1", "at": "2025-01-01"}), None)
        with pytest.raises(ChecksFailed) as failed:  # all rejected, nothing loaded: never a success
            run_window(make_spec(b, name), WINDOW)
        result = failed.value.result
        assert (result.loaded, result.quarantined, result.status) == (0, 2, "checks_failed")
        assert b.left(name) == 0, "quarantined messages are acknowledged: they cannot block the queue"
        (record, errors), _ = rows(env, "SELECT record, errors FROM etl_quarantine")
        assert "message has no id" in errors
        b.publish(name, json.dumps({"event_id": "e3", "id": 3, "amount": "1", "at": "2025-01-01"}), None)
        by_field = run_window(make_spec(b, name, message_id="event_id"), WINDOW)
        assert by_field.loaded == 1 and rows(env, "SELECT _message_id FROM orders") == [("e3",)]
    finally:
        b.close()


def test_an_older_message_never_rolls_a_row_back(broker, env):
    name = broker.create()
    broker.publish(name, order(1, "20.00", day=5), "new")
    spec = make_spec(broker, name)
    run_window(spec, WINDOW)
    broker.publish(name, order(1, "10.00", day=3), "old")  # published late, older by the cursor
    broker.publish(name, order(2, "5.00", day=1), "other")
    result = run_window(spec, WINDOW)
    assert rows(env) and float(rows(env)[0][1]) == 20.0
    assert result.metrics["records_superseded"] == 1 and result.loaded == 1
    assert next(c for c in result.checks if c["check"] == "queue_messages")["status"] == Check.PASS
    assert broker.left(name) == 0


def test_redelivery_after_commit_is_absorbed(broker, env):
    """The load committed, the acknowledgement never happened: the next run absorbs every redelivered message."""
    name = broker.create()
    for i in range(15):
        broker.publish(name, order(i), f"m{i}")
    spec = make_spec(broker, name)
    source = QueueSource(spec)
    manifest = extract_window(spec, WINDOW, "run-1", source=source)
    load_window(spec, WINDOW, manifest, "run-1", source=source)
    source.close()  # no acknowledge: as if the process died here
    assert len(rows(env)) == 15
    broker.publish(name, order(100), "m100")
    result = run_window(spec, WINDOW)
    assert result.metrics["messages_absorbed"] == 15 and result.loaded == 1
    assert result.metrics["messages_redelivered"] == 15
    assert len(rows(env)) == 16 and broker.left(name) == 0
    assert next(c for c in result.checks if c["check"] == "queue_messages")["status"] == Check.PASS


def test_load_without_its_consumer_is_refused(broker, env):
    name = broker.create()
    broker.publish(name, order(1), "m1")
    spec = make_spec(broker, name)
    source = QueueSource(spec)
    manifest = extract_window(spec, WINDOW, "run-1", source=source)
    source.close()
    from driftless.errors import LoadError

    with pytest.raises(LoadError, match="loads in the process that consumed"):
        load_window(spec, WINDOW, manifest, "run-1")


def test_queue_check_fails_when_messages_are_not_accounted_for(broker, env):
    name = broker.create()
    spec = make_spec(broker, name)
    from driftless.pipeline import WindowResult

    result = WindowResult(spec.name, WINDOW, "nobody", loaded=3, metrics={
        "messages_taken": 4, "messages_absorbed": 0, "records_read": 4, "records_superseded": 0})
    (check,) = QueueSource(spec).window_checks(result)
    assert check["status"] == Check.FAIL and "recorded in etl_messages" in check["message"]


def test_quarantined_message_replays_after_the_spec_is_fixed(broker, env):
    from driftless.quarantine.replay import replay

    name = broker.create()
    broker.publish(name, order(1, amount="12,50"), "comma")
    broker.publish(name, order(2), "fine")
    spec = make_spec(broker, name)
    assert run_window(spec, WINDOW).quarantined == 1
    data = copy.deepcopy(BASE)
    data["source"].update(broker.source(name), connection="mq" if broker.broker == "rabbitmq" else "rs")
    data["columns"][1]["decimal_separator"] = ","
    fixed = parse_spec(data, "test.yaml")
    assert replay(fixed).loaded == 1
    replayed = rows(env, "SELECT id, amount, _message_id FROM orders ORDER BY id")[0]
    assert float(replayed[1]) == 12.5 and replayed[2] and len(rows(env)) == 2
    if broker.broker == "rabbitmq":
        assert replayed[2] == "comma"


# ---- crashes: SIGKILL at each step boundary, then a re-run: every message loaded exactly once ------------------


def _etl(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "driftless.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before_load", "mid_load", "before_ack"])
def test_sigkill_at_each_step_then_rerun_loads_every_message_once(broker, pg_url, tmp_path: Path, point):
    name = broker.create()
    n = 40
    for i in range(n):
        broker.publish(name, order(i), f"m{i}")
    data = copy.deepcopy(BASE)
    data["source"].update(broker.source(name), connection="mq")
    spec_path = tmp_path / "orders_queue.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    env = dict(os.environ, AIRFLOW_CONN_MQ=AMQP if broker.broker == "rabbitmq" else REDIS,
               AIRFLOW_CONN_WH=airflow_uri(pg_url), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    marker = tmp_path / "marker"
    window = ["--start", "2025-01-01", "--end", "2025-01-02"]
    crashing = _etl(["run", str(spec_path), *window],
                    dict(env, DRIFTLESS_FAILPOINT=point, DRIFTLESS_FAILPOINT_MARKER=str(marker)))
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert crashing.poll() is None, crashing.stderr.read()
        assert time.monotonic() < deadline, "the run never reached the fail point"
        time.sleep(0.05)
    crashing.send_signal(signal.SIGKILL)
    crashing.wait(30)
    committed = point == "before_ack"
    with create_engine(pg_url).connect() as conn:
        has = conn.execute(text("SELECT to_regclass('orders') IS NOT NULL")).scalar()
        before = conn.execute(text("SELECT count(*) FROM orders")).scalar() if has else 0
    assert before == (n if committed else 0)

    for _ in range(20):  # the broker notices the dead connection (RabbitMQ) and requeues; Redis keeps them pending
        if broker.broker == "redis_stream" or broker.left(name) == n:
            break
        time.sleep(0.25)
    rerun = _etl(["run", str(spec_path), *window], env)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "success"
    assert summary["loaded"] == (0 if committed else n)
    assert summary["metrics"]["messages_absorbed"] == (n if committed else 0)
    assert summary["metrics"]["messages_taken"] == n
    got = rows(pg_url)
    assert [r[0] for r in got] == list(range(n)) and [float(r[1]) for r in got] == [i + 0.25 for i in range(n)]
    assert rows(pg_url, "SELECT count(*), count(DISTINCT message_id) FROM etl_messages") == [(n, n)]
    assert broker.left(name) == 0


@pytest.mark.airflow
def test_dag_of_a_queue_pipeline_is_one_sync_task_that_loads_and_acknowledges(airflow_db, tmp_path, monkeypatch,
                                                                               connections, sqlite_url):
    from datetime import UTC, datetime

    from driftless.airflow.dags import build_dag

    try:
        b = Redis()
    except Exception as exc:
        unavailable("redis", exc)
    try:
        name = b.create()
        for i in range(5):
            b.publish(name, order(i), None)
        connections(rs=REDIS, wh=airflow_uri(sqlite_url))
        data = copy.deepcopy(BASE)
        data["source"].update(b.source(name), connection="rs")
        specs_dir = tmp_path / "pipelines"
        specs_dir.mkdir()
        spec_path = specs_dir / "orders_queue.yaml"
        spec_path.write_text(yaml.safe_dump(data))
        monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
        dag = build_dag(spec_path)
        assert [t.task_id for t in dag.tasks] == ["sync"]
        run = dag.test(logical_date=datetime(2025, 6, 1, tzinfo=UTC))
        assert run.state == "success"
        assert [r[0] for r in rows(sqlite_url)] == list(range(5)) and b.left(name) == 0
    finally:
        b.close()


def test_only_queue_sources_acknowledge():
    """The engine asks ``Acknowledges`` (load in the consuming process, no reject ratio), never an attribute."""
    from driftless.pipeline import ACKNOWLEDGING, source_classes
    from driftless.sources.base import Acknowledges

    assert {name for name, cls in source_classes().items() if issubclass(cls, Acknowledges)} == {"queue"}
    assert ACKNOWLEDGING == {"queue"}
@pytest.mark.parametrize("db", ["sqlite_url", "pg_url", "mariadb_url"])
def test_ids_another_run_recorded_meanwhile_are_named_and_none_of_this_run_written(db, request):
    """record_processed finds ids recorded meanwhile by the primary key (in a savepoint), not by a lookup."""
    from datetime import timedelta

    from driftless.sources.queues.messages import ensure_messages_table, record_processed
    from driftless.targets.loaders import loader_for

    engine = loader_for(request.getfixturevalue(db)).engine
    try:
        ensure_messages_table(engine)
        with engine.begin() as conn:
            assert record_processed(conn, "p", ["m1", "m2"], "run-1", timedelta(days=7)) == []
        with engine.begin() as conn:
            assert record_processed(conn, "p", ["m3", "m2", "m1", "m4"], "run-2", timedelta(days=7)) == ["m1", "m2"]
            # the transaction is still usable and holds nothing of run-2 (the caller then rolls back)
            assert conn.execute(text("SELECT count(*) FROM etl_messages WHERE run_id = 'run-2'")).scalar() == 0
            assert record_processed(conn, "other", ["m1"], "run-2", timedelta(days=7)) == []
        with engine.connect() as conn:
            assert sorted(conn.execute(text("SELECT pipeline, message_id, run_id FROM etl_messages")).all()) == [
                ("other", "m1", "run-2"), ("p", "m1", "run-1"), ("p", "m2", "run-1")]
    finally:
        engine.dispose()
