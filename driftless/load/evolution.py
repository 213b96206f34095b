"""Target schema management: create the table from the spec, evolve it additively, refuse the rest.

Before anything is written, the target table as it exists is compared with the table the spec
describes (``driftless.schema.target_table``):

* a column new in the spec and nullable -> ``ALTER TABLE ... ADD COLUMN`` (reported, and recorded in the
  run record's ``schema_changes``);
* a column new in the spec and NOT NULL, a column whose type changed (narrowed, widened or another kind),
  a column the spec allows NULL in but the target does not, or a changed primary key -> ``LoadError``
  before any write, with what changed and how to proceed;
* columns the target has and the spec does not are left alone (they are not written).

Types are compared as kinds (integer bits, numeric precision/scale, text length, ...) as each dialect
stores them: on PostgreSQL ``float`` is double precision, MariaDB keeps JSON as LONGTEXT and booleans as
TINYINT(1), SQLite and MariaDB keep no time zone (timestamps are stored as UTC).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.schema import CreateColumn

from driftless.errors import LoadError
from driftless.targets import capabilities
from driftless.targets.base import Capabilities

Kind = tuple[Any, ...]


def type_kind(type_: sqltypes.TypeEngine[Any], database: Capabilities) -> Kind:
    """A type's kind as the database stores it: ``("int", 32)``, ``("decimal", 10, 2)``, ``("string", 40)``..."""
    name = type(type_).__name__.upper()
    if isinstance(type_, sqltypes.Boolean) or (name == "TINYINT" and getattr(type_, "display_width", None) == 1):
        return ("boolean",)
    if isinstance(type_, sqltypes.Integer):
        if isinstance(type_, sqltypes.BigInteger):
            return ("int", 64)
        if isinstance(type_, sqltypes.SmallInteger):
            return ("int", 16)
        if name == "TINYINT":
            return ("int", 8)
        return ("int", 32)
    if isinstance(type_, sqltypes.Float):
        if isinstance(type_, sqltypes.Double) or name in ("DOUBLE_PRECISION", "DOUBLE"):
            return ("float", 64)
        # PostgreSQL reads a bare FLOAT as double precision; REAL is single precision everywhere.
        return ("float", 64 if database.bare_float_is_double and name != "REAL" else 32)
    if isinstance(type_, sqltypes.Numeric):
        return ("decimal", type_.precision, type_.scale)
    if isinstance(type_, sqltypes.JSON):
        return ("json",)
    if isinstance(type_, sqltypes.String):
        length = None if isinstance(type_, sqltypes.Text) or name.endswith("TEXT") else type_.length
        if database.json_as_longtext and name == "LONGTEXT":
            return ("json-or-text",)
        return ("string", length)
    if isinstance(type_, sqltypes.DateTime):
        return ("timestamp", bool(type_.timezone) if database.zoned_timestamps else False)
    if isinstance(type_, sqltypes.Date):
        return ("date",)
    return ("other", name)


def _same(spec: Kind, target: Kind) -> bool:
    if target == ("json-or-text",):
        return spec in (("json",), ("string", None))
    return spec == target


def _direction(spec: Kind, target: Kind) -> str | None:
    """'narrowed' or 'widened' when the kinds differ only in size, else None."""
    if spec[0] != target[0] or spec[0] not in ("int", "float", "decimal", "string"):
        return None
    if spec[0] == "decimal":
        (_, p1, s1), (_, p2, s2) = spec, target
        if None in (p1, s1, p2, s2):
            return None
        fits = s1 <= s2 and p1 - s1 <= p2 - s2
        holds = s2 <= s1 and p2 - s2 <= p1 - s1
        return "widened" if holds and not fits else "narrowed" if fits and not holds else None
    size_spec = float("inf") if spec[1] is None else spec[1]
    size_target = float("inf") if target[1] is None else target[1]
    return "narrowed" if size_spec < size_target else "widened"


