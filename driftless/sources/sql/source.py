"""SQL source: reads a table or query of any SQLAlchemy database, window by window, in chunks."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
from sqlalchemy import Engine, Text, cast, column, func, select, table, text
from sqlalchemy.exc import SQLAlchemyError

from driftless.connections import resolve_url
from driftless.errors import SourceError, connect_timeout_s, error_detail
from driftless.extract.transform import DEFAULT_PARSING, Parsing
from driftless.redact import redact_url
from driftless.schema import read_type, sql_type
from driftless.settings import is_off, settings
from driftless.sources.sql.spec import SqlSourceSpec
from driftless.spec import PipelineSpec
from driftless.targets import capabilities, engine_for
from driftless.window import Window

log = logging.getLogger(__name__)


def _frame(rows: list[tuple], names: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame that keeps a float NaN apart from a NULL, and big integers beside a NULL exact.

    pandas reads a column of floats and None as float64 with NaN for both; where a column really holds a NaN
    (PostgreSQL 'NaN', a SQLite REAL), it is kept as Python objects so conversion can refuse the NaN and keep
    the NULL. Columns without a NaN keep the fast inferred dtypes.
    """
    frame = pd.DataFrame.from_records(rows, columns=names)
    for i, name in enumerate(names):
        if frame[name].dtype.kind == "f" and frame[name].isna().any():
            raw = [r[i] for r in rows]
            # A real NaN, or integers beside a NULL (float64 would round 2**63 - 1): keep the driver's values.
            if any((isinstance(v, float) and v != v) or isinstance(v, int) for v in raw):
                frame[name] = pd.Series(raw, dtype=object)
    return frame


# PostgreSQL types whose text (COPY ... CSV under TimeZone UTC, DateStyle ISO, extra_float_digits 1) converts
# (extract.transform) to exactly what the driver's object for the same value converts to: bool, int2/4/8, text, float8
# (shortest exact text), bpchar, varchar, date, timestamp, timestamptz, numeric. Not float4 (its shortest text is
# not the double psycopg hands over), nor types whose text differs from the object's (bytea, uuid, arrays, ...).
COPY_TEXT_TYPES = {16, 20, 21, 23, 25, 701, 1042, 1043, 1082, 1114, 1184, 1700}


def adbc_postgresql() -> Any:
    """ADBC's PostgreSQL DB-API module (``adbc-driver-postgresql``), or None where it is not installed.

    ``DRIFTLESS_SQL_ADBC=0`` turns it off: windows are then read through psycopg's text COPY.
    """
    if is_off(settings().sql_adbc):
        return None
    try:
        import adbc_driver_postgresql.dbapi as dbapi  # type: ignore[import-untyped]
    except ImportError:
        return None
    return dbapi


def _arrow_frame(table: pa.Table, names: list[str]) -> pd.DataFrame:
    """An Arrow chunk as a DataFrame of ``pd.ArrowDtype`` columns (no copy, NULL kept apart from NaN and '').

    A column ADBC hands over as an extension type (``arrow.opaque`` or ``arrow.json`` over text) is replaced by
    its storage (the text).
    """
    columns = []
    for col in table.columns:
        if isinstance(col.type, pa.BaseExtensionType):
            col = pa.chunked_array([c.storage for c in col.chunks], type=col.type.storage_type)
        columns.append(pd.Series(pd.arrays.ArrowExtensionArray(col), copy=False))
    return pd.DataFrame(dict(zip(names, columns, strict=True)), copy=False)


def _first_line(exc: Exception, url: Any) -> str:
    """The first line of an error's message, without the connection's password."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    password = getattr(url, "password", None)
    return text.replace(password, "***") if password else text


NUMERIC_OID = 1700


def _type_codes(conn, stmt) -> list[int]:
    """The PostgreSQL type OIDs of the statement's columns (from an empty result)."""
    return [d.type_code for d in conn.execute(stmt.limit(0)).cursor.description or []]


