"""The Airflow DAGs of driftless, built from the pipeline specs: what a DAG file calls.

A DAG file in Airflow's DAGs folder only wires (installed from a wheel, nothing else is needed)::

    from driftless.airflow.dags import pipeline_dags, report_dag

    pipeline_dags(globals())  # one DAG per spec of the specs directory
    report_dag(globals())     # consistency_report: deep diff of every target, and the report

The specs directory is ``$DRIFTLESS_SPECS_DIR``, else ``pipelines/`` beside the DAG file
(``driftless.spec.default_specs_dir``); pass ``specs_dir=`` to choose another. At parse time this reads
the spec files and nothing else (no database, no network); each task body is one call into
``driftless.airflow.tasks``, imported when the task runs.

Environment read when the DAGs are built: ``DRIFTLESS_TASK_RETRIES`` (3) and ``DRIFTLESS_RETRY_DELAY_S``
(30; retries wait 30 s, 60 s, 120 s ... at most 30 min), ``DRIFTLESS_MAX_SLICES`` (16 slices of a
partitioned pipeline at a time), ``DRIFTLESS_REPORT_SCHEDULE`` (the report's daily cron, ``0 6 * * *``
UTC; ``none``: after loads only).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import (
    DAG,
    AssetAny,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    task,
)

from driftless.airflow.alerts import on_failure
from driftless.airflow.assets import pipeline_schedule, target_asset
from driftless.airflow.params import trigger_params
from driftless.airflow.pools import pool_name
from driftless.settings import settings
from driftless.spec import PipelineSpec, default_specs_dir, load_spec, spec_files


def specs_dir_of(namespace: MutableMapping[str, Any] | None = None, specs_dir: str | Path | None = None) -> Path:
    """``specs_dir`` when given, else the rule of ``default_specs_dir`` for the DAG file owning ``namespace``."""
    if specs_dir:
        return Path(specs_dir).expanduser().absolute()
    dag_file = (namespace or {}).get("__file__")
    return default_specs_dir(Path(dag_file).parent if dag_file else None)


def default_args() -> dict[str, Any]:
    """The tasks' defaults: retries with exponential back-off, and the failure alert."""
    return {
        "owner": "driftless",
        "retries": int(settings().task_retries or "3"),
        "retry_delay": timedelta(seconds=float(settings().retry_delay_s or "30")),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "on_failure_callback": on_failure,  # posts to the webhook of the driftless_alerts Connection, if any
    }


def pipeline_doc(spec: PipelineSpec, spec_path: Path) -> str:
    """The DAG's documentation, shown on its page in the UI."""
    asset = target_asset(spec)
    return "\n".join([
        f"### {spec.name}", "", spec.description or "", "",
        f"* **Source**: {spec.source.type} `{spec.source.label}` through connection `{spec.source.connection}`, cursor "
        f"`{spec.source.cursor}`, key `{', '.join(spec.source.primary_key)}`.",
        f"* **Target**: table `{spec.target.table}` through connection `{spec.target.connection}`; every successful "
        f"load updates the Asset `{asset.uri}`, which runs `consistency_report`.",
        schedule_doc(spec),
        "* **Trigger options**: `start`/`end` sync exactly that window (both or neither); `full_refresh` re-reads "
        "from the spec's start_date; `dry_run` counts what would change (in `extract`'s log) and writes nothing. "
        "A backfill ignores these options: it syncs each date's interval.",
        "* **Logs**: each task ends with a summary line (rows, written, watermark, seconds).",
        f"* **Spec**: `{spec_path}`.",
    ])


def schedule_doc(spec: PipelineSpec) -> str:
    """The DAG page's line about when the pipeline runs and what each run syncs."""
    timed = (f"`{spec.schedule}` (UTC): each scheduled run syncs its data interval `[start, end)`"
             if spec.runs_on_schedule else "")
    if spec.trigger is None:
        return f"* **Schedule** {timed}; runs go one at a time, in order."
    what = (f"a message on Redis channel(s) `{', '.join(spec.trigger.channels or [])}` (connection "
            f"`{spec.trigger.connection}`)" if spec.trigger.on == "redis" else "a new file in the source's location")
    events = (f"{what}, watched by the triggerer, starts a run that syncs from the watermark to the time the run "
              "was queued")
    return f"* **Schedule**: {events}" + (f"; also on {timed}" if timed else "") + "; runs go one at a time."


