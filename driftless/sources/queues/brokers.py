"""The two brokers behind a queue source: take messages, acknowledge them by id, publish dead letters.

Each consumer keeps what it needs to acknowledge the messages it handed out until ``ack`` (after the
target's commit) or ``close`` (without acknowledging: the broker redelivers them to a later run).

* RabbitMQ (pika ``BlockingConnection``): a delivery can only be acknowledged on the channel that received
  it, so the channel stays open from the first message until the acknowledgement; ``ack`` sends one
  ``basic_ack(multiple=True)`` for the last delivery. ``prefetch_count`` is ``max_messages`` (at most
  65535; above that unlimited): the broker never pushes more than a run takes; what it pushed beyond that
  is requeued when the consumer is cancelled.
* Redis Streams (redis-py): ``XREADGROUP`` leaves entries pending in the group until ``XACK``. A run reads
  its consumer's own pending entries first (a crashed run's), then takes over entries other consumers left
  pending longer than ``reclaim_after`` (``XAUTOCLAIM``), then new ones (``>``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from driftless.connections import connection_fields
from driftless.errors import SourceError
from driftless.sources.queues.spec import QueueSourceSpec
from driftless.sources.rest.jsonpath import MISSING, select

log = logging.getLogger(__name__)
REDIS_BATCH = 1000
RABBIT_PREFETCH_MAX = 65_535
DEFAULT_HEARTBEAT_S = 600  # the channel stays open, unserviced, while the load runs


@dataclass(frozen=True)
class Message:
    """One message as taken from the broker.

    Attributes:
        id: the message id (RabbitMQ: by ``message_id``; Redis: the entry id); None when it has none.
        body: the message, bytes (None: a Redis entry without the declared field, or deleted while pending).
        time: Redis: the entry id's time; RabbitMQ: when this run received it.
        handle: what ``ack`` needs (delivery tag, entry id).
        redelivered: the broker delivered it before (RabbitMQ's flag; Redis: read from the pending list).
    """

    id: str | None
    body: bytes | None
    time: datetime
    handle: Any
    redelivered: bool = False


def broker_url(conn_id: str, scheme: str) -> str:
    """The connection's URL (``amqp://...`` or ``redis://...``) from AIRFLOW_CONN_<ID> or an Airflow Connection."""
    f = connection_fields(conn_id)
    kind = (f.get("conn_type") or scheme).lower()
    if kind not in (scheme, scheme + "s", "rediss" if scheme == "redis" else "amqps"):
        raise SourceError(f"connection {conn_id!r}: a {scheme} source needs a {scheme}:// connection, got {kind!r}")
    user = quote(f["login"], safe="") if f.get("login") else ""
    password = ":" + quote(f["password"], safe="") if f.get("password") else ""
    auth = f"{user}{password}@" if user or password else ""
    port = f":{f['port']}" if f.get("port") else ""
    path = "/" + quote(f.get("schema") or "", safe="") if f.get("schema") else ""
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in (f.get("extra") or {}).items())
    return f"{kind}://{auth}{f.get('host') or '127.0.0.1'}{port}{path}{'?' + query if query else ''}"


def consumer_for(spec: QueueSourceSpec, pipeline: str) -> RabbitConsumer | RedisStreamConsumer:
    if spec.broker == "rabbitmq":
        return RabbitConsumer(spec, pipeline)
    return RedisStreamConsumer(spec, pipeline)


def _message_id(source: QueueSourceSpec, body: bytes, prop: str | None) -> str | None:
    if source.message_id == "property":
        return prop

    try:
        found = select(json.loads(body), source.message_id)
    except (ValueError, UnicodeDecodeError):
        return None
    return None if found is MISSING or found is None or isinstance(found, dict | list) else str(found)


class RabbitConsumer:
    """A RabbitMQ queue: ``take`` opens a channel that stays open until ``ack`` or ``close``."""

    def __init__(self, source: QueueSourceSpec, pipeline: str) -> None:
        self.source = source
        self.pipeline = pipeline
        self.connection: Any = None
        self.channel: Any = None
        self.last_tag: int | None = None

    def _open(self) -> None:
        import pika
        import pika.exceptions

        url = broker_url(self.source.connection, "amqp")
        params = pika.URLParameters(url)
        if "heartbeat=" not in url:
            params.heartbeat = DEFAULT_HEARTBEAT_S
        try:
            self.connection = pika.BlockingConnection(params)
            self.channel = self.connection.channel()
        except pika.exceptions.AMQPError as exc:
            raise SourceError(f"{self.source.name}: cannot connect to RabbitMQ through connection "
                              f"{self.source.connection!r}: {type(exc).__name__} {exc}") from exc
        for name, role in ((self.source.queue, "queue"), (self.source.dead_letter, "dead_letter queue")):
            if name is None:
                continue
            try:
                self.channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self.close()
                raise SourceError(f"{self.source.name}: the {role} {name!r} does not exist on the broker "
                                  f"({exc.reply_text}); declare it first") from exc
        prefetch = self.source.max_messages if self.source.max_messages <= RABBIT_PREFETCH_MAX else 0
        self.channel.basic_qos(prefetch_count=prefetch)

    def take(self) -> Iterator[Message]:
        """Up to ``max_messages`` messages, for at most ``max_seconds``, until the queue is idle."""
        import pika.exceptions

        self._open()
        s = self.source
        deadline = time.monotonic() + s.max_seconds
        taken = 0
        try:
            for method, props, body in self.channel.consume(s.queue, auto_ack=False, inactivity_timeout=s.idle_seconds):
                if method is None:
                    break
                self.last_tag = method.delivery_tag
                taken += 1
                yield Message(_message_id(s, body, props.message_id), body, datetime.now(UTC), method.delivery_tag,
                              bool(method.redelivered))
                if taken >= s.max_messages or time.monotonic() >= deadline:
                    break
            self.channel.cancel()  # requeues what the broker pushed beyond the messages taken
        except pika.exceptions.AMQPError as exc:
            raise SourceError(f"{s.name}: consuming failed after {taken} message(s): {type(exc).__name__} {exc}; "
                              "nothing was acknowledged, the broker delivers them again") from exc

    def ack(self) -> None:
        """Acknowledge every message taken (one ``basic_ack`` with ``multiple``)."""
        if self.last_tag is not None:
            self.channel.basic_ack(self.last_tag, multiple=True)
            self.last_tag = None

    def dead_letter(self, letters: list[tuple[str | None, bytes, str]]) -> None:
        """Publish (message id, body, reason) to the dead-letter queue, reason in the headers."""
        import pika

        for message_id, body, reason in letters:
            self.channel.basic_publish("", self.source.dead_letter, body, pika.BasicProperties(
                delivery_mode=2, message_id=message_id, content_type="application/json",
                headers={"x-driftless-pipeline": self.pipeline, "x-driftless-reason": reason[:2000],
                         "x-driftless-queue": self.source.queue}))

    def close(self) -> None:
        """Close the connection; messages taken and not acknowledged go back to the queue."""
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception:  # closing a connection the broker already dropped
            log.debug("closing the RabbitMQ connection failed", exc_info=True)
        self.connection = self.channel = None


