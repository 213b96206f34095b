"""MariaDB / MySQL target: ``LOAD DATA LOCAL INFILE`` into a temporary staging table, then a set-based merge.

* upsert: ``INSERT ... SELECT ... ORDER BY _seq ON DUPLICATE KEY UPDATE c = VALUES(c)``; InnoDB skips
  the write of a row whose values did not change. Rows are applied in staging (= cursor) order, so of
  two records with one key the latest wins.
* append: the same with a no-op update (``k = k``): existing keys are left alone, the first record wins.
* replace: ``DELETE`` every row, then insert the staged ones, in the load transaction. MariaDB cannot
  swap tables inside a transaction (``RENAME TABLE`` commits implicitly, which would separate the data
  from its watermark), so the swap is InnoDB's MVCC: readers see the old rows until commit.

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
from pymysql.constants import CLIENT
from sqlalchemy import URL, BigInteger, Column, Connection, Engine, Table, create_engine, delete, event, text
from sqlalchemy.exc import OperationalError

from etl.errors import LoadError
from etl.load.base import Loader, as_text, sibling_table
from etl.load.modes import WriteMode

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 600
SEQ = "_driftless_seq"
#: Server errors meaning "LOAD DATA LOCAL is not allowed here" (MySQL 1148, 3948; MariaDB 4166).
LOCAL_FORBIDDEN = {1148, 3948, 4166}
# LOAD DATA's default format: tab-separated, backslash escapes, \N for NULL.
_ESCAPES = [("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\x00", "\\0")]
_NEEDS_ESCAPE = r"[\\\t\n\r\x00]"


class MySqlLoader(Loader):
    """Loads into MariaDB or MySQL; concurrent loads of one table serialize on a named lock."""

    def create_engine(self, url: URL) -> Engine:
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        connect_args = {}
        if "local_infile" not in url.query:
            connect_args["local_infile"] = True  # PyMySQL sends the file only when the client allows it
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)

        # SQLAlchemy asks for "found rows", which makes an unchanged row count as affected; without it
        # the server's counts tell inserted and changed rows apart (see _rows_written).
        @event.listens_for(engine, "do_connect")
        def _no_found_rows(_dialect, _record, _cargs, cparams):
            cparams["client_flag"] = cparams.get("client_flag", 0) & ~CLIENT.FOUND_ROWS

        return engine

    def _stage_table(self, target: Table) -> Table:
        seq = Column(SEQ, BigInteger, primary_key=True, autoincrement=True)
        return sibling_table(target, f"_driftless_stage_{target.name}"[:64], temporary=True, extra=[seq],
                             primary_key=False)

    @contextmanager
    def _transaction(self, target: Table) -> Iterator[Connection]:
        name = f"driftless:{target.fullname}"[:64]
        self._local = True
        with self.engine.connect() as conn:
            got = conn.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": LOCK_TIMEOUT_S}).scalar()
            conn.commit()
            if got != 1:
                raise LoadError(f"another load of {target.fullname!r} held its lock for {LOCK_TIMEOUT_S}s")
            stage = self._stage_table(target)
            try:
                with conn.begin():
                    # Temporary tables: no implicit commit, private to this connection.
                    stage.drop(conn, checkfirst=True)
                    stage.create(conn)
                    yield conn
            finally:
                try:
                    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {self.quote(stage.name)}")
                    conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                    conn.commit()
                except OperationalError:  # the connection died: its lock and temp table died with it
                    conn.invalidate()

    def stage(self, conn: Connection, target: Table, chunk: pa.Table) -> int:
        if self.mode is not None:
            chunk = self.mode.prepare(chunk, target)
        if chunk.num_rows == 0:
            return 0
        stage = self.quote(self._stage_table(target).name)
        columns = ", ".join(self.quote(n) for n in chunk.column_names)
        texts = [as_text(chunk[n]) for n in chunk.column_names]
        cursor = conn.connection.driver_connection.cursor()
        if self._local:
            try:
                self._load_data(cursor, stage, columns, texts)
            except Exception as exc:  # noqa: BLE001 - PyMySQL raises its own classes; we test the server code
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
                if code not in LOCAL_FORBIDDEN:
                    raise
                log.info("LOAD DATA LOCAL is not allowed by %s (error %s); staging with multi-row INSERT",
                         conn.engine.url.host, code)
                self._local = False
        if not self._local:
            placeholders = ", ".join(["%s"] * len(texts))
            rows = zip(*[t.to_pylist() for t in texts], strict=True)
            # PyMySQL rewrites an executemany of INSERT ... VALUES into multi-row statements (~1 MB each).
            cursor.executemany(f"INSERT INTO {stage} ({columns}) VALUES ({placeholders})", list(rows))
        self._check_warnings(cursor, target)
        self.staged += chunk.num_rows
        return 0

    def _load_data(self, cursor, stage: str, columns: str, texts: list[pa.Array]) -> None:
        fields = []
        for t in texts:
            if pa.types.is_string(t.type) and pc.any(pc.match_substring_regex(t, _NEEDS_ESCAPE)).as_py():
                for raw, escaped in _ESCAPES:
                    t = pc.replace_substring(t, raw, escaped)
            fields.append(pc.fill_null(t, "\\N"))
        lines = pc.binary_join_element_wise(*fields, "\t")
        lines = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")  # a newline after each row
        # The value buffer of a string array is the rows back to back: exactly the file's bytes.
        _, offsets_buf, data = lines.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=len(lines) + 1, offset=4 * lines.offset)
        start, end = int(offsets[0]), int(offsets[-1])
        fd, path = tempfile.mkstemp(prefix="driftless-load-", suffix=".tsv")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(memoryview(data)[start:end])
            cursor.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE {stage} CHARACTER SET utf8mb4 ({columns})",
                           (path,))
        finally:
            os.unlink(path)

    def _check_warnings(self, cursor, target: Table) -> None:
        """LOAD DATA LOCAL turns data errors into warnings; treat any as an error rather than lose data."""
        cursor.execute("SHOW WARNINGS LIMIT 3")
        warnings = cursor.fetchall()
        if warnings:
            detail = "; ".join(f"{w[0]} {w[1]}: {w[2]}" for w in warnings)
            raise LoadError(f"staging rows for {target.fullname!r} changed values on the way in: {detail}")

    def merge(self, conn: Connection, target: Table, mode: WriteMode | str) -> int:
        mode = self.current_mode(mode)
        stage = self._stage_table(target)
        key_names = [c.name for c in target.primary_key.columns]
        cols = ", ".join(self.quote(c.name) for c in target.columns)
        others = [self.quote(c.name) for c in target.columns if c.name not in key_names]
        deleted = 0
        if mode.swap:
            deleted = max(conn.execute(delete(target)).rowcount, 0)
        if others and mode.on_conflict == "update":
            action = ", ".join(f"{c} = VALUES({c})" for c in others)
        else:
            first = f"{self.quote_table(target)}.{self.quote(key_names[0])}"
            action = f"{first} = {first}"  # a no-op: existing keys stay as they are
        sql = (f"INSERT INTO {self.quote_table(target)} ({cols}) SELECT {cols} FROM {self.quote(stage.name)} "
               f"ORDER BY {self.quote(SEQ)} ON DUPLICATE KEY UPDATE {action}")
        cursor = conn.connection.driver_connection.cursor()
        affected = max(cursor.execute(sql), 0)
        written = _rows_written(cursor, affected) + (deleted if mode.swap else 0)
        return written + self.apply_deletes(conn, target, mode, stage)


def _rows_written(cursor, affected: int) -> int:
    """Inserted + changed rows of an INSERT ... SELECT ... ON DUPLICATE KEY UPDATE.

    Without the found-rows flag the server counts 1 per inserted row, 2 per changed row and 0 per
    unchanged row; its info string ("Records: R  Duplicates: D ...") gives D, the changed rows.
    """
    result = getattr(cursor, "_result", None)  # PyMySQL keeps the OK packet's info here
    info = getattr(result, "message", b"") or b""
    if isinstance(info, bytes):
        info = info.decode("utf-8", "replace")
    m = re.search(r"Duplicates:\s*(\d+)", info)
    return max(affected - int(m[1]), 0) if m else affected
