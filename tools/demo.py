"""The demo's data: the shipped Chinook database made into an operational source with a cursor."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHINOOK = REPO / "demo" / "chinook" / "Chinook_Sqlite.sqlite"

# SQLAlchemy's text format for DateTime on SQLite, so window bounds compare as text correctly.
TS = "strftime('%Y-%m-%d %H:%M:%S', {expr}) || '.000000'"


def prepare_source(path: str | Path) -> Path:
    """Copy Chinook to ``path`` and give Invoice and InvoiceLine an indexed ``updated_at`` column."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(CHINOOK, tmp)
    with sqlite3.connect(tmp) as db:
        db.execute("ALTER TABLE Invoice ADD COLUMN updated_at TEXT")
        db.execute(
            "UPDATE Invoice SET updated_at = "
            + TS.format(expr="InvoiceDate, '+' || ((InvoiceId * 7919) % 86400) || ' seconds'")
        )
        db.execute("ALTER TABLE InvoiceLine ADD COLUMN updated_at TEXT")
        db.execute(
            "UPDATE InvoiceLine SET updated_at = "
            "(SELECT i.updated_at FROM Invoice i WHERE i.InvoiceId = InvoiceLine.InvoiceId)"
        )
        db.execute("CREATE INDEX ix_invoice_updated_at ON Invoice (updated_at)")
        db.execute("CREATE INDEX ix_invoiceline_updated_at ON InvoiceLine (updated_at)")
    tmp.replace(path)
    return path


# The demo's file drop: Chinook's tracks as gzipped CSV files, one directory per day (see
# dags/pipelines/chinook_tracks_csv.yaml, which reads them by the date in their path).
DROP_DAYS = ("2025-06-01", "2025-06-02")
TRACK_COLUMNS = ("TrackId", "Name", "AlbumId", "MediaTypeId", "GenreId", "Composer", "Milliseconds", "Bytes",
                 "UnitPrice")


def prepare_file_drop(directory: str | Path) -> list[Path]:
    """Write Chinook's Track table as ``tracks/<day>/tracks.csv.gz`` under ``directory`` (half a day each).

    The files are made afresh each time (same bytes for the same Chinook file), as a partner's drop would be.
    """
    import csv
    import gzip
    import io

    directory = Path(directory)
    with sqlite3.connect(CHINOOK) as db:
        rows = db.execute(f"SELECT {', '.join(TRACK_COLUMNS)} FROM Track ORDER BY TrackId").fetchall()
    half = (len(rows) + 1) // 2
    written = []
    for day, part in zip(DROP_DAYS, (rows[:half], rows[half:]), strict=True):
        text = io.StringIO()
        out = csv.writer(text, lineterminator="\n")
        out.writerow(TRACK_COLUMNS)
        out.writerows(["" if v is None else v for v in row] for row in part)
        path = directory / "tracks" / day / "tracks.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))  # mtime=0: the same bytes every time
        tmp.replace(path)  # appears whole: a reader never sees half a file
        written.append(path)
    return written
