"""Queue source benchmark: N JSON messages drained into PostgreSQL, against a naive consume-insert-ack loop.

For each broker (RabbitMQ, Redis Streams) N messages (``{"id", "customer_id", "status", "amount", "created_at"}``,
one record each; N = min(--n, 100,000)) are published untimed by the runner, then drained into an empty database
by a process of their own (``python benchmarks/bench_queues.py measure KIND CASE --n N --queue NAME``), which
reports its wall time and peak RSS (``VmHWM``, ``benchmarks.rss``) beside its baseline (after the imports):

* ``driftless``: ``run_window`` of a ``source.type: queue`` pipeline: take up to N messages, convert and validate
  each record by the spec's rules, stage, merge into the target with ``etl_messages`` and the watermark in one
  transaction, acknowledge (one ``basic_ack(multiple)`` / batched ``XACK``), then the window's checks. The time
  includes the ``idle_seconds`` (0.5 s) the drain waits to see the queue empty.
* ``naive``: what a hand-written consumer does: for each message, parse it, ``INSERT ... ON CONFLICT DO UPDATE``
  it in its own transaction, commit, acknowledge that one message (``basic_ack`` of its delivery tag / ``XACK`` of
  its entry id); exactly-once only as far as the upsert is idempotent. A commit per message runs at a few hundred
  messages/s, so it drains the first ``NAIVE_MAX`` (10,000) messages: its rate does not depend on the queue's
  length.

Afterwards the runner checks that the target holds every message's row and that the queue is empty (RabbitMQ:
nothing ready or unacknowledged; Redis: nothing pending or unread in any group).

    python benchmarks/bench_queues.py --n 100000 [--reps 3]

``run(n, reps)`` is picked up by ``make bench`` (medians of ``reps``; peak RSS the largest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import URL, create_engine, text  # noqa: E402

from benchmarks import rss  # noqa: E402
from benchmarks.bench_files import case_env  # noqa: E402

PG = URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=5432)
DB = f"{os.environ.get('BENCH_DB_PREFIX', 'driftless_bench')}_queues"  # BENCH_DB_PREFIX as in cases.py
QUEUE_MAX = 100_000  # messages per queue whatever N make bench passes (its N is rows, 1,000,000)
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
    """A queue of ``n`` published messages (or, with ``name``, the queue another process published)."""

    def __init__(self, n: int, name: str | None = None) -> None:
        import pika

        self.pika = pika
        self.name = name or f"driftless_bench_{uuid.uuid4().hex[:8]}"
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP))
        self.channel = self.conn.channel()
        if name is not None:
            return
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

    def client_close(self) -> None:
        self.conn.close()

    def close(self) -> None:
        self.channel.queue_delete(self.name)
        self.conn.close()


class RedisStream:
    """A stream of ``n`` entries (or, with ``name``, the stream another process filled)."""

    def __init__(self, n: int, name: str | None = None) -> None:
        import redis

        self.name = name or f"driftless_bench_{uuid.uuid4().hex[:8]}"
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

    def client_close(self) -> None:
        self.client.close()

    def close(self) -> None:
        self.client.delete(self.name)
        self.client.close()


def upsert(conn, record: dict) -> None:
    conn.execute(text("INSERT INTO orders VALUES (:id, :customer_id, :status, :amount, :created_at) "
                      "ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, "
                      "amount = EXCLUDED.amount, created_at = EXCLUDED.created_at"), record)


def driftless_drain(broker, db: URL, n: int) -> int:
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


def _publish(kind: str, n: int):
    return Rabbit(n) if kind == "rabbitmq" else RedisStream(n)


def _attach(kind: str, name: str):
    """The broker object for a queue published by the parent process (the case's process drains it)."""
    broker = (Rabbit if kind == "rabbitmq" else RedisStream)(0, name)
    return broker


def measure(kind: str, case: str, n: int, name: str) -> dict:
    """One timed drain in this process of the queue ``name`` (published, and the database made, by the caller)."""
    import pika  # noqa: F401 - imports are not timed
    import redis  # noqa: F401

    if case == "driftless":
        import driftless.pipeline as _imported  # noqa: F401 - imports before the timing
        rss.import_window_modules()
    broker = _attach(kind, name)
    db = PG.set(database=DB)
    baseline = rss.baseline_mb()
    t0 = time.perf_counter()
    loaded = broker.naive(db) if case == "naive" else driftless_drain(broker, db, n)
    seconds = time.perf_counter() - t0
    broker.client_close()
    return {"loaded": loaded, "seconds": round(seconds, 2), "peak_rss_mb": rss.peak_mb(), "baseline_rss_mb": baseline}


def run_case(kind: str, case: str, n: int) -> dict:
    """Publish ``n`` messages and make the database (untimed), drain them in a process of their own, check."""
    n = min(n, NAIVE_MAX) if case == "naive" else n
    broker = _publish(kind, n)
    try:
        db = recreate_db()
        if case == "naive":
            engine = create_engine(db)
            with engine.begin() as conn:
                conn.execute(text(DDL))
            engine.dispose()
        proc = subprocess.run([sys.executable, __file__, "measure", kind, case, "--n", str(n), "--queue", broker.name],
                              capture_output=True, text=True, cwd=tempfile.gettempdir(), env=case_env())
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} {case} failed: {proc.stderr.strip().splitlines()[-3:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        left = broker.left()
        engine = create_engine(db)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM orders")).scalar_one()
        engine.dispose()
    finally:
        broker.close()
    if rows != n or left != 0 or got["loaded"] != n:
        raise RuntimeError(f"{kind} {case}: {rows} rows, {got['loaded']} loaded, {left} left in the queue "
                           f"(expected {n})")
    return {"messages": n, "seconds": got["seconds"], "messages_per_s": round(n / got["seconds"]),
            "peak_rss_mb": got["peak_rss_mb"], "baseline_rss_mb": got["baseline_rss_mb"]}


def run(n: int, reps: int = 1) -> dict:
    """Both brokers, driftless and naive, ``reps`` times each (medians); returns ``{broker_case: {...}}``.

    The queue holds ``min(n, QUEUE_MAX)`` messages (``make bench`` passes its N of rows, 1,000,000).
    """
    n = min(n, QUEUE_MAX)
    print(f"  {n:,} messages per queue (driftless), the first {min(n, NAIVE_MAX):,} of them for the naive loop "
          "(its rate does not depend on the queue's length); each drain in a process of its own", flush=True)
    out = {}
    try:
        for kind in ("rabbitmq", "redis_stream"):
            for case in ("driftless", "naive"):
                runs = sorted((run_case(kind, case, n) for _ in range(reps)), key=lambda r: r["seconds"])
                best = runs[len(runs) // 2] | {"peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
                out[f"{kind}_{case}"] = best
                print(f"  {kind:13} {case:10} {best['messages']:>7,} messages {best['seconds']:>7.2f} s "
                      f"{best['messages_per_s']:>7,} messages/s  peak RSS {best['peak_rss_mb']:.0f} MB "
                      f"(baseline {best['baseline_rss_mb']:.0f} MB)", flush=True)
            ratio = out[f"{kind}_driftless"]["messages_per_s"] / out[f"{kind}_naive"]["messages_per_s"]
            print(f"  {kind}: driftless drains {ratio:.1f}x the naive loop's messages/s", flush=True)
    finally:
        drop_db()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="all", choices=["all", "measure"])
    parser.add_argument("kind", nargs="?", choices=["rabbitmq", "redis_stream"])
    parser.add_argument("case", nargs="?", choices=["driftless", "naive"])
    parser.add_argument("--n", type=int, default=QUEUE_MAX)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--queue", help="measure: the queue or stream to drain")
    args = parser.parse_args()
    if args.mode == "measure":
        print(json.dumps(measure(args.kind, args.case, args.n, args.queue)))
    else:
        print(json.dumps(run(args.n, args.reps)))


if __name__ == "__main__":
    main()
