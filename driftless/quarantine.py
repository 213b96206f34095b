"""Quarantine: rows that fail validation are kept, with their reasons, and can be loaded once fixed.

Extract (``ValidatingWriter``): each chunk is validated; good rows go to the staging files as before,
rejected rows to ``quarantine-*.parquet`` files in the same staging directory and manifest. At the end
of the window, rows with one primary key are reduced to one (the latest by ``dedup.order_by``, default
the cursor; ties by arrival), so every extracted row is exactly one of: loaded, quarantined, deduplicated.

Load (``write_quarantine``): inside the load transaction, rejected rows are upserted into
``etl_quarantine`` in the target database (one entry per pipeline and primary key, or per record when
the key itself is invalid; ``first_seen``/``last_seen``/``times_seen`` track repeats).

Replay (``replay``): re-runs transforms and validation on a pipeline's quarantined records under the
current spec; the rows that pass are loaded and removed from quarantine in one transaction, so a second
replay finds nothing to load. A quarantined row older than the target's row for the same key (by the
cursor) is removed as superseded instead of overwriting newer data; so is an entry whose key a later
window loads with a cursor at least as recent (the row was fixed at the source).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import uuid
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import mysql

from driftless.connections import resolve_url
from driftless.errors import DriftlessError, LoadError, ValidationFailed
from driftless.extract.dedup import SpilledIndex
from driftless.extract.staging import Manifest, StagingWriter, write_parquet
from driftless.extract.transform import convert_column, convert_for
from driftless.extract.validate import ChunkResult, Validator
from driftless.load.entry import LoadResult, RunRecord, load_rows
from driftless.schema import UTC_TIMESTAMP
from driftless.spec import PipelineSpec, find_spec
from driftless.state import as_utc
from driftless.status import Run
from driftless.targets.loaders import loader_for
from driftless.window import Window

log = logging.getLogger(__name__)

QUARANTINE_TABLE = "etl_quarantine"
BATCH = 500
RESOLVE_MAX = 50_000
TOP_REASONS = 5



def quarantine_table(schema: str | None = None) -> Table:
    """``etl_quarantine``: one row per rejected record (per pipeline and key) with the reasons."""
    return Table(
        QUARANTINE_TABLE,
        MetaData(schema=schema),
        Column("id", Integer().with_variant(BigInteger(), "postgresql", "mysql", "mariadb"), primary_key=True,
               autoincrement=True),
        Column("pipeline", String(128), nullable=False),
        Column("entry_key", String(64), nullable=False, comment="sha256 of the key values (or of the record)"),
        Column("record_key", Text, comment="JSON list of the primary key values; null when the key is invalid"),
        Column("run_id", String(255), nullable=False),
        Column("window_start", UTC_TIMESTAMP, nullable=False),
        Column("window_end", UTC_TIMESTAMP, nullable=False),
        Column("record", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False,
               comment="the record as extracted, JSON"),
        Column("errors", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False,
               comment="JSON list of {column, check, message}"),
        Column("first_seen", UTC_TIMESTAMP, nullable=False),
        Column("last_seen", UTC_TIMESTAMP, nullable=False),
        Column("times_seen", Integer, nullable=False),
        UniqueConstraint("pipeline", "entry_key", name="uq_etl_quarantine_entry"),
    )


def ensure_quarantine_table(engine: Engine, schema: str | None = None) -> None:
    with engine.begin() as conn:
        if not inspect(conn).has_table(QUARANTINE_TABLE, schema=schema):
            quarantine_table(schema).create(conn, checkfirst=True)


# ---------------------------------------------------------------------------------------------------------
# Extract side
# ---------------------------------------------------------------------------------------------------------


def dedup_losers(index: pd.DataFrame, keys: list[str], order: list[str], keep: str) -> np.ndarray:
    """Rows of ``index`` that another row with the same identity supersedes (see ``ChunkResult.index``)."""
    losers = np.zeros(len(index), dtype=bool)
    valid = index["_ident"].isna().to_numpy()
    by_key = index[valid]
    if len(by_key) and by_key.duplicated(subset=keys).any():
        ordered = by_key.sort_values([*order, "_seq"], na_position="first", kind="stable")
        losers[ordered.index[ordered.duplicated(subset=keys, keep=keep)].to_numpy()] = True
    by_record = index[~valid]
    if len(by_record):
        losers[by_record.index[by_record.duplicated(subset=["_ident"], keep=keep)].to_numpy()] = True
    return losers


class ValidatingWriter:
    """Validates chunks and writes them to staging: good rows as ``part-*``, rejects as ``quarantine-*``.

    Usage (what ``extract_window`` does)::

        staged = ValidatingWriter(spec, StagingWriter(...))
        for frame in source.read(window):
            good = staged.write(frame)      # the Arrow chunk to be loaded
        manifest = staged.close(max_cursor)
    """

    def __init__(self, spec: PipelineSpec, writer: StagingWriter) -> None:
        self.spec = spec
        self.writer = writer
        self.validator = Validator(spec)
        self.manifest = writer.manifest
        self.manifest.extracted = self.manifest.records
        # On disk, so that memory stays bounded by chunk_size whatever the window's size (driftless.extract.dedup).
        self._index = SpilledIndex(Path(writer.directory) / "dedup-index", list(spec.source.primary_key))
        self._seq = 0
        saved = (writer.checkpoint or {}).get("validation")
        if saved is not None or self.manifest.files:
            self._resume(saved or {})

    def _resume(self, saved: dict[str, Any]) -> None:
        """Continue an interrupted extraction (resumable sources): restore counts, rebuild the dedup index.

        Rows staged before the interruption take part in deduplication by key when they were loaded and
        by quarantine identity when they were rejected; a key rejected before and loaded after the
        interruption is not reduced (both outcomes stay, each counted once).
        """
        m = self.manifest
        m.quarantine_files = list(saved.get("quarantine_files", []))
        m.quarantined = int(saved.get("quarantined", 0))
        m.reasons = dict(saved.get("reasons", {}))
        m.extracted = m.records + m.quarantined
        for leftover in Path(self.writer.directory).glob("quarantine-*.parquet"):
            if leftover.name not in m.quarantine_files:
                leftover.unlink()
        keys = list(self.spec.source.primary_key)
        columns = list(dict.fromkeys([*keys, *self.validator.order]))
        types = {c.name: c.type for c in self.spec.columns}
        for part, name in enumerate(m.files):
            frame = pq.read_table(Path(self.writer.directory) / name, columns=columns).to_pandas()
            index = pd.DataFrame({c: convert_column(frame[c], types[c]).values for c in columns})
            self._add_index(index.assign(_good=True, _pos=np.arange(len(index)), _ident=None, _part=part))
        for part, name in enumerate(m.quarantine_files):
            idents = pq.read_table(Path(self.writer.directory) / name, columns=["entry_key"]).column("entry_key")
            index = pd.DataFrame({c: pd.Series([None] * len(idents), dtype=object) for c in columns})
            self._add_index(index.assign(_good=False, _pos=np.arange(len(index)), _ident=idents.to_pylist(),
                                         _part=part))

    def _add_index(self, index: pd.DataFrame) -> None:
        index["_seq"] = np.arange(self._seq, self._seq + len(index))
        self._seq += len(index)
        self._index.add(index)

    def save_progress(self, checkpoint: dict[str, Any]) -> None:
        """Record a resume point after the chunks staged so far (what ``StagingWriter`` resumes from)."""
        m = self.manifest
        state = {"quarantine_files": m.quarantine_files, "quarantined": m.quarantined, "reasons": m.reasons}
        self.writer.save_progress(checkpoint | {"validation": state})

    def write(self, frame: pd.DataFrame) -> pa.Table:
        result: ChunkResult = self.validator.validate(frame)
        m = self.manifest
        m.extracted = (m.extracted or 0) + len(frame)
        index = result.index
        index["_part"] = -1
        if result.good.num_rows:
            index.loc[index["_good"], "_part"] = len(m.files)
            self.writer.write(result.good)
        if len(result.rejects):
            index.loc[~index["_good"], "_part"] = len(m.quarantine_files)
            name = f"quarantine-{len(m.quarantine_files):05d}.parquet"
            write_parquet(pa.Table.from_pandas(result.rejects, preserve_index=False), self.writer.directory / name)
            m.quarantine_files.append(name)
            m.quarantined += len(result.rejects)
            for reason, count in result.reasons.items():
                m.reasons[reason] = m.reasons.get(reason, 0) + count
        self._add_index(index)
        return result.good

    def close(self, max_cursor: str | None, metrics: dict | None = None) -> Manifest:
        self._deduplicate()
        m = self.manifest
        if m.extracted != m.records + m.quarantined + m.deduplicated:
            raise LoadError(f"pipeline {self.spec.name!r}: extracted {m.extracted} records but staged "
                            f"{m.records} + quarantined {m.quarantined} + deduplicated {m.deduplicated}")
        return self.writer.close(max_cursor, metrics)

    def _deduplicate(self) -> None:
        keys = list(self.spec.source.primary_key)
        order = self.validator.order
        try:
            gone = self._index.losers(lambda index: dedup_losers(index, keys, order, self.spec.dedup.keep))
        finally:
            self._index.close()
        if gone.empty:
            return
        m = self.manifest
        for (good, part), rows in gone.groupby(["_good", "_part"]):
            names = m.files if good else m.quarantine_files
            path = Path(self.writer.directory) / names[int(part)]
            table = pq.read_table(path)
            keep = np.ones(table.num_rows, dtype=bool)
            keep[rows["_pos"].to_numpy(dtype=int)] = False
            pq.write_table(table.filter(pa.array(keep)), path)
        good_gone = int(gone["_good"].sum())
        m.records -= good_gone
        m.quarantined -= len(gone) - good_gone
        m.deduplicated = len(gone)
        if len(gone) - good_gone:
            m.reasons = dict(_reasons_of(Path(self.writer.directory), m.quarantine_files))


def _reasons_of(directory: Path, files: list[str]) -> Counter:
    reasons: Counter = Counter()
    for name in files:
        for errors in pq.read_table(directory / name, columns=["errors"]).column("errors").to_pylist():
            for e in json.loads(errors):
                reasons[f"{e['column'] or '(row)'}: {e['check']}"] += 1
    return reasons


def top_reasons(reasons: dict[str, int], n: int = TOP_REASONS) -> str:
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return "; ".join(f"{reason} ({count})" for reason, count in ranked)


def check_reject_ratio(spec: PipelineSpec, window: Window, manifest: Manifest) -> None:
    """Raise ``ValidationFailed`` when the window rejects too much: more than ``max_reject_ratio``, or all.

    A window that rejects some records and would load none never succeeds, whatever the ratio allows.
    Called before any write: the message says what failed and how (top reasons, sample keys), since
    the staged rejects are not kept once a CLI run ends.
    """
    limit = spec.max_reject_ratio
    extracted = manifest.extracted or 0
    if extracted == 0 or manifest.quarantined == 0:
        return
    ratio = manifest.quarantined / extracted
    nothing_left = manifest.records == 0
    if ratio <= limit and not nothing_left:
        return
    why = ("every record that was not a duplicate failed validation, so the window would load nothing; such a "
           "window always fails, whatever max_reject_ratio says" if nothing_left
           else f"above max_reject_ratio {limit:g}")
    raise ValidationFailed(
        f"pipeline {spec.name!r}, window {window.key}: {manifest.quarantined} of {extracted} records "
        f"({ratio:.1%}) failed validation, {why}. Nothing was written (no rows, no etl_quarantine entries) "
        f"and the watermark stays. Top reasons: {top_reasons(manifest.reasons)}. {_sample_keys(spec, manifest)}"
        "Fix the source data or the spec, then run the window again"
        + ("" if nothing_left else f"; or raise max_reject_ratio (now {limit:g}; 1 accepts any share) to load "
           "the good records and keep the rejected ones in etl_quarantine for `etl quarantine replay`")
    )


def _sample_keys(spec: PipelineSpec, manifest: Manifest, n: int = 3) -> str:
    """``First rejected: key [7]: amount: numeric; ...`` (keys and failed checks, never values)."""
    samples: list[str] = []
    try:
        for name in manifest.quarantine_files:
            table = pq.read_table(Path(manifest.directory) / name, columns=["record_key", "errors"])
            for key, errors in zip(table.column("record_key").to_pylist(), table.column("errors").to_pylist(),
                                   strict=True):
                failed = ", ".join(dict.fromkeys(f"{e['column'] or '(row)'}: {e['check']}"
                                                 for e in json.loads(errors)))
                samples.append(f"{'/'.join(spec.source.primary_key)} {key or '(invalid key)'}: {failed}")
                if len(samples) == n:
                    break
            if len(samples) == n:
                break
    except (OSError, pa.ArrowException, ValueError, KeyError):
        return ""
    return f"First rejected: {'; '.join(samples)}. " if samples else ""


def quarantined_rows(manifest: Manifest) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in manifest.quarantine_files:
        path = Path(manifest.directory) / name
        try:
            rows += pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise LoadError(f"staging file {path} is unreadable ({exc}); re-run the extract step") from exc
    return rows


# ---------------------------------------------------------------------------------------------------------
# Load side
# ---------------------------------------------------------------------------------------------------------


def _upsert_entries(conn: Connection, spec: PipelineSpec, rows: list[dict[str, Any]], run_id: str,
                    window_start: datetime, window_end: datetime, now: datetime) -> None:
    """Insert new entries; refresh (record, errors, last_seen, times_seen) of entries seen before.

    Portable on purpose (select, then update or insert): the caller holds the target's load lock.
    """
    q = quarantine_table(spec.target.db_schema)
    for start in range(0, len(rows), BATCH):
        batch = {r["entry_key"]: r for r in rows[start:start + BATCH]}
        existing = dict(conn.execute(
            select(q.c.entry_key, q.c.id).where(q.c.pipeline == spec.name, q.c.entry_key.in_(list(batch)))
        ).all())
        updates = [{"b_id": existing[k], "record": r["record"], "errors": r["errors"], "record_key": r["record_key"],
                    "run_id": run_id, "window_start": window_start, "window_end": window_end, "last_seen": now}
                   for k, r in batch.items() if k in existing]
        inserts = [{"pipeline": spec.name, "entry_key": k, "record_key": r["record_key"], "run_id": run_id,
                    "window_start": window_start, "window_end": window_end, "record": r["record"],
                    "errors": r["errors"], "first_seen": now, "last_seen": now, "times_seen": 1}
                   for k, r in batch.items() if k not in existing]
        if updates:
            conn.execute(
                update(q).where(q.c.id == bindparam("b_id")).values(
                    record=bindparam("record"), errors=bindparam("errors"), record_key=bindparam("record_key"),
                    run_id=bindparam("run_id"), window_start=bindparam("window_start"),
                    window_end=bindparam("window_end"), last_seen=bindparam("last_seen"),
                    times_seen=q.c.times_seen + 1),
                updates,
            )
        if inserts:
            conn.execute(insert(q), inserts)


def write_quarantine(conn: Connection, spec: PipelineSpec, window: Window, run_id: str, manifest: Manifest) -> int:
    """Upsert the window's rejected records into ``etl_quarantine`` (in the load transaction); returns them."""
    rows = quarantined_rows(manifest)
    if len(rows) != manifest.quarantined:
        raise LoadError(f"staging holds {len(rows)} quarantined records but the extract reported "
                        f"{manifest.quarantined}; re-run the extract step")
    if rows:
        _upsert_entries(conn, spec, rows, run_id, window.start, window.end, datetime.now(UTC))
    resolved = resolve_loaded(conn, spec, manifest)
    if resolved:
        log.info("pipeline %s: %d quarantined record(s) resolved by rows loaded in this window", spec.name, resolved)
    return len(rows)


