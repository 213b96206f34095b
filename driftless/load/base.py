"""What every loader offers: DDL, a locked load transaction, staging of chunks, the merge and deletes.

The loaders themselves live with their database: ``driftless.targets.<database>.load``.
"""

from __future__ import annotations

import json
import logging
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import (
    URL,
    Column,
    Connection,
    Delete,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Update,
    and_,
    delete,
    exists,
    select,
    true,
    update,
)

from driftless.load.evolution import evolve
from driftless.load.modes import DELETED_AT, WriteMode
from driftless.reconcile.dialects import DigestUnsupported, HashDialect
from driftless.reconcile.digest import DigestColumn, ensure_digest, fill_digest

#: What ``Loader.transaction`` runs first in the load's transaction (a dry run creates or evolves the target there).
Setup = Callable[[Connection], None]


class Loader(ABC):
    """Loads a window's chunks into one target table, exactly once.

    Callers do not sequence these steps themselves: ``driftless.load.entry.load_rows`` is the one load
    (window loads, quarantine replay, repair, partition finish, dry runs). Inside it, in one transaction::

        with loader.transaction(target, mode) as conn:
            written = sum(loader.stage(conn, target, chunk) for chunk in chunks)
            written += loader.merge(conn, target, mode)
            ... the caller's writes (quarantine, state, run record) ...

    A loader instance serves one load at a time.
    """

    #: Whether DDL (CREATE/ALTER TABLE) takes part in transactions; a dry run then creates or evolves the
    #: target inside its rolled-back transaction, else it works on a temporary stand-in (``dry_run_setup``).
    transactional_ddl: ClassVar[bool] = True
    #: the deep diff's SQL of the loader's database (for the stored row digest)
    hash_dialect: ClassVar[type[HashDialect]]

    def __init__(self, url: URL) -> None:
        self.url = url
        self.engine = self.create_engine(url)
        self.mode: WriteMode | None = None
        self.staged = 0
        #: rows the last merge deleted or marked deleted (included in its count of rows written)
        self.deleted = 0
        #: columns of the stored row digest to keep on the target (spec ``reconcile.row_digest``); None: none
        self.row_digest: list[DigestColumn] | None = None
        #: where a bulk path writes its load files (the run's private staging directory); None: the temp dir
        self.scratch_dir: str | None = None
        #: this load writes straight into the target, which was empty and is locked against other writers
        #: (``claim_empty``); None: not decided yet (at the first chunk)
        self.direct: bool | None = None
        #: rows written straight into the target so far (counted by ``merge``)
        self.direct_rows = 0

    @abstractmethod
    def create_engine(self, url: URL) -> Engine:
        """The loader's engine, with its database's session set-up (``driftless.targets.<database>.engine``)."""

    def dispose(self) -> None:
        self.engine.dispose()

    def ensure_tables(self, target: Table) -> list[str]:
        """Create or evolve the target (``driftless.load.evolution``), in a transaction of its own.

        New nullable spec columns are added; incompatible changes raise ``LoadError`` before any write.
        Returns the schema changes made, for the run record.
        """
        with self.engine.begin() as conn, self.ddl_lock(conn, target):
            changes = evolve(conn, target)
            self.ensure_digest(conn, target)
            return changes

    def dry_run_setup(self, conn: Connection, target: Table) -> list[str]:
        """In a dry run's transaction (rolled back): create or evolve the target as the load would."""
        return evolve(conn, target)

    @contextmanager
    def ddl_lock(self, conn: Connection, target: Table) -> Iterator[None]:
        """Serialize ``ensure_tables`` with other processes creating tables in the target's schema.

        Partition slices of a fresh target start at once (on several Celery workers); unserialized, their
        ``CREATE TABLE``s collide. Default: no lock (SQLite serializes writers itself).
        """
        yield

    @cached_property
    def _hash_dialect(self) -> HashDialect:
        return self.hash_dialect(self.engine)

    def ensure_digest(self, conn: Connection, table: Table) -> None:
        """Give ``table`` the spec's row digest (added, or refreshed after the columns changed)."""
        if not self.row_digest:
            return
        try:
            ensure_digest(conn, self._hash_dialect, table.name, table.schema, self.row_digest)
        except DigestUnsupported as exc:  # a speed-up only: the deep diff hashes rows without it
            logging.getLogger(__name__).warning("reconcile.row_digest ignored for %s: %s", table.name, exc)

    def fill_digest(self, conn: Connection, table: Table) -> None:
        """Digests the database does not compute itself (SQLite): fill them in the load's transaction."""
        if not self.row_digest or not self._hash_dialect.fills_digest:
            return
        fill_digest(conn, self._hash_dialect, table.name, table.schema, self.row_digest)

    @contextmanager
    def transaction(self, target: Table, mode: WriteMode | None = None, setup: Setup | None = None
                    ) -> Iterator[Connection]:
        """A transaction holding the target's load lock, so concurrent loads of one table serialize.

        Args:
            target: the target table (as ``mode.table`` returned it).
            mode: the write mode; None: nothing is staged or merged (state only).
            setup: runs first inside the transaction, under the lock, before the staging tables exist.
        """
        self.mode = mode
        self.staged = 0
        self.deleted = 0
        self.direct = None
        self.direct_rows = 0
        with self._transaction(target, setup) as conn:
            yield conn
            self.fill_digest(conn, target)

    @abstractmethod
    @contextmanager
    def _transaction(self, target: Table, setup: Setup | None = None) -> Iterator[Connection]:
        """Begin, take the load lock, run ``setup``, create what the load stages into; commit or roll back."""

    def claim_empty(self, conn: Connection, target: Table) -> bool:
        """Whether the target is empty and locked against other writers until the load's transaction ends.

        True lets the load skip staging and merging: the first load into an empty target writes its rows
        straight into it (the fast path of a loader that has one; it must give exactly what the staged
        path gives, repeated keys included). Default: no fast path.
        """
        return False

    @abstractmethod
    def stage(self, conn: Connection, target: Table, chunk: pa.Table) -> int:
        """Write one chunk towards the target; returns rows already written to the target by it.

        Loaders that stage into a side table return 0 here and count in ``merge``.
        """

    @abstractmethod
    def merge(self, conn: Connection, target: Table, mode: WriteMode) -> int:
        """Apply what was staged to the target; returns rows written (inserted, changed or deleted)."""

    def quote(self, name: str) -> str:
        return self.engine.dialect.identifier_preparer.quote(name)

    def quote_table(self, table: Table) -> str:
        return self.engine.dialect.identifier_preparer.format_table(table)

    # -- shared steps, written once in SQLAlchemy Core (typed binds render right on every dialect) --

    def apply_deletes(self, conn: Connection, target: Table, mode: WriteMode, keys_table: Table | None) -> int:
        """Delete detection and the source delete flag, after the merge; returns rows deleted or marked.

        ``keys_table`` holds (at least) the key columns of every record of the window.
        """
        written = 0
        cursor = target.c[mode.cursor_column]
        in_scope = [cursor >= mode.scope[0], cursor < mode.scope[1]] if mode.scope else []
        if mode.delete_flag is not None and mode.deletes == "hard" and mode.scope:
            flagged = delete(target).where(target.c[mode.delete_flag].is_(true()), *in_scope)
            written += max(conn.execute(flagged).rowcount, 0)
        if mode.detects_deletes and keys_table is not None:
            key_names = [c.name for c in target.primary_key.columns]
            stmt: Update | Delete
            seen = exists().where(and_(*[keys_table.c[k] == target.c[k] for k in key_names]))
            if mode.deletes == "soft":
                stmt = (update(target).where(target.c[DELETED_AT].is_(None), *in_scope, ~seen)
                        .values({DELETED_AT: mode.deleted_at}))
            else:
                stmt = delete(target).where(*in_scope, ~seen)
            written += max(conn.execute(stmt).rowcount, 0)
        self.deleted = written
        return written


