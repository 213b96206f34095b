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
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from driftless import metrics
from driftless.connections import resolve_url
from driftless.errors import DriftlessError, LoadError, ValidationFailed, error_detail
from driftless.extract.rejects import check_reject_ratio
from driftless.extract.staging import Manifest, owned_run_dir, prune_stale, staging_root
from driftless.failpoints import failpoint
from driftless.load.entry import LoadResult, RunRecord, load_rows
from driftless.logs import event
from driftless.quarantine.store import ensure_quarantine_table, write_quarantine
from driftless.reconcile.checks import ChecksFailed, run_window_checks, staged_sums
from driftless.redact import redact_url
from driftless.schema import target_table
from driftless.settings import is_off, settings
from driftless.sources.base import Acknowledges, Closable, CountsWindow, KeepsTargetState, Metered, Resumable, Source
from driftless.sources.files.manifest import FilesTargetState
from driftless.spec import PipelineSpec
from driftless.state import ensure_state_tables, record_run
from driftless.status import Run
from driftless.targets import capabilities
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
                   frames: Iterable[pd.DataFrame] | None = None, source: Any = None,
                   handoff: Handoff | None = None) -> Manifest:
    """Read the window from the source into staging files; returns their manifest.

    ``frames`` replaces the source's chunks (tests, replays of files); by default the spec's source is read
    (``source``: that connector instance, when the caller needs it after the load, as queue sources do).
    ``handoff``: a load running beside the extract (``run_window``), handed each staged chunk.
    A failed extract leaves a ``failed`` run record in the target (best effort) and raises.
    """
    started_at, t0 = datetime.now(UTC), time.monotonic()
    try:
        manifest = _extract(spec, window, run_id, root, frames, started_at, source, handoff)
    except BaseException as exc:
        if handoff is not None:
            handoff.abandon()  # the load beside it rolls back (nothing committed) before the failure is recorded
        if not isinstance(exc, DriftlessError | SQLAlchemyError | OSError):
            raise
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
             frames: Iterable[pd.DataFrame] | None, started_at: datetime, source: Any = None,
             handoff: Handoff | None = None) -> Manifest:
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
            if handoff is not None and checked.good.num_rows:
                handoff.put(checked.good)  # the load beside the extract copies it now (committed only if kept)
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


