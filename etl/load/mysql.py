"""MariaDB / MySQL target: ``INSERT ... ON DUPLICATE KEY UPDATE`` inside a ``GET_LOCK`` section."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
from sqlalchemy import URL, Connection, Engine, Table, create_engine, text
from sqlalchemy.dialects.mysql import insert

from etl.errors import LoadError
from etl.load.base import Loader, rows_for_core

LOCK_TIMEOUT_S = 600


class MySqlLoader(Loader):
    """Loads into MariaDB or MySQL; concurrent loads of one table serialize on a named lock."""

    def create_engine(self, url: URL) -> Engine:
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        return create_engine(url, pool_pre_ping=True)

    @contextmanager
    def transaction(self, target: Table) -> Iterator[Connection]:
        name = f"driftless:{target.fullname}"[:64]
        with self.engine.connect() as conn:
            got = conn.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": LOCK_TIMEOUT_S}).scalar()
            conn.commit()
            if got != 1:
                raise LoadError(f"another load of {target.fullname!r} held its lock for {LOCK_TIMEOUT_S}s")
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                conn.commit()

    def stage(self, conn: Connection, target: Table, chunk: pa.Table) -> int:
        if chunk.num_rows == 0:
            return 0
        stmt = insert(target)
        keys = {c.name for c in target.primary_key.columns}
        others = [c.name for c in target.columns if c.name not in keys]
        first = others[0] if others else next(iter(keys))
        stmt = stmt.on_duplicate_key_update({n: stmt.inserted[n] for n in others} or {first: stmt.inserted[first]})
        result = conn.execute(stmt, rows_for_core(chunk, target))
        # MySQL counts 1 per insert, 2 per changed row, 0 per unchanged row.
        return max(result.rowcount, 0)

    def merge(self, conn: Connection, target: Table, cursor_column: str) -> int:
        return 0
