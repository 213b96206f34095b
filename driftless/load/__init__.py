"""Loaders: one per SQL dialect, the only code in driftless that knows dialects."""

from __future__ import annotations

from sqlalchemy import URL

from driftless.errors import LoadError
from driftless.load.base import Loader
from driftless.load.mysql import MySqlLoader
from driftless.load.postgres import PostgresLoader
from driftless.load.sqlite import SqliteLoader

LOADERS: dict[str, type[Loader]] = {
    "postgresql": PostgresLoader,
    "mysql": MySqlLoader,
    "mariadb": MySqlLoader,
    "sqlite": SqliteLoader,
}


def loader_for(url: URL) -> Loader:
    """The loader for a target URL, chosen by its backend (postgresql, mysql/mariadb, sqlite)."""
    backend = url.get_backend_name()
    cls = LOADERS.get(backend)
    if cls is None:
        raise LoadError(f"no loader for target database {backend!r} (supported: {', '.join(sorted(LOADERS))})")
    return cls(url)


__all__ = ["LOADERS", "Loader", "MySqlLoader", "PostgresLoader", "SqliteLoader", "loader_for"]
