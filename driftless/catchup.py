"""Catch-up: ``etl run PIPELINE`` without ``--start/--end`` runs every window due since the watermark.

The windows:

* The first starts at the pipeline's watermark (``etl_state``: the end of the latest window loaded),
  or at the spec's ``start_date`` (midnight UTC for a date) when the pipeline has never loaded one.
* Each ends at the next time the spec's ``schedule`` fires (cron, UTC), so after the first they are whole
  schedule intervals, the same data intervals Airflow's ``CronDataIntervalTimetable`` gives; with
  ``--window P1D`` (an ISO-8601 duration) each is that long instead.
* Only complete windows run: none ends after ``until`` (default: now). What is left is the next run's.

Each window is extracted, loaded and checked on its own (``run_window``) and commits data, watermark and
run record together, so a catch-up that is killed or fails keeps every window before it, and the next
``etl run`` resumes at the first window that did not commit. A window that fails (nothing committed) or
whose checks fail (committed, ``checks_failed``) ends that pipeline's catch-up: the windows after it wait
until someone has looked.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from croniter import croniter
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from driftless.connections import resolve_url
from driftless.errors import DriftlessError, SpecError
from driftless.spec import PipelineSpec
from driftless.state import read_state
from driftless.status import Run
from driftless.targets import engine_for
from driftless.window import Window, parse_instant

_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)


def parse_step(text: str, option: str = "--window") -> timedelta:
    """``--window`` (or ``option``): an ISO-8601 duration (``P1D``, ``PT6H``, ``P7D``), positive."""
    try:
        if not text.strip().upper().startswith("P"):
            raise ValueError(text)
        step = _DURATION.validate_python(text.strip())
    except (ValidationError, ValueError):
        raise DriftlessError(f"{option}: {text!r} is not an ISO-8601 duration (expected e.g. P1D, PT6H, P7D)") from None
    if step <= timedelta(0):
        raise DriftlessError(f"{option}: {text!r} must be a positive duration")
    return step


def _cron(spec: PipelineSpec) -> str:
    if spec.schedule == "@once":
        raise DriftlessError(f"pipeline {spec.name!r}: schedule '@once' has no intervals to catch up; give "
                             "--start/--end, or --window P1D to catch up in steps of a day")
    return spec.schedule


def next_boundary(schedule: str, after: datetime) -> datetime:
    """The first time after ``after`` (strictly) at which the cron ``schedule`` fires, in UTC."""
    return croniter(schedule, after.astimezone(UTC)).get_next(datetime).astimezone(UTC)


def last_boundary(schedule: str, at: datetime) -> datetime:
    """The latest time at or before ``at`` at which the cron ``schedule`` fires, in UTC."""
    at = at.astimezone(UTC)
    before = croniter(schedule, at).get_prev(datetime).astimezone(UTC)
    following = next_boundary(schedule, before)
    return following if following <= at else before


def schedule_interval(spec: PipelineSpec, at: datetime) -> timedelta:
    """The length of the schedule interval that ended last before ``at`` (cron intervals may vary)."""
    schedule = _cron(spec)
    end = last_boundary(schedule, at)
    start = croniter(schedule, end).get_prev(datetime).astimezone(UTC)
    return end - start


def first_start(spec: PipelineSpec) -> datetime:
    """The spec's ``start_date`` as a UTC instant (a date is its midnight)."""
    value = spec.start_date
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    return parse_instant(value, "start_date")


def plan_windows(spec: PipelineSpec, watermark: datetime | None, until: datetime,
                 step: timedelta | None = None) -> list[Window]:
    """The complete windows from ``watermark`` (or ``start_date``) up to ``until`` (see the module docstring)."""
    cursor = watermark if watermark is not None else first_start(spec)
    schedule = None if step is not None else _cron(spec)
    windows: list[Window] = []
    while True:
        end = cursor + step if step is not None else next_boundary(schedule or "", cursor)
        if end > until:
            return windows
        windows.append(Window(cursor, end))
        cursor = end


def stored_watermark(spec: PipelineSpec) -> datetime | None:
    """The pipeline's watermark in its target's ``etl_state`` (None before its first window)."""
    engine = engine_for(resolve_url(spec.target.connection))
    try:
        state = read_state(engine, spec.name, spec.target.db_schema)
    except SQLAlchemyError as exc:
        from driftless.reconcile.checks import error_detail

        raise DriftlessError(f"pipeline {spec.name!r}: cannot read its watermark from the target: "
                             f"{error_detail(exc)}") from exc
    finally:
        engine.dispose()
    return state.watermark if state else None


