"""Credentials never follow a redirect to another origin, of any auth kind; HTTPS never redirects down to HTTP.

Two real servers: the API on ``127.0.0.1:<port 1>`` (the connection's host), which answers every page
request with a redirect to ``localhost:<port 2>``, another origin that serves the records. The second
server must see no secret in any header, query parameter or body.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from driftless.errors import SourceError
from driftless.pipeline import run_window
from driftless.sources.rest.reliability import reset_breakers
from tests.rest_server import ApiServer, Reply, Request, json_reply
from tests.sources.test_rest import CANARY, EXPECTED, WINDOW, assert_nothing_committed, cursor_api, loaded, rest_spec

TOKEN = "tok-9d2e1b-oauth-access"  # the access token the API's token endpoint issues


@pytest.fixture
def servers(sqlite_url, connections) -> Iterator[tuple[ApiServer, ApiServer]]:
    """(the API, another origin): the API redirects every request but the token endpoint to the other."""
    reset_breakers()
    api, other = ApiServer().start(), ApiServer(cursor_api()).start()
    other_base = f"http://localhost:{other.httpd.server_address[1]}"

    def redirect(req: Request) -> Reply:
        if req.path == "/oauth/token":
            return json_reply({"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600})
        # The query is echoed, an API key in it included: a careless API does exactly that.
        return Reply(302, {"moved": True}, {"Location": f"{other_base}{req.path}?{urlencode(req.query)}"})
    api.handler = redirect
    connections(wh=sqlite_url)
    yield api, other
    api.stop()
    other.stop()
    reset_breakers()


def secrets_seen(server: ApiServer, secrets: list[str]) -> list[str]:
    """Every place in the server's requests that holds one of the secrets or any Authorization header."""
    found = []
    for req in server.requests:
        for name, value in req.headers.items():
            if name == "authorization" or any(s in value for s in secrets):
                found.append(f"header {name}: {value}")
        for name, value in req.query.items():
            if any(s in value for s in secrets):
                found.append(f"query {name}={value}")
        if any(s.encode() in req.body for s in secrets):
            found.append(f"body {req.body!r}")
    return found


BASIC = base64.b64encode(f"me:{CANARY}".encode()).decode()
AUTH_KINDS: dict[str, tuple[Any, dict[str, Any], Any]] = {
    # auth spec, connection fields, how the API itself received the credential
    "api_key_header": ({"type": "api_key", "name": "X-API-Key"}, {"extra": {"api_key": CANARY}},
                       lambda req: req.headers.get("x-api-key") == CANARY),
    "api_key_query": ({"type": "api_key", "name": "api_key", "location": "query"}, {"password": CANARY},
                      lambda req: req.query.get("api_key") == CANARY),
    "bearer": ("bearer", {"extra": {"token": CANARY}},
               lambda req: req.headers.get("authorization") == f"Bearer {CANARY}"),
    "basic": ("basic", {"login": "me", "password": CANARY},
              lambda req: req.headers.get("authorization") == f"Basic {BASIC}"),
    "oauth2": ({"type": "oauth2_client_credentials", "client_auth": "body"},
               {"extra": {"client_id": "driftless", "client_secret": CANARY, "token_url": "{api}/oauth/token"}},
               lambda req: req.path == "/oauth/token" or req.headers.get("authorization") == f"Bearer {TOKEN}"),
}


@pytest.mark.parametrize("kind", list(AUTH_KINDS))
def test_cross_origin_redirect_carries_no_credential(servers, connections, sqlite_url, kind):
    api, other = servers
    auth, conn, received = AUTH_KINDS[kind]
    conn = json.loads(json.dumps(conn).replace("{api}", api.url))
    connections(api=json.dumps({"conn_type": "http", "host": api.url, **conn}))
    result = run_window(rest_spec({"auth": auth}), WINDOW)
    assert loaded(sqlite_url) == EXPECTED and result.loaded == 23  # the records came from the other origin
    pages = [r for r in api.requests if r.path == "/items"]
    assert len(pages) == 5 and all(received(r) for r in pages)  # the API itself got the credential
    assert len(other.requests) == 5
    assert secrets_seen(other, [CANARY, BASIC, TOKEN]) == []


def test_same_origin_redirect_keeps_the_credential(connections, sqlite_url):
    reset_breakers()
    healthy = cursor_api()

    def handle(req: Request) -> Reply:
        if req.headers.get("x-api-key") != CANARY:
            return Reply(401, {"error": "no key"})
        if req.path == "/items":
            return Reply(301, {}, {"Location": f"/v2/items?{urlencode(req.query)}"})
        return healthy(req)
    with ApiServer(handle) as api:
        connections(api=json.dumps({"conn_type": "http", "host": api.url, "extra": {"api_key": CANARY}}),
                    wh=sqlite_url)
        run_window(rest_spec({"auth": {"type": "api_key", "name": "X-API-Key"}}), WINDOW)
    assert loaded(sqlite_url) == EXPECTED
    assert [r.path for r in api.requests].count("/v2/items") == 5


