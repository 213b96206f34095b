"""The phantom-diff matrix: equal data of every spec column type diffs to zero on every ordered pair of
PostgreSQL, MariaDB and SQLite, with and without stored row digests; real JSON changes are found exactly.

The tables are the loader's own DDL (``driftless.schema``); the values are written as other tools write
them: JSON with another key order, spacing, number form and escapes in each database, floats near
the edges of their types, '' next to NULL, microseconds, negative decimals.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import URL, create_engine, insert, text

from driftless.canonical import canonical_double, canonical_float32, canonical_json, canonical_number, normalized_json
from driftless.pipeline import run_window
from driftless.reconcile.diff import DeepDiff, deep_diff
from driftless.reconcile.digest import ensure_digest, spec_digest_columns
from driftless.reconcile.run import reconcile_pipeline
from driftless.schema import target_table
from driftless.spec import parse_spec
from driftless.targets import hash_dialect_for
from driftless.window import Window
from tests.diff_fixtures import url_for

DIALECTS = ["postgresql", "mariadb", "sqlite"]
ORDERED_PAIRS = [(a, b) for a in DIALECTS for b in DIALECTS if a != b]
PAIR_IDS = [f"{a}-{b}" for a, b in ORDERED_PAIRS]
N = 30

# every type a spec column can have, one column each
SPEC_TYPES = {
    "c_smallint": "smallint", "c_integer": "integer", "c_bigint": "bigint", "c_text": "text",
    "c_varchar": "varchar(40)", "c_numeric": "numeric(12,3)", "c_float": "float", "c_double": "double",
    "c_boolean": "boolean", "c_ts": "timestamp", "c_tstz": "timestamptz", "c_date": "date", "c_json": "json",
}
SPEC = parse_spec({
    "name": "phantom", "schedule": "@daily",
    "source": {"type": "sql", "connection": "src", "table": "t", "primary_key": ["id"], "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "t"},
    "columns": [{"name": "id", "type": "integer", "nullable": False},
                *({"name": n, "type": t} for n, t in SPEC_TYPES.items()),
                {"name": "updated_at", "type": "timestamp", "nullable": False}],
}, "phantom")

UTC = dt.UTC
PLUS_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
TEXTS = ["", None, "naïve café", "e\u0301 combining", "emoji 😀🎉", "  padded  ", "tab\there", "quote ' \" \\ back",
         "line\nbreak", "日本語", "trailing "]
# The same JSON document as three tools write it: the row's dialect picks one (each side a different one).
JSON_FORMS: list[tuple[str, str, str] | None] = [
    ('{"b": 2.50, "a": [1e2, "\\u00e9"]}', '{"a":[100,"é"],"b":2.5}', ' { "a" : [ 1E+2 , "\\u00e9" ] , "b" : 25e-1 } '),
    ('[1, [2, [3.0, {"k": null}]], true]', '[1.0,[2,[3,{"k":null}]],true]',
     '[ 1e0 , [ 2 , [ 3 , { "k" : null } ] ] , true ]'),
    ('"emoji 😀"', '"emoji \\ud83d\\ude00"', '"emoji \\ud83d\\ude00"'),
    ('{"z": {"y": {"x": -0.0}}, "": ""}', '{"":"","z":{"y":{"x":0}}}', '{"z":{"y":{"x":0e5}},"":""}'),
    ('{"big": 12345678901234567890, "small": 1e-7}', '{"small":0.0000001,"big":1.234567890123456789e19}',
     '{"big":12345678901234567890.000,"small":1E-7}'),
    ('{"s": "tab\\t nl\\n q\\" slash\\/ ctl\\u0001"}', '{"s":"tab\\t nl\\n q\\" slash/ ctl\\u0001"}',
     '{"s":"tab\\u0009 nl\\u000a q\\u0022 slash\\/ ctl\\u0001"}'),
    ('{"é": 1, "e": 2, "E": 3, "ee": 4, "\\u00e8": 5}', '{"ee":4,"E":3,"e":2,"é":1,"è":5}',
     '{"\\u00e9":1.0,"E":3,"e":2,"ee":4,"è":5}'),
    ("null", "null", " null "),
    ("{}", "{ }", "{}"),
    ("[]", "[ ]", "[]"),
    ("-1.5E-3", "-0.0015", "-15e-4"),
    None,  # SQL NULL (not the JSON null above)
]
DIALECT_FORM = {"postgresql": 0, "mariadb": 1, "sqlite": 2}


def logical_row(i: int) -> dict[str, Any]:
    """Row ``i`` as Python values (JSON aside): the same on every side."""
    def pick(values: list[Any]) -> Any:
        return values[i % len(values)]

    return {
        "id": i,
        "c_smallint": pick([-32768, 32767, 0, -1, i]),
        "c_integer": pick([-2147483648, 2147483647, i * 7919, None]),
        "c_bigint": pick([-9223372036854775808, 9223372036854775807, 0, i * 10**15]),
        "c_text": pick(TEXTS),
        "c_varchar": pick(TEXTS[::-1]),
        "c_numeric": pick([Decimal("-123.456"), Decimal("-0.001"), Decimal("999999999.999"), Decimal(0),
                           Decimal("-999999999.999"), Decimal(i) / 8, None]),
        "c_float": pick([0.1, 1e-7, 3.4e38, 16777217.0, 1.5e-5, 0.333333333, -2.5, None]),
        "c_double": pick([0.1, 1e-7, 1e300, -1.2345678901234567e19, 0.30000000000000004, 2.5, -0.0, 5e-324,
                          1.7976931348623157e308, None, i / 7]),
        "c_boolean": pick([True, False, None]),
        "c_ts": pick([dt.datetime(2025, 1, 1, 0, 0, 0, 1), dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
                      dt.datetime(2025, 3, 30, 1, 30) + dt.timedelta(seconds=i * 3607, microseconds=i * 123457),
                      None]),
        "c_tstz": pick([dt.datetime(2025, 3, 30, 0, 30, tzinfo=UTC) + dt.timedelta(minutes=17 * i, microseconds=i),
                        dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC), None]),
        "c_date": pick([dt.date(1970, 1, 1), dt.date(2000, 2, 29), dt.date(9999, 12, 31), dt.date(2025, 1, 1), None]),
        "updated_at": dt.datetime(2025, 1, 1) + dt.timedelta(hours=i),
    }


def json_text(i: int, dialect: str) -> str | None:
    forms = JSON_FORMS[i % len(JSON_FORMS)]
    return None if forms is None else forms[DIALECT_FORM[dialect]]


def fill(url: URL, dialect: str) -> None:
    """The loader's table with rows 1..N as another tool would write them into ``dialect``."""
    table = target_table(SPEC)
    rows = []
    for i in range(1, N + 1):
        row = logical_row(i)
        if dialect == "postgresql":  # an aware timestamp in another zone: the same instant
            row["c_tstz"] = row["c_tstz"] and row["c_tstz"].astimezone(PLUS_0530)
        else:  # MariaDB DATETIME and SQLite text hold UTC without a zone, as driftless writes them
            row["c_tstz"] = row["c_tstz"] and row["c_tstz"].replace(tzinfo=None)
        rows.append(row)
    engine = create_engine(url)
    try:
        table.metadata.create_all(engine)
        cast = "CAST(:j AS jsonb)" if dialect == "postgresql" else ":j"
        with engine.begin() as conn:
            conn.execute(insert(table), [{**r, "c_json": None} for r in rows])
            # the JSON exactly as written (SQLAlchemy's JSON type would re-encode it)
            conn.execute(text(f"UPDATE t SET c_json = {cast} WHERE id = :id"),
                         [{"id": i, "j": json_text(i, dialect)} for i in range(1, N + 1)])
    finally:
        engine.dispose()