def plan_changes(conn: Connection, target: Table) -> tuple[list[Any], list[str]]:
    """Compare the existing target with ``target``: (columns to add, problems that refuse the load)."""
    database = capabilities(conn.engine.url)
    insp = inspect(conn)
    existing = {c["name"]: c for c in insp.get_columns(target.name, schema=target.schema)}
    problems: list[str] = []
    to_add = []
    pk_now = sorted(insp.get_pk_constraint(target.name, schema=target.schema).get("constrained_columns") or [])
    pk_spec = sorted(c.name for c in target.primary_key.columns)
    if pk_now != pk_spec:
        problems.append(
            f"the primary key changed from {pk_now} (in the target) to {pk_spec} (in the spec); a new key changes "
            "what one row is. Point target.table at a new table and backfill it, or rebuild the table with the new "
            "key by hand, then run again"
        )
    for column in target.columns:
        current = existing.get(column.name)
        ddl = column.type.compile(dialect=conn.dialect)
        if current is None:
            if column.nullable:
                to_add.append(column)
            else:
                problems.append(
                    f"column {column.name!r} is new and NOT NULL, but the table already has rows without it; "
                    f"declare it nullable: true (it is then added), or add it by hand with a default "
                    f"(ALTER TABLE {target.fullname} ADD COLUMN {column.name} {ddl} NOT NULL DEFAULT ...), "
                    "then run again"
                )
            continue
        want, have = type_kind(column.type, database), type_kind(current["type"], database)
        if not _same(want, have):
            direction = _direction(want, have)
            shown = current["type"].compile(dialect=conn.dialect)
            if direction == "narrowed":
                problems.append(
                    f"column {column.name!r} was narrowed from {shown} (in the target) to {ddl} (in the spec); "
                    "rows already loaded may not fit the narrower type. Restore the type in the spec, or check the "
                    f"loaded values fit and change the column by hand (ALTER TABLE ... {column.name} {ddl}), "
                    "then run again"
                )
            elif direction == "widened":
                problems.append(
                    f"column {column.name!r} was widened from {shown} (in the target) to {ddl} (in the spec); the "
                    f"target cannot hold the new values. Widen the column by hand (ALTER TABLE ... {column.name} "
                    f"{ddl}), or restore the type in the spec, then run again"
                )
            else:
                problems.append(
                    f"column {column.name!r} changed type from {shown} (in the target) to {ddl} (in the spec). "
                    "Restore the type in the spec, or add a new column (the old one is then left alone) and "
                    "backfill it, then run again"
                )
        if column.nullable and not current.get("nullable", True):
            problems.append(
                f"column {column.name!r} is NOT NULL in the target but nullable in the spec; declare it "
                f"nullable: false, or drop the constraint by hand, then run again"
            )
    return to_add, problems


def evolve(conn: Connection, target: Table) -> list[str]:
    """Create the target table if absent, else add new nullable columns; refuse incompatible changes.

    Returns what was done (``created table ...``, ``added column ...``), for the run record.
    """
    if not inspect(conn).has_table(target.name, schema=target.schema):
        target.create(conn)
        return [f"created table {target.fullname}"]
    to_add, problems = plan_changes(conn, target)
    if problems:
        raise LoadError(
            f"target table {target.fullname!r} does not match the spec; nothing was written:\n- "
            + "\n- ".join(problems)
        )
    prep = conn.dialect.identifier_preparer
    changes = []
    for column in to_add:
        definition = str(CreateColumn(column).compile(dialect=conn.dialect))
        conn.exec_driver_sql(f"ALTER TABLE {prep.format_table(target)} ADD COLUMN {definition}")
        changes.append(f"added column {column.name} {column.type.compile(dialect=conn.dialect)} "
                       f"to {target.fullname}")
    return changes


def add_missing_nullable_columns(conn: Connection, table: Table) -> list[str]:
    """For driftless's own tables: add columns a newer version defines (all nullable)."""
    if not inspect(conn).has_table(table.name, schema=table.schema):
        return []
    to_add, _ = plan_changes(conn, table)
    prep = conn.dialect.identifier_preparer
    for column in to_add:
        definition = str(CreateColumn(column).compile(dialect=conn.dialect))
        conn.exec_driver_sql(f"ALTER TABLE {prep.format_table(table)} ADD COLUMN {definition}")
    return [c.name for c in to_add]
