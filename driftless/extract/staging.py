"""Staging files: a window's extracted records as Parquet, between the extract and load steps.

Large data travels between Airflow tasks as files; XCom carries only the small manifest
(paths, counts, watermarks). One directory per pipeline, window and run: removed once the window's
load has committed (``discard``). Staged files hold copies of source data, so directories are
created ``0700`` and files ``0600``.

Two kinds of run directory, pruned differently by the next extract of any pipeline (``prune_stale``):

- A run that lives in one process (``etl run``) holds an exclusive ``flock`` on the directory's
  ``_owner.lock`` for as long as it runs (``owned_run_dir``). A directory whose lock nobody holds
  belongs to a process that is gone (killed, crashed): it is removed at once.
- An Airflow run spans task processes (a retried load reads the files again), so nothing holds its
  directory; one that is not written to for ``STALE_AFTER`` belongs to a run that will not be retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from driftless.errors import LoadError
from driftless.settings import settings

if TYPE_CHECKING:  # the load reads manifests and staged files; only the extract hands over DataFrames
    import pandas as pd

MANIFEST = "_manifest.json"
PROGRESS = "_progress.json"
#: held locked (``flock``) by the one process a run directory belongs to, while it runs
OWNER_LOCK = "_owner.lock"
#: a run's staging directory untouched for this long belongs to a run that will not be retried
STALE_AFTER = timedelta(days=7)
DIR_MODE, FILE_MODE = 0o700, 0o600


def staging_root() -> Path:
    """Where staging files live: ``$DRIFTLESS_STAGING_DIR``, else the user's cache directory.

    The default is ``$XDG_CACHE_HOME/driftless/staging`` (``~/.cache/driftless/staging`` when
    ``XDG_CACHE_HOME`` is unset): private to the user, and not a directory the OS empties under a
    running job. Airflow tasks default to ``$AIRFLOW_HOME/driftless-staging`` (``driftless.airflow.tasks``).
    """
    configured = settings().staging_dir
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "driftless" / "staging"


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode ``0700`` (existing ones keep their mode)."""
    for _ in range(3):  # a parent may vanish meanwhile: another run's discard removes an empty window dir
        missing, parent = [], path
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            for directory in reversed(missing):
                try:
                    directory.mkdir(mode=DIR_MODE)
                except FileExistsError:  # made meanwhile by another run
                    continue
                os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
            return
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LoadError(f"cannot create the staging directory {path} ({exc.strerror}); "
                            "set DRIFTLESS_STAGING_DIR to a directory this user can write") from exc
    raise LoadError(f"cannot create the staging directory {path}: its parent keeps disappearing")


