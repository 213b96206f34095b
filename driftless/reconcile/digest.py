"""Stored row digests: the deep diff's per-row hash, kept by the database in a generated column.

A deep diff hashes every row of both tables (``driftless.reconcile.dialects``); on a million rows that is
seconds of MD5 on each side, every time. A *row digest* is the same 48-bit hash of the same canonical
row text, in a column ``_driftless_h48`` that the database itself computes on every insert and
update (``GENERATED ALWAYS AS (...) STORED``). The diff then only sums a stored integer, and, because
the database computes it whoever writes the row, a digest can never be stale: a row changed by hand,
by another tool or by a restore is hashed like any other.

* PostgreSQL: a stored generated column (and two small IMMUTABLE helper functions for the
  timestamp text, in the table's schema).
* MariaDB/MySQL: a stored generated column plus an index on it, so that a whole-table pass reads the
  narrow index instead of the rows. TIMESTAMP columns (which read in the session's time zone) cannot
  be digested; DATETIME can.
* SQLite: no MD5 a generated column could call, so the digest is a plain column that driftless
  fills (``etl digest add`` once, the loader after each write) and a trigger sets to NULL whenever
  anything else updates a row; the diff hashes rows whose digest is NULL as it reads them, so a stale
  digest is never compared. Its fingerprint is in the trigger's name (SQLite has no column comments).

The column's comment records which columns, kinds and scales it covers (a fingerprint). A diff uses
the digest only when that fingerprint equals the comparison it runs; otherwise it hashes the rows as
usual and says so. A side with a digest and a side without one compare correctly: both produce the
same numbers.

Users add a digest with ``etl digest add URL --table T`` or, for a pipeline's target, with
``reconcile: {row_digest: true}`` in the spec (the loader keeps it in step with the spec's columns).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, MetaData, Table
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from driftless.errors import ReconciliationFailed, error_detail
from driftless.reconcile.dialects import (
    FLOAT_SCALE,
    DigestUnsupported,
    HashDialect,
    kind_of,
    kind_of_spec_type,
)
from driftless.spec import TYPE_PATTERN

log = logging.getLogger(__name__)

DIGEST_COLUMN = "_driftless_h48"
VERSION = 2  # 2: floats and JSON by their canonical texts (driftless.canonical)
_FINGERPRINT = re.compile(r"\bfp=([0-9a-f]{16})\b")


@dataclass(frozen=True)
class DigestColumn:
    """One column a digest covers: its name, logical kind and (decimals only) compared scale."""

    name: str
    kind: str
    scale: int | None = None


def fingerprint(columns: Sequence[DigestColumn]) -> str:
    """What a digest covers, as 16 hex digits: the columns in order, their kinds and decimal scales."""
    parts = []
    for c in columns:
        # kinds whose canonical texts are the same are one kind here: booleans are the integers 0/1
        kind = {"bool": "int"}.get(c.kind, c.kind)
        scale = c.scale if kind == "decimal" else None
        parts.append(f"{c.name}:{kind}" + (f":{scale}" if scale is not None else ""))
    return hashlib.sha1(f"v{VERSION}|{'|'.join(parts)}".encode()).hexdigest()[:16]


def comment_for(columns: Sequence[DigestColumn]) -> str:
    return (f"driftless row digest v{VERSION} fp={fingerprint(columns)} "
            f"columns={','.join(c.name for c in columns)}")


def fingerprint_in(comment: str | None) -> str | None:
    """The fingerprint recorded in a digest column's comment (None: not a driftless digest)."""
    m = _FINGERPRINT.search(comment or "")
    return m.group(1) if m else None


def table_columns(table: Table, floats_are_doubles: bool = False) -> list[DigestColumn]:
    """Every column of a reflected table except the digest, with the kinds its types imply.

    ``floats_are_doubles``: the table's database keeps every float in 8 bytes (``HashDialect.floats_are_doubles``).
    """
    out = []
    for c in table.columns:
        if c.name == DIGEST_COLUMN:
            continue
        kind = kind_of(c.type, floats_are_doubles)
        out.append(DigestColumn(c.name, kind, getattr(c.type, "scale", None) if kind == "decimal" else None))
    return out


def spec_digest_columns(spec: Any) -> list[DigestColumn]:
    """The columns a pipeline's target digest covers: the spec's, with the kinds ``DeepDiff.for_spec`` compares."""
    out = []
    for c in spec.columns:
        m = TYPE_PATTERN.match(c.type)
        out.append(DigestColumn(c.name, kind_of_spec_type(c.type), int(m["scale"]) if m and m["numeric"] else None))
    return out


