"""PostgreSQL SQL of the deep diff: canonical text of each value, the 48-bit row hash, the stored digest.

What the texts must be is ``driftless.reconcile.dialects``' module docstring; this is how PostgreSQL
writes them (plain SQL; a recursive query walks a JSON document).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import URL, Connection, Engine, text
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql

from driftless.reconcile.dialects import DigestUnsupported, HashDialect
from driftless.targets.postgres import engine as engine_for


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
            if conn.execute(text("SELECT to_regprocedure(:sig)"), {"sig": signature}).scalar() is not None:
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
