"""Type conversion under stated rules: strict ISO 8601, declared layouts only, no NaN/Infinity, raw source values.

Unit tests of ``driftless.extract.transform.convert_column`` and, end to end, loosely typed source columns (text holding
numbers and dates) on SQLite, PostgreSQL and MariaDB sources: bad values are quarantined with column, check
and value, never a crash of the window.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from driftless.errors import SpecError
from driftless.extract.transform import DEFAULT_PARSING, Parsing, convert_column
from driftless.pipeline import run_window
from driftless.spec import parse_spec
from driftless.window import Window

WINDOW = Window.parse("2025-01-01", "2025-02-01")


def bad(values, type_name, parsing=DEFAULT_PARSING):
    conv = convert_column(pd.Series(values, dtype=object), type_name, parsing)
    return conv.bad.tolist(), conv.values


# --- dates and timestamps: ISO 8601 unless a layout is declared ---------------------------------------------


def test_ambiguous_dates_are_refused_without_a_declared_format():
    flags, _ = bad(["05/03/2025", "05.03.2025", "15.03.2025", "2025-03-05"], "date")
    assert flags == [True, True, True, False]


def test_declared_day_first_format_reads_day_first_and_refuses_other_layouts():
    flags, values = bad(["05/03/2025", "15/03/2025", "05.03.2025", "2025-03-05", "31/02/2025"], "date",
                        Parsing(format="%d/%m/%Y"))
    assert flags == [False, False, True, True, True]
    assert values[0] == pd.Timestamp("2025-03-05") and values[1] == pd.Timestamp("2025-03-15")


def test_iso_8601_only_full_dates_and_at_most_microseconds():
    flags, values = bad([
        "2025-02-30",                      # no such day
        "2025-03",                         # a month, not a date
        "20250305",                        # basic format: not accepted
        "2025-03-05T10:00:00.1234567Z",    # 7 fractional digits would be truncated: refused
        "2025-03-05T10:00:00.123456Z",
        "2025-03-05 10:00",
        " 2025-03-05T10:00:00+02:00 ",     # surrounding blanks are ignored
        "2025-03-05T10:00:00+0530",
        "March 5, 2025",
    ], "timestamptz")
    assert flags == [True, True, True, True, False, False, False, False, True]
    assert values[4] == pd.Timestamp("2025-03-05T10:00:00.123456Z")
    assert values[6] == pd.Timestamp("2025-03-05T08:00:00Z")
    assert values[7] == pd.Timestamp("2025-03-05T04:30:00Z")


def test_epoch_numbers_only_when_declared():
    flags, _ = bad([1_700_000_000, "1700000000"], "timestamptz")
    assert flags == [True, True]
    flags, values = bad([1_700_000_000, "1700000000", 1_700_000_000.5, "x", None, float("nan")], "timestamptz",
                        Parsing(format="epoch_s"))
    assert flags == [False, False, False, True, False, True]
    assert values[0] == pd.Timestamp(datetime.fromtimestamp(1_700_000_000, UTC))
    assert values[2] == pd.Timestamp("2023-11-14T22:13:20.5Z")
    flags, values = bad([1_700_000_000_123], "timestamptz", Parsing(format="epoch_ms"))
    assert flags == [False] and values[0] == pd.Timestamp("2023-11-14T22:13:20.123Z")
    flags, _ = bad([10**20], "timestamptz", Parsing(format="epoch_s"))  # beyond year 9999: refused, no crash
    assert flags == [True]


def test_numeric_epoch_column_under_declared_format():
    conv = convert_column(pd.Series([1_700_000_000, 1_700_000_001]), "timestamptz", Parsing(format="epoch_s"))
    assert not conv.bad.any() and conv.values[1] == pd.Timestamp("2023-11-14T22:13:21Z")


# --- numbers: '.' decimal mark, no grouping, unless declared; no NaN or Infinity ------------------------------


def test_grouped_numbers_are_refused_unless_the_separators_are_declared():
    flags, _ = bad(["1,234.50", "1234.50", "1.234,50", "1_000", "0x10", "12.5e1"], "numeric(10,2)")
    assert flags == [True, False, True, True, True, False]
    flags, values = bad(["1,234.50", "1234.5", "12,34.5", "1,2345.0", "-1,000,000"], "numeric(10,2)",
                        Parsing(thousands_separator=","))
    assert flags == [False, False, True, True, False]
    assert values[0] == Decimal("1234.50") and values[4] == Decimal("-1000000.00")
    flags, values = bad(["1.234,50", "3,5", "3.5"], "numeric(10,2)",
                        Parsing(decimal_separator=",", thousands_separator="."))
    assert flags == [False, False, True]
    assert values[0] == Decimal("1234.50") and values[1] == Decimal("3.50")
    flags, values = bad(["1 234", "1234"], "integer", Parsing(thousands_separator=" "))
    assert flags == [False, False] and values.tolist() == [1234, 1234]
    flags, values = bad(["2,5", "2.5"], "double", Parsing(decimal_separator=","))
    assert flags == [False, True] and values[0] == 2.5


@pytest.mark.parametrize("type_name", ["numeric(10,2)", "double", "float", "integer", "bigint"])
def test_nan_and_infinity_are_refused_null_stays_null(type_name):
    flags, values = bad(["NaN", "Infinity", "-inf", float("nan"), float("inf"), Decimal("NaN"), None, "1"],
                        type_name)
    assert flags == [True, True, True, True, True, True, False, False]
    assert pd.isna(values[6]) and not pd.isna(values[7])


def test_typed_float_column_refuses_infinity():
    conv = convert_column(pd.Series([1.5, np.inf, -np.inf]), "double")
    assert conv.bad.tolist() == [False, True, True]


def test_text_and_json_refuse_nan_values():
    assert bad([float("nan"), 1.5, None], "text")[0] == [True, False, False]
    assert bad(['{"a": NaN}', '{"a": 1}', float("nan")], "json")[0] == [True, False, True]


# --- spec rules for the declarations ---------------------------------------------------------------------------


def spec_with(column: dict, **extra) -> dict:
    return {
        "name": "conv", "source": {"type": "sql", "connection": "src", "table": "t", "primary_key": ["id"],
                                   "cursor": "updated_at"},
        "target": {"connection": "wh", "table": "conv"},
        "columns": [{"name": "id", "type": "integer", "nullable": False}, column,
                    {"name": "updated_at", "type": "timestamp", "nullable": False}],
        **extra,
    }


@pytest.mark.parametrize(("column", "message"), [
    ({"name": "n", "type": "integer", "format": "%d/%m/%Y"}, "only date, timestamp and timestamptz"),
    ({"name": "d", "type": "date", "format": "dd/mm/yyyy"}, "is not a strptime layout"),
    ({"name": "d", "type": "date", "thousands_separator": ","}, "only numeric columns"),
    ({"name": "n", "type": "numeric(10,2)", "decimal_separator": ",", "thousands_separator": ","}, "must differ"),
    ({"name": "n", "type": "numeric(10,2)", "decimal_separator": ";"}, "columns[1].decimal_separator"),
])
def test_declarations_that_cannot_apply_are_spec_errors_naming_the_field(column, message):
    with pytest.raises(SpecError, match=None) as err:
        parse_spec(spec_with(column), "conv.yaml")
    assert message in str(err.value) and str(err.value).startswith("conv.yaml: columns[1]")


# --- end to end: loosely typed source columns on every source dialect ------------------------------------------

SOURCE_ROWS = [
    # id, amount (text), ratio (text), day (text), updated_at
    (1, "12.50", "0.25", "2025-01-05", "2025-01-10 10:00:00"),
    (2, "abc", "1e3", "2025-02-30", "2025-01-10 11:00:00"),
    (3, "1,234.50", "NaN", "05/03/2025", "2025-01-10 12:00:00"),
    (4, "7", "Infinity", None, "2025-01-10 13:00:00"),
    (5, None, None, "2025-01-31", "2025-01-10 14:00:00"),
    (6, "1.234", "-0.5", "2025-01-06T00:00:00", "2025-01-10 15:00:00"),
]
EXPECTED_LOADED = {
    1: (Decimal("12.50"), 0.25, date(2025, 1, 5)),
    5: (None, None, date(2025, 1, 31)),
    6: None,  # amount 1.234 needs rounding: quarantined
}
EXPECTED_BAD = {  # id -> (column, value) pairs that must be named in the quarantine entry
    2: {("amount", "abc"), ("day", "2025-02-30")},
    3: {("amount", "1,234.50"), ("ratio", "NaN"), ("day", "05/03/2025")},
    4: {("ratio", "Infinity")},
    6: {("amount", "1.234")},
}


def loose_spec(name: str) -> dict:
    return {
        "name": name, "chunk_size": 4, "max_reject_ratio": 1,
        "source": {"type": "sql", "connection": "src", "table": "loose", "primary_key": ["id"],
                   "cursor": "updated_at"},
        "target": {"connection": "wh", "table": name},
        "columns": [
            {"name": "id", "type": "integer", "nullable": False},
            {"name": "amount", "type": "numeric(10,2)"},
            {"name": "ratio", "type": "double"},
            {"name": "day", "type": "date"},
            {"name": "updated_at", "type": "timestamp", "nullable": False},
        ],
    }


def make_loose_source(url) -> None:
    dialect = url.get_backend_name()
    stamp = "DATETIME" if dialect == "mysql" else ("TIMESTAMP" if dialect == "postgresql" else "TEXT")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE loose (id INTEGER PRIMARY KEY, amount TEXT, ratio TEXT, day TEXT, "
                          f"updated_at {stamp})"))
        conn.execute(text("INSERT INTO loose VALUES (:id, :amount, :ratio, :day, :updated_at)"),
                     [dict(zip(("id", "amount", "ratio", "day", "updated_at"), row, strict=True))
                      for row in SOURCE_ROWS])
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def loose_source(request, tmp_path):
    if request.param == "sqlite":
        from sqlalchemy import URL

        url = URL.create("sqlite", database=str(tmp_path / "loose_source.db"))
    else:
        url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url")
    make_loose_source(url)
    return url


def test_loosely_typed_source_columns_are_quarantined_not_crashed(loose_source, sqlite_url, connections):
    connections(src=loose_source, wh=sqlite_url)
    spec = parse_spec(loose_spec("loose_target"), "loose_target.yaml")
    result = run_window(spec, WINDOW)
    assert (result.extracted, result.loaded, result.quarantined) == (6, 2, 4)
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(text("SELECT id, amount, ratio, day FROM loose_target"))}
        entries = conn.execute(text("SELECT record_key, errors FROM etl_quarantine")).all()
    engine.dispose()
    assert sorted(rows) == [1, 5]
    assert Decimal(str(rows[1].amount)) == Decimal("12.50") and rows[1].ratio == 0.25
    assert str(rows[1].day).startswith("2025-01-05") and rows[5].amount is None and rows[5].ratio is None
    named = {}
    for key, errors in entries:
        (ident,) = json.loads(key)
        named[ident] = {(e["column"], e["check"]) for e in json.loads(errors)}
        for e in json.loads(errors):
            assert e["check"].startswith("type("), e
    for ident, pairs in EXPECTED_BAD.items():
        assert {column for column, _ in pairs} == {column for column, _ in named[ident]}, (ident, named[ident])
    # every message names the value that did not convert
    with create_engine(sqlite_url).connect() as conn:
        messages = " ".join(json.loads(e)[0]["message"] + json.dumps(json.loads(e))
                            for (e,) in conn.execute(text("SELECT errors FROM etl_quarantine")))
    for pairs in EXPECTED_BAD.values():
        for _, value in pairs:
            assert value in messages


def test_postgres_nan_and_infinity_into_mariadb_quarantine_the_row_not_the_window(pg_url, mariadb_url, connections):
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE loose (id integer PRIMARY KEY, ratio double precision, "
                          "amount numeric, updated_at timestamp)"))
        conn.execute(text("INSERT INTO loose VALUES (1, 1.5, 2.5, '2025-01-02'), (2, 'Infinity', 1, '2025-01-02'), "
                          "(3, 'NaN', 1, '2025-01-02'), (4, NULL, NULL, '2025-01-02'), "
                          "(5, 2, 'NaN', '2025-01-02'), (6, '-Infinity', 3, '2025-01-02')"))
    engine.dispose()
    connections(src=pg_url, wh=mariadb_url)
    data = loose_spec("nan_target")
    data["columns"] = [data["columns"][0], {"name": "ratio", "type": "double"},
                       {"name": "amount", "type": "numeric(10,2)"}, data["columns"][-1]]
    result = run_window(parse_spec(data, "nan_target.yaml"), WINDOW)
    assert (result.loaded, result.quarantined) == (2, 4)
    engine = create_engine(mariadb_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, ratio, amount FROM nan_target ORDER BY id")).all()
    engine.dispose()
    assert [(r.id, r.ratio, r.amount) for r in rows] == [(1, 1.5, Decimal("2.50")), (4, None, None)]
    assert all(not (isinstance(r.ratio, float) and math.isnan(r.ratio)) for r in rows)


def test_sqlite_target_refuses_decimals_wider_than_it_stores_exactly(tmp_path, sqlite_url, connections):
    from sqlalchemy import URL

    from driftless.errors import LoadError

    source = URL.create("sqlite", database=str(tmp_path / "wide_source.db"))
    make_loose_source(source)
    connections(src=source, wh=sqlite_url)
    data = loose_spec("wide_target")
    data["columns"][1]["type"] = "numeric(18,2)"
    with pytest.raises(LoadError, match=r"amount numeric\(18,2\) could lose digits"):
        run_window(parse_spec(data, "wide_target.yaml"), WINDOW)
    with create_engine(sqlite_url).connect() as conn:
        assert "wide_target" not in {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master"))}


def test_big_integers_beside_a_null_load_exactly(pg_url, sqlite_url, connections):
    engine = create_engine(pg_url)
    with engine.begin() as conn:  # pandas would read [2**63 - 1, None] as float64 and round it
        conn.execute(text("CREATE TABLE big (id integer PRIMARY KEY, n bigint, updated_at timestamp)"))
        conn.execute(text("INSERT INTO big VALUES (1, 9223372036854775807, '2025-01-02'), (2, NULL, '2025-01-02'), "
                          "(3, -9223372036854775808, '2025-01-02')"))
    engine.dispose()
    connections(src=pg_url, wh=sqlite_url)
    data = loose_spec("big_target")
    data["source"]["table"] = "big"
    data["columns"] = [data["columns"][0], {"name": "n", "type": "bigint"}, data["columns"][-1]]
    result = run_window(parse_spec(data, "big_target.yaml"), WINDOW)
    assert (result.loaded, result.quarantined) == (3, 0)
    with create_engine(sqlite_url).connect() as conn:
        got = dict(conn.execute(text("SELECT id, n FROM big_target")).all())
    assert got == {1: 2**63 - 1, 2: None, 3: -(2**63)}


def test_text_read_by_arrow_converts_as_value_by_value():
    # All-text integer and ISO timestamp columns are read by Arrow's casts; mixing in one value that needs the
    # per-value rules must not change any other value's result, and Conversion.arrow must equal the values.
    import pyarrow as pa

    from driftless.schema import arrow_type

    cases = {
        "smallint": ["12", None, "-7", "32767", "007", "-0"],
        "bigint": ["9223372036854775807", "-9223372036854775808", None, "1"],
        "timestamptz": ["2025-01-01 05:00:00.000001+03", None, "2024-02-29T23:59:59Z", "0001-01-01 00:00:00+00"],
        "timestamp": ["2025-01-01 05:00:00.000001+03", "2024-02-29T23:59:59Z"],
    }
    needs_rules = {"smallint": "+5", "bigint": "0x10", "timestamptz": "2025-01-01", "timestamp": "2025-01-01 24:00"}
    for kind, texts in cases.items():
        fast = convert_column(pd.Series(texts, dtype="str"), kind)
        slow = convert_column(pd.Series([*texts, needs_rules[kind]], dtype="str"), kind)
        assert fast.arrow is not None and not fast.bad.any(), kind
        assert slow.arrow is None
        assert fast.values.tolist() == slow.values.tolist()[:len(texts)], kind
        assert pa.array(fast.values, type=arrow_type(kind), from_pandas=True).equals(fast.arrow), kind
    out_of_range = convert_column(pd.Series(["32768", "1"], dtype="str"), "smallint")
    assert out_of_range.bad.tolist() == [True, False] and out_of_range.arrow is None
    assert convert_column(pd.Series(["0x10"], dtype="str"), "integer").bad.tolist() == [True]


def test_arrow_paths_give_what_the_value_by_value_rules_give():
    # Numeric text converted by Arrow (Decimal objects made only when read), ISO timestamps checked in Arrow
    # (years 1-9999 once in UTC) and integers checked without a regex: each equals the per-value result, keeps
    # the series' index, and a value past the rules is flagged, never rounded or shifted.
    import pyarrow as pa

    from driftless.schema import arrow_type

    index = pd.Index([10, 11, 12, 13])
    cases = {
        "numeric(12,2)": (["1.5", None, "-0.07", "9999999999.99"], "1.005"),
        "integer": (["5", None, "-0", "2147483647"], "--5"),
        "timestamptz": (["0001-01-01T00:00:00Z", None, "9999-12-31T23:59:59.999999+00:00", "2025-06-01 01:02:03+0530"],
                        "0001-01-01T00:30:00+01:00"),
        "timestamp": (["2025-01-01T10:00:00.000001-05:00", None, "9999-12-31T18:00:00-05:59", "2024-02-29T00:00Z"],
                      "9999-12-31T23:00:00-05:00"),
    }
    for kind, (texts, past) in cases.items():
        fast = convert_column(pd.Series(texts, index=index, dtype="str"), kind)
        # a value of another type beside the text sends the whole column down the per-value path
        other = {"numeric(12,2)": Decimal("1.5"), "integer": 7}.get(kind, datetime(2025, 1, 1, tzinfo=UTC))
        per_value = convert_column(pd.Series([*texts, other], dtype=object), kind)
        assert per_value.arrow is None and not per_value.bad.any(), kind
        assert fast.arrow is not None and not fast.bad.any(), kind
        assert fast.values.index.equals(index), kind
        assert fast.values.tolist() == per_value.values.tolist()[:len(texts)], kind
        assert pa.array(fast.values, type=arrow_type(kind), from_pandas=True).equals(fast.arrow), kind
        flagged = convert_column(pd.Series([*texts, past], dtype="str"), kind)
        assert flagged.bad.tolist() == [False] * len(texts) + [True] and flagged.arrow is None, kind
    amounts = convert_column(pd.Series(["1.5", "2"], dtype="str"), "numeric(12,2)").values.tolist()
    assert [str(a) for a in amounts] == ["1.50", "2.00"]  # at the column's scale, as the per-value path gives