def test_credentials_are_not_restored_when_the_chain_returns(servers, connections, sqlite_url):
    """API -> other origin -> back to the API: the credential removed on the way out stays removed."""
    api, other = servers
    back = f"{api.url}/back"
    other.handler = lambda req: Reply(302, {}, {"Location": back})
    api_redirect = api.handler
    api.handler = lambda req: Reply(401, {"error": "who?"}) if req.path == "/back" else api_redirect(req)
    connections(api=json.dumps({"conn_type": "http", "host": api.url, "extra": {"api_key": CANARY}}))
    spec = rest_spec({"auth": {"type": "api_key", "name": "X-API-Key"}, "retries": {"max_attempts": 1}})
    with pytest.raises(SourceError, match="HTTP 401"):
        run_window(spec, WINDOW)
    assert [r.headers.get("x-api-key") for r in api.requests] == [CANARY, None]
    assert secrets_seen(other, [CANARY]) == []
    assert_nothing_committed(sqlite_url, spec)


def test_401_after_a_cross_origin_redirect_says_why(servers, connections, sqlite_url):
    api, other = servers
    other.handler = lambda req: Reply(401, {"error": "missing token"})
    connections(api=json.dumps({"conn_type": "http", "host": api.url, "extra": {"token": CANARY}}))
    spec = rest_spec({"auth": "bearer"})
    with pytest.raises(SourceError) as err:
        run_window(spec, WINDOW)
    port = other.httpd.server_address[1]
    assert f"-> HTTP 401: Unauthorized; body: '{{\"error\": \"missing token\"}}' (the API redirected to " \
           f"http://localhost:{port}/items?" in str(err.value)
    assert "another origin: no credentials are sent there; if the API moved, point the connection at it" \
        in str(err.value)
    assert secrets_seen(other, [CANARY]) == []
    assert_nothing_committed(sqlite_url, spec)


def test_oauth2_token_request_does_not_follow_a_redirect(servers, connections, sqlite_url):
    """A 307 keeps POST and body: following it would hand the client secret to the other origin."""
    api, other = servers
    other_token = f"http://localhost:{other.httpd.server_address[1]}/oauth/token"
    api.handler = lambda req: Reply(307, {}, {"Location": other_token})
    connections(api=json.dumps({"conn_type": "http", "host": api.url, "extra": {
        "client_id": "driftless", "client_secret": CANARY, "token_url": f"{api.url}/oauth/token"}}))
    spec = rest_spec({"auth": {"type": "oauth2_client_credentials", "client_auth": "body"}})
    with pytest.raises(SourceError, match=r"POST .*/oauth/token \(OAuth2 token\) -> HTTP 307: redirected to .*; "
                                          r"token requests do not follow redirects"):
        run_window(spec, WINDOW)
    assert other.requests == []
    assert_nothing_committed(sqlite_url, spec)


# ---- HTTPS -> HTTP ----

def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize("auth", ["none", "api_key_header"])
def test_https_to_http_redirect_is_refused(connections, sqlite_url, tmp_path, monkeypatch, auth):
    reset_breakers()
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the client trusts the test certificate
    with ApiServer(cursor_api()) as plain:
        target = f"http://localhost:{plain.httpd.server_address[1]}"
        secure = ApiServer(lambda req: Reply(302, {}, {"Location": f"{target}{req.path}"}))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        secure.httpd.socket = context.wrap_socket(secure.httpd.socket, server_side=True)
        with secure:
            base = f"https://127.0.0.1:{secure.httpd.server_address[1]}"
            extra = {"api_key": CANARY} if auth == "api_key_header" else {}
            connections(api=json.dumps({"conn_type": "https", "host": base, "extra": extra}), wh=sqlite_url)
            spec = rest_spec({"auth": {"type": "api_key", "name": "X-API-Key"} if extra else "none"})
            with pytest.raises(SourceError) as err:
                run_window(spec, WINDOW)
        assert plain.requests == []
    assert f"GET {base}/items?" in str(err.value)
    assert f"-> HTTP 302: redirected to {target}/items; refusing to downgrade HTTPS to plain HTTP" in str(err.value)
    assert len(secure.requests) == 1  # refused, not retried
    assert CANARY not in str(err.value)
    assert_nothing_committed(sqlite_url, spec)
