"""``etl discover`` on real PostgreSQL, MariaDB and SQLite schemas: specs that pass ``specs check``, a first
``etl run`` that loads tables equal to the source (compared here, independently), a re-run that writes 0
rows, and a changed source shown as changes instead of overwritten."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import URL, create_engine, text

from driftless.discover.sql import snake_name
from tests.conftest import airflow_uri

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def stamp(days_ago: int, hour: int) -> str:
    """A cursor value before today's midnight UTC (a complete daily window holds it)."""
    return (TODAY - timedelta(days=days_ago) + timedelta(hours=hour, minutes=7, seconds=3)).strftime(
        "%Y-%m-%d %H:%M:%S.%f")


def etl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "driftless.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


STAMP_TEXT = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:?\d\d|Z)?$")


def canon(value: Any) -> Any:
    """One comparable form per value, whatever database or driver produced it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return (value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value).isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        if value[:1] in "[{":
            try:
                return json.dumps(json.loads(value), sort_keys=True)
            except ValueError:
                return value
        if STAMP_TEXT.match(value):
            return canon(datetime.fromisoformat(value.replace("Z", "+00:00")))
        return value
    raise AssertionError(f"unexpected value {value!r}")


def rows(url: URL, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(canon(v) for v in r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def discover_and_run(tmp_path: Path, source: URL, target: URL, expect_written: set[str], expect_drafts: set[str],
                     extra: list[str] = ()) -> tuple[Path, dict[str, str]]:
    specs = tmp_path / "specs"
    env = dict(os.environ, AIRFLOW_CONN_SRC=airflow_uri(source), AIRFLOW_CONN_WH=airflow_uri(target))
    proc = etl(["discover", "src", "--target", "wh", "--out", str(specs), *extra], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.name for p in specs.glob("*.yaml")} == {f"{n}.yaml" for n in expect_written}, proc.stdout
    assert {p.name for p in specs.glob("*.draft")} == {f"{n}.yaml.draft" for n in expect_drafts}, proc.stdout
    check = etl(["specs", "check", str(specs)], env)
    assert check.returncode == 0, check.stderr
    run = etl(["run", "--all", "--specs-dir", str(specs)], env)
    assert run.returncode == 0, run.stderr
    windows = [json.loads(line) for line in run.stdout.splitlines()]
    assert windows and all(w["status"] == "success" for w in windows)
    return specs, env


def assert_rerun_writes_nothing(specs: Path, env: dict[str, str], pipeline: str) -> None:
    again = etl(["run", "--all", "--specs-dir", str(specs)], env)
    assert again.returncode == 0 and again.stdout == "" and "up to date" in again.stderr, again.stderr
    spec = yaml.safe_load((specs / f"{pipeline}.yaml").read_text())
    whole = etl(["run", pipeline, "--specs-dir", str(specs), "--start", str(spec["start_date"]),
                 "--end", TODAY.isoformat()], env)
    assert whole.returncode == 0, whole.stderr
    summary = json.loads(whole.stdout.splitlines()[-1])
    assert summary["loaded"] > 0 and summary["written"] == 0, summary


def spec_of(specs: Path, name: str) -> dict:
    return yaml.safe_load((specs / f"{name}.yaml").read_text())


def column(spec: dict, name: str) -> dict:
    return next(c for c in spec["columns"] if c["name"] == name)


# --- PostgreSQL -> MariaDB ----------------------------------------------------------------------------------------

PG_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE orders (
  id serial PRIMARY KEY, status mood NOT NULL, qty posint, tags text[], nums integer[], doc jsonb, meta json,
  ref uuid, payload bytea, search tsvector, wait interval, amount numeric, price numeric(12,2), big numeric(50,10),
  created timestamp, updated_at timestamptz NOT NULL, day date, note text, code char(3), flag boolean, ratio real,
  score double precision, at_time time, small smallint, huge bigint, name varchar(40));
CREATE INDEX ix_orders_updated ON orders (updated_at);
CREATE TABLE "Order Items" ("Item ID" integer PRIMARY KEY, "Unit-Price" numeric(10,2), "Straße" text,
  "lastModified" timestamp);
CREATE TABLE nokey (a integer, changed_at timestamp);
CREATE TABLE nocursor (id integer PRIMARY KEY, label text);
"""


