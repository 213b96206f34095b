"""SQLite SQL of the deep diff: canonical text of each value, the 48-bit row hash, the stored digest.

SQLite has no MD5 and no canonical number or JSON text of its own: Python functions registered on each
connection (``register_functions``) compute them (``driftless.canonical`` defines the texts).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy import URL, Connection, Engine
from sqlalchemy import types as sqltypes

from driftless.canonical import canonical_double, canonical_float32, canonical_json
from driftless.reconcile.dialects import NULL_TEXT, SEPARATOR, HashDialect, h48
from driftless.targets.sqlite import engine as engine_for

SQLITE_TRIGGER_PREFIX = "_driftless_h48_"
_md5 = hashlib.md5


class _H48Sum:
    """SQLite aggregate: the exact sum of the 48-bit row hashes (returned as text: it can pass 2**63)."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, text: str | None) -> None:
        self.total += h48(text)

    def finalize(self) -> str:
        return str(self.total)


class _H48SumValues(_H48Sum):
    """Like ``_H48Sum``, but takes the canonical values and joins them in Python (faster than SQLite's ``||``)."""

    def step(self, *values: str | None) -> None:  # type: ignore[override]
        # called once per row: kept to the fewest Python operations (the values are text already)
        text = SEPARATOR.join([NULL_TEXT if v is None else "=" + v for v in values])
        self.total += int.from_bytes(_md5(text.encode(), usedforsecurity=False).digest()[:6], "big")


def _sqlite_h48(text: str | None) -> int:
    return h48(text)


def register_functions(dbapi_conn: Any) -> None:
    """Register the hash functions the SQLite SQL of this module calls on a sqlite3 connection."""
    dbapi_conn.create_function("driftless_h48", 1, _sqlite_h48, deterministic=True)
    dbapi_conn.create_function("driftless_canon_double", 1, canonical_double, deterministic=True)
    dbapi_conn.create_function("driftless_canon_float32", 1, canonical_float32, deterministic=True)
    dbapi_conn.create_function("driftless_canon_json", 1, canonical_json, deterministic=True)
    dbapi_conn.create_aggregate("driftless_h48_sum", 1, _H48Sum)
    dbapi_conn.create_aggregate("driftless_h48_sum_values", -1, _H48SumValues)


class SqliteHash(HashDialect):
    name = "sqlite"
    fills_digest = True
    in_process = True
    floats_are_doubles = True

    @classmethod
    def create_engine(cls, url: URL) -> Engine:
        return engine_for(url, on_connect=register_functions)

    def canon(self, expr: str, kind: str, physical: sqltypes.TypeEngine[Any], scale: int) -> str:
        if kind in ("int", "bool"):
            return f"CAST(CAST({expr} AS INTEGER) AS TEXT)"
        if kind == "decimal":
            # printf rounds the stored double; SQLite holds decimals as doubles anyway. (printf prints NULL as 0.)
            return f"(CASE WHEN {expr} IS NOT NULL THEN printf('%.{scale}f', {expr}) END)"
        if kind == "double":
            return f"driftless_canon_double({expr})"
        if kind == "float":
            return f"driftless_canon_float32({expr})"
        if kind == "json":
            return f"driftless_canon_json({expr})"
        if kind == "timestamp":
            # Text as SQLAlchemy and most tools write it ('YYYY-MM-DD HH:MM:SS[.ffffff]', or with 'T'):
            # already canonical when SQLAlchemy wrote it (fast path), else whole seconds through
            # strftime and the fraction padded to microseconds.
            return (
                f"(CASE WHEN length({expr}) = 26 AND substr({expr}, 11, 1) = ' ' AND substr({expr}, 20, 1) = '.' "
                f"THEN {expr} ELSE "
                f"strftime('%Y-%m-%d %H:%M:%S', {expr}) || '.' || substr(CASE WHEN instr({expr}, '.') > 0 "
                f"THEN substr({expr}, instr({expr}, '.') + 1, 6) ELSE '' END || '000000', 1, 6) END)"
            )
        if kind == "date":
            return f"strftime('%Y-%m-%d', {expr})"
        return f"CAST({expr} AS TEXT)"

    def row_hash(self, row_text: str) -> str:
        return f"driftless_h48({row_text})"

    def hash_sum(self, row_text: str) -> str:
        return f"driftless_h48_sum({row_text})"

    def hash_sum_of(self, canons: list[str]) -> str:
        return f"driftless_h48_sum_values({', '.join(canons)})"

    # SQLite has no MD5 a generated column could call, so its digest is an ordinary column that
    # driftless fills (the loader after each write, `etl digest add` once), and a trigger that sets it
    # to NULL whenever anything else changes a row. A diff hashes the rows whose digest is NULL as it
    # reads them: a row changed by another tool is never compared by a stale digest.
    def digest_prepare(self, conn: Connection, schema: str | None) -> str | None:
        register_functions(conn.connection.driver_connection)
        return None

    def digest_add(self, table_sql: str, name: str, column: str, expr: str, comment: str, fp: str,
                   keys: list[str]) -> list[str]:
        col = self.quote(column)
        # trigger names are unique per database and a trigger keeps its name when its table is renamed
        # (a replace swaps tables): a random suffix, the table is found by sqlite_master.tbl_name
        trigger = self.quote(f"{SQLITE_TRIGGER_PREFIX}{fp}_{uuid.uuid4().hex[:12]}")
        return [
            f"ALTER TABLE {table_sql} ADD COLUMN {col} INTEGER",
            f"UPDATE {table_sql} SET {col} = {expr}",
            f"CREATE TRIGGER {trigger} AFTER UPDATE ON {table_sql} FOR EACH ROW "
            f"WHEN NEW.{col} IS OLD.{col} AND NEW.{col} IS NOT NULL "
            f"BEGIN UPDATE {table_sql} SET {col} = NULL WHERE rowid = NEW.rowid; END",
        ]

    @staticmethod
    def _triggers(conn: Connection, name: str) -> list[str]:
        return [r[0] for r in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? AND name LIKE ? ESCAPE '!'",
            (name, SQLITE_TRIGGER_PREFIX.replace("_", "!_") + "%"))]

    def digest_drop(self, conn: Connection, table_sql: str, name: str, column: str,
                    schema: str | None = None) -> list[str]:
        drops = [f"DROP TRIGGER IF EXISTS {self.quote(t)}" for t in self._triggers(conn, name)]
        return [*drops, f"ALTER TABLE {table_sql} DROP COLUMN {self.quote(column)}"]

    def digest_comment(self, conn: Connection, name: str, schema: str | None, column: Any) -> str | None:
        # no column comments in SQLite: the fingerprint is in the trigger's name
        found = [t[len(SQLITE_TRIGGER_PREFIX):][:16] for t in self._triggers(conn, name)]
        return f"fp={found[0]}" if len(found) == 1 else None

    def digest_value(self, column_sql: str, row_text: str) -> str:
        return f"COALESCE({column_sql}, {self.row_hash(row_text)})"

    def digest_fill(self, table_sql: str, column: str, expr: str) -> list[str]:
        col = self.quote(column)
        return [f"UPDATE {table_sql} SET {col} = {expr} WHERE {col} IS NULL"]

    def digest_sum_parts(self, column: str, max_rows: int | None) -> list[tuple[str, int]] | None:
        # SQLite's SUM of integers fails past 2**63 (a million 48-bit hashes reach 2**68); the two
        # 24-bit halves sum exactly for up to 2**39 rows.
        return [(f"SUM(({column}) >> 24)", 1 << 24), (f"SUM(({column}) & 16777215)", 1)]
