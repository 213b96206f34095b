"""Deep diff across PostgreSQL, MariaDB and SQLite: planted differences found, phantom ones not."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, Numeric, Table, create_engine, insert, text
from sqlalchemy.dialects import mysql, postgresql

from driftless.errors import ReconciliationFailed
from driftless.reconcile.dialects import h48
from driftless.reconcile.diff import DeepDiff, deep_diff
from tests.diff_fixtures import create_filled, expected, found, plant, second_sqlite, url_for

DIALECTS = ["postgresql", "mariadb", "sqlite"]
ORDERED_PAIRS = [(a, b) for a in DIALECTS for b in DIALECTS if a != b]
PAIRS = [("postgresql", "mariadb"), ("postgresql", "sqlite"), ("mariadb", "sqlite")]
KEY_COLUMNS = {"int": ["id"], "string": ["code"], "compound": ["region", "id"]}


def pair_urls(request, a: str, b: str):
    ua = url_for(request, a)
    ub = url_for(request, b)
    if a == b == "sqlite":
        ub = second_sqlite(ua)
    return ua, ub


@pytest.mark.parametrize(("src", "tgt"), ORDERED_PAIRS, ids=[f"{a}-{b}" for a, b in ORDERED_PAIRS])
def test_planted_differences_found_int_key(request, src, tgt):
    su, tu = pair_urls(request, src, tgt)
    create_filled(su)
    table = create_filled(tu)
    assert deep_diff(su, tu, "t", ["id"]).differences == 0  # identical copies: nothing reported
    plant(tu, table)
    # small buckets so that the bisection really recurses on a 2000-row table
    result = deep_diff(su, tu, "t", ["id"], bucket_rows=512, leaf_rows=16)
    assert found(result, ["id"]) == expected()
    assert result.rows_source == 2000 and result.rows_target == 2000
    assert result.status == "FAIL"
    assert result.queries > 4  # it bisected rather than fetching the table


@pytest.mark.parametrize("key", ["string", "compound"])
@pytest.mark.parametrize(("src", "tgt"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_planted_differences_found_string_and_compound_keys(request, src, tgt, key):
    su, tu = pair_urls(request, src, tgt)
    create_filled(su, key=key)
    table = create_filled(tu, key=key)
    assert deep_diff(su, tu, "t", KEY_COLUMNS[key], leaf_rows=64).differences == 0
    plant(tu, table, key=key)
    result = deep_diff(su, tu, "t", KEY_COLUMNS[key], leaf_rows=64)
    assert found(result, KEY_COLUMNS[key]) == expected(key)


@pytest.mark.parametrize(("src", "tgt"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_changed_row_sample_shows_both_sides(request, src, tgt):
    su, tu = pair_urls(request, src, tgt)
    create_filled(su, n=50)
    table = create_filled(tu, n=50)
    engine = create_engine(tu)
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == 20).values(s=None, amt=Decimal("1.50")))
    engine.dispose()
    summary = deep_diff(su, tu, "t", ["id"]).summary()
    assert summary["changed"] == 1
    change = summary["samples"]["changed"][0]
    assert change["key"] == {"id": 20}
    assert change["columns"] == {"s": {"source": "", "target": None}, "amt": {"source": "1.40", "target": "1.50"}}
    assert summary["changed_columns"] == {"amt": 1, "s": 1}


def _exec(url, *statements, params=None):
    engine = create_engine(url)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(text(s), params or {})
    engine.dispose()


@pytest.mark.integration
def test_phantom_timestamp_precision_and_numeric_scale(pg_url, mariadb_url, sqlite_url):
    """timestamp(0)/(3) vs DATETIME(6) vs SQLite text without fraction; numeric(14,4) vs (12,2): equal data."""
    md = MetaData()
    pg_t = Table("p", md, Column("id", Integer, primary_key=True, autoincrement=False),
                 Column("ts", postgresql.TIMESTAMP(precision=0)), Column("ms", postgresql.TIMESTAMP(precision=3)),
                 Column("amt", Numeric(14, 4)))
    my_t = Table("p", MetaData(), Column("id", Integer, primary_key=True, autoincrement=False),
                 Column("ts", mysql.DATETIME(fsp=6)), Column("ms", mysql.DATETIME(fsp=6)),
                 Column("amt", Numeric(12, 2)))
    rows = [{"id": i, "ts": dt.datetime(2025, 5, 1, 8, 0, 0) + dt.timedelta(seconds=i),
             "ms": dt.datetime(2025, 5, 1, 8, 0, 0) + dt.timedelta(milliseconds=i * 7),
             "amt": Decimal(i) / 4} for i in range(1, 301)]
    for url, table in ((pg_url, pg_t), (mariadb_url, my_t)):
        engine = create_engine(url)
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
        engine.dispose()
    # SQLite: timestamps as text without fractional seconds or with milliseconds only, amounts as REAL
    _exec(sqlite_url, "CREATE TABLE p (id INTEGER PRIMARY KEY, ts DATETIME, ms DATETIME, amt NUMERIC(12, 2))")
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO p VALUES (:id, :ts, :ms, :amt)"), [
            {"id": r["id"], "ts": r["ts"].strftime("%Y-%m-%d %H:%M:%S"),
             "ms": r["ms"].isoformat(timespec="milliseconds"), "amt": float(r["amt"])} for r in rows])
    engine.dispose()
    for a, b in ((pg_url, mariadb_url), (pg_url, sqlite_url), (mariadb_url, sqlite_url)):
        result = deep_diff(a, b, "p", ["id"])
        assert (result.differences, result.rows_source, result.rows_target) == (0, 300, 300), result.summary()
    # ... while a real difference at the compared scale is still found
    _exec(sqlite_url, "UPDATE p SET amt = amt + 0.01 WHERE id = 7")
    assert [c["key"]["id"] for c in deep_diff(pg_url, sqlite_url, "p", ["id"]).changed] == [7]


@pytest.mark.integration
def test_phantom_session_time_zone(pg_url, mariadb_url):
    """timestamptz read in a New York session vs MariaDB TIMESTAMP read in a +05:30 session: no difference."""
    pg_t = Table("z", MetaData(), Column("id", Integer, primary_key=True, autoincrement=False),
                 Column("at", DateTime(timezone=True)))
    rows = [{"id": i, "at": dt.datetime(2025, 3, 30, 0, 30, tzinfo=dt.UTC) + dt.timedelta(minutes=17 * i)}
            for i in range(1, 301)]  # crosses DST changes of both zones' neighbours
    engine = create_engine(pg_url)
    pg_t.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(pg_t), rows)
    engine.dispose()
    _exec(mariadb_url, "SET time_zone = '+00:00'", "CREATE TABLE z (id INT PRIMARY KEY, at TIMESTAMP(6) NULL)")
    engine = create_engine(mariadb_url)
    with engine.begin() as conn:
        conn.execute(text("SET time_zone = '+00:00'"))
        conn.execute(text("INSERT INTO z VALUES (:id, :at)"),
                     [{"id": r["id"], "at": r["at"].replace(tzinfo=None)} for r in rows])
    engine.dispose()
    pg_ny = pg_url.update_query_dict({"options": "-c TimeZone=America/New_York"})
    my_ist = mariadb_url.update_query_dict({"init_command": "SET time_zone = '+05:30'"})
    result = deep_diff(pg_ny, my_ist, "z", ["id"])
    assert (result.differences, result.rows_source) == (0, 300), result.summary()


@pytest.mark.integration
def test_phantom_text_encoding(pg_url, mariadb_url, sqlite_url):
    """The same text in a latin1 MariaDB column, a UTF-8 PostgreSQL database and SQLite: equal."""
    words = ["Zürich", "café", "naïve", "Ångström", "", "plain", "a  b ", "ÿ"]
    _exec(mariadb_url, "CREATE TABLE w (id INT PRIMARY KEY, word VARCHAR(40) CHARACTER SET latin1 "
                       "COLLATE latin1_swedish_ci NULL) CHARACTER SET latin1")
    _exec(pg_url, "CREATE TABLE w (id INT PRIMARY KEY, word TEXT)")
    _exec(sqlite_url, "CREATE TABLE w (id INTEGER PRIMARY KEY, word TEXT)")
    rows = [{"id": i, "word": w} for i, w in enumerate(words)] + [{"id": 99, "word": None}]
    for url in (pg_url, mariadb_url, sqlite_url):
        engine = create_engine(url.update_query_dict({"charset": "utf8mb4"}) if url is mariadb_url else url)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO w VALUES (:id, :word)"), rows)
        engine.dispose()
    for a, b in ((mariadb_url, pg_url), (mariadb_url, sqlite_url), (pg_url, sqlite_url)):
        assert deep_diff(a, b, "w", ["id"]).differences == 0
    # case matters (byte-exact text), even where the column's collation ignores it
    _exec(mariadb_url, "UPDATE w SET word = 'zürich' WHERE id = 0")
    result = deep_diff(pg_url, mariadb_url, "w", ["id"])
    assert [c["columns"] for c in result.changed] == [{"word": {"source": "Zürich", "target": "zürich"}}]


def test_sqlite_hash_function_matches_python(sqlite_url):
    _exec(sqlite_url, "CREATE TABLE h (id INTEGER PRIMARY KEY, s TEXT)")
    _exec(sqlite_url, "INSERT INTO h VALUES (1, 'é')")
    with DeepDiff(sqlite_url, sqlite_url, "h", ["id"]) as diff:
        (count, total), _ = diff.quick()
    assert count == 1 and total == h48("=1\x1f=é")


def test_unknown_table_and_column_are_named(sqlite_url):
    _exec(sqlite_url, "CREATE TABLE h (id INTEGER PRIMARY KEY, s TEXT)")
    with pytest.raises(ReconciliationFailed, match="table 'nope' does not exist"):
        deep_diff(sqlite_url, sqlite_url, "nope", ["id"])
    with pytest.raises(ReconciliationFailed, match=r"has no column\(s\) \['zz'\]"):
        deep_diff(sqlite_url, sqlite_url, "h", ["id"], ["s", "zz"])


def test_empty_target_counts_every_row_but_keeps_bounded_details(sqlite_url):
    other = second_sqlite(sqlite_url)
    create_filled(sqlite_url, n=1500)
    create_filled(other, n=0)
    result = deep_diff(sqlite_url, other, "t", ["id"])
    summary = result.summary(samples=3)
    assert (summary["missing_in_target"], summary["rows_source"], summary["rows_target"]) == (1500, 1500, 0)
    assert len(result.missing) == 1000 and len(result.source_keys) == 1500  # all keys kept for a repair
    assert [s["key"]["id"] for s in summary["samples"]["missing_in_target"]] == [1, 2, 3]