def sibling_table(target: Table, name: str, *, temporary: bool = False, extra: list[Column] | None = None,
                  primary_key: bool = True, **dialect_kw: Any) -> Table:
    """A table with the target's columns under another name (staging or the replacement of a swap)."""
    cols = [Column(c.name, c.type, nullable=c.nullable, autoincrement=False) for c in target.columns]
    args: list[Any] = [*(extra or []), *cols]
    if primary_key:
        args.append(PrimaryKeyConstraint(*[c.name for c in target.primary_key.columns], name=f"pk_{name}"[:63]))
    return Table(name, MetaData(), *args, schema=None if temporary else target.schema,
                 prefixes=["TEMPORARY"] if temporary else [], **dialect_kw)


def select_keys(table: Table, target: Table):
    return select(*[table.c[c.name] for c in target.primary_key.columns])


def rows_for_core(chunk: pa.Table, target: Table) -> list[dict[str, Any]]:
    """A chunk as dicts for SQLAlchemy Core binds (JSON columns decoded, since the JSON type encodes)."""
    rows = chunk.to_pylist()
    json_cols = [c.name for c in target.columns if c.type.__class__.__name__ == "JSON"]
    for row in rows:
        for name in json_cols:
            if row[name] is not None:
                row[name] = json.loads(row[name])
    return rows


def json_columns(target: Table) -> set[str]:
    return {c.name for c in target.columns if c.type.__class__.__name__ == "JSON"}


def text_scalar(text: str) -> pa.StringScalar:
    """``pa.scalar(text)``, built from its bytes.

    pyarrow (26) imports pandas the first time it converts any Python value (``pa.scalar``, ``pa.array``, a
    Python value given to a compute function); a load has no other use for pandas.
    """
    data = text.encode()
    return pa.StringArray.from_buffers(1, pa.py_buffer(struct.pack("<ii", 0, len(data))), pa.py_buffer(data))[0]


def as_text(array: pa.ChunkedArray | pa.Array) -> pa.Array:
    """An Arrow column as the text a database parses back to the same value (NULL stays null).

    Timestamps as ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC), decimals exactly, booleans as 1/0.
    All conversions run vectorized in Arrow's C++ kernels.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_timestamp(kind):
        return pc.cast(naive_utc(array), pa.string())
    if pa.types.is_boolean(kind):
        return pc.cast(pc.cast(array, pa.int8()), pa.string())
    if pa.types.is_large_string(kind):
        return pc.cast(array, pa.string())
    if pa.types.is_string(kind):
        return array
    return pc.cast(array, pa.string())


def naive_utc(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Timestamps as naive UTC at microsecond precision.

    Formatting a zoned timestamp in Arrow looks up the zone per value (about 15x slower than a naive
    one), so loaders format naive UTC values and tell the database they are UTC.
    """
    return pc.cast(array, pa.timestamp("us"))


def naive_timestamps(chunk: pa.Table) -> pa.Table:
    """A chunk with every timestamp column as naive UTC (``YYYY-MM-DD HH:MM:SS.ffffff`` when written as text)."""
    for i, field in enumerate(chunk.schema):
        if pa.types.is_timestamp(field.type) and (field.type.tz is not None or field.type.unit != "us"):
            chunk = chunk.set_column(i, pa.field(field.name, pa.timestamp("us"), field.nullable),
                                     naive_utc(chunk[field.name]))
    return chunk
