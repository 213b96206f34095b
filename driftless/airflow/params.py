"""The trigger-form options of every pipeline DAG, and the check that turns them into a run's window.

Airflow validates each Param on its own against its JSON schema (type, ``format: date-time``) when a
run is triggered. Rules that involve several fields (``start`` and ``end`` both or neither,
``start < end``, ``full_refresh`` without overrides) cannot be expressed per field, so
``run_options`` checks them in the first task of the run and raises ``InvalidParams`` naming the
field and what was expected.

Options, as the form shows them:

* ``start`` / ``end``: sync exactly this window instead of the run's data interval (both or
  neither; ISO-8601; a value without a zone is UTC; ``end`` is exclusive, and not after now).
* ``full_refresh``: re-read everything from the spec's ``start_date`` up to the run's end. Rows are
  upserted as usual (nothing is dropped), so a full refresh repairs drift without a gap.
* ``dry_run``: extract and validate, then compare with the target and report how many rows would
  be inserted, updated or left unchanged; nothing is written and the watermark does not move.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from driftless.errors import DriftlessError
from driftless.spec import PipelineSpec
from driftless.window import Window, parse_instant


class InvalidParams(DriftlessError):
    """The trigger form's options of a run contradict each other or are malformed."""


# Per-field JSON schemas of the trigger form (Airflow's ``Param`` validates each one with jsonschema).
PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "start": {
        "default": None,
        "type": ["null", "string"],
        "format": "date-time",
        "title": "Window start",
        "description": "Sync this window instead of the run's data interval (ISO-8601, UTC unless a zone is "
        "given). Give both start and end, or neither.",
    },
    "end": {
        "default": None,
        "type": ["null", "string"],
        "format": "date-time",
        "title": "Window end (exclusive)",
        "description": "End of the overriding window; must be after start.",
    },
    "full_refresh": {
        "default": False,
        "type": "boolean",
        "title": "Full refresh",
        "description": "Re-read the whole history (from the spec's start_date to the run's end) and upsert it. "
        "Cannot be combined with start/end.",
    },
    "dry_run": {
        "default": False,
        "type": "boolean",
        "title": "Dry run",
        "description": "Extract and validate, then report how many rows would be inserted, updated or left "
        "unchanged. Writes nothing; the watermark does not move.",
    },
}


def trigger_params() -> dict[str, Any]:
    """The DAG's ``params``: one ``airflow.sdk.Param`` per option (imports Airflow)."""
    from airflow.sdk import Param

    params = {}
    for name, schema in PARAM_SCHEMAS.items():
        schema = dict(schema)
        default = schema.pop("default")
        params[name] = Param(default, **schema)
    return params


@dataclass(frozen=True)
class RunOptions:
    """What a run does: its window, and whether it is a dry run or a full refresh."""

    window: Window
    dry_run: bool = False
    full_refresh: bool = False
    overridden: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"window": self.window.as_dict(), "dry_run": self.dry_run, "full_refresh": self.full_refresh,
                "overridden": self.overridden}


def _flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidParams(f"param {name!r}: expected true or false, got {value!r}")


def _instant(params: dict[str, Any], name: str) -> datetime | None:
    value = params.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return parse_instant(value, f"param {name!r}")
    except DriftlessError as exc:
        raise InvalidParams(str(exc)) from exc


def run_options(
    spec: PipelineSpec,
    params: dict[str, Any] | None,
    interval_start: datetime | str | None,
    interval_end: datetime | str | None,
    declared: set[str] | None = None,
) -> RunOptions:
    """Check a run's params and decide its window.

    Args:
        spec: the pipeline.
        params: the run's params (the trigger form, or ``--conf`` / ``dag_run_conf``).
        interval_start: the run's data interval start (used when no override is given).
        interval_end: the run's data interval end.
        declared: every param the DAG declares (default: the options above); any other key, such as a
            misspelt ``--conf`` key, is rejected rather than silently ignored.

    Raises:
        InvalidParams: naming the param and what was expected.
    """
    params = dict(params or {})
    allowed = set(PARAM_SCHEMAS) | set(declared or ())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InvalidParams(f"unknown param(s) {unknown} (expected some of: {', '.join(sorted(allowed))})")
    start, end = _instant(params, "start"), _instant(params, "end")
    dry_run, full_refresh = _flag(params, "dry_run"), _flag(params, "full_refresh")
    if (start is None) != (end is None):
        given, missing = ("start", "end") if start is not None else ("end", "start")
        raise InvalidParams(f"param {given!r} is set but {missing!r} is not: give both start and end to override "
                            "the window, or neither to use the run's data interval")
    if start is not None and end is not None:
        if full_refresh:
            raise InvalidParams("params 'full_refresh' and 'start'/'end' exclude each other: a full refresh "
                                "reads from the spec's start_date; clear start/end or full_refresh")
        if not start < end:
            raise InvalidParams(f"param 'start' ({start.isoformat()}) must be before 'end' ({end.isoformat()}); "
                                "the window is [start, end)")
        window = Window(start, end)
        try:
            window.refuse_future("param 'end'", "run it from the shell with `etl run ... --allow-future`")
        except DriftlessError as exc:
            raise InvalidParams(str(exc)) from exc
        return RunOptions(window, dry_run=dry_run, overridden=True)
    if interval_start is None or interval_end is None:
        raise InvalidParams("the run has no data interval: give 'start' and 'end'")
    begin = parse_instant(interval_start, "data interval start")
    finish = parse_instant(interval_end, "data interval end")
    if full_refresh:
        first = spec.start_date
        if not isinstance(first, datetime):
            first = datetime(first.year, first.month, first.day, tzinfo=UTC)
        begin = min(parse_instant(first, "start_date"), begin)
    if not begin < finish:
        raise InvalidParams(
            f"the run's data interval [{begin.isoformat()}, {finish.isoformat()}) is empty; give 'start' and 'end' "
            "(a DAG scheduled with a non-interval timetable gives manual runs an empty interval)")
    return RunOptions(Window(begin, finish), dry_run=dry_run, full_refresh=full_refresh)
