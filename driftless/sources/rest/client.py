"""The one request loop of the REST source: everything else plugs into it as a strategy.

``RestClient.pages(window)`` yields one ``Page`` per response. Per request it: checks the window's
deadline, takes a token from the rate limiter, goes through the host's circuit breaker, sends with
connect/read timeouts and the auth callable, refreshes an OAuth2 token once on 401, retries
transient failures (connection errors, timeouts, 5xx, 429) with full-jitter backoff or the server's
``Retry-After``, and fails on anything else with a message naming the method, the URL (secrets
redacted), the status and an excerpt of the body. The paginator decides the next request; a state
seen twice is an error.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import pybreaker
import requests
import tenacity

from driftless.errors import SourceError
from driftless.logs import event
from driftless.redact import Redactor
from driftless.sources.base import render_params
from driftless.sources.rest.auth import auth_from_connection
from driftless.sources.rest.jsonpath import MISSING, select
from driftless.sources.rest.paginators import State, paginator_for
from driftless.sources.rest.reliability import (
    BreakerOpen,
    DeadlineExceeded,
    Metrics,
    TokenBucket,
    TransientError,
    breaker_for,
    parse_retry_after,
)
from driftless.sources.rest.spec import RestSourceSpec
from driftless.window import Window

log = logging.getLogger(__name__)

EXCERPT = 300


def base_url(fields: dict[str, Any]) -> str:
    """The API's base URL from a connection: ``https://host:port/path``.

    ``host`` may be a full URL. Otherwise the scheme is the URI scheme / ``conn_type`` when it is
    http(s) (``AIRFLOW_CONN_API=https://...``), or ``schema`` when that is http(s) (Airflow's HTTP
    connection convention), else https; a ``schema`` that is not a scheme is the base path.
    """
    host = str(fields.get("host") or "")
    schema = str(fields.get("schema") or "")
    if "://" in host:
        return host.rstrip("/") + "/" + (schema.strip("/") + "/" if schema and schema not in ("http", "https") else "")
    conn_type = str(fields.get("conn_type") or "").lower()
    if schema in ("http", "https"):
        scheme, path = schema, ""
    else:
        scheme, path = (conn_type if conn_type in ("http", "https") else "https"), schema
    port = f":{fields['port']}" if fields.get("port") else ""
    return f"{scheme}://{host}{port}/" + (path.strip("/") + "/" if path.strip("/") else "")


def origin_of(url: str) -> tuple[str, str, int | None]:
    """A URL's origin: scheme, host and port (the scheme's default port when none is written)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


class RedirectGuard(requests.Session):
    """A ``requests.Session`` whose redirects keep credentials on one origin and never go from HTTPS to HTTP.

    On a redirect to another origin (scheme, host or port) every credential the auth added is removed:
    ``credential_headers`` (``Authorization`` and an API-key header) and ``credential_params`` (a query
    API key the server may echo into the ``Location``). Once removed they stay removed for the rest of
    the redirect chain. A redirect from ``https`` to ``http`` raises ``SourceError``.

    Why an override of ``rebuild_auth`` and not a redirect loop of our own: requests already follows
    redirects correctly (relative and scheme-less ``Location``, 301/302/303 method rewrite, body and
    cookie handling, the ``max_redirects`` hop limit); only its decision of which credentials the next
    hop keeps is wrong for us (it strips ``Authorization`` alone, and only on a host change).
    ``rebuild_auth`` is requests' per-hop hook for exactly that decision, so this is the least code.
    """

    def __init__(self) -> None:
        super().__init__()
        self.credential_headers: set[str] = {"Authorization"}
        self.credential_params: set[str] = set()
        self.show_url: Callable[[str], str] = lambda url: url  # the client's redactor

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        # No super(): besides stripping Authorization it would add ~/.netrc credentials for the new host;
        # a pipeline sends its connection's credentials to its API's origin and nothing else anywhere.
        old, new = response.request.url or "", prepared_request.url or ""
        if urlsplit(old).scheme.lower() == "https" and urlsplit(new).scheme.lower() != "https":
            raise SourceError(f"{response.request.method} {self.show_url(old)} -> HTTP {response.status_code}: "
                              f"redirected to {self.show_url(new)}; refusing to downgrade HTTPS to plain HTTP")
        if origin_of(old) == origin_of(new):
            return
        for name in self.credential_headers:
            prepared_request.headers.pop(name, None)
        if self.credential_params:
            parts = urlsplit(new)
            query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                     if k not in self.credential_params]
            prepared_request.url = urlunsplit((*parts[:3], urlencode(query), parts.fragment))


