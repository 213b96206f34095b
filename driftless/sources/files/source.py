"""File source: the files of a window, read as streams of raw records in chunks of ``chunk_size``.

Same interface as ``driftless.sources.sql.source.SqlSource`` (``read(window)`` yields DataFrames of raw values), without
``count``. Which files a window holds:

* a file not loaded before: when its time (modification time, or the date in its path) lies in
  ``[window.start - lag, window.end)``;
* a file loaded before (``etl_files`` in the target): when the time it was loaded under lies in the
  window, whatever its modification time is now. A re-run of a window reloads exactly its files; a file
  changed after loading is reloaded by a re-run of its window, and reported (log warning, ``changed_files``
  in the run's metrics, check ``files_changed``) by any other window that sees it, never loaded there.

After ``read`` finishes, ``metrics`` holds the files read (path, size, modification time, SHA-256, records)
and what was reported; the load step records the files in ``etl_files`` in its transaction
(``record_loaded``), and the window's checks compare the records read per file with those accounted for
(``window_checks``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from driftless.connections import resolve_url
from driftless.errors import SourceError
from driftless.sources.files.listing import FileInfo, filesystem, list_files
from driftless.sources.files.manifest import (
    SHOWN,
    FilesTargetState,
    LoadedFile,
    read_loaded,
    recorded_by_run,
)
from driftless.sources.files.readers import (
    FILE_ERRORS,
    OpenFile,
    compression_of,
    first_undecodable_line,
    read_csv,
    read_jsonl,
    read_parquet,
)
from driftless.sources.files.spec import FILE_COLUMN, FILE_TIME_COLUMN, LINE_COLUMN, SYNTHETIC_COLUMNS, FileSourceSpec
from driftless.spec import PipelineSpec
from driftless.status import Check
from driftless.targets.loaders import loader_for
from driftless.window import Window

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """The files of one window, and what the listing showed about the others."""

    files: list[tuple[FileInfo, datetime, LoadedFile | None]] = field(default_factory=list)
    changed_elsewhere: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    undated: list[str] = field(default_factory=list)


def _names(items: list[Any], key: str = "path") -> str:
    shown = ", ".join(str(i[key] if isinstance(i, dict) else i) for i in items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


class FileSource(FilesTargetState):
    """The records of the files a window holds, as DataFrames of at most ``chunk_size`` rows of raw values.

    Every record carries ``_file`` (path relative to ``location``), ``_line`` (the line it starts on; row
    number for Parquet) and ``_file_time`` (the file's time); they are loaded where ``columns`` declare them,
    and are part of a quarantined record either way.
    """

    def __init__(self, spec: PipelineSpec, fs: Any = None) -> None:
        if not isinstance(spec.source, FileSourceSpec):
            raise TypeError(f"pipeline {spec.name!r}: FileSource needs a source of type 'file'")
        self.spec = spec
        self.source: FileSourceSpec = spec.source
        self._fs = fs
        self.metrics: dict[str, Any] = {}
        self.null_cursor_records = 0
        rename = spec.transforms.rename
        # (column in the file, column of the frame handed over); a rename's key is read under its own name
        self.read_columns: list[tuple[str, str]] = []
        self.synthetic: list[tuple[str, str]] = []  # (synthetic name, column of the frame)
        for column in spec.source_columns:
            if column.source_name in SYNTHETIC_COLUMNS:
                self.synthetic.append((column.source_name, column.name))
                continue
            renamed_from = [k for k, v in rename.items() if v == column.name]
            self.read_columns.append((renamed_from[0], renamed_from[0]) if renamed_from
                                     else (column.source_name, column.name))
        self.text_columns = {file_col for file_col, frame_col in self.read_columns
                             if spec.column(rename.get(frame_col, frame_col)).type.split("(")[0]
                             in ("text", "varchar", "string")}
        cursor = spec.column(self.source.cursor)
        # the frame column holding the cursor (None when it is the file's own _file_time: never empty)
        self.cursor_frame_column = next((frame_col for _, frame_col in self.read_columns
                                         if rename.get(frame_col, frame_col) == cursor.name), None)

    # The target side (etl_files, written in the load's transaction) is inherited from FilesTargetState.

    def _engine(self) -> Any:
        return loader_for(resolve_url(self.spec.target.connection)).engine

    # ---- which files --------------------------------------------------------------------------------------

    def plan(self, window: Window) -> Plan:
        """The window's files (ordered by time, then path) and the changed or missing files of the listing."""
        fs, root = self._fs_root()
        listed, undated = list_files(self.source, fs, root)
        engine = self._engine()
        try:
            loaded = read_loaded(engine, self.spec.name, self.spec.target.db_schema)
        finally:
            engine.dispose()
        bounds = window.widened(self.source.lag)
        plan = Plan(undated=undated)
        present = set()
        for info in listed:
            present.add(info.path)
            before = loaded.get(info.path)
            home = before.file_time if before else (info.path_time or info.mtime)
            assert home is not None  # list_files refuses files without a time
            if bounds.start <= home < bounds.end:
                plan.files.append((info, home, before))
            elif before is not None and (info.size != before.size or info.mtime != before.mtime):
                digest = self._digest(fs, info)
                if digest != before.sha256:
                    plan.changed_elsewhere.append({
                        "path": info.path,
                        "loaded_in": [before.window_start.isoformat(), before.window_end.isoformat()],
                        "run_id": before.run_id, "action": "not reloaded: run the window it was loaded in again"})
        for path, before in loaded.items():
            if path not in present and bounds.start <= before.file_time < bounds.end:
                plan.missing.append({"path": path, "run_id": before.run_id, "records": before.records})
        plan.files.sort(key=lambda f: (f[1], f[0].path))
        return plan

    def _fs_root(self) -> tuple[Any, str]:
        if self._fs is not None:
            return self._fs, self.source.location.rstrip("/") or "/"
        return filesystem(self.source)

    def _digest(self, fs: Any, info: FileInfo) -> str:
        opened = OpenFile(fs, info.full, info.path, None)
        try:
            return opened.digest()
        except FILE_ERRORS as exc:
            raise SourceError(f"file {info.path}: cannot read it: {exc}") from exc
        finally:
            opened.close()

    # ---- reading ------------------------------------------------------------------------------------------

    def _records(self, fs: Any, info: FileInfo, opened: OpenFile) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        needed = [file_col for file_col, _ in self.read_columns]
        conflict = [n for n in SYNTHETIC_COLUMNS if n in needed]
        if conflict:
            raise SourceError(f"pipeline {self.spec.name!r}: {conflict} are the file source's own columns (file, "
                              "line, file time); a file column of that name cannot be read")
        fmt = self.source.format
        size = min(self.spec.chunk_size, 65_536)
        if fmt == "csv":
            return read_csv(opened, self.source, needed, size)
        if fmt == "jsonl":
            return read_jsonl(opened, self.source, needed, self.text_columns, size)
        t = self.spec.transforms
        return read_parquet(opened, self.source, needed, size, typed=not (t.cast or t.derive or t.function))

    def _frame(self, raw: pd.DataFrame, lines: np.ndarray, info: FileInfo, home: datetime) -> pd.DataFrame:
        frame = raw[[f for f, _ in self.read_columns]]
        frame.columns = [n for _, n in self.read_columns]
        n = len(frame)
        values = {FILE_COLUMN: pd.Series([info.path] * n, dtype=object, index=frame.index),
                  LINE_COLUMN: pd.Series(lines, index=frame.index),
                  FILE_TIME_COLUMN: pd.Series(pd.Timestamp(home), index=frame.index)}
        extra = {name: values[name] for name in SYNTHETIC_COLUMNS}
        extra.update({frame_col: values[name] for name, frame_col in self.synthetic})
        return frame.assign(**extra)

    def read(self, window: Window) -> Iterator[pd.DataFrame]:
        """Yield the window's records as DataFrames of ``chunk_size`` rows (the last one may be shorter)."""
        plan = self.plan(window)
        fs, _ = self._fs_root()
        rechunk = Rechunker(self.spec.chunk_size)
        files: list[dict[str, Any]] = []
        changed = list(plan.changed_elsewhere)
        blank_total = 0
        self.null_cursor_records = 0
        for message, items in (("changed after it was loaded in another window; not reloaded here (run that "
                                 "window again to reload it)", plan.changed_elsewhere),
                                ("was loaded in this window before but is gone; its rows stay in the target",
                                 plan.missing),
                                ("matches path_pattern's glob but carries no date the pattern reads; not read",
                                 plan.undated)):
            for item in items:
                log.warning("pipeline %s, window %s: file %s %s", self.spec.name, window.key,
                            item["path"] if isinstance(item, dict) else item, message)

        for info, home, before in plan.files:
            codec = compression_of(info.path, self.source.compression) if self.source.format != "parquet" else None
            opened = OpenFile(fs, info.full, info.path, codec)
            records = blank = skipped = 0
            try:
                for raw, lines in self._records(fs, info, opened):
                    if self.source.format == "csv":  # a line of empty fields is a blank line: skipped, counted
                        empty = raw.isna().all(axis=1).to_numpy()
                        if empty.any():
                            blank += int(empty.sum())
                            raw, lines = raw[~empty], lines[~empty]
                    records += len(raw)
                    frame = self._frame(raw, lines, info, home)
                    frame, dropped = self._null_cursors(frame, info)
                    skipped += dropped
                    rechunk.add(frame)
                    yield from rechunk.chunks()
                digest = opened.digest()
            except SourceError as exc:
                if "not valid text" in str(exc) and self.source.format == "csv":
                    located = first_undecodable_line(fs, info.full, info.path, codec, self.source.encoding)
                    if located is not None:
                        raise located from exc
                raise
            except FILE_ERRORS as exc:
                raise SourceError(f"file {info.path}: cannot read it: {str(exc).splitlines()[0] if str(exc) else exc}"
                                  ) from exc
            finally:
                opened.close()
            blank_total += blank
            entry = {"path": info.path, "size": info.size, "mtime": info.mtime.isoformat() if info.mtime else None,
                     "sha256": digest, "records": records, "file_time": home.isoformat()}
            if blank:
                entry["blank_lines"] = blank
            if skipped:
                entry["null_cursor_skipped"] = skipped
            if before is not None and before.sha256 != digest:
                changed.append({"path": info.path, "loaded_in": [before.window_start.isoformat(),
                                                                 before.window_end.isoformat()],
                                "run_id": before.run_id, "action": "reloaded"})
                log.warning("pipeline %s, window %s: file %s changed after run %s loaded it; reloaded",
                            self.spec.name, window.key, info.path, before.run_id)
            files.append(entry)
        yield from rechunk.chunks(final=True)
        self.metrics = {"files": files, "files_read": len(files), "records_read": sum(f["records"] for f in files),
                        "blank_lines": blank_total, "null_cursor_records": self.null_cursor_records,
                        "changed_files": changed, "missing_files": plan.missing, "undated_files": plan.undated}

    def _null_cursors(self, frame: pd.DataFrame, info: FileInfo) -> tuple[pd.DataFrame, int]:
        """Records whose cursor is empty: ``source.null_cursor`` says what happens (fail, skip, every_window)."""
        if self.cursor_frame_column is None:
            return frame, 0
        empty = frame[self.cursor_frame_column].isna().to_numpy()
        if not empty.any():
            return frame, 0
        found = int(empty.sum())
        self.null_cursor_records += found
        policy = self.source.null_cursor
        if policy == "fail":
            line = int(frame[LINE_COLUMN].to_numpy()[empty][0])
            raise SourceError(
                f"file {info.path}, line {line}: the cursor {self.source.cursor!r} is empty ({found} record(s) of "
                "this chunk), so the record lies in no window; nothing was loaded. State what to do with them in "
                "the spec: source.null_cursor: every_window (load them) or skip (leave them out; each window's "
                "checks count them), or use cursor: _file_time (the file's time)")
        if policy == "skip":
            return frame[~empty], found
        return frame, 0

    # ---- checks -------------------------------------------------------------------------------------------

    def window_checks(self, result: Any) -> list[dict[str, Any]]:
        """The file source's window checks, run after the load committed.

        ``file_records``: the records read per file (as ``etl_files`` recorded them in the load's transaction)
        against the window's records accounted for (loaded + quarantined + deduplicated + skipped);
        ``files_changed``: WARN when files changed after loading were not reloaded here, or loaded files are gone.
        """
        metrics = getattr(result, "metrics", None) or {}
        files = metrics.get("files")
        if files is None:
            return [{"check": "file_records", "status": Check.SKIP,
                     "message": "not checked: the extract did not list the files it read"}]
        engine = self._engine()
        try:
            recorded = recorded_by_run(engine, self.spec.name, result.run_id, self.spec.target.db_schema)
        finally:
            engine.dispose()
        read = sum(int(f["records"]) for f in files)
        skipped = sum(int(f.get("null_cursor_skipped", 0)) for f in files)
        accounted = int(result.loaded) + int(result.quarantined or 0) + int(result.deduplicated or 0) + skipped
        wrong = [f"{f['path']}: read {f['records']}, recorded {recorded.get(f['path'], 'nothing')}"
                 for f in files if recorded.get(f["path"]) != int(f["records"])]
        status = Check.PASS if read == accounted and not wrong else Check.FAIL
        message = None
        if read != accounted:
            message = (f"{len(files)} file(s) held {read} records but {accounted} are accounted for (loaded "
                       f"{result.loaded} + quarantined {result.quarantined} + deduplicated {result.deduplicated} "
                       f"+ skipped {skipped})")
        if wrong:
            message = (message + "; " if message else "") + "etl_files disagrees: " + _names(wrong, "")
        checks = [{"check": "file_records", "source": read, "target": accounted,
                   "difference": float(read - accounted), "status": status,
                   **({"message": message} if message else {})}]
        not_reloaded = [c for c in metrics.get("changed_files", []) if c.get("action") != "reloaded"]
        missing = metrics.get("missing_files", [])
        if not_reloaded or missing:
            parts = []
            if not_reloaded:
                parts.append(f"{len(not_reloaded)} file(s) changed after they were loaded in another window and "
                             f"were not reloaded: {_names(not_reloaded)} (run the window each was loaded in again)")
            if missing:
                parts.append(f"{len(missing)} file(s) loaded in this window before are gone: {_names(missing)}")
            checks.append({"check": "files_changed", "source": len(not_reloaded) + len(missing), "target": 0,
                           "difference": float(len(not_reloaded) + len(missing)), "status": Check.WARN,
                           "message": "; ".join(parts)})
        return checks


class Rechunker:
    """Frames of any size in, frames of ``size`` rows out.

    Holds what is not yet handed out (at most one batch plus one chunk). Each chunk owns its memory, so it
    does not keep the batch it came from alive.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.frames: deque[pd.DataFrame] = deque()
        self.position = 0  # rows of frames[0] already handed out
        self.rows = 0

    def add(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self.frames.append(frame)
            self.rows += len(frame)

    def chunks(self, final: bool = False) -> Iterator[pd.DataFrame]:
        """The full chunks held (and with ``final`` the rest as a last, shorter one)."""
        while self.rows >= self.size or (final and self.rows):
            yield self._take(min(self.size, self.rows))

    def _take(self, n: int) -> pd.DataFrame:
        if self.position == 0 and len(self.frames[0]) == n:  # a whole frame (the reader's batches have chunk size)
            self.rows -= n
            return self.frames.popleft().reset_index(drop=True)  # holds nothing it does not hand over: no copy
        parts, need = [], n
        while need:
            frame = self.frames[0]
            k = min(need, len(frame) - self.position)
            parts.append(frame.iloc[self.position:self.position + k])
            self.position += k
            need -= k
            if self.position == len(frame):
                self.frames.popleft()
                self.position = 0
        self.rows -= n
        chunk = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
        return chunk.copy(deep=True)