@contextlib.contextmanager
def private_file(path: str | Path, mode: str = "wb") -> Iterator:
    """Open ``path`` for writing, created (or truncated) with mode ``0600``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
    with open(fd, mode) as fh:
        yield fh


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write one staged chunk as Parquet, readable by its owner only.

    Staged files are read whole, once or twice, by this process or the next task: LZ4 without dictionary
    pages or statistics writes a 50,000-row chunk about 15x faster than pyarrow's defaults (snappy,
    dictionaries, statistics), reads it 3x faster, and was smaller on the benchmark's orders.
    """
    with private_file(path) as fh:
        pq.write_table(table, fh, compression="lz4", use_dictionary=False, write_statistics=False)


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read one staged file (or some of its columns).

    Through ``ParquetFile``, not ``pq.read_table``: that goes through ``pyarrow.dataset``, whose import also
    imports pandas (pyarrow 26), some 48 MB that a load has no other use for.
    """
    with pq.ParquetFile(path) as parquet:
        return parquet.read(columns=columns)


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with private_file(tmp, "w") as fh:
        fh.write(text)
    tmp.replace(path)


@contextlib.contextmanager
def owned_run_dir(directory: str | Path) -> Iterator[Path]:
    """A run directory that lives as long as this process's run: locked while in use, removed after.

    The exclusive ``flock`` on ``_owner.lock`` goes with the process, however it ends; a directory
    left by a killed run is therefore unlocked, and the next ``prune_stale`` removes it. The lock file
    also names the owner (pid, host, start time) for a person looking at the directory.
    """
    path = Path(directory)
    make_private_dir(path)
    # Locked under a temporary name, then renamed: a pruner never sees an unlocked _owner.lock of a live run.
    tmp = path / f".{OWNER_LOCK}.{os.getpid()}"
    with private_file(tmp, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": datetime.now(UTC).isoformat()}))
        fh.flush()
        tmp.replace(path / OWNER_LOCK)
        try:
            yield path
        finally:
            discard(path)


def _orphaned(run_dir: Path) -> bool:
    """Whether ``run_dir`` has an owner lock that no live process holds."""
    try:
        fd = os.open(run_dir / OWNER_LOCK, os.O_RDONLY)
    except OSError:  # no owner lock: an Airflow run directory (or removed meanwhile)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: the owning run is alive
        return False
    finally:
        os.close(fd)  # releases the probe's lock
    return True


def discard(directory: str | Path) -> None:
    """Remove a run's staging directory (its window is loaded), and the window's if now empty."""
    path = Path(directory)
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.parent.rmdir()  # only succeeds when no other run of the window is staged
    except OSError:
        pass


def prune_stale(root: Path | None = None, older_than: timedelta = STALE_AFTER) -> list[Path]:
    """Remove the run directories (``root/pipeline/window/run``) of runs that will not continue.

    Those whose owning process is gone (an unlocked ``_owner.lock``: a killed ``etl run``), and those
    without an owner (Airflow runs) not written to for ``older_than``.
    """
    root = root or staging_root()
    cutoff = time.time() - older_than.total_seconds()
    removed = []
    for run_dir in root.glob("*/*/*"):
        if _orphaned(run_dir):
            discard(run_dir)
            removed.append(run_dir)
            continue
        if (run_dir / OWNER_LOCK).exists():
            continue  # a live process's run, however long it takes
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
    # Validation (driftless.extract.validate, .dedup): records read from the source, rejected ones (staged in
    # quarantine_files), in-window duplicates dropped, and rejected rows per "column: check".
    extracted: int | None = None
    quarantined: int = 0
    deduplicated: int = 0
    quarantine_files: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    # Checks (driftless.reconcile.checks): sums of reconcile.sum_columns over the staged window, for sources
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
        """The staged chunks, one Arrow table per file, in extraction order.

        The next file is read in a thread while the caller works on the current one (a loader's COPY
        waits on the server; Arrow's Parquet reader releases the GIL): at most two chunks are held.
        """
        paths = [Path(self.directory) / name for name in self.files]
        if not paths:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftless-staged") as pool:
            ahead = pool.submit(_read_staged, paths[0])
            for following in [*paths[1:], None]:
                table = ahead.result()
                if following is not None:
                    ahead = pool.submit(_read_staged, following)
                yield table


def _read_staged(path: Path) -> pa.Table:
    try:
        return read_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise LoadError(f"staging file {path} is unreadable ({exc}); re-run the extract step") from exc


class StagingWriter:
    """Writes a window's chunks into a fresh directory; the manifest is written last, atomically.

    The writer keeps the manifest's counts: ``write`` stages rows to load (``part-*``), ``stage`` one
    validated chunk (rows to load and rejected rows, ``quarantine-*``, with their reasons; counted as
    extracted), ``drop_superseded`` removes the rows the window's dedup found superseded.

    With ``resume=True`` an unfinished directory of an earlier attempt (no manifest yet) is kept:
    the chunks listed in its ``_progress.json`` stay (with their counts), anything after them is deleted,
    and ``checkpoint`` holds what the last ``save_progress(checkpoint)`` stored, for the source to
    continue from. A finished directory (with a manifest) is always started afresh (an owner lock stays).
    """

    def __init__(self, directory: str | Path, pipeline: str, window_start: str, window_end: str,
                 resume: bool = False) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest(pipeline, window_start, window_end, str(self.directory))
        self.checkpoint: dict | None = None
        progress = self.directory / PROGRESS
        if resume and progress.is_file() and not (self.directory / MANIFEST).is_file():
            self._resume(json.loads(progress.read_text()))
            return
        make_private_dir(self.directory)
        for leftover in self.directory.iterdir():
            if leftover.name == OWNER_LOCK:
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()

    def _resume(self, saved: dict) -> None:
        m = self.manifest
        m.files, m.records = list(saved["files"]), int(saved["records"])
        self.checkpoint = saved.get("checkpoint")
        # Written before validation state had its own keys: it sat in the checkpoint.
        validation = saved if "quarantine_files" in saved else (self.checkpoint or {}).get("validation")
        if validation is not None:
            m.quarantine_files = list(validation.get("quarantine_files", []))
            m.quarantined = int(validation.get("quarantined", 0))
            m.reasons = dict(validation.get("reasons", {}))
            m.extracted = saved.get("extracted", m.records + m.quarantined)
        for pattern, kept in (("part-*.parquet", m.files), ("quarantine-*.parquet", m.quarantine_files)):
            for leftover in self.directory.glob(pattern):
                if leftover.name not in kept:
                    leftover.unlink()

    def write(self, chunk: pa.Table, checkpoint: dict | None = None) -> None:
        """Stage rows to load as the next ``part-*`` file."""
        name = f"part-{len(self.manifest.files):05d}.parquet"
        write_parquet(chunk, self.directory / name)
        self.manifest.files.append(name)
        self.manifest.records += chunk.num_rows
        if checkpoint is not None:  # resume point: written after the chunk it covers, atomically
            self.save_progress(checkpoint)

    def stage(self, good: pa.Table, rejects: pd.DataFrame, reasons: Mapping[str, int]) -> tuple[int, int]:
        """Stage one validated chunk: its rows to load and its rejected rows (``driftless.extract.validate``).

        Every row of the chunk counts as extracted. Returns the numbers of the ``part-*`` and
        ``quarantine-*`` files the rows went to (the window's dedup refers to rows by file and position).
        """
        m = self.manifest
        m.extracted = (m.records + m.quarantined + m.deduplicated if m.extracted is None else m.extracted) \
            + good.num_rows + len(rejects)
        parts = (len(m.files), len(m.quarantine_files))
        if good.num_rows:
            self.write(good)
        if len(rejects):
            name = f"quarantine-{len(m.quarantine_files):05d}.parquet"
            write_parquet(pa.Table.from_pandas(rejects, preserve_index=False), self.directory / name)
            m.quarantine_files.append(name)
            m.quarantined += len(rejects)
            for reason, count in reasons.items():
                m.reasons[reason] = m.reasons.get(reason, 0) + count
        return parts

    def drop_superseded(self, gone: pd.DataFrame) -> None:
        """Remove rows from the staged files; they count as deduplicated.

        ``gone`` has ``_good`` (a part or a quarantine file), ``_part`` (the file's number) and ``_pos``
        (the row's position in it).
        """
        if gone.empty:
            return
        m = self.manifest
        for (good, part), rows in gone.groupby(["_good", "_part"]):
            names = m.files if good else m.quarantine_files
            path = self.directory / names[int(part)]
            table = read_parquet(path)
            keep = np.ones(table.num_rows, dtype=bool)
            keep[rows["_pos"].to_numpy(dtype=int)] = False
            pq.write_table(table.filter(pa.array(keep)), path)
        good_gone = int(gone["_good"].sum())
        m.records -= good_gone
        m.quarantined -= len(gone) - good_gone
        m.deduplicated += len(gone)
        if len(gone) - good_gone:
            m.reasons = _reasons_of(self.directory, m.quarantine_files)

    def save_progress(self, checkpoint: dict) -> None:
        """Write the resume point: the chunks staged so far, their counts and the caller's ``checkpoint``."""
        m = self.manifest
        _write_text_atomically(self.directory / PROGRESS, json.dumps(
            {"files": m.files, "records": m.records, "quarantine_files": m.quarantine_files,
             "quarantined": m.quarantined, "reasons": m.reasons, "extracted": m.extracted,
             "checkpoint": checkpoint}, default=str))

    def close(self, max_cursor: str | None, metrics: dict | None = None) -> Manifest:
        m = self.manifest
        if m.extracted is not None and m.extracted != m.records + m.quarantined + m.deduplicated:
            raise LoadError(f"pipeline {m.pipeline!r}: extracted {m.extracted} records but staged "
                            f"{m.records} + quarantined {m.quarantined} + deduplicated {m.deduplicated}")
        m.max_cursor = max_cursor
        m.metrics = metrics or {}
        _write_text_atomically(self.directory / MANIFEST, json.dumps(m.to_dict(), indent=1))
        return m


def _reasons_of(directory: Path, files: list[str]) -> dict[str, int]:
    """Rejected rows per ``"column: check"``, counted from the staged quarantine files."""
    reasons: Counter = Counter()
    for name in files:
        for errors in read_parquet(directory / name, columns=["errors"]).column("errors").to_pylist():
            for e in json.loads(errors):
                reasons[f"{e['column'] or '(row)'}: {e['check']}"] += 1
    return dict(reasons)
