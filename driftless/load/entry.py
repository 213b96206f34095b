"""The one load: every write of rows into a target goes through ``load_rows``.

A window's load (``driftless.pipeline.load_window``), a quarantine replay, a reconcile repair and the
finish of a partitioned window all call it, and so does a dry run, so the write mode (upsert,
append, replace, deletes; ``driftless.load.modes``) is built in one place and a dry run can never disagree
with a real run: it is the same load, rolled back at the end.

What a load commits in its one transaction, under the target's load lock:

1. the rows: staged and merged by the target's loader under the write mode;
2. what the caller adds (``then``): quarantine entries, removal of replayed entries, deletes of a repair;
3. state (``run``): the run record in ``etl_runs`` and, if asked, the pipeline's watermark.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    Table,
    and_,
    case,
    exists,
    false,
    func,
    insert,
    not_,
    or_,
    select,
    tuple_,
)

from driftless.connections import resolve_url
from driftless.failpoints import failpoint
from driftless.load.base import Loader, sibling_table
from driftless.load.modes import WriteMode, write_mode_for
from driftless.reconcile.digest import spec_digest_columns
from driftless.schema import target_table
from driftless.spec import PipelineSpec
from driftless.state import advance_state, ensure_state_tables, record_run
from driftless.targets.loaders import loader_for
from driftless.window import Window

#: Keys per statement of a dry run's comparison: within every dialect's bind-parameter limit (SQLite: 32766),
#: divided by the number of key columns.
KEYS_PER_QUERY = 30_000
#: Keys per kind of change a dry run reports as examples.
SAMPLE = 5


@dataclass
class RunRecord:
    """The state a load commits with its rows: a run record in ``etl_runs``, and the watermark if asked.

    ``fields`` are further ``etl_runs`` columns (``extracted``, ``deduplicated``, ``message`` ...); by
    default the record carries the load's ``loaded`` and ``written``.
    """

    run_id: str
    window: Window
    status: str
    started_at: datetime
    advance_watermark: bool = False
    max_cursor: datetime | None = None
    #: the watermark moves at most to this instant (a window ending after its source was read)
    until: datetime | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadResult:
    """What one load did. ``plan`` is set by a dry run: what the load would have changed."""

    target: Table
    mode: WriteMode | None
    loaded: int = 0
    written: int = 0
    deleted: int = 0
    schema_changes: list[str] = field(default_factory=list)
    watermark: datetime | None = None
    duration_s: float = 0.0
    plan: dict[str, Any] | None = None


#: The rows of a load: Arrow tables, or a function of the load's connection returning them (a replay
#: looks at the target inside the transaction first); None: no rows (state only, e.g. a partition finish).
Rows = Iterable[pa.Table] | Callable[[Connection, LoadResult], Iterable[pa.Table]] | None
#: Runs in the transaction after the merge; returns further ``etl_runs`` fields (or None).
Then = Callable[[Connection, LoadResult], dict[str, Any] | None]


class _RollBack(Exception):
    """Ends a dry run's transaction: the loaders roll back on any exception."""


def load_rows(spec: PipelineSpec, rows: Rows, *, window: Window | None = None, run: RunRecord | None = None,
              then: Then | None = None, dry_run: bool = False, loader: Loader | None = None) -> LoadResult:
    """Load rows into the spec's target in one transaction; the one entry point of every load.

    Args:
        spec: the pipeline.
        rows: what to load (see ``Rows``); chunks hold the spec's columns as staged by the extract.
        window: the window the rows are of. It sets the delete-detection scope; without one (replay,
            repair) nothing is detected as deleted and ``replace`` writes by key (``write_mode_for``).
        run: the run record to write, and whether the watermark moves; None: no state is written.
        then: the caller's writes in the same transaction, after the merge.
        dry_run: run the whole load, then roll it back; ``LoadResult.plan`` says what it would change.
            Nothing is created or written, not even the target table.
        loader: the target's loader (the caller keeps and disposes it); default: one for this load.
    """
    own = loader is None
    if loader is None:
        loader = loader_for(resolve_url(spec.target.connection))
    elif dry_run:
        raise ValueError("a dry run uses a loader of its own (its temporary tables end with its connections)")
    mode = write_mode_for(spec, window)
    target = mode.table(target_table(spec))
    result = LoadResult(target, mode if rows is not None else None)
    if spec.reconcile.row_digest and not dry_run:
        loader.row_digest = spec_digest_columns(spec)
    t0 = time.monotonic()
    try:
        if dry_run:
            _dry_run(loader, result, rows)
            return result
        with loader.engine.begin() as conn, loader.ddl_lock(conn, target):  # slices of a fresh target start at once
            ensure_state_tables(conn, target.schema)
        result.schema_changes = loader.ensure_tables(target)
        with loader.transaction(target, result.mode) as conn:
            _write(loader, conn, result, rows)
            extra = then(conn, result) if then is not None else None
            if run is not None:
                _record(conn, spec, run, result, extra or {})
            failpoint("before_commit")
    finally:
        if own:
            loader.dispose()
    result.duration_s = time.monotonic() - t0
    return result


def _write(loader: Loader, conn: Connection, result: LoadResult, rows: Rows, probe: _Probe | None = None) -> None:
    if rows is None or result.mode is None:
        return
    chunks = rows(conn, result) if callable(rows) else rows
    for chunk in chunks:
        if probe is not None:
            probe.remember(chunk)
        result.written += loader.stage(conn, result.target, chunk)
        result.loaded += chunk.num_rows
        failpoint("mid_load")
    result.written += loader.merge(conn, result.target, result.mode)
    result.deleted = loader.deleted


