"""REST source against a real HTTP server on 127.0.0.1: pagination, reliability, auth, resume, secrets."""

from __future__ import annotations

import copy
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from driftless.errors import SourceError, SpecError
from driftless.pipeline import extract_window, load_window, run_window
from driftless.sources.rest.reliability import TokenBucket, parse_retry_after, reset_breakers
from driftless.sources.rest.source import RestSource
from driftless.spec import parse_spec
from driftless.state import read_runs, read_state
from driftless.window import Window
from tests.helpers import fingerprint
from tests.rest_server import ApiServer, Reply, Request, json_reply

WINDOW = Window.parse("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z")
CANARY = "canary-s3cr3t-7f3a9c"


def make_records(n: int = 23) -> list[dict[str, Any]]:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    return [{"id": i, "name": f"customer {i}", "amount": f"{i * 1.25:.2f}",
             "updated_at": (base + timedelta(minutes=37 * i)).isoformat().replace("+00:00", "Z")}
            for i in range(1, n + 1)]


RECORDS = make_records()
EXPECTED = [(r["id"], r["name"]) for r in RECORDS]

SPEC: dict[str, Any] = {
    "name": "rest_test",
    "chunk_size": 7,
    "source": {"type": "rest", "connection": "api", "endpoint": "/items", "records": "data",
               "paginator": {"type": "cursor", "cursor_param": "starting_after"},
               "params": {"updated_since": "{start}", "updated_before": "{end}", "limit": 5},
               "primary_key": ["id"], "cursor": "updated_at",
               "retries": {"max_attempts": 4, "backoff": 0.01, "max_backoff": 0.05},
               "timeouts": {"connect": 2, "read": 2}},
    "target": {"connection": "wh", "table": "customers"},
    "columns": [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "name", "type": "varchar(60)"},
        {"name": "amount", "type": "numeric(10,2)"},
        {"name": "updated_at", "type": "timestamp", "nullable": False},
    ],
}


def rest_spec(source: dict[str, Any] | None = None, **top: Any):
    data = copy.deepcopy(SPEC)
    data["source"].update(source or {})
    data.update(top)
    return parse_spec(data, "test")


# ---- a fake API: one handler per pagination style, all serving RECORDS ----

def cursor_api(records=RECORDS, page_size=5):
    def handle(req: Request) -> Reply:
        after = req.query.get("starting_after")
        start = 0 if after is None else next(i for i, r in enumerate(records) if str(r["id"]) == after) + 1
        page = records[start:start + page_size]
        return json_reply({"data": page, "has_more": start + page_size < len(records)})
    return handle


def offset_api(req: Request) -> Reply:
    off, limit = int(req.query["offset"]), int(req.query["limit"])
    return json_reply({"data": RECORDS[off:off + limit], "total": len(RECORDS)})


