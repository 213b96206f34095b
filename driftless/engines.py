"""The one place driftless creates SQLAlchemy engines (sources, targets, the deep diff's sides).

What every engine gets, whatever it is for: a connect timeout (``driftless.connections.connect_args``:
``$DRIFTLESS_CONNECT_TIMEOUT_S``, default 10 s, unless the connection sets its own ``connect_timeout``),
MariaDB/MySQL sessions speak ``utf8mb4`` (unless the URL says otherwise), and pooled connections are
checked before use (``pool_pre_ping``; not for SQLite, whose connections are files in this process).
Each user adds its own session set-up as hooks: the loaders take SQLite's transaction control and
``LOCAL INFILE`` (``driftless.load``), the deep diff sets UTC and float printing (``driftless.reconcile.dialects``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event

from driftless.connections import connect_args as timeout_args

#: What a hook gets: the DB-API connection, right after it is opened (``connect``), or the SQLAlchemy
#: connection as a transaction begins (``begin``).
Hook = Callable[[Any], None]


def is_mysql(url: URL) -> bool:
    return url.get_backend_name() in ("mysql", "mariadb")


def engine_for(url: URL, *, connect_args: dict[str, Any] | None = None, on_connect: Hook | None = None,
               on_begin: Hook | None = None, **options: Any) -> Engine:
    """An engine for ``url`` with the session set-up every driftless engine shares, plus the caller's hooks.

    Args:
        url: the database.
        connect_args: passed to the DB-API driver's ``connect``, after the connect timeout (which they may override).
        on_connect: runs on each new DB-API connection (session settings, SQLite functions).
        on_begin: runs as each transaction begins (SQLite's ``BEGIN IMMEDIATE``).
        options: further ``create_engine`` options (``isolation_level`` ...).
    """
    if is_mysql(url) and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    if url.get_backend_name() != "sqlite":
        options.setdefault("pool_pre_ping", True)
    engine = create_engine(url, connect_args={**timeout_args(url), **(connect_args or {})}, **options)
    if on_connect is not None:
        event.listen(engine, "connect", lambda dbapi_conn, _record: on_connect(dbapi_conn))
    if on_begin is not None:
        event.listen(engine, "begin", on_begin)
    return engine
