"""MariaDB / MySQL: everything driftless knows about it, as a source or a target.

* this module: its capabilities and session set-up (``engine``);
* ``load``: the loader (``LOAD DATA LOCAL INFILE`` into a temporary staging table, the merge SQL per
  write mode, the ``GET_LOCK`` load and DDL locks, the dry run's stand-in table);
* ``rowhash``: the deep diff's canonical texts, row hash and stored digest SQL.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import URL, Connection, Engine, text

from driftless.engines import Hook, build_engine
from driftless.targets.base import Capabilities, network_connect_args

CAPABILITIES = Capabilities(
    name="mysql",
    backends=("mysql", "mariadb"),
    schemes=("mysql", "mariadb", "mysql+pymysql"),
    driver="mysql+pymysql",
    lineage_scheme="mysql",
    default_port=3306,
    json_as_longtext=True,
    text_keys_only_varchar=True,
)


def engine(url: URL, *, connect_args: dict[str, Any] | None = None, on_connect: Hook | None = None,
           on_begin: Hook | None = None, **options: Any) -> Engine:
    """An engine whose sessions speak ``utf8mb4`` unless the URL names a charset.

    Also: the connect timeout, and pooled connections checked before use (``pool_pre_ping``).

    The arguments are ``driftless.engines.build_engine``'s; ``connect_args`` may override the timeout.
    """
    if "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    options.setdefault("pool_pre_ping", True)
    return build_engine(url, connect_args={**network_connect_args(url), **(connect_args or {})},
                        on_connect=on_connect, on_begin=on_begin, **options)


def declared_types(conn: Connection, schema: str | None, name: str) -> tuple[dict[str, str], set[str]]:
    """Each column's declared ``COLUMN_TYPE``, and the columns a ``json_valid`` check makes JSON (MariaDB's JSON)."""
    rows = conn.execute(text("SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
                             "WHERE TABLE_SCHEMA = :s AND TABLE_NAME = :t"), {"s": schema, "t": name}).all()
    checks = conn.execute(text("SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                               "WHERE CONSTRAINT_SCHEMA = :s AND TABLE_NAME = :t"),
                          {"s": schema, "t": name}).scalars().all()
    json_cols = {m[1] for clause in checks for m in [re.fullmatch(r"json_valid\(`(.+)`\)", clause or "")] if m}
    return {r[0]: r[1] for r in rows}, json_cols
