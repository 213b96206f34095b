r"""Per-dialect SQL for the deep diff: one canonical text per value, and a 48-bit hash of each row.

The deep diff (``driftless.reconcile.diff``) is dialect-agnostic; everything it needs to say in a
particular SQL dialect is a method here. Every engine must produce, for the same logical value,
the very same canonical text, so that equal rows hash equally wherever they live:

=============  ==============================================================  ===================
logical kind   canonical text                                                  example
=============  ==============================================================  ===================
int            decimal digits                                                  ``-42``
bool           ``1`` / ``0``                                                   ``1``
decimal        fixed point at the declared scale                               ``12.30``
double         shortest round-trip decimal, normalized scientific notation     ``1.0E-7``
float          rounded to a 4-byte float, then as a double                     ``1.0000000149011612E-1``
timestamp      ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC (session zone forced UTC)  ``2025-01-31 23:59:59.000001``
date           ``YYYY-MM-DD``                                                  ``2025-01-31``
json           sorted keys, no whitespace, literal unicode, numbers as above   ``{"a":[2.5E0,true]}``
text           the value's UTF-8 bytes, unchanged                              ``Zürich``
=============  ==============================================================  ===================

``driftless.canonical`` defines the number and JSON texts exactly (and is their Python twin). PostgreSQL
builds them with plain SQL (a recursive query walks a JSON document), MariaDB with
``JSON_NORMALIZE``, SQLite with Python functions registered on the connection. MariaDB keeps a JSON
string's escapes as written (``\u00e9`` stays, where the others print ``é``): a row the hash
flags for that reason alone is compared again in Python, by ``driftless.canonical.canonical_json``, and
not reported (driftless itself stores JSON with literal unicode).

A value is written as ``=`` followed by its text, NULL as ``~``: NULL and the empty string differ.
Values are joined by the control character U+001F. The row's hash is the first 48 bits of the MD5
of the UTF-8 bytes of that row text, computed inside each database (SQLite: a Python function
registered on the connection, since SQLite has no MD5).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, ClassVar

from sqlalchemy import URL, Connection, Engine
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import mysql as mysql_types
from sqlalchemy.dialects import postgresql

from driftless.canonical import canonical_double, canonical_float32, canonical_json
from driftless.engines import engine_for
from driftless.errors import ReconciliationFailed

SEPARATOR = "\x1f"
DIGEST_INDEX = "ix_driftless_h48"
SQLITE_TRIGGER_PREFIX = "_driftless_h48_"
_md5 = hashlib.md5
NULL_TEXT = "~"
#: decimal places compared when neither side states a decimal's scale
FLOAT_SCALE = 6


class DigestUnsupported(ReconciliationFailed):
    """A table cannot get a stored row digest (the message says why; the deep diff still works)."""


def h48(text: str | bytes | None) -> int:
    """The first 48 bits of the MD5 of a row text, as an integer (the Python twin of the SQL)."""
    if text is None:
        return 0
    data = text.encode("utf-8") if isinstance(text, str) else text
    return int.from_bytes(hashlib.md5(data, usedforsecurity=False).digest()[:6], "big")


def kind_of(sql_type: sqltypes.TypeEngine[Any], dialect: str | None = None) -> str:
    """The logical kind (see the module docstring) of a reflected SQLAlchemy column type.

    ``dialect``: the database's name; SQLite keeps every floating-point type in 8 bytes.
    """
    if isinstance(sql_type, sqltypes.Boolean):
        return "bool"
    if isinstance(sql_type, sqltypes.Integer):
        return "int"
    if isinstance(sql_type, sqltypes.Float):
        return "double" if isinstance(sql_type, sqltypes.Double) or dialect == "sqlite" else "float"
    if isinstance(sql_type, sqltypes.JSON):
        return "json"
    if isinstance(sql_type, sqltypes.Numeric):
        return "decimal"
    if isinstance(sql_type, sqltypes.DateTime):
        return "timestamp"
    if isinstance(sql_type, sqltypes.Date):
        return "date"
    return "text"


def kind_of_spec_type(type_name: str) -> str:
    """The logical kind of a spec column type (``numeric(10,2)`` -> ``decimal``)."""
    base = type_name.split("(")[0]
    return {
        "smallint": "int", "integer": "int", "bigint": "int", "boolean": "bool",
        "numeric": "decimal", "decimal": "decimal", "float": "float", "double": "double",
        "timestamp": "timestamp", "timestamptz": "timestamp", "date": "date", "json": "json",
    }.get(base, "text")


class HashDialect:
    """SQL fragments of one dialect. Subclasses fill in the engine-specific parts.

    Attributes:
        binary_key_order: whether plain comparisons of text keys are already bytewise.
    """

    name: ClassVar[str] = "generic"
    #: the digest is filled by driftless after writes, not computed by the database (SQLite)
    fills_digest: ClassVar[bool] = False
    #: the database runs inside this process: a query costs microseconds, not a network round trip
    in_process: ClassVar[bool] = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.preparer = engine.dialect.identifier_preparer

    # -- engine set-up --------------------------------------------------------------------
    @classmethod
    def create_engine(cls, url: URL) -> Engine:
        """An engine whose sessions are prepared for canonical output (UTC, UTF-8, functions)."""
        return engine_for(url)

    # -- identifiers ----------------------------------------------------------------------
    def quote(self, name: str) -> str:
        return self.preparer.quote(name)

    def table(self, name: str, schema: str | None) -> str:
        return (self.preparer.quote_schema(schema) + "." if schema else "") + self.quote(name)

    # -- values ---------------------------------------------------------------------------
    def canon(self, expr: str, kind: str, physical: sqltypes.TypeEngine[Any], scale: int) -> str:
        """SQL for the canonical text of a column (NULL stays NULL)."""
        raise NotImplementedError

    def literal(self, text: str) -> str:
        """A string literal (only for fixed texts of this module, never for data)."""
        return "'" + text.replace("'", "''") + "'"

    def concat(self, parts: list[str]) -> str:
        return "(" + " || ".join(parts) + ")"

    def value_text(self, canon: str) -> str:
        """``=`` + text, or ``~`` for NULL."""
        return f"COALESCE({self.concat([self.literal('='), canon])}, {self.literal(NULL_TEXT)})"

    def row_text(self, canons: list[str]) -> str:
        parts: list[str] = []
        for i, c in enumerate(canons):
            if i:
                parts.append(self.literal(SEPARATOR))
            parts.append(self.value_text(c))
        return self.concat(parts)

    def row_hash(self, row_text: str) -> str:
        """SQL for the 48-bit integer hash of a row text."""
        raise NotImplementedError

    def hash_sum(self, row_text: str) -> str:
        """SQL for the aggregate sum of the row hashes (exact, no overflow)."""
        return f"SUM({self.row_hash(row_text)})"

    def hash_sum_of(self, canons: list[str]) -> str:
        """SQL for the aggregate sum of the hashes of the rows whose canonical values are ``canons``."""
        return self.hash_sum(self.row_text(canons))

    # -- stored row digest (driftless.reconcile.digest) ---------------------------------------------
    def stored_canon(self, expr: str, kind: str, physical: sqltypes.TypeEngine[Any], scale: int,
                     functions_schema: str | None) -> str:
        """Like ``canon``, with only what a generated (stored) column may use; raises ``DigestUnsupported``."""
        return self.canon(expr, kind, physical, scale)

    def digest_prepare(self, conn: Connection, schema: str | None) -> str | None:
        """Create what ``stored_canon`` refers to; returns the schema holding it (None: nothing needed)."""
        return None

    def digest_add(self, table_sql: str, name: str, column: str, expr: str, comment: str, fp: str,
                   keys: list[str]) -> list[str]:
        """Statements that add the digest column, with its comment and fingerprint ``fp``.

        ``keys`` are the table's primary key columns.
        """
        raise DigestUnsupported(f"{self.name} databases cannot hold a stored row digest")

    def digest_drop(self, conn: Connection, table_sql: str, name: str, column: str,
                    schema: str | None = None) -> list[str]:
        return [f"ALTER TABLE {table_sql} DROP COLUMN {self.quote(column)}"]

    def digest_comment(self, conn: Connection, name: str, schema: str | None, column: Any) -> str | None:
        """The text recording what a table's digest covers (``fp=...``): the reflected column's comment."""
        return column.comment

    def digest_value(self, column_sql: str, row_text: str) -> str:
        """SQL for a row's hash when its table has a current digest."""
        return column_sql

    def digest_fill(self, table_sql: str, column: str, expr: str) -> list[str]:
        """Statements a loader runs after writing, for digests the database does not compute itself."""
        return []

    def digest_scan(self, table_sql: str) -> str:
        """The FROM clause of a whole-table pass over the digest column."""
        return table_sql

    def group_suffix(self) -> str:
        """What follows GROUP BY when the groups' order does not matter."""
        return ""

    def digest_sum_parts(self, column: str, max_rows: int | None) -> list[tuple[str, int]] | None:
        """Aggregates whose weighted sum is ``SUM(column)`` over at most ``max_rows`` rows.

        For when they are faster or the plain sum could overflow (``max_rows`` None: any number of
        rows); None: use ``SUM(column)``.
        """
        return None

    def digest_session(self, conn: Connection) -> None:
        """Session settings for queries that only read the digest column."""

    # -- keys -----------------------------------------------------------------------------
    def key_order(self, expr: str, kind: str) -> str:
        """The key as it must be compared and sorted: text keys bytewise (binary collation)."""
        return expr

    def key_param(self, param: str, kind: str) -> str:
        return f":{param}"

    def int_div(self, numerator: str, denominator: str) -> str:
        """Integer division of two integer expressions, rounding down for non-negative operands."""
        return f"(({numerator}) / ({denominator}))"


