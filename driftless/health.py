"""``etl status [PIPELINE]``: is each pipeline fresh and healthy? A table for people, ``--json`` for machines.

Per pipeline, read from its target database (``etl_state``, ``etl_runs``, ``etl_quarantine``,
``etl_reconciliation``): the last run and its status, the watermark, how far it is behind the schedule,
the rows of the last window, the quarantined records still open and the checks of the last run that
FAILed or could not run (ERROR).

Health, one word per pipeline:

* ``ok``: fresh, and the last run succeeded.
* ``stale``: the watermark is older than two schedule intervals plus the grace (``--grace``, default one
  hour): ``now - watermark > 2 x interval + grace``, where interval is the length of the schedule's latest
  interval. So one missed or late run is tolerated, two are not. A pipeline that never loaded a window is
  measured from its ``start_date`` the same way (``pending`` until then). An event-driven pipeline without an
  explicit ``schedule`` (``trigger:`` only) has no cadence and is never ``stale``.
* ``failing``: the last run failed (nothing committed) or its checks failed (``checks_failed``).
* ``error``: the target could not be read; nothing is known.

Exit status: 0 when every pipeline is ``ok`` or ``pending``; 2 when one is ``stale`` or ``failing``;
otherwise 1 when one is ``error``. A health check can run ``etl status`` as it is.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from driftless.catchup import first_start, last_boundary, parse_step, schedule_interval
from driftless.connections import resolve_url
from driftless.errors import DriftlessError, SpecError
from driftless.metrics import prometheus_text, run_values
from driftless.spec import PipelineSpec, default_specs_dir, find_spec, load_spec, spec_files
from driftless.state import RUNS_TABLE, as_utc, read_state, state_tables
from driftless.status import BAD, Run
from driftless.targets import engine_for

DEFAULT_GRACE = timedelta(hours=1)
STALE_INTERVALS = 2


@dataclass
class PipelineHealth:
    """One line of ``etl status`` (``--json`` prints it as one JSON object)."""

    pipeline: str
    source: str
    target: str
    health: str = "ok"  # ok | pending | stale | failing | error
    reasons: list[str] = field(default_factory=list)
    last_run_status: str | None = None
    last_run_at: datetime | None = None
    last_window: dict[str, str] | None = None
    watermark: datetime | None = None
    behind_s: float | None = None  # the latest schedule time minus the watermark (0: up to date)
    lag_s: float | None = None  # now minus the watermark
    interval_s: float | None = None
    stale_after_s: float | None = None  # 2 x interval + grace
    rows_loaded: int | None = None
    rows_written: int | None = None
    quarantined_open: int = 0
    failing_checks: list[str] = field(default_factory=list)
    last_run: dict[str, Any] | None = field(default=None, repr=False)  # the etl_runs row (for --prometheus)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["last_run"]
        for key in ("last_run_at", "watermark"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


def _source_label(spec: PipelineSpec) -> str:
    src = spec.source
    what = getattr(src, "table", None) or getattr(src, "endpoint", None) or "query"
    return f"{src.connection}:{what}"


def _target_label(spec: PipelineSpec) -> str:
    schema = f"{spec.target.db_schema}." if spec.target.db_schema else ""
    return f"{spec.target.connection}:{schema}{spec.target.table}"


def _last_run(engine: Engine, spec: PipelineSpec) -> dict[str, Any] | None:
    _, runs = state_tables(spec.target.db_schema)
    if not inspect(engine).has_table(RUNS_TABLE, schema=spec.target.db_schema):
        return None
    with engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.pipeline == spec.name).order_by(runs.c.id.desc()).limit(1)).first()
    return dict(row._mapping) if row is not None else None


def _open_quarantine(engine: Engine, spec: PipelineSpec) -> int:
    from driftless.quarantine.store import QUARANTINE_TABLE, quarantine_table

    if not inspect(engine).has_table(QUARANTINE_TABLE, schema=spec.target.db_schema):
        return 0
    table = quarantine_table(spec.target.db_schema)
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)
                                .where(table.c.pipeline == spec.name)).scalar_one())


def _failing_checks(engine: Engine, spec: PipelineSpec, run_id: str) -> list[str]:
    from driftless.reconcile.store import RECONCILIATION_TABLE, reconciliation_table

    if not inspect(engine).has_table(RECONCILIATION_TABLE, schema=spec.target.db_schema):
        return []
    table = reconciliation_table(spec.target.db_schema)
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.check_name, table.c.status).where(
            table.c.pipeline == spec.name, table.c.run_id == run_id, table.c.status.in_(sorted(BAD)))
            .order_by(table.c.id)).all()
    return [f"{r.check_name} {r.status}" for r in rows]


def pipeline_health(spec: PipelineSpec, now: datetime | None = None, grace: timedelta = DEFAULT_GRACE,
                    engine: Engine | None = None) -> PipelineHealth:
    """The health of one pipeline, read from its target (see the module docstring for the rules)."""
    now = now or datetime.now(UTC)
    h = PipelineHealth(spec.name, _source_label(spec), _target_label(spec))
    own = engine is None
    try:
        engine = engine or engine_for(resolve_url(spec.target.connection))
        state = read_state(engine, spec.name, spec.target.db_schema)
        last = _last_run(engine, spec)
        h.quarantined_open = _open_quarantine(engine, spec)
        if last is not None:
            h.last_run = last
            h.last_run_status = last["status"]
            h.last_run_at = as_utc(last["finished_at"])
            h.last_window = {"start": as_utc(last["window_start"]).isoformat(),
                             "end": as_utc(last["window_end"]).isoformat()}
            h.rows_loaded, h.rows_written = last["loaded"], last["written"]
            h.failing_checks = _failing_checks(engine, spec, last["run_id"])
    except (DriftlessError, SQLAlchemyError) as exc:
        from driftless.reconcile.checks import error_detail

        h.health = "error"
        detail = str(exc) if isinstance(exc, DriftlessError) else f"cannot read the target: {error_detail(exc)}"
        h.reasons.append(detail)
        return h
    finally:
        if own and engine is not None:
            engine.dispose()
    h.watermark = state.watermark if state else None
    if spec.schedule != "@once" and spec.runs_on_schedule:
        interval = schedule_interval(spec, now)
        stale_after = STALE_INTERVALS * interval + grace
        h.interval_s, h.stale_after_s = interval.total_seconds(), stale_after.total_seconds()
        since = h.watermark or first_start(spec)
        h.behind_s = max(0.0, (last_boundary(spec.schedule, now) - since).total_seconds())
        h.lag_s = (now - since).total_seconds() if h.watermark else None
        if now - since > stale_after:
            h.health = "stale"
            what = f"watermark {since.isoformat()}" if h.watermark else f"no watermark, start_date {since.isoformat()}"
            h.reasons.append(f"{what} is {_duration(now - since)} old, more than {STALE_INTERVALS} schedule intervals "
                             f"({_duration(interval)} each) + {_duration(grace)} grace")
        elif h.watermark is None:
            h.health = "pending"
            h.reasons.append("no window loaded yet")
    elif not spec.runs_on_schedule and h.watermark is None:  # event-driven only: no cadence to be late for
        h.health = "pending"
        h.reasons.append("no window loaded yet (runs when a message arrives)")
    if h.last_run_status in (Run.FAILED, Run.CHECKS_FAILED):
        h.health = "failing"
        h.reasons.append(f"last run {h.last_run_status}" + (f": {', '.join(h.failing_checks)}" if h.failing_checks
                                                             else ""))
    return h


def _duration(value: timedelta | float | None) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def render_table(rows: list[PipelineHealth], now: datetime) -> str:
    """The people's view: aligned columns, then a line per pipeline that is not ok saying why."""
    header = ["PIPELINE", "SOURCE -> TARGET", "LAST RUN", "WATERMARK", "BEHIND", "ROWS", "QUARANTINED", "CHECKS",
              "HEALTH"]
    table = [header]
    for h in rows:
        rows_text = "-" if h.rows_loaded is None else f"{h.rows_loaded} ({h.rows_written} written)"
        table.append([h.pipeline, f"{h.source} -> {h.target}",
                      f"{_when(h.last_run_at)} {h.last_run_status}" if h.last_run_status else "never",
                      _when(h.watermark), _duration(h.behind_s), rows_text, str(h.quarantined_open),
                      ", ".join(h.failing_checks) or "-", h.health.upper() if h.health != "ok" else "ok"])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    for h in rows:
        for reason in h.reasons:
            if h.health != "ok":
                lines.append(f"{h.pipeline}: {h.health}: {reason}")
    lines.append(f"as of {now.strftime('%Y-%m-%d %H:%M:%S')} UTC; stale = watermark older than {STALE_INTERVALS} "
                 "schedule intervals + grace")
    return "\n".join(lines)


