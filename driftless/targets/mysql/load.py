"""MariaDB / MySQL target: ``LOAD DATA LOCAL INFILE`` into a temporary staging table, then a set-based merge.

The staging table has the target's primary key, and rows are loaded with ``REPLACE`` (of two records
with one key the later, i.e. newer, wins) or ``IGNORE`` (append: the first wins), so it holds one row per key.

* upsert: ``UPDATE target JOIN stage ... SET t.c = s.c, ...``: the server compares each joined row with
  what it would write and rewrites only rows that changed. Its reply counts the rows matched (staged
  keys the target holds) and changed; when some staged key was not matched,
  ``INSERT ... SELECT ... LEFT JOIN target ... WHERE target.key IS NULL`` adds the new keys (a nightly
  load of existing keys skips that second pass over the window).
  (One ``INSERT ... SELECT ... ON DUPLICATE KEY UPDATE`` took 3x longer on a nightly load where most
  keys exist: InnoDB attempts each insert, hits the duplicate, then updates.)
* append: only the insert of new keys.
* replace: ``DELETE`` every row, then insert the staged ones, in the load transaction. MariaDB cannot
  swap tables inside a transaction (``RENAME TABLE`` commits implicitly, which would separate the data
  from its watermark), so the swap is InnoDB's MVCC: readers see the old rows until commit.

First load into an empty target: a locking read finds the target empty and locks its key range (other
writers wait until commit; ``claim_empty``), then ``LOAD DATA`` writes straight into it, with the same
``REPLACE`` / ``IGNORE`` that deduplicates the staging table, skipping staging and merge.

The whole load runs inside a ``GET_LOCK`` section, so concurrent loads of one table serialize. When the
server (or the URL's ``local_infile=0``) forbids ``LOCAL``, staging falls back to multi-row INSERTs.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pymysql
from sqlalchemy import URL, Column, Connection, Engine, MetaData, PrimaryKeyConstraint, Table, delete, inspect, text
from sqlalchemy.exc import OperationalError

from driftless.errors import LoadError, error_detail
from driftless.load.base import Loader, Setup, as_text, sibling_table, text_scalar
from driftless.load.evolution import evolve, plan_changes
from driftless.load.modes import WriteMode
from driftless.targets.mysql import engine as engine_for
from driftless.targets.mysql.rowhash import MySqlHash

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 600
DUPLICATE_KEY = 1062
#: Engine of the private staging table. InnoDB temporary tables keep no redo log, and the merge's join
#: probes them in the buffer pool; MyISAM (no undo either) loaded about as fast but made each probe of the
#: join a read of its data file, which doubled the join's time (issue 13).
STAGE_ENGINE = "InnoDB"
#: Server errors meaning "LOAD DATA LOCAL is not allowed here" (MySQL 1148, 3948; MariaDB 4166).
LOCAL_FORBIDDEN = {1148, 3948, 4166}
# LOAD DATA's default format: tab-separated, backslash escapes, \N for NULL.
_ESCAPES = [("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\x00", "\\0")]
_UPDATE_INFO = re.compile(r"Rows matched: (?P<matched>\d+)\s+Changed: (?P<changed>\d+)")
_LOAD_INFO = re.compile(r"Records: (?P<records>\d+)\s+Deleted: (?P<deleted>\d+)\s+Skipped: (?P<skipped>\d+)")
_SPECIAL_BYTES = np.array([ord(raw) for raw, _ in _ESCAPES], dtype=np.uint8)
# LOAD DATA's NULL, field and line separators, as Arrow scalars made without converting Python values (text_scalar)
NULL_TEXT, TAB, NEWLINE = text_scalar("\\N"), text_scalar("\t"), text_scalar("\n")


def _needs_escape(array: pa.Array) -> bool:
    """Whether any value holds a byte LOAD DATA must see escaped (scans the value buffer with numpy)."""
    data = array.buffers()[2]
    return data is not None and bool(np.isin(np.frombuffer(data, dtype=np.uint8), _SPECIAL_BYTES).any())


class MySqlLoader(Loader):
    """Loads into MariaDB or MySQL; concurrent loads of one table serialize on a named lock."""

    #: CREATE/ALTER TABLE commit implicitly (CREATE TEMPORARY TABLE does not).
    transactional_ddl = False
    hash_dialect = MySqlHash

    def create_engine(self, url: URL) -> Engine:
        connect_args = {}
        if "local_infile" not in url.query:
            connect_args["local_infile"] = True  # PyMySQL sends the file only when the client allows it
        return engine_for(url, connect_args=connect_args)

    def dry_run_setup(self, conn: Connection, target: Table) -> list[str]:
        """A temporary table of the target's name stands in for the target when the load would change its DDL.

        DDL commits implicitly here, so a dry run cannot create or alter the target and roll back. A
        temporary table shadows the real one of the same name for this connection (the dry run's own,
        closed afterwards): empty when the target does not exist yet, else a copy of it with the new
        columns (the dry run then reads the whole table once).
        """
        exists = inspect(conn).has_table(target.name, schema=target.schema)
        if exists:
            to_add, problems = plan_changes(conn, target)
            if problems:
                return evolve(conn, target)  # raises the LoadError naming them, before any DDL
            if not to_add:
                return []
        columns = [Column(c.name, c.type, nullable=c.nullable) for c in target.columns]
        stand_in = Table(target.name, MetaData(), *columns,
                         PrimaryKeyConstraint(*[c.name for c in target.primary_key.columns]),
                         schema=target.schema, prefixes=["TEMPORARY"])
        if not exists:
            stand_in.create(conn)
            return [f"created table {target.fullname}"]
        copy = self.quote(f"_driftless_dry_{target.name}"[:64])
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {copy} SELECT * FROM {self.quote_table(target)}")
        stand_in.create(conn)
        current = [c.name for c in target.columns if c not in to_add]
        names = ", ".join(self.quote(n) for n in current)
        conn.exec_driver_sql(f"INSERT INTO {self.quote_table(target)} ({names}) SELECT {names} FROM {copy}")
        conn.exec_driver_sql(f"DROP TEMPORARY TABLE {copy}")
        return [f"added column {c.name} {c.type.compile(dialect=conn.dialect)} to {target.fullname}" for c in to_add]

    def _stage_table(self, target: Table) -> Table:
        return sibling_table(target, f"_driftless_stage_{target.name}"[:64], temporary=True,
                             mysql_engine=STAGE_ENGINE)

    def _dedup(self) -> str:
        """How a staged record meets an earlier one with its key: REPLACE (latest wins) or IGNORE."""
        return "REPLACE" if self.mode is None or self.mode.latest_wins else "IGNORE"

    @contextmanager
    def ddl_lock(self, conn: Connection, target: Table) -> Iterator[None]:
        # DDL commits implicitly; a named lock belongs to the session and outlives those commits.
        name = f"driftless-ddl:{target.schema or self.url.database or ''}"[:64]  # server-wide: name the database
        if conn.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": LOCK_TIMEOUT_S}).scalar() != 1:
            raise LoadError(f"another process held the table-creation lock {name!r} for {LOCK_TIMEOUT_S}s")
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
            except OperationalError:  # the connection died: its lock died with it
                pass

    @contextmanager
    def _transaction(self, target: Table, setup: Setup | None = None) -> Iterator[Connection]:
        # Named locks are server-wide: the name holds the database (loads of one table name in two databases
        # do not wait for each other).
        name = f"driftless:{target.schema or self.url.database or ''}.{target.name}"[:64]
        self._local = True
        self._stage_rows: int | None = 0  # rows in the staging table, counted from LOAD DATA's replies
        with self.engine.connect() as conn:
            got = conn.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": LOCK_TIMEOUT_S}).scalar()
            conn.commit()
            if got != 1:
                raise LoadError(f"another load of {target.fullname!r} held its lock for {LOCK_TIMEOUT_S}s")
            stage = self._stage_table(target)
            try:
                with conn.begin():
                    if setup is not None:
                        setup(conn)
                    # Temporary tables: no implicit commit (only with the TEMPORARY keyword), private to
                    # this connection.
                    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {self.quote(stage.name)}")
                    stage.create(conn)
                    yield conn
            finally:
                try:
                    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {self.quote(stage.name)}")
                    conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                    conn.commit()
                except OperationalError:  # the connection died: its lock and temp table died with it
                    conn.invalidate()

    def claim_empty(self, conn: Connection, target: Table) -> bool:
        """Whether the target is empty, with its whole key range locked against other writers until commit.

        A locking read of an empty InnoDB table locks the gap to the index's end (``supremum``): another
        transaction's insert waits until this one ends, and one that inserted first (not yet committed)
        makes this read wait for it and then see its row. Gap locks exist under REPEATABLE READ and
        SERIALIZABLE only; under another isolation level there is no fast path.
        """
        tgt = self.quote_table(target)
        if conn.exec_driver_sql(f"SELECT 1 FROM {tgt} LIMIT 1").first() is not None:
            return False
        if conn.get_isolation_level() not in ("REPEATABLE READ", "SERIALIZABLE"):
            return False
        return conn.exec_driver_sql(f"SELECT 1 FROM {tgt} LIMIT 1 FOR UPDATE").first() is None

    def stage(self, conn: Connection, target: Table, chunk: pa.Table) -> int:
        if self.mode is not None:
            chunk = self.mode.prepare(chunk, target)
        if chunk.num_rows == 0:
            return 0
        if self.direct is None:
            self.direct = self.mode is not None and self.claim_empty(conn, target)
        # Into an empty target the rows go straight in, deduplicated as staging does (REPLACE / IGNORE),
        # so the target ends as the staged path would leave it.
        stage = self.quote_table(target) if self.direct else self.quote(self._stage_table(target).name)
        columns = ", ".join(self.quote(n) for n in chunk.column_names)
        texts = [as_text(chunk[n]) for n in chunk.column_names]
        raw = conn.connection.driver_connection
        assert raw is not None  # a connection inside a transaction is checked out, never detached
        cursor = raw.cursor()
        try:
            if self._local:
                try:
                    self._load_data(cursor, stage, columns, texts)
                    self._count_loaded(cursor)
                except pymysql.MySQLError as exc:
                    if not exc.args or exc.args[0] not in LOCAL_FORBIDDEN:
                        raise
                    log.info("LOAD DATA LOCAL is not allowed by %s (error %s); staging with multi-row INSERT",
                             conn.engine.url.host, exc.args[0])
                    self._local = False
            if not self._local:
                placeholders = ", ".join(["%s"] * len(texts))
                rows = zip(*[t.to_pylist() for t in texts], strict=True)
                verb = "REPLACE" if self._dedup() == "REPLACE" else "INSERT IGNORE"
                # PyMySQL rewrites an executemany of INSERT ... VALUES into multi-row statements (~1 MB each).
                self._stage_rows = None  # counted by the merge
                cursor.executemany(f"{verb} INTO {stage} ({columns}) VALUES ({placeholders})", list(rows))
        except pymysql.MySQLError as exc:  # the raw driver's errors: say what failed, keep the server's words
            detail = error_detail(exc, self.url)
            raise LoadError(f"staging rows for {target.fullname!r} failed: {detail}") from exc
        self._check_warnings(cursor, target)
        self.staged += chunk.num_rows
        return 0

    def _load_data(self, cursor, stage: str, columns: str, texts: list[pa.Array]) -> None:
        fields = []
        for t in texts:
            if pa.types.is_string(t.type) and _needs_escape(t):
                for raw, escaped in _ESCAPES:
                    t = pc.replace_substring(t, raw, escaped)
            fields.append(pc.fill_null(t, NULL_TEXT))
        lines = pc.binary_join_element_wise(*fields, TAB)
        lines = pc.binary_join_element_wise(lines, text_scalar(""), NEWLINE)  # a newline after each row
        # The value buffer of a string array is the rows back to back: exactly the file's bytes.
        _, offsets_buf, data = lines.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=len(lines) + 1, offset=4 * lines.offset)
        start, end = int(offsets[0]), int(offsets[-1])
        fd, path = tempfile.mkstemp(prefix="driftless-load-", suffix=".tsv", dir=self.scratch_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(memoryview(data)[start:end])
            cursor.execute(f"LOAD DATA LOCAL INFILE %s {self._dedup()} INTO TABLE {stage} CHARACTER SET utf8mb4 "
                           f"({columns})", (path,))
        finally:
            os.unlink(path)

    def _count_loaded(self, cursor) -> None:
        """Add the rows LOAD DATA left in the staging table (read, less replaced or skipped duplicates)."""
        info = (cursor._result.message or b"").decode() if cursor._result else ""  # noqa: SLF001 - PyMySQL keeps it here
        found = _LOAD_INFO.search(info)
        if found is None or self._stage_rows is None:
            self._stage_rows = None
            return
        self._stage_rows += int(found["records"]) - int(found["deleted"]) - int(found["skipped"])

    def _check_warnings(self, cursor, target: Table) -> None:
        """LOAD DATA LOCAL turns data errors into warnings; treat any as an error rather than lose data."""
        cursor.execute("SHOW WARNINGS LIMIT 20")
        warnings = [w for w in cursor.fetchall() if w[1] != DUPLICATE_KEY][:3]  # IGNORE reports duplicates
        if warnings:
            detail = "; ".join(f"{w[0]} {w[1]}: {w[2]}" for w in warnings)
            raise LoadError(f"staging rows for {target.fullname!r} changed values on the way in: {detail}")

    def merge(self, conn: Connection, target: Table, mode: WriteMode) -> int:
        stage = self._stage_table(target)
        tgt, stg = self.quote_table(target), self.quote(stage.name)
        if self.direct:  # the rows are in the (formerly empty) target: every one of them was written
            return self._staged_rows(conn, tgt) + self.apply_deletes(conn, target, mode, None)
        key_names = [c.name for c in target.primary_key.columns]
        q = self.quote
        cols = ", ".join(q(c.name) for c in target.columns)
        others = [q(c.name) for c in target.columns if c.name not in key_names]
        join = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in key_names)
        written = 0
        matched = None  # staged rows whose key the target holds; None: not known
        if mode.swap:
            written += max(conn.execute(delete(target)).rowcount, 0)
        elif others and mode.on_conflict == "update":
            # No WHERE comparing the columns: the server compares each joined row with what it would
            # write and skips unchanged ones itself (its "Changed" count); the "Rows matched" count then
            # tells whether any staged key is new, so the insert's anti-join pass is skipped when none is.
            update = (f"UPDATE {tgt} t JOIN {stg} s ON {join} SET "
                      + ", ".join(f"t.{c} = s.{c}" for c in others))
            matched, changed = self._update_counts(conn, update)
            written += changed
        if matched is None or matched < self._staged_rows(conn, stg):
            insert = (f"INSERT INTO {tgt} ({cols}) SELECT {', '.join(f's.{q(c.name)}' for c in target.columns)} "
                      f"FROM {stg} s LEFT JOIN {tgt} t ON {join} WHERE t.{q(key_names[0])} IS NULL")
            written += max(conn.exec_driver_sql(insert).rowcount, 0)
        return written + self.apply_deletes(conn, target, mode, stage)

    def _update_counts(self, conn: Connection, update: str) -> tuple[int, int]:
        """Run an UPDATE; returns (rows matched, rows changed), read from the server's info message."""
        raw = conn.connection.driver_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute(update)
        except pymysql.MySQLError as exc:
            raise LoadError(f"merging staged rows failed: {error_detail(exc, self.url)}") from exc
        info = (cursor._result.message or b"").decode() if cursor._result else ""  # noqa: SLF001 - PyMySQL keeps it here
        found = _UPDATE_INFO.search(info)
        if found is None:  # a server that does not say: no skipped insert, and no count to trust
            raise LoadError(f"the server's reply to the merge's UPDATE did not say how many rows it changed: {info!r}")
        return int(found["matched"]), int(found["changed"])

    def _staged_rows(self, conn: Connection, stage: str) -> int:
        """Rows in the staging table, or the target loaded directly (one per key: REPLACE/IGNORE deduplicated them)."""
        if self._stage_rows is not None:
            return self._stage_rows
        return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {stage}").scalar_one())
