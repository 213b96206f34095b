"""SQLite target: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` changed, in one immediate transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
from sqlalchemy import URL, Connection, Engine, Table, create_engine, event, or_
from sqlalchemy.dialects.sqlite import insert

from etl.load.base import Loader, rows_for_core

BUSY_TIMEOUT_MS = 60_000


class SqliteLoader(Loader):
    """Loads into a SQLite file in WAL mode. Concurrent loads wait on the database's write lock."""

    def create_engine(self, url: URL) -> Engine:
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        # pysqlite's own transaction handling defers BEGIN and skips DDL; take control so that
        # the whole load, DDL included, is one transaction that holds the write lock from its start.
        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    @contextmanager
    def transaction(self, target: Table) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def stage(self, conn: Connection, target: Table, chunk: pa.Table) -> int:
        if chunk.num_rows == 0:
            return 0
        stmt = insert(target)
        keys = [c.name for c in target.primary_key.columns]
        others = [c.name for c in target.columns if c.name not in keys]
        if others:
            stmt = stmt.on_conflict_do_update(
                index_elements=keys,
                set_={name: stmt.excluded[name] for name in others},
                where=or_(*[target.c[name].is_distinct_from(stmt.excluded[name]) for name in others]),
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=keys)
        # Rows arrive ordered by cursor, so of two rows with one key the later (newer) one wins.
        result = conn.execute(stmt, rows_for_core(chunk, target))
        return max(result.rowcount, 0)

    def merge(self, conn: Connection, target: Table, cursor_column: str) -> int:
        return 0  # stage() already merged into the target