def build_dag(spec_path: str | Path) -> DAG:
    """The DAG of one spec file (not registered anywhere: ``pipeline_dags`` does that)."""
    spec_path = Path(spec_path).absolute()
    spec = load_spec(spec_path)
    start = spec.start_date
    if not isinstance(start, datetime):
        start = datetime(start.year, start.month, start.day, tzinfo=UTC)

    @dag(
        dag_id=spec.name,
        description=spec.description or None,
        schedule=pipeline_schedule(spec),
        start_date=start,
        catchup=False,
        max_active_runs=1,
        # Registered through the DAG file's globals (pipeline_dags), so building one in a test registers nothing.
        auto_register=False,
        default_args=default_args(),
        tags=["driftless", f"source:{spec.source.type}", f"target:{spec.target.connection}",
              *([f"trigger:{spec.trigger.on}"] if spec.trigger else [])],
        params=trigger_params(),  # start/end, full_refresh, dry_run: see driftless/airflow/params.py
        doc_md=pipeline_doc(spec, spec_path),
    )
    def pipeline():
        if spec.partition_by:
            return partitioned(spec, spec_path)
        if spec.source.type == "queue":
            return queue_sync(spec, spec_path)

        @task
        def extract(**context) -> dict:
            from driftless.airflow import tasks as airflow_tasks

            return airflow_tasks.extract(str(spec_path), context)

        @task(outlets=[target_asset(spec)], pool=pool_name(spec))
        def load(manifest: dict, **context) -> dict:
            from driftless.airflow import tasks as airflow_tasks

            return airflow_tasks.load(str(spec_path), manifest, context)

        @task
        def reconcile(result: dict) -> dict:
            from driftless.airflow import tasks as airflow_tasks

            return airflow_tasks.reconcile(str(spec_path), result)

        reconcile(load(extract()))

    return pipeline()


def queue_sync(spec: PipelineSpec, spec_path: Path) -> None:
    """Queue shape: one task takes, loads and acknowledges (acknowledging needs the consuming connection)."""

    @task(outlets=[target_asset(spec)], pool=pool_name(spec))
    def sync(**context) -> dict:
        from driftless.airflow import tasks as airflow_tasks

        return airflow_tasks.sync(str(spec_path), context)

    sync()


def partitioned(spec: PipelineSpec, spec_path: Path) -> None:
    """Partitioned shape: plan -> sync_slice (mapped, one per slice) -> finish (moves the watermark)."""

    @task
    def plan(**context) -> list[dict]:
        from driftless.airflow import tasks as airflow_tasks

        return airflow_tasks.plan_slices(str(spec_path), context)

    @task(pool=pool_name(spec), max_active_tis_per_dagrun=int(settings().max_slices or "16"))
    def sync_slice(part: dict, **context) -> dict:
        from driftless.airflow import tasks as airflow_tasks

        return airflow_tasks.sync_slice(str(spec_path), part, context)

    @task(outlets=[target_asset(spec)], pool=pool_name(spec))
    def finish(results: list[dict], **context) -> dict:
        from driftless.airflow import tasks as airflow_tasks

        return airflow_tasks.finish(str(spec_path), results, context)

    # Airflow passes the mapped task's XComArg and resolves it to the list of results at run time.
    finish(sync_slice.expand(part=plan()))  # type: ignore[arg-type]


def pipeline_dags(namespace: MutableMapping[str, Any] | None = None,
                  specs_dir: str | Path | None = None) -> dict[str, DAG]:
    """One DAG per spec of the specs directory, each put into ``namespace`` (pass the DAG file's ``globals()``).

    Airflow collects the DAGs it finds in a DAG file's module globals. ``specs_dir`` defaults to
    ``$DRIFTLESS_SPECS_DIR``, else ``pipelines/`` beside the DAG file. Returns the DAGs by id.
    """
    dags = {}
    for path in spec_files(specs_dir_of(namespace, specs_dir)):
        built = build_dag(path)
        dags[built.dag_id] = built
    if namespace is not None:
        namespace.update(dags)
    return dags