def _record(conn: Connection, spec: PipelineSpec, run: RunRecord, result: LoadResult, extra: dict[str, Any]) -> None:
    schema = spec.target.db_schema
    if run.advance_watermark:
        result.watermark = advance_state(conn, spec.name, spec.source.cursor, run.window, run.max_cursor,
                                         run.run_id, schema, until=run.until)
    finished = datetime.now(UTC)
    result.duration_s = (finished - run.started_at).total_seconds()
    fields: dict[str, Any] = {
        "loaded": result.loaded, "written": result.written,
        "schema_changes": json.dumps(result.schema_changes) if result.schema_changes else None,
        **run.fields, **extra,
    }
    record_run(conn, schema, run_id=run.run_id, pipeline=spec.name, window_start=run.window.start,
               window_end=run.window.end, status=run.status, watermark=result.watermark,
               started_at=run.started_at, finished_at=finished, duration_s=result.duration_s, **fields)


# -- dry runs: the same load, compared before and after inside its transaction, then rolled back --------


def _dry_run(loader: Loader, result: LoadResult, rows: Rows) -> None:
    target = result.target

    def setup(conn: Connection) -> None:
        result.schema_changes = loader.dry_run_setup(conn, target)

    try:
        with loader.transaction(target, result.mode, setup) as conn:
            probe = _Probe(conn, target)
            _write(loader, conn, result, rows, probe)
            result.plan = probe.compare(result)
            raise _RollBack
    except _RollBack:
        pass


class _Probe:
    """Keeps the target's rows of the staged keys as they were before the merge, to compare after it.

    Two temporary tables of the load's transaction (gone with its rollback or its connection): the
    staged keys, and the target rows they had before the load.
    """

    def __init__(self, conn: Connection, target: Table) -> None:
        self.conn = conn
        self.target = target
        self.key_names = [c.name for c in target.primary_key.columns]
        self.before = sibling_table(target, "_driftless_dry_before", temporary=True)
        self.keys = Table("_driftless_dry_keys", MetaData(),
                          *[Column(k, target.c[k].type) for k in self.key_names], prefixes=["TEMPORARY"])
        self.before.create(conn)
        self.keys.create(conn)
        self.rows_before = conn.execute(select(func.count()).select_from(target)).scalar_one()
        # Keys already remembered: a key staged again by a later chunk keeps its row from before the load
        # (SQLite writes each chunk into the target as it is staged). A dry run's memory grows with the keys.
        self.seen: set[tuple[Any, ...]] = set()

    def remember(self, chunk: pa.Table) -> None:
        """Record a chunk's keys and the target's current rows of them (before the chunk is staged)."""
        keys = []
        for row in chunk.select(self.key_names).to_pylist():
            key = tuple(row[n] for n in self.key_names)
            if key not in self.seen:
                self.seen.add(key)
                keys.append(row)
        if not keys:
            return
        t = self.target
        key_cols = [t.c[k] for k in self.key_names]
        names = [c.name for c in t.columns]
        per_query = KEYS_PER_QUERY // len(key_cols)
        for start in range(0, len(keys), per_query):
            batch = keys[start:start + per_query]
            if len(key_cols) == 1:
                where = key_cols[0].in_([k[self.key_names[0]] for k in batch])
            else:
                where = tuple_(*key_cols).in_([tuple(k[n] for n in self.key_names) for k in batch])
            self.conn.execute(insert(self.before).from_select(names, select(*[t.c[n] for n in names]).where(where)))
            self.conn.execute(insert(self.keys), batch)

    def compare(self, result: LoadResult) -> dict[str, Any]:
        t, b, k = self.target, self.before, self.keys
        conn = self.conn
        others = [c.name for c in t.columns if c.name not in self.key_names]
        same_key = and_(*[b.c[n] == t.c[n] for n in self.key_names])
        differs = or_(*[t.c[n].is_distinct_from(b.c[n]) for n in others]) if others else false()
        both = b.join(t, same_key)
        kept = conn.execute(select(func.count()).select_from(b)).scalar_one()
        updated = conn.execute(select(func.count()).select_from(both).where(differs)).scalar_one()
        unchanged = conn.execute(select(func.count()).select_from(both).where(not_(differs))).scalar_one()
        changed: dict[str, int] = {}
        if others and updated:
            sums = conn.execute(select(*[func.sum(case((t.c[n].is_distinct_from(b.c[n]), 1), else_=0))
                                         for n in others]).select_from(both)).one()
            changed = {n: int(v) for n, v in zip(others, sums, strict=True) if v}
        new = and_(exists().where(and_(*[k.c[n] == t.c[n] for n in self.key_names])), ~exists().where(same_key))
        inserted = conn.execute(select(func.count()).select_from(t).where(new)).scalar_one()
        key_cols = [t.c[n] for n in self.key_names]
        insert_keys = conn.execute(select(*key_cols).where(new).order_by(*key_cols).limit(SAMPLE)).all()
        update_keys = conn.execute(select(*key_cols).select_from(both).where(differs).order_by(*key_cols)
                                   .limit(SAMPLE)).all()
        mode = result.mode
        # Replace: the old table goes, so every row not staged again is deleted; else what the merge deleted.
        deleted = self.rows_before - kept if mode is not None and mode.swap else result.deleted
        return {"would_insert": inserted, "would_update": updated, "unchanged": unchanged, "would_delete": deleted,
                "written": result.written, "changed_columns": changed,
                "sample_keys": {"insert": [_jsonable(r) for r in insert_keys],
                                "update": [_jsonable(r) for r in update_keys]}}


def _jsonable(key: Any) -> list[Any]:
    return [k if isinstance(k, int | str) else str(k) for k in key]
