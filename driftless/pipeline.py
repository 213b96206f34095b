"""Run one window of one pipeline end to end: the only place that sequences the steps.

extract (source -> transform -> validate -> stage per chunk, then dedup over the window: ``_extract``) ->
load (staging -> target, with state and run record in one transaction) -> reconcile (counts).
The CLI calls ``run_window``; the DAG tasks call the three steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pyarrow.compute as pc
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from driftless import metrics
from driftless.connections import resolve_url
from driftless.errors import DriftlessError, LoadError, error_detail
from driftless.extract.rejects import check_reject_ratio
from driftless.extract.staging import Manifest, owned_run_dir, prune_stale, staging_root
from driftless.failpoints import failpoint
from driftless.load.entry import LoadResult, RunRecord, load_rows
from driftless.logs import event
from driftless.quarantine.store import ensure_quarantine_table, write_quarantine
from driftless.reconcile.checks import ChecksFailed, run_window_checks, staged_sums
from driftless.redact import redact_url
from driftless.schema import target_table
from driftless.sources.base import Acknowledges, Closable, CountsWindow, KeepsTargetState, Metered, Resumable, Source
from driftless.sources.files.manifest import FilesTargetState
from driftless.spec import PipelineSpec
from driftless.state import ensure_state_tables, record_run
from driftless.status import Run
from driftless.targets.loaders import loader_for
from driftless.window import Window

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: What a load asks of a source type without a connector instance, and without importing the connector (the
#: connectors read with pandas; a load, as in an Airflow load task, never does): the class keeping the type's state in
#: the target (``KeepsTargetState``). ``tests/test_architecture.py`` checks these against the connectors.
TARGET_STATE: dict[str, type[KeepsTargetState]] = {"file": FilesTargetState}
#: Source types whose connector ``Acknowledges``: loaded only by the instance that consumed the messages.
ACKNOWLEDGING = frozenset({"queue"})


def new_run_id() -> str:
    return f"cli__{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:8]}"


def source_classes() -> dict[str, type]:
    """The connector class of each source type (``driftless.sources.base.Source``, with its capabilities)."""
    # Imported here: the connectors read with pandas; importing this module (a load task) stays without it.
    from driftless.sources.files.source import FileSource
    from driftless.sources.queues.source import QueueSource
    from driftless.sources.rest.source import RestSource
    from driftless.sources.sql.source import SqlSource

    return {"sql": SqlSource, "rest": RestSource, "file": FileSource, "queue": QueueSource}


def source_for(spec: PipelineSpec) -> Source:
    """The connector for the spec's ``source.type`` (``driftless.sources.base.Source``, with its capabilities)."""
    return cast(Source, source_classes()[spec.source.type](spec))


def staging_dir(spec: PipelineSpec, window: Window, run_id: str, root: Path | None = None) -> Path:
    safe_run = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:120]
    return (root or staging_root()) / spec.name / window.key / safe_run


@dataclass
class WindowResult:
    """What a window's run did; ``summary()`` is the JSON line the CLI prints."""

    pipeline: str
    window: Window
    run_id: str
    status: str = Run.SUCCESS  # driftless.status.Run: checks_failed once a check FAILs or cannot run
    extracted: int = 0
    loaded: int = 0
    written: int = 0
    quarantined: int = 0
    deduplicated: int = 0
    schema_changes: list[str] = field(default_factory=list)
    watermark: datetime | None = None
    duration_s: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    staged_sums: dict[str, Any] = field(default_factory=dict)  # the extract's sums, for sources that cannot sum

    def summary(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "window": self.window.as_dict(),
            "status": self.status,
            "extracted": self.extracted,
            "loaded": self.loaded,
            "written": self.written,
            "quarantined": self.quarantined,
            "deduplicated": self.deduplicated,
            "schema_changes": self.schema_changes,
            "duration_s": round(self.duration_s, 3),
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "run_id": self.run_id,
            "checks": self.checks,
            **({"metrics": self.metrics} if self.metrics else {}),  # what a REST source's request loop did
        }

    def to_xcom(self) -> dict[str, Any]:
        data = asdict(self)
        data["window"] = self.window.as_dict()
        data["watermark"] = self.watermark.isoformat() if self.watermark else None
        return data

    @classmethod
    def from_xcom(cls, data: dict[str, Any]) -> WindowResult:
        data = dict(data)
        data["window"] = Window.parse(data["window"]["start"], data["window"]["end"])
        data["watermark"] = datetime.fromisoformat(data["watermark"]) if data["watermark"] else None
        return cls(**data)


