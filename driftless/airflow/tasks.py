"""The bodies of the pipeline DAGs' tasks: each is one call into the engine.

Only the DAG tasks import this module, at run time. The run's window and options come from the
trigger form's params (``start``/``end``, ``full_refresh``, ``dry_run``; checked by
``driftless.airflow.params.run_options``) or from the run's data interval; XCom stays small (paths, counts).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from driftless import connections, metrics
from driftless.airflow import assets, lineage
from driftless.airflow.params import InvalidParams, RunOptions, run_options
from driftless.errors import ConnectionNotFound
from driftless.extract.staging import Manifest, discard, prune_stale
from driftless.pipeline import WindowResult, extract_window, load_window, reconcile_window, staging_dir
from driftless.settings import settings
from driftless.settings import use as use_settings
from driftless.spec import PipelineSpec, load_spec
from driftless.window import Window

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

CONNECTION_HELP = ("define it in the UI (Admin > Connections > Add, Connection Id {id!r}), with `airflow connections "
                   "add {id} --conn-uri ...`, or as the environment variable {env} of every Airflow component")


def config_errors_fail_fast(func: F) -> F:
    """A missing or malformed connection fails the task at once, without retries (retrying cannot fix it)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConnectionNotFound as exc:
            from airflow.sdk.exceptions import AirflowFailException

            conn_id = _named_connection(str(args[0]) if args else "", str(exc))
            hint = CONNECTION_HELP.format(id=conn_id or "<id>",
                                          env=connections.env_var_name(conn_id) if conn_id else "AIRFLOW_CONN_<ID>")
            raise AirflowFailException(f"{exc}; {hint} (a configuration error: not retried)") from exc

    return wrapper  # type: ignore[return-value]


def _named_connection(spec_path: str, message: str) -> str | None:
    """The spec's connection id (source or target) that an error message names."""
    try:
        spec = load_spec(spec_path)
    except Exception:  # a specs directory (the report), or a spec that no longer loads
        return None
    return next((c for c in (spec.source.connection, spec.target.connection) if repr(c) in message), None)


def _setup() -> None:
    connections.use_lookup(connections.airflow_lookup)
    metrics.use_airflow()  # Airflow's [metrics] backend (StatsD, OpenTelemetry), else DRIFTLESS_STATSD_*
    if settings().staging_dir is None:  # this process's default; the environment is left as it is
        home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
        use_settings(staging_dir=str(Path(home) / "driftless-staging"))


def options_from_context(spec: PipelineSpec, context: dict[str, Any]) -> RunOptions:
    """The run's options; bad params fail the task at once, without retries, naming the param."""
    dag = context.get("dag")
    declared = set(getattr(dag, "params", None) or {})
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    params = context.get("params") or {}
    # Airflow gives asset-triggered runs no data interval, and manual runs of an events-only DAG an empty one.
    no_interval = start is None or end is None or start == end
    if spec.trigger is not None and no_interval and not (params.get("start") or params.get("end")):
        start, end = event_window(spec, context)
    try:
        return run_options(spec, params, start, end, declared)
    except InvalidParams as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"pipeline {spec.name!r}: {exc}") from exc


def event_window(spec: PipelineSpec, context: dict[str, Any]) -> tuple[datetime, datetime]:
    """The window of an event-driven run (one Airflow gives no data interval, or an empty one: manual runs).

    From the pipeline's watermark (the end of the latest window it loaded; the spec's ``start_date``
    before its first) to the run's ``run_after`` (when Airflow queued it, after the messages that
    started it). Every run of a triggered pipeline thus syncs what arrived since the one before;
    a retry of the run syncs the same window (the watermark has not moved). A run whose watermark is
    already at or past ``run_after`` (a later window was loaded by hand) is skipped: nothing is new.
    """
    from driftless.catchup import first_start, stored_watermark
    from driftless.window import parse_instant

    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None) or context.get("logical_date")
    if run_after is None:
        raise _skip("event-driven run without run_after: nothing to sync")
    end = parse_instant(run_after, "the run's run_after")
    watermark = stored_watermark(spec)
    start = watermark if watermark is not None else first_start(spec)
    log.info("event-driven run: window from the %s %s to the run's run_after %s",
             "watermark" if watermark is not None else "spec's start_date", start.isoformat(), end.isoformat())
    if start >= end:
        raise _skip(f"the watermark {start.isoformat()} is already at or after this run's run_after "
                    f"{end.isoformat()}: nothing new to sync")
    return start, end


def window_from_context(context: dict[str, Any]) -> Window:
    """The run's window: trigger-form ``start``/``end`` when given, else the run's data interval."""
    params = context.get("params") or {}
    start = params.get("start") or context["data_interval_start"]
    end = params.get("end") or context["data_interval_end"]
    return Window.parse(start, end)


def _skip(reason: str) -> Exception:
    from airflow.sdk.exceptions import AirflowSkipException

    log.info("%s", reason)
    return AirflowSkipException(reason)