def load_window(spec: PipelineSpec, window: Window, manifest: Manifest | None, run_id: str,
                advance_watermark: bool = True, source: Any = None, handoff: Handoff | None = None) -> WindowResult:
    """Merge the staged records into the target; data, watermark and run record commit together.

    ``source``: the connector instance that extracted the window; queue sources need it (it holds the
    consumed messages, recorded in ``etl_messages`` in this transaction).

    With ``advance_watermark=False`` (one slice of a partitioned window) the slice's data and run
    record commit and the watermark stays; ``airflow.partitions.finish_window`` moves it once every slice is in.

    ``handoff`` (with ``manifest`` None): the load runs beside the window's extract and copies each chunk as the
    extract stages it; the manifest is read once the extract has ended (see ``Handoff``).
    """
    started_at = datetime.now(UTC)
    url = resolve_url(spec.target.connection)
    loader = loader_for(url)
    directory = handoff.directory if handoff is not None else cast(Manifest, manifest).directory
    if directory and Path(directory).is_dir():  # bulk-load files stay in private staging
        loader.scratch_dir = str(directory)
    schema = spec.target.db_schema
    result = WindowResult(spec.name, window, run_id)
    run = RunRecord(run_id, window, Run.SUCCESS, started_at, advance_watermark=advance_watermark)
    # Sources that keep state of their own in the target (file sources: etl_files; queues: etl_messages, the
    # instance's) write it in the load's transaction.
    keeper = source if isinstance(source, KeepsTargetState) else TARGET_STATE.get(spec.source.type)
    # Sources that acknowledge messages (queues) load in the process that consumed them, and load whatever
    # share of a window validation rejects: holding the messages back would redeliver them forever.
    acknowledges = spec.source.type in ACKNOWLEDGING
    if acknowledges and not isinstance(source, Acknowledges):
        raise LoadError(f"pipeline {spec.name!r}: a {spec.source.type} pipeline loads in the process that consumed "
                        "its messages (etl run; in Airflow its one sync task), not from staging files alone")

    def settle(m: Manifest) -> None:
        """What the run record says of the extract, from its manifest (with a handoff: once the extract ended)."""
        result.extracted = m.records if m.extracted is None else m.extracted
        result.deduplicated, result.metrics, result.staged_sums = m.deduplicated, m.metrics, dict(m.sums)
        run.max_cursor = datetime.fromisoformat(m.max_cursor) if m.max_cursor else None
        # A window ending after the source was read (etl run --allow-future) moves the watermark only that far.
        read_at = datetime.fromisoformat(m.read_at) if m.read_at else None
        run.until = read_at if read_at is not None and read_at < window.end else None
        run.fields = {"extracted": result.extracted, "deduplicated": result.deduplicated,
                      "metrics": json.dumps(result.metrics) if result.metrics else None}

    def then(conn: Connection, load: LoadResult) -> dict[str, Any]:
        """In the load's transaction, after the merge: the counts add up, rejects go to quarantine."""
        m = handoff.manifest if handoff is not None else manifest
        assert m is not None  # a handoff's chunks end only once the extract has ended
        if handoff is not None:
            settle(m)
        if load.loaded != m.records:
            raise LoadError(f"staging holds {load.loaded} records but the extract reported {m.records}; "
                            "re-run the extract step")
        result.quarantined = write_quarantine(conn, spec, window, run_id, m)
        if result.extracted != load.loaded + result.quarantined + result.deduplicated:
            raise LoadError(
                f"extracted {result.extracted} records but loaded {load.loaded} + quarantined "
                f"{result.quarantined} + deduplicated {result.deduplicated}; re-run the extract step"
            )
        if keeper is not None:  # queue sources record the messages this instance consumed; file sources need none
            keeper.record_loaded(conn, spec, window, run_id, m)
        return {"quarantined": result.quarantined}

    try:
        rows: Iterable[pa.Table]
        if handoff is not None:
            rows = handoff.chunks()  # checks the reject ratio itself, once the extract has ended
        else:
            assert manifest is not None
            settle(manifest)
            if not acknowledges:  # queues quarantine what fails, however much (see above)
                check_reject_ratio(spec, window, manifest)  # above max_reject_ratio, or all rejected: no write
            rows = manifest.tables()
        ensure_quarantine_table(loader.engine, schema)
        if keeper is not None:
            keeper.prepare_target(loader.engine, schema)
        load = load_rows(spec, rows, window=window, run=run, then=then, loader=loader)
    except (DriftlessError, SQLAlchemyError) as exc:
        message = str(exc)
        if isinstance(exc, SQLAlchemyError):
            message = (f"loading {target_table(spec).fullname!r} into {redact_url(url)} failed: "
                       f"{error_detail(exc, url)}")
        _record_failure(spec, window, run_id, started_at, message, loader, extracted=result.extracted,
                        quarantined=manifest.quarantined if manifest is not None else 0)
        metrics.emit_failure(spec.name)
        if isinstance(exc, DriftlessError):
            raise
        raise LoadError(f"pipeline {spec.name!r}, window {window.key}: {message}") from exc
    finally:
        loader.dispose()
    result.loaded, result.written, result.schema_changes = load.loaded, load.written, load.schema_changes
    result.watermark, result.duration_s = load.watermark, load.duration_s
    event(log, "load done", pipeline=spec.name, window=window.key, loaded=result.loaded, written=result.written)
    metrics.emit(spec.name, metrics.load_values(result))
    return result


class GaveWay(Exception):  # noqa: N818 - not an error: the overlapped load's way of stepping aside
    """The load beside the extract rolled back; the window loads from its staged files instead."""


_DONE = object()


