"""Replay: load a pipeline's quarantined records once they pass under the current spec.

``replay`` re-runs transforms and validation on the quarantined records; the rows that pass are loaded
and removed from quarantine in one transaction, so a second replay finds nothing to load. A quarantined
row older than the target's row for the same key (by the cursor) is removed as superseded instead of
overwriting newer data.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, Table, and_, bindparam, delete, select, tuple_, update

from driftless.connections import resolve_url
from driftless.errors import LoadError
from driftless.extract.dedup import dedup_losers
from driftless.extract.validate import Validator
from driftless.load.entry import LoadResult, RunRecord, load_rows
from driftless.quarantine.store import BATCH, list_quarantine, quarantine_table
from driftless.spec import PipelineSpec
from driftless.status import Run
from driftless.targets.loaders import loader_for
from driftless.window import Window


@dataclass
class ReplayResult:
    """What a replay did: entries considered, loaded, still failing, superseded (dropped as stale)."""

    pipeline: str
    run_id: str
    considered: int = 0
    loaded: int = 0
    still_failing: int = 0
    superseded: int = 0
    written: int = 0

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def newer_in_target(conn: Connection, target: Table, spec: PipelineSpec, good: pa.Table) -> np.ndarray:
    """Which rows of ``good`` the target already holds in a newer version (by the cursor)."""
    keys = list(spec.source.primary_key)
    cursor = spec.source.cursor
    frame = good.select([*keys, cursor]).to_pandas()
    newer = np.zeros(len(frame), dtype=bool)
    if frame.empty:
        return newer
    key_cols = [target.c[k] for k in keys]
    found: dict[tuple, Any] = {}
    values = [tuple(v.item() if hasattr(v, "item") else v for v in row) for row in frame[keys].itertuples(index=False)]
    for start in range(0, len(values), BATCH):
        batch = values[start:start + BATCH]
        cond = key_cols[0].in_([v[0] for v in batch]) if len(keys) == 1 else tuple_(*key_cols).in_(batch)
        for row in conn.execute(select(*key_cols, target.c[cursor]).where(cond)):
            found[tuple(row[:-1])] = row[-1]
    for i, key in enumerate(values):
        if key in found and found[key] is not None and pd.notna(frame[cursor].iat[i]):
            mine = pd.Timestamp(frame[cursor].iat[i])
            theirs = pd.Timestamp(found[key])
            mine = mine.tz_localize("UTC") if mine.tzinfo is None else mine.tz_convert("UTC")
            theirs = theirs.tz_localize("UTC") if theirs.tzinfo is None else theirs.tz_convert("UTC")
            newer[i] = theirs > mine
    return newer


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Quarantined records as a chunk of object columns, as a source hands them over.

    ``pd.DataFrame.from_records`` would make a column of numbers and nulls a float column, where a NULL and
    a NaN that was quarantined as a value (``to_json_value``) both become NaN, and NaN there means NULL.
    """
    columns = list(dict.fromkeys(name for record in records for name in record))
    return pd.DataFrame({name: pd.Series([record.get(name) for record in records], dtype=object)
                         for name in columns})


def replay(spec: PipelineSpec, run_id: str | None = None) -> ReplayResult:
    """Re-validate the pipeline's quarantined records under the current spec and load those that pass.

    The rows load through the one load (``driftless.load.entry.load_rows``) under the target's write mode
    (``append`` leaves keys already in the target alone; a soft-deleted row that returns is undeleted).
    Loading, removing the loaded entries from quarantine and the run record commit in one transaction;
    an entry changed by a concurrent load meanwhile aborts the replay (run it again).
    """
    run_id = run_id or f"replay__{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:8]}"
    result = ReplayResult(spec.name, run_id)
    loader = loader_for(resolve_url(spec.target.connection))
    schema = spec.target.db_schema
    started = datetime.now(UTC)
    try:
        entries = list_quarantine(loader.engine, spec)
        result.considered = len(entries)
        if not entries:
            return result
        frame = records_frame([e["record"] for e in entries])
        checked = Validator(spec).validate(frame)
        index = checked.index.copy()
        index["_seq"] = np.arange(len(index))
        losers = dedup_losers(index, list(spec.source.primary_key), list(spec.dedup.order_by or [spec.source.cursor]),
                              spec.dedup.keep)
        good_rows = np.flatnonzero(index["_good"].to_numpy())
        bad_rows = np.flatnonzero(~index["_good"].to_numpy())
        q = quarantine_table(schema)

        def rows(conn: Connection, load: LoadResult) -> list[pa.Table]:
            """The good rows, less those the target holds in a newer version (looked at inside the load)."""
            stale = losers[good_rows] | newer_in_target(conn, load.target, spec, checked.good)
            result.superseded = int(stale.sum())
            return [checked.good.filter(pa.array(~stale))]

        def then(conn: Connection, load: LoadResult) -> dict[str, Any]:
            done = [{"b_id": entries[i]["id"], "b_seen": entries[i]["last_seen"]} for i in good_rows]
            if done:
                deleted = conn.execute(
                    delete(q).where(and_(q.c.id == bindparam("b_id"), q.c.last_seen == bindparam("b_seen"))), done
                ).rowcount
                if deleted != len(done):
                    raise LoadError(f"pipeline {spec.name!r}: quarantine entries changed during the replay "
                                    "(a load ran meanwhile); nothing was replayed, run the replay again")
            refreshed = [{"b_id": entries[i]["id"], "errors": checked.rejects["errors"].iat[int(index["_pos"].iat[i])]}
                         for i in bad_rows]
            if refreshed:
                conn.execute(update(q).where(q.c.id == bindparam("b_id")).values(errors=bindparam("errors")),
                             refreshed)
            return {"extracted": result.considered, "quarantined": len(bad_rows), "deduplicated": result.superseded}

        window = Window(min(e["window_start"] for e in entries), max(e["window_end"] for e in entries))
        run = RunRecord(run_id, window, Run.REPLAY, started, fields={
            "message": f"replayed {result.considered} quarantined records"})
        # No window: nothing counts as deleted, and replace writes by key (driftless.load.modes.write_mode_for).
        load = load_rows(spec, rows, run=run, then=then, loader=loader)
        result.loaded, result.written, result.still_failing = load.loaded, load.written, len(bad_rows)
    finally:
        loader.dispose()
    return result