def _as_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def extract_window(spec: PipelineSpec, window: Window, run_id: str, root: Path | None = None,
                   frames: Iterable[pd.DataFrame] | None = None, source: Any = None) -> Manifest:
    """Read the window from the source into staging files; returns their manifest.

    ``frames`` replaces the source's chunks (tests, replays of files); by default the spec's source is read
    (``source``: that connector instance, when the caller needs it after the load, as queue sources do).
    A failed extract leaves a ``failed`` run record in the target (best effort) and raises.
    """
    started_at, t0 = datetime.now(UTC), time.monotonic()
    try:
        manifest = _extract(spec, window, run_id, root, frames, started_at, source)
    except (DriftlessError, SQLAlchemyError, OSError) as exc:
        detail = str(exc) if isinstance(exc, DriftlessError) else error_detail(exc)
        _record_failure(spec, window, run_id, started_at, f"extract failed: {detail}")
        metrics.emit_failure(spec.name)
        raise
    metrics.emit(spec.name, metrics.extract_values(manifest, time.monotonic() - t0))
    return manifest


@functools.cache
def _fixed_mmap_threshold() -> None:
    """Keep glibc's malloc from growing the heap chunk after chunk (Linux; once per process).

    glibc serves an allocation above its mmap threshold (128 KiB) with its own mapping, returned to the OS when
    freed, but each such free raises the threshold (up to 32 MiB), after which a chunk's column buffers come from
    the heap and their freed space stays resident: a 1M-row window peaked ~40 MB higher. Fixing the threshold
    keeps it at 128 KiB. An explicit ``MALLOC_MMAP_THRESHOLD_`` in the environment is left as it is.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: set explicitly, it no longer adjusts itself
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to do
        pass


def _extract(spec: PipelineSpec, window: Window, run_id: str, root: Path | None,
             frames: Iterable[pd.DataFrame] | None, started_at: datetime, source: Any = None) -> Manifest:
    """Read -> transform -> validate -> stage, chunk by chunk; then dedup over the window's staged rows."""
    # Imported here: the extract's steps work on pandas (and pandera); a load imports this module without them.
    from driftless.extract.dedup import WindowDedup
    from driftless.extract.staging import StagingWriter
    from driftless.extract.transform import transform_chunk
    from driftless.extract.validate import Validator

    started = time.monotonic()
    _fixed_mmap_threshold()
    if source is None and frames is None:
        source = source_for(spec)
    # Resumable sources (REST) continue a failed attempt of this run from their last staged chunk.
    resumable = source if isinstance(source, Resumable) else None
    writer = StagingWriter(staging_dir(spec, window, run_id, root), spec.name,
                           window.start.isoformat(), window.end.isoformat(), resume=resumable is not None)
    validator = Validator(spec)  # the spec's checks, compiled once per window
    dedup = WindowDedup(spec, writer)  # on disk; a resumed extract re-reads what was staged
    progress = writer.checkpoint or {}
    max_cursor = _as_datetime(datetime.fromisoformat(progress["max_cursor"]) if progress.get("max_cursor") else None)
    if resumable is not None:
        resumable.resume_from(progress.get("source"), writer.manifest.tables)
    try:
        for frame in source.read(window) if source is not None else cast("Iterable[pd.DataFrame]", frames):
            transformed = transform_chunk(frame, spec)  # transform: rename, cast, derive, function, drop
            checked = validator.check(transformed)  # validate: spec types and checks; rows to load, rows rejected
            parts = writer.stage(checked.good, checked.rejects, checked.reasons)  # stage: part-*, quarantine-*
            dedup.add(checked.index, parts)  # dedup needs every staged row's identity (applied at the window's end)
            if checked.good.num_rows:
                chunk_max = _as_datetime(pc.max(checked.good[spec.source.cursor]).as_py())
                if chunk_max is not None and (max_cursor is None or chunk_max > max_cursor):
                    max_cursor = chunk_max
            if resumable is not None:  # resume point, written after the chunk it covers
                writer.save_progress({"source": resumable.checkpoint,
                                      "max_cursor": max_cursor and max_cursor.isoformat()})
            event(log, "extracted chunk", pipeline=spec.name, rows=writer.manifest.records,
                  chunks=len(writer.manifest.files), elapsed_s=round(time.monotonic() - started, 2))
    except BaseException:
        dedup.abandon()
        raise
    dedup.apply()  # dedup: one row per key stays in the staged files (the latest by dedup.order_by)
    writer.manifest.read_at = started_at.isoformat()
    manifest = writer.close(max_cursor.isoformat() if max_cursor else None,
                            source.metrics if isinstance(source, Metered) else None)
    if spec.reconcile.sum_columns and not isinstance(source, CountsWindow):
        # The checks cannot ask this source for the window's sums: take them from what was staged.
        manifest.sums = staged_sums(spec, window, manifest.tables())
        manifest = writer.close(manifest.max_cursor, manifest.metrics)
    event(log, "extract done", pipeline=spec.name, window=window.key, rows=manifest.records,
          quarantined=manifest.quarantined, deduplicated=manifest.deduplicated)
    return manifest


