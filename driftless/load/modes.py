"""Write modes: how a window's records change the target table, chosen per pipeline by ``target.write_mode``.

Each mode is a small strategy object the loaders interpret in their own dialect:

* ``upsert`` (default): insert new keys, update changed rows; unchanged rows cost no write.
  Of two records with one key in a window, the one with the latest cursor value wins.
* ``append``: insert-only, idempotent by key: a key already in the target is left alone, so a
  re-run adds nothing. Of two records with one key in a window, the first (earliest) wins.
* ``replace``: the window's records become the whole table. They are loaded into a new table that
  is swapped in atomically at commit, so readers see the old table or the new one, never a half one.

Delete detection (``target.deletes``, upsert only) treats the window as a full refresh of the rows
whose cursor value lies inside it: target rows in that cursor range whose key the window did not
deliver were deleted at the source. ``soft`` sets their ``_deleted_at`` column, ``hard`` deletes them.
A window spanning all cursor values (e.g. ``--start 1970-01-01 --end <now>``) is a full refresh of the
table. A row seen again later gets ``_deleted_at`` cleared by the upsert.

A source soft-delete flag (``target.delete_flag``, a boolean column of the records) marks rows deleted
at the source: they are hard-deleted from the target when ``deletes: hard``, else kept with
``_deleted_at`` set to the row's cursor value (deterministic, so re-runs change nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Column, Table

from driftless.errors import LoadError
from driftless.schema import UTC_TIMESTAMP
from driftless.window import Window

DELETED_AT = "_deleted_at"


@dataclass(frozen=True)
class WriteMode:
    """One load's write strategy; loaders read its attributes, they never branch on its name.

    Attributes:
        cursor_column: orders records of one key within a window (latest wins for upsert/replace).
        deletes: ``none``, ``soft`` or ``hard``: what happens to target rows in ``scope`` not delivered.
        delete_flag: a boolean record column; true means the source deleted the row.
        scope: the cursor range ``(low, high)`` the window covers, as values of the cursor's type.
        deleted_at: the ``_deleted_at`` stamp given to rows found absent (the window end, or now if earlier).
    """

    name: ClassVar[str] = "upsert"
    #: What to do with a record whose key the target already holds: ``update`` or ``nothing``.
    on_conflict: ClassVar[str] = "update"
    #: Whether records of one key keep the latest (True) or the first (False) cursor value.
    latest_wins: ClassVar[bool] = True
    #: Load into a new table and swap it in at commit.
    swap: ClassVar[bool] = False

    cursor_column: str
    deletes: str = "none"
    delete_flag: str | None = None
    scope: tuple[Any, Any] | None = None
    deleted_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def soft_deletes(self) -> bool:
        """Whether the target carries a ``_deleted_at`` column."""
        return self.deletes == "soft" or (self.delete_flag is not None and self.deletes != "hard")

    @property
    def detects_deletes(self) -> bool:
        return self.deletes != "none" and self.scope is not None

    def table(self, target: Table) -> Table:
        """The target table as this mode writes it (adds ``_deleted_at`` for soft deletes)."""
        if self.soft_deletes and DELETED_AT not in target.c:
            target.append_column(Column(DELETED_AT, UTC_TIMESTAMP, nullable=True))
        return target

    def prepare(self, chunk: pa.Table, target: Table) -> pa.Table:
        """A staged chunk as it is written: with ``_deleted_at`` computed from the delete flag."""
        if DELETED_AT not in target.c or DELETED_AT in chunk.column_names:
            return chunk
        stamp = pa.nulls(chunk.num_rows, pa.timestamp("us", tz="UTC"))
        if self.delete_flag is not None:
            cursor = chunk[self.cursor_column]
            if pa.types.is_date(cursor.type):
                cursor = pc.cast(cursor, pa.timestamp("us"))
            if cursor.type.tz is None:
                cursor = pc.assume_timezone(cursor, "UTC")
            cursor = pc.cast(cursor, pa.timestamp("us", tz="UTC"))
            flag = pc.fill_null(chunk[self.delete_flag], False)
            stamp = pc.if_else(flag, cursor, stamp)
        return chunk.append_column(pa.field(DELETED_AT, pa.timestamp("us", tz="UTC")), stamp)


class Upsert(WriteMode):
    """Insert new keys, update changed rows (the default)."""


class Append(WriteMode):
    """Insert-only, idempotent by key."""

    name = "append"
    on_conflict = "nothing"
    latest_wins = False


class Replace(WriteMode):
    """The window's records become the whole table, swapped in atomically."""

    name = "replace"
    swap = True


WRITE_MODES: dict[str, type[WriteMode]] = {cls.name: cls for cls in (Upsert, Append, Replace)}


def write_mode_for(spec: Any, window: Window | None = None) -> WriteMode:
    """The write mode of a pipeline spec for one window (``window`` sets the delete-detection scope).

    Without a window (rows loaded outside a window's run: quarantine replay, repair) nothing is in
    scope, so no delete is detected, and ``replace`` writes by key like ``upsert``: some rows never
    become the whole table.
    """
    target = spec.target
    name = target.write_mode
    cls = WRITE_MODES.get(name)
    if cls is None:
        raise LoadError(f"pipeline {spec.name!r}: unknown write_mode {name!r} (expected one of {sorted(WRITE_MODES)})")
    scope = None
    deleted_at = datetime.now(UTC)
    if window is None:
        cls = Upsert if cls.swap else cls
    else:
        scope = window.bounds(spec.column(spec.source.cursor).type, spec.source.lag)
        deleted_at = min(window.end.astimezone(UTC), deleted_at)
    return cls(cursor_column=spec.source.cursor, deletes=target.deletes, delete_flag=target.delete_flag,
               scope=scope, deleted_at=deleted_at)
