"""The bodies of the pipeline DAGs' tasks: each is one call into the engine.

Only the DAG tasks import this module, at run time. The run's window and options come from the
trigger form's params (``start``/``end``, ``full_refresh``, ``dry_run``; checked by
``etl.params.run_options``) or from the run's data interval; XCom stays small (paths, counts).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from etl import connections, lineage
from etl.params import InvalidParams, RunOptions, run_options
from etl.pipeline import WindowResult, extract_window, load_window, reconcile_window, staging_dir
from etl.spec import PipelineSpec, load_spec
from etl.staging import Manifest, discard, prune_stale
from etl.window import Window

log = logging.getLogger(__name__)


def _setup() -> None:
    connections.use_lookup(connections.airflow_lookup)
    if not os.environ.get("DRIFTLESS_STAGING_DIR"):
        home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
        os.environ["DRIFTLESS_STAGING_DIR"] = str(Path(home) / "driftless-staging")


def options_from_context(spec: PipelineSpec, context: dict[str, Any]) -> RunOptions:
    """The run's options; bad params fail the task at once, without retries, naming the param."""
    dag = context.get("dag")
    declared = set(getattr(dag, "params", None) or {})
    try:
        return run_options(spec, context.get("params"), context.get("data_interval_start"),
                           context.get("data_interval_end"), declared)
    except InvalidParams as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"pipeline {spec.name!r}: {exc}") from exc


def window_from_context(context: dict[str, Any]) -> Window:
    """The run's window: trigger-form ``start``/``end`` when given, else the run's data interval."""
    params = context.get("params") or {}
    start = params.get("start") or context["data_interval_start"]
    end = params.get("end") or context["data_interval_end"]
    return Window.parse(start, end)


def extract(spec_path: str, context: dict[str, Any]) -> dict[str, Any]:
    _setup()
    spec = load_spec(spec_path)
    options = options_from_context(spec, context)
    log.info("driftless run options: %s", json.dumps(options.as_dict()))
    stale = prune_stale()
    if stale:
        log.info("removed %d staging directories of runs older than a week that never loaded", len(stale))
    manifest = extract_window(spec, options.window, context["run_id"])
    data = manifest.to_dict()
    if options.dry_run:
        data["dry_run"] = True
    return data


def load(spec_path: str, manifest: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    _setup()
    spec = load_spec(spec_path)
    manifest = dict(manifest)
    if manifest.pop("dry_run", False):
        from etl.dry_run import plan_window

        report = plan_window(spec, Manifest.from_dict(manifest))
        log.info("driftless dry run, nothing written: %s", json.dumps(report))
        discard(manifest["directory"])
        return report
    window = Window.parse(manifest["window_start"], manifest["window_end"])
    result = load_window(spec, window, Manifest.from_dict(manifest), context["run_id"])
    lineage.emit(spec, context)
    return result.to_xcom()


def reconcile(spec_path: str, result: dict[str, Any]) -> dict[str, Any]:
    _setup()
    if result.get("dry_run"):
        return result  # nothing was loaded, so there is nothing to reconcile
    spec = load_spec(spec_path)
    loaded = WindowResult.from_xcom(result)
    checked = reconcile_window(spec, loaded).to_xcom()
    # The window is loaded and checked: a retry of any task of this run no longer reads its staging files.
    discard(staging_dir(spec, loaded.window, loaded.run_id))
    return checked


# Partitioned pipelines (``partition_by`` in the spec): plan -> sync_slice (mapped) -> finish.

def plan_slices(spec_path: str, context: dict[str, Any]) -> list[dict[str, Any]]:
    from etl import partitions

    _setup()
    spec = load_spec(spec_path)
    options = options_from_context(spec, context)
    parts = partitions.plan(spec, options.window)
    log.info("driftless: window %s in %d slice(s) of one %s", options.window.key, len(parts), spec.partition_by)
    return [{**p, "dry_run": options.dry_run} for p in parts]


def sync_slice(spec_path: str, part: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from etl import partitions

    _setup()
    spec = load_spec(spec_path)
    return partitions.sync_slice(spec, part, context["run_id"], dry_run=bool(part.get("dry_run")))


def finish(spec_path: str, results: list[dict[str, Any]], context: dict[str, Any]) -> dict[str, Any]:
    from etl import partitions

    _setup()
    spec = load_spec(spec_path)
    options = options_from_context(spec, context)
    results = list(results)
    if options.dry_run:
        totals = {k: sum(r.get(k, 0) for r in results) for k in ("staged", "would_insert", "would_update",
                                                                   "unchanged")}
        report = {"dry_run": True, "pipeline": spec.name, "window": options.window.as_dict(),
                  "slices": len(results), **totals}
        log.info("driftless dry run, nothing written: %s", json.dumps(report))
        return report
    summary = partitions.finish_window(spec, options.window, results, context["run_id"])
    lineage.emit(spec, context)
    return summary
