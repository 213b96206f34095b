"""Errors keep their cause (``raise ... from exc``) for logs; the CLI still shows users only the message."""

from __future__ import annotations

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from driftless.cli import main
from driftless.errors import SpecError, error_detail
from driftless.spec import load_spec


def test_a_spec_error_keeps_the_yaml_error_and_the_cli_prints_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nsource: [unclosed\n")
    with pytest.raises(SpecError) as caught:
        load_spec(bad)
    assert isinstance(caught.value.__cause__, yaml.YAMLError)
    assert main(["specs", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("etl: error: ") and "Traceback" not in err and "YAMLError" not in err


def test_error_detail_is_the_driver_message_first_line():
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as conn, pytest.raises(SQLAlchemyError) as caught:
            conn.execute(text("SELECT * FROM no_such_table"))
    finally:
        engine.dispose()
    assert error_detail(caught.value) == "no such table: no_such_table"
    assert error_detail(ValueError("first\nsecond")) == "first"
    assert error_detail(ValueError("")) == "ValueError"
