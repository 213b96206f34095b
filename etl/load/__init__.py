"""Loaders: one per SQL dialect, the only code in driftless that knows dialects."""

from __future__ import annotations

from sqlalchemy import URL

from etl.errors import LoadError
from etl.load.base import Loader
from etl.load.mysql import MySqlLoader
from etl.load.postgres import PostgresLoader
from etl.load.sqlite import SqliteLoader

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
