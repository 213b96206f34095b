"""Event-driven runs (a spec's ``trigger:``): the spec field, the DAG's schedule, the window of such a run.

The run itself, with a real Airflow, a real triggerer and a real Redis: ``tests/test_airflow_events.py``.
"""

from __future__ import annotations

import copy
import os
import re
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import yaml

from driftless.errors import SpecError
from driftless.pipeline import run_window
from driftless.spec import load_spec, parse_spec
from driftless.window import Window
from tests.helpers import INVOICES

TRIGGER = {"on": "redis", "connection": "events", "channels": ["orders.arrived"], "poll_interval": 1}


def spec_data(name: str = "ev_orders", schedule: str | None = None, **trigger) -> dict:
    data = copy.deepcopy(INVOICES)
    data["name"] = name
    data.pop("schedule")
    if schedule is not None:
        data["schedule"] = schedule
    data["trigger"] = {**TRIGGER, **trigger}
    return data


@pytest.fixture
def dag_module(tmp_path, monkeypatch):
    """The pipeline DAGs built over a specs folder of the test's own: ``make(*specs)`` returns them by id."""
    from types import SimpleNamespace

    from driftless.airflow.dags import pipeline_dags

    def make(*specs: dict):
        for data in specs:
            (tmp_path / f"{data['name']}.yaml").write_text(yaml.safe_dump(data))
        monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(tmp_path))
        return SimpleNamespace(**pipeline_dags())

    return make


def _watched(dag) -> list:
    """The (asset name, watcher trigger's serialized classpath and kwargs) of what ``dag`` is scheduled on."""
    from airflow.serialization.serialized_objects import DagSerialization

    def plain(value):  # nested values are stored with their type: {"__var": ..., "__type": "dict"}
        if isinstance(value, dict):
            inner = value["__var"] if "__type" in value else value
            return {k: plain(v) for k, v in inner.items()} if isinstance(inner, dict) else inner
        return value

    timetable = DagSerialization.to_dict(dag)["dag"]["timetable"]
    assets = timetable["__var"]["asset_condition"]["objects"]
    return [(a["name"], [(w["name"], w["trigger"]["classpath"], plain(w["trigger"]["kwargs"]))
                         for w in a["watchers"]]) for a in assets]


@pytest.mark.airflow
def test_a_trigger_schedules_the_dag_on_an_asset_watched_by_a_message_queue_trigger(dag_module):
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

    module = dag_module(spec_data())
    dag = module.ev_orders
    assert type(dag.timetable) is AssetTriggeredTimetable  # events only: no cron schedule was given
    (asset,) = dag.timetable.asset_condition.objects
    assert asset.name == "driftless_events.ev_orders"
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, MessageQueueTrigger) and watcher.trigger.scheme == "redis+pubsub"
    # What the dag-processor stores and the triggerer runs: the Redis provider's pub/sub trigger.
    assert _watched(dag) == [("driftless_events.ev_orders", [(
        "ev_orders_watcher", "airflow.providers.redis.triggers.redis_await_message.AwaitMessageTrigger",
        {"channels": ["orders.arrived"], "redis_conn_id": "events", "poll_interval": 1.0})])]
    assert "trigger:redis" in dag.tags
    assert "orders.arrived" in dag.doc_md
    # The rest of the DAG is the usual one.
    assert [t.task_id for t in dag.topological_sort()] == ["extract", "load", "reconcile"]


@pytest.mark.airflow
def test_a_trigger_with_an_explicit_schedule_runs_on_both(dag_module):
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule

    module = dag_module(spec_data("ev_both", schedule="0 2 * * *", channels="ch.a"),
                        {**copy.deepcopy(INVOICES), "name": "plain"})
    dag = module.ev_both
    assert type(dag.timetable) is AssetOrTimeSchedule
    assert isinstance(dag.timetable.timetable, CronDataIntervalTimetable)
    assert _watched(dag)[0][1][0][2]["channels"] == ["ch.a"]  # one channel as a plain string
    assert type(module.plain.timetable) is CronDataIntervalTimetable  # no trigger: schedule-based, as before
    assert not any(t.startswith("trigger:") for t in module.plain.tags)


