"""`etl quarantine list` (filters, summary, JSON null, UTF-8), a closed stdout pipe, and `etl specs check`
errors that name the file and the field."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import yaml

from driftless.cli import main
from driftless.pipeline import extract_window, load_window, new_run_id
from driftless.spec import load_spec
from driftless.window import Window
from tests.conftest import REPO
from tests.helpers import INVOICES

SPEC: dict = {
    "name": "qlist",
    "source": {"type": "sql", "connection": "src", "table": "unused", "primary_key": ["id"], "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "qlist"},
    "columns": [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "city", "type": "varchar(8)"},
        {"name": "qty", "type": "double", "nullable": False},
        {"name": "updated_at", "type": "timestamp", "nullable": False},
    ],
    "max_reject_ratio": 1.0,
}
JANUARY = Window.parse("2024-01-01", "2024-02-01")
FEBRUARY = Window.parse("2024-02-01", "2024-03-01")


def write_spec(tmp_path: Path) -> Path:
    path = tmp_path / "qlist.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def load(path: Path, window: Window, rows: list[dict]) -> str:
    spec = load_spec(path)
    run_id = new_run_id()
    manifest = extract_window(spec, window, run_id, path.parent / "staging", frames=[pd.DataFrame(rows)])
    load_window(spec, window, manifest, run_id)
    return run_id


def at(window: Window, minutes: int = 0) -> datetime:
    return window.start.replace(tzinfo=None) + timedelta(minutes=minutes)


def run_cli(capsys, *args: str) -> tuple[list[dict], str]:
    assert main(list(args)) == 0
    out = capsys.readouterr()
    return [json.loads(line) for line in out.out.splitlines()], out.err


def test_list_filters_summarises_and_prints_plain_json(wh, tmp_path, capsys):
    path = write_spec(tmp_path)
    jan = load(path, JANUARY, [
        {"id": 1, "city": "Zürich", "qty": 1.0, "updated_at": at(JANUARY)},                # loaded
        {"id": 2, "city": "東京", "qty": None, "updated_at": at(JANUARY, 1)},               # qty NULL
        {"id": 3, "city": "Reykjavík🌋", "qty": 2.0, "updated_at": at(JANUARY, 2)},        # too long
    ])
    feb = load(path, FEBRUARY, [
        {"id": 4, "city": "ok", "qty": 3.0, "updated_at": at(FEBRUARY)},
        {"id": 5, "city": "Genève", "qty": None, "updated_at": at(FEBRUARY, 1)},
    ])

    entries, err = run_cli(capsys, "quarantine", "list", str(path))
    assert [e["record_key"] for e in entries] == [[2], [3], [5]] and "3 quarantined record(s)" in err
    tokyo = entries[0]
    assert tokyo["record"]["city"] == "東京" and tokyo["record"]["qty"] is None
    assert tokyo["errors"] == [{"column": "qty", "check": "not_nullable",
                                "message": "column 'qty' failed not_nullable; got null"}]
    assert tokyo["window_start"] == "2024-01-01T00:00:00+00:00" and tokyo["run_id"] == jan

    raw = subprocess.run([sys.executable, "-m", "driftless.cli", "quarantine", "list", str(path)], capture_output=True,
                         text=True, encoding="utf-8", env=os.environ | {"PYTHONPATH": str(REPO)}, check=True).stdout
    assert "東京" in raw and "Reykjavík🌋" in raw and "\\u" not in raw and "nan" not in raw.lower()

    by_reason, _ = run_cli(capsys, "quarantine", "list", str(path), "--reason", "not_nullable")
    assert [e["record_key"] for e in by_reason] == [[2], [5]]
    by_column, _ = run_cli(capsys, "quarantine", "list", str(path), "--reason", "city: str_length(None, 8)")
    assert [e["record_key"] for e in by_column] == [[3]]
    in_feb, _ = run_cli(capsys, "quarantine", "list", str(path), "--window", "2024-02-01/2024-03-01")
    assert [e["record_key"] for e in in_feb] == [[5]]
    in_both, _ = run_cli(capsys, "quarantine", "list", str(path), "--window", "2023-12-01/2024-03-01")
    assert len(in_both) == 3
    by_run, _ = run_cli(capsys, "quarantine", "list", str(path), "--run", feb)
    assert [e["record_key"] for e in by_run] == [[5]]

    summary, err = run_cli(capsys, "quarantine", "list", str(path), "--summary")
    assert summary == [{"column": "qty", "check": "not_nullable", "records": 2},
                       {"column": "city", "check": "str_length(None, 8)", "records": 1}]
    jan_summary, _ = run_cli(capsys, "quarantine", "list", str(path), "--summary", "--run", jan,
                             "--reason", "qty")
    assert jan_summary == [{"column": "qty", "check": "not_nullable", "records": 1}]

    assert main(["quarantine", "list", str(path), "--window", "2024-02-01"]) == 1
    assert "--window: '2024-02-01' is not START/END" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_listing_quietly(sqlite_url, connections, tmp_path):
    connections(wh=sqlite_url)
    path = write_spec(tmp_path)
    rows = [{"id": i, "city": "x" * 20, "qty": 1.0, "updated_at": at(JANUARY, i % 1000)} for i in range(1, 3001)]
    load(path, JANUARY, [{"id": 0, "city": "ok", "qty": 1.0, "updated_at": at(JANUARY)}, *rows])
    proc = subprocess.Popen([sys.executable, "-m", "driftless.cli", "quarantine", "list", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()          # what `| head -1` does: read a line, then go away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert json.loads(first)["record_key"] == [1]
    assert err == "", err                   # no BrokenPipeError traceback, no "Exception ignored"


def test_specs_check_names_file_and_field_of_code_problems(tmp_path, capsys):
    data = copy.deepcopy(INVOICES)
    data["transforms"] = {"cast": {"totl": "numeric(10,2)"}}
    (tmp_path / "invoices_test.yaml").write_text(yaml.safe_dump(data))
    assert main(["specs", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(tmp_path / 'invoices_test.yaml'))}:\d+: transforms\.cast\.totl: column 'totl' "
                     "is not listed in columns", err)  # file:line: field: message

    data["transforms"] = {"derive": [{"name": "total", "expr": "total +"}]}
    data["schema_model"] = "tests.dataframe_check_models:FieldTypo"
    data["columns"][4]["checks"] = {"min": "zero"}
    (tmp_path / "invoices_test.yaml").write_text(yaml.safe_dump(data))
    assert main(["specs", "check", str(tmp_path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    where = str(tmp_path / "invoices_test.yaml")
    assert any(line.startswith(f"etl: error: {where}: columns[4].checks.min: 'zero' is not a valid numeric(10,2)")
               for line in lines), lines
    assert f"{where}: schema_model: 'tests.dataframe_check_models:FieldTypo' has field(s) 'shipdate' that are " \
           "not columns of the spec" in "\n".join(lines)
    assert f"{where}: transforms.derive[0].expr: cannot parse 'total +'" in "\n".join(lines)
