"""A REST window never loads one page as if it were all: the page-size guard and ``source.total``.

A page as full as the page size from which the paginator finds no way forward (and where the API did
not say it was the last) fails the window, naming endpoint, paginator, page size and what was missing.
With ``source.total`` the API's announced count must equal the records read, resumed reads included.
"""

from __future__ import annotations

from typing import Any

import pytest

from driftless.errors import SourceError, SpecError
from driftless.pipeline import extract_window, load_window, run_window
from driftless.sources.rest.reliability import reset_breakers
from tests.rest_server import ApiServer, Reply, Request, json_reply
from tests.sources.test_rest import EXPECTED, RECORDS, WINDOW, assert_nothing_committed, loaded, rest_spec

WINDOW_PARAMS = {"updated_since": "{start}", "updated_before": "{end}"}


@pytest.fixture
def api(connections, sqlite_url):
    reset_breakers()
    server = ApiServer().start()
    connections(api=server.url, wh=sqlite_url)
    yield server
    server.stop()
    reset_breakers()


def numbered_pages(req: Request) -> Reply:
    """An API that pages by ``?page=N&per_page=M`` and announces X-Total-Count; it sends no Link header."""
    page, size = int(req.query.get("page", 1)), int(req.query.get("per_page", 5))
    return Reply(body=RECORDS[(page - 1) * size: page * size], headers={"X-Total-Count": str(len(RECORDS))})


def test_link_header_without_link_on_a_full_first_page_fails_the_window(api, sqlite_url):
    """The reported case: paginator link_header, the API sends no Link header: one page, 'success'."""
    api.handler = numbered_pages
    spec = rest_spec({"records": "$", "paginator": "link_header", "params": {**WINDOW_PARAMS, "per_page": 5}})
    with pytest.raises(SourceError) as err:
        run_window(spec, WINDOW)
    msg = str(err.value)
    assert msg.startswith(f"GET {api.url}/items: page 1 of window 20250101T000000Z_20250102T000000Z is full "
                          "(5 records, page size 5 from params.per_page), but paginator 'link_header' found no way "
                          "to a next page: the response has no Link header (expected one with rel='next')"), msg
    assert "set source.paginator to the pagination this API really uses" in msg
    assert "source.total" in msg and "end_on_full_page: true" in msg
    assert len(api.requests) == 1
    assert_nothing_committed(sqlite_url, spec)


def cursor_in_body(req: Request) -> Reply:
    after = int(req.query.get("after", 0))
    page = RECORDS[after:after + 5]
    return json_reply({"data": page, "meta": {"next": after + 5 if after + 5 < len(RECORDS) else None}})


def next_in_links(req: Request) -> Reply:
    start = int(req.query.get("after", 0))
    nxt = f"/items?after={start + 5}" if start + 5 < len(RECORDS) else None
    return json_reply({"items": RECORDS[start:start + 5], "links": {"next": nxt}})


# Each paginator whose page size is known, configured so it finds no way past a full first page.
MISCONFIGURED = {
    "next_url_wrong_path": ({"records": "items", "paginator": {"type": "next_url", "next_url_path": "next"},
                             "params": {**WINDOW_PARAMS, "limit": 5}}, next_in_links,
                            "page size 5 from params.limit), but paginator 'next_url' found no way to a next page: "
                            "no 'next' in the body (top-level keys: ['items', 'links'])"),
    "cursor_wrong_path": ({"paginator": {"type": "cursor", "has_more_path": None, "cursor_path": "meta.next_cursor",
                                         "cursor_param": "after"}, "params": {**WINDOW_PARAMS, "limit": 5}},
                          cursor_in_body,
                          "page size 5 from params.limit), but paginator 'cursor' found no way to a next page: "
                          "no 'meta.next_cursor' in the body and no has_more_path"),
    "single_page_with_a_limit": ({"paginator": "single_page", "params": {**WINDOW_PARAMS, "per_page": 5}},
                                 lambda req: json_reply({"data": RECORDS[:5]}),
                                 "page size 5 from params.per_page), but paginator 'single_page' found no way to a "
                                 "next page: paginator 'single_page' never asks for a next page"),
    "link_header_page_size_option": ({"records": "$", "paginator": {"type": "link_header", "page_size": 5},
                                      "params": WINDOW_PARAMS}, numbered_pages,
                                      "page size 5 from paginator.page_size), but paginator 'link_header'"),
}