class _CopyStream(io.RawIOBase):
    """A psycopg ``Copy`` (``COPY ... TO STDOUT``) as a readable byte stream, for pyarrow's CSV reader.

    Arrow reads ahead on a thread of its own. ``stop`` must be called before the ``Copy`` block is left:
    leaving it early (the consumer stopped or failed) cancels the COPY and reads the connection, which a read
    still in progress on Arrow's thread would also do, and the two would wait for each other forever.
    """

    def __init__(self, copy: Any) -> None:
        self._copy = copy
        self._pending = memoryview(b"")
        self._lock = threading.Lock()
        self._stopped = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # Fills the whole buffer (a row per COPY message: one row per call would cost a Python call per row).
        with self._lock:
            if self._stopped:
                return 0
            view = memoryview(buffer).cast("B")
            size, n = len(view), 0
            while n < size:
                if not self._pending:
                    block = self._copy.read()
                    if not block:
                        break
                    self._pending = memoryview(block)
                k = min(size - n, len(self._pending))
                view[n:n + k] = self._pending[:k]
                self._pending = self._pending[k:]
                n += k
            return n

    def stop(self) -> None:
        """No more reads from the COPY; waits for a read in progress to end."""
        with self._lock:
            self._stopped = True


def _chunks(reader: pcsv.CSVStreamingReader, size: int) -> Iterator[pa.Table]:
    """The reader's batches regrouped into tables of exactly ``size`` rows (the last one fewer)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


class SqlSource:
    """Rows whose cursor column lies in ``[window.start - lag, window.end)``, ordered by cursor and key.

    Results stream through a server-side cursor, so memory holds one chunk (``chunk_size`` rows)
    at a time, whatever the size of the window.
    """

    def __init__(self, spec: PipelineSpec, engine: Engine | None = None) -> None:
        if not isinstance(spec.source, SqlSourceSpec):
            raise TypeError(f"pipeline {spec.name!r}: SqlSource needs a source of type 'sql'")
        self.spec = spec
        self.source: SqlSourceSpec = spec.source
        self.engine = engine or engine_for(resolve_url(self.source.connection))

    def _selectable(self):
        # Untyped columns: the driver hands over its raw values and SQLAlchemy applies no result processor.
        # A spec type given here would convert in the driver (text -> numeric, text -> date) and one bad value
        # would fail the whole window; driftless converts instead (extract.transform), quarantining bad values.
        # JSON is read as its text (read_type), so that it loads exactly as written.
        cols = [column(c.source_name, read_type(c.type)) for c in self.spec.source_columns]
        if self.source.table:
            schema, _, name = self.source.table.rpartition(".")
            return table(name, *cols, schema=schema or None)
        return text(self.source.query).columns(*cols).subquery("src")

    def statement(self, window: Window):
        """The SELECT for one window, with the bounds as bound parameters."""
        src = self._selectable()
        cursor_spec = self.spec.column(self.source.cursor)
        cursor = src.c[cursor_spec.source_name]
        key_cols = [src.c[self.spec.column(k).source_name] for k in self.source.primary_key]
        in_window = window.condition(cursor, cursor_spec.type, self.source.lag, null_cursor=self.source.null_cursor,
                                     bind_type=sql_type(cursor_spec.type))
        return (
            select(*[src.c[c.source_name].label(c.name) for c in self.spec.source_columns])
            .where(in_window)
            .order_by(cursor, *key_cols)
        )

    def null_cursor_count(self) -> int:
        """How many source rows have a NULL cursor: they lie in no window (``source.null_cursor`` says what then)."""
        src = self._selectable()
        cursor = src.c[self.spec.column(self.source.cursor).source_name]
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(src).where(cursor.is_(None))).scalar_one())

    def refuse_null_cursors(self) -> None:
        """Under ``null_cursor: fail``, raise when the source holds rows with a NULL cursor (no window has them)."""
        if self.source.null_cursor != "fail":
            return
        found = self.null_cursor_count()
        if found:
            raise SourceError(
                f"pipeline {self.spec.name!r}: {found} row(s) of {self.source.table or 'the query'} have a NULL cursor "
                f"{self.source.cursor!r}, so they lie in no window; nothing was loaded. State what to do with them "
                "in the spec: source.null_cursor: every_window (read them in every window and upsert them) or skip "
                "(leave them out; each window's checks count them)"
            )

    def read(self, window: Window) -> Iterator[pd.DataFrame]:
        """Yield the window's rows as DataFrames of at most ``chunk_size`` rows."""
        stmt = self.statement(window)
        names = [c.name for c in self.spec.source_columns]
        try:
            self.refuse_null_cursors()
            with self.engine.connect() as conn:
                if self._copy_columns(conn, stmt):
                    adbc = adbc_postgresql()
                    if adbc is not None:
                        yield from self._adbc_frames(adbc, conn, stmt, names)
                    else:
                        yield from self._copy_frames(conn, stmt, names)
                    return
                result = conn.execution_options(stream_results=True, yield_per=self.spec.chunk_size).execute(stmt)
                for rows in result.partitions():
                    # Plain tuples: pandas probes each SQLAlchemy Row with hasattr(), and a Row answers a
                    # missing attribute by building an exception (2 per row: half of a 1M-row extract).
                    yield _frame([tuple(r) for r in rows], names)
        except SQLAlchemyError as exc:
            raise SourceError(
                f"pipeline {self.spec.name!r}: reading {self.source.table or 'query'} from "
                f"{redact_url(self.engine.url)} failed: {error_detail(exc, self.engine.url)}"
            ) from exc

    def _copy_columns(self, conn, stmt) -> bool:
        """Whether the window can be read as text through ``COPY (SELECT ...) TO STDOUT`` with the same result.

        PostgreSQL through psycopg 3, every selected column of a type in ``COPY_TEXT_TYPES``, and nothing that
        reads the raw values before conversion with other rules: no ``format`` or separators on a column, no
        ``transforms`` cast, derive or function (they would see text where the driver hands over objects).
        """
        t = self.spec.transforms
        if (not capabilities(conn.engine.url).streams_copy or conn.dialect.driver != "psycopg"
                or t.cast or t.derive or t.function):
            return False
        if any(Parsing.of(c) != DEFAULT_PARSING for c in self.spec.source_columns):
            return False
        codes = _type_codes(conn, stmt)
        return bool(codes) and all(code in COPY_TEXT_TYPES for code in codes)

    def _adbc_frames(self, adbc: Any, conn, stmt, names: list[str]) -> Iterator[pd.DataFrame]:
        """The window as chunks of typed Arrow columns, read by ADBC's PostgreSQL driver (binary COPY, in C++).

        bigint/integer/smallint arrive as int64/int32/int16, timestamptz as ``timestamp[us, UTC]``, timestamp as
        ``timestamp[us]`` (its wall time), date as ``date32``, text/varchar/char as strings (NULL apart from ''),
        double as float64 (a NaN kept apart from NULL), boolean as bool, and numeric as PostgreSQL's exact text
        (CAST in the SELECT; 'NaN' and 'Infinity' are refused by conversion as on the other paths).
        Each chunk is a DataFrame of ``pd.ArrowDtype`` columns: ``driftless.extract.transform`` checks a column
        that already has its spec type without going through text (``_convert_arrow``).
        """
        import psycopg

        # The bounds are written into the SELECT as literals, quoted by psycopg as it would send them: ADBC reads
        # a query through COPY (streamed) only without bound parameters; with them, libpq would hold the whole
        # result in memory (~330 MB more for 1M rows).
        # numeric as PostgreSQL's own text: ADBC's decoding of binary numeric into text cost 0.46 s of client CPU per
        # 1M values, the server's text output a fifth of that (and the text is the exact value either way).
        numeric = {i for i, code in enumerate(_type_codes(conn, stmt)) if code == NUMERIC_OID}
        if numeric:
            stmt = stmt.with_only_columns(*[cast(c.element, Text).label(c.name) if i in numeric else c
                                            for i, c in enumerate(stmt.selected_columns)])
        compiled = stmt.compile(dialect=conn.dialect)
        with psycopg.ClientCursor(conn.connection.driver_connection) as quoting:
            query = quoting.mogrify(compiled.string, compiled.construct_params())
        url = self.engine.url.set(drivername="postgresql")
        if "connect_timeout" not in url.query:  # the timeout every engine gets (driftless.targets.connect_args)
            url = url.update_query_dict({"connect_timeout": str(connect_timeout_s(url))})
        uri = url.render_as_string(hide_password=False)
        # ADBC reads in batches of about this many bytes; the hint follows chunk_size (a chunk of the widest
        # rows fits a few batches), so memory stays bounded by the chunk as on the other paths.
        hint = min(max(self.spec.chunk_size * 64, 1 << 16), 1 << 24)
        try:
            with adbc.connect(uri) as connection, connection.cursor() as cursor:
                for setting in ("TimeZone = 'UTC'", "client_encoding = 'UTF8'"):
                    cursor.execute(f"SET {setting}")  # UTC: a naive cursor column compares with UTC bounds
                cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(hint)})
                cursor.execute(query)
                reader = cursor.fetch_record_batch()
                try:
                    for table in _chunks(reader, self.spec.chunk_size):
                        yield _arrow_frame(table, names)
                finally:  # also when the consumer stops early: ends the COPY before the connection closes
                    reader.close()
        except adbc.Error as exc:
            raise SourceError(
                f"pipeline {self.spec.name!r}: reading {self.source.table or 'query'} from "
                f"{redact_url(self.engine.url)} failed: {type(exc).__name__}: {_first_line(exc, self.engine.url)}"
            ) from exc

    def _copy_frames(self, conn, stmt, names: list[str]) -> Iterator[pd.DataFrame]:
        """The window as chunks of raw text (NULL kept apart from ''), read by COPY into pyarrow's CSV reader.

        Every non-NULL value is quoted (FORCE_QUOTE), so an unquoted empty field is NULL and ``""`` is ''.
        Timestamps are printed in UTC with microseconds, numerics exactly as stored, doubles in their shortest
        exact form; ``driftless.extract.transform`` converts the text as it converts any other source's.
        """
        import psycopg

        compiled = stmt.compile(dialect=conn.dialect)
        params = compiled.construct_params()
        for setting in ("TimeZone = 'UTC'", "DateStyle = 'ISO, YMD'", "extra_float_digits = 1",
                        "client_encoding = 'UTF8'"):
            conn.exec_driver_sql(f"SET LOCAL {setting}")
        cursor = conn.connection.driver_connection.cursor()
        try:
            with cursor.copy(f"COPY ({compiled.string}) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)", params) as copy:
                raw = _CopyStream(copy)
                stream = io.BufferedReader(raw, 1 << 18)
                # Arrow reads up to 32 blocks ahead of the consumer: 256 KB blocks bound that to ~8 MB of CSV
                # (4 MB blocks held ~130 MB more at the same speed).
                try:
                    reader = pcsv.open_csv(
                        stream,
                        read_options=pcsv.ReadOptions(column_names=names, block_size=1 << 18),
                        parse_options=pcsv.ParseOptions(newlines_in_values=True),
                        convert_options=pcsv.ConvertOptions(
                            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True,
                            null_values=[""], quoted_strings_can_be_null=False))
                except pa.ArrowInvalid as exc:
                    raw.stop()
                    if "Empty CSV file" in str(exc):
                        return  # an empty window
                    raise
                try:
                    for table in _chunks(reader, self.spec.chunk_size):
                        yield table.to_pandas()
                finally:  # also when the consumer stops early (GeneratorExit) or fails: see _CopyStream
                    raw.stop()
        except (psycopg.Error, pa.ArrowException) as exc:
            raise SourceError(
                f"pipeline {self.spec.name!r}: reading {self.source.table or 'query'} from "
                f"{redact_url(self.engine.url)} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
            ) from exc
        finally:
            cursor.close()

    def count(self, window: Window) -> int:
        """How many source rows the window holds now (for reconciliation)."""
        stmt = self.statement(window).order_by(None).subquery()
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(stmt)).scalar_one())

    def sums(self, window: Window, columns: list[str]) -> dict[str, Any]:
        """Sums of ``columns`` over the window's rows now, summed by the source's database (for reconciliation).

        The source reads untyped columns (raw values); a sum is read as the spec's type, e.g. a SQLite REAL
        sum as numeric(p,s) (its float noise past the scale is not a difference).
        """
        sub = self.statement(window).order_by(None).subquery()
        sums = [func.sum(sub.c[c], type_=sql_type(self.spec.column(c).type)) for c in columns]
        with self.engine.connect() as conn:
            row = conn.execute(select(*sums)).one()
        return dict(zip(columns, row, strict=False))

    def close(self) -> None:
        """Release the source's connections."""
        self.engine.dispose()

