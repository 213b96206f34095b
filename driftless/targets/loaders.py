"""The loader of a target database (``driftless.targets.<database>.load``), by its URL.

Apart from ``driftless.targets`` because loaders are heavy (pyarrow, the drivers' bulk paths) and
``driftless.load.base`` imports what ``driftless.targets`` offers to everyone.
"""

from __future__ import annotations

from sqlalchemy import URL

from driftless.errors import LoadError
from driftless.load.base import Loader
from driftless.targets import database_for, mysql, postgres, sqlite
from driftless.targets.base import Capabilities
from driftless.targets.mysql.load import MySqlLoader
from driftless.targets.postgres.load import PostgresLoader
from driftless.targets.sqlite.load import SqliteLoader

LOADERS: dict[Capabilities, type[Loader]] = {
    postgres.CAPABILITIES: PostgresLoader,
    mysql.CAPABILITIES: MySqlLoader,
    sqlite.CAPABILITIES: SqliteLoader,
}


def loader_for(url: URL) -> Loader:
    """The loader for a target URL, chosen by its database (PostgreSQL, MariaDB/MySQL, SQLite)."""
    return LOADERS[database_for(url, LoadError).capabilities](url)


__all__ = ["LOADERS", "Loader", "MySqlLoader", "PostgresLoader", "SqliteLoader", "loader_for"]