def resolve_loaded(conn: Connection, spec: PipelineSpec, manifest: Manifest) -> int:
    """Remove quarantine entries whose key this window loaded with a cursor at least as recent.

    Such an entry was fixed at the source (a good version of the row arrived); keeping it would only
    offer a stale record for replay. Skipped when the pipeline has more than ``RESOLVE_MAX`` entries.
    """
    q = quarantine_table(spec.target.db_schema)
    has_key = and_(q.c.pipeline == spec.name, q.c.record_key.is_not(None))
    count = conn.execute(select(func.count()).select_from(q).where(has_key)).scalar_one()
    if count == 0 or manifest.records == 0:
        return 0
    if count > RESOLVE_MAX:
        log.warning("pipeline %s: %d quarantined records; not checking which of them this window resolved",
                    spec.name, count)
        return 0
    keys, cursor = list(spec.source.primary_key), spec.source.cursor
    types = {c.name: c.type for c in spec.columns}
    entries = conn.execute(select(q.c.id, q.c.record_key, q.c.record).where(has_key)).all()
    wanted = pd.DataFrame([json.loads(e.record_key) for e in entries], columns=keys)
    wanted["_id"] = [e.id for e in entries]
    wanted["_cursor"] = [json.loads(e.record).get(cursor) for e in entries]
    for name in keys:
        wanted[name] = convert_column(wanted[name].astype(object), types[name]).values
    wanted["_cursor"] = convert_for(spec.column(cursor), wanted["_cursor"].astype(object)).values  # as extracted
    resolved: set[int] = set()
    for name in manifest.files:
        staged = pq.read_table(Path(manifest.directory) / name, columns=list(dict.fromkeys([*keys, cursor])))
        frame = staged.to_pandas()
        loaded = pd.DataFrame({k: convert_column(frame[k], types[k]).values for k in keys})
        loaded["_loaded_cursor"] = convert_column(frame[cursor], types[cursor]).values
        hits = wanted.merge(loaded, on=keys, how="inner")
        newer = hits["_cursor"].isna() | (hits["_loaded_cursor"] >= hits["_cursor"])
        resolved.update(int(i) for i in hits.loc[newer.fillna(False), "_id"])
    if resolved:
        conn.execute(delete(q).where(q.c.id.in_(sorted(resolved))))
    return len(resolved)


