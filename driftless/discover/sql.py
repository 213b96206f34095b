"""``etl discover``: write one pipeline spec per table of a source database, from what the database says.

``etl discover SOURCE --target TARGET [--tables a,b | --schema s] [--out DIR]`` reflects the tables
(SQLAlchemy inspection, plus the catalog where inspection is too coarse: PostgreSQL's declared types,
MariaDB/MySQL's ``COLUMN_TYPE`` and its ``json_valid`` checks, SQLite's declared types) and writes
``DIR/<pipeline>.yaml`` per table:

* **columns**: each source column mapped to a spec type (``TYPE_RULES`` below, per dialect); a column
  no spec type can hold exactly (binary, ``tsvector``) is left out with a comment; target names are
  snake_case ASCII (``NAMING_RULE``), ``source:`` keeps the source's name when it differs.
* **primary key**: the table's, else a unique index over non-null columns (with a comment). A table
  with neither gets a ``.yaml.draft`` (not loaded by ``specs check`` or Airflow) saying what to decide.
* **cursor**: chosen from the candidates (``CURSOR_RULE``), with a comment saying why and naming the
  alternatives; a nullable cursor gets a warning, and ``null_cursor: every_window`` when the source holds
  NULLs today. ``start_date`` is the day of the oldest cursor value, so the first ``etl run`` loads the
  whole table.
* Source names are kept as the source holds them (``table: "Order Items"``, ``source: "Unit-Price"``):
  every path quotes them through the source's dialect. Columns that need a conversion in the source
  (arrays to JSON, uuid/interval/time to text, ...) make the spec read a generated ``query`` (names quoted
  by the dialect) instead of ``table``; the deep diff and repair need ``table``, so such specs say so.

Every written spec is validated as ``etl specs check`` does before it is written. An existing spec is
never overwritten silently: discover compares it with what it would write, prints what changed in the
source (new and removed columns, changed types, key and cursor) and a unified diff, and writes only
with ``--force``.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from sqlalchemy import Engine, Text, cast, column, func, inspect, select, table
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.exc import SAWarning, SQLAlchemyError

from driftless.connections import resolve_url
from driftless.errors import DriftlessError, SpecError
from driftless.redact import redact_url
from driftless.sources.base import IDENTIFIER
from driftless.spec import parse_spec
from driftless.targets import capabilities, database_for, engine_for
from driftless.targets import mysql as mysql_db
from driftless.targets import postgres as postgres_db
from driftless.targets import sqlite as sqlite_db
from driftless.targets.base import Capabilities

NAMING_RULE = ("target names are snake_case ASCII: camelCase split at capitals, accents dropped (é -> e, ß -> ss), "
               "every other run of characters -> '_', lower case, 'c_' before a leading digit, at most 63 characters")
CURSOR_RULE = ("a timestamp or date column, preferring by name updated_at / last_update / modified* / updated* / "
               "changed* (they move when a row changes), then an indexed timestamp, then created* (rows never "
               "updated), then any other timestamp; NOT NULL and indexed columns first within a rank")
STATE_TABLES = {"etl_state", "etl_runs", "etl_quarantine", "etl_reconciliation"}
MAX_DIGITS = 38  # numeric precision the staging files (Arrow decimal128) hold
SQLITE_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def snake_name(name: str) -> str:
    """A target name by ``NAMING_RULE``: ``InvoiceId`` -> ``invoice_id``, ``Straße`` -> ``strasse``."""
    s = name.replace("ß", "ss").replace("ẞ", "SS")
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", s)
    s = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", s)
    s = re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()
    if not s or s[0].isdigit():
        s = f"c_{s}"
    return s[:63]


@dataclass
class SourceColumn:
    """A column as the source declares it."""

    name: str
    declared: str  # the type as the database writes it (format_type, COLUMN_TYPE, PRAGMA table_info)
    type: Any  # SQLAlchemy's reflected type
    nullable: bool
    indexed: bool = False
    json_checked: bool = False  # MariaDB: a JSON column is LONGTEXT with CHECK (json_valid(col))


@dataclass
class Mapped:
    """What a source column becomes: a spec type (None: left out), how it is read, checks and a note."""

    type: str | None
    read: str | None = None  # None: as the driver gives it; "text": CAST(... AS text); "json": to_jsonb(...)
    allowed: list[Any] | None = None
    note: str | None = None
    decide: bool = False  # the note asks a person to choose


@dataclass
class PlannedColumn:
    source: str
    name: str
    mapped: Mapped
    nullable: bool


@dataclass
class TablePlan:
    """One table's spec, before it is written."""

    table: str
    schema: str | None
    pipeline: str
    columns: list[PlannedColumn] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    key_note: str | None = None
    cursor: str | None = None
    cursor_note: str = ""
    null_cursor: str | None = None
    start_date: date | None = None
    query: str | None = None
    problems: list[str] = field(default_factory=list)  # why the spec is a draft
    notes: list[str] = field(default_factory=list)  # header comments


