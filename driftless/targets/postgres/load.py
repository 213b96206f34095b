"""PostgreSQL target: COPY into a temporary staging table, then one set-based merge per write mode.

* upsert: ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE ... WHERE (target) IS DISTINCT FROM (excluded)``,
  so unchanged rows cost no write. A large window (over ``INDEX_THRESHOLD`` rows) without repeated keys
  uses ``MERGE ... WHEN MATCHED AND (target) IS DISTINCT FROM (staged) THEN UPDATE ... WHEN NOT MATCHED
  THEN INSERT`` instead (PostgreSQL 15+): one hash join, and unchanged rows are not even locked.
* append: the same with ``DO NOTHING``.
* replace: the staged rows go into a new table that replaces the target inside the transaction
  (``DROP`` + ``RENAME``, transactional in PostgreSQL): readers keep the old table until commit.

First load into an empty target: the load locks the target ``SHARE ROW EXCLUSIVE`` (other writers wait
until commit) and, if it is still empty, COPYs the rows straight into it, skipping staging and merge
(about half the time of a first load). The result is what the staged path gives: into an empty table
every mode inserts every record, and delete detection finds nothing. A repeated key fails its chunk's
COPY on the primary key; that chunk is rolled back to its savepoint, the rows copied so far move to the
staging table, and the load goes on the staged way (which keeps the latest record of each key).

A large window's staging table gets a unique index on the key; when that succeeds the window has no
repeated keys and the merge skips the ``DISTINCT ON`` sort of all staged rows (of two records with one
key the latest cursor value wins, or the first for append, whatever order they were staged in).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import errors as pg_errors
from sqlalchemy import URL, Column, Connection, Engine, MetaData, Table, text
from sqlalchemy.exc import IntegrityError

from driftless.errors import LoadError, error_detail
from driftless.load.base import Loader, Setup, naive_timestamps, sibling_table
from driftless.load.modes import WriteMode
from driftless.targets.postgres import engine as engine_for
from driftless.targets.postgres.rowhash import PostgresHash

#: Rows Arrow formats to CSV per batch, each batch written to the COPY as it is made.
CSV_BATCH_ROWS = 8192
#: Staged rows above which the staging table gets a unique index on the key before the merge (which
#: proves the window repeats no key, so the merge needs no ``DISTINCT ON`` sort of every staged row).
INDEX_THRESHOLD = 10_000
#: The first server version with ``MERGE`` (15): an upsert of a large window without repeated keys uses it.
MERGE_VERSION = (15,)
#: Memory for the merge's sort / hash steps (transaction-local; PostgreSQL's default is 4 MB).
MERGE_WORK_MEM = "128MB"


class _CopySink:
    """A write-only file for Arrow's CSV writer that passes each block straight into a COPY."""

    closed = False

    def __init__(self, copy: psycopg.Copy) -> None:
        self.copy = copy

    def write(self, data: bytes) -> int:
        self.copy.write(data)
        return len(data)

    def flush(self) -> None:
        pass