@config_errors_fail_fast
def extract(spec_path: str, context: dict[str, Any]) -> dict[str, Any]:
    """Extract the run's window into staging files; a dry run also compares them with the target here.

    The dry run happens in this task, which has no outlet, so that ``load`` (whose outlet is the
    target's Asset) can skip: a skipped task emits no asset event, and nothing downstream of the
    Asset (the consistency report) runs for a run that wrote nothing.
    """
    _setup()
    spec = load_spec(spec_path)
    options = options_from_context(spec, context)
    log.info("driftless run options: %s", json.dumps(options.as_dict()))
    stale = prune_stale()
    if stale:
        log.info("removed %d staging directories of runs older than a week that never loaded", len(stale))
    t0 = time.monotonic()
    manifest = extract_window(spec, options.window, context["run_id"])
    data = manifest.to_dict()
    read = manifest.records if manifest.extracted is None else manifest.extracted
    log.info("extract summary: window %s: %d rows staged in %d chunk(s) (read %d, quarantined %d, deduplicated %d) "
             "in %.1f s", window_text(options.window), manifest.records, len(manifest.files), read,
             manifest.quarantined, manifest.deduplicated, time.monotonic() - t0)
    if options.dry_run:
        from driftless.dry_run import plan_window

        report = plan_window(spec, manifest)
        log.info("driftless dry run, nothing written: %s", json.dumps(report))
        discard(data["directory"])
        log.info("dry run summary: window %s: would insert %d, update %d, leave %d unchanged; nothing written",
                 window_text(options.window), report["would_insert"], report["would_update"], report["unchanged"])
        return report
    return data


def window_text(window: Window) -> str:
    """``[start, end)`` in ISO-8601, as the summary lines show a window."""
    return f"[{window.start.isoformat()}, {window.end.isoformat()})"


@config_errors_fail_fast
def load(spec_path: str, manifest: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    _setup()
    if manifest.get("dry_run"):
        raise _skip("dry run: nothing to write, so no load and no asset event (the extract task holds the "
                    "would-insert/update counts)")
    spec = load_spec(spec_path)
    manifest = dict(manifest)
    window = Window.parse(manifest["window_start"], manifest["window_end"])
    result = load_window(spec, window, Manifest.from_dict(manifest), context["run_id"])
    lineage.emit(spec, context)
    assets.announce(spec, context, {"window": window.as_dict(), "loaded": result.loaded, "written": result.written,
                                    "watermark": result.watermark.isoformat() if result.watermark else None,
                                    "run_id": context["run_id"]})
    log.info("load summary: window %s: loaded %d rows, wrote %d (inserted or changed), quarantined %d, "
             "deduplicated %d; watermark %s; %.1f s", window_text(window), result.loaded, result.written,
             result.quarantined, result.deduplicated,
             result.watermark.isoformat() if result.watermark else "unchanged", result.duration_s)
    return result.to_xcom()


@config_errors_fail_fast
def reconcile(spec_path: str, result: dict[str, Any]) -> dict[str, Any]:
    _setup()
    spec = load_spec(spec_path)
    loaded = WindowResult.from_xcom(result)
    checked = reconcile_window(spec, loaded).to_xcom()
    # The window is loaded and checked: a retry of any task of this run no longer reads its staging files.
    discard(staging_dir(spec, loaded.window, loaded.run_id))
    checks = ", ".join(f"{c.get('check')} {c.get('status')}" for c in checked.get("checks") or []) or "none"
    log.info("reconcile summary: window %s: %d rows loaded; checks: %s", window_text(loaded.window), loaded.loaded,
             checks)
    return checked


@config_errors_fail_fast
def sync(spec_path: str, context: dict[str, Any]) -> dict[str, Any]:
    """Queue pipelines: extract, load, acknowledge and check the run's window in this one task.

    A queue source must acknowledge its messages after the commit, on the connection that took them
    (RabbitMQ deliveries belong to their channel), so the three steps cannot be separate tasks.
    """
    from driftless.pipeline import run_window

    _setup()
    spec = load_spec(spec_path)
    options = options_from_context(spec, context)
    if options.dry_run:
        raise _skip("dry run: a queue pipeline cannot count what it would change without taking the messages; "
                    "nothing was read or written")
    prune_stale()
    result = run_window(spec, options.window, context["run_id"])
    lineage.emit(spec, context)
    assets.announce(spec, context, {"window": options.window.as_dict(), "loaded": result.loaded,
                                    "written": result.written, "run_id": context["run_id"],
                                    "watermark": result.watermark.isoformat() if result.watermark else None})
    m = result.metrics or {}
    log.info("sync summary: window %s: took %d message(s) (%d redelivered and absorbed), loaded %d rows, wrote %d, "
             "quarantined %d, deduplicated %d, superseded %d; acknowledged %s; %.1f s", window_text(options.window),
             m.get("messages_taken", 0), m.get("messages_absorbed", 0), result.loaded, result.written,
             result.quarantined, result.deduplicated, m.get("records_superseded", 0),
             m.get("acknowledged", "no: " + str(m.get("ack_error"))), result.duration_s)
    return result.to_xcom()


# Partitioned pipelines (``partition_by`` in the spec): plan -> sync_slice (mapped) -> finish.

@config_errors_fail_fast
def plan_slices(spec_path: str, context: dict[str, Any]) -> list[dict[str, Any]]:
    from driftless.airflow import partitions

    _setup()
    spec = load_spec(spec_path)
    options = options_from_context(spec, context)
    parts = partitions.plan(spec, options.window)
    log.info("driftless: window %s in %d slice(s) of one %s", options.window.key, len(parts), spec.partition_by)
    return [{**p, "dry_run": options.dry_run} for p in parts]


@config_errors_fail_fast
def sync_slice(spec_path: str, part: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from driftless.airflow import partitions

    _setup()
    spec = load_spec(spec_path)
    result = partitions.sync_slice(spec, part, context["run_id"], dry_run=bool(part.get("dry_run")))
    numbers = ", ".join(f"{k} {result[k]}" for k in ("extracted", "loaded", "written", "quarantined", "would_insert",
                                                        "would_update", "unchanged") if k in result)
    log.info("slice summary: slice %s: %s", result.get("slice"), numbers)
    return result


@config_errors_fail_fast
def finish(spec_path: str, results: list[dict[str, Any]], context: dict[str, Any]) -> dict[str, Any]:
    from driftless.airflow import partitions

    _setup()
    spec = load_spec(spec_path)
    options = options_from_context(spec, context)
    results = list(results)
    if options.dry_run:
        totals = {k: sum(r.get(k, 0) for r in results) for k in ("staged", "would_insert", "would_update",
                                                                   "unchanged")}
        report = {"dry_run": True, "pipeline": spec.name, "window": options.window.as_dict(),
                  "slices": len(results), **totals}
        # Skipped, not successful: this task's outlet (the target's Asset) must not announce an update.
        raise _skip(f"dry run, nothing written, no asset event: {json.dumps(report)}")
    summary = partitions.finish_window(spec, options.window, results, context["run_id"])
    lineage.emit(spec, context)
    assets.announce(spec, context, {"window": options.window.as_dict(), "loaded": summary.get("loaded"),
                                    "written": summary.get("written"), "watermark": summary.get("watermark"),
                                    "run_id": context["run_id"], "slices": len(results)})
    numbers = ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, int | float) and k != "slices")
    log.info("finish summary: window %s: %d slice(s); %s; watermark %s", window_text(options.window),
             len(results), numbers, summary.get("watermark"))
    return summary