def add_digest(url: URL) -> None:
    cls = hash_dialect_for(url)
    engine = cls.create_engine(url)
    try:
        with engine.begin() as conn:
            assert ensure_digest(conn, cls(engine), "t", None, spec_digest_columns(SPEC)) == "added"
    finally:
        engine.dispose()


def execute(url: URL, sql: str, params: dict[str, Any]) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def spec_diff(su: URL, tu: URL):
    with DeepDiff.for_spec(SPEC, su, tu, bucket_rows=8, leaf_rows=4) as diff:
        return diff.run()


@pytest.mark.parametrize("digest", [False, True], ids=["hashed", "digest"])
@pytest.mark.parametrize(("src", "tgt"), ORDERED_PAIRS, ids=PAIR_IDS)
def test_equal_data_of_every_type_diffs_to_zero(request, src, tgt, digest):
    su, tu = url_for(request, src), url_for(request, tgt)
    fill(su, src)
    fill(tu, tgt)
    if digest:
        add_digest(su)
        add_digest(tu)
    result = spec_diff(su, tu)
    assert (result.differences, result.rows_source, result.rows_target) == (0, N, N), result.summary(samples=3)
    assert result.row_digest == {"source": digest, "target": digest}
    # the tables' own types (no spec), as `etl diff` compares them: equal as well
    reflected = deep_diff(su, tu, "t", ["id"], use_digest=digest)
    assert (reflected.differences, reflected.rows_source) == (0, N), reflected.summary(samples=3)
    if "mariadb" not in (src, tgt):  # (MariaDB keeps JSON string escapes as written: see test below)
        with DeepDiff.for_spec(SPEC, su, tu) as diff:
            ours, theirs = diff.quick()
        assert ours == theirs  # the hashes alone agree: no row needs a second look