def load_window(spec: PipelineSpec, window: Window, manifest: Manifest, run_id: str,
                advance_watermark: bool = True, source: Any = None) -> WindowResult:
    """Merge the staged records into the target; data, watermark and run record commit together.

    ``source``: the connector instance that extracted the window; queue sources need it (it holds the
    consumed messages, recorded in ``etl_messages`` in this transaction).

    With ``advance_watermark=False`` (one slice of a partitioned window) the slice's data and run
    record commit and the watermark stays; ``airflow.partitions.finish_window`` moves it once every slice is in.
    """
    started_at = datetime.now(UTC)
    url = resolve_url(spec.target.connection)
    loader = loader_for(url)
    if manifest.directory and Path(manifest.directory).is_dir():  # bulk-load files stay in private staging
        loader.scratch_dir = manifest.directory
    schema = spec.target.db_schema
    extracted = manifest.records if manifest.extracted is None else manifest.extracted
    result = WindowResult(spec.name, window, run_id, extracted=extracted, deduplicated=manifest.deduplicated,
                          metrics=manifest.metrics, staged_sums=dict(manifest.sums))
    max_cursor = datetime.fromisoformat(manifest.max_cursor) if manifest.max_cursor else None
    # A window ending after the source was read (etl run --allow-future) moves the watermark only that far.
    read_at = datetime.fromisoformat(manifest.read_at) if manifest.read_at else None
    until = read_at if read_at is not None and read_at < window.end else None
    # Sources that keep state of their own in the target (file sources: etl_files; queues: etl_messages, the
    # instance's) write it in the load's transaction.
    keeper = source if isinstance(source, KeepsTargetState) else TARGET_STATE.get(spec.source.type)
    # Sources that acknowledge messages (queues) load in the process that consumed them, and load whatever
    # share of a window validation rejects: holding the messages back would redeliver them forever.
    acknowledges = spec.source.type in ACKNOWLEDGING
    if acknowledges and not isinstance(source, Acknowledges):
        raise LoadError(f"pipeline {spec.name!r}: a {spec.source.type} pipeline loads in the process that consumed "
                        "its messages (etl run; in Airflow its one sync task), not from staging files alone")

    def then(conn: Connection, load: LoadResult) -> dict[str, Any]:
        """In the load's transaction, after the merge: the counts add up, rejects go to quarantine."""
        if load.loaded != manifest.records:
            raise LoadError(f"staging holds {load.loaded} records but the extract reported {manifest.records}; "
                            "re-run the extract step")
        result.quarantined = write_quarantine(conn, spec, window, run_id, manifest)
        if extracted != load.loaded + result.quarantined + result.deduplicated:
            raise LoadError(
                f"extracted {extracted} records but loaded {load.loaded} + quarantined "
                f"{result.quarantined} + deduplicated {result.deduplicated}; re-run the extract step"
            )
        if keeper is not None:  # queue sources record the messages this instance consumed; file sources need none
            keeper.record_loaded(conn, spec, window, run_id, manifest)
        return {"quarantined": result.quarantined}

    run = RunRecord(run_id, window, Run.SUCCESS, started_at, advance_watermark=advance_watermark,
                    max_cursor=max_cursor, until=until,
                    fields={"extracted": extracted, "deduplicated": result.deduplicated,
                            "metrics": json.dumps(result.metrics) if result.metrics else None})
    try:
        if not acknowledges:  # queues quarantine what fails, however much (see above)
            check_reject_ratio(spec, window, manifest)  # above max_reject_ratio, or all rejected: no write
        ensure_quarantine_table(loader.engine, schema)
        if keeper is not None:
            keeper.prepare_target(loader.engine, schema)
        load = load_rows(spec, manifest.tables(), window=window, run=run, then=then, loader=loader)
    except (DriftlessError, SQLAlchemyError) as exc:
        message = str(exc)
        if isinstance(exc, SQLAlchemyError):
            message = (f"loading {target_table(spec).fullname!r} into {redact_url(url)} failed: "
                       f"{error_detail(exc, url)}")
        _record_failure(spec, window, run_id, started_at, message, loader, extracted=extracted,
                        quarantined=manifest.quarantined)
        loader.dispose()
        metrics.emit_failure(spec.name)
        if isinstance(exc, DriftlessError):
            raise
        raise LoadError(f"pipeline {spec.name!r}, window {window.key}: {message}") from exc
    loader.dispose()
    result.loaded, result.written, result.schema_changes = load.loaded, load.written, load.schema_changes
    result.watermark, result.duration_s = load.watermark, load.duration_s
    event(log, "load done", pipeline=spec.name, window=window.key, loaded=result.loaded, written=result.written)
    metrics.emit(spec.name, metrics.load_values(result))
    return result