# The consistency_report DAG: deep diff every pipeline, write the report, apply the drift policy.

def _drift_failure(message: str, findings: list[dict[str, Any]]) -> Exception:
    """An ``AirflowFailException`` (fails at once, no retries) carrying the findings for the alert."""
    from airflow.sdk.exceptions import AirflowFailException

    class DriftFound(AirflowFailException):
        pass

    exc = DriftFound(message)
    exc.findings = findings  # type: ignore[attr-defined]  # read by driftless.airflow.alerts.build_message
    return exc


@config_errors_fail_fast
def consistency_report(specs_dir: str, context: dict[str, Any]) -> dict[str, Any]:
    """Deep diff every pipeline and write the report; a finding fails the task or warns (``on_drift``)."""
    from driftless.airflow import alerts
    from driftless.report import tasks as report

    params = context.get("params") or {}
    policy = str(params.get("on_drift") or report.default_on_drift()).strip().lower()
    if policy not in report.ON_DRIFT_CHOICES:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"param 'on_drift': expected one of {', '.join(report.ON_DRIFT_CHOICES)}, "
                                   f"got {policy!r}")
    result = report.consistency_report(specs_dir, context["run_id"], repair=bool(params.get("repair")),
                                       out_dir=params.get("out_dir"))
    from driftless.report import store
    from driftless.report.link import XCOM_KEY

    key = store.run_key(context["run_id"])
    where = store.publish(Path(result["html"]).parent, key)
    result["url"] = store.report_url(key)
    if context.get("ti") is not None:  # the "Consistency report" button on this task (driftless.report.link)
        context["ti"].xcom_push(key=XCOM_KEY, value=result["url"])
    log.info("consistency report: %s (stored in %s; the task's 'Consistency report' link opens it)", result["url"],
             where)
    log.info("%s", report.summary_line(result))
    findings = report.findings_of(result)
    if findings:
        message = f"drift found: {'; '.join(report.describe(f) for f in findings)}; report: {result['url']}"
        if policy == "fail":
            raise _drift_failure(message + " (on_drift=fail)", findings)
        log.warning("%s (on_drift=warn: the run stays successful; alert posted)", message)
        alerts.alert_findings(context, findings)
    return result
