"""The ``etl diff`` and ``etl reconcile`` commands (wired in ``driftless/cli.py``).

Both print one JSON line ending in the counts (``missing_in_target``, ``extra_in_target``,
``changed``, ``rows_source``, ``rows_target``, ``status``, ``duration_s``). Exit status: 0 when the
tables agree (or were repaired), 2 when differences remain, 1 on errors.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from sqlalchemy import URL

from driftless.connections import resolve_url, url_from_uri
from driftless.errors import ReconciliationFailed
from driftless.reconcile.digest import DIGEST_COLUMN, DigestColumn, _reflect, drop_digest, ensure_digest, table_columns
from driftless.status import Check
from driftless.targets import database_for_scheme, hash_dialect_for

DIFFERENT = 2


def url_from_arg(value: str) -> URL:
    """A database URL given on the command line, or a connection id (resolved like a spec's)."""
    if "://" in value or (":" in value and database_for_scheme(value.partition(":")[0]) is not None):
        return url_from_uri(value)
    return resolve_url(value)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def diff_command(args: argparse.Namespace) -> int:
    from driftless.reconcile.diff import deep_diff

    if getattr(args, "schema", None):
        schema, table = args.schema, args.table
    else:
        schema, _, table = args.table.rpartition(".")
    target_schema, _, target_table = (args.target_table or args.table).rpartition(".")
    keys = _split(args.key)
    if not keys:
        raise ReconciliationFailed("--key: give at least one key column (comma-separated for a compound key)")
    result = deep_diff(url_from_arg(args.source), url_from_arg(args.target), table, keys,
                       _split(args.columns) or None, target_table=target_table,
                       source_schema=schema or None, target_schema=target_schema or None)
    print(json.dumps(result.summary(args.samples), default=str))
    return 0 if result.status == Check.PASS else DIFFERENT


def digest_command_run(url: URL, table: str, schema: str | None, columns: list[str] | None,
                       drop: bool = False) -> dict[str, Any]:
    """What ``etl digest add|drop`` does: returns the JSON summary it prints."""
    t0 = time.monotonic()
    dialect_cls = hash_dialect_for(url)
    engine = dialect_cls.create_engine(url)
    try:
        dialect = dialect_cls(engine)
        with engine.begin() as conn:
            if drop:
                state = "dropped" if drop_digest(conn, dialect, table, schema) else "absent"
                chosen: list[DigestColumn] = []
            else:
                reflected = _reflect(conn, table, schema)
                every = table_columns(reflected, dialect.floats_are_doubles)
                if columns:
                    by_name = {c.name: c for c in every}
                    unknown = [c for c in columns if c not in by_name]
                    if unknown:
                        raise ReconciliationFailed(
                            f"table {table!r} has no column(s) {unknown} (it has: {', '.join(by_name)})")
                    chosen = [by_name[c] for c in columns]
                else:
                    chosen = every
                state = ensure_digest(conn, dialect, table, schema, chosen)
    finally:
        engine.dispose()
    return {"table": table, "digest": state, "column": DIGEST_COLUMN, "columns": [c.name for c in chosen],
            "duration_s": round(time.monotonic() - t0, 3)}


def digest_command(args: argparse.Namespace) -> int:
    if getattr(args, "schema", None):
        schema, table = args.schema, args.table
    else:
        schema, _, table = args.table.rpartition(".")
    summary = digest_command_run(url_from_arg(args.database), table, schema or None,
                                 _split(getattr(args, "columns", None)) or None,
                                 drop=args.digest_command == "drop")
    print(json.dumps(summary))
    return 0


def reconcile_command(args: argparse.Namespace) -> int:
    from driftless.reconcile.run import reconcile_pipeline
    from driftless.spec import find_spec

    spec = find_spec(args.pipeline, args.specs_dir)
    summary = reconcile_pipeline(spec, deep=args.deep, do_repair=args.repair, samples=args.samples)
    print(json.dumps(summary, default=str))
    return 0 if summary["status"] in (Check.PASS, Check.REPAIRED) else DIFFERENT