class RedisStreamConsumer:
    """A Redis Stream read through a consumer group; entries stay pending until ``ack`` (``XACK``)."""

    def __init__(self, source: QueueSourceSpec, pipeline: str) -> None:
        self.source = source
        self.pipeline = pipeline
        self.client: Any = None
        self.pending: list[str] = []

    def _open(self) -> None:
        import redis

        s = self.source
        try:
            self.client = redis.Redis.from_url(broker_url(s.connection, "redis"))
            self.client.xgroup_create(s.stream, s.group, id="0", mkstream=False)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise SourceError(f"{s.name}: cannot create consumer group {s.group!r}: {exc} (does the stream "
                                  "exist?)") from exc
        except redis.RedisError as exc:
            raise SourceError(f"{s.name}: cannot connect to Redis through connection {s.connection!r}: "
                              f"{type(exc).__name__} {exc}") from exc

    def _message(self, entry_id: bytes, fields: dict | None, redelivered: bool) -> Message:
        ident = entry_id.decode()
        body = (fields or {}).get(self.source.field.encode())
        self.pending.append(ident)
        return Message(ident, body, datetime.fromtimestamp(int(ident.split("-")[0]) / 1000, UTC), ident, redelivered)

    def take(self) -> Iterator[Message]:
        """Own pending entries, then entries idle in other consumers, then new ones; within the limits."""
        import redis

        self._open()
        s = self.source
        deadline = time.monotonic() + s.max_seconds
        left = s.max_messages
        r = self.client
        try:
            after = "0"  # this consumer's pending entries (a crashed run's), oldest first
            while left > 0 and time.monotonic() < deadline:
                got = r.xreadgroup(s.group, s.consumer, {s.stream: after}, count=min(left, REDIS_BATCH))
                entries = got[0][1] if got else []
                if not entries:
                    break
                for entry_id, fields in entries:
                    left -= 1
                    yield self._message(entry_id, fields, True)
                after = entries[-1][0]
            start = "0-0"  # entries other consumers of the group left pending too long
            while left > 0 and time.monotonic() < deadline:
                start, claimed, *_ = r.xautoclaim(s.stream, s.group, s.consumer,
                                                  int(s.reclaim_after.total_seconds() * 1000), start,
                                                  count=min(left, REDIS_BATCH))
                for entry_id, fields in claimed:
                    left -= 1
                    yield self._message(entry_id, fields, True)
                if start in (b"0-0", "0-0"):
                    break
            while left > 0 and time.monotonic() < deadline:
                got = r.xreadgroup(s.group, s.consumer, {s.stream: ">"}, count=min(left, REDIS_BATCH),
                                   block=int(s.idle_seconds * 1000))
                entries = got[0][1] if got else []
                if not entries:
                    break
                for entry_id, fields in entries:
                    left -= 1
                    yield self._message(entry_id, fields, False)
        except redis.RedisError as exc:
            raise SourceError(f"{s.name}: reading failed after {len(self.pending)} entries: {type(exc).__name__} "
                              f"{exc}; nothing was acknowledged, the entries stay pending") from exc

    def ack(self) -> None:
        """``XACK`` every entry taken."""
        pipe = self.client.pipeline(transaction=False)
        for i in range(0, len(self.pending), REDIS_BATCH):
            pipe.xack(self.source.stream, self.source.group, *self.pending[i:i + REDIS_BATCH])
        pipe.execute()
        self.pending = []

    def dead_letter(self, letters: list[tuple[str | None, bytes, str]]) -> None:
        """Add (message id, body, reason) to the dead-letter stream as fields."""
        pipe = self.client.pipeline(transaction=False)
        for message_id, body, reason in letters:
            pipe.xadd(self.source.dead_letter, {"body": body, "reason": reason[:2000], "message_id": message_id or "",
                                                "pipeline": self.pipeline, "stream": self.source.stream})
        pipe.execute()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
