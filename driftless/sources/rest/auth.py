"""Auth strategies: ``requests``-compatible callables built from a connection's fields.

The spec names the kind of auth and its non-secret options (``auth:``); the secret values come from
the connection only. Every auth object lists its secrets in ``secrets`` so the request loop can mask
them in every message it builds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from driftless.errors import SourceError
from driftless.sources.rest.reliability import TransientError, parse_retry_after
from driftless.sources.rest.spec import AuthSpec


class NoAuth(AuthBase):
    """No credentials."""

    secrets: tuple[str, ...] = ()

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class BearerAuth(AuthBase):
    """``Authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.secrets = (token,)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


class ApiKeyAuth(AuthBase):
    """An API key in a header (``location="header"``) or a query parameter (``location="query"``) named ``name``."""

    def __init__(self, key: str, name: str = "X-API-Key", location: str = "header") -> None:
        self.key, self.name, self.location = key, name, location
        self.secrets = (key,)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.location == "query":
            r.prepare_url(r.url or "", {self.name: self.key})
        else:
            r.headers[self.name] = self.key
        return r


class BasicAuth(HTTPBasicAuth):
    """HTTP basic auth (RFC 7617) with the connection's login and password."""

    def __init__(self, username: str, password: str) -> None:
        super().__init__(username, password)
        self.secrets = (password,)


class OAuth2ClientCredentials(AuthBase):
    """OAuth2 client-credentials grant (RFC 6749 section 4.4).

    The token is fetched on first use and cached until ``expires_in`` (minus ``skew`` seconds) has
    passed; ``refresh()`` drops it, which the request loop calls once when a request gets a 401.
    """

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None,
                 client_auth: str = "basic", timeout: tuple[float, float] = (10.0, 30.0), skew: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.token_url, self.client_id, self.client_secret = token_url, client_id, client_secret
        self.scope, self.client_auth, self.timeout, self.skew = scope, client_auth, timeout, skew
        self.session = session or requests.Session()
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.token_requests = 0
        self._secrets: list[str] = [client_secret]

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    def refresh(self) -> None:
        with self._lock:
            self._token, self._expires_at = None, 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._token, lifetime = self._fetch()
                self._secrets.append(self._token)
                self._expires_at = time.monotonic() + max(0.0, lifetime - self.skew)
            return self._token

    def _fetch(self) -> tuple[str, float]:
        data: dict[str, Any] = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        auth = None
        if self.client_auth == "basic":
            auth = HTTPBasicAuth(self.client_id, self.client_secret)
        else:
            data.update(client_id=self.client_id, client_secret=self.client_secret)
        self.token_requests += 1
        try:
            # Redirects are not followed: a 307/308 would re-send the client secret to wherever it points.
            resp = self.session.post(self.token_url, data=data, auth=auth, timeout=self.timeout,
                                     headers={"Accept": "application/json"}, allow_redirects=False)
        except requests.RequestException as exc:
            # not chained: the cause's text may hold credentials (only its type is shown)
            raise TransientError(f"POST {self.token_url} (OAuth2 token) failed: {type(exc).__name__}") from None
        if resp.is_redirect:
            raise SourceError(f"POST {self.token_url} (OAuth2 token) -> HTTP {resp.status_code}: redirected to "
                              f"{resp.headers.get('Location')!r}; token requests do not follow redirects (they "
                              "would carry the client secret): set token_url to the token endpoint's final URL")
        if resp.status_code == 429 or resp.status_code >= 500:  # retried like any page request
            raise TransientError(f"POST {self.token_url} (OAuth2 token) failed: HTTP {resp.status_code} "
                                 f"{resp.reason}: {resp.text[:200]!r}",
                                 retry_after=parse_retry_after(resp.headers.get("Retry-After")))
        if resp.status_code != 200:
            raise SourceError(f"POST {self.token_url} (OAuth2 token) failed: HTTP {resp.status_code} "
                              f"{resp.reason}: {resp.text[:200]!r}")
        try:
            body = resp.json()
            token = body["access_token"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"POST {self.token_url} (OAuth2 token): the response has no access_token") from exc
        try:
            lifetime = float(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = 3600.0
        return str(token), lifetime

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token()}"
        return r


def _need(conn_id: str, kind: str, **values: Any) -> None:
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise SourceError(f"connection {conn_id!r}: auth {kind!r} needs {' and '.join(missing)} in the connection "
                          "(credentials are never read from the spec)")


def infer_auth_type(fields: dict[str, Any]) -> str:
    """The auth type when the spec has no ``auth:``: from what the connection holds."""
    extra = fields.get("extra") or {}
    if extra.get("token"):
        return "bearer"
    if extra.get("api_key"):
        return "api_key"
    if extra.get("client_id") and extra.get("token_url"):
        return "oauth2_client_credentials"
    if fields.get("login") and fields.get("password"):
        return "basic"
    if fields.get("password"):
        return "bearer"
    return "none"


def auth_from_connection(conn_id: str, spec: AuthSpec | None, fields: dict[str, Any],
                         timeout: tuple[float, float] = (10.0, 30.0)) -> AuthBase:
    """Build the auth strategy named by the spec (or inferred) from the connection's secret fields."""
    extra = fields.get("extra") or {}
    kind = spec.type if spec else infer_auth_type(fields)
    spec = spec or AuthSpec.model_validate({"type": kind})
    if kind == "none":
        return NoAuth()
    if kind == "bearer":
        token = extra.get("token") or fields.get("password")
        _need(conn_id, kind, **{"extra.token or password": token})
        return BearerAuth(str(token))
    if kind == "api_key":
        key = extra.get("api_key") or fields.get("password")
        _need(conn_id, kind, **{"extra.api_key or password": key})
        return ApiKeyAuth(str(key), name=extra.get("api_key_name") or spec.name, location=spec.location)
    if kind == "basic":
        _need(conn_id, kind, login=fields.get("login"), password=fields.get("password"))
        return BasicAuth(str(fields["login"]), str(fields["password"]))
    client_id = extra.get("client_id") or fields.get("login")
    secret = extra.get("client_secret") or fields.get("password")
    token_url = extra.get("token_url") or spec.token_url
    _need(conn_id, kind, **{"extra.client_id or login": client_id, "extra.client_secret or password": secret,
                            "token_url (spec auth.token_url or extra.token_url)": token_url})
    return OAuth2ClientCredentials(str(token_url), str(client_id), str(secret), scope=extra.get("scope") or spec.scope,
                                   client_auth=spec.client_auth, timeout=timeout)
