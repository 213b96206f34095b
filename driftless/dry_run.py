"""Dry runs: what loading a window's staged records would change in the target, without writing.

A dry run is the window's real load (``driftless.load.entry.load_rows``: the same write mode, staging and
merge on the same database), rolled back at the end, so it cannot disagree with a real run. Inside the
load's transaction the target's rows of the staged keys are kept as they were before the merge and
compared with what the merge left: keys new to the target would be inserted, rows whose values the
merge changed would be updated, the rest are unchanged; rows the load deletes (``deletes``, or the old
rows a ``replace`` drops) are counted too. Nothing stays: no table is created (on MariaDB/MySQL, where
DDL commits, a temporary table stands in for a target the load would create or change), no watermark
moves, no run record or quarantine entry is added. It costs about a real load plus reading the target's
rows of the window's keys twice, and holds the target's load lock meanwhile.
"""

from __future__ import annotations

from typing import Any

from driftless.connections import resolve_url
from driftless.extract.staging import Manifest
from driftless.load.entry import load_rows
from driftless.redact import redact_url
from driftless.spec import PipelineSpec
from driftless.window import Window


def plan_window(spec: PipelineSpec, manifest: Manifest) -> dict[str, Any]:
    """Count the rows a load of ``manifest`` would insert, update, leave unchanged or delete.

    Returns:
        ``{"dry_run": True, "pipeline", "window", "target", "staged", "would_insert", "would_update",
        "unchanged", "would_delete", "written", "schema_changes", "changed_columns": {column: rows},
        "sample_keys": {"insert": [...], "update": [...]}}``; ``written`` is the count a real run reports.
    """
    window = Window.parse(manifest.window_start, manifest.window_end)
    load = load_rows(spec, manifest.tables(), window=window, dry_run=True)
    return {
        "dry_run": True,
        "pipeline": spec.name,
        "window": {"start": manifest.window_start, "end": manifest.window_end},
        "target": f"{redact_url(resolve_url(spec.target.connection))} {load.target.fullname}",
        "staged": manifest.records,
        **(load.plan or {}),
        "schema_changes": load.schema_changes,
    }