@dataclass
class CatchUpResult:
    """What one pipeline's catch-up did."""

    pipeline: str
    planned: int = 0
    done: int = 0
    loaded: int = 0
    written: int = 0
    status: str = Run.SUCCESS  # success (every planned window), checks_failed or failed
    error: str | None = None
    watermark: datetime | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "status": self.status, "windows": self.done, "planned": self.planned,
                "loaded": self.loaded, "written": self.written,
                "watermark": self.watermark.isoformat() if self.watermark else None, "error": self.error}


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def catch_up(spec: PipelineSpec, until: datetime | None = None, step: timedelta | None = None,
             out: TextIO | None = None, err: TextIO | None = None,
             run: Callable[[PipelineSpec, Window], Any] | None = None) -> CatchUpResult:
    """Run every complete window due since the watermark, each committed on its own.

    Prints one JSON line per window (the ``etl run`` summary plus ``catchup: {window, of}``) to ``out``
    and a progress line per window to ``err``. Returns what was done; never raises for a failed window
    (the result's ``status`` and ``error`` say what happened), only for errors before the first window.
    """
    from driftless.pipeline import run_window
    from driftless.reconcile.checks import ChecksFailed

    out = out or sys.stdout
    err = err or sys.stderr
    run = run or run_window
    now = datetime.now(UTC)
    until = until or now
    watermark = stored_watermark(spec)
    windows = plan_windows(spec, watermark, until, step)
    result = CatchUpResult(spec.name, planned=len(windows), watermark=watermark)
    every = f"every {step}" if step is not None else f"schedule {spec.schedule!r}"
    if not windows:
        nxt = (watermark or first_start(spec)) + step if step is not None else next_boundary(
            _cron(spec), watermark or first_start(spec))
        print(f"{spec.name}: up to date (watermark {_stamp(watermark) if watermark else 'none'}; the next "
              f"window ends {_stamp(nxt)} UTC, {every})", file=err, flush=True)
        return result
    print(f"{spec.name}: {len(windows)} window(s) to run, {_stamp(windows[0].start)} -> {_stamp(windows[-1].end)} "
          f"UTC ({every}; from {'the watermark' if watermark else 'start_date, first run'})", file=err, flush=True)
    t0 = time.monotonic()
    for k, window in enumerate(windows, 1):
        try:
            window_result = run(spec, window)
        except ChecksFailed as exc:  # committed, but a check FAILed or could not run
            window_result = exc.result
            result.error = str(exc)
        except (DriftlessError, SQLAlchemyError, OSError) as exc:
            result.status, result.error = Run.FAILED, str(exc)
            print(f"{spec.name}: window {k}/{len(windows)} [{_stamp(window.start)}, {_stamp(window.end)}) failed, "
                  f"nothing of it committed; {len(windows) - k} later window(s) not run: {exc}", file=err, flush=True)
            return result
        summary = window_result.summary()
        print(json.dumps({**summary, "catchup": {"window": k, "of": len(windows)}}, default=str), file=out, flush=True)
        result.done += 1
        result.loaded += window_result.loaded
        result.written += window_result.written
        result.watermark = window_result.watermark or result.watermark
        result.windows.append(summary)
        print(f"{spec.name}: window {k}/{len(windows)} [{_stamp(window.start)}, {_stamp(window.end)}) "
              f"{window_result.status}: {window_result.loaded} rows loaded, {window_result.written} written, "
              f"{window_result.quarantined} quarantined, {window_result.duration_s:.2f} s "
              f"(elapsed {time.monotonic() - t0:.1f} s)", file=err, flush=True)
        if result.error is not None:
            result.status = Run.CHECKS_FAILED
            print(f"{spec.name}: stopped after window {k}/{len(windows)}: its checks failed (the window stays "
                  f"committed); {len(windows) - k} later window(s) not run", file=err, flush=True)
            return result
    return result


def catch_up_all(paths: list[Path], until: datetime | None = None, step: timedelta | None = None,
                 out: TextIO | None = None, err: TextIO | None = None) -> list[CatchUpResult]:
    """``etl run --all``: catch up every spec in ``paths``, one after the other, continuing past failures.

    A spec that does not load is a failed pipeline too (its error names the file and field).
    """
    from driftless.spec import load_spec

    err = err or sys.stderr
    results = []
    for path in paths:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            results.append(CatchUpResult(path.stem, status=Run.FAILED, error=str(exc)))
            print(f"{path.stem}: not run: {exc}", file=err, flush=True)
            continue
        try:
            results.append(catch_up(spec, until, step, out, err))
        except (DriftlessError, SQLAlchemyError, OSError) as exc:
            results.append(CatchUpResult(spec.name, status=Run.FAILED, error=str(exc)))
            print(f"{spec.name}: not run: {exc}", file=err, flush=True)
    return results


def print_summary(results: list[CatchUpResult], err: TextIO | None = None) -> None:
    """The end of ``etl run --all``: one line per pipeline, for people."""
    err = err or sys.stderr
    bad = [r for r in results if r.status != Run.SUCCESS]
    print(f"summary: {len(results)} pipeline(s), {len(results) - len(bad)} ok, {len(bad)} not ok", file=err)
    for r in results:
        line = (f"  {r.status:<13} {r.pipeline}: {r.done}/{r.planned} window(s), {r.loaded} rows loaded, "
                f"{r.written} written")
        if r.error:
            line += f"; {r.error.splitlines()[0][:300]}"
        print(line, file=err)
    err.flush()


def until_from(text: str | None, allow_future: bool) -> datetime | None:
    """``--until``: catch up to this instant instead of now (refused in the future unless ``--allow-future``)."""
    if text is None:
        return None
    until = parse_instant(text, "--until")
    if until > datetime.now(UTC) and not allow_future:
        raise DriftlessError(f"--until: {until.isoformat()} is after now: rows up to then may not exist yet. Give "
                             "a time in the past, or pass --allow-future")
    return until