PLANTED_JSON = {  # row -> a real change of its JSON document in the target (row i holds JSON_FORMS[i % 12])
    12: '{"a":[100,"é"],"b":2.51}',                # a number: 2.5 -> 2.51
    1: '[1,[2,[3,{"k":false}]],true]',              # a nested null -> false
    6: '{"E":3,"e":2,"ee":4,"è":5,"é":1,"é ":1}',   # one more key (differs from "é" by a space)
    3: '{"":"","z":{"y":{"x":1e-300}}}',            # 0 -> 1e-300
    7: '"null"',                                    # JSON null -> the string "null"
    8: None,                                        # {} -> SQL NULL
    11: "[]",                                       # SQL NULL -> []
}


@pytest.mark.parametrize("digest", [False, True], ids=["hashed", "digest"])
@pytest.mark.parametrize(("src", "tgt"), ORDERED_PAIRS, ids=PAIR_IDS)
def test_planted_json_changes_are_found_exactly(request, src, tgt, digest):
    su, tu = url_for(request, src), url_for(request, tgt)
    fill(su, src)
    fill(tu, tgt)
    if digest:
        add_digest(su)
        add_digest(tu)
    cast = "CAST(:j AS jsonb)" if tgt == "postgresql" else ":j"
    for i, doc in PLANTED_JSON.items():  # plain writes after the digest was added: like any other tool's
        execute(tu, f"UPDATE t SET c_json = {cast} WHERE id = :id", {"id": i, "j": doc})
    result = spec_diff(su, tu)
    assert result.row_digest == {"source": digest, "target": digest}
    assert {c["key"]["id"]: set(c["columns"]) for c in result.changed} == {i: {"c_json"} for i in PLANTED_JSON}
    assert (result.n_missing, result.n_extra) == (0, 0)
    changed = {c["key"]["id"]: c["columns"]["c_json"] for c in result.changed}
    assert changed[8] == {"source": "{}", "target": None}
    assert changed[11] == {"source": None, "target": "[]"}
    assert canonical_json(changed[12]["target"]) == '{"a":[1.0E2,"é"],"b":2.51E0}'


@pytest.mark.integration
def test_mariadb_json_with_escaped_unicode_equals_literal_unicode(pg_url, mariadb_url):
    """What Python's json.dumps writes by default (\\u00e9) in MariaDB equals é in PostgreSQL."""
    for url, sql in ((pg_url, "CREATE TABLE j (id INT PRIMARY KEY, doc JSONB)"),
                     (mariadb_url, "CREATE TABLE j (id INT PRIMARY KEY, doc JSON)")):
        execute(url, sql, {})
    docs = {1: ('{"city": "Zürich", "k": ["é", "😀"]}', '{"city": "Z\\u00fcrich", "k": ["\\u00e9", "\\ud83d\\ude00"]}'),
            2: ('{"a": "plain"}', '{"a": "plain"}')}
    for i, (pg_doc, my_doc) in docs.items():
        execute(pg_url, "INSERT INTO j VALUES (:id, CAST(:d AS jsonb))", {"id": i, "d": pg_doc})
        execute(mariadb_url, "INSERT INTO j VALUES (:id, :d)", {"id": i, "d": my_doc})
    assert deep_diff(pg_url, mariadb_url, "j", ["id"]).differences == 0
    assert deep_diff(mariadb_url, pg_url, "j", ["id"]).differences == 0
    changed = '{"city": "Z\\u00fcrich", "k": ["\\u00e8", "😀"]}'  # é -> è
    execute(mariadb_url, "UPDATE j SET doc = :d WHERE id = 1", {"d": changed})
    result = deep_diff(pg_url, mariadb_url, "j", ["id"])
    assert [(c["key"]["id"], set(c["columns"])) for c in result.changed] == [(1, {"doc"})]


# -- a pipeline: load, reconcile, repair ------------------------------------------------------------------

