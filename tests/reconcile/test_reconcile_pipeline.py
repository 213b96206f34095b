"""Per-window checks, `etl reconcile` (quick, --deep, --repair) and `etl diff` on a real pipeline."""

from __future__ import annotations

import json

import pytest
import yaml
from sqlalchemy import create_engine, text

from driftless.cli import main
from driftless.errors import ReconciliationFailed, SpecError
from driftless.pipeline import reconcile_window, run_window
from driftless.reconcile.run import reconcile_pipeline
from driftless.reconcile.store import read_checks
from driftless.window import Window
from tests.helpers import INVOICES, invoices_spec

WINDOW = Window.parse("2021-01-01", "2026-01-01")
JSON_KEYS = {"missing_in_target", "extra_in_target", "changed", "rows_source", "rows_target", "status", "duration_s"}


def _sql(url, *statements):
    engine = create_engine(url)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(text(s))
    engine.dispose()


def _drift(url):
    """Four kinds of drift in the target: a changed amount, '' for a city, a lost row, an extra row."""
    _sql(url,
         "UPDATE invoices SET total = total + 1 WHERE invoice_id = 5",
         "UPDATE invoices SET billing_city = '' WHERE invoice_id = 6",
         "DELETE FROM invoices WHERE invoice_id = 7",
         "INSERT INTO invoices (invoice_id, customer_id, invoice_date, billing_city, total, updated_at) "
         "SELECT 5000, customer_id, invoice_date, billing_city, total, updated_at FROM invoices WHERE invoice_id = 9")


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_window_sum_checks_pass_and_are_stored(chinook_copy, target_url, connections):
    connections(src=chinook_copy, wh=target_url)
    spec = invoices_spec(reconcile={"sum_columns": ["total"]})
    result = run_window(spec, WINDOW)
    checks = {c["check"]: c for c in result.summary()["checks"]}
    assert checks["extracted_equals_loaded"]["status"] == "PASS"
    assert checks["sum_total"]["status"] == "PASS"
    assert checks["sum_total"]["source"] == checks["sum_total"]["target"] == "2328.60"
    stored = read_checks(create_engine(target_url), spec.name)
    assert {(c["check_name"], c["status"], c["run_id"]) for c in stored} == {
        ("extracted_equals_loaded", "PASS", result.run_id), ("source_count_unchanged", "PASS", result.run_id),
        ("sum_total", "PASS", result.run_id), ("quarantined", "PASS", result.run_id)}


def test_window_sum_check_fails_with_the_amount_and_warns_within_threshold(chinook_copy, sqlite_url, connections):
    connections(src=chinook_copy, wh=sqlite_url)
    spec = invoices_spec(reconcile={"sum_columns": ["total"]})
    result = run_window(spec, WINDOW)
    _sql(sqlite_url, "UPDATE invoices SET total = total + 2.5 WHERE invoice_id = 5")
    with pytest.raises(ReconciliationFailed, match=r"check sum_total failed: source 2328.60 vs target 2331.10 "
                                                   r"\(relative difference .* exceeds fail_ratio 0.0 \(off by -2.50\)"):
        reconcile_window(spec, result)
    lenient = invoices_spec(reconcile={"sum_columns": ["total"], "warn_ratio": 0.0001, "fail_ratio": 0.01})
    checks = {c["check"]: c["status"] for c in reconcile_window(lenient, result).checks}
    assert checks["sum_total"] == "WARN"
    stored = read_checks(create_engine(sqlite_url), spec.name)
    statuses = [c["status"] for c in stored if c["check_name"] == "sum_total"]
    assert statuses[:2] == ["WARN", "FAIL"]  # newest first; the failing check was stored before raising


def test_reconcile_spec_section_errors_name_the_field():
    with pytest.raises(SpecError, match=r"reconcile.sum_columns: column 'nope' is not listed in columns"):
        invoices_spec(reconcile={"sum_columns": ["nope"]})
    with pytest.raises(SpecError, match=r"reconcile.sum_columns: column 'billing_city' has type 'varchar\(40\)'"):
        invoices_spec(reconcile={"sum_columns": ["billing_city"]})
    with pytest.raises(SpecError, match=r"reconcile: .*fail_ratio \(0.1\) must not be below warn_ratio \(0.2\)"):
        invoices_spec(reconcile={"warn_ratio": 0.2, "fail_ratio": 0.1})
    with pytest.raises(SpecError, match=r"reconcile.sums: unknown field"):
        invoices_spec(reconcile={"sums": ["total"]})


