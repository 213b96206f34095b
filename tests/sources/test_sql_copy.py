"""PostgreSQL sources read through COPY: the same values as the driver's path.

Two COPY paths: ADBC's (binary COPY into typed Arrow, ``SqlSource._adbc_frames``) where ``adbc-driver-postgresql``
is installed, and psycopg's text COPY (``_copy_frames``) otherwise (``DRIFTLESS_SQL_ADBC=0``). Each test reads one
window each way and through the server-side cursor the COPY paths replace, and requires the converted chunks
(loaded rows and quarantined rows) to be identical: NULL apart from '', unicode, quotes, newlines, microseconds,
exact decimals, big integers, doubles, booleans, JSON as written.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from sqlalchemy import create_engine, text

from driftless.extract.validate import Validator
from driftless.sources.sql.source import SqlSource, adbc_postgresql
from driftless.spec import parse_spec
from driftless.window import Window

WINDOW = Window.parse("2025-01-01", "2025-02-01")

ROWS = """
INSERT INTO hostile VALUES
 (1, '2025-01-01 00:00:00.000001+00', '', 'plain', 0.00, 9223372036854775807, 0.1, true, '2025-01-01',
  '1999-12-31 23:59:59.999999', '{"b": 2.50, "a": "ü"}', 'x'),
 (2, '2025-01-01 00:00:00.000002+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, '2025-01-02 03:04:05.123456+00', ' padded ', E'line\\nbreak, "quoted", back\\\\slash',
  12345678901234567890.1234567891, -9223372036854775808, 1e308, false, '0001-01-01',
  '9999-12-31 23:59:59.999999', '[1, "二", null]', 'ab'),
 (4, '2025-01-03 00:00:00+05', 'NULL', '🦆 e\u0301', -0.0000000001, 0, 5e-324, true, '1970-01-01',
  '1970-01-01 00:00:00', '"text"', ''),
 (5, '2025-01-04 00:00:00+00', '\\N', ',', 1, 1, -0.0, false, '2024-02-29', '2024-02-29 12:00:00', 'null', NULL),
 (6, '2025-01-05 00:00:00+00', 'x', 'y', 'NaN', 2, 'NaN', true, '2025-01-01', '2025-01-01 00:00:00', '{}', 'z'),
 (7, '2025-01-06 00:00:00+00', 'x', 'y', 1, 3, 'Infinity', true, '2025-01-01', '2025-01-01 00:00:00', '{}', 'z'),
 (8, '2025-01-07 00:00:00+00', 'x', 'y', 1, 4, 1, true, '2025-01-01', '2025-01-01 00:00:00', '{}', 'zz'),
 (9, '2024-12-31 23:59:59.999999+00', 'outside', 'the window', 1, 5, 1, true, '2025-01-01', '2025-01-01', '{}', 'z')
"""


@pytest.fixture
def hostile(pg_url, connections):
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE hostile (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, a text, b varchar(80), "
            "amount numeric(38,10), big bigint, ratio double precision, flag boolean, day date, naive timestamp, "
            "doc jsonb, code char(4))"))
        conn.execute(text(ROWS))
    engine.dispose()
    connections(src=pg_url)
    return parse_spec({
        "name": "hostile", "chunk_size": 3,
        "source": {"type": "sql", "connection": "src", "table": "hostile", "primary_key": ["id"],
                   "cursor": "updated_at"},
        "target": {"connection": "src", "table": "copy_target"},
        "max_reject_ratio": 1,
        "columns": [
            {"name": "id", "type": "bigint", "nullable": False},
            {"name": "updated_at", "type": "timestamptz", "nullable": False},
            {"name": "a", "type": "text"}, {"name": "b", "type": "varchar(80)"},
            {"name": "amount", "type": "numeric(38,10)"}, {"name": "big", "type": "bigint"},
            {"name": "ratio", "type": "double"}, {"name": "flag", "type": "boolean"}, {"name": "day", "type": "date"},
            {"name": "naive", "type": "timestamp"}, {"name": "doc", "type": "json"},
            {"name": "code", "type": "text"},
        ],
    }, "test")


PATHS = ["adbc", "text_copy"]


def _use(path: str, patch) -> None:
    """Read through ``path``: ADBC, psycopg's text COPY, or the server-side cursor."""
    if path == "adbc":
        assert adbc_postgresql() is not None, "adbc-driver-postgresql is a dependency"
    else:
        patch.setenv("DRIFTLESS_SQL_ADBC", "0")
    if path == "cursor":
        patch.setattr(SqlSource, "_copy_columns", lambda self, conn, stmt: False)