# --- type mapping -------------------------------------------------------------------------------------------------

def _numeric(t: Any, declared: str) -> Mapped:
    precision, scale = getattr(t, "precision", None), getattr(t, "scale", None)
    if precision is None or scale is None:
        return Mapped("text", note=f"DECIDE: {declared} has no declared scale: loaded as its exact text; declare "
                      "numeric(p,s) if you know the scale (driftless never guesses one: it would round)",
                      decide=True)
    if precision > MAX_DIGITS:
        return Mapped("text", note=f"DECIDE: {declared} is wider than {MAX_DIGITS} digits (the widest numeric a "
                      "spec holds): loaded as its exact text", decide=True)
    return Mapped(f"numeric({precision},{scale})")


def _common(t: Any, declared: str) -> Mapped | None:
    """Types every dialect reflects alike; None when the dialect's own rules decide."""
    if isinstance(t, sqltypes.Boolean):
        return Mapped("boolean")
    if isinstance(t, sqltypes.SmallInteger):
        return Mapped("smallint")
    if isinstance(t, sqltypes.BigInteger):
        return Mapped("bigint")
    if isinstance(t, sqltypes.Integer):
        return Mapped("integer")
    if isinstance(t, sqltypes.Float):  # before Numeric: Float is a Numeric
        double = isinstance(t, sqltypes.Double) or (t.precision or 0) > 24
        return Mapped("double" if double else "float")
    if isinstance(t, sqltypes.Numeric):
        return _numeric(t, declared)
    if isinstance(t, sqltypes.DateTime):
        return Mapped("timestamptz" if t.timezone else "timestamp",
                      note=None if t.timezone else "no time zone: values are taken as UTC")
    if isinstance(t, sqltypes.Date):
        return Mapped("date")
    if isinstance(t, sqltypes.Time):
        return Mapped("text", read="text", note=f"{declared}: a time of day, loaded as its text (no time type "
                      "in specs)")
    if isinstance(t, sqltypes.JSON):
        return Mapped("json")
    if isinstance(t, sqltypes.LargeBinary | sqltypes._Binary):
        return Mapped(None, note=f"{declared}: binary, not loaded (specs have no binary type)")
    if isinstance(t, sqltypes.String):  # Text, VARCHAR, CHAR, ...
        length = getattr(t, "length", None)
        return Mapped(f"varchar({length})" if length and not isinstance(t, sqltypes.Text) else "text")
    return None


