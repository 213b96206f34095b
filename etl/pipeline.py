"""Run one window of one pipeline end to end: the only place that sequences the steps.

extract (source -> staging files) -> load (staging -> target, with state and run record in one
transaction) -> reconcile (counts). The CLI calls ``run_window``; the DAG tasks call the three steps.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pyarrow.compute as pc
from sqlalchemy.exc import SQLAlchemyError

from connectors.files.source import FileSource
from connectors.queues.source import QueueSource
from connectors.rest.source import RestSource
from connectors.sql import SqlSource
from etl import metrics
from etl.connections import redact, resolve_url
from etl.errors import DriftlessError, LoadError, driver_error_summary
from etl.faults import failpoint
from etl.load import loader_for
from etl.load.modes import write_mode_for
from etl.logs import event
from etl.quarantine import ValidatingWriter, check_reject_ratio, ensure_quarantine_table, write_quarantine
from etl.reconcile.digest import spec_digest_columns
from etl.schema import target_table
from etl.spec import PipelineSpec
from etl.staging import Manifest, StagingWriter, owned_run_dir, prune_stale, staging_root
from etl.state import advance_state, ensure_state_tables, record_run
from etl.status import Run
from etl.window import Window

log = logging.getLogger(__name__)

SOURCES = {"sql": SqlSource, "rest": RestSource, "file": FileSource, "queue": QueueSource}


def new_run_id() -> str:
    return f"cli__{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:8]}"


def source_for(spec: PipelineSpec):
    """The connector for the spec's ``source.type``."""
    return SOURCES[spec.source.type](spec)


def staging_dir(spec: PipelineSpec, window: Window, run_id: str, root: Path | None = None) -> Path:
    safe_run = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:120]
    return (root or staging_root()) / spec.name / window.key / safe_run


@dataclass
class WindowResult:
    """What a window's run did; ``summary()`` is the JSON line the CLI prints."""

    pipeline: str
    window: Window
    run_id: str
    status: str = Run.SUCCESS  # etl.status.Run: checks_failed once a check FAILs or cannot run
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
        from etl.reconcile.checks import error_detail

        detail = str(exc) if isinstance(exc, DriftlessError) else error_detail(exc)
        _record_failure(spec, window, run_id, started_at, f"extract failed: {detail}")
        metrics.emit_failure(spec.name)
        raise
    metrics.emit(spec.name, metrics.extract_values(manifest, time.monotonic() - t0))
    return manifest