def _read(spec, path: str, monkeypatch, window: Window = WINDOW) -> tuple[pa.Table, list]:
    with monkeypatch.context() as patch:
        _use(path, patch)
        source = SqlSource(spec)
        frames = list(source.read(window))
        source.engine.dispose()
    validator = Validator(spec)
    results = [validator.validate(f) for f in frames]
    good = pa.concat_tables([r.good for r in results])
    rejects = [row for r in results for row in r.rejects.to_dict("records")]
    return good, rejects, [len(f) for f in frames]


@pytest.mark.parametrize("path", PATHS)
def test_copy_reads_exactly_what_the_cursor_reads(hostile, monkeypatch, path):
    calls = []
    method = "_adbc_frames" if path == "adbc" else "_copy_frames"
    original = getattr(SqlSource, method)
    monkeypatch.setattr(SqlSource, method, lambda self, *a: calls.append(1) or original(self, *a))
    good_copy, rejects_copy, sizes = _read(hostile, path, monkeypatch)
    assert calls, f"the {path} path was not taken"
    good_cursor, rejects_cursor, _ = _read(hostile, "cursor", monkeypatch)
    assert sizes == [3, 3, 2]  # chunk_size rows per chunk; row 9 lies outside the window
    assert good_copy.schema == good_cursor.schema
    copied = {r["id"]: r for r in good_copy.to_pylist()}
    cursored = {r["id"]: r for r in good_cursor.to_pylist()}
    # Both paths load the same rows with the same values (2**63-1 and -2**63 beside a NULL included: the cursor
    # path keeps such a bigint column as the driver's ints, the COPY text never passes through a float).
    assert sorted(copied) == sorted(cursored) == [1, 2, 3, 4, 5, 8]
    assert all(copied[i] == cursored[i] for i in cursored)

    def reasons(rejects):
        return {r["record_key"]: sorted((e["column"], e["check"]) for e in json.loads(r["errors"])) for r in rejects}

    assert reasons(rejects_copy) == reasons(rejects_cursor)
    rows = copied
    assert rows[1]["a"] == "" and rows[2]["a"] is None and rows[4]["a"] == "NULL" and rows[5]["a"] == "\\N"
    assert rows[3]["b"] == 'line\nbreak, "quoted", back\\slash' and rows[4]["b"] == "🦆 e\u0301"
    assert str(rows[3]["amount"]) == "12345678901234567890.1234567891"
    assert rows[1]["big"] == 2**63 - 1 and rows[3]["big"] == -(2**63)
    assert rows[3]["updated_at"].microsecond == 123456 and rows[1]["updated_at"].microsecond == 1
    assert rows[4]["updated_at"].hour == 19  # +05 -> UTC, the previous day
    assert rows[1]["ratio"] == 0.1 and rows[5]["ratio"] == 0.0
    assert rows[1]["code"] == "x   " and rows[4]["code"] == "    "  # char(4) keeps its padding
    assert sorted(r["record_key"] for r in rejects_copy) == ["[6]", "[7]"]  # NaN, Infinity: on both paths


def test_copy_is_not_used_when_raw_values_feed_a_transform(hostile, monkeypatch):
    spec = hostile.model_copy(update={"transforms": hostile.transforms.model_copy(update={"cast": {"a": "text"}})})
    monkeypatch.setattr(SqlSource, "_copy_frames", lambda *a: pytest.fail("COPY used"))
    monkeypatch.setattr(SqlSource, "_adbc_frames", lambda *a: pytest.fail("ADBC used"))
    source = SqlSource(spec)
    assert sum(len(f) for f in source.read(WINDOW)) == 8
    source.engine.dispose()


