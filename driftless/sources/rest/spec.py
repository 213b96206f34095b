"""The ``source:`` block of a REST pipeline spec (``type: rest``), typed and validated on load.

Everything here is data: which endpoint, how to page through it, how hard to push the provider and
when to give up. Credentials are never part of a spec; they come from the connection
(``AIRFLOW_CONN_<ID>`` or an Airflow Connection), see ``driftless.sources.rest.auth``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from driftless.sources.base import check_identifier, check_identifiers, one_or_more, render_params
from driftless.sources.rest.jsonpath import parse_path
from driftless.window import NULL_CURSOR_HELP, NullCursor


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- paginators: one config model per ``type``; a bare string is shorthand for ``{type: <string>}`` ----

# The page-size guard: a page as full as the page size with no way to the next page is an error, since
# it is what a misconfigured paginator looks like (it would otherwise load one page and report success).
PAGE_SIZE_PARAMS = ("limit", "per_page", "page_size", "pageSize", "perPage")
PAGE_SIZE_HELP = ("records on a full page; default: the value of the limit, per_page, page_size, pageSize or "
                  "perPage query parameter in params. A page this full with no way to the next page fails the window")
END_ON_FULL_PAGE_HELP = ("true: a full page without a way to the next one is taken as the last (the page-size "
                         "guard is off; prefer source.total when the API announces a count)")

class OffsetPaginatorSpec(_Strict):
    """``?offset=0&limit=100``, then ``offset=100`` ...; stops on a short page or when ``total`` is reached."""

    type: Literal["offset"]
    limit: int = Field(100, gt=0, description="records per page, sent as the limit parameter")
    offset_param: str = "offset"
    limit_param: str = "limit"
    total_path: str | None = Field(None, description="JSON path of the total record count, when the API has one")
    stop_on_short_page: bool = Field(False, description="a page with fewer than limit records is the last")


class PageNumberPaginatorSpec(_Strict):
    """``?page=1``, ``page=2`` ...; stops on an empty (or short) page or after ``total_pages``."""

    type: Literal["page_number"]
    page_param: str = "page"
    start_page: int = Field(1, ge=0)
    page_size: int | None = Field(None, gt=0, description="sent as page_size_param; a shorter page is the last")
    page_size_param: str = "per_page"
    total_pages_path: str | None = Field(None, description="JSON path of the number of pages, when the API has one")
    stop_on_short_page: bool = Field(False, description="a page with fewer than page_size records is the last")


class BodyCursorPaginatorSpec(_Strict):
    """Stripe style: ``starting_after=<id of the last record>`` until ``has_more`` is false.

    With ``cursor_path`` the next cursor is read from the body instead (``meta.next_cursor``).
    """

    type: Literal["cursor"]
    cursor_param: str = "starting_after"
    cursor_field: str = Field("id", description="field of the last record whose value is the next cursor")
    cursor_path: str | None = Field(None, description="JSON path of the next cursor in the body (instead of "
                                    "cursor_field)")
    has_more_path: str | None = Field("has_more", description="JSON path of the 'more pages' flag; null: stop "
                                      "only when no cursor is returned or the page is empty")
    page_size: int | None = Field(None, gt=0, description=PAGE_SIZE_HELP)
    end_on_full_page: bool = Field(False, description=END_ON_FULL_PAGE_HELP)


class NextUrlPaginatorSpec(_Strict):
    """The body holds the full URL of the next page (``next_url_path``); stops when it is null or absent."""

    type: Literal["next_url"]
    next_url_path: str = "next"
    page_size: int | None = Field(None, gt=0, description=PAGE_SIZE_HELP)
    end_on_full_page: bool = Field(False, description=END_ON_FULL_PAGE_HELP)


class LinkHeaderPaginatorSpec(_Strict):
    """RFC 8288 ``Link: <https://...>; rel="next"`` (GitHub style); stops when there is no ``next`` link."""

    type: Literal["link_header"]
    rel: str = "next"
    page_size: int | None = Field(None, gt=0, description=PAGE_SIZE_HELP)
    end_on_full_page: bool = Field(False, description=END_ON_FULL_PAGE_HELP)


class SinglePagePaginatorSpec(_Strict):
    """One request, one page."""

    type: Literal["single_page"]
    page_size: int | None = Field(None, gt=0, description=PAGE_SIZE_HELP)
    end_on_full_page: bool = Field(False, description=END_ON_FULL_PAGE_HELP)


PaginatorSpec = Annotated[
    OffsetPaginatorSpec | PageNumberPaginatorSpec | BodyCursorPaginatorSpec | NextUrlPaginatorSpec
    | LinkHeaderPaginatorSpec | SinglePagePaginatorSpec,
    Field(discriminator="type"),
]


# ---- auth: the type and its non-secret options; the secret values come from the connection ----

class AuthSpec(_Strict):
    """How requests authenticate. Secrets (token, key, password, client secret) live in the connection.

    * ``bearer``: ``Authorization: Bearer <token>``; token = connection extra ``token`` or password.
    * ``api_key``: the key (extra ``api_key`` or password) in header or query parameter ``name``.
    * ``basic``: HTTP basic with the connection's login and password.
    * ``oauth2_client_credentials``: client id/secret (extra ``client_id``/``client_secret`` or login/password)
      exchanged at ``token_url`` (spec or extra) for a token, cached until it expires, refreshed once on 401.
    * ``none``: no authentication. Without an ``auth`` block the type is inferred from the connection.
    """

    type: Literal["bearer", "api_key", "basic", "oauth2_client_credentials", "none"]
    name: str = Field("X-API-Key", description="api_key: header or query parameter name")
    location: Literal["header", "query"] = Field("header", description="api_key: where the key goes")
    token_url: str | None = Field(None, description="oauth2: the token endpoint (or extra token_url)")
    scope: str | None = Field(None, description="oauth2: requested scope")
    client_auth: Literal["basic", "body"] = Field("basic", description="oauth2: how the client id/secret are sent")


