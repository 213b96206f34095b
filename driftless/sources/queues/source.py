"""Queue source: a batch drain of a RabbitMQ queue or a Redis Stream, acknowledged after the commit.

Same interface as the other sources (``read(window)`` yields DataFrames of raw values), plus what the
pipeline calls around the load of a source that must acknowledge:

* ``prepare_target`` / ``record_loaded``: ``etl_messages`` holds the id of every message the run took, written
  in the load's transaction; a message redelivered after a crash is found there and absorbed.
* ``acknowledge()`` after the commit: ``basic_ack`` / ``XACK``; dead letters are published just before.
* ``close()``: without ``acknowledge`` (a failed load), the broker delivers the messages again.

Why one process: a RabbitMQ delivery can only be acknowledged on the channel that received it, so the
consumer must live from the first message to the acknowledgement after the commit. Queue pipelines
therefore extract, load and acknowledge in one process (``etl run``; in Airflow one ``sync`` task), for
both brokers, so that one design covers both.

The window of a queue run is the run's data interval (recorded with the run, moving the watermark), but
the records are what the queue held: they are not filtered by their cursor.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import inspect
from sqlalchemy import select as sql_select

from driftless.connections import resolve_url
from driftless.errors import LoadError
from driftless.extract.transform import convert_for
from driftless.extract.validate import SOURCE_ERROR_COLUMN
from driftless.quarantine.replay import newer_in_target
from driftless.quarantine.store import quarantine_table
from driftless.schema import target_table
from driftless.sources.queues.brokers import Message, consumer_for
from driftless.sources.queues.messages import (
    ensure_messages_table,
    messages_table_exists,
    processed,
    record_processed,
    recorded_by_run,
)
from driftless.sources.queues.spec import MESSAGE_ID_COLUMN, MESSAGE_TIME_COLUMN, SYNTHETIC_COLUMNS, QueueSourceSpec
from driftless.sources.rest.jsonpath import MISSING, select
from driftless.sources.rest.source import _text, field_getter
from driftless.spec import PipelineSpec
from driftless.status import Check
from driftless.targets.loaders import loader_for
from driftless.window import Window

log = logging.getLogger(__name__)
BATCH = 1000  # messages looked up in etl_messages at a time
SHOWN_BODY = 2000  # characters of an unreadable message kept in its quarantined record
BODY_COLUMN = "_body"


class QueueSource:
    """The messages a queue holds now, as records in DataFrames of at most ``chunk_size`` rows.

    Every record carries ``_message_id`` and ``_message_time`` (see ``driftless.sources.queues.spec``); a message
    that is not JSON, has no records at ``records``, no id, or a record without a cursor value becomes one
    record carrying ``_source_error``, which validation quarantines with that reason.
    """

    def __init__(self, spec: PipelineSpec, consumer: Any = None) -> None:
        if not isinstance(spec.source, QueueSourceSpec):
            raise TypeError(f"pipeline {spec.name!r}: QueueSource needs a source of type 'queue'")
        self.spec = spec
        self.source: QueueSourceSpec = spec.source
        self.consumer = consumer
        self.metrics: dict[str, Any] = {}
        self.new_ids: list[str] = []  # ids of the messages this run processes (etl_messages)
        self.letters: dict[str, tuple[str | None, bytes]] = {}  # unreadable messages by id, for the dead letters
        self.committed = False
        rename = spec.transforms.rename
        self.columns: list[tuple[str, Any, str | None]] = []  # (frame column, getter, "text" / "integer" / None)
        self.synthetic: list[tuple[str, str]] = []
        for column in spec.source_columns:
            if column.source_name in SYNTHETIC_COLUMNS:
                self.synthetic.append((column.source_name, column.name))
                continue
            renamed_from = [k for k, v in rename.items() if v == column.name]
            frame_col, field = (renamed_from[0], renamed_from[0]) if renamed_from else (column.name, column.source_name)
            kind = column.type
            family = ("text" if kind == "text" or kind.startswith(("varchar", "string"))
                      else "integer" if kind in ("smallint", "integer", "bigint") else None)
            self.columns.append((frame_col, field_getter(field), family))
        cursor = spec.column(self.source.cursor)
        self.cursor_getter = None if cursor.source_name in SYNTHETIC_COLUMNS else field_getter(cursor.source_name)

    # ---- target side --------------------------------------------------------------------------------------

    @staticmethod
    def prepare_target(engine: Any, schema: str | None) -> None:
        """Create ``etl_messages`` before the load's transaction (DDL commits implicitly on MariaDB)."""
        ensure_messages_table(engine, schema)

    def record_loaded(self, conn: Any, spec: PipelineSpec, window: Window, run_id: str, manifest: Any) -> None:
        """Record the run's message ids in ``etl_messages``, in the load's transaction."""
        before = record_processed(conn, spec.name, self.new_ids, run_id, self.source.keep_ids, spec.target.db_schema)
        if before:
            shown = ", ".join(before[:5]) + (f" and {len(before) - 5} more" if len(before) > 5 else "")
            raise LoadError(f"pipeline {spec.name!r}: {len(before)} message(s) were loaded by another run meanwhile "
                            f"({shown}); nothing was written and nothing acknowledged: run again (one run of a "
                            "queue pipeline at a time)")

    def _engine(self) -> Any:
        return loader_for(resolve_url(self.spec.target.connection)).engine

    # ---- reading ------------------------------------------------------------------------------------------

    def _records(self, message: Message) -> tuple[list[dict], str | None]:
        """The message's records, or why it has none that can be read."""
        if message.id is None:
            return [], ("the message has no id: set the message_id property when publishing, or name a field of "
                        "the message in source.message_id")
        if message.body is None:
            return [], f"the entry has no field {self.source.field!r} (or was deleted while pending)"
        try:
            document = json.loads(message.body, parse_float=Decimal)
        except UnicodeDecodeError as exc:
            return [], f"the message is not UTF-8 text ({exc.reason} at byte {exc.start})"
        except json.JSONDecodeError as exc:
            return [], f"the message is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        found = select(document, self.source.records)
        if found is MISSING:
            return [], f"the message has nothing at records path {self.source.records!r}"
        records = found if isinstance(found, list) else [found]
        wrong = [r for r in records if type(r) is not dict]
        if wrong:
            return [], (f"expected the record(s) at {self.source.records!r} to be JSON objects, got "
                        f"{type(wrong[0]).__name__}")
        return records, None

    def _frame(self, rows: list[tuple[Message, dict | None, str | None]]) -> pd.DataFrame:
        data: dict[str, pd.Series] = {}
        n = len(rows)
        for frame_col, get, family in self.columns:
            values = [get(record) if record is not None else None for _, record, _ in rows]
            if family == "text" and not all(v is None or type(v) is str for v in values):
                values = [_text(v) for v in values]
            data[frame_col] = _integers(values) if family == "integer" else pd.Series(values, dtype=object)
        ids = pd.Series([m.id for m, _, _ in rows], dtype=object)
        times = pd.Series(pd.DatetimeIndex([m.time for m, _, _ in rows], dtype="datetime64[us, UTC]"))
        synthetic = {MESSAGE_ID_COLUMN: ids, MESSAGE_TIME_COLUMN: times}
        data.update(synthetic)
        data.update({frame_col: synthetic[name] for name, frame_col in self.synthetic})
        data[SOURCE_ERROR_COLUMN] = pd.Series([error for _, _, error in rows], dtype=object)
        # an unreadable message's text (its first SHOWN_BODY characters), for its quarantined record
        data[BODY_COLUMN] = pd.Series([record.get(BODY_COLUMN) if error is not None and record is not None else None
                                       for _, record, error in rows], dtype=object)
        return pd.DataFrame(data, index=pd.RangeIndex(n))

    def read(self, window: Window) -> Iterator[pd.DataFrame]:
        """Take the queue's messages (up to ``max_messages`` / ``max_seconds``) and yield their records."""
        if self.consumer is None:
            self.consumer = consumer_for(self.source, self.spec.name)
        self.new_ids, self.letters = [], {}
        counts = {"messages_taken": 0, "messages_redelivered": 0, "messages_absorbed": 0, "messages_unreadable": 0,
                  "messages_empty": 0, "records_superseded": 0, "records_read": 0}
        seen: set[str] = set()
        rows: list[tuple[Message, dict | None, str | None]] = []
        batch: list[Message] = []
        engine = self._engine()
        try:
            with engine.connect() as conn:
                exists = messages_table_exists(conn, self.spec.target.db_schema)
                conn.rollback()

                def drain(messages: list[Message]) -> Iterator[pd.DataFrame]:
                    done = processed(conn, self.spec.name, [m.id for m in messages if m.id is not None],
                                     self.spec.target.db_schema, exists)
                    conn.rollback()  # no snapshot held open across the run
                    for m in messages:
                        key = m.id if m.id is not None else "sha256:" + _digest(m.body)
                        if key in done or key in seen:  # loaded by an earlier run (or twice in this one)
                            counts["messages_absorbed"] += 1
                            continue
                        seen.add(key)
                        self.new_ids.append(key)
                        records, error = self._records(m)
                        if error is None and not records:
                            counts["messages_empty"] += 1
                        if error is not None:
                            counts["messages_unreadable"] += 1
                            self.letters[key] = (m.id, m.body or b"")
                            shown = (m.body or b"")[:SHOWN_BODY].decode("utf-8", "replace")
                            rows.append((Message(key, m.body, m.time, m.handle), {BODY_COLUMN: shown}, error))
                        for record in records:
                            empty = self.cursor_getter is not None and self.cursor_getter(record) is None
                            rows.append((Message(key, m.body, m.time, m.handle), record,
                                         f"the cursor {self.source.cursor!r} is empty: the record cannot be "
                                         "ordered against other versions of its key" if empty else None))
                    while len(rows) >= self.spec.chunk_size:
                        yield self._checked(conn, rows[:self.spec.chunk_size], counts)
                        del rows[:self.spec.chunk_size]

                for message in self.consumer.take():
                    counts["messages_taken"] += 1
                    counts["messages_redelivered"] += int(message.redelivered)
                    batch.append(message)
                    if len(batch) >= BATCH:
                        yield from drain(batch)
                        batch = []
                yield from drain(batch)
                if rows:
                    yield self._checked(conn, rows, counts)
                    rows.clear()
        finally:
            engine.dispose()
            self.metrics = {**counts, "messages_processed": len(self.new_ids), "queue": self.source.name}

    def _checked(self, conn: Any, rows: list[tuple[Message, dict | None, str | None]],
                 counts: dict[str, int]) -> pd.DataFrame:
        """The rows as a frame, without records older (by the cursor) than the target's row of their key."""
        frame = self._frame(rows)
        counts["records_read"] += len(frame)
        older = self._older_than_target(conn, frame)
        if older.any():
            counts["records_superseded"] += int(older.sum())
            frame = frame[~older].reset_index(drop=True)
        return frame

    def _older_than_target(self, conn: Any, frame: pd.DataFrame) -> Any:
        """Records whose key the target holds with a later cursor: loading them would roll the row back."""
        older = np.zeros(len(frame), dtype=bool)
        mode = getattr(self.spec.target, "write_mode", "upsert")
        table = target_table(self.spec)
        if mode != "upsert" or not inspect(conn).has_table(table.name, schema=table.schema):
            return older
        names = list(dict.fromkeys([*self.source.primary_key, self.source.cursor]))
        rename = {v: k for k, v in self.spec.transforms.rename.items()}
        converted, ok = {}, frame[SOURCE_ERROR_COLUMN].isna().to_numpy().copy()
        for name in names:
            conv = convert_for(self.spec.column(name), frame[rename.get(name, name)])
            converted[name] = conv.values
            ok = ok & ~conv.bad & conv.values.notna().to_numpy()
        if not ok.any():
            return older
        candidates = pd.DataFrame(converted)[ok].reset_index(drop=True)
        newer = newer_in_target(conn, table, self.spec, pa.Table.from_pandas(candidates, preserve_index=False))
        conn.rollback()
        older[np.flatnonzero(ok)[newer]] = True
        return older

    # ---- after the commit ---------------------------------------------------------------------------------

    def acknowledge(self, result: Any) -> None:
        """After the commit: publish dead letters (when configured), then acknowledge every message taken.

        A failure here loses nothing: the data is committed and ``etl_messages`` absorbs the redelivery.
        It is reported (``ack_error`` in ``result.metrics``, a WARN check ``queue_ack``).
        """
        assert self.consumer is not None
        self.committed = True
        metrics = result.metrics if result.metrics is not None else {}
        try:
            if self.source.dead_letter:
                letters = self._dead_letters(result)
                if letters:
                    self.consumer.dead_letter(letters)
                metrics["dead_lettered"] = len(letters)
            self.consumer.ack()
            metrics["acknowledged"] = self.metrics.get("messages_taken", 0)
        except Exception as exc:  # the broker or the network: the next run absorbs the redelivery
            metrics["ack_error"] = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("pipeline %s: the load committed but acknowledging failed (%s); the messages will be "
                        "delivered again and absorbed by etl_messages", self.spec.name, metrics["ack_error"])
        result.metrics = metrics

    def _dead_letters(self, result: Any) -> list[tuple[str | None, bytes, str]]:
        """The run's quarantined messages: (id, body or the quarantined record, reason)."""
        table = quarantine_table(self.spec.target.db_schema)
        engine = self._engine()
        letters = []
        try:
            with engine.connect() as conn:
                for record, errors in conn.execute(sql_select(table.c.record, table.c.errors).where(
                        table.c.pipeline == self.spec.name, table.c.run_id == result.run_id)):
                    data = json.loads(record)
                    key = data.get(MESSAGE_ID_COLUMN)
                    reason = "; ".join(f"{e.get('column') or '(message)'}: {e.get('message')}"
                                       for e in json.loads(errors))
                    ident, body = self.letters.get(key, (key, record.encode()))
                    letters.append((ident, body, reason))
        finally:
            engine.dispose()
        return letters

    def close(self) -> None:
        """Close the broker connection (unacknowledged messages are delivered again)."""
        if self.consumer is not None:
            self.consumer.close()

    # ---- checks -------------------------------------------------------------------------------------------

    def window_checks(self, result: Any) -> list[dict[str, Any]]:
        """The queue source's window checks, run after the load committed and the messages were acknowledged.

        ``queue_messages``: the messages taken = processed (recorded in ``etl_messages`` by this run) + absorbed
        redeliveries, and the records of the processed messages = loaded + quarantined + deduplicated + superseded.
        ``queue_ack``: WARN when acknowledging failed after the commit.
        """
        m = getattr(result, "metrics", None) or {}
        if "messages_taken" not in m:
            return [{"check": "queue_messages", "status": Check.SKIP,
                     "message": "not checked: the extract did not count the messages it took"}]
        engine = self._engine()
        try:
            recorded = recorded_by_run(engine, self.spec.name, result.run_id, self.spec.target.db_schema)
        finally:
            engine.dispose()
        taken, absorbed = int(m["messages_taken"]), int(m["messages_absorbed"])
        records = int(m["records_read"])
        superseded = int(m.get("records_superseded", 0))
        accounted = int(result.loaded) + int(result.quarantined or 0) + int(result.deduplicated or 0) + superseded
        problems = []
        if taken != recorded + absorbed:
            problems.append(f"{taken} message(s) taken but {recorded} recorded in etl_messages + {absorbed} "
                            "absorbed redeliveries")
        if records != accounted:
            problems.append(f"their {records} record(s) but loaded {result.loaded} + quarantined {result.quarantined} "
                            f"+ deduplicated {result.deduplicated} + superseded {superseded} = {accounted}")
        checks = [{"check": "queue_messages", "source": taken, "target": recorded + absorbed,
                   "difference": float(taken - recorded - absorbed) + float(records - accounted),
                   "status": Check.FAIL if problems else Check.PASS,
                   **({"message": "; ".join(problems)} if problems else {})}]
        if m.get("ack_error"):
            checks.append({"check": "queue_ack", "status": Check.WARN,
                           "message": f"the load committed but acknowledging failed ({m['ack_error']}); the broker "
                                      "delivers the messages again and the next run absorbs them"})
        return checks


def _integers(values: list[Any]) -> pd.Series:
    """Values for an integer column, typed int64 when every one is a JSON integer that fits.

    extract.transform then converts the column without a pass per value; otherwise the values go as read (objects)
    and extract.transform converts or refuses each.
    """
    if values and all(type(v) is int for v in values):
        try:
            return pd.Series(np.array(values, dtype=np.int64))
        except OverflowError:
            pass
    return pd.Series(values, dtype=object)


def _digest(body: bytes | None) -> str:
    return hashlib.sha256(body or b"").hexdigest()
