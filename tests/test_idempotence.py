"""The invariant: any windows, any number of times, in any order, give the target one clean run gives."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from etl.pipeline import run_window
from etl.state import read_runs
from etl.window import Window
from tests.helpers import fingerprint, invoices_spec

YEARS = [Window(datetime(y, 1, 1, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC)) for y in range(2021, 2026)]
ALL = Window(datetime(2021, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def wired(connections, chinook_source, target_url):
    connections(src=chinook_source, wh=target_url)
    return invoices_spec(), target_url


def test_same_window_three_times_is_identical(wired):
    spec, url = wired
    prints = []
    for _ in range(3):
        result = run_window(spec, YEARS[2])
        assert result.extracted == result.loaded > 0
        prints.append(fingerprint(url, spec))
    assert prints[0] == prints[1] == prints[2]
    assert prints[0]["rows"] == result.extracted
    runs = read_runs(create_engine(url), spec.name)
    assert [r["status"] for r in runs] == ["success"] * 3
    assert [r["written"] for r in runs][1:] == [0, 0], "unchanged rows must not be rewritten"


def test_reverse_order_equals_forward_order(wired, connections, another_target):
    spec, url = wired
    for window in reversed(YEARS):
        run_window(spec, window)
    reverse = fingerprint(url, spec)

    forward_url = another_target()
    connections(wh=forward_url)
    for window in YEARS:
        run_window(spec, window)
    forward = fingerprint(forward_url, spec)
    assert reverse == forward
    assert forward["rows"] == 412
    assert forward["watermark"] == ALL.end


def test_watermark_never_moves_backwards(wired):
    spec, url = wired
    run_window(spec, YEARS[4])
    assert fingerprint(url, spec)["watermark"] == YEARS[4].end
    run_window(spec, YEARS[0])  # a backfill of an old window
    assert fingerprint(url, spec)["watermark"] == YEARS[4].end


def test_changed_source_row_is_updated_not_duplicated(connections, chinook_copy, target_url):
    connections(src=chinook_copy, wh=target_url)
    spec = invoices_spec()
    run_window(spec, ALL)
    before = fingerprint(target_url, spec)
    with sqlite3.connect(chinook_copy) as db:
        db.execute("UPDATE Invoice SET Total = 99.99, updated_at = '2025-12-31 23:00:00.000000' WHERE InvoiceId = 7")
    result = run_window(spec, ALL)
    after = fingerprint(target_url, spec)
    assert after["rows"] == before["rows"] == 412
    assert after["sha256"] != before["sha256"]
    assert result.written == 1
    with create_engine(target_url).connect() as conn:
        assert str(conn.execute(text("SELECT total FROM invoices WHERE invoice_id = 7")).scalar_one()) == "99.99"


def test_lag_rereads_late_rows(connections, chinook_source, sqlite_url):
    connections(src=chinook_source, wh=sqlite_url)
    spec = invoices_spec(source={"lag": "P366D"})
    result = run_window(spec, YEARS[1])
    plain = run_window(invoices_spec(name="other"), YEARS[1])
    assert result.extracted > plain.extracted


windows = st.lists(st.sampled_from(range(len(YEARS))), min_size=1, max_size=8)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=windows)
def test_random_window_sequences_match_oracle(wired, sequence):
    """Against an oracle: the target holds exactly the source rows of the windows run so far."""
    spec, url = wired
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in ("invoices", "etl_state", "etl_runs"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    src = sqlite3.connect(spec_source_path())
    expected: dict[int, tuple] = {}
    for i in sequence:
        w = YEARS[i]
        run_window(spec, w)
        lo, hi = (w.start.strftime("%Y-%m-%d %H:%M:%S.%f"), w.end.strftime("%Y-%m-%d %H:%M:%S.%f"))
        for row in src.execute(
            "SELECT InvoiceId, CustomerId, Total FROM Invoice WHERE updated_at >= ? AND updated_at < ?", (lo, hi)
        ):
            expected[row[0]] = (row[1], round(row[2], 2))
    with engine.connect() as conn:
        got = {r[0]: (r[1], round(float(r[2]), 2))
               for r in conn.execute(text("SELECT invoice_id, customer_id, total FROM invoices"))}
        successes = conn.execute(text("SELECT count(*) FROM etl_runs WHERE status = 'success'")).scalar_one()
    assert got == expected
    assert successes == len(sequence)
    assert fingerprint(url, spec)["watermark"] == max(YEARS[i].end for i in sequence)
    engine.dispose()


def spec_source_path() -> str:
    import os

    return os.environ["AIRFLOW_CONN_SRC"].removeprefix("sqlite:///")
