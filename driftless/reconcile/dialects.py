r"""The deep diff's SQL interface: one canonical text per value, and a 48-bit hash of each row.

The deep diff (``driftless.reconcile.diff``) is dialect-agnostic; everything it needs to say in a
particular SQL dialect is a method of ``HashDialect``, implemented per database in
``driftless.targets.<database>.rowhash`` (chosen by ``driftless.targets.hash_dialect_for``). Every
engine must produce, for the same logical value, the very same canonical text, so that equal rows
hash equally wherever they live:

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
from typing import Any, ClassVar

from sqlalchemy import URL, Connection, Engine
from sqlalchemy import types as sqltypes

from driftless.errors import ReconciliationFailed

SEPARATOR = "\x1f"
DIGEST_INDEX = "ix_driftless_h48"
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


def kind_of(sql_type: sqltypes.TypeEngine[Any], floats_are_doubles: bool = False) -> str:
    """The logical kind (see the module docstring) of a reflected SQLAlchemy column type.

    ``floats_are_doubles``: the database keeps every floating-point type in 8 bytes (SQLite;
    ``HashDialect.floats_are_doubles``).
    """
    if isinstance(sql_type, sqltypes.Boolean):
        return "bool"
    if isinstance(sql_type, sqltypes.Integer):
        return "int"
    if isinstance(sql_type, sqltypes.Float):
        return "double" if isinstance(sql_type, sqltypes.Double) or floats_are_doubles else "float"
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
    #: every floating-point column holds 8 bytes, whatever its declared type (SQLite)
    floats_are_doubles: ClassVar[bool] = False
    #: JSON texts keep a string's escapes as written (MariaDB's JSON_NORMALIZE): equal rows may hash apart
    json_escapes_kept: ClassVar[bool] = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.preparer = engine.dialect.identifier_preparer

    # -- engine set-up --------------------------------------------------------------------
    @classmethod
    def create_engine(cls, url: URL) -> Engine:
        """An engine whose sessions are prepared for canonical output (UTC, UTF-8, functions)."""
        raise NotImplementedError

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
