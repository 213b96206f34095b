"""The ``source:`` block of a queue pipeline spec (``type: queue``), typed and validated on load.

A batch drain of a RabbitMQ queue or a Redis Stream (through a consumer group): a run takes what the queue
holds, up to ``max_messages`` or ``max_seconds``, loads it, and acknowledges the messages only after the
target transaction committed. Messages are JSON; ``records`` picks the record(s) out of each.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from driftless.sources.base import check_identifier, check_identifiers, one_or_more
from driftless.sources.rest.jsonpath import parse_path

#: columns every queue source adds to its records: the message id (RabbitMQ: the ``message_id`` property, or
#: what ``message_id`` names; Redis: the stream entry id) and the message time (Redis: the entry id's
#: milliseconds; RabbitMQ: when this run received it). Declare them in ``columns`` to load them; the message
#: time is the cursor when the queue's order is the order of the data.
MESSAGE_ID_COLUMN, MESSAGE_TIME_COLUMN = "_message_id", "_message_time"
SYNTHETIC_COLUMNS = (MESSAGE_ID_COLUMN, MESSAGE_TIME_COLUMN)


class QueueSourceSpec(BaseModel):
    """A RabbitMQ queue or a Redis Stream, drained in batches (see the README section "Queue sources")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["queue"]
    broker: Literal["rabbitmq", "redis_stream"] = Field(description="rabbitmq (AMQP 0-9-1, pika) or redis_stream "
                                                        "(a Redis Stream read through a consumer group)")
    connection: str = Field(description="connection id: amqp://user:password@host:5672/vhost or "
                            "redis://host:6379/0 in AIRFLOW_CONN_<ID> or an Airflow Connection")
    queue: str | None = Field(None, min_length=1, description="rabbitmq: the queue to drain (it must exist)")
    stream: str | None = Field(None, min_length=1, description="redis_stream: the stream key")
    group: str = Field("driftless", min_length=1, description="redis_stream: the consumer group (created at the "
                       "stream's start when missing)")
    consumer: str = Field("driftless", min_length=1, description="redis_stream: the consumer name within the group")
    field: str = Field("body", min_length=1, description="redis_stream: the entry field holding the JSON message")
    message_id: str = Field("property", description="rabbitmq: where a message's id comes from: 'property' (the "
                            "AMQP message_id property) or a JSON path into the message (e.g. event_id). A message "
                            "without an id is quarantined. Redis entries are identified by their entry id")
    records: str = Field("$", description="JSON path of the record (an object) or the list of records in a message "
                         "('$' = the message itself)")
    primary_key: list[str] = Field(min_length=1)
    cursor: str = Field(description="column ordering the versions of one key: the latest wins, also against the "
                        "target's row (an older message never rolls a row back); _message_time = queue order")
    max_messages: int = Field(10_000, gt=0, le=10_000_000, description="take at most this many messages per run")
    max_seconds: float = Field(60.0, gt=0, description="stop taking messages after this many seconds")
    idle_seconds: float = Field(1.0, gt=0, description="the queue counts as drained after this long without a "
                                "message")
    dead_letter: str | None = Field(None, min_length=1, description="a queue (rabbitmq) or stream (redis_stream) "
                                    "to which quarantined messages are also published, with the reason; default "
                                    "none (etl_quarantine always has them)")
    reclaim_after: timedelta = Field(timedelta(minutes=5), description="redis_stream: entries another consumer "
                                     "of the group read and left unacknowledged this long are taken over")
    keep_ids: timedelta = Field(timedelta(days=7), description="how long etl_messages remembers a processed "
                                "message id (a redelivery after that would load it again)")

    _pk_list = field_validator("primary_key", mode="before")(one_or_more)

    _pk = field_validator("primary_key")(check_identifiers)

    _ids = field_validator("cursor", "connection")(check_identifier)

    @property
    def label(self) -> str:
        """What the source reads, in a few words (the DAG's documentation)."""
        return f"{self.broker} {self.queue or self.stream}"

    @field_validator("records")
    @classmethod
    def _records(cls, value: str) -> str:
        parse_path(value)
        return value

    @field_validator("message_id")
    @classmethod
    def _message_id(cls, value: str) -> str:
        if value != "property":
            if not parse_path(value):
                raise ValueError(f"{value!r}: expected 'property' or a JSON path to a field of the message")
        return value

    @model_validator(mode="after")
    def _names(self) -> QueueSourceSpec:
        if self.broker == "rabbitmq":
            if not self.queue or self.stream:
                raise ValueError("broker rabbitmq reads a 'queue' (and no 'stream')")
        else:
            if not self.stream or self.queue:
                raise ValueError("broker redis_stream reads a 'stream' (and no 'queue')")
            if self.message_id != "property":
                raise ValueError("message_id: Redis Stream entries are identified by their entry id; remove it")
        return self

    @property
    def table(self) -> None:
        """Queue sources have no table (for code that describes a SQL source by its table)."""
        return None

    @property
    def null_cursor(self) -> str:
        """A record with an empty cursor is quarantined (there is no window to place it in or keep it out of)."""
        return "quarantine"

    @property
    def lag(self) -> timedelta:
        return timedelta(0)

    @property
    def name(self) -> str:
        """The queue or stream, for messages."""
        return f"{self.broker} {'queue' if self.broker == 'rabbitmq' else 'stream'} {self.queue or self.stream!r}"
