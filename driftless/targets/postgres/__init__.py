"""PostgreSQL: everything driftless knows about it, as a source or a target.

* this module: its capabilities and session set-up (``engine``);
* ``load``: the loader (COPY into a temporary staging table, the merge SQL per write mode, the load and
  DDL advisory locks);
* ``rowhash``: the deep diff's canonical texts, row hash and stored digest SQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import URL, Connection, Engine, text

from driftless.engines import Hook, build_engine
from driftless.targets.base import Capabilities, network_connect_args

CAPABILITIES = Capabilities(
    name="postgresql",
    backends=("postgresql",),
    schemes=("postgres", "postgresql", "postgresql+psycopg"),
    driver="postgresql+psycopg",
    streams_copy=True,
    lineage_scheme="postgres",
    default_port=5432,
    default_schema="public",
    bare_float_is_double=True,
    zoned_timestamps=True,
)


def engine(url: URL, *, connect_args: dict[str, Any] | None = None, on_connect: Hook | None = None,
           on_begin: Hook | None = None, **options: Any) -> Engine:
    """An engine with the connect timeout and pooled connections checked before use (``pool_pre_ping``).

    The arguments are ``driftless.engines.build_engine``'s; ``connect_args`` may override the timeout.
    """
    options.setdefault("pool_pre_ping", True)
    return build_engine(url, connect_args={**network_connect_args(url), **(connect_args or {})},
                        on_connect=on_connect, on_begin=on_begin, **options)


def declared_types(conn: Connection, schema: str | None, name: str) -> tuple[dict[str, str], set[str]]:
    """Each column's type as declared in the catalog (``format_type``), for ``etl discover``; no JSON checks."""
    rows = conn.execute(text(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :s AND c.relname = :t AND a.attnum > 0 AND NOT a.attisdropped"),
        {"s": schema, "t": name}).all()
    return {r[0]: r[1] for r in rows}, set()