class TotalSpec(_Strict):
    """Where the API announces how many records the window's query matches: a ``header`` or a body ``path``.

    The records received over all pages of the window (before client-side filtering and de-duplication)
    must equal the total announced by the last response that carries it; otherwise the window fails.
    """

    header: str | None = Field(None, description="response header holding the count, e.g. X-Total-Count")
    path: str | None = Field(None, description="JSON path of the count in the body, e.g. meta.total")

    @model_validator(mode="after")
    def _one(self) -> TotalSpec:
        if (self.header is None) == (self.path is None):
            raise ValueError("set exactly one of header (e.g. X-Total-Count) or path (e.g. meta.total)")
        if self.path is not None:
            parse_path(self.path)
        return self

    def describe(self) -> str:
        return f"header {self.header}" if self.header is not None else f"body path {self.path!r}"


class RateLimitSpec(_Strict):
    """Stay under the provider's limit: at most ``requests_per_second`` sustained, ``burst`` at once."""

    requests_per_second: float = Field(gt=0)
    burst: int = Field(1, ge=1)


class TimeoutsSpec(_Strict):
    """Seconds to wait for a connection and for each read of the response."""

    connect: float = Field(10.0, gt=0)
    read: float = Field(60.0, gt=0)


class RetriesSpec(_Strict):
    """Retries of connection errors, timeouts, 5xx and 429: exponential backoff with full jitter.

    A wait is random in ``[0, min(max_backoff, backoff * 2**attempt)]``; a ``Retry-After`` header
    (seconds or an HTTP date) is honoured instead, up to ``max_retry_after`` seconds.
    """

    max_attempts: int = Field(5, ge=1, description="attempts per request, the first included")
    backoff: float = Field(0.5, ge=0, description="seconds; the scale of the exponential backoff")
    max_backoff: float = Field(30.0, ge=0)
    max_retry_after: float = Field(120.0, ge=0, description="cap on a server's Retry-After, seconds")


class BreakerSpec(_Strict):
    """Per host: after ``failures`` consecutive failed requests fail fast for ``cooldown``, then probe once."""

    failures: int = Field(5, ge=1)
    cooldown: float = Field(60.0, gt=0, description="seconds before one probe request is let through")


class RestSourceSpec(_Strict):
    """An HTTP JSON API endpoint read page by page for each window.

    ``params`` values may hold ``{start}`` / ``{end}`` (ISO-8601) or ``{start_epoch}`` / ``{end_epoch}``
    (epoch seconds): the window bounds are filled in for every request of the window.
    """

    type: Literal["rest"]
    connection: str = Field(description="connection id of the API: base URL and credentials")
    endpoint: str = Field(description="path relative to the connection's base URL (or an absolute URL)")
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str | int | float | bool] = Field(default_factory=dict,
                                                        description="query parameters; {start}/{end} templated")
    headers: dict[str, str] = Field(default_factory=dict, description="extra non-secret request headers")
    records: str = Field("$", description="JSON path of the list of records in a page ('$' = the body itself)")
    paginator: PaginatorSpec = Field(default_factory=lambda: SinglePagePaginatorSpec(type="single_page"))
    auth: AuthSpec | None = None
    total: TotalSpec | None = Field(None, description="where the API announces the window's record count; "
                                    "the records read must equal it")
    primary_key: list[str] = Field(min_length=1)
    cursor: str = Field(description="column whose value places a record in a window")
    lag: timedelta = Field(timedelta(0), description="widen the window start by this much")
    filter_by_cursor: bool = Field(
        False, description="drop records whose cursor lies outside the window (for APIs that cannot filter)"
    )
    null_cursor: NullCursor = Field("fail", description="records whose cursor is null or missing: " + NULL_CURSOR_HELP)
    rate_limit: RateLimitSpec | None = None
    timeouts: TimeoutsSpec = Field(default_factory=TimeoutsSpec)
    retries: RetriesSpec = Field(default_factory=RetriesSpec)
    breaker: BreakerSpec = Field(default_factory=BreakerSpec)
    max_pages: int = Field(10_000, gt=0, description="more pages than this in one window is an error")
    max_records: int = Field(10_000_000, gt=0, description="more records than this in one window is an error")
    deadline: timedelta = Field(timedelta(hours=1), description="the whole window must be read within this")

    @property
    def label(self) -> str:
        """What the source reads, in a few words (the DAG's documentation)."""
        return self.endpoint

    @field_validator("paginator", mode="before")
    @classmethod
    def _paginator_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("total", mode="before")
    @classmethod
    def _total_shorthand(cls, value: Any) -> Any:
        return {"header": value} if isinstance(value, str) else value

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    _pk_list = field_validator("primary_key", mode="before")(one_or_more)

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        render_params(value, None)  # raises on unknown placeholders
        return value

    @field_validator("lag", "deadline")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    _ids = field_validator("connection", "cursor")(check_identifier)

    _pk = field_validator("primary_key")(check_identifiers)

    @field_validator("records")
    @classmethod
    def _records(cls, value: str) -> str:
        parse_path(value)
        return value

    @property
    def table(self) -> None:
        """REST sources have no table (for code that describes a SQL source by its table)."""
        return None
