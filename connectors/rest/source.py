"""REST source: a JSON API endpoint read window by window, in chunks of ``chunk_size`` records.

Same interface as ``connectors.sql.SqlSource`` (``read(window)`` yields DataFrames), without
``count``: an API cannot count a window cheaply. After ``read`` finishes, ``metrics`` holds what the
request loop did. ``resume_from`` and ``checkpoint`` let a retried extraction continue from the
page of the last staged chunk instead of page one (see ``etl.pipeline.extract_window``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

import pandas as pd
import pyarrow as pa
import requests

from connectors.rest.client import RestClient
from connectors.rest.paginators import State
from etl.connections import connection_fields
from etl.errors import SourceError
from etl.spec import PipelineSpec
from etl.window import Window

log = logging.getLogger(__name__)


def _decimal(value: Any) -> Any:
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, float) and value != value:  # NaN from a missing field
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return value  # frame_to_arrow names the column and the value


class RestSource:
    """Records of one API endpoint whose cursor lies in ``[window.start - lag, window.end)``.

    The API is asked for the window through templated ``params``; with ``filter_by_cursor`` records
    outside the window are dropped client-side as well. Records repeated within a window (same
    primary key) are dropped unless the repeat carries a newer cursor value; the loader's merge then
    keeps the newest. Memory holds about one chunk plus one page, and the set of keys seen.
    """

    resumable = True

    def __init__(self, spec: PipelineSpec, session: requests.Session | None = None) -> None:
        self.spec = spec
        self.source = spec.source
        self.session = session
        self.metrics: dict[str, Any] = {}
        self.checkpoint: dict[str, Any] | None = None
        self._start: dict[str, Any] | None = None
        self._seen: dict[tuple[str, ...], pd.Timestamp] = {}
        self._columns = [(c.name, c.source_name, c.type) for c in spec.columns]

    def resume_from(self, checkpoint: dict[str, Any] | None,
                    staged: Callable[[], Iterable[pa.Table]] | None = None) -> None:
        """Continue a failed extraction: start at the checkpointed page; treat staged records as seen."""
        self._start = checkpoint
        if checkpoint and staged is not None:
            keys, cursor = list(self.source.primary_key), self.source.cursor
            for table in staged():
                frame = table.select([*keys, cursor]).to_pandas()
                self._remember(frame, keys, pd.to_datetime(frame[cursor], utc=True))

    def _remember(self, frame: pd.DataFrame, keys: list[str], cursors: pd.Series) -> None:
        for key, value in zip(zip(*(frame[k].astype(str) for k in keys), strict=True), cursors, strict=True):
            self._seen[key] = value

    def _frame(self, records: list[Any], page: int, window: Window) -> tuple[pd.DataFrame, int, int]:
        """A page's records as a frame of the spec's columns, filtered to the window and deduplicated."""
        if not all(isinstance(r, dict) for r in records):
            bad = next(r for r in records if not isinstance(r, dict))
            raise SourceError(f"pipeline {self.spec.name!r}: page {page}: expected records to be JSON objects, "
                              f"got {type(bad).__name__}")
        raw = pd.DataFrame.from_records(records, columns=[src for _, src, _ in self._columns])
        raw.columns = [name for name, _, _ in self._columns]
        frame = raw.astype(object).where(raw.notna(), None)
        for name, _, kind in self._columns:
            col = frame[name]
            if kind.startswith(("numeric", "decimal")):
                frame[name] = col.map(_decimal)
            elif kind in ("timestamp", "timestamptz", "date"):
                numeric = pd.to_numeric(col, errors="coerce")
                if numeric.notna().any() and numeric.notna().sum() == col.notna().sum():  # epoch seconds
                    frame[name] = pd.to_datetime(numeric, unit="s", utc=True)
            elif kind == "text" or kind.startswith(("varchar", "string")):
                frame[name] = col.map(lambda v: v if v is None or isinstance(v, str) else str(v))
        cursor = self.source.cursor
        try:
            cursors = pd.to_datetime(frame[cursor], utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise SourceError(f"pipeline {self.spec.name!r}: page {page}: cursor {cursor!r} has a value that is not "
                              f"a timestamp ({exc})") from None
        filtered = 0
        if self.source.filter_by_cursor:
            bounds = window.widened(self.source.lag)
            keep = (cursors >= pd.Timestamp(bounds.start)) & (cursors < pd.Timestamp(bounds.end))
            filtered = int((~keep).sum())
            frame, cursors = frame[keep.to_numpy()], cursors[keep]
        keys = list(self.source.primary_key)
        mask, seen = [], self._seen
        for key, value in zip(zip(*(frame[k].astype(str) for k in keys), strict=True), cursors, strict=True):
            old = seen.get(key)
            new = old is None or (value is not pd.NaT and old is not pd.NaT and value > old)
            mask.append(new)
            if new:
                seen[key] = value
        duplicates = len(mask) - sum(mask)
        if duplicates:
            frame = frame[mask]
        return frame, filtered, duplicates

    def read(self, window: Window) -> Iterator[pd.DataFrame]:
        """Yield the window's records as DataFrames of ``chunk_size`` rows (the last one may be shorter)."""
        if (self._start or {}).get("done"):  # every page was staged before the failure
            self.metrics = {"resumed_from_page": None, "requests": 0}
            return
        client = RestClient(self.source, connection_fields(self.source.connection), self.session)
        start: State | None = (self._start or {}).get("state")
        first = int((self._start or {}).get("page") or 1)
        size = self.spec.chunk_size
        buffer: deque[tuple[State, int, pd.DataFrame]] = deque()  # (page state, page number, rows not yet yielded)
        buffered = filtered = duplicates = 0
        self.checkpoint = None

        def cut(limit: int) -> pd.DataFrame:
            nonlocal buffered
            parts, need = [], limit
            while need and buffer:
                state, number, frame = buffer[0]
                take = frame.iloc[:need]
                parts.append(take)
                need -= len(take)
                if len(take) == len(frame):
                    buffer.popleft()
                else:
                    buffer[0] = (state, number, frame.iloc[len(take):])
            buffered -= limit - need
            return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)

        def snapshot(state: State, number: int) -> dict[str, Any]:
            # Resume point: the page holding the oldest record not yet yielded (or the last page read).
            # On resume that page is fetched again; records already staged are dropped as repeats.
            if buffer:
                state, number = buffer[0][0], buffer[0][1]
            return {"state": state, "page": number}

        try:
            for page in client.pages(window, start, first):
                frame, page_filtered, page_dupes = self._frame(page.records, page.number, window)
                filtered += page_filtered
                duplicates += page_dupes
                if len(frame):
                    buffer.append((page.state, page.number, frame))
                    buffered += len(frame)
                while buffered >= size:
                    chunk = cut(size)
                    self.checkpoint = snapshot(page.state, page.number)
                    yield chunk
            if buffered:
                chunk = cut(buffered)
                self.checkpoint = {"state": None, "page": client.metrics.pages + first - 1, "done": True}
                yield chunk
        finally:
            self.metrics = {**client.metrics.as_dict(), "filtered_out": filtered, "duplicates_dropped": duplicates,
                            "resumed_from_page": first if self._start else None}
            if client.session is not self.session:
                client.session.close()
