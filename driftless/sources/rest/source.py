"""REST source: a JSON API endpoint read window by window, in chunks of ``chunk_size`` records.

Same interface as ``driftless.sources.sql.source.SqlSource`` (``read(window)`` yields DataFrames), without
``count``: an API cannot count a window cheaply. After ``read`` finishes, ``metrics`` holds what the
request loop did. ``resume_from`` and ``checkpoint`` let a retried extraction continue from the
page of the last staged chunk instead of page one (see ``driftless.pipeline.extract_window``).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
import pyarrow as pa

from driftless.connections import connection_fields
from driftless.errors import SourceError
from driftless.sources.rest.client import Page, RedirectGuard, RestClient
from driftless.sources.rest.jsonpath import parse_path
from driftless.sources.rest.jsonpath import select as select_path
from driftless.sources.rest.paginators import State
from driftless.sources.rest.spec import RestSourceSpec
from driftless.spec import PipelineSpec
from driftless.window import Window

log = logging.getLogger(__name__)
_NEVER = object()


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str | float | Decimal):
        return value  # a number (NaN included) is converted, or refused, by driftless.extract.transform
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def parse_cursor(value: Any, fmt: str | None = None) -> datetime | None:
    """A cursor value as an aware UTC datetime, read under the cursor column's declared ``format``.

    Without a format: ISO-8601 text (no zone = UTC). ``epoch_s`` / ``epoch_ms``: a number of seconds /
    milliseconds. A strptime layout: text in that layout. Anything else raises ``ValueError``.
    """
    if type(value) is str and fmt is None:  # the common case first: this runs once per record
        dt = datetime.fromisoformat(value)
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a timestamp")
    if fmt in ("epoch_s", "epoch_ms"):
        if not isinstance(value, int | float | Decimal):
            raise ValueError(f"{value!r} is not a number of {'milli' if fmt == 'epoch_ms' else ''}seconds")
        return datetime.fromtimestamp(float(value) / 1000 if fmt == "epoch_ms" else float(value), UTC)
    if isinstance(value, int | float | Decimal):
        raise ValueError(f"{value!r} is a number; declare `format: epoch_s` (or epoch_ms) on the cursor column")
    if fmt is not None:
        dt = datetime.strptime(str(value), fmt)
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    if isinstance(value, datetime):
        dt = value
    else:
        dt = datetime.fromisoformat(str(value))
        if not isinstance(dt, datetime):
            dt = datetime(dt.year, dt.month, dt.day)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def field_getter(name: str) -> Callable[[dict], Any]:
    """How a record's value for a column's ``source`` name is read.

    The key as written first (``created-at``, ``Straße``, even ``a.b`` when the record has that key); when the
    record has no such key and the name is a path (``metadata.store_id``, ``items[0].sku``), the value found by
    walking nested objects and lists. Missing is None (NULL), as for a missing top-level key.
    """
    if "." not in name and "[" not in name:
        return lambda record: record.get(name)
    try:
        parse_path(name)
    except ValueError:
        return lambda record: record.get(name)

    def get(record: dict) -> Any:
        return record[name] if name in record else select_path(record, name, None)

    return get


class RestSource:
    """Records of one API endpoint whose cursor lies in ``[window.start - lag, window.end)``.

    The API is asked for the window through templated ``params``; with ``filter_by_cursor`` records
    outside the window are dropped client-side as well. Records repeated within a window (same
    primary key) are dropped unless the repeat carries a newer cursor value; the loader's merge then
    keeps the newest. Memory holds about one chunk plus one page, and the set of keys seen.
    """

    resumable = True

    def __init__(self, spec: PipelineSpec, session: RedirectGuard | None = None) -> None:
        self.spec = spec
        if not isinstance(spec.source, RestSourceSpec):
            raise TypeError(f"pipeline {spec.name!r}: RestSource needs a source of type 'rest'")
        self.source: RestSourceSpec = spec.source
        self.session = session
        self.metrics: dict[str, Any] = {}
        self.checkpoint: dict[str, Any] | None = None
        self._start: dict[str, Any] | None = None
        # key (text; a tuple for compound keys) -> its cursor value as received (parsed on demand)
        self._seen: dict[Any, Any] = {}
        self._columns = [(c.name, field_getter(c.source_name), c.type) for c in spec.columns]
        self.null_cursor_records = 0  # records of the window whose cursor was null or missing

    def resume_from(self, checkpoint: dict[str, Any] | None,
                    staged: Callable[[], Iterable[pa.Table]] | None = None) -> None:
        """Continue a failed extraction: start at the checkpointed page; treat staged records as seen."""
        self._start = checkpoint
        if checkpoint and staged is not None:
            keys, cursor = list(self.source.primary_key), self.source.cursor
            for table in staged():
                columns = [table.column(k).to_pylist() for k in keys]
                for key, value in zip(zip(*columns, strict=True), table.column(cursor).to_pylist(), strict=True):
                    self._seen[str(key[0]) if len(key) == 1 else tuple(str(v) for v in key)] = value

    def _cursor(self, value: Any, page: int) -> datetime | None:
        fmt = self.spec.column(self.source.cursor).format
        try:
            return parse_cursor(value, fmt)
        except (ValueError, TypeError, OverflowError, OSError) as exc:
            expected = {None: "an ISO-8601 timestamp", "epoch_s": "epoch seconds", "epoch_ms": "epoch milliseconds"}
            raise SourceError(f"pipeline {self.spec.name!r}: page {page}: cursor {self.source.cursor!r} is "
                              f"{value!r}, expected {expected.get(fmt, f'text in format {fmt!r}')}") from exc

    def _keep(self, records: list[Any], page: int, bounds: Window | None) -> tuple[list[dict], int, int]:
        """The records of a page that lie in the window and were not seen before in it.

        Plain Python over the records, once each: the cursor is parsed only when the window filters
        client-side or when a key repeats (then the newer cursor value wins).
        """
        key_fields = [self.spec.column(k).source_name for k in self.source.primary_key]
        single = field_getter(key_fields[0]) if len(key_fields) == 1 else None
        key_getters = [field_getter(k) for k in key_fields]
        cursor_field = self.spec.column(self.source.cursor).source_name
        cursor_of = field_getter(cursor_field)
        seen, kept, filtered, duplicates = self._seen, [], 0, 0
        for record in records:
            if type(record) is not dict:
                raise SourceError(f"pipeline {self.spec.name!r}: page {page}: expected records to be JSON objects, "
                                  f"got {type(record).__name__}: {str(record)[:100]!r}")
            cursor = cursor_of(record)
            if cursor is None:  # in no window: source.null_cursor says what happens
                if self._null_cursor(records, cursor_field, page):
                    continue
            elif bounds is not None:
                cursor = self._cursor(cursor, page)
                if cursor is None or not bounds.start <= cursor < bounds.end:
                    filtered += 1
                    continue
            key = str(single(record)) if single else tuple(str(get(record)) for get in key_getters)
            old = seen.get(key, _NEVER)
            if old is not _NEVER:
                new, before = self._cursor(cursor, page), self._cursor(old, page)
                if new is None or before is None or new <= before:
                    duplicates += 1
                    continue
            seen[key] = cursor
            kept.append(record)
        return kept, filtered, duplicates

    def _null_cursor(self, records: list[Any], cursor_field: str, page: int) -> bool:
        """A record without a cursor: counted; True to drop it (``skip``), raise under ``fail``."""
        self.null_cursor_records += 1
        if self.source.null_cursor == "fail":
            cursor_of = field_getter(cursor_field)
            found = sum(1 for r in records if type(r) is dict and cursor_of(r) is None)
            raise SourceError(
                f"pipeline {self.spec.name!r}: page {page}: {found} record(s) have a null or missing cursor "
                f"{cursor_field!r}, so they lie in no window; nothing was loaded. State what to do with them in the "
                "spec: source.null_cursor: every_window (keep them in every window that returns them) or skip "
                "(drop them; each window's checks count them)"
            )
        return self.source.null_cursor == "skip"

    def _frame(self, records: list[dict]) -> pd.DataFrame:
        """A chunk of records as a frame of the spec's columns, values made fit for ``frame_to_arrow``.

        Built column by column as Python objects: 2-3x faster than ``DataFrame.from_records``, and a
        missing integer stays ``None`` instead of turning the column into floats.
        """
        data = {}
        for name, get, kind in self._columns:
            values = [get(r) for r in records]
            # Numbers, dates and timestamps stay as received: extract.transform converts them under the column's
            # declared rules (an epoch number is a timestamp only where the column says `format: epoch_s`).
            if kind == "text" or kind.startswith(("varchar", "string")):
                if not all(v is None or type(v) is str for v in values):
                    values = [_text(v) for v in values]
            data[name] = pd.Series(values, dtype=object)
        return pd.DataFrame(data)

    def read(self, window: Window) -> Iterator[pd.DataFrame]:
        """Yield the window's records as DataFrames of ``chunk_size`` rows (the last one may be shorter)."""
        if (self._start or {}).get("done"):  # every page was staged before the failure
            self.metrics = {"resumed_from_page": None, "requests": 0}
            return
        client = RestClient(self.source, connection_fields(self.source.connection), self.session)
        start: State | None = (self._start or {}).get("state")
        first = int((self._start or {}).get("page") or 1)
        received, total = int((self._start or {}).get("received") or 0), (self._start or {}).get("total")
        size = self.spec.chunk_size
        # (page state, page number, records received before the page, its records not yielded)
        buffer: deque[tuple[State, int, int, list[dict]]] = deque()
        bounds = window.widened(self.source.lag) if self.source.filter_by_cursor else None
        buffered = filtered = duplicates = 0
        self.checkpoint = None

        def cut(limit: int) -> pd.DataFrame:
            nonlocal buffered
            parts, need = [], limit
            while need and buffer:
                state, number, before, frame = buffer[0]
                take = frame[:need]
                parts.extend(take)
                need -= len(take)
                if len(take) == len(frame):
                    buffer.popleft()
                else:
                    buffer[0] = (state, number, before, frame[len(take):])
            buffered -= limit - need
            return self._frame(parts)

        def snapshot(page: Page) -> dict[str, Any]:
            # Resume point: the page holding the oldest record not yet yielded; its records that were
            # staged already are dropped as repeats when it is fetched again. Else the next page. With the
            # records received before it and the total announced so far, for the end-of-window checks.
            if buffer:
                return {"state": buffer[0][0], "page": buffer[0][1], "received": buffer[0][2], "total": page.total}
            if page.next_state is None:
                return {"state": None, "page": page.number, "done": True}
            return {"state": page.next_state, "page": page.number + 1,
                    "received": page.received_before + len(page.records), "total": page.total}

        try:
            for page in client.pages(window, start, first, received, total):
                frame, page_filtered, page_dupes = self._keep(page.records, page.number, bounds)
                filtered += page_filtered
                duplicates += page_dupes
                if len(frame):
                    buffer.append((page.state, page.number, page.received_before, frame))
                    buffered += len(frame)
                while buffered >= size:
                    chunk = cut(size)
                    self.checkpoint = snapshot(page)
                    yield chunk
            if buffered:
                chunk = cut(buffered)
                self.checkpoint = {"state": None, "page": client.metrics.pages + first - 1, "done": True}
                yield chunk
        finally:
            self.metrics = {**client.metrics.as_dict(), "filtered_out": filtered, "duplicates_dropped": duplicates,
                            "resumed_from_page": first if self._start else None,
                            "null_cursor_records": self.null_cursor_records}
            if client.session is not self.session:
                client.session.close()
