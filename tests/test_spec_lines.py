"""``etl specs check`` errors carry the YAML line of the field (``orders.yaml:12: source.primary_key: ...``) and a
"did you mean" for a misspelt field (issue 14, section 7)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from driftless.errors import SpecError
from driftless.spec import load_spec, parse_spec

ORDERS = """\
# orders, synced nightly
name: orders
schedule: "@daily"
source:
  type: sql
  connection: shop
  table: orders
  lagg: PT1H
  cursor: updated_at
  primary_key: [id]
target: {connection: wh, table: orders}
columns:
  - {name: order_id, type: integer, nullable: false}
  - {name: total, type: "numeric(10,2)"}
  - name: updated_at
    type: datetime2
"""


def test_errors_name_file_line_and_field_with_did_you_mean(tmp_path):
    path = tmp_path / "orders.yaml"
    path.write_text(ORDERS)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    lines = str(err.value).splitlines()
    assert f"{path}:8: source.lagg: unknown field (expected one of: " in lines[0]
    assert lines[0].endswith("; did you mean 'lag'? (got 'PT1H')")
    assert any(line.startswith(f"{path}:16: columns[2].type: unknown column type 'datetime2'") for line in lines)
    fixed = ORDERS.replace("  lagg:", "  lag:").replace("datetime2", "timestamp")
    path.write_text(fixed)
    with pytest.raises(SpecError) as err:  # a cross-field check: its field's line
        load_spec(path)
    assert str(err.value) == f"{path}:10: source.primary_key: column 'id' is not listed in columns"


def test_name_mismatch_and_specs_check_show_lines(tmp_path):
    (tmp_path / "other.yaml").write_text(ORDERS.replace("  lagg:", "  lag:").replace("datetime2", "timestamp")
                                         .replace("[id]", "[order_id]"))
    with pytest.raises(SpecError, match=r"other.yaml:2: name: 'orders' must match the file name 'other'"):
        load_spec(tmp_path / "other.yaml")
    proc = subprocess.run([sys.executable, "-m", "driftless.cli", "specs", "check", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "other.yaml:2: name:" in proc.stderr


def test_without_yaml_text_no_line_and_no_suggestion_when_nothing_is_close():
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "x", "frobnicate": 1}, "x.yaml")
    assert "x.yaml: frobnicate: unknown field" in str(err.value) and "did you mean" not in str(err.value)