class PostgresLoader(Loader):
    """Loads into PostgreSQL; concurrent loads of one table serialize on a transaction advisory lock."""

    hash_dialect = PostgresHash

    def create_engine(self, url: URL) -> Engine:
        return engine_for(url)

    def _stage_name(self, target: Table) -> str:
        return f"_driftless_stage_{target.name}"[:63]

    def _new_name(self, target: Table) -> str:
        return f"_driftless_new_{target.name}"[:63]

    @contextmanager
    def ddl_lock(self, conn: Connection, target: Table) -> Iterator[None]:
        # Transactional DDL: the lock is held until ensure_tables' transaction ends.
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
                     {"name": f"driftless-ddl:{target.schema or ''}"})
        yield

    @contextmanager
    def _transaction(self, target: Table, setup: Setup | None = None) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
                         {"name": f"driftless:{target.fullname}"})
            conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")  # staged timestamps are naive UTC text
            if setup is not None:
                setup(conn)
            conn.exec_driver_sql(
                f"CREATE TEMPORARY TABLE {self.quote(self._stage_name(target))} "
                f"(LIKE {self.quote_table(target)}) ON COMMIT DROP"
            )
            yield conn

    def claim_empty(self, conn: Connection, target: Table) -> bool:
        """Whether the target is empty, and stays so for other writers until this transaction ends.

        A cheap look first (a table with rows needs no lock); an empty one is locked ``SHARE ROW
        EXCLUSIVE`` (other writers wait until commit, readers do not), then looked at again: a writer
        that committed rows in between is seen by the second look (READ COMMITTED: a new snapshot). Under a
        stricter isolation level (a server's ``default_transaction_isolation``) the first look fixes the
        snapshot, so the second could miss such rows: no fast path there.
        """
        tgt = self.quote_table(target)
        empty = f"SELECT NOT EXISTS (SELECT 1 FROM {tgt})"
        first = (f"SELECT current_setting('transaction_isolation') = 'read committed' "
                 f"AND NOT EXISTS (SELECT 1 FROM {tgt})")
        if not conn.exec_driver_sql(first).scalar():
            return False
        conn.exec_driver_sql(f"LOCK TABLE {tgt} IN SHARE ROW EXCLUSIVE MODE")
        return bool(conn.exec_driver_sql(empty).scalar())

    def stage(self, conn: Connection, target: Table, chunk: pa.Table) -> int:
        if self.mode is not None:
            chunk = self.mode.prepare(chunk, target)
        if chunk.num_rows == 0:
            return 0
        # Timestamps go as naive UTC text (fast to format); the transaction's TimeZone is UTC.
        chunk = naive_timestamps(chunk)
        if self.direct is None:
            self.direct = self.mode is not None and self.claim_empty(conn, target)
        if self.direct:
            # Straight into the (empty, locked) target. A repeated key fails this chunk's COPY on the
            # primary key: the chunk is rolled back to its savepoint and the load goes the staged way.
            try:
                with conn.begin_nested():
                    self._copy(conn, target, self.quote_table(target), chunk)
            except LoadError as exc:
                if not isinstance(exc.__cause__, pg_errors.UniqueViolation):
                    raise
                self._leave_direct(conn, target)
            else:
                self.direct_rows += chunk.num_rows
                return 0
        self._copy(conn, target, self.quote(self._stage_name(target)), chunk)
        self.staged += chunk.num_rows
        return 0

    def _leave_direct(self, conn: Connection, target: Table) -> None:
        """Move the rows copied straight into the target so far into staging; the load goes on staged.

        Under the load's lock the target held nothing but this load's rows since ``claim_empty``.
        """
        cols = ", ".join(self.quote(c.name) for c in target.columns)
        tgt, stage = self.quote_table(target), self.quote(self._stage_name(target))
        moved = conn.exec_driver_sql(f"INSERT INTO {stage} ({cols}) SELECT {cols} FROM {tgt}").rowcount
        conn.exec_driver_sql(f"DELETE FROM {tgt}")
        self.staged += max(moved, 0)
        self.direct, self.direct_rows = False, 0

    def _copy(self, conn: Connection, target: Table, into: str, chunk: pa.Table) -> None:
        """COPY a chunk (timestamps naive UTC) into ``into`` (the staging table or the target)."""
        # Arrow writes CSV in C: NULL as an unquoted empty field, '' as "" (what COPY's csv expects).
        columns = ", ".join(self.quote(name) for name in chunk.column_names)
        raw = conn.connection.driver_connection
        assert raw is not None  # a connection inside a transaction is checked out, never detached
        cursor = raw.cursor()
        try:
            with cursor.copy(f"COPY {into} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
                # Arrow hands over each batch of CSV rows as it formats them: the chunk's CSV text is
                # never held whole (it was the load's largest allocation).
                pacsv.write_csv(chunk, _CopySink(copy), pacsv.WriteOptions(
                    include_header=False, quoting_style="needed", batch_size=CSV_BATCH_ROWS))
        except psycopg.Error as exc:  # the raw driver's errors: say what failed, keep the server's words
            detail = error_detail(exc, self.url)
            raise LoadError(f"staging rows for {target.fullname!r} (COPY) failed: {detail}") from exc

    def _index_stage(self, conn: Connection, target: Table, analyze: bool) -> bool:
        """Index the staging table on the key; True when the keys are unique (no dedup needed).

        ``analyze``: gather the staging table's statistics too (for delete detection's anti-join; the
        merge's own hash join is planned well from the table's size alone).
        """
        stage = self.quote(self._stage_name(target))
        keys = ", ".join(self.quote(c.name) for c in target.primary_key.columns)
        unique = True
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(f"CREATE UNIQUE INDEX ON {stage} ({keys})")
        except IntegrityError as exc:
            if not isinstance(exc.orig, pg_errors.UniqueViolation):
                raise
            unique = False
            conn.exec_driver_sql(f"CREATE INDEX ON {stage} ({keys})")
        if analyze:
            conn.exec_driver_sql(f"ANALYZE {stage}")
        return unique

    def _has_merge(self, conn: Connection) -> bool:
        return (conn.dialect.server_version_info or (0,)) >= MERGE_VERSION

    def merge(self, conn: Connection, target: Table, mode: WriteMode) -> int:
        if self.direct:  # the rows are in the target already; a replace has nothing to swap
            return self.direct_rows + self.apply_deletes(conn, target, mode, None)
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{MERGE_WORK_MEM}'")
        key_names = [c.name for c in target.primary_key.columns]
        keys = [self.quote(k) for k in key_names]
        cols = [self.quote(c.name) for c in target.columns]
        others = [self.quote(c.name) for c in target.columns if c.name not in key_names]
        stage_name = self._stage_name(target)
        stage = self.quote(stage_name)
        # Whether the staged keys are unique (None: not known; small windows are deduplicated regardless).
        unique = self._index_stage(conn, target, mode.detects_deletes) if self.staged > INDEX_THRESHOLD else None

        into = target
        if mode.swap:
            into = sibling_table(target, self._new_name(target))
            into.drop(conn, checkfirst=True)
            into.create(conn)
            self.ensure_digest(conn, into)  # the replacing table keeps the target's row digest
        tgt = self.quote_table(into)
        if others and mode.on_conflict == "update":
            action = (
                "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in others)
                + f" WHERE ({', '.join(f'{tgt}.{c}' for c in others)}) IS DISTINCT FROM "
                f"({', '.join(f'EXCLUDED.{c}' for c in others)})"
            )
        else:
            action = "DO NOTHING"
        insert = f"INSERT INTO {tgt} ({', '.join(cols)}) "
        on_conflict = f" ON CONFLICT ({', '.join(keys)}) {action}"
        plain = f"SELECT {', '.join(cols)} FROM {stage}"
        # Of two staged rows with one key, keep the latest (upsert/replace) or first (append) cursor value.
        order = "DESC NULLS LAST" if mode.latest_wins else "ASC NULLS LAST"
        dedup = (f"SELECT DISTINCT ON ({', '.join(keys)}) {', '.join(cols)} FROM {stage} "
                 f"ORDER BY {', '.join(keys)}, {self.quote(mode.cursor_column)} {order}")
        if unique and action != "DO NOTHING" and not mode.swap and self._has_merge(conn):
            # One join of staging and target; unchanged rows are left alone, neither written nor locked
            # (ON CONFLICT DO UPDATE locks, and so WAL-logs, every conflicting row, changed or not).
            # MERGE would let a repeated key pass silently, hence only once the unique index proved none.
            on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
            merge = (f"MERGE INTO {tgt} AS t USING {stage} AS s ON {on} "
                     f"WHEN MATCHED AND ({', '.join(f't.{c}' for c in others)}) IS DISTINCT FROM "
                     f"({', '.join(f's.{c}' for c in others)}) "
                     f"THEN UPDATE SET {', '.join(f'{c} = s.{c}' for c in others)} "
                     f"WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) VALUES ({', '.join(f's.{c}' for c in cols)})")
            written = max(conn.exec_driver_sql(merge).rowcount, 0)
        elif unique:
            written = max(conn.exec_driver_sql(insert + plain + on_conflict).rowcount, 0)
        else:
            written = max(conn.exec_driver_sql(insert + dedup + on_conflict).rowcount, 0)

        if mode.swap:
            # Transactional DDL: readers see the old table until commit, then the new one.
            conn.exec_driver_sql(f"DROP TABLE {self.quote_table(target)}")
            conn.exec_driver_sql(f"ALTER TABLE {tgt} RENAME TO {self.quote(target.name)}")
            if target.primary_key.name and into.primary_key.name:
                conn.exec_driver_sql(
                    f"ALTER TABLE {self.quote_table(target)} RENAME CONSTRAINT "
                    f"{self.quote(cast(str, into.primary_key.name))} "
                    f"TO {self.quote(cast(str, target.primary_key.name))}"
                )
        keys_table = Table(stage_name, MetaData(), *[Column(k, target.c[k].type) for k in key_names])
        return written + self.apply_deletes(conn, target, mode, keys_table)
