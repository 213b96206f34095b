"""Staging files: a window's extracted records as Parquet, between the extract and load steps.

Large data travels between Airflow tasks as files; XCom carries only the small manifest
(paths, counts, watermarks). One directory per pipeline, window and run: removed once the window's
load has committed (``discard``); directories of runs that never got there (a failed load nobody
retried) are removed after ``STALE_AFTER`` by the next extract of any pipeline (``prune_stale``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from etl.errors import LoadError

MANIFEST = "_manifest.json"
PROGRESS = "_progress.json"
#: a run's staging directory untouched for this long belongs to a run that will not be retried
STALE_AFTER = timedelta(days=7)


def staging_root() -> Path:
    """``$DRIFTLESS_STAGING_DIR``, or ``.staging`` in the working directory."""
    return Path(os.environ.get("DRIFTLESS_STAGING_DIR") or Path.cwd() / ".staging")


def discard(directory: str | Path) -> None:
    """Remove a run's staging directory (its window is loaded), and the window's if now empty."""
    path = Path(directory)
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.parent.rmdir()  # only succeeds when no other run of the window is staged
    except OSError:
        pass


def prune_stale(root: Path | None = None, older_than: timedelta = STALE_AFTER) -> list[Path]:
    """Remove run directories (``root/pipeline/window/run``) not written to for ``older_than``."""
    root = root or staging_root()
    cutoff = time.time() - older_than.total_seconds()
    removed = []
    for run_dir in root.glob("*/*/*"):
        try:
            newest = max([run_dir.stat().st_mtime, *(f.stat().st_mtime for f in run_dir.iterdir())])
        except OSError:  # removed meanwhile, or not a directory
            continue
        if newest < cutoff:
            discard(run_dir)
            removed.append(run_dir)
    return removed


@dataclass
class Manifest:
    """What an extraction produced: the files, how many records, and the highest cursor value seen."""

    pipeline: str
    window_start: str
    window_end: str
    directory: str
    files: list[str] = field(default_factory=list)
    records: int = 0
    max_cursor: str | None = None
    metrics: dict = field(default_factory=dict)
    # Validation (etl.quarantine): records read from the source, rejected ones (staged in
    # quarantine_files), in-window duplicates dropped, and rejected rows per "column: check".
    extracted: int | None = None
    quarantined: int = 0
    deduplicated: int = 0
    quarantine_files: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    # Checks (etl.reconcile.checks): sums of reconcile.sum_columns over the staged window, for sources
    # that cannot sum a window themselves (REST); and when the source was read (ISO, UTC), which caps
    # the watermark of a window that ends after it.
    sums: dict[str, str | None] = field(default_factory=dict)
    read_at: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        return cls(**data)

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise LoadError(
                f"staging files of this window are missing ({path}); re-run the extract step for the window"
            )
        return cls.from_dict(json.loads(path.read_text()))

    def tables(self) -> Iterator[pa.Table]:
        """The staged chunks, one Arrow table per file, in extraction order."""
        for name in self.files:
            path = Path(self.directory) / name
            try:
                yield pq.read_table(path)
            except (OSError, pa.ArrowException) as exc:
                raise LoadError(f"staging file {path} is unreadable ({exc}); re-run the extract step") from exc


class StagingWriter:
    """Writes a window's chunks into a fresh directory; the manifest is written last, atomically.

    With ``resume=True`` an unfinished directory of an earlier attempt (no manifest yet) is kept:
    the chunks listed in its ``_progress.json`` stay, anything after them is deleted, and
    ``checkpoint`` holds what the last ``write(chunk, checkpoint=...)`` stored, for the source to
    continue from. A finished directory (with a manifest) is always started afresh.
    """

    def __init__(self, directory: str | Path, pipeline: str, window_start: str, window_end: str,
                 resume: bool = False) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest(pipeline, window_start, window_end, str(self.directory))
        self.checkpoint: dict | None = None
        progress = self.directory / PROGRESS
        if resume and progress.is_file() and not (self.directory / MANIFEST).is_file():
            saved = json.loads(progress.read_text())
            self.manifest.files, self.manifest.records = list(saved["files"]), int(saved["records"])
            self.checkpoint = saved.get("checkpoint")
            for leftover in self.directory.glob("part-*.parquet"):
                if leftover.name not in self.manifest.files:
                    leftover.unlink()
            return
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)

    def write(self, chunk: pa.Table, checkpoint: dict | None = None) -> None:
        name = f"part-{len(self.manifest.files):05d}.parquet"
        pq.write_table(chunk, self.directory / name)
        self.manifest.files.append(name)
        self.manifest.records += chunk.num_rows
        if checkpoint is not None:  # resume point: written after the chunk it covers, atomically
            self.save_progress(checkpoint)

    def save_progress(self, checkpoint: dict) -> None:
        """Write the resume point: the chunks staged so far and the caller's ``checkpoint``."""
        tmp = self.directory / (PROGRESS + ".tmp")
        tmp.write_text(json.dumps({"files": self.manifest.files, "records": self.manifest.records,
                                   "checkpoint": checkpoint}, default=str))
        tmp.replace(self.directory / PROGRESS)

    def close(self, max_cursor: str | None, metrics: dict | None = None) -> Manifest:
        self.manifest.max_cursor = max_cursor
        self.manifest.metrics = metrics or {}
        tmp = self.directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest.to_dict(), indent=1))
        tmp.replace(self.directory / MANIFEST)
        return self.manifest
