"""The one place driftless calls ``sqlalchemy.create_engine`` (sources, targets, the deep diff's sides).

This module knows no database: each database's session set-up (connect timeout, character set, pooling,
SQLite's functions and transaction control) is added by its module in ``driftless.targets``, whose
``engine_for`` is what the rest of driftless calls for an engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event

#: What a hook gets: the DB-API connection, right after it is opened (``connect``), or the SQLAlchemy
#: connection as a transaction begins (``begin``).
Hook = Callable[[Any], None]


def build_engine(url: URL, *, connect_args: dict[str, Any] | None = None, on_connect: Hook | None = None,
                 on_begin: Hook | None = None, **options: Any) -> Engine:
    """An engine for ``url`` with the given driver arguments and hooks (no database-specific defaults).

    Args:
        url: the database.
        connect_args: passed to the DB-API driver's ``connect``.
        on_connect: runs on each new DB-API connection (session settings, SQLite functions).
        on_begin: runs as each transaction begins (SQLite's ``BEGIN IMMEDIATE``).
        options: further ``create_engine`` options (``isolation_level``, ``pool_pre_ping`` ...).
    """
    engine = create_engine(url, connect_args=connect_args or {}, **options)
    if on_connect is not None:
        event.listen(engine, "connect", lambda dbapi_conn, _record: on_connect(dbapi_conn))
    if on_begin is not None:
        event.listen(engine, "begin", on_begin)
    return engine