def map_postgresql(c: SourceColumn) -> Mapped:
    t, declared = c.type, c.declared
    if isinstance(t, postgresql.DOMAIN):
        base = map_postgresql(SourceColumn(c.name, declared, t.data_type, c.nullable))
        base.note = f"domain {t.name} over its base type" + (f"; {base.note}" if base.note else "")
        return base
    if isinstance(t, postgresql.ENUM):
        return Mapped("text", allowed=list(t.enums), note=f"enum {t.name}: text, checked against its values")
    if isinstance(t, sqltypes.ARRAY):
        return Mapped("json", read="json", note=f"{declared}: loaded as a JSON array (to_jsonb)")
    if isinstance(t, sqltypes.Uuid):
        return Mapped("varchar(36)", read="text", note="uuid: loaded as its text")
    if isinstance(t, postgresql.TSVECTOR):
        return Mapped(None, note="tsvector: derived search data, not loaded (build it in the target from the text "
                      "columns if you need it)")
    if isinstance(t, postgresql.INTERVAL):
        return Mapped("text", read="text", note="interval: loaded as its text (e.g. '1 day 02:00:00'); specs have "
                      "no interval type")
    if isinstance(t, postgresql.BYTEA):
        return Mapped(None, note="bytea: binary, not loaded (specs have no binary type)")
    if isinstance(t, sqltypes.String) and not isinstance(t, sqltypes.Text) and declared.startswith("character("):
        mapped = _common(t, declared)
        assert mapped is not None
        mapped.note = f"{declared}: blank-padded by PostgreSQL; the padding is loaded too"
        return mapped
    return _common(t, declared) or Mapped("text", read="text", note=f"{declared}: no matching spec type; loaded "
                                           "as its text")


def map_mysql(c: SourceColumn) -> Mapped:
    t, declared = c.type, c.declared.lower()
    unsigned = bool(getattr(t, "unsigned", False))
    if isinstance(t, mysql.TINYINT):
        if declared.startswith("tinyint(1)") and not unsigned:
            return Mapped("boolean", note="tinyint(1): MySQL's boolean; a value other than 0/1 is quarantined "
                          "(make it smallint if the column holds more)")
        return Mapped("smallint")
    if unsigned and isinstance(t, sqltypes.Integer):
        if isinstance(t, sqltypes.BigInteger):
            return Mapped("numeric(20,0)", note=f"{declared}: wider than bigint, so numeric(20,0)")
        wider = "bigint" if isinstance(t, mysql.INTEGER) and not isinstance(t, mysql.SMALLINT | mysql.MEDIUMINT) \
            else "integer"
        return Mapped(wider, note=f"{declared}: the next wider signed type")
    if isinstance(t, mysql.MEDIUMINT):
        return Mapped("integer")
    if isinstance(t, mysql.YEAR):
        return Mapped("smallint", note="year: as a number")
    if isinstance(t, mysql.ENUM):
        return Mapped("text", allowed=list(t.enums), note="enum: text, checked against its values")
    if isinstance(t, mysql.SET):
        return Mapped("text", note="set: its members as comma-separated text")
    if isinstance(t, mysql.BIT):
        return Mapped(None, note=f"{declared}: bits, not loaded (make it tinyint(1) or cast it in a query)")
    if c.json_checked or isinstance(t, sqltypes.JSON):
        return Mapped("json")
    if isinstance(t, mysql.TIMESTAMP):
        return Mapped("timestamp", note="TIMESTAMP: MariaDB/MySQL read it in the session time_zone; the source "
                      "connection must use UTC (DATETIME is read as stored)")
    if isinstance(t, mysql.DATETIME):
        return Mapped("timestamp", note="DATETIME: no time zone, taken as UTC")
    return _common(t, c.declared) or Mapped("text", read="text", note=f"{c.declared}: no matching spec type; "
                                             "loaded as its text")


def map_sqlite(c: SourceColumn) -> Mapped:
    t, declared = c.type, c.declared or "(no type)"
    if not c.declared:
        return Mapped("text", note="no declared type: SQLite holds any value here; loaded as text", decide=True)
    if isinstance(t, sqltypes.Integer) and not isinstance(t, sqltypes.Boolean):
        return Mapped("bigint", note=None if declared.upper() in ("INTEGER", "BIGINT", "INT") else
                      f"{declared}: integer affinity (64-bit)")
    if isinstance(t, sqltypes.Float):
        return Mapped("double")
    if isinstance(t, sqltypes.String):
        return Mapped("text", note=None if declared.upper() in ("TEXT",) else
                      f"{declared}: text affinity; SQLite does not enforce lengths, so text")
    if declared.upper() == "JSON":
        return Mapped("json")
    return _common(t, declared) or Mapped("text", note=f"{declared}: numeric affinity without a spec type; "
                                          "loaded as text", decide=True)