@pytest.mark.parametrize("case", list(MISCONFIGURED))
def test_every_paginator_with_a_known_page_size_refuses_a_full_dead_end(api, sqlite_url, case):
    source, handler, expected = MISCONFIGURED[case]
    api.handler = handler
    spec = rest_spec(source)
    with pytest.raises(SourceError) as err:
        run_window(spec, WINDOW)
    assert expected in str(err.value), str(err.value)
    assert_nothing_committed(sqlite_url, spec)


def test_a_full_page_larger_than_the_limit_counts_as_full(api, sqlite_url):
    """An API that ignores the limit and sends more is not proof of the end either."""
    api.handler = lambda req: json_reply({"data": RECORDS[:8]})
    with pytest.raises(SourceError, match=r"is full \(8 records, page size 5 from params.limit\)"):
        run_window(rest_spec({"paginator": "single_page", "params": {**WINDOW_PARAMS, "limit": 5}}), WINDOW)


# The API says the end itself: a last page exactly as full as the page size is fine.
STATED_END = {
    "next_url_null": ({"records": "items", "paginator": {"type": "next_url", "next_url_path": "links.next"},
                       "params": {**WINDOW_PARAMS, "limit": 5}}, 20),
    "link_header_prev_only": ({"records": "$", "paginator": "link_header",
                               "params": {**WINDOW_PARAMS, "per_page": 5}}, 20),
    "cursor_has_more_false": ({"paginator": "cursor", "params": {**WINDOW_PARAMS, "limit": 5}}, 20),
    "cursor_explicit_null": ({"paginator": {"type": "cursor", "has_more_path": None, "cursor_path": "meta.next",
                                            "cursor_param": "after"}, "params": {**WINDOW_PARAMS, "limit": 5}}, 20),
}


def stated_end_api(records: list[dict[str, Any]], base: list[str]):
    def handle(req: Request) -> Reply:
        after = int(req.query.get("after", req.query.get("starting_after", 0)))
        if "starting_after" in req.query:  # cursor by last id: ids are 1-based positions
            after = next(i for i, r in enumerate(records) if r["id"] == after) + 1
        page, more = records[after:after + 5], after + 5 < len(records)
        nxt = after + 5 if more else None
        links = [f'<{base[0]}/items?after={nxt}&per_page=5>; rel="next"'] if more else []
        links.append(f'<{base[0]}/items?after=0&per_page=5>; rel="first"')
        return Reply(body=page if req.query.get("per_page") else
                     {"data": page, "items": page, "has_more": more, "meta": {"next": nxt},
                      "links": {"next": f"/items?after={nxt}" if more else None}},
                     headers={"Link": ", ".join(links)})
    return handle


@pytest.mark.parametrize("case", list(STATED_END))
def test_a_full_last_page_is_fine_when_the_api_states_the_end(api, sqlite_url, case):
    source, count = STATED_END[case]
    api.handler = stated_end_api(RECORDS[:count], [api.url])
    result = run_window(rest_spec(source), WINDOW)
    assert loaded(sqlite_url) == EXPECTED[:count]
    assert result.loaded == count and result.metrics["pages"] == 4


def test_end_on_full_page_turns_the_guard_off(api, sqlite_url):
    api.handler = numbered_pages
    spec = rest_spec({"records": "$", "paginator": {"type": "link_header", "end_on_full_page": True},
                      "params": {**WINDOW_PARAMS, "per_page": 5}})
    result = run_window(spec, WINDOW)
    assert result.loaded == 5 and loaded(sqlite_url) == EXPECTED[:5]


# ---- source.total ----

def test_total_header_catches_an_early_stop(api, sqlite_url):
    api.handler = numbered_pages
    spec = rest_spec({"records": "$", "paginator": {"type": "link_header", "end_on_full_page": True},
                      "params": {**WINDOW_PARAMS, "per_page": 5}, "total": {"header": "X-Total-Count"}})
    with pytest.raises(SourceError) as err:
        run_window(spec, WINDOW)
    assert str(err.value).startswith(
        f"GET {api.url}/items: read 5 records in window 20250101T000000Z_20250102T000000Z over 1 page(s), but the "
        "API announced a total of 23 (header X-Total-Count); the pagination stopped early"), str(err.value)
    assert_nothing_committed(sqlite_url, spec)


