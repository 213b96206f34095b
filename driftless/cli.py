"""The ``etl`` command: the same code paths as the DAGs, without Airflow.

etl run PIPELINE --start 2025-01-01 --end 2025-01-02
etl run PIPELINE | --all [--window P1D] [--until T]     (catch up from the watermark)
etl status [PIPELINE] [--json | --prometheus] [--grace PT1H]
etl specs check [DIR]
etl discover SOURCE_CONNECTION --target CONNECTION [--tables t1,t2 | --schema s] [--out DIR] [--force]
etl discover API_CONNECTION --rest --endpoint /v1/customers --target CONNECTION [--records PATH]
etl quarantine list PIPELINE [--reason R] [--window START/END] [--run ID] [--summary]
etl quarantine replay PIPELINE
etl diff SOURCE_URL TARGET_URL --table T --key id [--columns a,b]
etl reconcile PIPELINE [--deep] [--repair]
etl report --out DIR

Each command imports the modules it runs when it runs (inside its ``_cmd_*`` function): ``etl --help`` and
a command load only what they use (pandas, pandera, SQLAlchemy, Airflow are each seconds of start-up).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftless import logs
from driftless.errors import DriftlessError, SpecError
from driftless.spec import default_specs_dir, find_spec, load_specs, spec_files
from driftless.window import Window

#: The specs directory rule, as every command's help states it (``driftless.spec.default_specs_dir``).
SPECS_DIR_HELP = ("directory of specs (default: $DRIFTLESS_SPECS_DIR, else pipelines/ in $AIRFLOW__CORE__DAGS_FOLDER, "
                  "else ./dags/pipelines)")


def _cmd_run(args: argparse.Namespace) -> int:
    from driftless.pipeline import run_window
    from driftless.reconcile.checks import ChecksFailed

    if args.all or (args.start is None and args.end is None):
        return _cmd_catch_up(args)
    if args.start is None or args.end is None:
        raise DriftlessError("give both --start and --end for one window, or neither to catch up from the watermark")
    if args.window or args.until:
        raise DriftlessError("--window and --until are for catching up (no --start/--end); "
                             "--start/--end already give the window")
    spec = find_spec(args.pipeline, args.specs_dir)
    window = Window.parse(args.start, args.end)
    if not args.allow_future:
        window.refuse_future("--end", "pass --allow-future to sync it anyway (the watermark then stops at the "
                             "time the source was read)")
    try:
        result = run_window(spec, window, run_id=args.run_id)
    except ChecksFailed as exc:  # loaded and committed: the summary says so, the error says which checks
        print(json.dumps(exc.result.summary(), default=str))
        raise
    print(json.dumps(result.summary(), default=str))
    return 0


def _cmd_catch_up(args: argparse.Namespace) -> int:
    from driftless.catchup import catch_up, catch_up_all, parse_step, print_summary, until_from
    from driftless.status import Run

    if args.run_id:
        raise DriftlessError("--run-id names the run of one window; a catch-up gives each window its own id")
    if args.all and (args.pipeline or args.start or args.end):
        raise DriftlessError("--all runs every spec of the specs directory: give no PIPELINE and no --start/--end")
    if not args.all and not args.pipeline:
        raise DriftlessError("give a PIPELINE to run, or --all")
    step = parse_step(args.window) if args.window else None
    until = until_from(args.until, args.allow_future)
    if args.all:
        results = catch_up_all(spec_files(args.specs_dir or default_specs_dir()), until, step)
        print_summary(results)
        return 0 if all(r.status == Run.SUCCESS for r in results) else 1
    result = catch_up(find_spec(args.pipeline, args.specs_dir), until, step)
    if result.status != Run.SUCCESS:
        raise DriftlessError(f"pipeline {result.pipeline!r}: {result.done} of {result.planned} window(s) "
                             f"committed, then: {result.error}")
    return 0


def _cmd_specs_check(args: argparse.Namespace) -> int:
    directory = args.dir or default_specs_dir()
    specs = load_specs(directory)
    from driftless.extract.validate import check_code

    # load_specs keeps the order of spec_files (and fails on any error), so each spec has its file.
    problems = [f"{path}: {problem}" for path, spec in zip(spec_files(directory), specs, strict=True)
                for problem in check_code(spec)]
    if problems:
        raise SpecError("\n".join(problems))
    for path in spec_files(directory):
        print(f"ok  {path}")
    print(f"{len(specs)} spec(s) valid in {directory}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from driftless.health import status_command

    return status_command(args)


def _cmd_discover(args: argparse.Namespace) -> int:
    """``etl discover``: exit 0 when every spec was written or is unchanged, 2 when an existing one differs."""
    from croniter import croniter

    from driftless.discover.rest import discover_rest
    from driftless.discover.sql import discover
    from driftless.spec import CRON_PRESETS

    if args.schedule not in CRON_PRESETS and not croniter.is_valid(args.schedule):
        raise DriftlessError(f"--schedule: {args.schedule!r} is not a cron expression or preset (expected e.g. "
                             "'0 2 * * *' or '@daily')")
    tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
    out_dir = Path(args.out) if args.out else default_specs_dir()
    if args.rest or args.endpoint:
        if not (args.rest and args.endpoint) or tables or args.schema:
            raise DriftlessError("a REST source takes --rest and --endpoint (no --tables or --schema)")
        result = discover_rest(args.source, args.endpoint, args.target, out_dir, args.records, args.name,
                               args.schedule, args.target_schema, args.force)
    else:
        result = discover(args.source, args.target, out_dir, tables, args.schema, args.schedule, args.prefix or "",
                          args.target_schema, args.force)
    print(f"{len(result.written)} written, {len(result.unchanged)} unchanged, {len(result.changed)} changed in the "
          f"source (not overwritten), {len(result.drafts)} draft(s) in {out_dir}", file=sys.stderr)
    if result.changed:
        print("review the changes above, then re-run with --force to overwrite", file=sys.stderr)
        return 2
    return 0


def _plain_json(value: Any) -> Any:
    """A value for a JSON line (strict JSON): a NaN as the text ``"NaN"``, datetimes as ISO-8601 UTC.

    A quarantined record holds a NaN only where one came in as a value (``to_json_value``), never for a NULL.
    """
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return value


QUARANTINE_LIST_FIELDS = ("id", "record_key", "errors", "record", "run_id", "window_start", "window_end",
                          "first_seen", "last_seen", "times_seen")


def _cmd_quarantine(args: argparse.Namespace) -> int:
    """``etl quarantine list|replay PIPELINE``: one JSON line per record (or per reason with --summary)."""
    from driftless.connections import resolve_url
    from driftless.quarantine.replay import replay
    from driftless.quarantine.store import iter_quarantine, reasons_of_entry
    from driftless.targets.loaders import loader_for

    spec = find_spec(args.pipeline, args.specs_dir)
    if args.quarantine_command == "replay":
        print(json.dumps(replay(spec, run_id=args.run_id).summary(), default=str))
        return 0
    window = None
    if args.window:
        start, sep, end = args.window.partition("/")
        if not sep or not start or not end:
            raise DriftlessError(f"--window: {args.window!r} is not START/END (e.g. 2025-01-01/2025-01-02)")
        window = Window.parse(start, end)
    loader = loader_for(resolve_url(spec.target.connection))
    summary: Counter = Counter()
    shown = 0
    try:
        entries = iter_quarantine(loader.engine, spec, run_id=args.run, window=window, reason=args.reason)
        try:
            for entry in entries:
                if args.summary:
                    summary.update(reasons_of_entry(entry["errors"]))
                    shown += 1
                    continue
                if args.limit and shown >= args.limit:
                    break
                print(json.dumps(_plain_json({k: entry[k] for k in QUARANTINE_LIST_FIELDS}), ensure_ascii=False,
                                 allow_nan=False, default=str))
                shown += 1
        finally:
            entries.close()
    finally:
        loader.dispose()
    if args.summary:
        for reason, count in sorted(summary.items(), key=lambda kv: (-kv[1], kv[0])):
            column, _, check = reason.partition(": ")
            print(json.dumps({"column": None if column == "(row)" else column, "check": check, "records": count},
                             ensure_ascii=False))
    print(f"{shown} quarantined record(s) for pipeline {spec.name!r}", file=sys.stderr)
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from driftless.reconcile.cli import diff_command

    return diff_command(args)


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from driftless.reconcile.cli import reconcile_command

    return reconcile_command(args)


def _cmd_digest(args: argparse.Namespace) -> int:
    from driftless.reconcile.cli import digest_command

    return digest_command(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from driftless.report import report_command

    return report_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description="driftless: declarative, idempotent data syncs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (rows, chunks, elapsed)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="sync one window of a pipeline, or (without --start/--end) every window due "
                         "since its watermark")
    run.add_argument("pipeline", nargs="?", help="pipeline name (a spec in the specs directory) or a spec file path")
    run.add_argument("--start", help="window start, ISO-8601 (UTC unless a zone is given)")
    run.add_argument("--end", help="window end (exclusive), ISO-8601")
    run.add_argument("--all", action="store_true", help="catch up every pipeline of the specs directory, one after "
                     "the other, continuing past a failing one; exits non-zero at the end if any failed")
    run.add_argument("--window", metavar="DURATION", help="catch-up step, an ISO-8601 duration (P1D, PT6H) "
                     "(default: one schedule interval)")
    run.add_argument("--until", help="catch up to this time instead of now (ISO-8601); only complete windows run")
    run.add_argument("--specs-dir", help=SPECS_DIR_HELP)
    run.add_argument("--run-id", help="id recorded in etl_runs (default: generated)")
    run.add_argument("--allow-future", action="store_true", help="accept a window ending after now (refused "
                     "otherwise); the watermark then moves only up to the time the source was read")
    run.set_defaults(func=_cmd_run)

    st = sub.add_parser("status", help="is each pipeline fresh and healthy: last run, watermark, lag behind the "
                        "schedule, rows, quarantine, failing checks; exit 2 when one is stale or failing")
    st.add_argument("pipeline", nargs="?", help="pipeline name or spec file path (default: every spec)")
    st.add_argument("--json", action="store_true", help="one JSON object per pipeline instead of the table")
    st.add_argument("--prometheus", action="store_true", help="the latest run's metrics in Prometheus' text format "
                    "(for node_exporter's textfile collector); same names as the Airflow metrics (README: Monitoring)")
    st.add_argument("--grace", metavar="DURATION", help="stale = watermark older than 2 schedule intervals + this "
                    "ISO-8601 duration (default PT1H)")
    st.add_argument("--specs-dir", help=SPECS_DIR_HELP)
    st.set_defaults(func=_cmd_status)

    diff = sub.add_parser("diff", help="compare a table in two databases row by row (no spec needed)")
    diff.add_argument("source", help="source database URL (postgresql://, mysql://, sqlite:///) or connection id")
    diff.add_argument("target", help="target database URL or connection id")
    diff.add_argument("--table", required=True, help="table name (schema.table allowed)")
    diff.add_argument("--target-table", help="table name in the target, when it differs")
    diff.add_argument("--key", required=True, help="key column(s), comma-separated for a compound key")
    diff.add_argument("--columns", help="compared columns, comma-separated (default: all columns both share)")
    diff.add_argument("--samples", type=int, default=5, help="sample rows per kind of difference (default 5)")
    diff.set_defaults(func=_cmd_diff)

    rec = sub.add_parser("reconcile", help="check that a pipeline's target agrees with its source")
    rec.add_argument("pipeline", help="pipeline name or spec file path")
    rec.add_argument("--deep", action="store_true", help="find the rows that differ (deep diff)")
    rec.add_argument("--repair", action="store_true", help="re-sync the rows that differ, then verify (implies --deep)")
    rec.add_argument("--samples", type=int, default=5, help="sample rows per kind of difference (default 5)")
    rec.add_argument("--specs-dir", help=SPECS_DIR_HELP)
    rec.set_defaults(func=_cmd_reconcile)

    dig = sub.add_parser("digest", help="stored row digests: deep diffs of the table sum one column instead of "
                         "hashing every row (PostgreSQL, MariaDB/MySQL)")
    dig_sub = dig.add_subparsers(dest="digest_command", required=True)
    dig_add = dig_sub.add_parser("add", help="add (or bring up to date) the table's digest column; the database "
                                 "then computes it on every write")
    dig_drop = dig_sub.add_parser("drop", help="remove the table's digest column")
    for d in (dig_add, dig_drop):
        d.add_argument("database", help="database URL or connection id")
        d.add_argument("--table", required=True, help="table name as the database holds it (quoted for you: "
                       "'Order Items' works); schema.table allowed when --schema is not given")
        d.add_argument("--schema", help="the table's schema (then --table is taken whole, dots included)")
    dig_add.add_argument("--columns", help="covered columns, comma-separated (default: all; a diff uses the "
                         "digest when it compares exactly these)")
    dig.set_defaults(func=_cmd_digest)

    rep = sub.add_parser("report", help="write the data-consistency report (HTML + JSON) of all pipelines")
    rep.add_argument("--out", required=True, help="output directory (report.html and report.json)")
    rep.add_argument("--specs-dir", help=SPECS_DIR_HELP)
    rep.add_argument("--deep", action="store_true", help="run a deep diff of every pipeline first; exit status 2 "
                     "when one FAILs, 1 when one could not run (ERROR), the report is written either way")
    rep.set_defaults(func=_cmd_report)

    specs = sub.add_parser("specs", help="work with pipeline specs")
    specs_sub = specs.add_subparsers(dest="specs_command", required=True)
    check = specs_sub.add_parser("check", help="validate every spec of a directory")
    check.add_argument("dir", nargs="?", help=SPECS_DIR_HELP)
    check.set_defaults(func=_cmd_specs_check)

    disc = sub.add_parser("discover", help="write one pipeline spec per table of a source database (types, key, "
                          "cursor, comments where a person must decide)")
    disc.add_argument("source", help="source connection id (AIRFLOW_CONN_<ID> or an Airflow Connection)")
    disc.add_argument("--target", required=True, help="target connection id written into the specs")
    disc.add_argument("--tables", help="only these tables, comma-separated (default: every table)")
    disc.add_argument("--schema", help="the source schema to read (default: the connection's; PostgreSQL: public)")
    disc.add_argument("--out", help="directory to write the specs to; " + SPECS_DIR_HELP)
    disc.add_argument("--schedule", default="@daily", help="schedule written into the specs (default @daily)")
    disc.add_argument("--prefix", help="prefix of the pipeline and target table names (e.g. shop_)")
    disc.add_argument("--target-schema", help="schema of the target tables")
    disc.add_argument("--rest", action="store_true", help="SOURCE_CONNECTION is an HTTP JSON API: sample one page "
                      "of --endpoint and propose columns, key, cursor and paginator")
    disc.add_argument("--endpoint", help="--rest: the endpoint path (e.g. /v1/customers)")
    disc.add_argument("--records", help="--rest: JSON path of the records in the page (default: found in the body)")
    disc.add_argument("--name", help="--rest: pipeline name (default: <connection>_<last part of the endpoint>)")
    disc.add_argument("--force", action="store_true", help="overwrite existing specs that differ (without it, "
                      "discover prints what changed in the source and a diff, and exits 2)")
    disc.set_defaults(func=_cmd_discover)

    quarantine = sub.add_parser("quarantine", help="rows that failed validation (kept in etl_quarantine)")
    q_sub = quarantine.add_subparsers(dest="quarantine_command", required=True)
    q_list = q_sub.add_parser("list", help="print the pipeline's quarantined records, one JSON line each")
    q_replay = q_sub.add_parser("replay", help="validate quarantined records again (current spec) and load "
                                "those that pass, exactly once")
    for q in (q_list, q_replay):
        q.add_argument("pipeline", help="pipeline name or spec file path")
        q.add_argument("--specs-dir", help=SPECS_DIR_HELP)
    q_list.add_argument("--limit", type=int, help="at most this many records")
    q_list.add_argument("--reason", help="only records with this reason: a check (not_nullable), a column "
                        "(total; '(row)' for DataFrame-wide checks) or 'column: check'")
    q_list.add_argument("--window", metavar="START/END", help="only records last seen by a run of a window "
                        "inside [START, END), ISO-8601 (e.g. 2025-01-01/2025-01-02)")
    q_list.add_argument("--run", metavar="RUN_ID", help="only records last seen by this run")
    q_list.add_argument("--summary", action="store_true", help="instead of the records, print one JSON line per "
                        "reason: column, check and the number of records")
    q_replay.add_argument("--run-id", help="id recorded in etl_runs (default: generated)")
    quarantine.set_defaults(func=_cmd_quarantine)
    return parser


def _prog() -> str:
    """The command's name as invoked: ``driftless``, or its short alias ``etl``."""
    name = Path(sys.argv[0]).name
    return name if name in ("etl", "driftless") else "driftless"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.verbose)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, inside the try
        return code
    except BrokenPipeError:
        # The reader closed the pipe (`etl quarantine list X | head`): stop quietly. Python flushes stdout
        # again at exit, so point it at devnull first (Python docs, signal module: "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except DriftlessError as exc:
        print(f"etl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("etl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