class Handoff:
    """A window's load running beside its extract, in a thread of the same process (``run_window``).

    The extract (``extract_window(handoff=...)``) hands over each chunk it stages; the load copies it into the
    target (or its staging table) at once, so the database writes while the next chunk is read and checked.
    One chunk waits at most, so memory stays bounded by ``chunk_size``.

    A load that starts before the extract ends cannot yet know the window's outcome. So it commits only if,
    once the extract has ended, what it was handed is exactly what the extract staged: every staged row
    handed over, no row deduplicated (dedup may drop a row already copied), the share of rejects within
    ``max_reject_ratio``. Otherwise it rolls back before commit (``GaveWay``) and ``run_window`` loads the
    staged files as it would have without overlap: the same result, later. A failed extract rolls it back too.

    The load's transaction stays open while the extract runs. A slow source (a REST API paging for an hour)
    would keep it idle in transaction, holding the target's load lock and, on PostgreSQL, vacuum's horizon,
    and a server's ``idle_in_transaction_session_timeout`` could end it: when no chunk comes for
    ``idle_limit_s`` seconds the load gives way too, and the window loads after its extract.
    """

    #: Seconds the load waits for the next chunk before it gives way (rolls back; the window loads after the extract).
    idle_limit_s: float = 30.0

    def __init__(self, spec: PipelineSpec, window: Window, run_id: str, directory: Path) -> None:
        self.spec, self.window, self.run_id, self.directory = spec, window, run_id, directory
        self.manifest: Manifest | None = None  # the extract's, once it has ended
        self.result: WindowResult | None = None
        self.error: BaseException | None = None
        self.handed = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._ended = threading.Event()  # the load took its last chunk (committed, rolled back or failed)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def _give(self, item: Any) -> None:
        """Queue ``item`` for the load; dropped once the load has ended (it failed: nothing waits for it)."""
        while not self._ended.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def put(self, chunk: pa.Table) -> None:
        """A staged chunk of rows to load (the first one starts the load)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, name="driftless-load", daemon=True)
            self._thread.start()
        self._give(chunk)

    def _load(self) -> None:
        try:
            failpoint("before_load")
            self.result = load_window(self.spec, self.window, None, self.run_id, handoff=self)
        except BaseException as exc:  # noqa: BLE001 - handed to run_window's thread, which raises it
            self.error = exc
        finally:
            self._ended.set()

    def chunks(self) -> Iterator[pa.Table]:
        """What the load copies: each chunk as it is staged; ends (or gives way) once the extract has ended."""
        while True:
            try:
                item = self._queue.get(timeout=self.idle_limit_s)
            except queue.Empty:
                raise GaveWay(f"no chunk for {self.idle_limit_s:g} s: the source is slower than the load") from None
            if item is _DONE:
                break
            if item is None:
                raise GaveWay("the extract failed")
            self.handed += item.num_rows
            yield item
        m = self.manifest
        assert m is not None
        if m.deduplicated or m.records != self.handed:
            raise GaveWay(f"the extract deduplicated {m.deduplicated} rows; staged {m.records}, "
                          f"handed over {self.handed}")
        try:
            check_reject_ratio(self.spec, self.window, m)
        except ValidationFailed as exc:
            raise GaveWay("too many rejects: the load from staging says so") from exc

    def abandon(self) -> None:
        """The extract failed: roll the load back (nothing was committed) and wait for it."""
        if self._thread is not None:
            self._give(None)
            self._thread.join()

    def finish(self, manifest: Manifest) -> WindowResult | None:
        """The extract ended with ``manifest``: the committed load's result, or None when it gave way."""
        assert self._thread is not None
        self.manifest = manifest
        self._give(_DONE)
        self._thread.join()
        if isinstance(self.error, GaveWay):
            event(log, "overlapped load gave way", pipeline=self.spec.name, window=self.window.key,
                  reason=str(self.error))
            return None
        if self.error is not None:
            raise self.error
        return self.result


def overlaps(spec: PipelineSpec) -> bool:
    """Whether ``run_window`` loads beside the extract (``Handoff``).

    Not for queue sources (their load acknowledges what this instance consumed), nor into a file database
    (SQLite: the load's write lock would be held while the extract reads), nor with ``DRIFTLESS_OVERLAP=0``.
    """
    return (spec.source.type not in ACKNOWLEDGING and not is_off(settings().overlap)
            and not capabilities(resolve_url(spec.target.connection)).file_database)


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
    """Extract, load and reconcile one window (what ``etl run`` does).

    Into PostgreSQL and MariaDB the load runs beside the extract (``Handoff``), and commits only what one
    after the other would have: with duplicates or too many rejects it rolls back and loads from staging.
    """
    run_id = run_id or new_run_id()
    t0 = time.monotonic()
    prune_stale()  # staging left behind by killed runs
    # Staged under $DRIFTLESS_STAGING_DIR, locked by this process: removed at the end, or by a later
    # run's prune when this process is killed.
    # A source that acknowledges (queues) lives from its first message to the acknowledgement after the commit.
    consumer: Acknowledges | None = None
    if spec.source.type in ACKNOWLEDGING:
        consumer = cast(Acknowledges, source_for(spec))
    directory = staging_dir(spec, window, run_id)
    handoff = Handoff(spec, window, run_id, directory) if overlaps(spec) else None
    try:
        with owned_run_dir(directory):
            manifest = extract_window(spec, window, run_id, source=consumer, handoff=handoff)
            loaded = handoff.finish(manifest) if handoff is not None and handoff.started else None
            if loaded is None:
                if handoff is None or not handoff.started:  # (a load beside the extract passed it already)
                    failpoint("before_load")
                loaded = load_window(spec, window, manifest, run_id, source=consumer)
            result = loaded
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