DOCS_SPEC = parse_spec({
    "name": "docs", "schedule": "@daily",
    "source": {"type": "sql", "connection": "src", "table": "docs", "primary_key": ["id"], "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "docs_copy"},
    "columns": [{"name": "id", "type": "integer", "nullable": False}, {"name": "doc", "type": "json"},
                {"name": "updated_at", "type": "timestamp", "nullable": False}],
}, "docs")
DOC_FORMS = JSON_FORMS
PIPE_PAIRS = [("postgresql", "mariadb"), ("mariadb", "sqlite"), ("sqlite", "postgresql")]


@pytest.mark.parametrize(("src", "tgt"), PIPE_PAIRS, ids=[f"{a}-{b}" for a, b in PIPE_PAIRS])
def test_loaded_json_reconciles_and_a_repair_of_real_changes_ends_pass(request, connections, src, tgt):
    su, tu = url_for(request, src), url_for(request, tgt)
    engine = create_engine(su)
    with engine.begin() as conn:
        doc_type = "JSONB" if src == "postgresql" else "JSON"
        conn.execute(text(f"CREATE TABLE docs (id INTEGER PRIMARY KEY, doc {doc_type}, "
                          f"updated_at {'DATETIME(6)' if src == 'mariadb' else 'TIMESTAMP'} NOT NULL)"))
        cast = "CAST(:d AS jsonb)" if src == "postgresql" else ":d"
        conn.execute(text(f"INSERT INTO docs VALUES (:id, {cast}, :at)"), [
            {"id": i, "d": None if (f := DOC_FORMS[i % len(DOC_FORMS)]) is None else f[DIALECT_FORM[src]],
             "at": dt.datetime(2025, 1, 1) + dt.timedelta(hours=i)} for i in range(1, N + 1)])
    engine.dispose()
    connections(src=su, wh=tu)
    assert run_window(DOCS_SPEC, Window.parse("2024-01-01", "2026-01-01")).loaded == N
    deep = reconcile_pipeline(DOCS_SPEC, deep=True)
    assert (deep["status"], deep["changed"], deep["rows_source"], deep["rows_target"]) == ("PASS", 0, N, N), deep
    assert reconcile_pipeline(DOCS_SPEC)["status"] == "PASS"  # the quick check agrees
    # another tool rewrites one document in the target (same JSON, its own spelling), and changes two
    cast = "CAST(:d AS jsonb)" if tgt == "postgresql" else ":d"
    for i, doc in ((1, '[1e0,[2,[3.000,{"k":null}]],true]'), (2, '"emoji \\ud83d\\ude00"'),
                   (12, '{"a":[100,"é"],"b":2.51}'), (13, '[1,[2,[3,{"k":false}]],true]')):
        execute(tu, f"UPDATE docs_copy SET doc = {cast} WHERE id = :id", {"id": i, "d": doc})
    drift = reconcile_pipeline(DOCS_SPEC, deep=True)
    assert (drift["status"], drift["changed"], drift["changed_columns"]) == ("FAIL", 2, {"doc": 2}), drift
    repaired = reconcile_pipeline(DOCS_SPEC, do_repair=True)
    assert repaired["status"] == "REPAIRED" and repaired["repaired"]["upserted"] == 2, repaired
    assert repaired["after"]["status"] == "PASS"
    assert reconcile_pipeline(DOCS_SPEC, deep=True)["status"] == "PASS"


# -- the canonical texts themselves (no database) ---------------------------------------------------------

@pytest.mark.parametrize(("token", "expected"), [
    ("2.50", "2.5E0"), ("2.5", "2.5E0"), ("25e-1", "2.5E0"), ("100", "1.0E2"), ("1e2", "1.0E2"), ("1E+2", "1.0E2"),
    ("0", "0.0E0"), ("-0", "0.0E0"), ("0.000", "0.0E0"), ("-0.0015", "-1.5E-3"), ("1e-7", "1.0E-7"),
    ("12345678901234567890", "1.234567890123456789E19"), ("1e300", "1.0E300"),
])
def test_canonical_number(token, expected):
    assert canonical_number(token) == expected


def test_canonical_floats():
    assert [canonical_double(x) for x in (0.1, 1e-7, 1e300, -0.0, 5e-324, float("inf"), float("nan"), None)] == [
        "1.0E-1", "1.0E-7", "1.0E300", "0.0E0", "5.0E-324", "Infinity", "NaN", None]
    assert canonical_double(0.1 + 0.2) == "3.0000000000000004E-1"  # not rounded: a real difference stays one
    # a 4-byte float: 0.1 as written and 0.1 once kept in 4 bytes are the same value
    assert canonical_float32(0.1) == canonical_float32(0.10000000149011612) == "1.0000000149011612E-1"
    assert canonical_float32(16777217.0) == "1.6777216E7"


def test_canonical_json_forms_agree_and_differences_stay():
    for forms in filter(None, JSON_FORMS):
        assert len({canonical_json(f) for f in forms}) == 1, forms
    assert canonical_json(JSON_FORMS[0][0]) == '{"a":[1.0E2,"é"],"b":2.5E0}'
    assert canonical_json('{"a": 1}') != canonical_json('{"a": 1.0000000000000000001}')
    assert canonical_json('{"a": "x"}') != canonical_json('{"a": "x "}')
    assert canonical_json("{not json") == "{not json"  # compared as written


def test_normalized_json_keeps_numbers_as_written():
    assert normalized_json(' { "b" : 2.50 , "a" : [ 1e2, "\\u00e9" ] } ') == '{"a":[1e2,"é"],"b":2.50}'
    assert normalized_json({"b": 2.5, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":2.5}'
    assert normalized_json("{not json") == "{not json"
