"""The ``consistency_report`` DAG: whenever a synced table is updated, diff it deeply and write the report.

Scheduled on the Assets of all pipelines' target tables (any of them updated triggers a run) or
daily by cron (``DRIFTLESS_REPORT_SCHEDULE``, default ``0 6 * * *`` UTC; ``none``: events only),
whichever comes first. It is created unpaused: Airflow 3 queues asset events only for DAGs that
are unpaused when the event happens, so a paused report would silently miss loads (the daily run
catches up: it diffs whole tables, not events). This file only wires the library.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from driftless.airflow.assets import target_asset
from driftless.report.link import ConsistencyReportLink
from driftless.report.tasks import ON_DRIFT_CHOICES, default_on_drift
from driftless.settings import settings
from driftless.spec import load_spec, spec_files

# Airflow's bundle DagBag puts the DAG folder on sys.path; a plain DagBag (tests, tools) does not.
if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))
from driftless_pipelines import DEFAULT_ARGS, SPECS_DIR  # noqa: E402

_assets = [target_asset(load_spec(path)) for path in spec_files(SPECS_DIR)]
_cron = settings().report_schedule or "0 6 * * *"
_daily = CronTriggerTimetable(_cron, timezone="UTC") if _cron.lower() != "none" else None
if _assets and _daily:
    _schedule: object = AssetOrTimeSchedule(timetable=_daily, assets=AssetAny(*_assets))
else:
    _schedule = AssetAny(*_assets) if _assets else _daily

DOC = f"""### consistency_report

Deep diff of every pipeline's target table against its source table (rows missing, extra or changed,
by key), then the data-consistency report (HTML and JSON) of all pipelines.

* **Runs** after any load of a target table (the Assets {', '.join(f'`{a.uri}`' for a in _assets) or '(none)'})
  and daily at `{_cron}` UTC; loads that finish while a report runs are covered by one next run.
* **Drift policy** (param `on_drift`, default `$DRIFTLESS_ON_DRIFT` or `fail`): `fail` fails the run when a
  diff FAILs or cannot run (ERROR), and the failure alert names each pipeline with its counts; `warn`
  keeps the run green and posts the same alert. REST and query pipelines are SKIP (their windows are
  checked after every load).
* **Params**: `repair` re-syncs the differing rows; `out_dir` writes the report to a directory of your choice.
* **The report**: the task's **Consistency report** link (or *Latest consistency report* in the navigation
  bar); stored in `$DRIFTLESS_REPORT_STORE` (else the local report directory), newest
  `$DRIFTLESS_REPORT_KEEP` (30) kept.
"""


@dag(
    dag_id="consistency_report",
    description="Deep diff of every synced table against its source, and the data-consistency report",
    schedule=_schedule,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    is_paused_upon_creation=False,  # a paused DAG gets no asset events queued (see above)
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retries": 0},
    tags=["driftless", "reconciliation"],
    doc_md=DOC,
    params={
        "repair": Param(False, type="boolean",
                        description="Re-sync the rows that differ (and delete extras where deletes propagate)"),
        "on_drift": Param(default_on_drift(), enum=list(ON_DRIFT_CHOICES),
                          description="What a deep diff that FAILs (or cannot run) does: 'fail' fails the run and "
                                      "alerts; 'warn' keeps the run green and alerts. Default: $DRIFTLESS_ON_DRIFT "
                                      "or 'fail'"),
        "out_dir": Param(None, type=["null", "string"],
                         description="Where to write report.html and report.json; empty: "
                                     "$DRIFTLESS_REPORT_DIR/<run id> or $AIRFLOW_HOME/driftless-reports/<run id>"),
    },
)
def consistency_report():
    @task
    def diff_and_report(**context) -> dict:
        from driftless.airflow import tasks as airflow_tasks

        return airflow_tasks.consistency_report(str(SPECS_DIR), context)

    report = diff_and_report()
    report.operator.operator_extra_links = (ConsistencyReportLink(),)  # the report, one click from the task


report_dag = consistency_report()
