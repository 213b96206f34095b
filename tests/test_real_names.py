"""Real names (issue 14, section 6): source tables and columns named as operational databases and APIs name them.

Spaces, hyphens, non-ASCII letters, mixed case and reserved words are accepted as *source* names and quoted
through the dialect on every path (extract, per-window checks, deep diff, repair); target names stay
identifiers, so a target name with quotes or a semicolon is still refused. REST fields: keys as written, or
paths into nested objects.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import URL, create_engine, text

from driftless.errors import SpecError
from driftless.sources.rest.source import RestSource, field_getter
from driftless.spec import parse_spec
from tests.conftest import airflow_uri

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
SPEC = {
    "name": "order_items",
    "source": {"type": "sql", "connection": "src", "table": "Order Items", "primary_key": ["item_id"],
               "cursor": "changed"},
    "target": {"connection": "wh", "table": "order_items"},
    "columns": [
        {"name": "item_id", "source": "Item ID", "type": "integer", "nullable": False},
        {"name": "unit_price", "source": "Unit-Price", "type": "numeric(10,2)"},
        {"name": "strasse", "source": "Straße", "type": "text"},
        {"name": "select", "type": "text"},
        {"name": "changed", "source": "Last Changed", "type": "timestamp", "nullable": False},
    ],
}


def test_source_names_are_accepted_and_target_names_stay_identifiers():
    spec = parse_spec(SPEC)
    assert spec.source.table == "Order Items" and spec.column("strasse").source_name == "Straße"
    assert parse_spec({**SPEC, "source": {**SPEC["source"], "table": "Sales Data.Order Items"}})
    for bad_target in ('order"items', "items; DROP TABLE x", "Straße"):
        with pytest.raises(SpecError, match="target.table: .* is not a valid identifier"):
            parse_spec({**SPEC, "target": {"connection": "wh", "table": bad_target}})
    columns = copy.deepcopy(SPEC["columns"])
    columns[2]["name"] = "straße"
    with pytest.raises(SpecError, match=r"columns\[2\].name: .* is not a valid identifier"):
        parse_spec({**SPEC, "columns": columns})
    columns = copy.deepcopy(SPEC["columns"])
    columns[2]["source"] = "line\nbreak"
    with pytest.raises(SpecError, match=r"columns\[2\].source: .* without control characters"):
        parse_spec({**SPEC, "columns": columns})
    with pytest.raises(SpecError, match="expected table or schema.table"):
        parse_spec({**SPEC, "source": {**SPEC["source"], "table": "a.b.c"}})


def etl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "driftless.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def stamp(i: int) -> str:
    return (TODAY - timedelta(days=1 + i % 2, hours=i)).strftime("%Y-%m-%d %H:%M:%S.%f")


CREATE = {
    "sqlite": 'CREATE TABLE "Order Items" ("Item ID" INTEGER PRIMARY KEY, "Unit-Price" DECIMAL(10,2), "Straße" TEXT, '
              '"select" TEXT, "Last Changed" DATETIME NOT NULL)',
    "postgresql": 'CREATE TABLE "Order Items" ("Item ID" integer PRIMARY KEY, "Unit-Price" numeric(10,2), '
                  '"Straße" text, "select" text, "Last Changed" timestamp NOT NULL)',
    "mysql": "CREATE TABLE `Order Items` (`Item ID` int PRIMARY KEY, `Unit-Price` decimal(10,2), `Straße` text, "
             "`select` text, `Last Changed` datetime(6) NOT NULL)",
}
UPDATE = {
    "sqlite": 'UPDATE "Order Items" SET "Unit-Price" = 99.99 WHERE "Item ID" = 2',
    "postgresql": 'UPDATE "Order Items" SET "Unit-Price" = 99.99 WHERE "Item ID" = 2',
    "mysql": "UPDATE `Order Items` SET `Unit-Price` = 99.99 WHERE `Item ID` = 2",
}


@pytest.mark.integration
@pytest.mark.parametrize("source_kind,target_kind", [("sqlite", "postgresql"), ("postgresql", "mariadb"),
                                                      ("mariadb", "sqlite")])
def test_discover_run_and_deep_diff_with_real_names(request, tmp_path, source_kind, target_kind):
    def database(kind: str) -> URL:
        if kind == "sqlite":
            return URL.create("sqlite", database=str(tmp_path / f"{len(list(tmp_path.iterdir()))}.db"))
        return request.getfixturevalue("pg_url" if kind == "postgresql" else "mariadb_url")

    source, target = database(source_kind), database(target_kind)
    dialect = "mysql" if source_kind == "mariadb" else source_kind
    engine = create_engine(source)
    with engine.begin() as conn:
        conn.exec_driver_sql(CREATE[dialect])
        table = 'INSERT INTO "Order Items"' if dialect != "mysql" else "INSERT INTO `Order Items`"
        for i in range(1, 6):
            conn.execute(text(f"{table} VALUES (:i, :p, :s, :k, :c)"),
                         {"i": i, "p": f"{i}.25", "s": "Hauptstraße" if i % 2 else None, "k": f"kw{i}", "c": stamp(i)})
    engine.dispose()
    specs = tmp_path / "specs"
    env = dict(os.environ, AIRFLOW_CONN_SRC=airflow_uri(source), AIRFLOW_CONN_WH=airflow_uri(target),
               DRIFTLESS_SPECS_DIR=str(specs))
    proc = etl(["discover", "src", "--target", "wh"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = yaml.safe_load((specs / "order_items.yaml").read_text())
    assert spec["source"]["table"] == "Order Items" and "query" not in spec["source"]
    assert [(c["name"], c.get("source")) for c in spec["columns"]] == [
        ("item_id", "Item ID"), ("unit_price", "Unit-Price"), ("strasse", "Straße"), ("select", None),
        ("last_changed", "Last Changed")]
    assert etl(["specs", "check"], env).returncode == 0
    run = etl(["run", "order_items"], env)
    assert run.returncode == 0, run.stderr
    assert sum(json.loads(line)["loaded"] for line in run.stdout.splitlines()) == 5

    deep = etl(["reconcile", "order_items", "--deep"], env)
    assert deep.returncode == 0, deep.stdout + deep.stderr
    assert json.loads(deep.stdout)["status"] == "PASS"

    # A stored row digest on the source table, through the same quoted names (etl digest add).
    added = etl(["digest", "add", "src", "--table", "Order Items"], env)
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads(added.stdout)["digest"] == "added"
    assert json.loads(added.stdout)["columns"] == ["Item ID", "Unit-Price", "Straße", "select", "Last Changed"]
    deep = etl(["reconcile", "order_items", "--deep"], env)
    assert deep.returncode == 0 and json.loads(deep.stdout)["status"] == "PASS", deep.stdout + deep.stderr
    assert '"source": true' in deep.stdout  # the source side summed its digest (row_digest), not its rows

    engine = create_engine(source)
    with engine.begin() as conn:
        conn.exec_driver_sql(UPDATE[dialect])
    engine.dispose()
    deep = etl(["reconcile", "order_items", "--deep"], env)
    summary = json.loads(deep.stdout)
    assert deep.returncode != 0 and summary["status"] == "FAIL", summary
    assert "99.99" in deep.stdout  # the changed row is found, through the quoted names
    repair = etl(["reconcile", "order_items", "--repair"], env)
    assert repair.returncode == 0 and json.loads(repair.stdout)["status"] == "REPAIRED", repair.stdout
    with create_engine(target).connect() as conn:
        assert float(conn.execute(text("SELECT unit_price FROM order_items WHERE item_id = 2")).scalar_one()) == 99.99


# --- REST: keys as written, and paths into nested objects ---------------------------------------------------------

REST_SPEC = {
    "name": "orders_api",
    "source": {"type": "rest", "connection": "api", "endpoint": "/orders", "records": "data",
               "paginator": {"type": "single_page"}, "primary_key": ["id"], "cursor": "created_at"},
    "target": {"connection": "wh", "table": "orders_api"},
    "columns": [
        {"name": "id", "source": "order-id", "type": "integer", "nullable": False},
        {"name": "created_at", "source": "created-at", "type": "timestamptz", "nullable": False},
        {"name": "store_id", "source": "metadata.store_id", "type": "integer"},
        {"name": "first_sku", "source": "items[0].sku", "type": "text"},
        {"name": "dotted", "source": "a.b", "type": "text"},
    ],
}


def test_rest_fields_by_name_and_by_path():
    spec = parse_spec(REST_SPEC)
    source = RestSource(spec)
    records = [
        {"order-id": 1, "created-at": "2025-01-01T10:00:00Z", "metadata": {"store_id": 7},
         "items": [{"sku": "A-1"}, {"sku": "B-2"}], "a.b": "literal key wins", "a": {"b": "nested"}},
        {"order-id": 2, "created-at": "2025-01-01T11:00:00Z", "metadata": {}, "items": [], "a": {"b": "nested"}},
        {"order-id": 3, "created-at": "2025-01-01T12:00:00Z"},
    ]
    frame = source._frame(records)
    assert frame.to_dict("records") == [
        {"id": 1, "created_at": "2025-01-01T10:00:00Z", "store_id": 7, "first_sku": "A-1",
         "dotted": "literal key wins"},
        {"id": 2, "created_at": "2025-01-01T11:00:00Z", "store_id": None, "first_sku": None, "dotted": "nested"},
        {"id": 3, "created_at": "2025-01-01T12:00:00Z", "store_id": None, "first_sku": None, "dotted": None},
    ]
    assert field_getter("metadata.store_id")({"metadata": {"store_id": 0}}) == 0
    assert field_getter("x[")({"x[": 1}) == 1  # not a path: the key as written


def test_rest_key_and_cursor_by_path():
    data = copy.deepcopy(REST_SPEC)
    data["columns"][0]["source"] = "meta.id"
    data["columns"][1]["source"] = "meta.times[0]"
    source = RestSource(parse_spec(data))
    def record(key: int, hour: int, day: int = 1) -> dict:
        return {"meta": {"id": key, "times": [f"2025-01-0{day}T{hour:02d}:00:00Z"]}}

    records = [record(1, 10), record(2, 11), record(3, 9), record(1, 8),  # key 1 again, older: a duplicate
               record(4, 10, day=2)]  # outside the window
    from driftless.window import Window

    kept, filtered, duplicates = source._keep(records, 1, Window("2025-01-01", "2025-01-02"))
    assert (filtered, duplicates) == (1, 1)
    assert [r["meta"]["id"] for r in kept] == [1, 2, 3]


def test_sql_source_selects_quoted_names(tmp_path):
    from driftless.sources.sql.source import SqlSource
    from driftless.window import Window

    db = Path(tmp_path / "s.db")
    engine = create_engine(URL.create("sqlite", database=str(db)))
    with engine.begin() as conn:
        conn.exec_driver_sql(CREATE["sqlite"])
        conn.exec_driver_sql("INSERT INTO \"Order Items\" VALUES (1, 2.5, 'x', 'y', '2025-01-01 10:00:00.000000')")
    spec = parse_spec(SPEC)
    sql = str(SqlSource(spec, engine).statement(Window("2025-01-01", "2025-01-02")).compile(engine))
    assert 'FROM "Order Items"' in sql and '"Unit-Price" AS unit_price' in sql and '"select"' in sql
    frames = list(SqlSource(spec, engine).read(Window("2025-01-01", "2025-01-02")))
    assert frames[0].to_dict("records")[0]["strasse"] == "x"
    engine.dispose()