MAPPERS: dict[Capabilities, Callable[..., Mapped]] = {
    postgres_db.CAPABILITIES: map_postgresql, mysql_db.CAPABILITIES: map_mysql, sqlite_db.CAPABILITIES: map_sqlite,
}


# --- reflection ---------------------------------------------------------------------------------------------------

def _declared_types(engine: Engine, schema: str | None, name: str) -> tuple[dict[str, str], set[str]]:
    """Each column's declared type from the catalog, and (MariaDB) the columns checked by json_valid."""
    declared_types = database_for(engine.url).declared_types
    with engine.connect() as conn:
        return declared_types(conn, schema, name)


def reflect_table(engine: Engine, schema: str | None, name: str) -> tuple[list[SourceColumn], list[str], list[str]]:
    """Columns, primary key and a unique non-null key candidate (source names)."""
    insp = inspect(engine)
    declared, json_cols = _declared_types(engine, schema, name)
    indexes = insp.get_indexes(name, schema=schema)
    pk = list(insp.get_pk_constraint(name, schema=schema).get("constrained_columns") or [])
    # An index over an expression has None among its column names: it cannot be a key, nor index a cursor alone.
    uniques: list[list[str]] = [list(i["column_names"]) for i in indexes if i.get("unique")  # type: ignore[arg-type]
                                and None not in i["column_names"]]
    uniques += [list(u["column_names"]) for u in insp.get_unique_constraints(name, schema=schema)]
    leading = {cols[0] for cols in [*[i["column_names"] for i in indexes], *uniques, pk] if cols and cols[0]}  # type: ignore[index]
    with warnings.catch_warnings():  # "Did not recognize type 'xml'": the catalog's declared type covers it
        warnings.simplefilter("ignore", SAWarning)
        reflected = insp.get_columns(name, schema=schema)
    columns = [SourceColumn(c["name"], declared.get(c["name"], str(c["type"])), c["type"], bool(c["nullable"]),
                            indexed=c["name"] in leading, json_checked=c["name"] in json_cols) for c in reflected]
    nullable = {c.name for c in columns if c.nullable}
    unique_key = next((u for u in uniques if u and not set(u) & nullable), [])
    return columns, pk, unique_key


# --- planning -----------------------------------------------------------------------------------------------------

_CURSOR_RANKS = [
    (re.compile(r"^(updated_?at|last_?update[d]?|last_?modified|modified(_?at|_?on|_?date|_?time)?|updated(_?on|"
                r"_?date|_?time)?|changed(_?at|_?on)?|modification_?(date|time))$", re.I), "its name says it changes "
     "when a row changes"),
    (re.compile(r"^(modified|updated|changed|last_?mod|last_?upd)", re.I),
     "its name says it changes when a row changes"),
    (None, "an indexed timestamp"),
    (re.compile(r"^(created|inserted|creation)", re.I), "DECIDE: it marks when a row was created, so rows updated "
     "later are not synced again; prefer a column that moves on every update"),
    (re.compile(r".*"), "DECIDE: no column is named like a last-change time; this one is a guess"),
]