def page_api(req: Request) -> Reply:
    page, size = int(req.query["page"]), int(req.query["per_page"])
    return json_reply({"results": RECORDS[(page - 1) * size: page * size], "total_pages": -(-len(RECORDS) // size)})


def next_url_api(req: Request) -> Reply:
    start = int(req.query.get("after", 0))
    nxt = f"/items?after={start + 5}" if start + 5 < len(RECORDS) else None
    return json_reply({"items": RECORDS[start:start + 5], "links": {"next": nxt}})


def link_api(base: list[str]):
    def handle(req: Request) -> Reply:
        start = int(req.query.get("since", 0))
        headers = {}
        if start + 5 < len(RECORDS):
            headers["Link"] = f'<{base[0]}/items?since={start + 5}>; rel="next", <{base[0]}/items>; rel="first"'
        return Reply(body=RECORDS[start:start + 5], headers=headers)
    return handle


def single_api(req: Request) -> Reply:
    return json_reply({"data": {"rows": RECORDS}})


@pytest.fixture
def api(connections, sqlite_url):
    reset_breakers()
    server = ApiServer().start()
    connections(api=server.url, wh=sqlite_url)
    yield server
    server.stop()
    reset_breakers()


def loaded(url, table="customers") -> list[tuple]:
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(table):
            return []
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(f"SELECT id, name FROM {table} ORDER BY id"))]
    finally:
        engine.dispose()


def assert_nothing_committed(url, spec) -> None:
    assert loaded(url) == []
    engine = create_engine(url)
    try:
        assert read_state(engine, spec.name) is None
    finally:
        engine.dispose()


STYLES = {
    "cursor": ({"paginator": "cursor"}, cursor_api()),
    "offset": ({"paginator": {"type": "offset", "limit": 5, "total_path": "total"}}, offset_api),
    "page_number": ({"records": "$.results", "paginator": {"type": "page_number", "page_size": 5,
                                                           "total_pages_path": "total_pages"}}, page_api),
    "next_url": ({"records": "items", "paginator": {"type": "next_url", "next_url_path": "links.next"}},
                 next_url_api),
    "link_header": ({"records": "$", "paginator": "link_header"}, None),
    # No limit parameter: a single page as full as a limit would fail the page-size guard.
    "single_page": ({"records": "data.rows", "paginator": "single_page",
                     "params": {"updated_since": "{start}", "updated_before": "{end}"}}, single_api),
}


@pytest.mark.parametrize("style", list(STYLES))
def test_each_pagination_style_loads_exact_records(api, sqlite_url, style):
    source, handler = STYLES[style]
    api.handler = handler or link_api([api.url])
    spec = rest_spec(source)
    result = run_window(spec, WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert result.extracted == result.loaded == 23
    pages = {"single_page": 1, "cursor": 5, "offset": 5, "page_number": 5, "next_url": 5, "link_header": 5}[style]
    assert result.metrics["pages"] == pages and result.metrics["requests"] == pages
    assert result.metrics["records"] == 23


def test_offset_without_total_stops_on_empty_page(api, sqlite_url):
    api.handler = lambda req: json_reply({"data": RECORDS[int(req.query["offset"]):][:int(req.query["limit"])]})
    run_window(rest_spec({"paginator": {"type": "offset", "limit": 5}}), WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert [r.query["offset"] for r in api.requests] == ["0", "5", "10", "15", "20", "23"]


def test_window_is_templated_into_params(api):
    api.handler = cursor_api()
    spec = rest_spec({"params": {"from": "{start}", "to": "{end_epoch}", "day": "{start_date}"}})
    list(RestSource(spec).read(WINDOW))
    first = api.requests[0].query
    assert first == {"from": "2025-01-01T00:00:00Z", "to": str(int(WINDOW.end.timestamp())), "day": "2025-01-01"}
    assert api.requests[1].query["starting_after"] == "5"


@pytest.mark.integration
def test_end_to_end_rerun_is_idempotent(connections, target_url):
    reset_breakers()
    with ApiServer(cursor_api()) as server:
        connections(api=server.url, wh=target_url)
        spec = rest_spec()
        first = run_window(spec, WINDOW)
        fp1 = fingerprint(target_url, spec)
        second = run_window(spec, WINDOW)
        fp2 = fingerprint(target_url, spec)
    assert loaded(target_url) == EXPECTED
    assert fp1 == fp2 and fp1["rows"] == 23
    assert first.written == 23 and second.written == 0
    engine = create_engine(target_url)
    try:
        runs = read_runs(engine, spec.name)
    finally:
        engine.dispose()
    assert [r["status"] for r in runs] == ["success", "success"]
    assert json.loads(runs[0]["metrics"])["requests"] == 5


def test_client_side_filter_and_duplicates_across_pages(api, sqlite_url):
    outside = [{"id": 100, "name": "too old", "amount": "1", "updated_at": "2024-12-31T23:59:59Z"},
               {"id": 101, "name": "too new", "amount": "1", "updated_at": "2025-01-02T00:00:00Z"}]
    # Page boundaries repeat records: ids 5 and 10 appear twice, 100/101 lie outside the window.
    pages = [RECORDS[0:5], RECORDS[4:10] + outside[:1], RECORDS[9:15], RECORDS[15:] + outside[1:]]

    def handle(req):
        n = int(req.query.get("page", 1))
        return json_reply({"data": pages[n - 1] if n <= len(pages) else []})
    api.handler = handle
    spec = rest_spec({"paginator": {"type": "page_number"}, "filter_by_cursor": True})
    result = run_window(spec, WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert result.metrics["duplicates_dropped"] == 2 and result.metrics["filtered_out"] == 2
    assert result.extracted == 23


# ---- reliability ----

def flaky(fail: list[Reply], then=None):
    """Answer with the replies of ``fail`` first, then normally."""
    then = then or cursor_api()
    queue = list(fail)

    def handle(req):
        return queue.pop(0) if queue else then(req)
    return handle


def test_429_retry_after_seconds_is_honoured(api, sqlite_url):
    api.handler = flaky([Reply(429, {"error": "slow down"}, {"Retry-After": "1"})])
    t0 = time.monotonic()
    result = run_window(rest_spec(), WINDOW)
    assert time.monotonic() - t0 >= 0.95
    assert loaded(sqlite_url) == EXPECTED
    assert result.metrics["retries"] == 1 and result.metrics["status"]["429"] == 1
    assert 0.95 <= result.metrics["retry_wait_s"] <= 1.05


def test_429_retry_after_http_date_is_honoured_and_capped(api, sqlite_url):
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    api.handler = flaky([Reply(429, {}, {"Retry-After": soon}), Reply(429, {}, {"Retry-After": "3600"})])
    t0 = time.monotonic()
    result = run_window(rest_spec({"retries": {"max_attempts": 4, "max_retry_after": 1.5}}), WINDOW)
    elapsed = time.monotonic() - t0
    assert loaded(sqlite_url) == EXPECTED
    assert result.metrics["retries"] == 2
    # The date (<= 2 s away) and the capped 3600 s (1.5 s) together: about 2.5 to 3.5 s.
    assert 2.2 <= elapsed < 6


def test_parse_retry_after_both_forms():
    assert parse_retry_after("7") == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past: retry now
    later = parse_retry_after(format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True))
    assert 28 <= later <= 31
    assert parse_retry_after("soon") is None


def test_5xx_burst_is_retried(api, sqlite_url):
    api.handler = flaky([Reply(503, "upstream down"), Reply(502, "bad gateway"), Reply(500, "oops")])
    result = run_window(rest_spec(), WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert result.metrics["retries"] == 3
    assert result.metrics["status"] == {"200": 5, "500": 1, "502": 1, "503": 1}


def test_5xx_beyond_attempts_fails_with_clear_error_and_commits_nothing(api, sqlite_url):
    api.handler = lambda req: Reply(503, {"error": "maintenance until 10:00"})
    spec = rest_spec({"retries": {"max_attempts": 3, "backoff": 0.01}})
    with pytest.raises(SourceError) as err:
        run_window(spec, WINDOW)
    msg = str(err.value)
    assert msg == (f"GET {api.url}/items?updated_since=2025-01-01T00:00:00Z&updated_before=2025-01-02T00:00:00Z"
                   "&limit=5 -> HTTP 503: Service Unavailable; body: '{\"error\": \"maintenance until 10:00\"}' "
                   "(gave up after 3 attempt(s))")
    assert len(api.requests) == 3
    assert_nothing_committed(sqlite_url, spec)


def test_connection_reset_is_retried(api, sqlite_url):
    api.handler = flaky([Reply(reset=True), Reply(reset=True)])
    result = run_window(rest_spec(), WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert result.metrics["retries"] == 2 and result.metrics["status"]["error"] == 2


def test_truncated_page_is_retried(api, sqlite_url):
    body = json.dumps({"data": RECORDS[:5], "has_more": True})
    api.handler = flaky([Reply(body=body, truncate=40)])
    result = run_window(rest_spec(), WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert result.metrics["retries"] == 1


def test_slow_response_hits_read_timeout_then_retries(api, sqlite_url):
    api.handler = flaky([Reply(delay=1.0, body={"data": [], "has_more": False})])
    result = run_window(rest_spec({"timeouts": {"connect": 1, "read": 0.3}}), WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert result.metrics["retries"] == 1


def test_always_slow_fails_naming_the_timeout(api, sqlite_url):
    api.handler = lambda req: Reply(delay=0.6, body={"data": []})
    spec = rest_spec({"timeouts": {"connect": 1, "read": 0.2}, "retries": {"max_attempts": 2, "backoff": 0.01}})
    with pytest.raises(SourceError, match=r"timeout .*read 0.2s\) \(gave up after 2 attempt\(s\)\)"):
        run_window(spec, WINDOW)
    assert_nothing_committed(sqlite_url, spec)


def test_malformed_json_is_an_error_not_retried(api, sqlite_url):
    api.handler = lambda req: Reply(body=b'{"data": [{"id": 1,, }')
    spec = rest_spec()
    with pytest.raises(SourceError) as err:
        run_window(spec, WINDOW)
    assert "-> HTTP 200: the body is not valid JSON" in str(err.value)
    assert '{"data": [{"id": 1,, }' in str(err.value)
    assert len(api.requests) == 1
    assert_nothing_committed(sqlite_url, spec)


def test_client_error_is_terminal(api, sqlite_url):
    api.handler = lambda req: Reply(404, {"error": "no such endpoint"})
    spec = rest_spec()
    with pytest.raises(SourceError, match=r"GET http://127\.0\.0\.1:\d+/items\?.* -> HTTP 404: Not Found; "
                                          r"body: '\{\"error\": \"no such endpoint\"\}'"):
        run_window(spec, WINDOW)
    assert len(api.requests) == 1
    assert_nothing_committed(sqlite_url, spec)


def test_repeated_cursor_is_an_error(api, sqlite_url):
    api.handler = lambda req: json_reply({"data": RECORDS[:5], "has_more": True})  # never advances
    spec = rest_spec()
    with pytest.raises(SourceError, match=r"same pagination state twice \(\{\"cursor\": 5\}\) after page 2"):
        run_window(spec, WINDOW)
    assert len(api.requests) == 2
    assert_nothing_committed(sqlite_url, spec)


def test_max_pages_and_max_records_stop_with_an_error(api, sqlite_url):
    api.handler = cursor_api()
    with pytest.raises(SourceError, match=r"more than max_pages=3 pages in window 20250101T000000Z"):
        run_window(rest_spec({"max_pages": 3}), WINDOW)
    assert len(api.requests) == 3
    with pytest.raises(SourceError, match=r"more than max_records=12 records"):
        run_window(rest_spec({"max_records": 12}), WINDOW)
    assert_nothing_committed(sqlite_url, rest_spec())


def test_circuit_breaker_opens_fails_fast_then_probes(api, sqlite_url):
    healthy = cursor_api()
    state = {"down": True}
    api.handler = lambda req: Reply(500, "down") if state["down"] else healthy(req)
    spec = rest_spec({"breaker": {"failures": 2, "cooldown": 0.5},
                      "retries": {"max_attempts": 6, "backoff": 0.01, "max_backoff": 0.02}})
    with pytest.raises(SourceError) as err:
        run_window(spec, WINDOW)
    assert f"circuit breaker for {api.url} is open after 2 consecutive failures (last: HTTP 500)" in str(err.value)
    assert len(api.requests) == 2  # the third attempt failed fast without reaching the server
    source = RestSource(spec)
    with pytest.raises(SourceError, match="circuit breaker"):  # still open: no request at all
        list(source.read(WINDOW))
    assert len(api.requests) == 2
    assert source.metrics["requests"] == 0 and source.metrics["breaker_trips"] == 0
    state["down"] = False
    time.sleep(0.6)
    result = run_window(spec, WINDOW)  # the probe succeeds and closes the breaker
    assert loaded(sqlite_url) == EXPECTED and result.metrics["breaker_trips"] == 0


def test_deadline_bounds_the_window(api, sqlite_url):
    api.handler = lambda req: Reply(503, "down")
    spec = rest_spec({"deadline": "PT1S", "breaker": {"failures": 100},
                      "retries": {"max_attempts": 100, "backoff": 0.2, "max_backoff": 0.3}})
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"deadline \(0:00:01\) would pass"):
        run_window(spec, WINDOW)
    assert time.monotonic() - t0 < 1.5
    assert_nothing_committed(sqlite_url, spec)


def test_rate_limit_spaces_requests(api, sqlite_url):
    api.handler = cursor_api(page_size=2)  # 12 pages
    stamps: list[float] = []
    inner = api.handler
    api.handler = lambda req: (stamps.append(time.monotonic()), inner(req))[1]
    result = run_window(rest_spec({"rate_limit": {"requests_per_second": 10, "burst": 2}}), WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    # 12 requests at 10/s with a burst of 2: at least (12 - 2) / 10 = 1 s.
    assert stamps[-1] - stamps[0] >= 0.95
    assert result.metrics["throttled_waits"] >= 5 and result.metrics["throttled_wait_s"] >= 0.5


def test_token_bucket_arithmetic():
    now = [0.0]
    slept: list[float] = []

    def sleep(d):
        slept.append(d)
        now[0] += d
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: now[0], sleep=sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:3] == [0, 0, 0] and waits[3] == pytest.approx(0.1) and waits[4] == pytest.approx(0.1)


# ---- auth ----

def oauth_server(api: ApiServer, expire_first: bool = True):
    issued: list[str] = []
    healthy = cursor_api()

    def handle(req: Request) -> Reply:
        if req.path == "/oauth/token":
            assert req.headers["authorization"].startswith("Basic ")
            assert b"grant_type=client_credentials" in req.body
            issued.append(f"tok-{len(issued) + 1}")
            return json_reply({"access_token": issued[-1], "token_type": "bearer", "expires_in": 3600})
        token = req.headers.get("authorization", "")
        valid = f"Bearer {issued[-1]}" if issued else None
        if token != valid or (expire_first and token == "Bearer tok-1" and len(api.requests) > 3):
            return Reply(401, {"error": "invalid_token"})
        return healthy(req)
    return handle, issued


def test_oauth2_token_cached_and_refreshed_once_on_401(api, connections, sqlite_url):
    handler, issued = oauth_server(api)
    api.handler = handler
    connections(api=json.dumps({"conn_type": "http", "host": api.url, "extra": {
        "client_id": "driftless", "client_secret": CANARY, "token_url": f"{api.url}/oauth/token"}}))
    result = run_window(rest_spec(), WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert issued == ["tok-1", "tok-2"]  # one fetch, one refresh after the 401; cached in between
    assert result.metrics["status"]["401"] == 1 and result.metrics["token_requests"] == 2


def test_token_endpoint_outage_is_retried(api, connections, sqlite_url):
    handler, issued = oauth_server(api, expire_first=False)
    failures = [Reply(503, {"error": "token service down"})]
    api.handler = lambda req: failures.pop() if req.path == "/oauth/token" and failures else handler(req)
    connections(api=json.dumps({"conn_type": "http", "host": api.url, "login": "driftless", "password": CANARY,
                                "extra": {"token_url": f"{api.url}/oauth/token"}}))
    result = run_window(rest_spec({"auth": "oauth2_client_credentials"}), WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert issued == ["tok-1"] and result.metrics["retries"] == 1 and result.metrics["token_requests"] == 2


def test_401_after_refresh_is_terminal(api, connections, sqlite_url):
    def handle(req):
        if req.path == "/oauth/token":
            return json_reply({"access_token": "t", "expires_in": 60})
        return Reply(401, {"error": "revoked"})
    api.handler = handle
    connections(api=json.dumps({"conn_type": "http", "host": api.url, "extra": {
        "client_id": "c", "client_secret": CANARY, "token_url": f"{api.url}/oauth/token"}}))
    spec = rest_spec()
    with pytest.raises(SourceError, match="HTTP 401.*check the connection's credentials"):
        run_window(spec, WINDOW)
    assert [r.path for r in api.requests] == ["/oauth/token", "/items", "/oauth/token", "/items"]
    assert_nothing_committed(sqlite_url, spec)


@pytest.mark.parametrize(("auth", "conn", "check"), [
    ({"type": "api_key", "name": "X-Api-Key"}, {"extra": {"api_key": CANARY}},
     lambda req: req.headers.get("x-api-key") == CANARY),
    ({"type": "api_key", "name": "api_key", "location": "query"}, {"password": CANARY},
     lambda req: req.query.get("api_key") == CANARY),
    ("basic", {"login": "me", "password": CANARY},
     lambda req: req.headers.get("authorization", "").startswith("Basic ")),
    (None, {"extra": {"token": CANARY}}, lambda req: req.headers.get("authorization") == f"Bearer {CANARY}"),
], ids=["api_key_header", "api_key_query", "basic", "bearer_inferred"])
def test_auth_styles_send_credentials_from_the_connection(api, connections, sqlite_url, auth, conn, check):
    healthy = cursor_api()
    api.handler = lambda req: healthy(req) if check(req) else Reply(403, {"error": "forbidden"})
    connections(api=json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": api.url.rsplit(":", 1)[1],
                                **conn}))
    run_window(rest_spec({"auth": auth} if auth else {}), WINDOW)
    assert loaded(sqlite_url) == EXPECTED


def test_breaker_trip_is_counted(api):
    api.handler = lambda req: Reply(500, "down")
    source = RestSource(rest_spec({"breaker": {"failures": 2, "cooldown": 30},
                                   "retries": {"max_attempts": 5, "backoff": 0.01, "max_backoff": 0.02}}))
    with pytest.raises(SourceError, match="circuit breaker"):
        list(source.read(WINDOW))
    assert source.metrics["breaker_trips"] == 1 and source.metrics["requests"] == 2
    assert source.metrics["retries"] == 2 and source.metrics["status"] == {"500": 2}


def test_api_key_echoed_in_next_url_is_not_kept(api, connections, tmp_path):
    def handle(req):
        start = int(req.query.get("after", 0))
        if start == 15:
            return Reply(400, {"error": "stop here"})
        nxt = f"/items?after={start + 5}&api_key={req.query['api_key']}" if start + 5 < len(RECORDS) else None
        return json_reply({"items": RECORDS[start:start + 5], "next": nxt})
    api.handler = handle
    connections(api=json.dumps({"conn_type": "http", "host": api.url, "password": CANARY}))
    spec = rest_spec({"records": "items", "paginator": "next_url", "params": {},
                      "auth": {"type": "api_key", "name": "api_key", "location": "query"}}, chunk_size=5)
    with pytest.raises(SourceError) as err:
        extract_window(spec, WINDOW, "r", tmp_path)
    assert CANARY not in str(err.value) and "api_key=***" in str(err.value)
    assert all(r.query["api_key"] == CANARY for r in api.requests)
    progress = next(tmp_path.rglob("_progress.json")).read_text()
    assert "after=15" in progress and CANARY not in progress  # the checkpointed next-page URL, without the key


def test_canary_secret_never_leaks(api, connections, sqlite_url, caplog, tmp_path, monkeypatch):
    """Logs, errors, manifest, run records and summary never hold the secret, even when the API echoes it."""
    monkeypatch.setenv("DRIFTLESS_STAGING_DIR", str(tmp_path / "staging"))
    caplog.set_level(logging.DEBUG)
    healthy = cursor_api()
    calls = {"n": 0}

    def handle(req):
        calls["n"] += 1
        if calls["n"] <= 2:  # a retried failure whose body echoes the key
            return Reply(500, {"error": f"bad key {req.query.get('api_key')}"})
        return healthy(req)
    api.handler = handle
    connections(api=f"http://me:{CANARY}@127.0.0.1:{api.url.rsplit(':', 1)[1]}")
    spec = rest_spec({"auth": {"type": "api_key", "name": "api_key", "location": "query"}})
    root = tmp_path / "staging"
    manifest = extract_window(spec, WINDOW, "run1", root)
    result = load_window(spec, WINDOW, manifest, "run1")
    texts = [caplog.text, json.dumps(manifest.to_dict()), json.dumps(result.summary(), default=str),
             json.dumps(result.to_xcom(), default=str)]
    texts += [p.read_text(errors="replace") for p in root.rglob("*.json")]
    # A failing run: the error and the failed run record.
    api.handler = lambda req: Reply(400, {"error": f"key {req.query.get('api_key')} rejected"})
    with pytest.raises(SourceError) as err:
        run_window(spec, WINDOW)
    texts.append(str(err.value))
    assert "api_key=%2A%2A%2A" in str(err.value) or "api_key=***" in str(err.value)
    engine = create_engine(sqlite_url)
    try:
        texts.append(json.dumps(read_runs(engine, spec.name), default=str))
    finally:
        engine.dispose()
    assert loaded(sqlite_url) == EXPECTED
    assert sum(t.count("***") for t in texts) >= 1
    for t in texts:
        assert CANARY not in t


# ---- resume ----

@pytest.mark.parametrize(("chunk_size", "resumed_at", "first_page"), [(5, ["15", "20"], 4), (7, ["10", "15", "20"], 3)],
                         ids=["chunks_end_on_pages", "chunk_ends_mid_page"])
def test_retried_extract_resumes_from_last_staged_page_and_loads_once(api, sqlite_url, tmp_path, chunk_size,
                                                                      resumed_at, first_page):
    healthy = cursor_api()
    state = {"fail_after": 3}  # pages 1-3 succeed, page 4 fails for good

    def handle(req):
        if state["fail_after"] is not None and len([r for r in api.requests if r.path == "/items"]) > \
                state["fail_after"]:
            return Reply(500, "crashed")
        return healthy(req)
    api.handler = handle
    spec = rest_spec({"retries": {"max_attempts": 1}}, chunk_size=chunk_size)
    root = tmp_path / "staging"
    with pytest.raises(SourceError, match="HTTP 500"):
        extract_window(spec, WINDOW, "run-A", root)
    assert len(api.requests) == 4
    state["fail_after"] = None
    api.requests.clear()
    manifest = extract_window(spec, WINDOW, "run-A", root)
    # Pages 1-3 were read. With 5-record chunks all of page 3 was staged: the retry starts at page 4
    # (starting_after=15). With 7-record chunks one record of page 3 was not: page 3 is fetched again and
    # its four staged records are recognised by key. Never page one.
    assert [r.query.get("starting_after") for r in api.requests] == resumed_at
    assert manifest.metrics["resumed_from_page"] == first_page
    assert manifest.metrics["duplicates_dropped"] == (0 if chunk_size == 5 else 4)
    assert manifest.records == 23 and len(manifest.files) == -(-23 // chunk_size)
    result = load_window(spec, WINDOW, manifest, "run-A")
    again = load_window(spec, WINDOW, manifest, "run-A")
    assert loaded(sqlite_url) == EXPECTED
    assert result.loaded == 23 and result.written == 23 and again.written == 0


# ---- specs ----

@pytest.mark.parametrize(("mutate", "expected"), [
    ({"paginator": "pages"}, "test: source.paginator.type: unknown type 'pages' (expected one of: 'offset', "
                             "'page_number', 'cursor', 'next_url', 'link_header', 'single_page')"),
    ({"paginator": {"type": "offset", "limt": 5}}, "test: source.paginator.limt: unknown field (expected one of: "
                                                   "limit, limit_param, offset_param, stop_on_short_page"),
    ({"params": {"since": "{begin}"}}, "test: source.params: params.since: unknown placeholder(s) ['begin']"),
    ({"token": "x"}, "test: source.token: unknown field (expected one of: auth, breaker, connection, cursor"),
    ({"auth": {"type": "bearer", "token": "x"}}, "test: source.auth.token: unknown field"),
    ({"rate_limit": {"requests_per_second": 0}}, "test: source.rate_limit.requests_per_second: Input should be "
                                                 "greater than 0"),
    ({"connection": "my api"}, "test: source.connection: 'my api' is not a valid identifier"),
    ({"records": "data..x"}, "test: source.records: 'data..x' is not a JSON path"),
    ({"paginator": {"cursor_param": "after"}}, "test: source.paginator.type: Field required (expected one of: "
                                               "'offset', 'page_number', 'cursor'"),
])
def test_rest_spec_errors_name_the_field(mutate, expected):
    with pytest.raises(SpecError) as err:
        rest_spec(mutate)
    assert expected in str(err.value), str(err.value)


def test_demo_spec_is_valid():
    from driftless.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "dags" / "pipelines" / "chinook_customers_api.yaml")
    assert spec.source.type == "rest" and spec.source.paginator.type == "cursor"


def test_demo_api_server_end_to_end(connections, sqlite_url):
    """The shipped demo API (a subprocess) through the shipped spec: all 59 Chinook customers, twice."""
    import subprocess
    import sys

    from driftless.spec import load_spec

    repo = Path(__file__).resolve().parents[2]
    token = "demo-token-for-test"
    proc = subprocess.Popen([sys.executable, str(repo / "demo" / "api_server.py")], text=True, stdout=subprocess.PIPE,
                            env={"DRIFTLESS_DEMO_API_TOKEN": token, "PATH": ""})
    try:
        url = proc.stdout.readline().strip().removeprefix("listening on ")
        connections(chinook_api=url.replace("http://", f"http://:{token}@"), warehouse=sqlite_url)
        spec = load_spec(repo / "dags" / "pipelines" / "chinook_customers_api.yaml")
        window = Window.parse("2021-01-01T00:00:00Z", "2026-01-01T00:00:00Z")
        first = run_window(spec, window)
        second = run_window(spec, window)
        half = run_window(spec, Window.parse("2021-01-01T00:00:00Z", "2021-03-01T00:00:00Z"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert first.extracted == 59 and first.written == 59 and second.written == 0
    assert first.metrics["pages"] == 3  # 25 per page, starting_after the last id
    assert 0 < half.extracted < 59
    engine = create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            query = "SELECT first_name, country, updated_at FROM customers WHERE customer_id = 1"
            row = conn.execute(text(query)).one()
    finally:
        engine.dispose()
    assert row[0] == "Luís" and row[1] == "Brazil" and str(row[2]).startswith("20")


@pytest.mark.parametrize(("value", "base", "secret"), [
    ("https://me:p%40ss@api.example.com:8443/v1?token=abc", "https://api.example.com:8443/v1/", "abc"),
    (json.dumps({"conn_type": "http", "host": "api.example.com", "schema": "https", "extra": '{"token": "t1"}'}),
     "https://api.example.com/", "t1"),
    (json.dumps({"conn_type": "http", "host": "http://127.0.0.1:5000", "extra": {"token": "t2"}}),
     "http://127.0.0.1:5000/", "t2"),
])
def test_connection_fields_and_base_url(monkeypatch, value, base, secret):
    from driftless.connections import connection_fields
    from driftless.sources.rest.client import base_url

    monkeypatch.setenv("AIRFLOW_CONN_SOME_API", value)
    fields = connection_fields("some_api")
    assert base_url(fields) == base
    assert fields["extra"]["token"] == secret
    if value.startswith("https://me"):
        assert fields["login"] == "me" and fields["password"] == "p@ss"


def test_missing_connection_is_named(monkeypatch):
    from driftless.connections import connection_fields
    from driftless.errors import ConnectionNotFound

    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    with pytest.raises(ConnectionNotFound, match="connection 'nope' is not defined: set AIRFLOW_CONN_NOPE"):
        connection_fields("nope")


# ---- paginators on bare responses (no server) ----

def bare_response(url: str = "https://api.example.com/items", link: str | None = None):
    import requests

    response = requests.Response()
    response.url, response.status_code = url, 200
    if link:
        response.headers["Link"] = link
    return response


def paginator(config):
    from driftless.sources.rest.paginators import paginator_for

    return paginator_for(rest_spec({"paginator": config}).source.paginator)


def test_paginators_on_bare_responses():
    resp = bare_response()
    cursor = paginator("cursor")
    assert cursor.advance({"cursor": None}, resp, {"has_more": True}, [{"id": 7}]) == {"cursor": 7}
    assert cursor.advance({"cursor": 7}, resp, {"has_more": False}, [{"id": 9}]) is None
    assert cursor.prepare({"cursor": 7}, "u", {"limit": 5}) == ("u", {"limit": 5, "starting_after": 7})
    with pytest.raises(SourceError, match="'has_more' not found in the response body"):
        cursor.advance({"cursor": None}, resp, {}, [{"id": 1}])
    with pytest.raises(SourceError, match="says more pages follow .* but gave no cursor"):
        paginator({"type": "cursor", "cursor_path": "meta.next"}).advance({"cursor": None}, resp,
                                                                          {"has_more": True, "meta": {}}, [{"id": 1}])
    link = paginator("link_header")
    nxt = bare_response(link='<https://api.example.com/items?page=3>; rel="next", <https://x/1>; rel="prev"')
    assert link.advance({"url": None}, nxt, [], [{}]) == {"url": "https://api.example.com/items?page=3"}
    assert link.advance({"url": None}, resp, [], [{}]) is None
    nu = paginator({"type": "next_url", "next_url_path": "paging.next"})
    assert nu.advance({"url": None}, resp, {"paging": {"next": "?cursor=abc"}}, [{}]) == \
        {"url": "https://api.example.com/items?cursor=abc"}
    assert nu.advance({"url": None}, resp, {"paging": {"next": None}}, [{}]) is None
    offset = paginator({"type": "offset", "limit": 10, "stop_on_short_page": True})
    assert offset.advance({"offset": 0}, resp, {}, [{}] * 10) == {"offset": 10}
    assert offset.advance({"offset": 10}, resp, {}, [{}] * 3) is None
    pages = paginator({"type": "page_number", "start_page": 0, "total_pages_path": "pages"})
    assert pages.advance({"page": 0}, resp, {"pages": 2}, [{}]) == {"page": 1}
    assert pages.advance({"page": 1}, resp, {"pages": 2}, [{}]) is None


def test_jsonpath_selector():
    from driftless.sources.rest.jsonpath import MISSING, select

    body = {"data": {"items": [{"id": 1}, {"id": 2}]}}
    assert select(body, "$") is body
    assert select(body, "$.data.items[1].id") == 2 and select(body, "data.items") == [{"id": 1}, {"id": 2}]
    assert select(body, "data.nope") is MISSING and select(body, "data.items[5]", None) is None


@pytest.mark.parametrize("filter_by_cursor", [False, True])
def test_bad_cursor_value_is_named(api, sqlite_url, filter_by_cursor):
    bad = [*RECORDS[:3], {**RECORDS[3], "updated_at": "yesterday"}]
    api.handler = lambda req: json_reply({"data": bad})
    # 1 of 4 rejected is above the default max_reject_ratio (0.01): this test accepts any share.
    spec = rest_spec({"paginator": "single_page", "filter_by_cursor": filter_by_cursor}, max_reject_ratio=1)
    if filter_by_cursor:  # the source itself must read the cursor to filter: the window fails
        with pytest.raises(SourceError, match="updated_at.*yesterday"):
            run_window(spec, WINDOW)
        assert_nothing_committed(sqlite_url, spec)
        return
    # Otherwise validation quarantines the record with the reason, and the others load (driftless.quarantine).
    from driftless.quarantine.store import list_quarantine

    result = run_window(spec, WINDOW)
    assert (result.loaded, result.quarantined) == (3, 1)
    engine = create_engine(sqlite_url)
    try:
        (entry,) = list_quarantine(engine, spec)
    finally:
        engine.dispose()
    assert entry["errors"][0]["column"] == "updated_at" and "'yesterday'" in entry["errors"][0]["message"]


def test_records_not_objects_or_not_a_list(api, sqlite_url):
    api.handler = lambda req: json_reply({"data": [1, 2]})
    with pytest.raises(SourceError, match="page 1: expected records to be JSON objects, got int"):
        run_window(rest_spec({"paginator": "single_page"}), WINDOW)
    api.handler = lambda req: json_reply({"data": {"id": 1}})
    with pytest.raises(SourceError, match=r"records path 'data' holds dict, expected a list"):
        run_window(rest_spec({"paginator": "single_page"}), WINDOW)
    api.handler = lambda req: json_reply({"rows": []})
    with pytest.raises(SourceError, match=r"records path 'data' not found in the body \(top-level keys: \['rows'\]\)"):
        run_window(rest_spec({"paginator": "single_page"}), WINDOW)


def test_cli_summary_carries_metrics(api, tmp_path, capsys):
    from driftless.cli import main

    api.handler = cursor_api()
    data = copy.deepcopy(SPEC)
    spec_file = tmp_path / "rest_test.yaml"
    spec_file.write_text(json.dumps(data))  # JSON is YAML
    assert main(["run", str(spec_file), "--start", "2025-01-01", "--end", "2025-01-02"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["extracted"] == 23 and summary["status"] == "success"
    metrics = summary["metrics"]
    assert metrics["requests"] == 5 and metrics["pages"] == 5 and metrics["records"] == 23
    assert metrics["bytes"] > 0 and set(metrics["latency_ms"]) == {"p50", "p95", "p99"}
    assert metrics["status"] == {"200": 5} and metrics["retries"] == 0 and metrics["throttled_waits"] == 0