def _reflect(conn: Connection, name: str, schema: str | None) -> Table:
    try:
        return Table(name, MetaData(), autoload_with=conn, schema=schema)
    except NoSuchTableError as exc:
        raise ReconciliationFailed(f"table {name!r} does not exist") from exc


def _covered(conn: Connection, dialect: HashDialect, table: Table) -> str | None:
    """The fingerprint of the table's current digest (None: it has none, or not driftless's)."""
    existing = table.c.get(DIGEST_COLUMN)
    if existing is None:
        return None
    return fingerprint_in(dialect.digest_comment(conn, table.name, table.schema, existing))


def _hash_expr(conn: Connection, dialect: HashDialect, table: Table, columns: Sequence[DigestColumn]) -> str:
    """SQL a stored digest holds: the row hash of ``columns``, with what generated columns may call."""
    functions_schema = dialect.digest_prepare(conn, table.schema)
    canons = [dialect.stored_canon(dialect.quote(c.name), c.kind, table.c[c.name].type,
                                   c.scale if c.scale is not None else FLOAT_SCALE, functions_schema)
              for c in columns]
    return dialect.row_hash(dialect.row_text(canons))


def ensure_digest(conn: Connection, dialect: HashDialect, name: str, schema: str | None,
                  columns: Sequence[DigestColumn] | None = None) -> str:
    """Give table ``name`` a current row digest over ``columns`` (default: all its columns).

    Returns ``"current"`` (nothing to do), ``"added"`` or ``"refreshed"`` (an older digest covering
    other columns was replaced). Raises ``DigestUnsupported`` when the table's database or column types
    cannot hold one. Runs in the caller's transaction (PostgreSQL: one transaction; MariaDB commits DDL).
    """
    # Any name the database holds is accepted ("Order Items", "Unit-Price", Straße): it reaches SQL only quoted
    # by the dialect (``dialect.table``/``dialect.quote``) or as a bound value in catalog queries.
    table = _reflect(conn, name, schema)
    cols = list(columns) if columns is not None else table_columns(table, dialect.floats_are_doubles)
    missing = [c.name for c in cols if c.name not in table.c]
    if missing:
        raise ReconciliationFailed(f"table {name!r} has no column(s) {missing} for its row digest")
    if _covered(conn, dialect, table) == fingerprint(cols):
        return "current"
    existing = table.c.get(DIGEST_COLUMN)
    table_sql = dialect.table(name, schema)
    # Build the expression first: an unsupported column type fails before anything changes.
    expr = _hash_expr(conn, dialect, table, cols)
    statements = dialect.digest_add(table_sql, name, DIGEST_COLUMN, expr, comment_for(cols), fingerprint(cols),
                                    [c.name for c in table.primary_key.columns])
    if existing is not None:
        statements = dialect.digest_drop(conn, table_sql, name, DIGEST_COLUMN, schema) + statements
    try:
        for sql in statements:
            conn.exec_driver_sql(sql)
    except SQLAlchemyError as exc:
        detail = error_detail(exc)[:300]
        raise DigestUnsupported(f"cannot add a row digest to table {name!r}: {detail}") from exc
    state = "refreshed" if existing is not None else "added"
    log.info("row digest %s", state, extra={"table": name, "columns": [c.name for c in cols]})
    return state


def drop_digest(conn: Connection, dialect: HashDialect, name: str, schema: str | None) -> bool:
    """Remove a table's row digest; False when it had none."""
    table = _reflect(conn, name, schema)
    if DIGEST_COLUMN not in table.c:
        return False
    for sql in dialect.digest_drop(conn, dialect.table(name, schema), name, DIGEST_COLUMN, schema):
        conn.exec_driver_sql(sql)
    return True


def fill_digest(conn: Connection, dialect: HashDialect, name: str, schema: str | None,
                columns: Sequence[DigestColumn]) -> None:
    """After a write: compute the digest of rows that have none (SQLite; the other databases do it themselves)."""
    table = _reflect(conn, name, schema)
    if _covered(conn, dialect, table) != fingerprint(columns):
        return
    for sql in dialect.digest_fill(dialect.table(name, schema), DIGEST_COLUMN,
                                   _hash_expr(conn, dialect, table, columns)):
        conn.exec_driver_sql(sql)


__all__ = ["DIGEST_COLUMN", "DigestColumn", "DigestUnsupported", "comment_for",
           "drop_digest", "ensure_digest", "fill_digest", "fingerprint", "fingerprint_in", "spec_digest_columns",
           "table_columns"]
