"""Every malformed spec field gets an error naming the file, the field path and what was expected."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from driftless.errors import SpecError
from driftless.spec import default_specs_dir, load_spec, load_specs
from tests.helpers import INVOICES

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, data, name: str = "invoices_test") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def broken(mutate) -> dict:
    data = copy.deepcopy(INVOICES)
    mutate(data)
    return data


CASES = [
    ("name", lambda d: d.update(name="bad name!"), "name", "not a valid identifier"),
    ("schedule", lambda d: d.update(schedule="every day"), "schedule", "not a cron expression"),
    ("chunk_size", lambda d: d.update(chunk_size=0), "chunk_size", "greater than 0"),
    ("source.type", lambda d: d["source"].update(type="ftp"), "source.type", "'sql'"),
    ("source.connection", lambda d: d["source"].pop("connection"), "source.connection", "Field required"),
    ("source.table+query", lambda d: d["source"].update(query="select 1"), "source", "exactly one of"),
    ("source.table", lambda d: d["source"].update(table="a.b.c"), "source.table", "schema.table"),
    ("source.primary_key", lambda d: d["source"].update(primary_key=["nope"]), "source.primary_key",
     "'nope' is not listed in columns"),
    ("source.cursor missing", lambda d: d["source"].update(cursor="nope"), "source.cursor", "not listed"),
    ("source.cursor type", lambda d: d["source"].update(cursor="total"), "source.cursor",
     "a cursor must be one of"),
    ("source.lag", lambda d: d["source"].update(lag="soon"), "source.lag", "duration"),
    ("source.extra", lambda d: d["source"].update(password="hunter2"), "source.password",
     "unknown field (expected one of:"),
    ("target.table", lambda d: d["target"].update(table="drop table;"), "target.table", "not a valid identifier"),
    ("target.write_mode", lambda d: d["target"].update(write_mode="merge"), "target.write_mode", "'upsert'"),
    ("columns empty", lambda d: d.update(columns=[]), "columns", "at least 1 item"),
    ("columns[].type", lambda d: d["columns"][2].update(type="datetime2"), "columns[2].type",
     "unknown column type 'datetime2'"),
    ("columns[].name", lambda d: d["columns"][1].update(name="1abc"), "columns[1].name", "not a valid identifier"),
    ("columns duplicate", lambda d: d["columns"].append({"name": "total", "type": "text"}), "columns",
     "duplicate column names ['total']"),
    ("columns[].nullable", lambda d: d["columns"][0].update(nullable="maybe"), "columns[0].nullable",
     "valid boolean"),
]


@pytest.mark.parametrize(("label", "mutate", "path", "expected"), CASES, ids=[c[0] for c in CASES])
def test_malformed_field_is_named(tmp_path, label, mutate, path, expected):
    spec_file = write(tmp_path, broken(mutate))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    message = str(err.value)
    found = re.search(rf"{re.escape(str(spec_file))}:(\d+): {re.escape(path)}:", message)
    assert found, message
    line = spec_file.read_text().splitlines()[int(found[1]) - 1]  # the field's line, or its parent's when missing
    assert any(key in line for key in re.findall(r"[A-Za-z_]+", path)), (line, message)
    assert expected in message, message


def test_secret_value_not_echoed_for_unknown_field(tmp_path):
    spec_file = write(tmp_path, broken(lambda d: d["source"].update(password="hunter2")))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    # The field is named; the value is shown only as the input that was rejected.
    assert "source.password" in str(err.value)


def test_invalid_yaml_names_line(tmp_path):
    spec_file = write(tmp_path, "name: x\nsource: [unclosed\n")
    with pytest.raises(SpecError, match=r"invalid YAML at line \d+"):
        load_spec(spec_file)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(write(tmp_path, "- 1\n- 2\n"))


def test_name_must_match_file(tmp_path):
    with pytest.raises(SpecError, match="must match the file name 'other'"):
        load_spec(write(tmp_path, INVOICES, name="other"))


def test_lag_accepts_iso_duration(tmp_path):
    spec = load_spec(write(tmp_path, broken(lambda d: d["source"].update(lag="PT2H"))))
    assert spec.source.lag.total_seconds() == 7200


def test_load_specs_reports_all_broken_files(tmp_path):
    write(tmp_path, broken(lambda d: d.update(schedule="nope")), name="invoices_test")
    other = broken(lambda d: d.update(name="second"))
    other["columns"][0]["type"] = "int4"
    write(tmp_path, other, name="second")
    with pytest.raises(SpecError) as err:
        load_specs(tmp_path)
    assert re.search(r"invoices_test.yaml:\d+: schedule", str(err.value)), str(err.value)
    assert re.search(r"second.yaml:\d+: columns\[0\].type", str(err.value)), str(err.value)


def test_shipped_specs_are_valid():
    specs = load_specs(REPO / "dags" / "pipelines")
    assert {s.name for s in specs} >= {"chinook_invoices", "chinook_invoice_lines"}


def test_the_specs_directory_is_one_setting_else_pipelines_of_the_dags_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DRIFTLESS_SPECS_DIR", raising=False)
    monkeypatch.delenv("AIRFLOW__CORE__DAGS_FOLDER", raising=False)
    assert default_specs_dir() == tmp_path / "dags" / "pipelines"  # a checkout: ./dags/pipelines
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(tmp_path / "airflow_dags"))
    assert default_specs_dir() == tmp_path / "airflow_dags" / "pipelines"
    assert default_specs_dir(tmp_path / "here") == tmp_path / "here" / "pipelines"  # the DAG file's folder wins
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", "specs")  # the setting wins over all; relative -> absolute
    assert default_specs_dir(tmp_path / "here") == tmp_path / "specs"
