"""A pipeline's target table as an Airflow Asset, and what its update events carry.

``driftless://<connection>/<schema or default>/<table>``, produced by the pipeline's ``load`` (or
``finish``) task on success; the ``consistency_report`` DAG is scheduled on these Assets. Each event's
``extra`` says what the update was: the window, the rows loaded and written, the watermark, the run.

A pipeline with a ``trigger`` (event-driven runs) is scheduled on a second Asset, ``driftless_events.<pipeline>``,
watched by an ``AssetWatcher`` on a ``MessageQueueTrigger`` (or, for ``on: file``, on
``driftless.airflow.triggers.FileArrivalTrigger``): see ``pipeline_schedule``.
"""

from __future__ import annotations

from typing import Any

from driftless.errors import SpecError
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


EVENTS_EXTRA = "driftless[events]"


def watcher_trigger(spec: PipelineSpec) -> Any:
    """The trigger the spec's ``trigger`` is watched by.

    ``on: redis``: a ``MessageQueueTrigger`` (scheme ``redis+pubsub``); ``on: file``:
    ``driftless.airflow.triggers.FileArrivalTrigger`` on the file source's own listing.
    """
    trigger = spec.trigger
    if trigger is None:
        raise ValueError(f"pipeline {spec.name!r} has no trigger")
    if trigger.on == "file":
        from driftless.airflow.triggers import FileArrivalTrigger

        return FileArrivalTrigger(spec.source.model_dump(mode="json"), poll_interval=trigger.poll_interval)
    try:
        from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
        from airflow.providers.redis.queues.redis import RedisPubSubMessageQueueProvider
    except ImportError as exc:
        raise SpecError(f"pipeline {spec.name!r}: trigger.on {trigger.on!r} needs the Airflow providers "
                        "apache-airflow-providers-common-messaging and apache-airflow-providers-redis "
                        f"(pip install '{EVENTS_EXTRA}') in every Airflow component: {exc}") from exc
    return MessageQueueTrigger(scheme=RedisPubSubMessageQueueProvider.scheme, channels=list(trigger.channels or []),
                               redis_conn_id=trigger.connection, poll_interval=trigger.poll_interval)


def trigger_asset(spec: PipelineSpec) -> Any:
    """The Asset an event-driven pipeline is scheduled on: ``driftless_events.<pipeline>``, with its watcher.

    One Asset per pipeline (not per channel), so two pipelines watching one channel never share or
    contend for a watcher definition; each message updates it once, through the triggerer.
    """
    from airflow.sdk import Asset, AssetWatcher

    name = f"driftless_events.{spec.name}"
    return Asset(name=name, uri=f"driftless-events://{spec.name}",
                 watchers=[AssetWatcher(name=f"{spec.name}_watcher", trigger=watcher_trigger(spec))])


def pipeline_schedule(spec: PipelineSpec) -> Any:
    """What the pipeline's DAG is scheduled on.

    * no ``trigger``: ``CronDataIntervalTimetable(schedule)`` (each run's data interval is its window);
    * a ``trigger``: the trigger's Asset; runs start when a message (or a file) arrives;
    * a ``trigger`` and an explicit ``schedule``: ``AssetOrTimeSchedule``: on messages and on the schedule.
    """
    from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable

    if spec.trigger is None:
        return CronDataIntervalTimetable(spec.schedule, timezone="UTC")
    asset = trigger_asset(spec)
    if spec.runs_on_schedule:
        return AssetOrTimeSchedule(timetable=CronDataIntervalTimetable(spec.schedule, timezone="UTC"),
                                   assets=[asset])
    return [asset]
