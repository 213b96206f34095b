"""``etl discover --rest``: a spec from one sampled page of a real HTTP server, that loads the API's records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import requests
import yaml
from sqlalchemy import create_engine, text

from driftless.discover.rest import find_records, guess_paginator, infer_type
from driftless.errors import DriftlessError
from tests.conftest import airflow_uri
from tests.rest_server import ApiServer, Request, json_reply

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
RECORDS = [{"id": i, "name": f"Kundin {i}",
            "created-at": (TODAY - timedelta(days=5)).isoformat().replace("+00:00", "Z"),
            "updated_at": (TODAY - timedelta(days=1 + i % 3, hours=i)).isoformat().replace("+00:00", "Z"),
            "balance": i + 0.25, "active": i % 2 == 0, "metadata": {"store_id": i * 10, "tier": "gold"},
            "tags": ["a", str(i)], "since": "2024-03-0" + str(i)} for i in range(1, 7)]


def etl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "driftless.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def api():
    from driftless.sources.rest.reliability import reset_breakers

    reset_breakers()

    def handle(req: Request):
        return json_reply({"data": RECORDS, "has_more": False})

    with ApiServer(handle) as server:
        yield server
    reset_breakers()


@pytest.mark.slow
def test_discover_rest_endpoint_then_run(tmp_path, api, sqlite_url):
    specs = tmp_path / "specs"
    env = dict(os.environ, AIRFLOW_CONN_SHOP=api.url, AIRFLOW_CONN_WH=airflow_uri(sqlite_url),
               DRIFTLESS_SPECS_DIR=str(specs))
    proc = etl(["discover", "shop", "--rest", "--endpoint", "/v1/customers", "--target", "wh"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert api.requests[0].path == "/v1/customers"
    text_ = (specs / "shop_customers.yaml").read_text()
    spec = yaml.safe_load(text_)
    source = spec["source"]
    assert (source["records"], source["primary_key"], source["cursor"]) == ("data", ["id"], "updated_at")
    assert source["paginator"] == {"type": "cursor", "has_more_path": "has_more"}
    assert source["filter_by_cursor"] is True
    assert {c["name"]: (c["type"], c.get("source")) for c in spec["columns"]} == {
        "id": ("bigint", None), "name": ("text", None), "created_at": ("timestamptz", "created-at"),
        "updated_at": ("timestamptz", None), "balance": ("double", None), "active": ("boolean", None),
        "metadata": ("json", None), "tags": ("json", None), "since": ("date", None)}
    assert "source: metadata.store_id" in text_ and "DECIDE: numbers with fractions" in text_
    assert "alternatives: created_at" in text_
    assert etl(["specs", "check"], env).returncode == 0

    run = etl(["run", "shop_customers"], env)
    assert run.returncode == 0, run.stderr
    assert sum(json.loads(line)["loaded"] for line in run.stdout.splitlines()) == len(RECORDS)
    with create_engine(sqlite_url).connect() as conn:
        got = conn.execute(text("SELECT id, name, balance, active, metadata, since FROM shop_customers ORDER BY id"))
        assert [(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in got] == [
            (r["id"], r["name"], r["balance"], int(r["active"]), r["metadata"], r["since"]) for r in RECORDS]
    again = etl(["run", "shop_customers", "--start", str(spec["start_date"]), "--end", TODAY.isoformat()], env)
    assert again.returncode == 0 and json.loads(again.stdout)["written"] == 0

    # Run again unchanged: the spec is the same; --records pointing nowhere is refused with the reason.
    assert "same" in etl(["discover", "shop", "--rest", "--endpoint", "/v1/customers", "--target", "wh"], env).stdout
    bad = etl(["discover", "shop", "--rest", "--endpoint", "/v1/customers", "--target", "wh", "--records", "x"], env)
    assert bad.returncode == 1 and "--records: 'x' holds nothing" in bad.stderr


def response(headers: dict[str, str] | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = 200
    r.headers.update(headers or {})
    return r


def test_paginator_guesses_on_bare_responses():
    rec = [{"id": 1}]
    link = response({"Link": '<https://api.example.com/items?page=2>; rel="next"'})
    assert guess_paginator(link, {"data": rec}, rec, "id")[0] == {"type": "link_header"}
    assert guess_paginator(response(), {"data": rec, "next": "https://api.example.com/items?page=2"}, rec, "id")[0] \
        == {"type": "next_url", "next_url_path": "next"}
    assert guess_paginator(response(), {"data": rec, "meta": {"next_cursor": "abc", "has_more": True}}, rec, "id")[0] \
        == {"type": "cursor", "cursor_path": "meta.next_cursor", "has_more_path": "meta.has_more"}
    assert guess_paginator(response(), {"data": rec, "total_pages": 3}, rec, "id")[0] == {
        "type": "page_number", "total_pages_path": "total_pages"}
    assert guess_paginator(response(), {"data": rec, "total": 40}, rec, "id")[0] == {
        "type": "offset", "limit": 1, "total_path": "total"}
    single, why = guess_paginator(response(), rec, rec, "id")
    assert single == {"type": "single_page"} and why.startswith("DECIDE")


def test_records_and_types_from_samples():
    assert find_records({"result": {"rows": [{"a": 1}]}}, None) == ("result.rows", [{"a": 1}])
    assert find_records([{"a": 1}], None) == ("$", [{"a": 1}])
    with pytest.raises(DriftlessError, match="no list of records"):
        find_records({"a": 1}, None)
    assert infer_type([1, None, 2]) == ("bigint", None)
    assert infer_type(["2025-01-01T10:00:00", "2025-01-02 11:00"])[0] == "timestamp"
    assert infer_type([1, "x"])[0] == "text" and "DECIDE: mixed" in infer_type([1, "x"])[1]
    assert infer_type([None])[1].startswith("DECIDE")
