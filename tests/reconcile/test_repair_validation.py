"""A repair loads source rows through the same conversion and checks as a window: never what a window quarantines."""

from __future__ import annotations

import sqlite3

from sqlalchemy import create_engine, text

from driftless.pipeline import run_window
from driftless.reconcile.run import reconcile_pipeline
from driftless.window import Window
from tests.helpers import invoices_spec

WINDOW = Window.parse("2021-01-01", "2026-01-01")


def test_repair_leaves_a_row_that_fails_conversion_alone(chinook_copy, sqlite_url, connections):
    connections(src=chinook_copy, wh=sqlite_url)
    spec = invoices_spec()
    run_window(spec, WINDOW)
    with sqlite3.connect(chinook_copy) as db:  # drift at the source: one unreadable total, one real change
        db.execute("UPDATE Invoice SET Total = 'twelve' WHERE InvoiceId = 1")
        db.execute("UPDATE Invoice SET Total = 99.99 WHERE InvoiceId = 2")
    summary = reconcile_pipeline(spec, do_repair=True)
    assert summary["changed"] == 2
    assert summary["repaired"]["upserted"] == 1 and summary["repaired"]["rejected"] == 1
    assert summary["status"] == "FAIL" and summary["after"]["changed"] == 1  # the bad row is still a difference
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        totals = dict(conn.execute(text("SELECT invoice_id, total FROM invoices WHERE invoice_id IN (1, 2)")).all())
    engine.dispose()
    assert str(totals[2]) == "99.99" and str(totals[1]) != "twelve"