def prometheus_health(rows: list[PipelineHealth], now: datetime) -> str:
    """The pipelines' latest-run metrics (``driftless.metrics`` names) in Prometheus' text format.

    For users without Airflow: ``etl status --prometheus > /var/lib/node_exporter/driftless.prom``.
    Pipelines never run are left out.
    """
    values = {h.pipeline: run_values(h.last_run, h.watermark, now=now) for h in rows if h.last_run is not None}
    return prometheus_text(values)


def exit_code(rows: list[PipelineHealth]) -> int:
    states = {h.health for h in rows}
    if states & {"stale", "failing"}:
        return 2
    return 1 if "error" in states else 0


def status_command(args: Any, out: TextIO | None = None) -> int:
    """``etl status [PIPELINE] [--json | --prometheus] [--grace PT1H]``."""
    out = out or sys.stdout
    grace = parse_step(args.grace, "--grace") if args.grace else DEFAULT_GRACE
    now = datetime.now(UTC)
    rows: list[PipelineHealth] = []
    if args.pipeline:
        specs = [find_spec(args.pipeline, args.specs_dir)]
    else:
        specs = []
        for path in spec_files(Path(args.specs_dir) if args.specs_dir else default_specs_dir()):
            try:
                specs.append(load_spec(path))
            except SpecError as exc:  # one bad spec does not hide the others' health
                rows.append(PipelineHealth(path.stem, "-", "-", health="error", reasons=[str(exc)]))
    rows.extend(pipeline_health(spec, now, grace) for spec in specs)
    rows.sort(key=lambda h: h.pipeline)
    if getattr(args, "prometheus", False):
        print(prometheus_health(rows, now), file=out, end="")
    elif args.json:
        for h in rows:
            print(json.dumps(h.as_json(), default=str), file=out)
    else:
        print(render_table(rows, now), file=out)
    return exit_code(rows)