def _pg_number(n: str) -> str:
    """PostgreSQL SQL: the canonical text (``driftless.canonical``) of the numeric expression ``n``."""
    digits = f"ltrim(replace(CAST(abs({n}) AS text), '.', ''), '0')"  # significant digits, maybe trailing zeros
    mantissa = f"rtrim({digits}, '0')"
    return (f"(CASE WHEN {n} = 0 THEN '0.0E0' ELSE (CASE WHEN {n} < 0 THEN '-' ELSE '' END) || "
            f"substr({mantissa}, 1, 1) || '.' || COALESCE(NULLIF(substr({mantissa}, 2), ''), '0') || 'E' || "
            f"CAST(length({digits}) - 1 - scale({n}) AS text) END)")


def _pg_double(x: str) -> str:
    """PostgreSQL SQL: the canonical text of the float8 expression ``x``.

    Its text is the shortest round-trip decimal only with ``extra_float_digits`` > 0 (the diff's
    sessions set it; the stored digest's function sets it for itself).
    """
    return (f"(CASE WHEN {x} IN ('NaN', 'Infinity', '-Infinity') THEN CAST({x} AS text) "
            f"ELSE {_pg_number(f'CAST(CAST({x} AS text) AS numeric)')} END)")


def _pg_json(doc: str) -> str:
    """PostgreSQL SQL: the canonical text of the jsonb expression ``doc``, without functions of its own.

    A recursive query walks the document; every node gives a token (its member label, then its
    scalar text or its opening bracket) at a sort path (object members by key bytes, array elements
    by position), containers a closing token after their children; the tokens in path order are the
    text. Each member's label starts with a comma; U+0001 after an opening bracket marks the comma
    to drop (strings print control characters escaped, so U+0001 occurs nowhere else).
    """
    number = _pg_number("CAST(w.v AS numeric)")
    return (
        "(SELECT replace(replace(string_agg(t.tok, '' ORDER BY t.sk COLLATE \"C\"), E'\\x01,', ''), E'\\x01', '') "
        "FROM (WITH RECURSIVE w(p, lbl, v) AS ("
        f"SELECT CAST(ARRAY[] AS text[]), CAST('' AS text), {doc} "
        "UNION ALL SELECT w.p || CAST(c.k AS text), c.lbl, c.v FROM w CROSS JOIN LATERAL ("
        "SELECT '1' || e.key AS k, ',' || CAST(to_jsonb(e.key) AS text) || ':' AS lbl, e.value AS v "
        "FROM jsonb_each(CASE WHEN jsonb_typeof(w.v) = 'object' THEN w.v END) e "
        "UNION ALL SELECT '1' || lpad(CAST(a.i AS text), 10, '0'), ',', a.v "
        "FROM jsonb_array_elements(CASE WHEN jsonb_typeof(w.v) = 'array' THEN w.v END) WITH ORDINALITY a(v, i)) c) "
        "SELECT w.p AS sk, w.lbl || CASE jsonb_typeof(w.v) WHEN 'object' THEN E'{\\x01' WHEN 'array' THEN E'[\\x01' "
        f"WHEN 'number' THEN {number} ELSE CAST(w.v AS text) END AS tok FROM w "
        "UNION ALL SELECT w.p || CAST('2' AS text), CASE jsonb_typeof(w.v) WHEN 'object' THEN '}' ELSE ']' END "
        "FROM w WHERE jsonb_typeof(w.v) IN ('object', 'array')) t)"
    )