def reasons_of_entry(errors: list[dict[str, Any]]) -> list[str]:
    """An entry's reasons as ``"column: check"`` (``"(row): check"`` for a row-level failure)."""
    return [f"{e.get('column') or '(row)'}: {e.get('check')}" for e in errors]


def _matches(errors: list[dict[str, Any]], reason: str) -> bool:
    """Whether one of the errors has ``reason`` as its check, its column or its ``column: check``."""
    return any(reason in (e.get("check"), e.get("column") or "(row)", text)
               for e, text in zip(errors, reasons_of_entry(errors), strict=True))


def iter_quarantine(engine: Engine, spec: PipelineSpec, *, run_id: str | None = None, window: Window | None = None,
                    reason: str | None = None) -> Generator[dict[str, Any], None, None]:
    """The pipeline's quarantined records, oldest first (errors and record decoded from JSON), streamed.

    Filters: ``run_id`` (the run that last saw the record), ``window`` (records last seen by a run of a
    window inside it), ``reason`` (see ``_matches``).
    """
    schema = spec.target.db_schema
    if not inspect(engine).has_table(QUARANTINE_TABLE, schema=schema):
        return
    q = quarantine_table(schema)
    stmt = select(q).where(q.c.pipeline == spec.name).order_by(q.c.id)
    if run_id is not None:
        stmt = stmt.where(q.c.run_id == run_id)
    if window is not None:
        stmt = stmt.where(q.c.window_start >= window.start, q.c.window_end <= window.end)
    with engine.connect() as conn:
        for mapping in conn.execution_options(yield_per=BATCH).execute(stmt).mappings():
            row = dict(mapping)
            row["record"] = json.loads(row["record"])
            row["errors"] = json.loads(row["errors"])
            row["record_key"] = json.loads(row["record_key"]) if row["record_key"] else None
            if reason is None or _matches(row["errors"], reason):
                yield row