@pytest.mark.integration
@pytest.mark.slow
def test_postgresql_to_mariadb(tmp_path, pg_url, mariadb_url):
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(PG_SCHEMA)
        for i in range(1, 7):
            conn.execute(text(
                "INSERT INTO orders (status, qty, tags, nums, doc, meta, ref, payload, search, wait, amount, price,"
                " big, created, updated_at, day, note, code, flag, ratio, score, at_time, small, huge, name) VALUES "
                "(:status, :qty, :tags, :nums, CAST(:doc AS jsonb), CAST(:meta AS json), gen_random_uuid(),"
                " '\\x00ff', to_tsvector('english', 'fat cats'), CAST(:wait AS interval), :amount, :price, :big,"
                " :created, CAST(:updated AS timestamptz), :day, :note, :code, :flag, 1.25, 2.5e-3, '10:11:12', -3,"
                " 9007199254740993, :name)"),
                {"status": ["sad", "ok", "happy"][i % 3], "qty": i, "tags": ["a", f"b{i}", "ü"], "nums": [i, i * 2],
                 "doc": json.dumps({"k": i, "nested": {"z": [1, 2.50]}}), "meta": '{"b": 1, "a": "x"}',
                 "wait": f"{i} days 02:00:00", "amount": f"{i}2.500", "price": f"{i}.25",
                 "big": "12345678901.0123456789", "created": stamp(3, i), "updated": stamp(i % 3 + 1, 2 * i) + "+00",
                 "day": TODAY.date() - timedelta(days=i),
                 "note": None if i == 2 else f"note 'quoted' {i}\ttab", "code": "ab", "flag": i % 2 == 0,
                 "name": f"n{i}"})
        conn.execute(text('INSERT INTO "Order Items" VALUES (1, 9.99, \'Hauptstraße\', :a), (2, 0.5, NULL, NULL), '
                          '(3, NULL, \'x\', :b)'), {"a": stamp(1, 3), "b": stamp(2, 20)})
    engine.dispose()

    specs, env = discover_and_run(tmp_path, pg_url, mariadb_url, {"orders", "order_items"}, {"nokey", "nocursor"})
    orders = spec_of(specs, "orders")
    assert column(orders, "status")["checks"] == {"allowed": ["sad", "ok", "happy"]}
    assert column(orders, "qty")["type"] == "integer"  # domain -> its base type
    assert column(orders, "tags")["type"] == column(orders, "doc")["type"] == "json"
    assert column(orders, "ref")["type"] == "varchar(36)" and column(orders, "amount")["type"] == "text"
    assert column(orders, "updated_at")["type"] == "timestamptz" and column(orders, "created")["type"] == "timestamp"
    assert orders["source"]["cursor"] == "updated_at" and orders["source"]["primary_key"] == ["id"]
    names = {c["name"] for c in orders["columns"]}
    assert not names & {"payload", "search"}
    yaml_text = (specs / "orders.yaml").read_text()
    assert "# not loaded: payload: bytea" in yaml_text and "# not loaded: search: tsvector" in yaml_text
    assert "DECIDE: numeric has no declared scale" in yaml_text and "interval: loaded as its text" in yaml_text
    items = spec_of(specs, "order_items")
    assert [c["name"] for c in items["columns"]] == ["item_id", "unit_price", "strasse", "last_modified"]
    assert items["source"]["null_cursor"] == "every_window"
    assert "WARNING: the cursor is nullable and 1 row(s)" in (specs / "order_items.yaml").read_text()
    drafts = (specs / "nokey.yaml.draft").read_text() + (specs / "nocursor.yaml.draft").read_text()
    assert "no primary key" in drafts and "no timestamp or date column" in drafts

    src = rows(pg_url, "SELECT id, status::text, qty, to_jsonb(tags)::text, to_jsonb(nums)::text, doc::text, "
               "meta::text, ref::text, wait::text, amount::text, price, big::text, created, updated_at, day, note, "
               "code, flag, ratio, score, at_time::text, small, huge, name FROM orders ORDER BY id")
    got = rows(mariadb_url, "SELECT id, status, qty, tags, nums, doc, meta, ref, wait, amount, price, big, created, "
               "updated_at, day, note, code, flag, ratio, score, at_time, small, huge, name FROM orders ORDER BY id")
    assert len(src) == 6 and got == src
    assert rows(mariadb_url, "SELECT item_id, unit_price, strasse, last_modified FROM order_items ORDER BY item_id") \
        == rows(pg_url, 'SELECT "Item ID", "Unit-Price", "Straße", "lastModified" FROM "Order Items" ORDER BY 1')
    assert_rerun_writes_nothing(specs, env, "orders")

    # The source changes: discover shows what changed and leaves the spec alone until --force.
    with create_engine(pg_url).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE orders ADD COLUMN discount numeric(5,2); ALTER TABLE orders ALTER COLUMN "
                             "name TYPE varchar(80); ALTER TABLE orders DROP COLUMN note")
    before = (specs / "orders.yaml").read_text()
    proc = etl(["discover", "src", "--target", "wh", "--out", str(specs)], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "+ column discount (numeric(5,2)): new in the source" in proc.stdout
    assert "~ column name: type varchar(40) -> varchar(80)" in proc.stdout
    assert "- column note: no longer in the source" in proc.stdout
    assert "same     " in proc.stdout and "order_items.yaml" in proc.stdout  # the unchanged table is said so
    assert "+  - {name: discount" in proc.stdout  # the unified diff
    assert (specs / "orders.yaml").read_text() == before
    proc = etl(["discover", "src", "--target", "wh", "--out", str(specs), "--tables", "orders", "--force"], env)
    assert proc.returncode == 0 and "wrote" in proc.stdout
    assert column(spec_of(specs, "orders"), "discount")["type"] == "numeric(5,2)"


# --- MariaDB -> SQLite --------------------------------------------------------------------------------------------

MARIADB_SCHEMA = [
    """CREATE TABLE products (id int unsigned PRIMARY KEY, active tinyint(1) NOT NULL, kind enum('book','toy'),
       labels set('new','sale'), attrs json, created datetime(6), last_update timestamp(6) NULL, price decimal(10,2),
       big bigint unsigned, small smallint unsigned, tiny tinyint, made year, opens time, picture blob,
       name varchar(40), descr text, ratio float, score double, flags bit(1))""",
    "CREATE INDEX ix_products_created ON products (created)",
]


@pytest.mark.integration
@pytest.mark.slow
def test_mariadb_to_sqlite(tmp_path, mariadb_url, sqlite_url):
    engine = create_engine(mariadb_url)
    with engine.begin() as conn:
        for statement in MARIADB_SCHEMA:
            conn.exec_driver_sql(statement)
        for i in range(1, 6):
            conn.execute(text(
                "INSERT INTO products VALUES (:id, :active, :kind, :labels, :attrs, :created, :upd, :price, "
                "4294967296, 65535, -128, 2024, '08:30:00', 'xx', :name, 'Grüße\nzweite Zeile', 1.5, "
                "0.1, b'1')"),
                {"id": 4000000000 + i, "active": i % 2, "kind": ["book", "toy", None][i % 3],
                 "labels": "new,sale" if i % 2 else "", "attrs": json.dumps({"w": i, "tags": ["a"]}),
                 "created": stamp(4, i), "upd": stamp(i % 3 + 1, i), "price": f"{i}9.90", "name": f"p{i}"})
    engine.dispose()

    # `big` (bigint unsigned) is numeric(20,0), which a SQLite target cannot hold exactly (doubles: 15 digits,
    # refused by its loader): discover makes it text there, with a DECIDE note
    specs, env = discover_and_run(tmp_path, mariadb_url, sqlite_url, {"products"}, set())
    spec = spec_of(specs, "products")
    types = {c["name"]: c["type"] for c in spec["columns"]}
    assert types == {"id": "bigint", "active": "boolean", "kind": "text", "labels": "text", "attrs": "json",
                     "created": "timestamp", "last_update": "timestamp", "price": "numeric(10,2)",
                     "big": "text", "small": "integer", "tiny": "smallint", "made": "smallint",
                     "opens": "text", "name": "varchar(40)", "descr": "text", "ratio": "float", "score": "double"}
    assert column(spec, "kind")["checks"] == {"allowed": ["book", "toy"]}
    assert spec["source"]["cursor"] == "last_update"  # by name, before the indexed `created`
    text_ = (specs / "products.yaml").read_text()
    assert "alternatives: created" in text_ and "not loaded: picture" in text_ and "not loaded: flags" in text_
    assert "session time_zone" in text_
    assert "numeric(20,0) does not fit the target exactly" in text_

    columns = "id, active, kind, labels, attrs, created, last_update, price, big, small, tiny, made, opens, name, " \
              "descr, ratio, score"
    as_text = columns.replace("opens", "CAST(opens AS CHAR)").replace("big", "CAST(big AS CHAR)")
    src = rows(mariadb_url, f"SELECT {as_text} FROM products ORDER BY id")
    assert len(src) == 5 and rows(sqlite_url, f"SELECT {columns} FROM products ORDER BY id") == src
    assert_rerun_writes_nothing(specs, env, "products")


# --- SQLite -> PostgreSQL -----------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.slow
def test_sqlite_to_postgresql(tmp_path, pg_url):
    source = URL.create("sqlite", database=str(tmp_path / "source.db"))
    engine = create_engine(source)
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "Order Items" ("Item ID" INTEGER PRIMARY KEY, "Unit-Price" DECIMAL(10,2), '
                             '"Straße" VARCHAR(20), "updated" DATETIME, flag BOOLEAN, weight REAL, qty INT, anything, '
                             'shipped DATE, "select" TEXT, raw BLOB)')
        for i in range(1, 6):
            conn.execute(text('INSERT INTO "Order Items" VALUES (:i, :p, :s, :u, :f, 0.25, :i, :any, :d, \'kw\', '
                              "x'00')"),
                         {"i": i, "p": i + 0.5, "s": "Straße" if i % 2 else None,
                          "u": None if i == 5 else stamp(i % 3 + 1, i),
                          "f": i % 2, "any": ["t", 3, 2.5, None, "x"][i - 1],
                          "d": (TODAY.date() - timedelta(days=i)).isoformat()})
    engine.dispose()

    specs, env = discover_and_run(tmp_path, source, pg_url, {"order_items"}, set())
    spec = spec_of(specs, "order_items")
    types = {c["name"]: c["type"] for c in spec["columns"]}
    assert types == {"item_id": "bigint", "unit_price": "numeric(10,2)", "strasse": "text", "updated": "timestamp",
                     "flag": "boolean", "weight": "double", "qty": "bigint", "anything": "text", "shipped": "date",
                     "select": "text"}
    assert spec["source"]["cursor"] == "updated" and spec["source"]["null_cursor"] == "every_window"
    assert spec["source"]["table"] == "Order Items" and "query" not in spec["source"]  # names as the source has them
    assert column(spec, "unit_price")["source"] == "Unit-Price" and column(spec, "strasse")["source"] == "Straße"
    assert "no declared type" in (specs / "order_items.yaml").read_text()

    src = rows(source, 'SELECT "Item ID", "Unit-Price", "Straße", updated, flag, weight, qty, CAST(anything AS TEXT), '
               'shipped, "select" FROM "Order Items" ORDER BY 1')
    got = rows(pg_url, 'SELECT item_id, unit_price, strasse, updated, flag, weight, qty, anything, shipped, "select" '
               "FROM order_items ORDER BY 1")
    assert len(src) == 5 and got == src
    assert_rerun_writes_nothing(specs, env, "order_items")


def test_snake_names():
    assert [snake_name(n) for n in ["InvoiceId", "Item ID", "Unit-Price", "Straße", "lastModified", "HTTPServer",
                                    "2fa", "ÉtéCafé", "__x__"]] == [
        "invoice_id", "item_id", "unit_price", "strasse", "last_modified", "http_server", "c_2fa", "ete_cafe", "x"]
