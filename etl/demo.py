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
