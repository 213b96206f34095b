"""Rows whose cursor is NULL lie in no window: `source.null_cursor` says what happens (fail, every_window, skip),
never a silent skip. SQL sources on SQLite, PostgreSQL and MariaDB (target in the same database), and REST."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from driftless.errors import SourceError, SpecError
from driftless.pipeline import run_window
from driftless.spec import parse_spec
from driftless.state import read_state
from driftless.window import Window
from tests.helpers import fingerprint
from tests.rest_server import ApiServer, json_reply

JANUARY = Window.parse("2024-01-01", "2024-02-01")
FEBRUARY = Window.parse("2024-02-01", "2024-03-01")
ROWS = [  # id, amount, updated_at
    (1, "1.50", datetime(2024, 1, 3)), (2, "2.25", datetime(2024, 1, 9)), (3, "3.00", datetime(2024, 1, 20)),
    (4, "10.00", None), (5, "20.00", None),                       # cursor NULL: in no window
    (6, "4.00", datetime(2024, 2, 2)),
]
SPEC: dict[str, Any] = {
    "name": "events",
    "source": {"type": "sql", "connection": "db", "table": "events_src", "primary_key": ["id"],
               "cursor": "updated_at"},
    "target": {"connection": "db", "table": "events"},
    "columns": [{"name": "id", "type": "integer", "nullable": False},
                {"name": "amount", "type": "numeric(10,2)", "nullable": False},
                {"name": "updated_at", "type": "timestamp"}],
    "reconcile": {"sum_columns": ["amount"]},
}


def events_spec(**source: Any):
    data = copy.deepcopy(SPEC)
    data["source"].update(source)
    return parse_spec(data, "test")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration),
                        pytest.param("mariadb", marks=pytest.mark.integration)])
def db(request, connections):
    """One database of each dialect holding the source table; the target table goes into it too."""
    name = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mariadb": "mariadb_url"}[request.param]
    url = request.getfixturevalue(name)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE events_src (id INTEGER PRIMARY KEY, amount NUMERIC(10,2) NOT NULL, "
                          "updated_at TIMESTAMP NULL)"))
        conn.execute(text("INSERT INTO events_src VALUES (:i, :a, :u)"),
                     [{"i": i, "a": a, "u": u and f"{u:%Y-%m-%d %H:%M:%S}"} for i, a, u in ROWS])
    engine.dispose()
    connections(db=url)
    return url


def target_rows(url) -> dict[int, Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {r.id: r.updated_at for r in conn.execute(text("SELECT id, updated_at FROM events"))}
    finally:
        engine.dispose()


def test_default_policy_fails_the_window_with_the_count(db):
    spec = events_spec()
    assert spec.source.null_cursor == "fail"
    with pytest.raises(SourceError, match=r"2 row\(s\) of events_src have a NULL cursor 'updated_at'.*nothing was "
                                          r"loaded.*source.null_cursor: every_window .* or skip"):
        run_window(spec, JANUARY)
    engine = create_engine(db)
    try:
        assert read_state(engine, "events") is None
    finally:
        engine.dispose()


def test_every_window_reads_them_each_time_and_stays_idempotent(db):
    spec = events_spec(null_cursor="every_window")
    jan = run_window(spec, JANUARY)
    assert (jan.extracted, jan.loaded) == (5, 5)
    checks = {c["check"]: c for c in jan.checks}
    assert checks["null_cursor_rows"] == {"check": "null_cursor_rows", "source": 2, "target": 2,
                                              "difference": 0.0, "status": "PASS"}
    assert checks["source_count_unchanged"]["status"] == "PASS"
    assert checks["sum_amount"]["status"] == "PASS" and Decimal(checks["sum_amount"]["target"]) == Decimal("36.75")
    rows = target_rows(db)
    assert sorted(rows) == [1, 2, 3, 4, 5] and rows[4] is None and rows[5] is None

    feb = run_window(spec, FEBRUARY)          # the NULL-cursor rows again, unchanged: not rewritten
    assert (feb.extracted, feb.loaded, feb.written) == (3, 3, 1)
    before = fingerprint(db, spec)
    again = run_window(spec, JANUARY)
    assert again.written == 0 and fingerprint(db, spec) == before
    assert sorted(target_rows(db)) == [1, 2, 3, 4, 5, 6]


def test_skip_leaves_them_out_and_the_checks_count_them(db):
    spec = events_spec(null_cursor="skip")
    result = run_window(spec, JANUARY)
    assert (result.status, result.extracted, result.loaded) == ("success", 3, 3)
    checks = {c["check"]: c for c in result.checks}
    assert checks["null_cursor_rows"] == {"check": "null_cursor_rows", "source": 2, "target": 0,
                                          "difference": 2.0, "status": "WARN"}
    assert sorted(target_rows(db)) == [1, 2, 3]


def test_every_window_needs_a_nullable_cursor():
    data = copy.deepcopy(SPEC)
    data["source"]["null_cursor"] = "every_window"
    data["columns"][2]["nullable"] = False
    with pytest.raises(SpecError, match=r"test: source.null_cursor: 'every_window' loads rows whose cursor is NULL, "
                                        r"but the cursor column 'updated_at' is declared nullable: false"):
        parse_spec(data, "test")
    data["source"]["null_cursor"] = "sometimes"
    with pytest.raises(SpecError, match=r"source.null_cursor: Input should be 'fail', 'every_window' or 'skip'"):
        parse_spec(data, "test")


# ---- REST: records whose cursor is null or missing ----

RECORDS = [{"id": 1, "amount": "1.00", "updated_at": "2025-01-01T01:00:00Z"},
           {"id": 2, "amount": "2.00", "updated_at": None},
           {"id": 3, "amount": "3.00"},                                   # no cursor field at all
           {"id": 4, "amount": "4.00", "updated_at": "2025-01-01T05:00:00Z"}]
REST_WINDOW = Window.parse("2025-01-01", "2025-01-02")


def rest_spec(**source: Any):
    data = copy.deepcopy(SPEC)
    data["name"] = "rest_events"
    data["source"] = {"type": "rest", "connection": "api", "endpoint": "/items", "records": "data",
                      "primary_key": ["id"], "cursor": "updated_at", "filter_by_cursor": True,
                      "retries": {"max_attempts": 1}, **source}
    data["target"] = {"connection": "wh", "table": "events"}
    data["reconcile"] = {}
    return parse_spec(data, "test")


@pytest.fixture
def api(connections, sqlite_url):
    from driftless.sources.rest.reliability import reset_breakers

    reset_breakers()
    with ApiServer(lambda req: json_reply({"data": RECORDS})) as server:
        connections(api=server.url, wh=sqlite_url)
        yield server
    reset_breakers()


def test_rest_records_without_cursor_follow_the_policy(api, sqlite_url):
    with pytest.raises(SourceError, match=r"page 1: 2 record\(s\) have a null or missing cursor 'updated_at'"):
        run_window(rest_spec(), REST_WINDOW)

    skipped = run_window(rest_spec(null_cursor="skip"), REST_WINDOW)
    assert (skipped.extracted, skipped.metrics["null_cursor_records"]) == (2, 2)
    assert {c["check"]: c["status"] for c in skipped.checks}["null_cursor_rows"] == "WARN"
    assert sorted(target_rows(sqlite_url)) == [1, 4]

    kept = run_window(rest_spec(null_cursor="every_window"), REST_WINDOW)
    assert kept.extracted == 4
    checks = {c["check"]: c for c in kept.checks}
    assert (checks["null_cursor_rows"]["source"], checks["null_cursor_rows"]["status"]) == (2, "PASS")
    rows = target_rows(sqlite_url)
    assert sorted(rows) == [1, 2, 3, 4] and rows[2] is None and rows[3] is None
    assert json.dumps(kept.summary())  # the summary stays JSON
