"""SQLite: everything driftless knows about it, as a source or a target.

* this module: its capabilities and session set-up (``engine``);
* ``load``: the loader (``INSERT ... ON CONFLICT`` straight into the target in one ``BEGIN IMMEDIATE``
  transaction, WAL, the refusal of decimals SQLite cannot hold exactly);
* ``rowhash``: the deep diff's canonical texts, row hash and stored digest (Python functions registered
  on each connection, a digest column driftless fills and a trigger that clears it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import URL, Connection, Engine

from driftless.engines import Hook, build_engine
from driftless.targets.base import Capabilities

#: significant digits SQLite keeps exactly (it holds NUMERIC values as binary doubles)
SQLITE_EXACT_DIGITS = 15

CAPABILITIES = Capabilities(
    name="sqlite",
    backends=("sqlite",),
    schemes=("sqlite",),
    driver="sqlite",
    file_database=True,
    lineage_scheme="file",
    schemas=False,
    timestamps_as_text=True,
    exact_digits=SQLITE_EXACT_DIGITS,
)


def engine(url: URL, *, connect_args: dict[str, Any] | None = None, on_connect: Hook | None = None,
           on_begin: Hook | None = None, **options: Any) -> Engine:
    """An engine for a SQLite file.

    No connect timeout (nothing to wait for), no ``pool_pre_ping`` (its connections are files in this process).

    The arguments are ``driftless.engines.build_engine``'s.
    """
    return build_engine(url, connect_args=connect_args, on_connect=on_connect, on_begin=on_begin, **options)


def declared_types(conn: Connection, schema: str | None, name: str) -> tuple[dict[str, str], set[str]]:
    """Each column's declared type (``PRAGMA table_info``; SQLite has one namespace per file, no schema)."""
    quoted = conn.dialect.identifier_preparer.quote(name)
    rows = conn.exec_driver_sql(f"PRAGMA table_info({quoted})").all()
    return {r[1]: r[2] for r in rows}, set()
