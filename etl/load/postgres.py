"""PostgreSQL target: COPY into a temporary staging table, then one ``INSERT ... ON CONFLICT`` merge.

Unchanged rows cost no write: the update only fires ``WHERE (target) IS DISTINCT FROM (excluded)``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.csv as pacsv
from sqlalchemy import Connection, Table, text

from etl.load.base import Loader

COPY_BLOCK = 1 << 20


class PostgresLoader(Loader):
    """Loads into PostgreSQL; concurrent loads of one table serialize on a transaction advisory lock."""

    def _stage_name(self, target: Table) -> str:
        return self.quote(f"_driftless_stage_{target.name}"[:63])

    @contextmanager
    def transaction(self, target: Table) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
                         {"name": f"driftless:{target.fullname}"})
            conn.exec_driver_sql(
                f"CREATE TEMPORARY TABLE {self._stage_name(target)} "
                f"(LIKE {self.quote_table(target)} INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            yield conn

    def stage(self, conn: Connection, target: Table, chunk: pa.Table) -> int:
        if chunk.num_rows == 0:
            return 0
        # Arrow writes CSV in C: NULL as an unquoted empty field, '' as "" (what COPY's csv expects).
        buf = io.BytesIO()
        pacsv.write_csv(chunk, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        columns = ", ".join(self.quote(name) for name in chunk.column_names)
        cursor = conn.connection.driver_connection.cursor()
        with cursor.copy(f"COPY {self._stage_name(target)} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
            view = buf.getbuffer()
            for offset in range(0, len(view), COPY_BLOCK):
                copy.write(view[offset : offset + COPY_BLOCK])
            del view
        return 0

    def merge(self, conn: Connection, target: Table, cursor_column: str) -> int:
        keys = [self.quote(c.name) for c in target.primary_key.columns]
        key_names = {c.name for c in target.primary_key.columns}
        cols = [self.quote(c.name) for c in target.columns]
        others = [self.quote(c.name) for c in target.columns if c.name not in key_names]
        stage = self._stage_name(target)
        tgt = self.quote_table(target)
        # Of two staged rows with one key, keep the one with the latest cursor value.
        select = (
            f"SELECT DISTINCT ON ({', '.join(keys)}) {', '.join(cols)} FROM {stage} "
            f"ORDER BY {', '.join(keys)}, {self.quote(cursor_column)} DESC NULLS LAST"
        )
        if others:
            action = (
                "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in others)
                + f" WHERE ({', '.join(f'{tgt}.{c}' for c in others)}) IS DISTINCT FROM "
                f"({', '.join(f'EXCLUDED.{c}' for c in others)})"
            )
        else:
            action = "DO NOTHING"
        sql = f"INSERT INTO {tgt} ({', '.join(cols)}) {select} ON CONFLICT ({', '.join(keys)}) {action}"
        return max(conn.exec_driver_sql(sql).rowcount, 0)
