"""What every loader offers: DDL, a locked load transaction, staging of chunks and the merge."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from sqlalchemy import URL, Connection, Engine, Table, create_engine

from etl.load.evolution import evolve
from etl.state import ensure_state_tables


class Loader(ABC):
    """Loads a window's chunks into one target table, exactly once.

    Usage, all inside one transaction (the pipeline sequences it)::

        with loader.transaction(target) as conn:
            written = sum(loader.stage(conn, target, chunk) for chunk in chunks)
            written += loader.merge(conn, target, cursor_column)
            ... advance state, record the run ...
    """

    def __init__(self, url: URL) -> None:
        self.url = url
        self.engine = self.create_engine(url)

    def create_engine(self, url: URL) -> Engine:
        return create_engine(url, pool_pre_ping=True)

    def dispose(self) -> None:
        self.engine.dispose()

    def ensure_tables(self, target: Table) -> list[str]:
        """Create the state tables, and create or evolve the target (``etl.load.evolution``).

        New nullable spec columns are added; incompatible changes raise ``LoadError`` before any write.
        Returns the schema changes made, for the run record.
        """
        with self.engine.begin() as conn:
            ensure_state_tables(conn, target.schema)
            return evolve(conn, target)

    @abstractmethod
    @contextmanager
    def transaction(self, target: Table) -> Iterator[Connection]:
        """A transaction holding the target's load lock, so concurrent loads of one table serialize."""

    @abstractmethod
    def stage(self, conn: Connection, target: Table, chunk: pa.Table) -> int:
        """Write one chunk towards the target; returns rows already written to the target by it.

        Loaders that stage into a side table return 0 here and count in ``merge``.
        """

    @abstractmethod
    def merge(self, conn: Connection, target: Table, cursor_column: str) -> int:
        """Apply what was staged to the target; returns rows written (inserted or changed)."""

    def quote(self, name: str) -> str:
        return self.engine.dialect.identifier_preparer.quote(name)

    def quote_table(self, table: Table) -> str:
        return self.engine.dialect.identifier_preparer.format_table(table)


def rows_for_core(chunk: pa.Table, target: Table) -> list[dict[str, Any]]:
    """A chunk as dicts for SQLAlchemy Core binds (JSON columns decoded, since the JSON type encodes)."""
    rows = chunk.to_pylist()
    json_cols = [c.name for c in target.columns if c.type.__class__.__name__ == "JSON"]
    for row in rows:
        for name in json_cols:
            if row[name] is not None:
                row[name] = json.loads(row[name])
    return rows