def choose_cursor(candidates: list[tuple[PlannedColumn, SourceColumn]]) -> tuple[PlannedColumn | None, str]:
    """The cursor by ``CURSOR_RULE``, and the comment saying why and what else there was."""
    ranked = []
    for planned, src in candidates:
        for rank, (pattern, why) in enumerate(_CURSOR_RANKS):
            if (pattern is None and src.indexed) or (pattern is not None and pattern.search(src.name)):
                ranked.append(((rank, src.nullable, not src.indexed, src.name), planned, why))
                break
    if not ranked:
        return None, ""
    ranked.sort(key=lambda r: r[0])
    _, best, why = ranked[0]
    others = [p.name for _, p, _ in ranked[1:]]
    note = f"cursor {best.name}: {why}" + (f"; alternatives: {', '.join(others)}" if others else "; no other "
                                            "timestamp or date column")
    return best, note


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            candidate = f"{n[:60]}_{seen[n]}"
            while candidate in seen:
                seen[n] += 1
                candidate = f"{n[:60]}_{seen[n]}"
            n = candidate
        seen.setdefault(n, 1)
        out.append(n)
    return out


def _source_query(engine: Engine, schema: str | None, name: str, columns: list[PlannedColumn]) -> str:
    """A SELECT of the table with the conversions the columns need, every name quoted by the source's dialect."""
    exprs = []
    for c in columns:
        col: Any = column(c.source)
        if c.mapped.read == "json":
            col = func.to_jsonb(col)
        elif c.mapped.read == "text":
            col = cast(col, Text)
        exprs.append(col.label(c.name))
    stmt = select(*exprs).select_from(table(name, schema=schema))
    return str(stmt.compile(dialect=engine.dialect))


def plan_table(engine: Engine, schema: str | None, spec_schema: str | None, name: str, pipeline: str,
               key_as_varchar: bool = False, exact_digits: int | None = None) -> TablePlan:
    """Reflect one table and decide its spec (see the module docstring).

    ``schema`` is where the table is reflected (None: SQLite), ``spec_schema`` what the spec names (None: the
    connection's default schema).
    """
    mapper = MAPPERS.get(database_for(engine.url).capabilities)
    if mapper is None:
        raise DriftlessError(f"etl discover knows PostgreSQL, MariaDB/MySQL and SQLite, not {engine.dialect.name!r}")
    columns, pk, unique_key = reflect_table(engine, schema, name)
    plan = TablePlan(name, spec_schema, pipeline)
    targets = _unique_names([snake_name(c.name) for c in columns])
    by_source: dict[str, tuple[PlannedColumn, SourceColumn]] = {}
    for src, target in zip(columns, targets, strict=True):
        planned = PlannedColumn(src.name, target, mapper(src), src.nullable)
        wide = re.match(r"numeric\((\d+),\d+\)$", planned.mapped.type or "")
        if exact_digits is not None and wide and int(wide[1]) > exact_digits:
            # The target cannot hold the decimal exactly (SQLite: doubles): its text, and a person decides.
            planned.mapped = Mapped("text", read="text", decide=True, note=(
                f"{planned.mapped.type} does not fit the target exactly (it holds numbers to {exact_digits} digits): "
                "loaded as text; choose a PostgreSQL or MariaDB target to keep it a number"))
        plan.columns.append(planned)
        by_source[src.name] = (planned, src)
    key = pk or unique_key
    if not pk and unique_key:
        plan.key_note = f"no primary key: the unique index on ({', '.join(unique_key)}) identifies a row"
    if not key:
        plan.problems.append("the table has no primary key and no unique index over NOT NULL columns: declare the "
                             "columns that identify a row in source.primary_key (the target is keyed by them; a "
                             "keyless table cannot be upserted)")
    for k in key:
        planned = by_source[k][0]
        if planned.mapped.type is None:
            plan.problems.append(f"key column {k!r} has a type that is not loaded ({planned.mapped.note})")
        elif key_as_varchar and planned.mapped.type in ("text", "json"):
            planned.mapped = Mapped("varchar(255)", read=planned.mapped.read, note="key column: varchar(255), not "
                                    "text, because MariaDB/MySQL cannot index text in a key; longer keys are "
                                    "quarantined")
    plan.primary_key = [by_source[k][0].name for k in key]
    loaded = [c for c in plan.columns if c.mapped.type is not None]
    candidates = [(p, s) for p, s in by_source.values() if p.mapped.type in ("timestamp", "timestamptz", "date")]
    cursor, plan.cursor_note = choose_cursor(candidates)
    if cursor is None:
        plan.problems.append("no timestamp or date column to place rows in windows: add one that changes with "
                             "every update (e.g. updated_at, kept by a trigger), or write a query that provides one, "
                             "then name it in source.cursor")
    else:
        plan.cursor = cursor.name
        src = by_source[cursor.source][1]
        _cursor_facts(engine, schema, plan, cursor, src)
    converted = [c.name for c in loaded if c.mapped.read]
    if converted or "." in name:
        plan.query = _source_query(engine, spec_schema, name, loaded)
        why = f"some columns are converted in the source ({', '.join(converted)})" if converted else \
            "the table's name holds a dot (which `table:` takes as schema.table)"
        plan.notes.append(f"read through a query because {why}. `etl reconcile --deep` and `--repair` need "
                          "`table:` instead; per-window checks work as usual")
    return plan