def _extract(spec: PipelineSpec, window: Window, run_id: str, root: Path | None,
             frames: Iterable[pd.DataFrame] | None, started_at: datetime, source: Any = None) -> Manifest:
    started = time.monotonic()
    if source is None and frames is None:
        source = source_for(spec)
    # Resumable sources (REST) continue a failed attempt of this run from their last staged chunk.
    resumable = getattr(source, "resumable", False)
    writer = StagingWriter(staging_dir(spec, window, run_id, root), spec.name,
                           window.start.isoformat(), window.end.isoformat(), resume=resumable)
    staged = ValidatingWriter(spec, writer)  # transform + validate; rejects staged for quarantine
    progress = writer.checkpoint or {}
    max_cursor = _as_datetime(datetime.fromisoformat(progress["max_cursor"]) if progress.get("max_cursor") else None)
    if resumable:
        assert source is not None  # only a source built here can be resumable
        source.resume_from(progress.get("source"), writer.manifest.tables)
    for frame in source.read(window) if source is not None else cast(Iterable[pd.DataFrame], frames):
        chunk = staged.write(frame)
        if chunk.num_rows:
            chunk_max = _as_datetime(pc.max(chunk[spec.source.cursor]).as_py())
            if chunk_max is not None and (max_cursor is None or chunk_max > max_cursor):
                max_cursor = chunk_max
        if resumable:  # resume point, written after the chunk it covers
            assert source is not None
            staged.save_progress({"source": source.checkpoint, "max_cursor": max_cursor and max_cursor.isoformat()})
        event(log, "extracted chunk", pipeline=spec.name, rows=writer.manifest.records,
              chunks=len(writer.manifest.files), elapsed_s=round(time.monotonic() - started, 2))
    writer.manifest.read_at = started_at.isoformat()
    manifest = staged.close(max_cursor.isoformat() if max_cursor else None, getattr(source, "metrics", None))
    if spec.reconcile.sum_columns and getattr(source, "statement", None) is None:
        # The checks cannot ask this source for the window's sums: take them from what was staged.
        from etl.reconcile.checks import staged_sums

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
    record commit and the watermark stays; ``etl.partitions.finish_window`` moves it once every slice is in.
    """
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    url = resolve_url(spec.target.connection)
    loader = loader_for(url)
    if manifest.directory and Path(manifest.directory).is_dir():  # bulk-load files stay in private staging
        loader.scratch_dir = manifest.directory
    if spec.reconcile.row_digest:
        loader.row_digest = spec_digest_columns(spec)
    mode = write_mode_for(spec, window)  # upsert / append / replace, plus delete detection
    target = mode.table(target_table(spec))
    schema = spec.target.db_schema
    extracted = manifest.records if manifest.extracted is None else manifest.extracted
    result = WindowResult(spec.name, window, run_id, extracted=extracted, deduplicated=manifest.deduplicated,
                          metrics=manifest.metrics, staged_sums=dict(manifest.sums))
    max_cursor = datetime.fromisoformat(manifest.max_cursor) if manifest.max_cursor else None
    # A window ending after the source was read (etl run --allow-future) moves the watermark only that far.
    read_at = datetime.fromisoformat(manifest.read_at) if manifest.read_at else None
    until = read_at if read_at is not None and read_at < window.end else None
    source_class = SOURCES[spec.source.type]
    if getattr(source_class, "needs_consumer", False) and not isinstance(source, source_class):
        raise LoadError(f"pipeline {spec.name!r}: a {spec.source.type} pipeline loads in the process that consumed "
                        "its messages (etl run; in Airflow its one sync task), not from staging files alone")
    try:
        if getattr(source_class, "applies_reject_ratio", True):  # queues quarantine what fails, however much
            check_reject_ratio(spec, window, manifest)  # above max_reject_ratio, or all rejected: no write
        result.schema_changes = loader.ensure_tables(target)
        ensure_quarantine_table(loader.engine, schema)
        # Sources that keep state of their own in the target (etl_files, etl_messages) write it in the transaction.
        if hasattr(source_class, "prepare_target"):
            source_class.prepare_target(loader.engine, schema)
        with loader.transaction(target, mode) as conn:
            for chunk in manifest.tables():
                result.written += loader.stage(conn, target, chunk)
                result.loaded += chunk.num_rows
                failpoint("mid_load")
            result.written += loader.merge(conn, target, mode)
            if result.loaded != manifest.records:
                raise LoadError(
                    f"staging holds {result.loaded} records but the extract reported {manifest.records}; "
                    "re-run the extract step"
                )
            result.quarantined = write_quarantine(conn, spec, window, run_id, manifest)
            if result.extracted != result.loaded + result.quarantined + result.deduplicated:
                raise LoadError(
                    f"extracted {result.extracted} records but loaded {result.loaded} + quarantined "
                    f"{result.quarantined} + deduplicated {result.deduplicated}; re-run the extract step"
                )
            if advance_watermark:  # partition slices leave it to the window's final task
                result.watermark = advance_state(conn, spec.name, spec.source.cursor, window, max_cursor,
                                                 run_id, schema, until=until)
            if hasattr(source_class, "record_loaded"):
                (source if source is not None else source_class).record_loaded(conn, spec, window, run_id, manifest)
            result.duration_s = time.monotonic() - t0
            record_run(conn, schema, run_id=run_id, pipeline=spec.name, window_start=window.start,
                       window_end=window.end, status=Run.SUCCESS, extracted=result.extracted,
                       loaded=result.loaded, written=result.written, watermark=result.watermark,
                       quarantined=result.quarantined, deduplicated=result.deduplicated,
                       schema_changes=json.dumps(result.schema_changes) if result.schema_changes else None,
                       started_at=started_at, finished_at=datetime.now(UTC), duration_s=result.duration_s,
                       metrics=json.dumps(result.metrics) if result.metrics else None)
            failpoint("before_commit")
    except (DriftlessError, SQLAlchemyError) as exc:
        message = str(exc)
        if isinstance(exc, SQLAlchemyError):
            detail = driver_error_summary(exc, url)
            message = f"loading {target.fullname!r} into {redact(url)} failed: {detail}"
        _record_failure(spec, window, run_id, started_at, message, loader, extracted=extracted,
                        quarantined=manifest.quarantined)
        loader.dispose()
        metrics.emit_failure(spec.name)
        if isinstance(exc, DriftlessError):
            raise
        raise LoadError(f"pipeline {spec.name!r}, window {window.key}: {message}") from None
    loader.dispose()
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
    """Checks of a committed window (``etl.reconcile.checks``), stored in ``etl_reconciliation``.

    Raises ``ChecksFailed`` (carrying the result) when a check FAILs or cannot run; the run is then
    recorded as ``checks_failed``.
    """
    from etl.reconcile.checks import ChecksFailed, error_detail, run_window_checks

    source, source_error, t0 = None, None, time.monotonic()
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
        engine = getattr(source, "engine", None)
        if engine is not None:
            engine.dispose()
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
    source = source_for(spec) if hasattr(SOURCES[spec.source.type], "acknowledge") else None
    try:
        with owned_run_dir(staging_dir(spec, window, run_id)):
            manifest = extract_window(spec, window, run_id, source=source)
            failpoint("before_load")
            result = load_window(spec, window, manifest, run_id, source=source)
            if source is not None:
                failpoint("before_ack")
                source.acknowledge(result)
            failpoint("before_checks")
            result = reconcile_window(spec, result)
    finally:
        if source is not None:
            source.close()  # without acknowledge (a failure above), the broker delivers the messages again
    result.duration_s = time.monotonic() - t0
    return result
