"""Transforms, type conversion and pandera validation of chunks (no database)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.schema import CreateTable

from driftless.errors import SpecError
from driftless.extract.transform import apply_transforms, convert_column
from driftless.extract.validate import Validator
from driftless.schema import target_table
from driftless.spec import parse_spec
from tests.helpers import INVOICES, invoices_spec


def frame(**overrides):
    data = {
        "invoice_id": [1, 2, 3],
        "customer_id": [10, 20, 30],
        "invoice_date": ["2024-01-01T10:00:00", "2024-01-02T10:00:00", "2024-01-03T10:00:00"],
        "billing_city": ["Oslo", "Paris", "Lyon"],
        "total": [Decimal("1.50"), Decimal("2.00"), Decimal("3.99")],
        "updated_at": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
    }
    data.update(overrides)
    return pd.DataFrame(data)


def spec_with(**column_checks):
    cols = copy.deepcopy(INVOICES["columns"])
    for col in cols:
        if col["name"] in column_checks:
            col.update(column_checks[col["name"]])
    return invoices_spec(columns=cols)


def errors_of(result):
    return {json.loads(r)[0]["column"] + ":" + json.loads(r)[0]["check"] for r in result.rejects["errors"]}


# --- conversion -------------------------------------------------------------------------------------------


def test_integers_nan_fraction_and_overflow_are_bad_none_is_null():
    conv = convert_column(pd.Series([1, np.nan, 2.5, "7", 2**31, True, None], dtype=object), "integer")
    assert conv.values.dtype == "Int64"
    assert conv.bad.tolist() == [False, True, True, False, True, True, False]
    assert conv.values[3] == 7 and pd.isna(conv.values[1])


def test_bigint_strings_beyond_float_precision_stay_exact():
    conv = convert_column(pd.Series(["9007199254740993", "1"], dtype=object), "bigint")
    assert not conv.bad.any()
    assert int(conv.values[0]) == 9007199254740993


def test_decimals_are_exact_and_never_rounded():
    conv = convert_column(pd.Series([Decimal("1.10"), 1.1, "2.5", "1.234", 10**9, "abc", float("inf")]),
                          "numeric(10,2)")
    assert conv.bad.tolist() == [False, False, False, True, True, True, True]
    assert conv.values[1] == Decimal("1.10") and isinstance(conv.values[1], Decimal)
    assert str(conv.values[2]) == "2.50"


def test_timestamps_with_mixed_zones_become_utc():
    values = pd.Series([
        "2024-03-01T12:00:00+02:00",
        datetime(2024, 3, 1, 5, 0, tzinfo=timezone(timedelta(hours=-5))),
        "2024-03-01 10:00:00",  # no zone: UTC
        "not a date",
        12345,
        None,
    ], dtype=object)
    conv = convert_column(values, "timestamptz")
    assert str(conv.values.dtype) == "datetime64[us, UTC]"
    assert conv.bad.tolist() == [False, False, False, True, True, False]
    assert conv.values[0] == pd.Timestamp("2024-03-01T10:00:00Z")
    assert conv.values[1] == pd.Timestamp("2024-03-01T10:00:00Z")
    naive = convert_column(values, "timestamp")
    assert naive.values[0] == pd.Timestamp("2024-03-01T10:00:00") and naive.values.dt.tz is None


def test_dates_reject_impossible_days_and_times_of_day():
    conv = convert_column(pd.Series(["2024-02-29", "2023-02-29", date(2024, 1, 5), "2024-01-01T10:30:00"]), "date")
    assert conv.bad.tolist() == [False, True, False, True]


def test_text_rejects_nul_and_containers_and_accepts_numbers():
    conv = convert_column(pd.Series(["ok", "a\x00b", {"a": 1}, 42, "ünïcødé ✓"], dtype=object), "varchar(10)")
    assert conv.bad.tolist() == [False, True, True, False, False]
    assert conv.values[3] == "42"


def test_booleans_and_json():
    conv = convert_column(pd.Series([True, "no", 1, "maybe", None], dtype=object), "boolean")
    assert conv.bad.tolist() == [False, False, False, True, False]
    js = convert_column(pd.Series([{"b": 1, "a": [1, 2]}, '{"x": 1}', "{oops", float("nan")], dtype=object), "json")
    assert js.bad.tolist() == [False, False, True, True]  # NaN is no JSON value (and not a NULL)
    assert js.values[0] == '{"a":[1,2],"b":1}'  # stored normalized: sorted keys, compact (driftless.canonical)


# --- transforms -------------------------------------------------------------------------------------------


def test_rename_cast_derive_function_drop_in_order():
    spec = invoices_spec(
        columns=[*INVOICES["columns"], {"name": "total_cents", "type": "numeric(12,0)"}],
        transforms={
            "rename": {"city": "billing_city"},
            "cast": {"total": "numeric(10,2)"},
            "derive": [{"name": "total_cents", "expr": "abs(total) * 100"}],
            "function": "tests.validate_models:upper_city",
            "drop": ["junk"],
        },
    )
    raw = frame(total=["1.10", "2.05", "oops"]).rename(columns={"billing_city": "city"})
    raw["junk"] = 1
    out, failures = apply_transforms(raw, spec)
    assert list(out["billing_city"]) == ["OSLO", "PARIS", "LYON"]
    assert "junk" not in out.columns
    # Decimal arithmetic: 1.10 * 100 is exactly 110, never 110.00000000000001
    assert out["total_cents"][0] == Decimal("110") and out["total_cents"][1] == Decimal("205")
    # 'oops' did not cast and cannot be multiplied: only that row fails, with the reason
    assert [(f.index, f.column, f.check) for f in failures] == [(2, "total_cents", "derive")]
    result = Validator(spec).validate(raw)
    assert result.good.num_rows == 2 and len(result.rejects) == 1
    reasons = json.loads(result.rejects["errors"][0])
    assert {e["column"] for e in reasons} >= {"total", "total_cents"}
    # the quarantined record is the record as extracted, for replay
    assert json.loads(result.rejects["record"][0])["total"] == "oops"


def test_failing_function_rows_are_isolated():
    spec = invoices_spec(transforms={"function": "tests.validate_models:explode_on_13"})
    raw = frame(invoice_id=[12, 13, 14])
    result = Validator(spec).validate(raw)
    assert result.good.column("invoice_id").to_pylist() == [12, 14]
    assert "unlucky invoice" in result.rejects["errors"][0]


def test_function_must_keep_rows():
    spec = invoices_spec(transforms={"function": "tests.validate_models:drop_rows"})
    with pytest.raises(SpecError, match="same rows"):
        Validator(spec).validate(frame())


def test_bad_references_and_expressions_are_spec_errors():
    with pytest.raises(SpecError, match="cannot import 'tests.validate_models:nope'"):
        Validator(invoices_spec(transforms={"function": "tests.validate_models:nope"})).validate(frame())
    spec = invoices_spec(transforms={"derive": [{"name": "total", "expr": "__import__('os').system('x')"}]})
    with pytest.raises(SpecError, match="unknown function"):
        Validator(spec).validate(frame())
    with pytest.raises(SpecError, match="not listed in columns"):
        invoices_spec(transforms={"derive": [{"name": "nope", "expr": "total"}]})


# --- checks -----------------------------------------------------------------------------------------------


def test_column_checks_compile_to_pandera_and_name_the_failure():
    spec = spec_with(
        total={"checks": {"min": 0, "max": 100}},
        billing_city={"checks": {"allowed": ["Oslo", "Paris"], "regex": "[A-Z][a-z]+"}},
        customer_id={"unique": True},
    )
    raw = frame(total=[Decimal("-1"), Decimal("5"), Decimal("5")], billing_city=["Oslo", "Paris", "lyon"],
                customer_id=[1, 2, 3])
    result = Validator(spec).validate(raw)
    assert result.good.column("invoice_id").to_pylist() == [2]
    assert errors_of(result) == {"total:greater_than_or_equal_to(0.00)", "billing_city:isin(['Oslo', 'Paris'])"}
    lyon = json.loads(result.rejects["errors"][1])
    assert {e["check"] for e in lyon} == {"isin(['Oslo', 'Paris'])", "regex '[A-Z][a-z]+'"}
    assert result.reasons["total: greater_than_or_equal_to(0.00)"] == 1


def test_timestamp_bounds_and_not_null_key():
    spec = spec_with(invoice_date={"checks": {"min": "2024-01-02"}})
    result = Validator(spec).validate(frame(invoice_id=[1, None, 3]))
    assert result.good.column("invoice_id").to_pylist() == [3]
    assert errors_of(result) == {"invoice_date:greater_than_or_equal_to(2024-01-02 00:00:00)",
                                 "invoice_id:not_nullable"}


def test_invalid_check_bound_is_a_spec_error():
    with pytest.raises(SpecError, match=r"columns\[4\]\.checks\.min: .zero. is not a valid numeric"):
        Validator(spec_with(total={"checks": {"min": "zero"}}))


def test_dataframe_model_by_reference():
    spec = invoices_spec(schema_model="tests.validate_models:InvoiceModel")
    result = Validator(spec).validate(frame(customer_id=[5, 5000, 6], total=[Decimal(1), Decimal(2), Decimal(0)]))
    assert result.good.column("invoice_id").to_pylist() == [1]
    checks = {e["check"] for r in result.rejects["errors"] for e in json.loads(r)}
    assert checks == {"less_than(1000)", "total_positive"}
    with pytest.raises(SpecError, match="not a pandera DataFrameModel"):
        Validator(invoices_spec(schema_model="tests.validate_models:upper_city"))


def test_missing_column_rejects_the_whole_chunk():
    result = Validator(invoices_spec()).validate(frame().drop(columns=["billing_city"]))
    assert result.good.num_rows == 0 and len(result.rejects) == 3
    assert result.reasons["billing_city: column_in_dataframe"] == 3


# --- DDL --------------------------------------------------------------------------------------------------

ALL_TYPES = [
    {"name": "id", "type": "bigint", "nullable": False},
    {"name": "small", "type": "smallint"},
    {"name": "num", "type": "numeric(12,3)"},
    {"name": "name", "type": "varchar(30)"},
    {"name": "body", "type": "text"},
    {"name": "flag", "type": "boolean"},
    {"name": "at", "type": "timestamptz", "nullable": False},
    {"name": "day", "type": "date"},
    {"name": "doc", "type": "json"},
]


@pytest.mark.parametrize("dialect, expected", [
    (postgresql.dialect(), ["BIGINT NOT NULL", "NUMERIC(12, 3)", "VARCHAR(30)", "TEXT", "BOOLEAN",
                            "TIMESTAMP WITH TIME ZONE NOT NULL", "DATE", "JSONB", "SMALLINT"]),
    (mysql.dialect(), ["BIGINT NOT NULL", "NUMERIC(12, 3)", "VARCHAR(30)", "TEXT", "BOOL", "DATETIME(6) NOT NULL",
                       "DATE", "JSON", "SMALLINT"]),
    (sqlite.dialect(), ["BIGINT NOT NULL", "NUMERIC(12, 3)", "VARCHAR(30)", "TEXT", "BOOLEAN", "DATETIME NOT NULL",
                        "DATE", "JSON", "SMALLINT"]),
])
def test_ddl_per_dialect(dialect, expected):
    spec = parse_spec({"name": "all_types", "source": {"type": "sql", "connection": "s", "table": "t",
                                                       "primary_key": "id", "cursor": "at"},
                       "target": {"connection": "w", "table": "all_types"}, "columns": ALL_TYPES})
    ddl = str(CreateTable(target_table(spec)).compile(dialect=dialect))
    for fragment in expected:
        assert fragment in ddl, (fragment, ddl)


def test_spec_fields_have_clear_errors():
    with pytest.raises(SpecError, match=r"max_reject_ratio: Input should be less than or equal to 1"):
        invoices_spec(max_reject_ratio=2)
    with pytest.raises(SpecError, match=r"schema_model: 'nope' is not a reference"):
        invoices_spec(schema_model="nope")
    with pytest.raises(SpecError, match=r"dedup.order_by: column 'nope' is not listed"):
        invoices_spec(dedup={"order_by": "nope"})
    assert datetime.now(UTC)  # keep UTC import used for readers of this module


def test_specs_check_imports_code_references(tmp_path, capsys):
    import yaml

    from driftless.cli import main

    data = copy.deepcopy(INVOICES)
    data["schema_model"] = "tests.validate_models:Nope"
    data["transforms"] = {"function": "tests.validate_models:upper_city",
                          "derive": [{"name": "total", "expr": "total +"}]}
    (tmp_path / "invoices_test.yaml").write_text(yaml.safe_dump(data))
    assert main(["specs", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "invoices_test.yaml: schema_model: cannot import 'tests.validate_models:Nope'" in err
    assert "invoices_test.yaml: transforms.derive[0].expr: cannot parse 'total +'" in err
    data["schema_model"] = "tests.validate_models:InvoiceModel"
    data["transforms"]["derive"] = [{"name": "total", "expr": "abs(total)"}]
    (tmp_path / "invoices_test.yaml").write_text(yaml.safe_dump(data))
    assert main(["specs", "check", str(tmp_path)]) == 0
