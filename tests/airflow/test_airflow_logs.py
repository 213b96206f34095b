"""Task logs carry their numbers in the text (Airflow's log handler drops a record's extra fields)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
import yaml

from driftless.airflow.dags import build_dag
from driftless.logs import KeyValueFormatter, event
from tests.airflow.test_airflow_ops import asset_events
from tests.helpers import INVOICES

WINDOW = {"start": "2021-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:00+00:00"}


def test_event_puts_the_fields_into_the_message_once(caplog):
    logger = logging.getLogger("driftless.test_logs")
    with caplog.at_level(logging.INFO, logger="driftless.test_logs"):
        event(logger, "extract done", pipeline="p", rows=412, chunks=3)
    (record,) = caplog.records
    assert record.getMessage() == "extract done pipeline=p rows=412 chunks=3"
    assert record.fields == {"pipeline": "p", "rows": 412, "chunks": 3}
    line = KeyValueFormatter().format(record)
    assert line.endswith("driftless.test_logs: extract done pipeline=p rows=412 chunks=3")  # not twice


@pytest.mark.airflow
@pytest.mark.slow
def test_each_task_ends_with_a_summary_line_with_its_numbers(airflow_db, tmp_path, monkeypatch, connections,
                                                             chinook_copy, sqlite_url):
    connections(src=chinook_copy, wh=sqlite_url)
    specs = tmp_path / "pipelines"
    specs.mkdir()
    (specs / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs))
    dag = build_dag(specs / "invoices_test.yaml")
    # The message text of every record of the etl loggers: what Airflow's task log handler shows.
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    etl_log = logging.getLogger("driftless")
    level = etl_log.level
    etl_log.addHandler(handler)
    etl_log.setLevel(logging.INFO)  # `driftless.logs.configure()` (CLI tests in this process) may have raised it
    try:
        run = dag.test(logical_date=datetime(2026, 1, 1, tzinfo=UTC), run_conf=WINDOW)
    finally:
        etl_log.removeHandler(handler)
        etl_log.setLevel(level)
    assert run.state == "success"
    text = "\n".join(messages)
    window = f"[{WINDOW['start']}, {WINDOW['end']})"
    assert f"extract summary: window {window}: 412 rows staged in 5 chunk(s) (read 412, quarantined 0," in text
    assert f"load summary: window {window}: loaded 412 rows, wrote 412 (inserted or changed)" in text
    assert f"reconcile summary: window {window}: 412 rows loaded; checks: extracted_equals_loaded PASS" in text
    assert "extract done pipeline=invoices_test window=20210101T000000Z_20260101T000000Z rows=412" in text
    # The load's asset event says what the update was.
    (announced,) = asset_events(run.run_id)
    assert announced["uri"] == "driftless://wh/default/invoices"
    assert announced["extra"] == {"window": {"start": WINDOW["start"], "end": WINDOW["end"]}, "loaded": 412,
                                  "written": 412, "watermark": WINDOW["end"], "run_id": run.run_id}