def _pg_jsonb(expr: str, physical: sqltypes.TypeEngine[Any]) -> str:
    """A PostgreSQL column compared as JSON, as jsonb: jsonb as is, json and text parsed, others converted."""
    if isinstance(physical, postgresql.JSONB):
        return expr
    if isinstance(physical, sqltypes.JSON | sqltypes.String):
        return f"CAST({expr} AS jsonb)"
    return f"to_jsonb({expr})"


class PostgresHash(HashDialect):
    name = "postgresql"

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # md5(text) hashes the server encoding's bytes; convert_to(.., 'UTF8') costs as much as the md5
        # itself, so it is only used when the database is not UTF-8 already.
        with engine.connect() as conn:
            self.utf8 = str(conn.exec_driver_sql("SHOW server_encoding").scalar()).upper() in ("UTF8", "UTF-8")

    @classmethod
    def create_engine(cls, url: URL) -> Engine:
        def utc(dbapi_conn: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
                cur.execute("SET extra_float_digits = 1")  # floats print their shortest round trip
                # Hashing is CPU-bound: let the planner use parallel workers for the per-range
                # aggregates (it otherwise misjudges the number of ranges and stays serial).
                cur.execute("SET parallel_setup_cost = 0")
                cur.execute("SET parallel_tuple_cost = 0")
            dbapi_conn.commit()

        return engine_for(url, on_connect=utc)

    def canon(self, expr: str, kind: str, physical: sqltypes.TypeEngine[Any], scale: int) -> str:
        if kind == "bool":
            if isinstance(physical, sqltypes.Boolean):
                return f"(CASE WHEN {expr} THEN '1' WHEN NOT {expr} THEN '0' END)"
            return f"CAST(CAST({expr} AS bigint) AS text)"
        if kind == "int":
            if isinstance(physical, sqltypes.Boolean):
                return f"(CASE WHEN {expr} THEN '1' WHEN NOT {expr} THEN '0' END)"
            return f"CAST({expr} AS text)"
        if kind == "decimal":
            # numeric(1000, s) keeps any magnitude; casting rounds half away from zero on every engine.
            return f"CAST(CAST({expr} AS numeric(1000, {scale})) AS text)"
        if kind in ("double", "float"):
            return _pg_double(self._float8(expr, kind, physical))
        if kind == "json":
            return _pg_json(_pg_jsonb(expr, physical))
        if kind == "timestamp":
            if isinstance(physical, sqltypes.DateTime | sqltypes.Date):
                return f"to_char({expr}, 'YYYY-MM-DD HH24:MI:SS.US')"
            return f"to_char(CAST({expr} AS timestamp), 'YYYY-MM-DD HH24:MI:SS.US')"
        if kind == "date":
            return f"to_char(CAST({expr} AS date), 'YYYY-MM-DD')"
        return f"CAST({expr} AS text)"

    @staticmethod
    def _float8(expr: str, kind: str, physical: sqltypes.TypeEngine[Any]) -> str:
        """The column as the float8 its canonical text is made of (4-byte floats rounded to 4 bytes first)."""
        if kind == "float":
            return f"CAST(CAST({expr} AS real) AS float8)"
        return expr if isinstance(physical, sqltypes.Double) else f"CAST({expr} AS float8)"

    def row_hash(self, row_text: str) -> str:
        # The well-known PostgreSQL idiom: hex digits -> bit string -> integer.
        data = row_text if self.utf8 else f"convert_to({row_text}, 'UTF8')"
        return f"CAST(CAST(('x' || substr(md5({data}), 1, 12)) AS bit(48)) AS bigint)"

    def stored_canon(self, expr: str, kind: str, physical: sqltypes.TypeEngine[Any], scale: int,
                     functions_schema: str | None) -> str:
        if not self.utf8:
            raise DigestUnsupported("a stored row digest needs a UTF-8 PostgreSQL database "
                                    "(md5 hashes the server encoding's bytes)")
        fn = (self.preparer.quote_schema(functions_schema) + "." if functions_schema else "")
        if kind in ("timestamp", "date"):
            if isinstance(physical, sqltypes.DateTime):
                value = f"timezone('UTC', {expr})" if physical.timezone else expr
            elif isinstance(physical, sqltypes.Date):
                value = f"CAST({expr} AS timestamp)"
            else:
                raise DigestUnsupported(
                    f"column {expr} holds {kind}s as {physical}; a stored digest needs a date or timestamp type")
            return f"{fn}driftless_canon_{'ts' if kind == 'timestamp' else 'date'}({value})"
        if kind in ("double", "float"):
            return f"{fn}driftless_canon_f8({self._float8(expr, kind, physical)})"
        if kind == "json":
            return f"{fn}driftless_canon_json({_pg_jsonb(expr, physical)})"
        return self.canon(expr, kind, physical, scale)

    def digest_prepare(self, conn: Connection, schema: str | None) -> str | None:
        # to_char() is STABLE (some of its patterns follow the locale), so a generated column cannot
        # call it; these wrappers use only numeric patterns, whose output never varies: IMMUTABLE holds.
        if schema is None:
            schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar())
        s = self.preparer.quote_schema(schema)
        # The float's text follows the session's extra_float_digits: the function fixes it (shortest round trip).
        # (The functions' names carry their meaning: a changed body gets a new name.)
        functions = [
            ("driftless_canon_ts", "timestamp", "", "to_char($1, 'YYYY-MM-DD HH24:MI:SS.US')"),
            ("driftless_canon_date", "timestamp", "", "to_char($1, 'YYYY-MM-DD')"),
            ("driftless_canon_f8", "float8", " SET extra_float_digits = 1", _pg_double("$1")),
            ("driftless_canon_json", "jsonb", "", _pg_json("$1")),
        ]
        for name, arg, settings, body in functions:
            signature = f"{s}.{name}({arg})"
            if conn.exec_driver_sql(f"SELECT to_regprocedure('{signature}')").scalar() is not None:
                continue  # (replacing it while another load uses it would make the two loads collide)
            conn.exec_driver_sql(
                f"CREATE OR REPLACE FUNCTION {signature} RETURNS text "
                f"LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE{settings} AS $$ SELECT {body} $$")
        return schema

    def digest_add(self, table_sql: str, name: str, column: str, expr: str, comment: str, fp: str,
                   keys: list[str]) -> list[str]:
        col = self.quote(column)
        return [f"ALTER TABLE {table_sql} ADD COLUMN {col} bigint GENERATED ALWAYS AS ({expr}) STORED",
                f"COMMENT ON COLUMN {table_sql}.{col} IS {self.literal(comment)}"]

    def digest_session(self, conn: Connection) -> None:
        # Summing a stored column is cheap; the planner's parallel plans for GROUP BY on an expression
        # (it cannot estimate the number of groups) sort every row, measured 2x slower than one process.
        conn.exec_driver_sql("SET max_parallel_workers_per_gather = 0")

    def key_order(self, expr: str, kind: str) -> str:
        return f'({expr} COLLATE "C")' if kind == "text" else expr

    def key_param(self, param: str, kind: str) -> str:
        return f'(CAST(:{param} AS text) COLLATE "C")' if kind == "text" else f":{param}"