def list_quarantine(engine: Engine, spec: PipelineSpec, limit: int | None = None,
                    **filters: Any) -> list[dict[str, Any]]:
    """The pipeline's quarantined records, oldest first, at most ``limit``; filters as ``iter_quarantine``."""
    entries = iter_quarantine(engine, spec, **filters)
    try:
        return list(islice(entries, limit) if limit else entries)
    finally:
        entries.close()


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


def _newer_in_target(conn: Connection, target: Table, spec: PipelineSpec, good: pa.Table) -> np.ndarray:
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
        frame = pd.DataFrame.from_records([e["record"] for e in entries])
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
            stale = losers[good_rows] | _newer_in_target(conn, load.target, spec, checked.good)
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


def _plain_json(value: Any) -> Any:
    """A value for a JSON line: NaN/NA as null (never ``NaN``/``nan``), datetimes as ISO-8601 UTC."""
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    return value


LIST_FIELDS = ("id", "record_key", "errors", "record", "run_id", "window_start", "window_end", "first_seen",
               "last_seen", "times_seen")


def quarantine_command(args: Any) -> int:
    """``etl quarantine list|replay PIPELINE`` (see ``driftless.cli``)."""
    spec = find_spec(args.pipeline, args.specs_dir)
    if args.quarantine_command == "replay":
        print(json.dumps(replay(spec, run_id=args.run_id).summary(), default=str))
        return 0
    window = None
    if args.window:
        start, sep, end = args.window.partition("/")
        if not sep or not start or not end:
            raise DriftlessError(f"--window: {args.window!r} is not START/END (e.g. 2025-01-01/2025-01-02)")
        window = Window.parse(start, end)
    loader = loader_for(resolve_url(spec.target.connection))
    summary: Counter = Counter()
    shown = 0
    try:
        entries = iter_quarantine(loader.engine, spec, run_id=args.run, window=window, reason=args.reason)
        try:
            for entry in entries:
                if args.summary:
                    summary.update(reasons_of_entry(entry["errors"]))
                    shown += 1
                    continue
                if args.limit and shown >= args.limit:
                    break
                print(json.dumps(_plain_json({k: entry[k] for k in LIST_FIELDS}), ensure_ascii=False,
                                 allow_nan=False, default=str))
                shown += 1
        finally:
            entries.close()
    finally:
        loader.dispose()
    if args.summary:
        for reason, count in sorted(summary.items(), key=lambda kv: (-kv[1], kv[0])):
            column, _, check = reason.partition(": ")
            print(json.dumps({"column": None if column == "(row)" else column, "check": check, "records": count},
                             ensure_ascii=False))
    print(f"{shown} quarantined record(s) for pipeline {spec.name!r}", file=sys.stderr)
    return 0