@pytest.mark.parametrize(("trigger", "field", "message"), [
    ({"on": "rabbitmq"}, "trigger.on", "no Airflow provider offers a RabbitMQ/AMQP MessageQueueTrigger"),
    ({"on": "file"}, "trigger.on", "watches a file source's location; this source is 'sql'"),
    ({"on": "kafka"}, "trigger.on", "expected one of: 'redis'"),
    ({"channels": []}, "trigger.channels", "at least 1 item"),
    ({"channels": [""]}, "trigger.channels[0]", "at least 1 character"),
    ({"poll_interval": 0}, "trigger.poll_interval", "greater than 0"),
    ({"connection": "my events"}, "trigger.connection", "not a valid identifier"),
    ({"channel": "x"}, "trigger.channel", "did you mean 'channels'?"),
])
def test_invalid_trigger_config_is_refused_naming_file_line_and_field(tmp_path, trigger, field, message):
    path = tmp_path / "ev_orders.yaml"
    data = spec_data(**trigger)
    if trigger.get("on") == "file":
        data["trigger"] = dict(trigger)  # a file trigger takes none of the Redis options
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    text = str(exc.value)
    assert re.match(rf"{re.escape(str(path))}:\d+: {re.escape(field)}: ", text) and message in text, text


def test_a_trigger_needs_its_channels_and_keeps_the_schedule_only_when_given():
    data = spec_data()
    del data["trigger"]["channels"]
    with pytest.raises(SpecError, match=r"trigger\.channels: on: redis needs the channel\(s\)"):
        parse_spec(data, "x.yaml")
    assert parse_spec(spec_data(), "x.yaml").runs_on_schedule is False
    assert parse_spec(spec_data(schedule="@hourly"), "x.yaml").runs_on_schedule is True
    assert parse_spec(copy.deepcopy(INVOICES), "x.yaml").runs_on_schedule is True  # no trigger


def _context(run_after: datetime, **params) -> dict:
    """An Airflow task context of an asset-triggered run: no data interval, a run_after."""
    return {"params": params, "dag": None, "data_interval_start": None, "data_interval_end": None,
            "dag_run": SimpleNamespace(run_after=run_after, run_type="asset_triggered")}


def test_an_event_driven_run_syncs_from_the_watermark_to_its_run_after(tmp_path, connections, chinook_copy,
                                                                        sqlite_url):
    from airflow.sdk.exceptions import AirflowSkipException

    from driftless.airflow.tasks import options_from_context

    connections(src=chinook_copy, wh=sqlite_url)
    data = spec_data()
    data["start_date"] = "2025-06-01"
    spec = parse_spec(data, "x.yaml")
    now = datetime(2025, 12, 20, 8, 30, tzinfo=UTC)
    # Never loaded: from the spec's start_date.
    options = options_from_context(spec, _context(now))
    assert options.window == Window(datetime(2025, 6, 1, tzinfo=UTC), now)
    # After a load: from its watermark (the end of the latest window loaded).
    run_window(spec, Window.parse("2025-06-01", "2025-11-15"))
    options = options_from_context(spec, _context(now))
    assert options.window == Window(datetime(2025, 11, 15, tzinfo=UTC), now)
    # Trigger-form start/end still override; dry_run passes through.
    options = options_from_context(spec, _context(now, start="2025-10-01T00:00:00+00:00",
                                                  end="2025-10-02T00:00:00+00:00", dry_run=True))
    assert options.window == Window.parse("2025-10-01", "2025-10-02") and options.dry_run and options.overridden
    # A manual run of an events-only DAG: Airflow gives it an empty interval at its run_after; same window.
    manual = {**_context(now), "data_interval_start": now, "data_interval_end": now}
    assert options_from_context(spec, manual).window == Window(datetime(2025, 11, 15, tzinfo=UTC), now)
    # A run queued before the watermark (a later window was loaded by hand) has nothing new: skipped.
    with pytest.raises(AirflowSkipException, match="nothing new"):
        options_from_context(spec, _context(datetime(2025, 11, 1, tzinfo=UTC)))


def test_a_scheduled_run_of_a_triggered_pipeline_keeps_its_data_interval(connections, chinook_copy, sqlite_url):
    from driftless.airflow.tasks import options_from_context

    connections(src=chinook_copy, wh=sqlite_url)
    spec = parse_spec(spec_data(schedule="@daily"), "x.yaml")
    context = {**_context(datetime(2025, 12, 20, tzinfo=UTC)),
               "data_interval_start": datetime(2025, 12, 18, tzinfo=UTC),
               "data_interval_end": datetime(2025, 12, 19, tzinfo=UTC)}
    assert options_from_context(spec, context).window == Window.parse("2025-12-18", "2025-12-19")


def test_status_and_report_describe_an_event_driven_pipeline(connections, chinook_copy, sqlite_url):
    """An events-only pipeline has no cadence: never stale, however old its watermark; the catalog says when it runs."""
    from driftless.health import pipeline_health

    connections(src=chinook_copy, wh=sqlite_url)
    data = spec_data()
    data["start_date"] = "2025-06-01"
    spec = parse_spec(data, "x.yaml")
    assert spec.schedule_text == "on redis orders.arrived"
    assert parse_spec(spec_data(schedule="@hourly"), "x.yaml").schedule_text == "@hourly or on redis orders.arrived"
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert pipeline_health(spec, now=now).health == "pending"
    run_window(spec, Window.parse("2025-06-01", "2025-06-02"))
    assert pipeline_health(spec, now=now).health == "ok"  # a year old, yet not stale
    scheduled = parse_spec({**data, "schedule": "@daily"}, "x.yaml")
    assert pipeline_health(scheduled, now=now).health == "stale"  # the same with a schedule is