def _cursor_facts(engine: Engine, schema: str | None, plan: TablePlan, cursor: PlannedColumn, src: SourceColumn
                  ) -> None:
    """start_date from the oldest cursor value; NULL cursors and (SQLite) the text layout of the values."""
    col: Any = column(src.name)
    tbl = table(plan.table, col, schema=schema)
    with engine.connect() as conn:
        oldest, rows, valued = conn.execute(select(func.min(col), func.count(), func.count(col)).select_from(tbl)).one()
        sample = None
        if capabilities(engine.url).timestamps_as_text and cursor.mapped.type != "date":
            sample = conn.execute(select(col).select_from(tbl).where(col.is_not(None)).limit(1)).scalar()
    if isinstance(oldest, str):
        try:
            oldest = datetime.fromisoformat(oldest.strip().replace("Z", "+00:00"))
        except ValueError:
            oldest = None
    if isinstance(oldest, datetime):
        oldest = oldest.date()
    plan.start_date = oldest if isinstance(oldest, date) else datetime.now(UTC).date()
    nulls = rows - valued
    if src.nullable:
        if nulls:
            plan.null_cursor = "every_window"
            plan.cursor_note += (f". WARNING: the cursor is nullable and {nulls} row(s) have it NULL today, so they "
                                 "lie in no window: null_cursor: every_window reads them in every window (upserted, "
                                 "unchanged rows cost nothing); `skip` would leave them out")
        else:
            plan.cursor_note += (". WARNING: the cursor is nullable (no NULLs today); a row with a NULL cursor would "
                                 "fail its window (null_cursor: fail) until you choose every_window or skip")
    if isinstance(sample, str) and not SQLITE_STAMP.match(sample):
        plan.cursor_note += (f". WARNING: SQLite compares this cursor as text and its values look like {sample!r}: "
                             "windows compare against 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC), so a layout with 'T' or a "
                             "zone puts rows near a window edge into the neighbouring window")


# --- writing ------------------------------------------------------------------------------------------------------

