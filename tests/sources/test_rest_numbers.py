"""Numbers in a REST body load exactly as the API wrote them: no detour through binary floats."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, text

from driftless.pipeline import run_window
from driftless.sources.rest.reliability import reset_breakers
from driftless.spec import parse_spec
from driftless.window import Window
from tests.rest_server import ApiServer, Reply

WINDOW = Window.parse("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z")
BODY = ('{"data": [{"id": 1, "amount": 12345678901234567.89, "ratio": 0.1, "doc": {"p": 2.50, "q": [1e2, 7]},'
        ' "note": 2.50, "at": "2025-01-01T05:00:00Z"},'
        ' {"id": 2, "amount": 0.30, "ratio": 1e-7, "doc": {"p": 0.1}, "note": "x", "at": "2025-01-01T06:00:00Z"}]}')


@pytest.fixture
def api(connections, pg_url):
    reset_breakers()
    server = ApiServer().start()
    server.handler = lambda req: Reply(body=BODY, headers={"Content-Type": "application/json"})
    connections(api=server.url, wh=pg_url)
    yield server
    server.stop()
    reset_breakers()


@pytest.mark.integration
def test_decimals_and_json_numbers_keep_the_api_s_digits(api, pg_url):
    spec = parse_spec({
        "name": "rest_numbers",
        "source": {"type": "rest", "connection": "api", "endpoint": "/items", "records": "data",
                   "paginator": "single_page", "primary_key": ["id"], "cursor": "at", "auth": "none"},
        "target": {"connection": "wh", "table": "rest_numbers"},
        "columns": [
            {"name": "id", "type": "integer", "nullable": False},
            {"name": "amount", "type": "numeric(20,2)"},
            {"name": "ratio", "type": "double"},
            {"name": "doc", "type": "json"},
            {"name": "note", "type": "text"},
            {"name": "at", "type": "timestamptz", "nullable": False},
        ],
    }, "rest_numbers.yaml")
    result = run_window(spec, WINDOW)
    assert (result.loaded, result.quarantined) == (2, 0)
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(text("SELECT id, amount::text AS amount, ratio, doc::text AS doc, "
                                                   "note FROM rest_numbers"))}
    engine.dispose()
    # a float would have made this 12345678901234568.00
    assert Decimal(rows[1].amount) == Decimal("12345678901234567.89")
    assert rows[1].ratio == 0.1 and rows[2].ratio == 1e-7
    doc = json.loads(rows[1].doc, parse_float=Decimal)
    assert doc["p"] == Decimal("2.50") and not isinstance(doc["p"], str)  # a number, as written
    assert doc["q"][1] == 7
    assert rows[1].note == "2.50"  # a number in a text column: its text as the API wrote it