# --- on: file ----------------------------------------------------------------------------------------------

FILES: dict = {
    "name": "ev_files",
    "source": {"type": "file", "location": "", "glob": "*.csv", "format": "csv", "primary_key": ["id"],
               "cursor": "_file_time"},
    "target": {"connection": "wh", "table": "orders"},
    "columns": [{"name": "id", "type": "integer", "nullable": False}, {"name": "amount", "type": "numeric(10,2)"},
                {"name": "_file_time", "type": "timestamptz"}],
    "trigger": {"on": "file", "poll_interval": 0.05},
}


def files_spec(location, **trigger) -> dict:
    data = copy.deepcopy(FILES)
    data["source"]["location"] = str(location)
    data["trigger"].update(trigger)
    return data


class StateStore:
    """What the triggerer hands a watcher as ``asset_state_store`` (get/set by key, kept across restarts)."""

    def __init__(self) -> None:
        self.values: dict = {}

    async def aget(self, key, default=None):
        return self.values.get(key, default)

    async def aset(self, key, value):
        self.values[key] = value


def _first_event(trigger, timeout: float):
    """The trigger's first event, or None when it has not fired within ``timeout`` seconds."""
    import asyncio

    async def first():
        async for event in trigger.run():
            return event

    async def bounded():
        try:
            return await asyncio.wait_for(first(), timeout)
        except TimeoutError:
            return None

    return asyncio.run(bounded())


@pytest.mark.airflow
def test_a_file_trigger_watches_the_file_sources_own_listing(dag_module, tmp_path):
    module = dag_module(files_spec(tmp_path / "drops"))
    ((name, watchers),) = _watched(module.ev_files)
    ((watcher, classpath, kwargs),) = watchers
    assert classpath == "driftless.airflow.triggers.FileArrivalTrigger"
    assert kwargs["source"]["location"] == str(tmp_path / "drops") and kwargs["source"]["glob"] == "*.csv"
    assert kwargs["poll_interval"] == 0.05


@pytest.mark.parametrize(("trigger", "message"), [
    ({"channels": ["x"]}, "trigger.channels: on: file watches the source's own location; remove channels"),
    ({"connection": "events"}, "trigger.connection: on: file watches the source's own location"),
])
def test_a_file_trigger_refuses_redis_options(tmp_path, trigger, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(files_spec(tmp_path, **trigger), "x.yaml")


def test_the_file_trigger_fires_for_new_files_once_and_deletes_nothing(tmp_path):
    from driftless.airflow.triggers import FileArrivalTrigger

    spec = parse_spec(files_spec(tmp_path), "x.yaml")
    source = spec.source.model_dump(mode="json")
    store = StateStore()

    def watcher() -> FileArrivalTrigger:
        trigger = FileArrivalTrigger(source, poll_interval=0.05)
        trigger.asset_state_store = store  # as the triggerer sets it for a watcher of an Asset
        return trigger

    assert _first_event(watcher(), 0.5) is None  # nothing there: it waits
    (tmp_path / "a.csv").write_text("id,amount\n1,1.50\n")
    (tmp_path / "notes.txt").write_text("not selected by the glob")
    os.utime(tmp_path / "a.csv", (1_700_000_000, 1_700_000_000))
    event = _first_event(watcher(), 5)
    assert event is not None and event.payload["files"] == ["a.csv"] and event.payload["new_files"] == 1
    assert (tmp_path / "a.csv").exists()  # never deleted or moved
    # Restarted after its event (as the triggerer does), it does not fire again for the same file ...
    assert _first_event(watcher(), 0.5) is None
    # ... but does for a newer one.
    (tmp_path / "b.csv").write_text("id,amount\n2,2.50\n")
    os.utime(tmp_path / "b.csv", (1_700_000_100, 1_700_000_100))
    event = _first_event(watcher(), 5)
    assert event is not None and event.payload["files"] == ["b.csv"]
    assert store.values["newest_file_mtime"].startswith("2023-11-14T22:15:00")
    # The trigger round-trips through its serialized form (what the triggerer rebuilds it from).
    classpath, kwargs = watcher().serialize()
    assert classpath == "driftless.airflow.triggers.FileArrivalTrigger"
    assert FileArrivalTrigger(**kwargs).source == source