def _record_failure(spec: PipelineSpec, window: Window, run_id: str, started_at: datetime, message: str,
                    loader: Any = None, extracted: int = 0, quarantined: int = 0) -> None:
    """Best effort: a failed attempt (extract or load) leaves a ``failed`` run record; nothing else was written."""
    own = loader is None
    try:
        if own:
            loader = loader_for(resolve_url(spec.target.connection))
        with loader.engine.begin() as conn:
            ensure_state_tables(conn, spec.target.db_schema)
            record_run(conn, spec.target.db_schema, run_id=run_id, pipeline=spec.name,
                       window_start=window.start, window_end=window.end, status=Run.FAILED, extracted=extracted,
                       loaded=0, written=0, quarantined=quarantined, started_at=started_at,
                       finished_at=datetime.now(UTC), duration_s=(datetime.now(UTC) - started_at).total_seconds(),
                       message=message[:2000])
    except Exception:  # the target may be the thing that is down
        log.warning("could not record the failed run of %s", spec.name)
    finally:
        if own and loader is not None:
            loader.dispose()


def reconcile_window(spec: PipelineSpec, result: WindowResult) -> WindowResult:
    """Checks of a committed window (``driftless.reconcile.checks``), stored in ``etl_reconciliation``.

    Raises ``ChecksFailed`` (carrying the result) when a check FAILs or cannot run; the run is then
    recorded as ``checks_failed``.
    """
    source: Source | None = None
    source_error = None
    t0 = time.monotonic()
    try:
        source = source_for(spec)
    except (DriftlessError, SQLAlchemyError) as exc:
        source_error = str(exc) if isinstance(exc, DriftlessError) else error_detail(exc)
    try:
        run_window_checks(spec, result, source, source_error)
    except ChecksFailed:
        metrics.emit(spec.name, metrics.reconcile_values(result, time.monotonic() - t0))
        raise
    finally:
        if isinstance(source, Closable):
            source.close()
    metrics.emit(spec.name, metrics.reconcile_values(result, time.monotonic() - t0))
    return result


def run_window(spec: PipelineSpec, window: Window, run_id: str | None = None) -> WindowResult:
    """Extract, load and reconcile one window (what ``etl run`` does)."""
    run_id = run_id or new_run_id()
    t0 = time.monotonic()
    prune_stale()  # staging left behind by killed runs
    # Staged under $DRIFTLESS_STAGING_DIR, locked by this process: removed at the end, or by a later
    # run's prune when this process is killed.
    # A source that acknowledges (queues) lives from its first message to the acknowledgement after the commit.
    consumer: Acknowledges | None = None
    if spec.source.type in ACKNOWLEDGING:
        consumer = cast(Acknowledges, source_for(spec))
    try:
        with owned_run_dir(staging_dir(spec, window, run_id)):
            manifest = extract_window(spec, window, run_id, source=consumer)
            failpoint("before_load")
            result = load_window(spec, window, manifest, run_id, source=consumer)
            if consumer is not None:
                failpoint("before_ack")
                consumer.acknowledge(result)
            failpoint("before_checks")
            result = reconcile_window(spec, result)
    finally:
        if isinstance(consumer, Closable):
            consumer.close()  # without acknowledge (a failure above), the broker delivers the messages again
    result.duration_s = time.monotonic() - t0
    return result
