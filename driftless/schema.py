"""The logical column types of a spec, as SQLAlchemy types (DDL, binds) and Arrow types (staging files).

SQLAlchemy's generic types render the right DDL for each dialect; nothing here knows a dialect.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Float,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    cast,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeEngine

from driftless.spec import TYPE_PATTERN, PipelineSpec

# A UTC timestamp column on every dialect (MySQL/MariaDB DATETIME keeps microseconds only with fsp=6);
# driftless's own tables (state, runs, quarantine, checks) and ``_deleted_at`` use it.
UTC_TIMESTAMP = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def sql_type(type_name: str) -> TypeEngine[Any]:
    """The SQLAlchemy type of a spec column type."""
    m = TYPE_PATTERN.match(type_name)
    assert m, type_name  # the spec validated it
    if m["numeric"]:
        return Numeric(int(m["precision"]), int(m["scale"]), asdecimal=True)
    if m["varchar"]:
        return String(int(m["length"])) if m["length"] else Text()
    types: dict[str, TypeEngine[Any]] = {
        "smallint": SmallInteger(),
        "integer": Integer(),
        "bigint": BigInteger(),
        # MySQL/MariaDB TEXT holds only 64 KB; LONGTEXT holds what the other databases' text holds.
        "text": Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"),
        "float": Float(),
        "double": Double(),
        "boolean": Boolean(),
        # MySQL/MariaDB DATETIME drops fractions of a second unless asked for them.
        "timestamp": DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
        "timestamptz": DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
        "date": Date(),
        # JSONB on PostgreSQL: plain JSON has no equality operator, which the merge's IS DISTINCT FROM needs.
        "json": JSON().with_variant(postgresql.JSONB(), "postgresql"),
    }
    return types[m["simple"]]


class JsonText(TypeDecorator[str]):
    """A JSON column read as its text: ``CAST(column AS text)`` in the SELECT, no decoding.

    Drivers decode JSON themselves (psycopg turns jsonb ``"x"`` into ``x`` and ``null`` into None, and
    ``2.50`` into a double): a source's JSON is read as text so that it loads exactly as written.
    """

    impl = Text
    cache_ok = True

    def column_expression(self, colexpr: Any) -> Any:
        return cast(colexpr, Text)


def read_type(type_name: str) -> TypeEngine[Any] | None:
    """The SQLAlchemy type a source column of spec type ``type_name`` is read with.

    JSON as its text; every other type untyped (None: the driver's raw value, converted by ``extract.transform``).
    """
    return JsonText() if type_name == "json" else None


def arrow_type(type_name: str) -> pa.DataType:
    """The Arrow type a column has in staging files (timestamps are always UTC)."""
    m = TYPE_PATTERN.match(type_name)
    assert m, type_name
    if m["numeric"]:
        return pa.decimal128(int(m["precision"]), int(m["scale"]))
    if m["varchar"]:
        return pa.string()
    return {
        "smallint": pa.int16(),
        "integer": pa.int32(),
        "bigint": pa.int64(),
        "text": pa.string(),
        "float": pa.float32(),
        "double": pa.float64(),
        "boolean": pa.bool_(),
        "timestamp": pa.timestamp("us"),
        "timestamptz": pa.timestamp("us", tz="UTC"),
        "date": pa.date32(),
        "json": pa.string(),
    }[m["simple"]]


def arrow_schema(spec: PipelineSpec) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c.type), nullable=c.nullable) for c in spec.columns])


def target_table(spec: PipelineSpec, metadata: MetaData | None = None) -> Table:
    """The target table as SQLAlchemy Core sees it: spec columns and the primary key."""
    metadata = metadata or MetaData()
    columns = [
        # autoincrement=False: a single integer key is the source's value, never SERIAL/AUTO_INCREMENT.
        Column(c.name, sql_type(c.type), nullable=c.nullable and c.name not in spec.source.primary_key,
               autoincrement=False)
        for c in spec.columns
    ]
    return Table(
        spec.target.table,
        metadata,
        *columns,
        PrimaryKeyConstraint(*spec.source.primary_key, name=f"pk_{spec.target.table}"[:63]),
        schema=spec.target.db_schema,
    )
