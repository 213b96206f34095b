"""One Airflow DAG per pipeline spec in ``dags/pipelines/``.

This file only wires the library: each task body is one call into ``etl``. At parse time it reads
the spec files and nothing else (no database, no network).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import CronDataIntervalTimetable, dag, task

from driftless.airflow.alerts import on_failure
from driftless.airflow.assets import target_asset
from driftless.airflow.params import trigger_params
from driftless.airflow.pools import pool_name
from driftless.settings import settings
from driftless.spec import PipelineSpec, load_spec, spec_files

SPECS_DIR = Path(settings().specs_dir or Path(__file__).parent / "pipelines")

DEFAULT_ARGS = {
    "owner": "driftless",
    # Retries wait 30 s, 60 s, 120 s ... (at most 30 min); DRIFTLESS_TASK_RETRIES / _RETRY_DELAY_S tune them.
    "retries": int(settings().task_retries or "3"),
    "retry_delay": timedelta(seconds=float(settings().retry_delay_s or "30")),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
    "on_failure_callback": on_failure,  # posts to the webhook of the driftless_alerts Connection, if any
}


def pipeline_doc(spec: PipelineSpec, spec_path: Path) -> str:
    """The DAG's documentation, shown on its page in the UI."""
    source = (getattr(spec.source, "table", None) or getattr(spec.source, "endpoint", None)
              or getattr(spec.source, "queue", None) or getattr(spec.source, "stream", None) or "a SQL query")
    asset = target_asset(spec)
    return "\n".join([
        f"### {spec.name}", "", spec.description or "", "",
        f"* **Source**: {spec.source.type} `{source}` through connection `{spec.source.connection}`, cursor "
        f"`{spec.source.cursor}`, key `{', '.join(spec.source.primary_key)}`.",
        f"* **Target**: table `{spec.target.table}` through connection `{spec.target.connection}`; every successful "
        f"load updates the Asset `{asset.uri}`, which runs `consistency_report`.",
        f"* **Schedule** `{spec.schedule}` (UTC): each run syncs its data interval `[start, end)`; runs go one at a "
        "time, in order.",
        "* **Trigger options**: `start`/`end` sync exactly that window (both or neither); `full_refresh` re-reads "
        "from the spec's start_date; `dry_run` counts what would change (in `extract`'s log) and writes nothing. "
        "A backfill ignores these options: it syncs each date's interval.",
        "* **Logs**: each task ends with a summary line (rows, written, watermark, seconds).",
        f"* **Spec**: `dags/pipelines/{spec_path.name}`.",
    ])


def build_dag(spec_path: Path):
    spec = load_spec(spec_path)
    start = spec.start_date
    if not isinstance(start, datetime):
        start = datetime(start.year, start.month, start.day, tzinfo=UTC)

    @dag(
        dag_id=spec.name,
        description=spec.description or None,
        schedule=CronDataIntervalTimetable(spec.schedule, timezone="UTC"),
        start_date=start,
        catchup=False,
        max_active_runs=1,
        # Collected through globals() below; not auto-registered, so other DAG files can import helpers from here.
        auto_register=False,
        default_args=DEFAULT_ARGS,
        tags=["driftless", f"source:{spec.source.type}", f"target:{spec.target.connection}"],
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

    finish(sync_slice.expand(part=plan()))


for _path in spec_files(SPECS_DIR):
    _dag = build_dag(_path)
    globals()[_dag.dag_id] = _dag
