"""DataFrame-wide pandera checks (``@pa.dataframe_check``): one row-level reason, keyed by the row's key,
resolved when a later run of the window loads the fixed row. Through the SQL source into every target."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine

from driftless.errors import SpecError, ValidationFailed
from driftless.extract.validate import Validator
from driftless.pipeline import run_window
from driftless.quarantine.replay import replay
from driftless.quarantine.store import list_quarantine
from driftless.spec import parse_spec
from driftless.window import Window

WINDOW = Window.parse("2024-01-01", "2024-02-01")
ORDERS: dict = {
    "name": "orders_wide",
    "max_reject_ratio": 1,  # these windows quarantine on purpose (the default 0.01 would fail them)
    "source": {"type": "sql", "connection": "src", "table": "orders", "primary_key": ["id"], "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "orders_wide"},
    "columns": [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "order_date", "type": "date"},
        {"name": "ship_date", "type": "date"},
        {"name": "qty", "type": "integer"},
        {"name": "updated_at", "type": "timestamp", "nullable": False},
    ],
    "schema_model": "tests.dataframe_check_models:ShipAfterOrder",
}


def orders_spec(**overrides) -> object:
    return parse_spec(json.loads(json.dumps(ORDERS)) | overrides, "test")


def test_a_failed_dataframe_check_is_one_row_reason_keyed_by_the_row():
    frame = pd.DataFrame({"id": [1, 2, 3], "order_date": ["2024-01-05", "2024-01-05", "2024-01-05"],
                          "ship_date": ["2024-01-06", "2024-01-04", "2024-01-01"], "qty": [1, 2, -1],
                          "updated_at": ["2024-01-07T00:00:00"] * 3})
    result = Validator(orders_spec()).validate(frame)
    assert result.good.column("id").to_pylist() == [1]
    rejects = {r.record_key: sorted(json.loads(r.errors), key=lambda e: e["check"])
               for r in result.rejects.itertuples()}
    wide = {"column": None, "check": "ship_after_order", "message": "row failed dataframe check ship_after_order"}
    assert rejects == {
        "[2]": [wide],
        "[3]": [{"column": "qty", "check": "greater_than_or_equal_to(0)",
                 "message": "column 'qty' failed greater_than_or_equal_to(0); got -1"},
                wide],
    }
    assert dict(result.reasons) == {"(row): ship_after_order": 2, "qty: greater_than_or_equal_to(0)": 1}


def test_a_model_field_that_is_no_column_is_refused():
    with pytest.raises(SpecError, match=r"schema_model: 'tests.dataframe_check_models:FieldTypo' has field\(s\) "
                                        r"'shipdate' that are not columns of the spec"):
        Validator(orders_spec(schema_model="tests.dataframe_check_models:FieldTypo"))


def _source(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, order_date TEXT, ship_date TEXT, qty INTEGER, "
                   "updated_at TEXT)")
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", [
            (1, "2024-01-05", "2024-01-06", 1, "2024-01-07 00:00:00"),
            (2, "2024-01-05", "2024-01-03", 1, "2024-01-07 00:00:00"),   # shipped before it was ordered
            (3, "2024-01-05", None, 2, "2024-01-08 00:00:00"),
        ])
    return path


def test_wide_failure_is_resolved_when_the_fixed_row_is_loaded(wh, connections, tmp_path):
    src = _source(tmp_path / "src.db")
    connections(src=src)
    strict = orders_spec(max_reject_ratio=0.1)
    with pytest.raises(ValidationFailed, match=r"Top reasons: \(row\): ship_after_order \(1\)\."):
        run_window(strict, WINDOW)

    spec = orders_spec()
    result = run_window(spec, WINDOW)
    assert (result.loaded, result.quarantined) == (2, 1)
    engine = create_engine(wh)
    try:
        (entry,) = list_quarantine(engine, spec)
        assert entry["record_key"] == [2]
        assert entry["errors"] == [{"column": None, "check": "ship_after_order",
                                    "message": "row failed dataframe check ship_after_order"}]

        with sqlite3.connect(src) as db:  # fixed at the source, cursor untouched; the window runs again
            db.execute("UPDATE orders SET ship_date = '2024-01-06' WHERE id = 2")
        again = run_window(spec, WINDOW)
        assert (again.loaded, again.quarantined) == (3, 0)
        assert list_quarantine(engine, spec) == []
    finally:
        engine.dispose()
    replayed = replay(spec)
    assert (replayed.considered, replayed.still_failing) == (0, 0)