@pytest.mark.parametrize("target", ["sqlite", "postgresql", "mariadb"])
def test_repair_then_deep_diff_reports_zero(request, chinook_copy, connections, target):
    if target == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        request.applymarker(pytest.mark.integration)
        url = request.getfixturevalue({"postgresql": "pg_url", "mariadb": "mariadb_url"}[target])
    connections(src=chinook_copy, wh=url)
    spec = invoices_spec(reconcile={"propagate_deletes": True})
    run_window(spec, WINDOW)
    assert reconcile_pipeline(spec)["status"] == "PASS"
    _drift(url)
    quick = reconcile_pipeline(spec)
    assert quick["status"] == "FAIL" and quick["rows_target"] == 412
    summary = reconcile_pipeline(spec, do_repair=True)
    assert (summary["missing_in_target"], summary["extra_in_target"], summary["changed"]) == (1, 1, 2)
    assert summary["changed_columns"] == {"billing_city": 1, "total": 1}
    assert summary["repaired"] == {"upserted": 3, "deleted": 1, "rejected": 0, "extras_kept": 0}
    assert summary["status"] == "REPAIRED" and summary["after"]["status"] == "PASS"
    again = reconcile_pipeline(spec, deep=True)
    counts = (again["missing_in_target"], again["extra_in_target"], again["changed"], again["status"])
    assert counts == (0, 0, 0, "PASS")
    kinds = [(c["check_name"], c["status"]) for c in read_checks(create_engine(url), spec.name) if c["kind"] == "deep"]
    assert kinds[:3] == [("deep_diff", "PASS"), ("repair", "PASS"), ("deep_diff", "FAIL")]


def test_repair_keeps_extras_unless_deletes_propagate(chinook_copy, sqlite_url, connections):
    connections(src=chinook_copy, wh=sqlite_url)
    spec = invoices_spec()
    run_window(spec, WINDOW)
    _drift(sqlite_url)
    summary = reconcile_pipeline(spec, do_repair=True)
    assert summary["repaired"] == {"upserted": 3, "deleted": 0, "rejected": 0, "extras_kept": 1}
    assert summary["status"] == "FAIL"
    assert (summary["after"]["extra_in_target"], summary["after"]["changed"]) == (1, 0)


def test_cli_reconcile_and_diff_json_lines(chinook_copy, sqlite_url, connections, tmp_path, capsys):
    connections(src=chinook_copy, wh=sqlite_url)
    spec_file = tmp_path / "invoices_test.yaml"
    spec_file.write_text(yaml.safe_dump({**INVOICES, "reconcile": {"propagate_deletes": True}}))
    assert main(["run", str(spec_file), "--start", "2021-01-01", "--end", "2026-01-01"]) == 0
    capsys.readouterr()
    assert main(["reconcile", str(spec_file)]) == 0
    line = _last_json(capsys)
    assert JSON_KEYS <= line.keys() and line["status"] == "PASS" and line["rows_source"] == 412
    _drift(sqlite_url)
    assert main(["reconcile", str(spec_file), "--deep"]) == 2
    line = _last_json(capsys)
    assert JSON_KEYS <= line.keys()
    assert (line["missing_in_target"], line["extra_in_target"], line["changed"]) == (1, 1, 2)
    assert line["samples"]["missing_in_target"][0]["key"] == {"invoice_id": 7}
    assert main(["reconcile", str(spec_file), "--repair"]) == 0
    assert _last_json(capsys)["status"] == "REPAIRED"

    # etl diff: no spec, two URLs (here: the warehouse against a copy of itself with one change)
    copy = tmp_path / "copy.db"
    copy.write_bytes((tmp_path / "warehouse.db").read_bytes())
    _sql(sqlite_url.set(database=str(copy)), "UPDATE invoices SET billing_city = NULL WHERE invoice_id = 3")
    code = main(["diff", f"sqlite:///{sqlite_url.database}", f"sqlite:///{copy}", "--table", "invoices",
                 "--key", "invoice_id", "--columns", "billing_city,total"])
    line = _last_json(capsys)
    assert code == 2 and JSON_KEYS <= line.keys()
    assert line["changed"] == 1 and line["samples"]["changed"][0]["columns"] == {
        "billing_city": {"source": "Brussels", "target": None}}
    assert main(["diff", f"sqlite:///{sqlite_url.database}", f"sqlite:///{copy}", "--table", "invoices",
                 "--key", "invoice_id", "--columns", "total"]) == 0
    assert _last_json(capsys)["status"] == "PASS"


def test_cli_diff_errors_are_clear(sqlite_url, capsys):
    _sql(sqlite_url, "CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT)")
    assert main(["diff", f"sqlite:///{sqlite_url.database}", f"sqlite:///{sqlite_url.database}", "--table", "b",
                 "--key", "id"]) == 1
    assert "table 'b' does not exist" in capsys.readouterr().err
    assert main(["diff", "oracle://x@h/db", f"sqlite:///{sqlite_url.database}", "--table", "a", "--key", "id"]) == 1
    assert "URI scheme 'oracle' is not supported" in capsys.readouterr().err


def test_whole_table_reconcile_of_a_rest_pipeline_says_why_not():
    from driftless.spec import load_spec
    from tests.conftest import REPO

    spec = load_spec(REPO / "dags" / "pipelines" / "chinook_customers_api.yaml")
    with pytest.raises(ReconciliationFailed, match=r"needs a SQL source table \(source type 'rest'\)"):
        reconcile_pipeline(spec, deep=True)
