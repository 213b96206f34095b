"""Typed Arrow columns (PostgreSQL through ADBC, Parquet) convert as the same values given as Python objects do.

``driftless.extract.transform._convert_arrow`` checks a column that already has its spec type with Arrow's kernels
and never goes through text; these tests require it to load and quarantine exactly what the general path does
with the driver's objects (ints, Decimals, strs, datetimes, None), and to refuse what does not fit.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from driftless.extract.transform import DEFAULT_PARSING, _convert_arrow, convert_column
from driftless.extract.validate import Validator
from driftless.sources.files.readers import _series
from driftless.spec import parse_spec

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TABLE = pa.table({
    "id": pa.array([1, 2, 3, 4, 5], pa.int64()),
    "updated_at": pa.array([T0, T0 + timedelta(microseconds=1), T0 + timedelta(hours=1), T0, T0],
                           pa.timestamp("us", tz="UTC")),
    "small": pa.array([1, None, 40000, -32768, 7], pa.int32()),
    "big": pa.array([2**63 - 1, -(2**63), None, 0, 2**53 + 1], pa.int64()),
    "amount": pa.array([Decimal("1.250"), Decimal("1.255"), None, Decimal("-999999999.990"), Decimal("0.000")],
                       pa.decimal128(12, 3)),
    "amount_text": pa.array(["1.50", "nan", " 2 ", None, "-0.05"], pa.string()),
    "naive": pa.array([datetime(1999, 12, 31, 23, 59, 59, 999999), None, datetime(1, 1, 1), datetime(9999, 12, 31),
                       datetime(2024, 2, 29)], pa.timestamp("us")),
    "ms_zone": pa.array([T0, None, T0, T0, T0], pa.timestamp("ms", tz="+05:00")),
    "day": pa.array([date(2024, 2, 29), None, date(1, 1, 1), date(9999, 12, 31), date(1970, 1, 1)], pa.date32()),
    "name": pa.array(["🦆 e\u0301", "", None, "a\x00b", "NULL"], pa.string()),
    "code": pa.array(["abc", "abcd", None, "", "x"], pa.large_string()),
    "ratio": pa.array([0.1, float("nan"), None, float("inf"), -0.0], pa.float64()),
    "flag": pa.array([True, None, False, True, False], pa.bool_()),
})
COLUMNS = [
    {"name": "id", "type": "bigint", "nullable": False},
    {"name": "updated_at", "type": "timestamptz", "nullable": False},
    {"name": "small", "type": "smallint"}, {"name": "big", "type": "bigint"},
    {"name": "amount", "type": "numeric(10,2)"},
    {"name": "amount_text", "type": "numeric(10,2)"}, {"name": "naive", "type": "timestamptz"},
    {"name": "ms_zone", "type": "timestamp"}, {"name": "day", "type": "date"}, {"name": "name", "type": "text"},
    {"name": "code", "type": "varchar(3)"}, {"name": "ratio", "type": "double"}, {"name": "flag", "type": "boolean"},
]


def _spec(columns=COLUMNS):
    return parse_spec({
        "name": "typed", "chunk_size": 10, "max_reject_ratio": 1,
        "source": {"type": "sql", "connection": "src", "table": "t", "primary_key": ["id"], "cursor": "updated_at"},
        "target": {"connection": "src", "table": "t_target"}, "columns": columns}, "test")


def _validate(frame: pd.DataFrame):
    result = Validator(_spec()).validate(frame)
    reasons = {r["record_key"]: sorted((e["column"], e["check"]) for e in json.loads(r["errors"]))
               for r in result.rejects.to_dict("records")}
    records = {r["record_key"]: json.loads(r["record"]) for r in result.rejects.to_dict("records")}
    return result.good, reasons, records


def test_typed_columns_load_and_quarantine_what_python_objects_do():
    typed = pd.DataFrame({name: _series(TABLE.column(name), typed=True) for name in TABLE.column_names})
    assert all(isinstance(dtype, pd.ArrowDtype) for dtype in typed.dtypes)
    # every column here has (or widens exactly to) its spec type: checked by Arrow, never through objects; but for
    # a decimal needing rounding, which sends its column to the per-value path (that names each bad value)
    fast = {c["name"] for c in COLUMNS if _convert_arrow(typed[c["name"]], c["type"], DEFAULT_PARSING) is not None}
    assert fast == {c["name"] for c in COLUMNS} - {"amount"}
    objects = pd.DataFrame({name: pd.Series(TABLE.column(name).to_pylist(), dtype=object)
                            for name in TABLE.column_names})
    good_typed, reasons_typed, records_typed = _validate(typed)
    good_objects, reasons_objects, records_objects = _validate(objects)
    assert good_typed.schema == good_objects.schema
    assert good_typed.to_pylist() == good_objects.to_pylist()
    assert reasons_typed == reasons_objects
    assert sorted(reasons_typed) == ["[2]", "[3]", "[4]"]
    assert ("amount", "type(numeric(10,2))") in reasons_typed["[2]"]  # 1.255 would need rounding
    assert ("amount_text", "type(numeric(10,2))") in reasons_typed["[2]"]  # 'nan'
    assert ("ratio", "type(double)") in reasons_typed["[2]"]  # NaN is a value no type takes, not a NULL
    assert ("code", "str_length(None, 3)") in reasons_typed["[2]"]  # 4 characters in a varchar(3)
    assert ("small", "type(smallint)") in reasons_typed["[3]"]  # 40000
    assert {("amount", "type(numeric(10,2))"), ("name", "type(text)"),
            ("ratio", "type(double)")} <= set(reasons_typed["[4]"])  # 9 digits before the point, NUL, inf
    assert records_typed["[4]"]["name"] == "a\x00b" and records_typed["[2]"]["name"] == ""
    rows = {r["id"]: r for r in good_typed.to_pylist()}
    assert rows[1]["name"] == "🦆 e\u0301" and rows[5]["name"] == "NULL" and rows[1]["code"] == "abc"
    assert rows[1]["naive"] == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)  # no zone: UTC
    assert rows[1]["ms_zone"] == datetime(2025, 1, 1)  # the UTC wall time, whatever zone the type names
    assert rows[1]["amount"] == Decimal("1.25") and rows[5]["amount_text"] == Decimal("-0.05")
    assert rows[1]["big"] == 2**63 - 1 and rows[5]["big"] == 2**53 + 1 and rows[1]["ratio"] == 0.1
    assert rows[5]["day"] == date(1970, 1, 1) and rows[1]["flag"] is True and rows[5]["flag"] is False


@pytest.mark.parametrize(("values", "arrow_type", "type_name"), [
    ([-62135596800_000001, 253402300800_000000, 0, None], pa.timestamp("us", tz="UTC"), "timestamptz"),
    ([-62135596800_000001, 253402300800_000000, 0, None], pa.timestamp("us"), "timestamp"),
    ([-719163, 2932897, 0, None], pa.date32(), "date"),
])
def test_typed_temporal_values_outside_years_1_to_9999_are_refused_not_nulled(values, arrow_type, type_name):
    # PostgreSQL's 4713 BC .. 294276 AD and 'infinity' arrive through ADBC as such values: no Python object holds
    # them, and they are bad values, never NULLs.
    storage = pa.array(values, pa.int32() if arrow_type == pa.date32() else pa.int64())
    series = pd.Series(pd.arrays.ArrowExtensionArray(storage.cast(arrow_type)))
    conv = convert_column(series, type_name)
    assert conv.bad.tolist() == [True, True, False, False]
    assert conv.values.isna().tolist() == [True, True, False, True]
    as_text = convert_column(series, "text")  # the general path (objects) refuses them too
    assert as_text.bad.tolist()[:2] == [True, True] and not as_text.bad[3]


def test_typed_columns_of_another_type_take_the_general_path():
    ints = pd.Series(pd.arrays.ArrowExtensionArray(pa.array([1, None, 2**40], pa.int64())))
    assert convert_column(ints, "text").values.tolist()[::2] == ["1", "1099511627776"]
    assert convert_column(ints, "integer").bad.tolist() == [False, False, True]
    text = pd.Series(pd.arrays.ArrowExtensionArray(pa.array(["7", "x", None, "+5"], pa.string())))
    conv = convert_column(text, "bigint")
    assert conv.bad.tolist() == [False, True, False, False] and conv.values.tolist()[3] == 5
    nan = pd.Series(pd.arrays.ArrowExtensionArray(pa.array([float("nan"), None], pa.float64())))
    assert convert_column(nan, "numeric(5,2)").bad.tolist() == [True, False]
    assert np.isnan(convert_column(nan, "float").values.iloc[1])


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_nul_characters_are_found_in_sliced_text(string_type):
    from driftless.extract.transform import _with_nul

    text = pa.array(["a\x00", "bc", None, "", "d\x00e", "f"], string_type)
    assert _with_nul(text).tolist() == [True, False, False, False, True, False]
    assert _with_nul(text.slice(1, 3)).tolist() == [False, False, False]  # the NULs lie outside the slice
    assert _with_nul(text.slice(3, 2)).tolist() == [False, True]
    assert _with_nul(pa.array([], string_type)).tolist() == []
    typed = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array([text.slice(0, 2), text.slice(4)])))
    conv = convert_column(typed, "text")
    assert conv.bad.tolist() == [True, False, True, False] and conv.values.tolist()[-1] == "f"