def report_doc(assets: list[Any], cron: str) -> str:
    """The report DAG's documentation, shown on its page in the UI."""
    return f"""### consistency_report

Deep diff of every pipeline's target table against its source table (rows missing, extra or changed,
by key), then the data-consistency report (HTML and JSON) of all pipelines.

* **Runs** after any load of a target table (the Assets {', '.join(f'`{a.uri}`' for a in assets) or '(none)'})
  and daily at `{cron}` UTC; loads that finish while a report runs are covered by one next run.
* **Drift policy** (param `on_drift`, default `$DRIFTLESS_ON_DRIFT` or `fail`): `fail` fails the run when a
  diff FAILs or cannot run (ERROR), and the failure alert names each pipeline with its counts; `warn`
  keeps the run green and posts the same alert. REST and query pipelines are SKIP (their windows are
  checked after every load).
* **Params**: `repair` re-syncs the differing rows; `out_dir` writes the report to a directory of your choice.
* **The report**: the task's **Consistency report** link (or *Latest consistency report* in the navigation
  bar); stored in `$DRIFTLESS_REPORT_STORE` (else the local report directory), newest
  `$DRIFTLESS_REPORT_KEEP` (30) kept.
"""


def report_dag(namespace: MutableMapping[str, Any] | None = None, specs_dir: str | Path | None = None) -> DAG:
    """The ``consistency_report`` DAG over every spec of the specs directory, put into ``namespace`` if given.

    Scheduled on the Assets of all pipelines' target tables (any of them updated triggers a run) or
    daily by cron (``DRIFTLESS_REPORT_SCHEDULE``, default ``0 6 * * *`` UTC; ``none``: events only),
    whichever comes first. It is created unpaused: Airflow 3 queues asset events only for DAGs that
    are unpaused when the event happens, so a paused report would silently miss loads (the daily run
    catches up: it diffs whole tables, not events).
    """
    from driftless.report.link import ConsistencyReportLink
    from driftless.report.tasks import ON_DRIFT_CHOICES, default_on_drift

    directory = specs_dir_of(namespace, specs_dir)
    assets = [target_asset(load_spec(path)) for path in spec_files(directory)]
    cron = (settings().report_schedule or "0 6 * * *").strip()
    daily = CronTriggerTimetable(cron, timezone="UTC") if cron.lower() != "none" else None
    if assets and daily:
        schedule: Any = AssetOrTimeSchedule(timetable=daily, assets=AssetAny(*assets))
    else:
        schedule = AssetAny(*assets) if assets else daily

    @dag(
        dag_id="consistency_report",
        description="Deep diff of every synced table against its source, and the data-consistency report",
        schedule=schedule,
        start_date=datetime(2025, 1, 1, tzinfo=UTC),
        catchup=False,
        is_paused_upon_creation=False,  # a paused DAG gets no asset events queued (see above)
        max_active_runs=1,
        auto_register=False,
        default_args={**default_args(), "retries": 0},
        tags=["driftless", "reconciliation"],
        doc_md=report_doc(assets, cron),
        params={
            "repair": Param(False, type="boolean",
                            description="Re-sync the rows that differ (and delete extras where deletes propagate)"),
            "on_drift": Param(default_on_drift(), enum=list(ON_DRIFT_CHOICES),
                              description="What a deep diff that FAILs (or cannot run) does: 'fail' fails the run "
                                          "and alerts; 'warn' keeps the run green and alerts. Default: "
                                          "$DRIFTLESS_ON_DRIFT or 'fail'"),
            "out_dir": Param(None, type=["null", "string"],
                             description="Where to write report.html and report.json; empty: "
                                         "$DRIFTLESS_REPORT_DIR/<run id> or $AIRFLOW_HOME/driftless-reports/<run id>"),
        },
    )
    def consistency_report():
        @task
        def diff_and_report(**context) -> dict:
            from driftless.airflow import tasks as airflow_tasks

            return airflow_tasks.consistency_report(str(directory), context)

        report = diff_and_report()
        report.operator.operator_extra_links = (ConsistencyReportLink(),)  # the report, one click from the task

    built = consistency_report()
    if namespace is not None:
        namespace[built.dag_id] = built
    return built
