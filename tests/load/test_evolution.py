"""Target schema management on each dialect: create, add nullable columns, refuse incompatible changes."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import create_engine, inspect

from driftless.errors import LoadError
from driftless.pipeline import extract_window, load_window, new_run_id
from driftless.schema import target_table
from driftless.spec import parse_spec
from driftless.state import read_runs
from driftless.targets.loaders import loader_for
from driftless.window import Window
from tests.helpers import fingerprint

WINDOW = Window.parse("2024-01-01", "2024-02-01")
COLUMNS = [
    {"name": "id", "type": "bigint", "nullable": False},
    {"name": "small", "type": "smallint"},
    {"name": "num", "type": "numeric(12,3)"},
    {"name": "name", "type": "varchar(30)"},
    {"name": "body", "type": "text"},
    {"name": "ratio", "type": "float"},
    {"name": "big_ratio", "type": "double"},
    {"name": "flag", "type": "boolean"},
    {"name": "at", "type": "timestamptz", "nullable": False},
    {"name": "local_at", "type": "timestamp"},
    {"name": "day", "type": "date"},
    {"name": "doc", "type": "json"},
]
DIALECTS = [
    "sqlite_url",
    pytest.param("pg_url", marks=pytest.mark.integration),
    pytest.param("mariadb_url", marks=pytest.mark.integration),
]


def spec_of(columns, key=("id",)):
    return parse_spec({
        "name": "evolving",
        "source": {"type": "sql", "connection": "src", "table": "t", "primary_key": list(key), "cursor": "at"},
        "target": {"connection": "wh", "table": "evolving"},
        "columns": columns,
    }, "test")


def rows(start: int, n: int, **extra):
    data = {
        "id": range(start, start + n), "small": [1] * n, "num": [Decimal("1.250")] * n, "name": ["x"] * n,
        "body": ["long text"] * n, "ratio": [0.5] * n, "big_ratio": [0.25] * n, "flag": [True] * n,
        "at": [datetime(2024, 1, 2, tzinfo=UTC)] * n, "local_at": [datetime(2024, 1, 2, 3)] * n,
        "day": [date(2024, 1, 2)] * n, "doc": [{"a": 1}] * n,
    }
    data.update(extra)
    return pd.DataFrame(data)


def run(spec, frame, tmp_path):
    run_id = new_run_id()
    manifest = extract_window(spec, WINDOW, run_id, tmp_path / run_id, frames=[frame])
    return load_window(spec, WINDOW, manifest, run_id)


@pytest.fixture(params=DIALECTS)
def url(request, connections):
    url = request.getfixturevalue(request.param)
    connections(wh=url)
    return url


def test_created_table_matches_its_spec_on_every_later_run(url, tmp_path):
    spec = spec_of(COLUMNS)
    first = run(spec, rows(1, 3), tmp_path)
    assert first.schema_changes == ["created table evolving"] and first.loaded == 3
    # Every type reads back as the kind the spec asked for: a second run changes and refuses nothing.
    second = run(spec, rows(4, 2), tmp_path)
    assert second.schema_changes == [] and second.loaded == 2


def test_new_nullable_column_is_added_and_recorded(url, tmp_path):
    run(spec_of(COLUMNS), rows(1, 3), tmp_path)
    wider = spec_of([*COLUMNS, {"name": "note", "type": "varchar(20)"}, {"name": "score", "type": "numeric(5,1)"}])
    result = run(wider, rows(4, 2, note=["hi", None], score=[Decimal("1.5"), None]), tmp_path)
    assert [c.split(" ")[:3] for c in result.schema_changes] == [["added", "column", "note"],
                                                                 ["added", "column", "score"]]
    engine = create_engine(url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("evolving")}
        runs = read_runs(engine, "evolving")
    finally:
        engine.dispose()
    assert {"note", "score"} <= columns
    assert json.loads(runs[-1]["schema_changes"]) == result.schema_changes
    assert fingerprint(url, wider)["rows"] == 5


@pytest.mark.parametrize("change, expected", [
    ({"name": {"type": "varchar(10)"}}, r"'name' was narrowed from VARCHAR\(30\)"),
    ({"small": {"type": "integer"}}, r"'small' was widened from SMALLINT"),
    ({"day": {"type": "timestamp"}}, r"'day' changed type from DATE"),
    ({"name": {"nullable": False}, "extra": {"name": "extra", "type": "integer", "nullable": False}},
     r"column 'extra' is new and NOT NULL"),
    ({"key": ["id", "small"]}, r"the primary key changed from \['id'\] \(in the target\) to \['id', 'small'\]"),
])
def test_incompatible_changes_stop_before_writing(url, tmp_path, change, expected):
    spec = spec_of(COLUMNS)
    run(spec, rows(1, 3), tmp_path)
    before = fingerprint(url, spec)
    columns = [dict(c, **change.get(c["name"], {})) for c in COLUMNS]
    if "extra" in change:
        columns.append(change["extra"])
    if "key" in change:
        columns = [dict(c, nullable=False) if c["name"] == "small" else c for c in columns]
    changed = spec_of(columns, key=change.get("key", ("id",)))
    # rows that fit the changed spec (with the new column), so that the schema check is what stops them
    new_rows = rows(10, 2, extra=[1, 2]) if "extra" in change else rows(10, 2)
    with pytest.raises(LoadError, match=expected) as err:
        run(changed, new_rows, tmp_path)
    assert "nothing was written" in str(err.value) and "then run again" in str(err.value)
    assert fingerprint(url, spec) == before


def test_nullable_in_spec_but_not_null_in_target_is_refused(sqlite_url, connections, tmp_path):
    connections(wh=sqlite_url)
    strict = [dict(c, nullable=False) if c["name"] == "name" else c for c in COLUMNS]
    run(spec_of(strict), rows(1, 1), tmp_path)
    loader = loader_for(create_engine(sqlite_url).url)
    try:
        with pytest.raises(LoadError, match="'name' is NOT NULL in the target but nullable in the spec"):
            loader.ensure_tables(target_table(spec_of(COLUMNS)))
    finally:
        loader.dispose()


def test_runs_table_of_an_older_version_gets_the_new_columns(url, tmp_path):
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE etl_runs (id INTEGER PRIMARY KEY, run_id VARCHAR(255) NOT NULL, "
                "pipeline VARCHAR(128) NOT NULL, window_start TIMESTAMP NOT NULL, window_end TIMESTAMP NOT NULL, "
                "status VARCHAR(16) NOT NULL, extracted BIGINT, loaded BIGINT, written BIGINT, watermark TIMESTAMP, "
                "started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP NOT NULL, duration_s FLOAT, message TEXT)"
            )
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE SEQUENCE etl_runs_id_seq OWNED BY etl_runs.id")
                conn.exec_driver_sql("ALTER TABLE etl_runs ALTER COLUMN id SET DEFAULT nextval('etl_runs_id_seq')")
        elif engine.dialect.name in ("mysql", "mariadb"):
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE etl_runs MODIFY id INTEGER NOT NULL AUTO_INCREMENT")
        result = run(spec_of(COLUMNS), rows(1, 2), tmp_path)
        runs = read_runs(engine, "evolving")
    finally:
        engine.dispose()
    assert result.loaded == 2
    assert runs[-1]["quarantined"] == 0 and runs[-1]["deduplicated"] == 0
