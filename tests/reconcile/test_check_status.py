"""One status vocabulary (driftless.status), the same in the task's return value, the report and the tables;
REST pipelines checked as far as they can be and labelled where they cannot; windows in the future."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from sqlalchemy import create_engine, text

from driftless.airflow.params import InvalidParams, run_options
from driftless.cli import main
from driftless.errors import ReconciliationFailed, SpecError
from driftless.pipeline import reconcile_window, run_window
from driftless.reconcile.store import read_checks
from driftless.report import build_report
from driftless.report.tasks import consistency_report
from driftless.sources.rest.reliability import reset_breakers
from driftless.state import read_state
from driftless.window import Window
from tests.helpers import INVOICES, invoices_spec
from tests.rest_server import ApiServer
from tests.sources.test_rest import SPEC, WINDOW, cursor_api, rest_spec

REST_SUMS = {"reconcile": {"sum_columns": ["amount"]}}


@pytest.fixture
def api(connections, sqlite_url):
    reset_breakers()
    server = ApiServer(cursor_api()).start()
    connections(api=server.url, wh=sqlite_url)
    yield server
    server.stop()
    reset_breakers()


def test_rest_window_sums_come_from_the_extract_and_find_drift(api, sqlite_url):
    spec = rest_spec(**REST_SUMS)
    result = run_window(spec, WINDOW)
    checks = {c["check"]: c for c in result.summary()["checks"]}
    assert checks["sum_amount"]["status"] == "PASS"
    assert checks["sum_amount"]["source"] == checks["sum_amount"]["target"] == "345.00"  # 1.25 * (1 + ... + 23)
    assert "records extracted in this window" in checks["sum_amount"]["message"]
    assert checks["source_count_unchanged"]["status"] == "SKIP"  # said, not silently left out
    requests = len(api.requests)

    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE customers SET amount = amount + 1 WHERE id = 4"))
    with pytest.raises(ReconciliationFailed, match=r"check sum_amount failed: source 345.00 vs target 346.00"):
        reconcile_window(spec, result)
    assert len(api.requests) == requests  # the checks did not read the API again
    stored = [c for c in read_checks(engine, spec.name) if c["check_name"] == "sum_amount"]
    engine.dispose()
    assert [c["status"] for c in stored] == ["FAIL", "PASS"]


def test_rest_deep_diff_is_skip_everywhere_never_pass(api, sqlite_url, tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "rest_test.yaml").write_text(yaml.safe_dump({**SPEC, **REST_SUMS}))
    run_window(rest_spec(**REST_SUMS), WINDOW)
    returned = consistency_report(str(specs), "manual__1", out_dir=str(tmp_path / "out"),
                                  use_airflow_connections=False)
    assert returned["statuses"] == {"rest_test": "SKIP"}
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    (p,) = data["pipelines"]
    assert p["deep_status"] == "SKIP" and p["latest_diff"]["status"] == "SKIP"
    assert "needs a SQL source table" in p["latest_diff"]["message"]
    assert p["window_status"] == "PASS"  # counts and sums of the window were checked and agree
    assert p["checked"]["deep_diff"] is False and "sums of amount" in " ".join(p["checked"]["window"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "not checked: deep diff and repair" in html
    engine = create_engine(sqlite_url)
    (deep,) = [c for c in read_checks(engine, "rest_test") if c["kind"] == "deep"]
    engine.dispose()
    assert deep["status"] == "SKIP"  # what the task returned is what the table holds
    from driftless.status import Check

    assert {c["status"] for c in p["checks"]} <= set(Check)


def test_report_deep_exits_non_zero_when_a_pipeline_fails(chinook_copy, sqlite_url, connections, tmp_path,
                                                          capsys):
    connections(src=chinook_copy, wh=sqlite_url)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    assert main(["run", "invoices_test", "--specs-dir", str(specs), "--start", "2021-01-01",
                 "--end", "2026-01-01"]) == 0
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE invoices SET total = total + 1 WHERE invoice_id = 5"))
    engine.dispose()
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path / "r"), "--specs-dir", str(specs), "--deep"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["statuses"] == {"invoices_test": "FAIL"}
    assert "deep diff FAIL: invoices_test" in out.err
    (p,) = json.loads((tmp_path / "r" / "report.json").read_text())["pipelines"]
    assert p["deep_status"] == "FAIL" and p["reconciliation_status"] == "FAIL"


def test_deep_diff_that_cannot_run_is_error_in_return_value_report_and_table(chinook_copy, sqlite_url,
                                                                              connections, tmp_path):
    connections(src=chinook_copy, wh=sqlite_url)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    run_window(invoices_spec(), Window.parse("2021-01-01", "2026-01-01"))
    chinook_copy.unlink()  # the source is gone
    returned = consistency_report(str(specs), "manual__2", out_dir=str(tmp_path / "out"),
                                  use_airflow_connections=False)
    assert returned["statuses"] == {"invoices_test": "ERROR"}
    (p,) = json.loads((tmp_path / "out" / "report.json").read_text())["pipelines"]
    assert p["deep_status"] == "ERROR" and "could not run" in p["latest_diff"]["message"]
    assert p["reconciliation_status"] == "ERROR"  # not the earlier window checks' PASS


def test_options_that_do_nothing_for_rest_are_refused():
    with pytest.raises(SpecError, match=r"reconcile.propagate_deletes: has no effect here.*'rest'"):
        rest_spec(reconcile={"propagate_deletes": True})
    with pytest.raises(SpecError, match=r"propagate_deletes: has no effect here.*a query"):
        invoices_spec(source={**INVOICES["source"], "table": None, "query": "SELECT * FROM Invoice"},
                      reconcile={"propagate_deletes": True})


def test_report_never_shows_pass_for_an_unchecked_deep_diff(api, tmp_path):
    spec = rest_spec()
    run_window(spec, WINDOW)
    paths = build_report([spec], tmp_path / "r")  # no deep diff was asked for
    (p,) = json.loads(paths["json"].read_text())["pipelines"]
    assert p["deep_status"] == "SKIP" and p["latest_diff"] is None
    assert "etl reconcile rest_test --deep" not in paths["html"].read_text()  # no advice that cannot work


# ---- windows ending in the future ----

def _iso(dt: datetime) -> str:
    return dt.isoformat()


def test_cli_refuses_a_window_ending_in_the_future(capsys):
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    code = main(["run", "chinook_invoices", "--start", "2025-01-01", "--end", _iso(tomorrow)])
    err = capsys.readouterr().err
    assert code == 1 and "--end: the window ends at" in err and "after now" in err and "--allow-future" in err


def test_allow_future_caps_the_watermark_at_the_time_the_source_was_read(chinook_copy, sqlite_url, connections,
                                                                         tmp_path, capsys):
    connections(src=chinook_copy, wh=sqlite_url)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    before = datetime.now(UTC)
    end = before + timedelta(days=30)
    assert main(["run", "invoices_test", "--specs-dir", str(specs), "--start", "2021-01-01", "--end", _iso(end),
                 "--allow-future"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    watermark = datetime.fromisoformat(summary["watermark"])
    assert before <= watermark <= datetime.now(UTC)  # never past now
    engine = create_engine(sqlite_url)
    state = read_state(engine, "invoices_test")
    engine.dispose()
    assert state is not None and state.watermark == watermark


def test_trigger_params_refuse_a_window_ending_in_the_future():
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(InvalidParams, match=r"param 'end': the window ends at .* after now"):
        run_options(invoices_spec(), {"start": "2025-01-01", "end": _iso(tomorrow)}, None, None)
    past = run_options(invoices_spec(), {"start": "2025-01-01", "end": "2025-01-02"}, None, None)
    assert past.window == Window.parse("2025-01-01", "2025-01-02")
