"""A pipeline's target table as an Airflow Asset, and what its update events carry.

``driftless://<connection>/<schema or default>/<table>``, produced by the pipeline's ``load`` (or
``finish``) task on success; the ``consistency_report`` DAG is scheduled on these Assets. Each event's
``extra`` says what the update was: the window, the rows loaded and written, the watermark, the run.
"""

from __future__ import annotations

from typing import Any

from driftless.spec import PipelineSpec


def target_asset(spec: PipelineSpec) -> Any:
    """The target table as an ``airflow.sdk.Asset``."""
    from airflow.sdk import Asset

    schema = spec.target.db_schema or "default"
    return Asset(
        name=f"{spec.target.connection}.{schema}.{spec.target.table}",
        uri=f"driftless://{spec.target.connection}/{schema}/{spec.target.table}",
    )


def announce(spec: PipelineSpec, context: dict[str, Any], extra: dict[str, Any]) -> None:
    """Set the ``extra`` of the asset event this task emits when it succeeds."""
    events = context.get("outlet_events")
    if events is not None:
        events[target_asset(spec)].extra = extra
