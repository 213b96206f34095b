"""SQLite target: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` changed, in one immediate transaction (WAL).

The rows go straight into the target through the sqlite3 module's ``executemany`` of one prepared
statement with tuples: SQLAlchemy Core with dicts costs about twice as much per row. Values are
converted column by column in Arrow to exactly what SQLAlchemy's SQLite types would bind
(timestamps as ``YYYY-MM-DD HH:MM:SS.ffffff`` text, decimals as floats, booleans as 0/1), so rows
read back through SQLAlchemy as they do when written by Core.

* upsert: ``DO UPDATE SET ... WHERE`` some column ``IS NOT`` its new value; later records win.
* append: ``DO NOTHING``; the first record of a key wins.
* replace: the rows go into a new table that replaces the target (``DROP`` + ``RENAME``) inside the
  transaction; readers in WAL mode see the old table until commit.
* deletes: the window's keys are also written to a temporary table for the anti-join.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import URL, Column, Connection, Engine, Float, MetaData, Numeric, Table

from driftless.errors import LoadError
from driftless.load.base import Loader, Setup, naive_utc, sibling_table
from driftless.load.modes import Upsert, WriteMode
from driftless.targets.sqlite import SQLITE_EXACT_DIGITS
from driftless.targets.sqlite import engine as engine_for
from driftless.targets.sqlite.rowhash import SqliteHash

BUSY_TIMEOUT_MS = 60_000


def _refuse_inexact(target: Table) -> None:
    """Refuse decimals SQLite cannot hold exactly, before anything is written.

    SQLite keeps a NUMERIC value as a binary double: exact to 15 significant digits, silently rounded beyond.
    A ``numeric(p,s)`` with ``p`` above 15 could lose digits, so it is refused.
    """
    wide = [f"{c.name} numeric({c.type.precision},{c.type.scale})" for c in target.columns
            if isinstance(c.type, Numeric) and not isinstance(c.type, Float)
            and (c.type.precision or 0) > SQLITE_EXACT_DIGITS]
    if wide:
        raise LoadError(
            f"table {target.name!r}: SQLite stores numbers as binary doubles, exact only to "
            f"{SQLITE_EXACT_DIGITS} significant digits, so {', '.join(wide)} could lose digits silently. Use "
            f"numeric(p,s) with p <= {SQLITE_EXACT_DIGITS} for a SQLite target, or a PostgreSQL or MariaDB target")


class SqliteLoader(Loader):
    """Loads into a SQLite file in WAL mode. Concurrent loads wait on the database's write lock."""

    hash_dialect = SqliteHash

    def create_engine(self, url: URL) -> Engine:
        # pysqlite's own transaction handling defers BEGIN and skips DDL; take control so that
        # the whole load, DDL included, is one transaction that holds the write lock from its start.
        def connect(dbapi_conn: Any) -> None:
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.close()

        def begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine_for(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, on_connect=connect, on_begin=begin)

    def ensure_tables(self, target: Table) -> list[str]:
        """As ``Loader.ensure_tables``; refuses decimals SQLite cannot hold exactly (``_refuse_inexact``)."""
        _refuse_inexact(target)
        return super().ensure_tables(target)

    def dry_run_setup(self, conn: Connection, target: Table) -> list[str]:
        """As ``Loader.dry_run_setup``, with the same refusal as a real load (``_refuse_inexact``)."""
        _refuse_inexact(target)
        return super().dry_run_setup(conn, target)

    def _keys_table(self, target: Table) -> Table:
        keys = [Column(c.name, c.type) for c in target.primary_key.columns]
        return Table(f"_driftless_keys_{target.name}", MetaData(), *keys, schema="temp")

    def _into(self, target: Table) -> Table:
        if self.mode is not None and self.mode.swap:
            return sibling_table(target, f"_driftless_new_{target.name}")
        return target

    @contextmanager
    def _transaction(self, target: Table, setup: Setup | None = None) -> Iterator[Connection]:
        self._statements: dict[tuple[str, ...], str] = {}
        with self.engine.begin() as conn:
            if setup is not None:
                setup(conn)
            if self.mode is not None and self.mode.swap:
                into = self._into(target)
                into.drop(conn, checkfirst=True)
                into.create(conn)
                self.ensure_digest(conn, into)  # the replacing table keeps the target's row digest
            if self.mode is not None and self.mode.detects_deletes:
                keys = self._keys_table(target)
                keys.drop(conn, checkfirst=True)
                keys.create(conn)
            yield conn

    def _statement(self, into: Table, target: Table, columns: list[str]) -> str:
        mode = self.mode or Upsert(cursor_column="")
        keys = [c.name for c in target.primary_key.columns]
        others = [n for n in columns if n not in keys]
        q = self.quote
        sql = (f"INSERT INTO {self.quote_table(into)} ({', '.join(q(n) for n in columns)}) "
               f"VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT ({', '.join(q(k) for k in keys)}) ")
        if others and mode.on_conflict == "update":
            sql += ("DO UPDATE SET " + ", ".join(f"{q(n)} = excluded.{q(n)}" for n in others)
                    + " WHERE " + " OR ".join(f"{q(into.name)}.{q(n)} IS NOT excluded.{q(n)}" for n in others))
        else:
            sql += "DO NOTHING"
        return sql

    def stage(self, conn: Connection, target: Table, chunk: pa.Table) -> int:
        if self.mode is not None:
            chunk = self.mode.prepare(chunk, target)
        if chunk.num_rows == 0:
            return 0
        into = self._into(target)
        columns = chunk.column_names
        key = tuple(columns)
        if key not in self._statements:
            self._statements[key] = self._statement(into, target, columns)
        values = sqlite_columns(chunk)
        raw = conn.connection.driver_connection
        assert raw is not None  # a connection inside engine.begin() is checked out, never detached
        # Rows arrive ordered by cursor, so of two rows with one key the later (newer) one wins.
        try:
            cursor = raw.executemany(self._statements[key], zip(*values, strict=True))
        except sqlite3.Error as exc:  # the raw driver's errors: say what failed
            raise LoadError(f"writing rows into {target.fullname!r} failed: {exc}") from exc
        written = max(cursor.rowcount, 0)
        if self.mode is not None and self.mode.detects_deletes:
            keys = [columns.index(c.name) for c in target.primary_key.columns]
            table = self.quote(self._keys_table(target).name)
            raw.executemany(f"INSERT INTO temp.{table} VALUES ({', '.join('?' for _ in keys)})",
                            zip(*[values[i] for i in keys], strict=True))
        self.staged += chunk.num_rows
        return written

    def merge(self, conn: Connection, target: Table, mode: WriteMode) -> int:
        if mode.swap:  # stage() counted the rows written into the new table
            into = self._into(target)
            conn.exec_driver_sql(f"DROP TABLE {self.quote_table(target)}")
            conn.exec_driver_sql(f"ALTER TABLE {self.quote_table(into)} RENAME TO {self.quote(target.name)}")
        keys = self._keys_table(target) if mode.detects_deletes else None
        return self.apply_deletes(conn, target, mode, keys)


def sqlite_columns(chunk: pa.Table) -> list[list[Any]]:
    """A chunk's columns as lists of the Python values SQLAlchemy's SQLite types bind."""
    out = []
    for name in chunk.column_names:
        array = chunk[name]
        kind = array.type
        if pa.types.is_timestamp(kind):
            array = pc.cast(naive_utc(array), pa.string())  # SQLAlchemy's SQLite DATETIME storage format
        elif pa.types.is_date(kind):
            array = pc.cast(array, pa.string())
        elif pa.types.is_decimal(kind):
            # SQLAlchemy binds Numeric as float(Decimal); parsing the exact text rounds the same way.
            array = pc.cast(pc.cast(array, pa.string()), pa.float64())
        elif pa.types.is_boolean(kind):
            array = pc.cast(array, pa.int8())
        values = array.to_pylist()
        out.append(values)
    return out
