"""Partitioned windows: one window fanned out into slices that Airflow runs as mapped tasks.

With ``partition_by: day`` (or ``hour``, ``week``) in a spec, the DAG splits each run's window into
slices and maps one task over them (dynamic task mapping), so a CeleryExecutor or
KubernetesExecutor spreads the slices over its workers. The load stays exactly once:

* each slice extracts, loads and reconciles its own part of the window and commits it (data and
  run record) in its own target transaction; re-running a slice upserts the same rows again;
* no slice moves the watermark. ``finish_window`` runs after all slices succeeded (Airflow's
  ``all_success`` trigger rule) and moves the watermark to ``max(old, window.end)`` in one
  transaction. If a slice fails, the watermark stays where it was, and clearing the failed slice
  (or the run) finishes the job.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

from driftless import metrics
from driftless.dry_run import plan_window
from driftless.errors import LoadError
from driftless.load.entry import RunRecord, load_rows
from driftless.pipeline import extract_window, load_window, reconcile_window, staging_dir
from driftless.spec import PipelineSpec
from driftless.status import Run
from driftless.window import Window

SLICE = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
MAX_SLICES = 1024  # Airflow's default [core] max_map_length


def split_window(window: Window, every: str) -> list[Window]:
    """Consecutive slices of ``every`` (hour, day, week) covering ``window``; the last may be shorter."""
    step = SLICE.get(every)
    if step is None:
        raise LoadError(f"partition_by: {every!r} is not a slice length (expected one of: {', '.join(SLICE)})")
    count = -(-(window.end - window.start) // step)
    if count > MAX_SLICES:
        raise LoadError(
            f"window {window.key} splits into {count} slices of one {every}, more than {MAX_SLICES} mapped tasks; "
            "backfill it as several runs or choose a longer partition_by")
    slices, start = [], window.start
    while start < window.end:
        end = min(start + step, window.end)
        slices.append(Window(start, end))
        start = end
    return slices


def plan(spec: PipelineSpec, window: Window) -> list[dict[str, Any]]:
    """The slices of a window as small dicts, one per mapped task."""
    every = spec.partition_by or "day"
    slices = split_window(window, every)
    return [{"start": s.start.isoformat(), "end": s.end.isoformat(), "index": i, "count": len(slices)}
            for i, s in enumerate(slices)]


@metrics.quietly  # a slice reports only failures; finish_window reports the window
def sync_slice(spec: PipelineSpec, part: dict[str, Any], run_id: str, dry_run: bool = False) -> dict[str, Any]:
    """Extract, load (without moving the watermark) and reconcile one slice; returns a small summary."""
    window = Window.parse(part["start"], part["end"])
    slice_run = f"{run_id}__slice{part['index']:04d}"
    manifest = extract_window(spec, window, slice_run)
    try:
        if dry_run:
            return {**plan_window(spec, manifest), "slice": part["index"]}
        result = load_window(spec, window, manifest, slice_run, advance_watermark=False)
        result = reconcile_window(spec, result)
    finally:
        shutil.rmtree(staging_dir(spec, window, slice_run), ignore_errors=True)
    return {"slice": part["index"], "window": window.as_dict(), "extracted": result.extracted,
            "loaded": result.loaded, "written": result.written, "max_cursor": manifest.max_cursor,
            "checks": result.checks, "quarantined": result.quarantined, "deduplicated": result.deduplicated}


def finish_window(spec: PipelineSpec, window: Window, results: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """Move the watermark once every slice of ``window`` is in; records one run row for the whole window.

    Raises:
        LoadError: when the slice results do not cover the window exactly (a slice is missing).
    """
    results = sorted(results, key=lambda r: r["slice"])
    expected = split_window(window, spec.partition_by or "day")
    got = [Window.parse(r["window"]["start"], r["window"]["end"]) for r in results]
    if got != expected:
        missing = sorted(w.key for w in set(expected) - set(got))
        raise LoadError(f"pipeline {spec.name!r}, window {window.key}: slices {missing or 'out of order'} are not "
                        "loaded; the watermark stays. Clear the failed slice tasks to finish the window")
    cursors = [datetime.fromisoformat(r["max_cursor"]) for r in results if r.get("max_cursor")]
    max_cursor = max(cursors) if cursors else None
    totals = {k: sum(int(r[k]) for r in results) for k in ("extracted", "loaded", "written")}
    every = spec.partition_by or "day"
    run = RunRecord(run_id, window, Run.SUCCESS, datetime.now(UTC), advance_watermark=True, max_cursor=max_cursor,
                    fields={**totals, "message": f"{len(results)} slices of one {every}"})
    load = load_rows(spec, None, window=window, run=run)  # no rows: the slices loaded them
    metrics.emit(spec.name, metrics.window_values(results, load.watermark))
    return {"pipeline": spec.name, "window": window.as_dict(), "slices": len(results), **totals,
            "watermark": load.watermark.isoformat() if load.watermark else None}