def test_total_proves_the_end_and_is_recorded_in_the_metrics(api, sqlite_url):
    api.handler = numbered_pages
    spec = rest_spec({"records": "$", "paginator": {"type": "page_number", "page_size": 5},
                      "params": WINDOW_PARAMS, "total": "X-Total-Count"})
    result = run_window(spec, WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert result.metrics["total"] == 23 and result.metrics["records"] == 23
    assert result.summary()["metrics"]["total"] == 23


def test_total_in_the_body_that_disagrees_fails_the_window(api, sqlite_url):
    """An API that silently skips a record (offset paging over moving data) is caught by its own count."""
    shown = [r for r in RECORDS if r["id"] != 12]

    def handle(req: Request) -> Reply:
        off, limit = int(req.query["offset"]), int(req.query["limit"])
        return json_reply({"data": shown[off:off + limit], "meta": {"total": len(RECORDS)}})
    api.handler = handle
    spec = rest_spec({"paginator": {"type": "offset", "limit": 5}, "params": WINDOW_PARAMS,
                      "total": {"path": "meta.total"}})
    with pytest.raises(SourceError, match=r"read 22 records .* over 6 page\(s\), but the API announced a total of "
                                          r"23 \(body path 'meta.total'\); the pagination stopped early"):
        run_window(spec, WINDOW)
    assert_nothing_committed(sqlite_url, spec)


def test_total_never_announced_or_not_a_number_fails(api, sqlite_url):
    api.handler = lambda req: json_reply({"data": RECORDS[:3]})
    spec = rest_spec({"paginator": "single_page", "params": WINDOW_PARAMS, "total": {"path": "meta.total"}})
    with pytest.raises(SourceError, match=r"source.total: no response of window \S+ had body path 'meta.total'"):
        run_window(spec, WINDOW)
    api.handler = lambda req: Reply(body={"data": RECORDS[:3]}, headers={"X-Total-Count": "lots"})
    spec = rest_spec({"paginator": "single_page", "params": WINDOW_PARAMS, "total": "X-Total-Count"})
    with pytest.raises(SourceError, match=r"source.total: header X-Total-Count is 'lots', expected a whole number"):
        run_window(spec, WINDOW)
    assert_nothing_committed(sqlite_url, spec)


def test_total_spec_needs_exactly_one_place():
    with pytest.raises(SpecError, match=r"source.total: .*set exactly one of header .* or path"):
        rest_spec({"total": {"header": "X-Total-Count", "path": "meta.total"}})
    with pytest.raises(SpecError, match=r"source.total: .*set exactly one of header"):
        rest_spec({"total": {}})


def test_total_counts_the_pages_read_before_a_resume(api, sqlite_url, tmp_path):
    """A retried extraction resumes mid-window: the records of the pages before the resume point still count."""
    state = {"fail_at": 4}

    def handle(req: Request) -> Reply:
        page = int(req.query.get("page", 1))
        if state["fail_at"] is not None and page == state["fail_at"]:
            return Reply(500, "crashed")
        return numbered_pages(req)
    api.handler = handle
    spec = rest_spec({"records": "$", "paginator": {"type": "page_number", "page_size": 5},
                      "params": WINDOW_PARAMS, "total": "X-Total-Count", "retries": {"max_attempts": 1}},
                     chunk_size=5)
    root = tmp_path / "staging"
    with pytest.raises(SourceError, match="HTTP 500"):
        extract_window(spec, WINDOW, "run-A", root)
    state["fail_at"] = None
    api.requests.clear()
    manifest = extract_window(spec, WINDOW, "run-A", root)
    assert [r.query["page"] for r in api.requests] == ["4", "5", "6"]  # resumed, not from page one
    assert manifest.metrics["total"] == 23 and manifest.records == 23
    result = load_window(spec, WINDOW, manifest, "run-A")
    assert result.loaded == 23 and loaded(sqlite_url) == EXPECTED