@pytest.mark.parametrize("path", PATHS)
def test_an_empty_window_reads_nothing(hostile, monkeypatch, path):
    _use(path, monkeypatch)
    source = SqlSource(hostile)
    assert list(source.read(Window.parse("2030-01-01", "2030-02-01"))) == []
    source.engine.dispose()


@pytest.mark.parametrize("path", PATHS)
def test_stopping_a_copy_read_early_ends_it(pg_url, connections, monkeypatch, path):
    # Arrow reads the COPY ahead on a thread of its own; a consumer that stops after the first chunk (or fails)
    # closes the generator, which cancels the COPY. That used to leave two threads waiting on one connection
    # forever. Closed from a thread here, so that a hang fails the test instead of blocking the run.
    import threading

    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE many AS SELECT i::bigint AS id, timestamptz '2025-01-02' + i * interval '1 ms' "
                          "AS updated_at, repeat('x', 40) AS pad FROM generate_series(1, 100000) AS i"))
    engine.dispose()
    connections(src=pg_url)
    spec = parse_spec({
        "name": "many", "chunk_size": 1000,
        "source": {"type": "sql", "connection": "src", "table": "many", "primary_key": ["id"], "cursor": "updated_at"},
        "target": {"connection": "src", "table": "many_target"},
        "columns": [{"name": "id", "type": "bigint", "nullable": False},
                    {"name": "updated_at", "type": "timestamptz", "nullable": False}, {"name": "pad", "type": "text"}],
    }, "test")
    _use(path, monkeypatch)
    source = SqlSource(spec)
    for _ in range(3):
        chunks = source.read(WINDOW)
        first = next(chunks)
        assert len(first) == 1000 and first["id"].tolist()[:2] == ([1, 2] if path == "adbc" else ["1", "2"])
        closer = threading.Thread(target=chunks.close, daemon=True)
        closer.start()
        closer.join(120)
        assert not closer.is_alive(), "closing the COPY read hung"
    assert source.count(WINDOW) == 100000  # the source's connections are still usable
    source.engine.dispose()


@pytest.mark.parametrize("path", [*PATHS, "cursor"])
@pytest.mark.parametrize("cursor", ["ts", "day"])
def test_window_bounds_hold_on_every_path_whatever_the_session_zone(pg_url, connections, monkeypatch, path, cursor):
    # The database's own TimeZone is not UTC: a naive timestamp cursor is UTC wall time on every path (and a date
    # cursor a calendar day), so the window [2025-01-01, 2025-01-02) holds rows 2 and 3, not 1 or 4.
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text(f'ALTER DATABASE "{pg_url.database}" SET TimeZone = \'Asia/Kolkata\''))
    engine.dispose()
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bounds (id bigint PRIMARY KEY, ts timestamp NOT NULL, day date NOT NULL, "
                          "note text)"))
        conn.execute(text("INSERT INTO bounds VALUES (1, '2024-12-31 23:59:59.999999', '2024-12-31', 'before'), "
                          "(2, '2025-01-01 00:00:00', '2025-01-01', 'first'), "
                          "(3, '2025-01-01 23:59:59.999999', '2025-01-01', ''), "
                          "(4, '2025-01-02 00:00:00', '2025-01-02', NULL)"))
    engine.dispose()
    connections(src=pg_url)
    spec = parse_spec({
        "name": "bounds", "chunk_size": 10,
        "source": {"type": "sql", "connection": "src", "table": "bounds", "primary_key": ["id"], "cursor": cursor},
        "target": {"connection": "src", "table": "bounds_target"},
        "columns": [{"name": "id", "type": "bigint", "nullable": False},
                    {"name": "ts", "type": "timestamp", "nullable": False},
                    {"name": "day", "type": "date", "nullable": False}, {"name": "note", "type": "text"}],
    }, "test")
    good, rejects, _ = _read(spec, path, monkeypatch, Window.parse("2025-01-01", "2025-01-02"))
    assert rejects == []
    rows = sorted(good.to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [2, 3] and rows[1]["ts"].microsecond == 999999
    assert rows[0]["note"] == "first" and rows[1]["note"] == "" and str(rows[1]["day"]) == "2025-01-01"
