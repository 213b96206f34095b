"""The "Consistency report" button on the report task in the Airflow UI (an operator extra link).

The task pushes the report's URL as the XCom ``report_url`` (also when drift fails the task); Airflow
stores what ``get_link`` returns when the task ends, and the UI shows it as a button on the task
instance. The api-server needs no driftless code for the button; the report itself is served by
``driftless.report.plugin`` (an Airflow plugin) from the report store (``driftless.report.store``).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink

XCOM_KEY = "report_url"


class ConsistencyReportLink(BaseOperatorLink):
    """Links the report task to the report it wrote."""

    name = "Consistency report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return ti_key.xcom_pull(task_ids=ti_key.task_id, key=XCOM_KEY) or ""
