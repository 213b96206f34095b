"""A window's bounds in one place: the cursor type, lag and NULL-cursor rule used by sources, checks and write modes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Column, DateTime, MetaData, Table
from sqlalchemy.dialects import sqlite

from driftless.load.modes import write_mode_for
from driftless.window import Window
from tests.loadkit import orders_spec

W = Window.parse("2025-03-01T06:00:00Z", "2025-03-02T00:00:00Z")


def test_bounds_by_cursor_type_and_lag():
    assert W.bounds("timestamptz") == (datetime(2025, 3, 1, 6, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC))
    assert W.bounds("timestamp") == (datetime(2025, 3, 1, 6), datetime(2025, 3, 2))
    assert W.bounds("date", timedelta(hours=7)) == (date(2025, 2, 28), date(2025, 3, 2))
    assert W.bounds("timestamptz", timedelta(hours=1))[0] == datetime(2025, 3, 1, 5, tzinfo=UTC)


def test_condition_takes_null_cursors_into_every_window_only_when_asked():
    t = Table("t", MetaData(), Column("u", DateTime()))
    plain = str(W.condition(t.c.u, "timestamp").compile(dialect=sqlite.dialect()))
    every = str(W.condition(t.c.u, "timestamp", null_cursor="every_window").compile(dialect=sqlite.dialect()))
    assert "IS NULL" not in plain and plain.count("?") == 2
    assert every.endswith("OR t.u IS NULL")


def test_the_write_mode_scope_is_the_same_bounds():
    spec = orders_spec(deletes="soft")
    assert write_mode_for(spec, W).scope == W.bounds("timestamptz", spec.source.lag)
