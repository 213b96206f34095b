"""Rejected records are never a silent success: a default threshold, all-rejected windows fail, and the
window's checks count what was quarantined (WARN), in the JSON line, etl_reconciliation and the report."""

from __future__ import annotations

import copy
import json
import sqlite3

import yaml
from sqlalchemy import create_engine

from driftless.cli import main
from driftless.reconcile.store import read_checks
from driftless.report import build_report
from driftless.state import read_runs, read_state
from tests.helpers import INVOICES, invoices_spec


def _spec_file(tmp_path, min_total: float, **top) -> str:
    data = copy.deepcopy(INVOICES)
    data["columns"][4]["checks"] = {"min": min_total}
    data.update(top)
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    path = specs / "invoices_test.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_default_max_reject_ratio_is_one_percent():
    assert invoices_spec().max_reject_ratio == 0.01


def _run(path: str, capsys) -> tuple[int, str, str]:
    code = main(["run", path, "--start", "2021-01-01", "--end", "2026-01-01"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_all_records_rejected_fails_even_when_any_share_is_accepted(chinook_copy, sqlite_url, connections,
                                                                      tmp_path, capsys):
    connections(src=chinook_copy, wh=sqlite_url)
    for top in ({}, {"max_reject_ratio": 1}):  # the default, then "accept any share"
        code, out, err = _run(_spec_file(tmp_path, min_total=1000, **top), capsys)  # no invoice is that large
        assert code == 1 and out == ""
        assert "412 of 412 records (100.0%) failed validation" in err
        assert "Nothing was written" in err and "watermark stays" in err
        assert "total: greater_than_or_equal_to(1000.00) (412)" in err
        assert "First rejected: invoice_id [" in err  # keys and checks, so the message is actionable
        assert ".parquet" not in err and "driftless-" not in err  # no staging files the CLI has deleted
        assert "Traceback" not in err
    assert "whatever max_reject_ratio says" in err
    engine = create_engine(sqlite_url)
    try:
        runs = read_runs(engine, "invoices_test")
        assert read_state(engine, "invoices_test") is None  # the watermark never moved
        assert read_checks(engine, "invoices_test") == []
    finally:
        engine.dispose()
    assert [(r["status"], r["loaded"], r["extracted"], r["quarantined"]) for r in runs] == [
        ("failed", 0, 412, 412)] * 2
    assert all("failed validation" in r["message"] for r in runs)


def test_rejects_above_the_default_fail_the_window(chinook_copy, sqlite_url, connections, tmp_path, capsys):
    with sqlite3.connect(chinook_copy) as db:  # 5 of 412 (1.2%) negative: above the default 1%
        db.execute("UPDATE Invoice SET Total = -Total WHERE InvoiceId IN (3, 7, 11, 15, 19)")
    connections(src=chinook_copy, wh=sqlite_url)
    code, out, err = _run(_spec_file(tmp_path, min_total=0), capsys)
    assert code == 1 and "5 of 412 records (1.2%) failed validation, above max_reject_ratio 0.01" in err
    assert "raise max_reject_ratio (now 0.01; 1 accepts any share)" in err


def test_quarantined_records_are_a_warn_check_in_summary_store_and_report(chinook_copy, sqlite_url, connections,
                                                                          tmp_path, capsys):
    with sqlite3.connect(chinook_copy) as db:  # 2 of 412 (0.5%) rejected: within the default
        db.execute("UPDATE Invoice SET Total = -Total WHERE InvoiceId IN (3, 7)")
    connections(src=chinook_copy, wh=sqlite_url)
    code, out, err = _run(_spec_file(tmp_path, min_total=0), capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["status"], summary["loaded"], summary["quarantined"]) == ("success", 410, 2)
    checks = {c["check"]: c for c in summary["checks"]}
    assert checks["quarantined"]["status"] == "WARN" and checks["quarantined"]["difference"] == 2
    assert "2 of 412 records (0.49%) failed validation" in checks["quarantined"]["message"]
    engine = create_engine(sqlite_url)
    try:
        stored = {c["check_name"]: c for c in read_checks(engine, "invoices_test")}
    finally:
        engine.dispose()
    assert stored["quarantined"]["status"] == "WARN" and "etl quarantine list" in stored["quarantined"]["message"]

    data = copy.deepcopy(INVOICES)
    data["columns"][4]["checks"] = {"min": 0}
    paths = build_report([invoices_spec(columns=data["columns"])], tmp_path / "report")
    (p,) = json.loads(paths["json"].read_text())["pipelines"]
    assert p["window_status"] == "WARN" and p["reconciliation_status"] == "WARN"
    assert any(c["check"] == "quarantined" and c["status"] == "WARN" for c in p["checks"])
    assert "2 of 412 records (0.49%) failed validation" in paths["html"].read_text()