def _y(value: Any) -> str:
    """A YAML scalar or flow collection (JSON is YAML)."""
    if isinstance(value, str) and IDENTIFIER.match(value) and value.lower() not in _YAML_WORDS:
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def render_spec(plan: TablePlan, source_conn: str, target_conn: str, schedule: str, target_schema: str | None) -> str:
    """The spec's YAML text, with the comments a person needs."""
    label = f"{plan.schema}.{plan.table}" if plan.schema else plan.table
    lines = [f"# Discovered by `etl discover {source_conn} --target {target_conn}` from table {label!r}.",
             "# Lines marked DECIDE need a person; re-running discover shows what changed in the source and never",
             "# overwrites this file without --force."]
    lines += [f"# Note: {n}" for n in plan.notes]
    lines += [f"# TO DO before this spec can run: {p}" for p in plan.problems]
    lines += [f"name: {plan.pipeline}",
              f"description: {_y(f'{label} from {source_conn}, discovered')}",
              f"schedule: {_y(schedule)}  # each run syncs the interval before it; `etl run` catches up interval "
              "by interval",
              f"start_date: {plan.start_date or datetime.now(UTC).date()}  # the day of the oldest cursor value, so "
              "the first run loads every row",
              "source:", "  type: sql", f"  connection: {source_conn}"]
    if plan.query:
        lines.append("  query: |")
        lines += [f"    {line}".rstrip() for line in plan.query.splitlines()]
    else:
        lines.append(f"  table: {_y(label if plan.schema else plan.table)}")
    key_comment = f"  # {plan.key_note}" if plan.key_note else ""
    lines.append(f"  primary_key: {_y(plan.primary_key)}{key_comment}")
    cursor_comment = plan.cursor_note or "DECIDE: none found"
    lines.append(f"  cursor: {_y(plan.cursor) if plan.cursor else 'null'}  # {cursor_comment}")
    if plan.null_cursor:
        lines.append(f"  null_cursor: {plan.null_cursor}")
    lines += ["target:", f"  connection: {target_conn}", f"  table: {plan.pipeline}"]
    if target_schema:
        lines.append(f"  schema: {target_schema}")
    lines += ["  write_mode: upsert", f"columns:  # {NAMING_RULE}"]
    for c in plan.columns:
        if c.mapped.type is None:
            lines.append(f"  # not loaded: {c.source}: {c.mapped.note}")
            continue
        fields = [f"name: {c.name}"]
        if c.source != c.name and not plan.query:
            fields.append(f"source: {_y(c.source)}")
        fields.append(f"type: {_y(c.mapped.type)}")
        if not c.nullable:
            fields.append("nullable: false")
        if c.mapped.allowed:
            fields.append(f"checks: {{allowed: {_y(c.mapped.allowed)}}}")
        note = f"  # {c.mapped.note}" if c.mapped.note else ""
        lines.append(f"  - {{{', '.join(fields)}}}{note}")
    return "\n".join(lines) + "\n"


def spec_changes(old: Any, new: Any) -> list[str]:
    """What changed between an existing spec and the one discover would write (columns by target name)."""
    changes = []
    old_cols = {c.name: c for c in old.columns}
    new_cols = {c.name: c for c in new.columns}
    for name, c in new_cols.items():
        if name not in old_cols:
            changes.append(f"+ column {name} ({c.type}): new in the source")
        else:
            before = old_cols[name]
            if before.type != c.type:
                changes.append(f"~ column {name}: type {before.type} -> {c.type}")
            if before.nullable != c.nullable:
                changes.append(f"~ column {name}: nullable {str(before.nullable).lower()} -> {str(c.nullable).lower()}")
            if (before.checks and before.checks.allowed) != (c.checks and c.checks.allowed):
                changes.append(f"~ column {name}: allowed values {before.checks and before.checks.allowed} -> "
                               f"{c.checks and c.checks.allowed}")
    for name in old_cols:
        if name not in new_cols:
            changes.append(f"- column {name}: no longer in the source (or no longer loadable)")
    if list(old.source.primary_key) != list(new.source.primary_key):
        changes.append(f"~ primary_key {old.source.primary_key} -> {new.source.primary_key}")
    if old.source.cursor != new.source.cursor:
        changes.append(f"~ cursor {old.source.cursor} -> {new.source.cursor}")
    return changes


