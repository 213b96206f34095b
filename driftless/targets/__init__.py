"""One home per database: ``postgres/``, ``mysql/`` (MariaDB too), ``sqlite/``, as SQLAlchemy lays out its dialects.

Each database's package holds everything driftless knows about it: its capabilities and session set-up
(``__init__``), its loader (``load``: staging, merge SQL, load and DDL locks) and the deep diff's SQL
(``rowhash``: canonical texts, row hash, stored digest). This module is the one place that maps a
database (a SQLAlchemy backend name, an Airflow connection type or URI scheme) to its package; the
rest of driftless asks it for engines, hash dialects and capabilities (and ``driftless.targets.loaders``
for loaders) and never compares dialect names (``tests/test_architecture.py`` checks).

This module stays light (no loader, no pyarrow): connections, sources and schema evolution import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL, Connection, Engine

from driftless.errors import DriftlessError, ReconciliationFailed
from driftless.reconcile.dialects import HashDialect
from driftless.targets import mysql, postgres, sqlite
from driftless.targets.base import Capabilities, network_connect_args
from driftless.targets.mysql.rowhash import MySqlHash
from driftless.targets.postgres.rowhash import PostgresHash
from driftless.targets.sqlite.rowhash import SqliteHash


@dataclass(frozen=True)
class Database:
    """One database's home, as the rest of driftless sees it."""

    capabilities: Capabilities
    #: ``engine(url, connect_args=, on_connect=, on_begin=, **options)``: an engine with its session set-up
    engine: Callable[..., Engine]
    hash_dialect: type[HashDialect]
    #: ``(conn, schema, name) -> ({column: declared type}, {JSON-checked columns})`` from the catalog (discover)
    declared_types: Callable[[Connection, str | None, str], tuple[dict[str, str], set[str]]]


DATABASES: tuple[Database, ...] = (
    Database(postgres.CAPABILITIES, postgres.engine, PostgresHash, postgres.declared_types),
    Database(mysql.CAPABILITIES, mysql.engine, MySqlHash, mysql.declared_types),
    Database(sqlite.CAPABILITIES, sqlite.engine, SqliteHash, sqlite.declared_types),
)
_BY_BACKEND = {backend: db for db in DATABASES for backend in db.capabilities.backends}
_BY_SCHEME = {scheme: db for db in DATABASES for scheme in db.capabilities.schemes}
SUPPORTED = ", ".join(sorted(_BY_BACKEND))


def database_for(url: URL, error: type[DriftlessError] = DriftlessError) -> Database:
    """The database of a URL, by its SQLAlchemy backend; raises ``error`` for one driftless does not know."""
    db = _BY_BACKEND.get(url.get_backend_name())
    if db is None:
        raise error(f"driftless does not support {url.get_backend_name()!r} databases (supported: {SUPPORTED})")
    return db


def database_for_scheme(scheme: str) -> Database | None:
    """The database an Airflow connection type or URI scheme (``postgres``, ``mysql+pymysql``...) means."""
    return _BY_SCHEME.get(scheme.lower())


def capabilities(url: URL) -> Capabilities:
    """What the URL's database can do (``driftless.targets.base.Capabilities``)."""
    return database_for(url).capabilities


def engine_for(url: URL, *, connect_args: dict[str, Any] | None = None, **options: Any) -> Engine:
    """An engine for ``url`` with its database's session set-up (connect timeout, charset, pooling).

    Args:
        url: the database.
        connect_args: passed to the DB-API driver's ``connect``, after the connect timeout (which they may override).
        options: ``on_connect`` / ``on_begin`` hooks and further ``create_engine`` options (``isolation_level``...).
    """
    return database_for(url).engine(url, connect_args=connect_args, **options)


def connect_args(url: URL) -> dict[str, Any]:
    """The driver arguments every driftless engine of ``url`` gets: the connect timeout, for a database server.

    ``$DRIFTLESS_CONNECT_TIMEOUT_S`` (default 10 s), unless the URL sets its own ``connect_timeout``.
    """
    return {} if capabilities(url).file_database else network_connect_args(url)


def hash_dialect_for(url: URL) -> type[HashDialect]:
    """The deep diff's ``HashDialect`` class of a database URL's backend."""
    return database_for(url, ReconciliationFailed).hash_dialect


__all__ = ["DATABASES", "SUPPORTED", "Capabilities", "Database", "capabilities", "connect_args", "database_for",
           "database_for_scheme", "engine_for", "hash_dialect_for"]