class MySqlHash(HashDialect):
    name = "mysql"

    @classmethod
    def create_engine(cls, url: URL) -> Engine:
        def utc(dbapi_conn: Any) -> None:  # utf8mb4: driftless.engines
            with dbapi_conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")

        return engine_for(url, on_connect=utc)

    def concat(self, parts: list[str]) -> str:
        return "CONCAT(" + ", ".join(parts) + ")"

    def literal(self, text: str) -> str:
        if text == SEPARATOR:
            # A control character in a literal does not survive MariaDB's stored text of a generated
            # column's expression (it comes back as 'x1F'); CHAR() does.
            return f"CHAR({ord(SEPARATOR)} USING utf8mb4)"
        return "_utf8mb4'" + text.replace("'", "''").replace("\\", "\\\\") + "'"

    def canon(self, expr: str, kind: str, physical: sqltypes.TypeEngine[Any], scale: int) -> str:
        if kind in ("int", "bool"):
            return f"CAST(CAST({expr} AS SIGNED) AS CHAR CHARACTER SET utf8mb4)"
        if kind == "decimal":
            return f"CAST(CAST({expr} AS DECIMAL(65, {min(scale, 30)})) AS CHAR CHARACTER SET utf8mb4)"
        if kind in ("double", "float"):
            # A DOUBLE's text is its shortest round trip; JSON_NORMALIZE writes a number in the canonical form.
            # (A FLOAT's own text has 6 digits: it is read as the DOUBLE it equals.)
            double = f"CAST(CAST({expr} AS FLOAT) AS DOUBLE)" if kind == "float" else f"CAST({expr} AS DOUBLE)"
            return f"CONVERT(JSON_NORMALIZE(CAST({double} AS CHAR CHARACTER SET utf8mb4)) USING utf8mb4)"
        if kind == "json":
            # JSON_NORMALIZE sorts keys, drops whitespace and writes numbers canonically; it keeps string
            # escapes as written (see the module docstring). A text that is no JSON is compared as is.
            text = f"CONVERT({expr} USING utf8mb4)"
            return f"COALESCE(CONVERT(JSON_NORMALIZE({text}) USING utf8mb4), {text})"
        if kind == "timestamp":
            return f"CONVERT(DATE_FORMAT({expr}, '%Y-%m-%d %H:%i:%s.%f') USING utf8mb4)"
        if kind == "date":
            return f"CONVERT(DATE_FORMAT({expr}, '%Y-%m-%d') USING utf8mb4)"
        # Whatever the column's character set (latin1, utf8mb3...), hash its text as UTF-8.
        return f"CONVERT({expr} USING utf8mb4)"

    def row_hash(self, row_text: str) -> str:
        return f"CAST(CONV(SUBSTRING(MD5({row_text}), 1, 12), 16, 10) AS UNSIGNED)"

    def stored_canon(self, expr: str, kind: str, physical: sqltypes.TypeEngine[Any], scale: int,
                     functions_schema: str | None) -> str:
        # DATE_FORMAT is refused in generated columns (it can follow lc_time_names); CAST gives the same text.
        if kind in ("timestamp", "date"):
            if isinstance(physical, mysql_types.TIMESTAMP):
                raise DigestUnsupported(
                    f"column {expr} is a TIMESTAMP, which reads in the writing session's time zone: a stored "
                    "digest would depend on who wrote the row (DATETIME columns can have one)")
            if not isinstance(physical, sqltypes.DateTime | sqltypes.Date):
                raise DigestUnsupported(
                    f"column {expr} holds {kind}s as {physical}; a stored digest needs a DATE or DATETIME type")
            target = "DATETIME(6)" if kind == "timestamp" else "DATE"
            return f"CAST(CAST({expr} AS {target}) AS CHAR CHARACTER SET utf8mb4)"
        return self.canon(expr, kind, physical, scale)

    def digest_add(self, table_sql: str, name: str, column: str, expr: str, comment: str, fp: str,
                   keys: list[str]) -> list[str]:
        col = self.quote(column)
        # The index holds (key, digest) only: diff passes read it instead of the rows, whole (measured on
        # 1M rows: 0.58 s instead of 1.75 s per GROUP BY pass) or by key ranges.
        indexed = ", ".join([*(self.quote(k) for k in keys), col])
        return [f"ALTER TABLE {table_sql} ADD COLUMN {col} BIGINT AS ({expr}) STORED "
                f"COMMENT '{comment.replace(chr(39), chr(39) * 2)}', "
                f"ADD INDEX {self.quote(DIGEST_INDEX)} ({indexed})"]

    def digest_drop(self, conn: Connection, table_sql: str, name: str, column: str,
                    schema: str | None = None) -> list[str]:
        # dropping the column alone would leave the index on the key columns behind
        has_index = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = COALESCE(%s, DATABASE()) "
            "AND table_name = %s AND index_name = %s", (schema, name, DIGEST_INDEX)).scalar()
        drop_index = f"DROP INDEX {self.quote(DIGEST_INDEX)}, " if has_index else ""
        return [f"ALTER TABLE {table_sql} {drop_index}DROP COLUMN {self.quote(column)}"]

    def digest_scan(self, table_sql: str) -> str:
        return f"{table_sql} FORCE INDEX ({self.quote(DIGEST_INDEX)})"

    def group_suffix(self) -> str:
        return " ORDER BY NULL"  # MariaDB otherwise sorts the groups

    def digest_sum_parts(self, column: str, max_rows: int | None) -> list[tuple[str, int]] | None:
        # SUM of integers is DECIMAL arithmetic in MariaDB, the slowest part of a pass over the digest.
        # The two 24-bit halves summed as doubles are exact (2**29 rows * 2**24 < 2**53) and faster
        # (measured on 1M rows in 977 groups: 0.33-0.38 s instead of 0.45-0.66 s).
        if max_rows is None or max_rows > 2**29:
            return None
        return [(f"SUM(CAST({column} >> 24 AS DOUBLE))", 1 << 24), (f"SUM(CAST({column} & 16777215 AS DOUBLE))", 1)]

    def key_order(self, expr: str, kind: str) -> str:
        # BINARY compares bytes with no trailing-space padding (utf8mb4_bin pads in MariaDB).
        return f"CAST(CONVERT({expr} USING utf8mb4) AS BINARY)" if kind == "text" else expr

    def key_param(self, param: str, kind: str) -> str:
        return f"CAST(CONVERT(:{param} USING utf8mb4) AS BINARY)" if kind == "text" else f":{param}"

    def int_div(self, numerator: str, denominator: str) -> str:
        return f"(({numerator}) DIV ({denominator}))"


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


HASH_DIALECTS: dict[str, type[HashDialect]] = {
    "postgresql": PostgresHash,
    "mysql": MySqlHash,
    "mariadb": MySqlHash,
    "sqlite": SqliteHash,
}


def hash_dialect_for(url: URL) -> type[HashDialect]:
    """The ``HashDialect`` class of a database URL's backend."""
    cls = HASH_DIALECTS.get(url.get_backend_name())
    if cls is None:
        raise ReconciliationFailed(
            f"the deep diff does not support {url.get_backend_name()!r} databases "
            f"(supported: {', '.join(sorted(HASH_DIALECTS))})"
        )
    return cls