@dataclass
class DiscoverResult:
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    changed: list[Path] = field(default_factory=list)  # existing specs that differ, left alone (no --force)
    drafts: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def discover(source_conn: str, target_conn: str, out_dir: Path, tables: list[str] | None = None,
             schema: str | None = None, schedule: str = "@daily", prefix: str = "", target_schema: str | None = None,
             force: bool = False, out: TextIO | None = None) -> DiscoverResult:
    """Write one spec per table (see the module docstring); prints what it did to ``out``."""
    from driftless.extract.validate import check_code

    out = out or sys.stdout
    for conn_id, what in ((source_conn, "SOURCE_CONNECTION"), (target_conn, "--target")):
        if not IDENTIFIER.match(conn_id):
            raise DriftlessError(f"{what}: {conn_id!r} is not a connection id (define AIRFLOW_CONN_<ID> and pass the "
                                 "id: specs name connections, never URLs)")
    engine = engine_for(resolve_url(source_conn))
    try:
        target_db: Capabilities | None = capabilities(resolve_url(target_conn))
    except DriftlessError:
        target_db = None  # not defined yet: fine for writing specs
    result = DiscoverResult()
    try:
        insp = inspect(engine)
        default_schema = insp.default_schema_name
        if tables:
            names = tables
        else:
            names = [t for t in insp.get_table_names(schema=schema) if t not in STATE_TABLES]
            if not names:
                raise DriftlessError(f"no tables in {redact_url(engine.url)}"
                                     + (f" schema {schema!r}" if schema else ""))
        qualify = schema if schema and schema != default_schema else None
        reflect_schema = (schema or default_schema) if capabilities(engine.url).schemas else None
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            if not insp.has_table(name, schema=reflect_schema):
                raise DriftlessError(f"--tables: no table {name!r} in {redact_url(engine.url)}"
                                     + (f" schema {schema!r}" if schema else ""))
            pipeline = snake_name(f"{prefix}{qualify + '_' if qualify else ''}{name}")
            plan = plan_table(engine, reflect_schema, qualify, name, pipeline,
                              key_as_varchar=target_db is not None and target_db.text_keys_only_varchar,
                              exact_digits=target_db.exact_digits if target_db is not None else None)
            text_ = render_spec(plan, source_conn, target_conn, schedule, target_schema)
            _write(plan, text_, out_dir, force, result, out, check_code)
    except SQLAlchemyError as exc:
        from driftless.reconcile.checks import error_detail

        raise DriftlessError(f"discovering {redact_url(engine.url)} failed: {error_detail(exc)}") from exc
    finally:
        engine.dispose()
    return result


def _write(plan: TablePlan, text_: str, out_dir: Path, force: bool, result: DiscoverResult, out: TextIO,
           check_code: Any) -> None:
    path = out_dir / f"{plan.pipeline}.yaml"
    if plan.problems:
        draft = path.with_suffix(".yaml.draft")
        draft.write_text(text_, encoding="utf-8")
        result.drafts.append(draft)
        print(f"draft    {draft}: " + "; ".join(plan.problems) + f" (then rename it to {path.name})", file=out)
        return
    try:
        spec = parse_spec(yaml.safe_load(text_), str(path))
        problems = check_code(spec)
    except SpecError as exc:  # a bug in discover: say so instead of writing a spec that does not load
        raise DriftlessError(f"discover made a spec that does not validate (please report): {exc}") from exc
    if problems:
        raise DriftlessError(f"discover made a spec that does not validate (please report): {problems}")
    if path.exists():
        old_text = path.read_text(encoding="utf-8")
        try:
            old = parse_spec(yaml.safe_load(old_text), str(path))
        except (SpecError, yaml.YAMLError):
            old = None
        if old is not None and old.model_dump() == spec.model_dump():
            result.unchanged.append(path)
            print(f"same     {path}", file=out)
            return
        if not force:
            result.changed.append(path)
            changes = spec_changes(old, spec) if old is not None else ["the existing file does not validate"]
            print(f"changed  {path}: differs from what the source gives now (not overwritten; --force does):", file=out)
            for change in changes or ["(other settings: see the diff)"]:
                print(f"  {change}", file=out)
            out.writelines(difflib.unified_diff(old_text.splitlines(keepends=True), text_.splitlines(keepends=True),
                                                f"{path} (yours)", f"{path} (discovered now)"))
            return
    path.write_text(text_, encoding="utf-8")
    result.written.append(path)
    decide = sum(1 for line in text_.splitlines() if "DECIDE" in line)
    print(f"wrote    {path}" + (f" ({decide} line(s) marked DECIDE)" if decide else ""), file=out)