@dataclass
class Page:
    """One response of the loop: its records, the state that fetched it, its number, the next page's state."""

    records: list[Any]
    state: State
    number: int
    response: requests.Response
    next_state: State | None = None
    received_before: int = 0  # records received in the window on the pages before this one
    total: int | None = None  # the latest total the API announced (``source.total``), up to this page


class RestClient:
    """Pages of one endpoint for one window, with auth, rate limit, retries, breaker and deadline.

    Args:
        spec: the ``source:`` block of the pipeline.
        fields: the connection's fields (``driftless.connections.connection_fields``); hold the secrets.
        session: a ``RedirectGuard`` session to reuse (connection pooling); one is made when omitted.
    """

    def __init__(self, spec: RestSourceSpec, fields: dict[str, Any], session: requests.Session | None = None) -> None:
        self.spec = spec
        if session is not None and not isinstance(session, RedirectGuard):
            raise TypeError("RestClient needs a driftless.sources.rest.client.RedirectGuard session: a plain "
                            "requests.Session sends API-key headers along redirects to other hosts")
        self.session: RedirectGuard = session or RedirectGuard()
        self.session.headers.update({"Accept": "application/json", **spec.headers})
        self.timeout = (spec.timeouts.connect, spec.timeouts.read)
        self.auth = auth_from_connection(spec.connection, spec.auth, fields, self.timeout)
        self.redact = Redactor(self.auth)
        self.session.show_url = self.redact.url
        key_name = getattr(self.auth, "name", None)
        if key_name and getattr(self.auth, "location", None) == "query":
            self.session.credential_params.add(key_name)
        elif key_name:
            self.session.credential_headers.add(key_name)
        self.base = base_url(fields)
        self.url = spec.endpoint if "://" in spec.endpoint else urljoin(self.base, spec.endpoint.lstrip("/"))
        origin = urlsplit(self.url)
        self.origin = f"{origin.scheme}://{origin.netloc.rpartition('@')[2]}"
        self.paginator = paginator_for(spec.paginator)
        self.limiter = TokenBucket(spec.rate_limit.requests_per_second, spec.rate_limit.burst) \
            if spec.rate_limit else None
        self.breaker = breaker_for(self.origin, spec.breaker.failures, spec.breaker.cooldown)
        self.metrics = Metrics()
        self.deadline_at = time.monotonic() + spec.deadline.total_seconds()
        self._last_failure = ""

    # ---- the loop ----

    def pages(self, window: Window, start: State | None = None, first_number: int = 1, received: int = 0,
              total: int | None = None) -> Iterator[Page]:
        """Every page of the window, first to last (or from ``start``, a checkpointed state).

        A resumed read passes the records ``received`` on the pages before ``start`` and the ``total``
        announced so far, so the end-of-window checks (``_check_end``) count the whole window.
        """
        params = render_params(self.spec.params, window.widened(self.spec.lag))
        state: State | None = start if start is not None else self.paginator.initial_state()
        seen: set[str] = set()
        number = first_number - 1
        self.metrics.total = total
        while state is not None:
            fingerprint = json.dumps(state, sort_keys=True, default=str)
            if fingerprint in seen:
                raise SourceError(self.redact.text(
                    f"{self.spec.method} {self.redact.url(self.url)}: the API sent the same pagination state "
                    f"twice ({fingerprint}) after page {number}; stopping instead of looping forever"))
            seen.add(fingerprint)
            if number >= self.spec.max_pages:
                raise SourceError(
                    f"{self.spec.method} {self.redact.url(self.url)}: more than max_pages={self.spec.max_pages} pages "
                    f"in window {window.key}; raise source.max_pages if this is expected")
            url, page_params = self.paginator.prepare(state, self.url, params)
            if not url.startswith(self.origin + "/") and url != self.origin:
                raise SourceError(self.redact.text(
                    f"the next page's URL {self.redact.url(url)} is not on {self.origin}; refusing to send "
                    "credentials to another host"))
            response = self.request(url, page_params)
            body = self._json(response)
            records = select(body, self.spec.records)
            if records is MISSING or records is None:
                records = [] if records is None else self._no_records(response, body)
            if not isinstance(records, list):
                raise SourceError(self._describe(response, f"records path {self.spec.records!r} holds "
                                                           f"{type(records).__name__}, expected a list"))
            number += 1
            self.metrics.pages += 1
            self.metrics.records += len(records)
            if self.metrics.records > self.spec.max_records:
                raise SourceError(f"{self.spec.method} {self.redact.url(self.url)}: more than "
                                  f"max_records={self.spec.max_records} records in window {window.key}; raise "
                                  "source.max_records if this is expected")
            event(log, "page", url=self.redact.url(response.url), page=number, records=len(records))
            try:
                next_state = self._scrub(self.paginator.advance(state, response, body, records))
            except SourceError as exc:
                # not chained: the cause's text holds credentials (it is redacted into this message)
                raise SourceError(self._describe(response, str(exc))) from None
            if self.spec.total is not None:
                self.metrics.total = self._announced_total(response, body, self.metrics.total)
            if next_state is None:  # before the last page is yielded: a failed check stages nothing as done
                self._check_end(window, number, records, received + len(records), response, body, params)
            yield Page(records, state, number, response, next_state, received, self.metrics.total)
            received += len(records)
            state = next_state

    def _announced_total(self, response: requests.Response, body: Any, previous: int | None) -> int | None:
        """The total this response announces (``source.total``), or ``previous`` when it has none."""
        spec = self.spec.total
        assert spec is not None
        value: Any = response.headers.get(spec.header) if spec.header is not None else select(body, spec.path or "$")
        if value is None or value is MISSING:
            return previous
        try:
            number = int(str(value).strip())
        except ValueError as exc:
            raise SourceError(self._describe(response, f"source.total: {spec.describe()} is {value!r}, expected a "
                                                       "whole number of records")) from exc
        if number < 0:
            raise SourceError(self._describe(response, f"source.total: {spec.describe()} is {number}, expected a "
                                                       "count of records"))
        return number

    def _check_end(self, window: Window, number: int, records: list[Any], received: int,
                   response: requests.Response, body: Any, params: dict[str, Any]) -> None:
        """The window's last page: the records must match the announced total, and a full page must be the end.

        With ``source.total`` the API's count decides. Without it, a page as full as the page size from
        which the paginator found no way forward, and where the API did not say it was the last, is what
        a misconfigured paginator looks like (one page loaded, success reported): the window fails.
        """
        where = f"{self.spec.method} {self.redact.url(self.url)}"
        total_spec = self.spec.total
        if total_spec is not None:
            total = self.metrics.total
            if total is None:
                raise SourceError(self._describe(response, f"source.total: no response of window {window.key} had "
                                                           f"{total_spec.describe()}; fix source.total or remove it"))
            if received != total:
                raise SourceError(
                    f"{where}: read {received} records in window {window.key} over {number} page(s), but the API "
                    f"announced a total of {total} ({total_spec.describe()}); the pagination stopped "
                    + ("early" if received < total else "late (records repeated across pages)")
                    + " or the data changed while paging. Check source.paginator, then re-run the window")
            return
        size = self.paginator.page_size(params)
        if size is None or len(records) < size[0] or getattr(self.spec.paginator, "end_on_full_page", False):
            return
        missing = self.paginator.missing_way_forward(response, body)
        if missing is None:
            return
        raise SourceError(self.redact.text(
            f"{where}: page {number} of window {window.key} is full ({len(records)} records, page size {size[0]} "
            f"from {size[1]}), but paginator {self.paginator.type!r} found no way to a next page: "
            f"{missing}. Stopping here could silently drop records. Fix the spec: set source.paginator to the "
            "pagination this API really uses (offset, page_number, cursor, next_url or link_header), or set "
            "source.total (e.g. {header: X-Total-Count} or {path: meta.total}) so the API's count proves the end, "
            "or, if this API can end on a full page without saying so, set source.paginator.end_on_full_page: true"))

    def _scrub(self, state: State | None) -> State | None:
        """Drop a query-parameter API key that an API echoed into its next-page URL.

        States are checkpointed to disk and named in errors; the auth adds the key to every request anyway.
        """
        name = getattr(self.auth, "name", None) if getattr(self.auth, "location", None) == "query" else None
        if state is None or name is None or not isinstance(state.get("url"), str):
            return state
        parts = urlsplit(state["url"])
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
        return {**state, "url": urlunsplit((*parts[:3], urlencode(query), parts.fragment))}

    def _no_records(self, response: requests.Response, body: Any) -> list[Any]:
        keys = sorted(body)[:10] if isinstance(body, dict) else type(body).__name__
        raise SourceError(self._describe(response, f"records path {self.spec.records!r} not found in the body "
                                                   f"(top-level keys: {keys})"))

    def _json(self, response: requests.Response) -> Any:
        try:
            # Decimal, not float: 12345678901234567.89 or 0.1 must load exactly as the API wrote it.
            return response.json(parse_float=Decimal)
        except ValueError as exc:
            raise SourceError(self._describe(response, f"the body is not valid JSON ({exc})")) from exc

    def _describe(self, response: requests.Response, problem: str) -> str:
        excerpt = response.text[:EXCERPT] if response.content is not None else ""
        return self.redact.text(f"{response.request.method} {self.redact.url(response.url)} -> HTTP "
                                f"{response.status_code}: {problem}; body: {excerpt!r}")

    # ---- one request, with retries ----

    def request(self, url: str, params: dict[str, Any]) -> requests.Response:
        """Send one page request; retried per the spec's ``retries``; raises ``SourceError`` when it fails."""
        retries = self.spec.retries
        jitter = tenacity.wait_random_exponential(multiplier=retries.backoff, max=retries.max_backoff)

        def wait(rs: tenacity.RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome is not None else None  # type: ignore[union-attr]
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                return min(retry_after, retries.max_retry_after)
            return jitter(rs)

        out_of_time = False

        def stop(rs: tenacity.RetryCallState) -> bool:
            nonlocal out_of_time
            if rs.attempt_number >= retries.max_attempts:
                return True
            out_of_time = time.monotonic() + (rs.upcoming_sleep or 0) >= self.deadline_at
            return out_of_time

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            self.metrics.retries += 1
            self.metrics.retry_wait_s += rs.upcoming_sleep
            log.warning("retrying %s in %.2fs (attempt %d of %d): %s", self.redact.url(url), rs.upcoming_sleep,
                        rs.attempt_number + 1, retries.max_attempts, rs.outcome.exception())  # type: ignore[union-attr]

        retrying = tenacity.Retrying(stop=stop, wait=wait, retry=tenacity.retry_if_exception_type(TransientError),
                                     before_sleep=before_sleep, reraise=True)
        try:
            return retrying(self._attempt, url, params)
        except TransientError as exc:
            why = (f"the window's deadline ({self.spec.deadline}) would pass before the next attempt"
                   if out_of_time else f"{retries.max_attempts} attempt(s)")
            raise SourceError(self.redact.text(f"{exc} (gave up after {why})")) from exc

    def _attempt(self, url: str, params: dict[str, Any]) -> requests.Response:
        remaining = self.deadline_at - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{self.spec.method} {self.redact.url(url)}: the window's deadline "
                                   f"({self.spec.deadline}) passed")
        if self.limiter is not None:
            waited = self.limiter.acquire()
            if waited > 0:
                self.metrics.throttled_waits += 1
                self.metrics.throttled_wait_s += waited
        before = self.breaker.current_state
        try:
            return self.breaker.call(self._send, url, params, remaining)
        except pybreaker.CircuitBreakerError as exc:
            raise BreakerOpen(self.redact.text(
                f"{self.spec.method} {self.redact.url(url)}: circuit breaker for {self.origin} is open after "
                f"{self.spec.breaker.failures} consecutive failures (last: {self._last_failure}); failing fast, "
                f"one probe request is let through {self.spec.breaker.cooldown:g}s after it opened")) from exc
        finally:
            if before != "open" and self.breaker.current_state == "open":
                self.metrics.breaker_trips += 1

    def _send(self, url: str, params: dict[str, Any], remaining: float) -> requests.Response:
        timeout = (min(self.timeout[0], remaining), min(self.timeout[1], remaining))
        refreshed = False
        while True:
            self.metrics.requests += 1
            started = time.monotonic()
            try:
                response = self.session.request(self.spec.method, url, params=params or None, auth=self.auth,
                                                timeout=timeout)
            except SourceError as exc:  # raised by an auth strategy (token endpoint)
                # not chained: the cause's text holds credentials (it is redacted into this message)
                raise SourceError(self.redact.text(str(exc))) from None
            except TransientError as exc:  # the token endpoint is down or throttling: retried
                self.metrics.token_requests = getattr(self.auth, "token_requests", 0)
                self._last_failure = self.redact.text(str(exc))
                # not chained: the cause's text holds credentials (it is redacted into this message)
                raise TransientError(self._last_failure, exc.retry_after, exc.host_failure) from None
            except requests.Timeout as exc:
                self.metrics.response(None, time.monotonic() - started, 0)
                self._last_failure = f"timeout ({type(exc).__name__}, connect {timeout[0]:g}s / read {timeout[1]:g}s)"
                # not chained: the cause's text holds credentials (it is redacted into this message)
                raise TransientError(f"{self.spec.method} {self.redact.url(url)}: {self._last_failure}") from None
            except requests.RequestException as exc:
                # Connection refused/reset, truncated body (ChunkedEncodingError), protocol errors.
                self.metrics.response(None, time.monotonic() - started, 0)
                self._last_failure = f"{type(exc).__name__}: {self._reason(exc)}"
                # not chained: the cause's text holds credentials (it is redacted into this message)
                raise TransientError(f"{self.spec.method} {self.redact.url(url)}: {self._last_failure}") from None
            self.metrics.response(response.status_code, time.monotonic() - started, len(response.content or b""))
            self.metrics.token_requests = getattr(self.auth, "token_requests", 0)
            status = response.status_code
            if status == 401 and hasattr(self.auth, "refresh") and not refreshed:
                # An expired or revoked OAuth2 token: fetch a new one and try this request once more.
                refreshed = True
                self.auth.refresh()
                continue
            if status < 400:
                return response
            description = self._describe(response, response.reason or "error")
            if status == 429 or status >= 500:
                self._last_failure = f"HTTP {status}"
                raise TransientError(description, retry_after=parse_retry_after(response.headers.get("Retry-After")),
                                     host_failure=status != 429)
            if status in (401, 403) and response.history and origin_of(response.url) != origin_of(url):
                description += (f" (the API redirected to {self.redact.url(response.url)}, another origin: no "
                                "credentials are sent there; if the API moved, point the connection at it)")
            raise SourceError(description + ("" if status != 401 else " (check the connection's credentials)"))

    def _reason(self, exc: Exception) -> str:
        # requests' messages quote the request path and query: secret values are masked before use.
        return self.redact.text(str(exc))[:300]
