"""Paginators: each answers only "what is the next request, and is there one?".

A paginator is a small state machine over a JSON-serializable ``state`` dict: ``initial_state()``
gives the first page's state, ``prepare(state, url, params)`` turns a state into a request, and
``advance(state, response, body, records)`` returns the next page's state or ``None`` at the end.
The state is all the request loop needs to checkpoint a page (resume) and to notice an API that
sends the same cursor twice (an error, never an endless loop).

The spec's ``paginator:`` (``type:`` string or shorthand) picks the class through ``PAGINATORS``.

When ``advance`` ends the pagination on a page as full as the page size, the request loop asks
``missing_way_forward``: ``None`` when the API itself said this was the last page (``has_more``
false, a total reached, a ``next`` that is explicitly null), else what was missing; the loop then
fails the window instead of reporting one page as all of it.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urljoin

import requests

from driftless.errors import SourceError
from driftless.sources.rest import spec as rs
from driftless.sources.rest.jsonpath import MISSING, select

State = dict[str, Any]


def _size_in(params: dict[str, Any], names: tuple[str, ...]) -> tuple[int, str] | None:
    """The first of ``names`` in ``params`` that holds a whole number above zero, and where it was found."""
    for name in names:
        value = params.get(name)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"params.{name}"
    return None


class Paginator:
    """Base class; subclasses set ``type`` and override the three methods."""

    type: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config

    def initial_state(self) -> State:
        return {}

    def prepare(self, state: State, url: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return url, params

    def advance(self, state: State, response: requests.Response, body: Any, records: list[Any]) -> State | None:
        return None

    def page_size(self, params: dict[str, Any]) -> tuple[int, str] | None:
        """The number of records on a full page and where it comes from, when known.

        The paginator's ``page_size`` if it has one, else the first of ``PAGE_SIZE_PARAMS`` in the
        spec's ``params`` that holds a whole number.
        """
        size = getattr(self.config, "page_size", None)
        return (size, "paginator.page_size") if size else _size_in(params, rs.PAGE_SIZE_PARAMS)

    def missing_way_forward(self, response: requests.Response, body: Any) -> str | None:
        """After ``advance`` returned ``None``: ``None`` if the API stated the end, else what was missing."""
        return f"paginator {self.type!r} never asks for a next page"

    def _number(self, body: Any, path: str | None) -> int | None:
        if path is None:
            return None
        value = select(body, path)
        if value is MISSING or value is None:
            raise SourceError(f"paginator {self.type!r}: {path!r} not found in the response body")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise SourceError(f"paginator {self.type!r}: {path!r} is {value!r}, expected a number") from exc


class SinglePagePaginator(Paginator):
    """One request; its response is the only page."""

    type = "single_page"


class OffsetPaginator(Paginator):
    """``offset``/``limit`` parameters; the next offset is this offset plus the records received.

    Stops on an empty page, when ``total_path`` says all records were seen, or (``stop_on_short_page``)
    on a page shorter than ``limit``. By default a short page is not trusted as the end, since many
    APIs cap the page size silently; that costs one request for an empty page per window.
    """

    type = "offset"
    config: rs.OffsetPaginatorSpec

    def initial_state(self) -> State:
        return {"offset": 0}

    def page_size(self, params):
        return self.config.limit, "paginator.limit"

    def missing_way_forward(self, response, body):
        return None  # it ends on a full page only when total_path says every record was read

    def prepare(self, state, url, params):
        return url, {**params, self.config.offset_param: state["offset"], self.config.limit_param: self.config.limit}

    def advance(self, state, response, body, records):
        if not records:
            return None
        offset = state["offset"] + len(records)
        total = self._number(body, self.config.total_path)
        if total is not None and offset >= total:
            return None
        if self.config.stop_on_short_page and len(records) < self.config.limit:
            return None
        return {"offset": offset}


class PageNumberPaginator(Paginator):
    """``page=1, 2, ...``; stops on an empty page, after ``total_pages_path`` pages, or on a short page."""

    type = "page_number"
    config: rs.PageNumberPaginatorSpec

    def initial_state(self) -> State:
        return {"page": self.config.start_page}

    def page_size(self, params):
        if self.config.page_size:
            return self.config.page_size, "paginator.page_size"
        return _size_in(params, (self.config.page_size_param, *rs.PAGE_SIZE_PARAMS))

    def missing_way_forward(self, response, body):
        return None  # it ends on a full page only when total_pages_path says it was the last

    def prepare(self, state, url, params):
        params = {**params, self.config.page_param: state["page"]}
        if self.config.page_size:
            params[self.config.page_size_param] = self.config.page_size
        return url, params

    def advance(self, state, response, body, records):
        if not records:
            return None
        total_pages = self._number(body, self.config.total_pages_path)
        if total_pages is not None and state["page"] - self.config.start_page + 1 >= total_pages:
            return None
        if self.config.stop_on_short_page and self.config.page_size and len(records) < self.config.page_size:
            return None
        return {"page": state["page"] + 1}


class BodyCursorPaginator(Paginator):
    """Stripe style: the next request carries ``starting_after=<last record's id>`` while ``has_more`` is true.

    With ``cursor_path`` the cursor comes from the body (``meta.next_cursor``) instead of the last record.
    """

    type = "cursor"
    config: rs.BodyCursorPaginatorSpec

    def initial_state(self) -> State:
        return {"cursor": None}

    def missing_way_forward(self, response, body):
        cfg = self.config
        if cfg.has_more_path is not None:
            return None  # has_more was false
        if cfg.cursor_path is not None and select(body, cfg.cursor_path) is not MISSING:
            return None  # the cursor is there and explicitly empty
        return f"no {cfg.cursor_path!r} in the body and no has_more_path to say whether more pages follow"

    def prepare(self, state, url, params):
        if state["cursor"] is None:
            return url, params
        return url, {**params, self.config.cursor_param: state["cursor"]}

    def advance(self, state, response, body, records):
        cfg = self.config
        if cfg.has_more_path is not None:
            has_more = select(body, cfg.has_more_path)
            if has_more is MISSING:
                raise SourceError(
                    f"paginator 'cursor': {cfg.has_more_path!r} not found in the response body (set "
                    "paginator.has_more_path to where the API says whether more pages follow, or null)"
                )
            if not has_more:
                return None
        if cfg.cursor_path is not None:
            cursor = select(body, cfg.cursor_path, None)
        elif records:
            last = records[-1]
            cursor = last.get(cfg.cursor_field) if isinstance(last, dict) else None
            if cursor is None:
                raise SourceError(f"paginator 'cursor': the last record of the page has no {cfg.cursor_field!r} "
                                  "field to continue from")
        else:
            cursor = None
        if cursor is None or cursor == "":
            if cfg.has_more_path is not None:
                raise SourceError(f"paginator 'cursor': the API says more pages follow ({cfg.has_more_path} is "
                                  "true) but gave no cursor to fetch them")
            return None
        if not records and cfg.has_more_path is None:
            return None
        return {"cursor": cursor}


class NextUrlPaginator(Paginator):
    """The body holds the next page's URL at ``next_url_path`` (relative URLs are resolved); null ends."""

    type = "next_url"
    config: rs.NextUrlPaginatorSpec

    def initial_state(self) -> State:
        return {"url": None}

    def prepare(self, state, url, params):
        # The next URL already carries every query parameter the API wants.
        return (state["url"], {}) if state["url"] else (url, params)

    def missing_way_forward(self, response, body):
        if select(body, self.config.next_url_path) is not MISSING:
            return None  # the API sent the field, explicitly empty: the last page
        keys = sorted(body)[:10] if isinstance(body, dict) else type(body).__name__
        return f"no {self.config.next_url_path!r} in the body (top-level keys: {keys})"

    def advance(self, state, response, body, records):
        nxt = select(body, self.config.next_url_path, None)
        if not nxt:
            return None
        if not isinstance(nxt, str):
            raise SourceError(f"paginator 'next_url': {self.config.next_url_path!r} is {type(nxt).__name__}, "
                              "expected a URL")
        return {"url": urljoin(response.url, nxt)}


class LinkHeaderPaginator(Paginator):
    """RFC 8288 ``Link`` header (parsed by ``requests``): follows ``rel="next"`` until there is none."""

    type = "link_header"
    config: rs.LinkHeaderPaginatorSpec

    def initial_state(self) -> State:
        return {"url": None}

    def prepare(self, state, url, params):
        return (state["url"], {}) if state["url"] else (url, params)

    def advance(self, state, response, body, records):
        nxt = (response.links.get(self.config.rel) or {}).get("url")
        return {"url": urljoin(response.url, nxt)} if nxt else None

    def missing_way_forward(self, response, body):
        if response.links:
            return None  # a Link header with other relations (first, prev) and no next: the last page
        return f"the response has no Link header (expected one with rel={self.config.rel!r})"


PAGINATORS: dict[str, type[Paginator]] = {
    cls.type: cls
    for cls in (OffsetPaginator, PageNumberPaginator, BodyCursorPaginator, NextUrlPaginator, LinkHeaderPaginator,
                SinglePagePaginator)
}


def paginator_for(config: Any) -> Paginator:
    """The paginator of a spec's ``paginator:`` (already validated, so its ``type`` is known)."""
    return PAGINATORS[config.type](config)
