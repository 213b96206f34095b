"""Queue source benchmark: N JSON messages drained into PostgreSQL, against a naive consume-insert-ack loop.

For each broker (RabbitMQ, Redis Streams) the same N messages (``{"id", "customer_id", "status", "amount",
"created_at"}``, one record each) are published untimed, then drained into an empty database:

* ``driftless``: ``run_window`` of a ``source.type: queue`` pipeline: take up to N messages, convert and validate
  each record by the spec's rules, stage, merge into the target with ``etl_messages`` and the watermark in one
  transaction, acknowledge (one ``basic_ack(multiple)`` / batched ``XACK``), then the window's checks. The time
  includes the ``idle_seconds`` (0.5 s) the drain waits to see the queue empty.
* ``naive``: what a hand-written consumer does: for each message, parse it, ``INSERT ... ON CONFLICT DO UPDATE``
  it in its own transaction, commit, acknowledge it (exactly-once only as far as the upsert is idempotent).
  A commit per message runs at a few hundred messages/s, so it drains at most ``NAIVE_MAX`` (10,000)
  messages: its rate does not depend on the queue's length.

    python benchmarks/bench_queues.py --n 100000

``run(n)`` is picked up by ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import URL, create_engine, text  # noqa: E402

PG = URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=5432)
DB = "driftless_bench_queues"
NAIVE_MAX = 10_000
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS = "redis://127.0.0.1:6379/0"
DDL = ("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id integer NOT NULL, status text, "
       "amount numeric(12,2), created_at timestamptz)")
COLUMNS = [
    {"name": "id", "type": "bigint", "nullable": False},
    {"name": "customer_id", "type": "integer", "nullable": False},
    {"name": "status", "type": "text"},
    {"name": "amount", "type": "numeric(12,2)"},
    {"name": "created_at", "type": "timestamptz"},
]


def message(i: int) -> bytes:
    return json.dumps({"id": i, "customer_id": i % 997, "status": ("new", "paid", "shipped")[i % 3],
                       "amount": f"{(i * 37) % 100000 / 100:.2f}",
                       "created_at": f"2025-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"}).encode()


def recreate_db() -> URL:
    admin = create_engine(PG.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {DB}"))
    admin.dispose()
    return PG.set(database=DB)


def drop_db() -> None:
    admin = create_engine(PG.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
    admin.dispose()


class Rabbit:
    def __init__(self, n: int) -> None:
        import pika

        self.pika = pika
        self.name = f"driftless_bench_{uuid.uuid4().hex[:8]}"
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP))
        self.channel = self.conn.channel()
        self.channel.queue_declare(self.name)
        for i in range(n):
            self.channel.basic_publish("", self.name, message(i), pika.BasicProperties(message_id=f"m{i}"))
        self.channel.queue_declare(self.name, passive=True)  # a round trip: every publish arrived

    def source(self) -> dict:
        return {"broker": "rabbitmq", "queue": self.name}

    def naive(self, db: URL) -> int:
        engine = create_engine(db)
        done = 0
        ch = self.channel
        ch.basic_qos(prefetch_count=1000)
        with engine.connect() as conn:
            for method, _props, body in ch.consume(self.name, inactivity_timeout=0.5):
                if method is None:
                    break
                upsert(conn, json.loads(body))
                conn.commit()
                ch.basic_ack(method.delivery_tag)
                done += 1
            ch.cancel()
        engine.dispose()
        return done

    def left(self) -> int:
        return self.channel.queue_declare(self.name, passive=True).method.message_count

    def close(self) -> None:
        self.channel.queue_delete(self.name)
        self.conn.close()


class RedisStream:
    def __init__(self, n: int) -> None:
        import redis

        self.name = f"driftless_bench_{uuid.uuid4().hex[:8]}"
        self.client = redis.Redis.from_url(REDIS)
        for start in range(0, n, 5000):
            pipe = self.client.pipeline(transaction=False)
            for i in range(start, min(n, start + 5000)):
                pipe.xadd(self.name, {"body": message(i)})
            pipe.execute()

    def source(self) -> dict:
        return {"broker": "redis_stream", "stream": self.name}

    def naive(self, db: URL) -> int:
        engine = create_engine(db)
        self.client.xgroup_create(self.name, "naive", id="0")
        done = 0
        with engine.connect() as conn:
            while True:
                got = self.client.xreadgroup("naive", "c", {self.name: ">"}, count=1000, block=500)
                if not got or not got[0][1]:
                    break
                for entry_id, fields in got[0][1]:
                    upsert(conn, json.loads(fields[b"body"]))
                    conn.commit()
                    self.client.xack(self.name, "naive", entry_id)
                    done += 1
        engine.dispose()
        return done

    def left(self) -> int:
        return sum(int(g["pending"]) + int(g.get("lag") or 0) for g in self.client.xinfo_groups(self.name))

    def close(self) -> None:
        self.client.delete(self.name)
        self.client.close()


def upsert(conn, record: dict) -> None:
    conn.execute(text("INSERT INTO orders VALUES (:id, :customer_id, :status, :amount, :created_at) "
                      "ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, "
                      "amount = EXCLUDED.amount, created_at = EXCLUDED.created_at"), record)


def driftless(broker, db: URL, n: int) -> int:
    from driftless.pipeline import run_window
    from driftless.spec import parse_spec
    from driftless.window import Window

    os.environ["AIRFLOW_CONN_BENCH_Q"] = AMQP if isinstance(broker, Rabbit) else REDIS
    os.environ["AIRFLOW_CONN_BENCH_WH"] = db.render_as_string(hide_password=False)
    spec = parse_spec({
        "name": "bench_queue", "chunk_size": 50_000,
        "source": {"type": "queue", "connection": "bench_q", **broker.source(), "primary_key": ["id"],
                   "cursor": "created_at", "max_messages": n, "max_seconds": 3600, "idle_seconds": 0.5},
        "target": {"connection": "bench_wh", "table": "orders"},
        "columns": COLUMNS,
    }, "bench_queue.yaml")
    result = run_window(spec, Window.parse("2025-01-01", "2025-01-02"))
    if result.status != "success":
        raise RuntimeError(f"driftless run ended {result.status}: {result.checks}")
    return result.loaded


def measure(kind: str, case: str, n: int) -> dict:
    n = min(n, NAIVE_MAX) if case == "naive" else n
    broker = Rabbit(n) if kind == "rabbitmq" else RedisStream(n)  # untimed
    try:
        db = recreate_db()
        if case == "naive":
            engine = create_engine(db)
            with engine.begin() as conn:
                conn.execute(text(DDL))
            engine.dispose()
        t0 = time.perf_counter()
        loaded = broker.naive(db) if case == "naive" else driftless(broker, db, n)
        seconds = time.perf_counter() - t0
        left = broker.left()
        with create_engine(db).connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM orders")).scalar_one()
    finally:
        broker.close()
    if rows != n or left != 0 or loaded != n:
        raise RuntimeError(f"{kind} {case}: {rows} rows, {loaded} loaded, {left} left in the queue (expected {n})")
    return {"messages": n, "seconds": round(seconds, 2), "messages_per_s": round(n / seconds)}


def run(n: int) -> dict:
    """Both brokers, driftless and naive; returns ``{broker_case: {seconds, messages_per_s}}``."""
    out = {}
    try:
        for kind in ("rabbitmq", "redis_stream"):
            for case in ("driftless", "naive"):
                out[f"{kind}_{case}"] = measure(kind, case, n)
                print(f"{kind:13} {case:10} {out[f'{kind}_{case}']}", flush=True)
    finally:
        drop_db()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(run(args.n)))


if __name__ == "__main__":
    main()
