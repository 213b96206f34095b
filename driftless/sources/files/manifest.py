"""``etl_files``: which files a file pipeline loaded, in which window, as they were then.

One row per pipeline and file path (relative to the source's ``location``): the file's time that placed it
in a window (kept from its first load, so a re-run of that window reloads it even after it was modified),
its size, modification time, SHA-256 and record count when last loaded, and the run that loaded it. Written
by ``record_loaded`` inside the load's transaction, beside the data and the watermark: a crash leaves either
the old rows or the new ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    inspect,
    select,
)

from driftless.errors import LoadError
from driftless.state import UTC_TIMESTAMP, as_utc

FILES_TABLE = "etl_files"
BATCH = 500
SHOWN = 5  # files named in a message before "and N more"


def files_table(schema: str | None = None) -> Table:
    return Table(
        FILES_TABLE,
        MetaData(schema=schema),
        Column("pipeline", String(128), primary_key=True),
        Column("path_key", String(64), primary_key=True, comment="sha256 of the path"),
        Column("path", Text, nullable=False, comment="relative to the source's location"),
        Column("file_time", UTC_TIMESTAMP, nullable=False,
               comment="places the file in a window; kept from its first load"),
        Column("window_start", UTC_TIMESTAMP, nullable=False),
        Column("window_end", UTC_TIMESTAMP, nullable=False),
        Column("size", BigInteger, nullable=False),
        Column("mtime", UTC_TIMESTAMP),
        Column("sha256", String(64), nullable=False),
        Column("records", BigInteger, nullable=False, comment="records read from the file (blank lines not counted)"),
        Column("run_id", String(255), nullable=False),
        Column("loaded_at", UTC_TIMESTAMP, nullable=False),
    )


def path_key(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()


@dataclass(frozen=True)
class LoadedFile:
    """A row of ``etl_files``."""

    path: str
    file_time: datetime
    window_start: datetime
    window_end: datetime
    size: int
    mtime: datetime | None
    sha256: str
    records: int
    run_id: str


def ensure_files_table(engine: Engine, schema: str | None = None) -> None:
    """Create ``etl_files`` (before the load's transaction: DDL commits implicitly on MariaDB)."""
    with engine.begin() as conn:
        if not inspect(conn).has_table(FILES_TABLE, schema=schema):
            files_table(schema).create(conn, checkfirst=True)


def read_loaded(engine: Engine, pipeline: str, schema: str | None = None) -> dict[str, LoadedFile]:
    """Every file the pipeline loaded, by path (empty when nothing was loaded yet)."""
    table = files_table(schema)
    with engine.connect() as conn:
        if not inspect(conn).has_table(FILES_TABLE, schema=schema):
            return {}
        rows = conn.execute(select(table).where(table.c.pipeline == pipeline)).mappings().all()
    return {r["path"]: _loaded(r) for r in rows}


def _loaded(r: Any) -> LoadedFile:
    return LoadedFile(r["path"], as_utc(r["file_time"]), as_utc(r["window_start"]), as_utc(r["window_end"]),
                      int(r["size"]), as_utc(r["mtime"]), r["sha256"], int(r["records"]), r["run_id"])


def recorded_by_run(engine: Engine, pipeline: str, run_id: str, schema: str | None = None) -> dict[str, int]:
    """Records per file as ``etl_files`` holds them for the files a run loaded."""
    table = files_table(schema)
    with engine.connect() as conn:
        if not inspect(conn).has_table(FILES_TABLE, schema=schema):
            return {}
        rows = conn.execute(select(table.c.path, table.c.records)
                            .where(table.c.pipeline == pipeline, table.c.run_id == run_id)).all()
    return {path: int(records) for path, records in rows}


def write_loaded(conn: Connection, pipeline: str, files: Iterable[dict[str, Any]], window_start: datetime,
                 window_end: datetime, run_id: str, schema: str | None = None) -> list[str]:
    """Record the files a window loaded, in the caller's transaction; returns conflicts (empty when none).

    A conflict is a file recorded meanwhile (by another run) with another file time: loading it here too
    would load it in two windows.
    """
    table = files_table(schema)
    files = list(files)
    conflicts = []
    now = datetime.now(UTC)
    for i in range(0, len(files), BATCH):
        part = files[i:i + BATCH]
        keys = [path_key(f["path"]) for f in part]
        old = {r["path"]: _loaded(r) for r in conn.execute(
            select(table).where(table.c.pipeline == pipeline, table.c.path_key.in_(keys))).mappings()}
        for f in part:
            before = old.get(f["path"])
            if before is not None and before.file_time != as_utc(f["file_time"]):
                conflicts.append(f"{f['path']} (recorded by run {before.run_id} with time "
                                 f"{before.file_time.isoformat()}, read here with {f['file_time']})")
        conn.execute(delete(table).where(table.c.pipeline == pipeline, table.c.path_key.in_(keys)))
        conn.execute(insert(table), [{
            "pipeline": pipeline, "path_key": key, "path": f["path"], "file_time": as_utc(f["file_time"]),
            "window_start": window_start, "window_end": window_end, "size": f["size"],
            "mtime": as_utc(f["mtime"]) if f.get("mtime") else None, "sha256": f["sha256"],
            "records": f["records"], "run_id": run_id, "loaded_at": now,
        } for key, f in zip(keys, part, strict=True)])
    return conflicts


class FilesTargetState:
    """A file source's state in the target (``KeepsTargetState``): ``etl_files``, written in the load's transaction.

    ``FileSource`` is one; the load (``driftless.pipeline.load_window``) asks this class directly when it has no
    source instance, so that a load never imports the connector (which reads with pandas).
    """

    @staticmethod
    def prepare_target(engine: Any, schema: str | None) -> None:
        """Create ``etl_files`` before the load's transaction (DDL commits implicitly on MariaDB)."""
        ensure_files_table(engine, schema)

    @staticmethod
    def record_loaded(conn: Any, spec: Any, window: Any, run_id: str, manifest: Any) -> None:
        """Record the window's files in ``etl_files``, in the load's transaction (with the data and watermark)."""
        files = (manifest.metrics or {}).get("files") or []
        conflicts = write_loaded(conn, spec.name, files, window.start, window.end, run_id, spec.target.db_schema)
        if conflicts:
            shown = ", ".join(conflicts[:SHOWN]) + (f" and {len(conflicts) - SHOWN} more"
                                                    if len(conflicts) > SHOWN else "")
            raise LoadError(f"pipeline {spec.name!r}, window {window.key}: {len(conflicts)} file(s) were loaded by "
                            f"another run meanwhile: {shown}; nothing was written. Run the "
                            "window again: it reads the files as recorded now")
