"""Connections by id: Airflow Connections inside Airflow, ``AIRFLOW_CONN_<ID>`` from the environment.

The CLI and the DAGs resolve a spec's connection ids the same way Airflow does: an environment
variable ``AIRFLOW_CONN_<ID>`` holding a URI (``postgresql://user:pass@host:5432/db``,
``mysql://root@127.0.0.1:3306/test``, ``sqlite:////abs/path.db``) or Airflow's JSON form. Inside an
Airflow task, ids that have no such variable are looked up in Airflow's Connections.

Every engine of a database server driftless builds (``driftless.targets.engine_for``) gives up
connecting after a connect timeout: ``$DRIFTLESS_CONNECT_TIMEOUT_S`` seconds (default
``driftless.errors.DEFAULT_CONNECT_TIMEOUT_S``, read by ``driftless.errors.connect_timeout_s``), unless the
connection sets its own ``connect_timeout`` (URI query ``?connect_timeout=30`` or the Airflow
Connection's extra ``{"connect_timeout": 30}``). Without it a host that drops packets hangs a run
for the operating system's TCP timeout (minutes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from sqlalchemy import URL

from driftless.errors import ConnectionNotFound
from driftless.redact import SENSITIVE_PARAM, remember
from driftless.targets import database_for_scheme

_fallback: Callable[[str], dict[str, Any]] | None = None

#: seconds to wait for a database server to answer a new connection, unless configured


def use_lookup(lookup: Callable[[str], dict[str, Any]] | None) -> None:
    """Set how ids without an ``AIRFLOW_CONN_<ID>`` variable are found (the DAGs pass Airflow's)."""
    global _fallback
    _fallback = lookup


def env_var_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _url_from_fields(conn_id: str, fields: dict[str, Any]) -> URL:
    conn_type = str(fields.get("conn_type") or "").lower()
    database = database_for_scheme(conn_type)
    if database is None:
        raise ConnectionNotFound(
            f"connection {conn_id!r}: type {conn_type or '(none)'!r} is not a SQL database driftless "
            f"can use (expected one of: postgres, mysql, sqlite)"
        )
    driver = database.capabilities.driver
    if database.capabilities.file_database:
        path = fields.get("host") or fields.get("schema") or ""
        return URL.create(driver, database=path or None)
    extra = fields.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    return URL.create(
        driver,
        username=fields.get("login") or None,
        password=fields.get("password") or None,
        host=fields.get("host") or None,
        port=int(fields["port"]) if fields.get("port") else None,
        database=fields.get("schema") or None,
        query={k: str(v) for k, v in extra.items() if isinstance(v, str | int)},
    )


def _fields_from_uri(uri: str) -> dict[str, Any]:
    """A connection URI (Airflow's form) as connection fields: the one parser of ``AIRFLOW_CONN_<ID>`` URIs.

    ``scheme://login:password@host:port/schema?k=v`` (percent-encoded parts decoded; query parameters
    become ``extra``, or the JSON of ``__extra__``); ``sqlite:////abs/path.db`` gives the path as ``host``.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    database = database_for_scheme(scheme)
    if database is not None and database.capabilities.file_database:
        return {"conn_type": scheme, "host": unquote(uri.split(":", 1)[1].removeprefix("///")) if "://" in uri
                else "", "extra": {}}
    extra: dict[str, Any] = dict(parse_qsl(parts.query))
    if "__extra__" in extra:
        extra = json.loads(extra["__extra__"])
    return {
        "conn_type": scheme,
        "host": parts.hostname,
        "port": parts.port,
        "login": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "schema": unquote(parts.path.lstrip("/")),
        "extra": extra,
    }


def url_from_uri(uri: str, conn_id: str = "command line") -> URL:
    """The SQLAlchemy URL of a database URI (``AIRFLOW_CONN_<ID>``'s value, or one given on the command line)."""
    try:
        fields = _fields_from_uri(uri)
    except ValueError as exc:  # a port that is no number, a broken __extra__
        raise ConnectionNotFound(f"connection {conn_id!r} ({env_var_name(conn_id)}): not a valid URI "
                                 f"({exc})") from exc
    if database_for_scheme(fields["conn_type"]) is None:
        raise ConnectionNotFound(
            f"connection {conn_id!r} ({env_var_name(conn_id)}): URI scheme {fields['conn_type'] or '(none)'!r} "
            "is not supported (expected postgresql://, mysql:// or sqlite:///)"
        )
    return _url_from_fields(conn_id, fields)


def resolve_url(conn_id: str) -> URL:
    """The SQLAlchemy URL of a connection id; raises ``ConnectionNotFound`` naming where it looked.

    Its password is remembered for redaction (``driftless.redact.remember``): alerts and messages hide it.
    """
    url = _resolve_url(conn_id)
    remember(url.password)
    return url


def _resolve_url(conn_id: str) -> URL:
    raw = os.environ.get(env_var_name(conn_id))
    if raw:
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                return _url_from_fields(conn_id, json.loads(raw))
            except json.JSONDecodeError as exc:
                raise ConnectionNotFound(
                    f"connection {conn_id!r}: {env_var_name(conn_id)} is neither a URI nor valid JSON ({exc.msg})"
                ) from exc
        return url_from_uri(raw, conn_id)
    if _fallback is not None:
        try:
            fields = _fallback(conn_id)
        except Exception as exc:  # Airflow raises its own not-found types
            raise ConnectionNotFound(
                f"connection {conn_id!r} is not defined: no Airflow Connection with that id and no "
                f"{env_var_name(conn_id)} environment variable ({type(exc).__name__})"
            ) from exc
        return _url_from_fields(conn_id, fields)
    raise ConnectionNotFound(
        f"connection {conn_id!r} is not defined: set {env_var_name(conn_id)} to a URI such as "
        f"postgresql://user@127.0.0.1:5432/db (or define an Airflow Connection {conn_id!r})"
    )


def airflow_lookup(conn_id: str) -> dict[str, Any]:
    """Fetch a connection's fields from Airflow (only inside an Airflow task)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return {
        "conn_type": conn.conn_type,
        "host": conn.host,
        "login": conn.login,
        "password": conn.password,
        "port": conn.port,
        "schema": conn.schema,
        "extra": conn.extra,
    }


def connection_fields(conn_id: str) -> dict[str, Any]:
    """A connection's raw fields (conn_type, host, port, login, password, schema, extra as a dict), for REST use.

    Same lookup as ``resolve_url``: ``AIRFLOW_CONN_<ID>`` as a URI (``https://login:password@host:port/path?k=v``,
    query parameters become ``extra``) or Airflow's JSON form, else the Airflow Connection. Never log the result.
    """
    raw = (os.environ.get(env_var_name(conn_id)) or "").strip()
    if raw.startswith("{"):
        try:
            fields = dict(json.loads(raw))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ConnectionNotFound(
                f"connection {conn_id!r}: {env_var_name(conn_id)} is neither a URI nor valid JSON "
                f"({getattr(exc, 'msg', type(exc).__name__)})"
            ) from exc
    elif raw:
        parts = urlsplit(raw)
        if not parts.scheme or not parts.hostname:
            raise ConnectionNotFound(f"connection {conn_id!r} ({env_var_name(conn_id)}): expected a URI such as "
                                     "https://login:password@api.example.com/v1")
        fields = _fields_from_uri(raw)
    elif _fallback is not None:
        try:
            fields = dict(_fallback(conn_id))
        except Exception as exc:  # Airflow raises its own not-found types
            raise ConnectionNotFound(
                f"connection {conn_id!r} is not defined: no Airflow Connection with that id and no "
                f"{env_var_name(conn_id)} environment variable ({type(exc).__name__})"
            ) from exc
    else:
        raise ConnectionNotFound(
            f"connection {conn_id!r} is not defined: set {env_var_name(conn_id)} to a URI such as "
            f"https://login:password@api.example.com/v1 (or define an Airflow Connection {conn_id!r})"
        )
    extra = fields.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConnectionNotFound(f"connection {conn_id!r}: extra is not valid JSON") from exc
    fields["extra"] = extra
    remember(fields.get("password"))
    for key, value in extra.items():
        if isinstance(value, str) and SENSITIVE_PARAM.search(key):
            remember(value)  # client secrets, tokens: hidden in messages and alerts like the password
    return fields

