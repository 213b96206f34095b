"""Tables of every column type in any database, for the deep-diff tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    URL,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    create_engine,
    delete,
    insert,
    update,
)
from sqlalchemy.dialects import mysql

N_ROWS = 2000
TS6 = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TSZ6 = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def url_for(request: pytest.FixtureRequest, dialect: str) -> URL:
    """A fresh database of the dialect (PostgreSQL and MariaDB tests are integration tests)."""
    if dialect == "sqlite":
        return request.getfixturevalue("sqlite_url")
    request.applymarker(pytest.mark.integration)
    return request.getfixturevalue({"postgresql": "pg_url", "mariadb": "mariadb_url"}[dialect])


def second_sqlite(url: URL) -> URL:
    return url.set(database=url.database.replace(".db", "_2.db"))


def typed_table(name: str = "t", key: str = "int") -> Table:
    md = MetaData()
    if key == "int":
        keys = [Column("id", Integer, primary_key=True, autoincrement=False)]
    elif key == "string":
        keys = [Column("code", String(32), primary_key=True)]
    else:  # compound
        keys = [Column("region", String(16), primary_key=True), Column("id", Integer, primary_key=True,
                                                                       autoincrement=False)]
    return Table(
        name, md, *keys,
        Column("i", Integer), Column("n", BigInteger), Column("amt", Numeric(12, 2)), Column("f", Double),
        Column("b", Boolean), Column("s", Text), Column("v", String(40)), Column("ts", TS6), Column("tz", TSZ6),
        Column("d", Date),
    )


def key_of(i: int, key: str) -> dict[str, Any]:
    if key == "int":
        return {"id": i}
    if key == "string":
        # mixed case and a trailing space: binary collation keeps them distinct and ordered bytewise
        return {"code": f"{'aB'[i % 2]}{i:05d}{' ' if i % 11 == 0 else ''}"}
    return {"region": ["eu", "EU", "us", "Zürich"][i % 4], "id": i}


def row(i: int, key: str = "int") -> dict[str, Any]:
    return {
        **key_of(i, key),
        "i": i * 3 - 1000,
        "n": i * 1_000_003_001,
        "amt": Decimal(i * 7 % 100_000) / 100,
        "f": i / 7,
        "b": i % 3 == 0,
        "s": "" if i % 10 == 0 else None if i % 13 == 0 else f"naïve café {i} — ✓",
        "v": f"v{i}",
        "ts": dt.datetime(2025, 1, 1, 12, 0, 0) + dt.timedelta(seconds=i * 37, microseconds=i),
        "tz": dt.datetime(2025, 3, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i, microseconds=i * 3),
        "d": dt.date(2024, 1, 1) + dt.timedelta(days=i % 700),
    }


def create_filled(url: URL, key: str = "int", n: int = N_ROWS, name: str = "t") -> Table:
    table = typed_table(name, key)
    engine = create_engine(url)
    try:
        table.metadata.create_all(engine)
        if n:
            with engine.begin() as conn:
                conn.execute(insert(table), [row(i, key) for i in range(1, n + 1)])
    finally:
        engine.dispose()
    return table


# Planted differences: (row number, column, new value); each changes exactly one column.
UPDATES: list[tuple[int, str, Any]] = [
    (11, "i", 999_999),
    (22, "n", 1),
    (33, "amt", Decimal("0.01")),
    (44, "f", 123.5),
    (55, "b", True),  # row 55 has b = False (55 % 3 != 0)
    (66, "s", "naïve café 66 — ✗"),
    (77, "v", "V77"),
    (88, "ts", dt.datetime(2025, 1, 1, 12, 0, 0) + dt.timedelta(seconds=88 * 37, microseconds=89)),  # +1 µs
    (99, "tz", dt.datetime(2025, 3, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=99, microseconds=298)),  # +1 µs
    (111, "d", dt.date(2030, 1, 1)),
    (130, "s", None),   # row 130 holds '' (130 % 10 == 0): '' -> NULL
    (143, "s", ""),     # row 143 holds NULL (143 % 13 == 0): NULL -> ''
]
DELETED = [200, 1500]
INSERTED = [N_ROWS + 5, N_ROWS + 6]


def plant(url: URL, table: Table, key: str = "int") -> None:
    """Apply the planted differences to ``table`` in ``url``."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for i, col, value in UPDATES:
                cond = [table.c[k] == v for k, v in key_of(i, key).items()]
                conn.execute(update(table).where(*cond).values({col: value}))
            for i in DELETED:
                conn.execute(delete(table).where(*[table.c[k] == v for k, v in key_of(i, key).items()]))
            conn.execute(insert(table), [row(i, key) for i in INSERTED])
    finally:
        engine.dispose()


def expected(key: str = "int") -> dict[str, Any]:
    def k(i: int) -> tuple:
        return tuple(key_of(i, key).values())

    return {
        "missing": {k(i) for i in DELETED},
        "extra": {k(i) for i in INSERTED},
        "changed": {k(i): {col} for i, col, _ in UPDATES},
    }


def found(result, key_names: list[str]) -> dict[str, Any]:
    def k(entry: dict[str, Any]) -> tuple:
        return tuple(entry["key"][n] for n in key_names)

    return {
        "missing": {k(e) for e in result.missing},
        "extra": {k(e) for e in result.extra},
        "changed": {k(e): set(e["columns"]) for e in result.changed},
    }
