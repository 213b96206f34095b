"""The SQL source against a PostgreSQL source: window bounds, chunking, time zones, query sources."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, text

from driftless.extract.staging import Manifest
from driftless.pipeline import extract_window, run_window
from driftless.sources.sql.source import SqlSource
from driftless.spec import parse_spec
from driftless.window import Window
from tests.helpers import fingerprint

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def orders_spec(**source) -> dict:
    return {
        "name": "orders",
        "chunk_size": 1000,
        "source": {"type": "sql", "connection": "pgsrc", "table": "public.orders", "primary_key": "id",
                   "cursor": "changed_at", **source},
        "target": {"connection": "wh", "table": "orders"},
        "columns": [
            {"name": "id", "type": "bigint", "nullable": False},
            {"name": "status", "type": "text"},
            {"name": "amount", "type": "numeric(12,2)"},
            {"name": "changed_at", "type": "timestamptz", "nullable": False},
        ],
    }


@pytest.fixture
def pg_orders(pg_url):
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id bigint PRIMARY KEY, status text, amount numeric(12,2), "
                          "changed_at timestamptz NOT NULL)"))
        # 2,500 rows one minute apart from T0; every 7th status is NULL, every 11th is ''.
        conn.execute(text(
            "INSERT INTO orders SELECT g, CASE WHEN g % 7 = 0 THEN NULL WHEN g % 11 = 0 THEN '' "
            "ELSE 'st' || (g % 3) END, g * 1.25, :t0 + g * interval '1 minute' FROM generate_series(1, 2500) g"
        ), {"t0": T0})
        # A session in another time zone must not shift the window.
        conn.execute(text(f"ALTER DATABASE \"{pg_url.database}\" SET timezone TO 'America/New_York'"))
    engine.dispose()
    return pg_url


@pytest.mark.integration
def test_window_bounds_are_half_open_and_chunked(pg_orders, connections, tmp_path):
    connections(pgsrc=pg_orders)
    spec = parse_spec(orders_spec())
    window = Window(T0 + timedelta(minutes=100), T0 + timedelta(minutes=2200))  # ids 100..2199
    frames = list(SqlSource(spec).read(window))
    assert [len(f) for f in frames] == [1000, 1000, 100]
    ids = [int(i) for f in frames for i in f["id"].tolist()]  # raw values: text when read through COPY
    assert ids == list(range(100, 2200))
    manifest = extract_window(spec, window, "run-1", tmp_path)
    assert manifest.records == 2100 and len(manifest.files) == 3
    assert Manifest.read(manifest.directory).max_cursor == (T0 + timedelta(minutes=2199)).isoformat()


@pytest.mark.integration
def test_pg_source_to_sqlite_target_keeps_nulls_empty_strings_and_decimals(pg_orders, connections, sqlite_url):
    connections(pgsrc=pg_orders, wh=sqlite_url)
    spec = parse_spec(orders_spec())
    result = run_window(spec, Window(T0, T0 + timedelta(days=3)))
    assert result.extracted == result.loaded == 2500
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        rows = {r[0]: r[1:] for r in conn.execute(text("SELECT id, status, amount FROM orders"))}
    assert rows[7][0] is None and rows[11][0] == "" and rows[3][0] == "st0"
    assert Decimal(str(rows[3][1])) == Decimal("3.75")
    assert fingerprint(sqlite_url, spec)["rows"] == 2500


@pytest.mark.integration
def test_query_source_is_filtered_by_the_window(pg_orders, connections, sqlite_url):
    connections(pgsrc=pg_orders, wh=sqlite_url)
    data = orders_spec(table=None, query="SELECT * FROM orders WHERE status <> ''")
    spec = parse_spec(data)
    frames = list(SqlSource(spec).read(Window(T0, T0 + timedelta(minutes=100))))
    ids = [int(i) for f in frames for i in f["id"].tolist()]
    assert ids == [i for i in range(1, 100) if i % 11 != 0 and i % 7 != 0]  # NULL <> '' is not true


def test_source_error_names_table_and_redacts(connections, sqlite_url):
    connections(pgsrc="postgresql://u:canary-pw@127.0.0.1:1/db", wh=sqlite_url)
    spec = parse_spec(orders_spec())
    from driftless.errors import SourceError

    with pytest.raises(SourceError) as err:
        list(SqlSource(spec).read(Window(T0, T0 + timedelta(days=1))))
    assert "public.orders" in str(err.value) and "canary-pw" not in str(err.value)
