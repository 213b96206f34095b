"""A load killed with SIGKILL at any point leaves the old state; the re-run gives exactly the clean result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.conftest import airflow_uri
from tests.helpers import INVOICES, fingerprint, invoices_spec

WINDOW = ["--start", "2021-01-01", "--end", "2026-01-01"]


def etl(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "driftless.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid_load", "before_commit"])
def test_sigkill_mid_load_then_rerun_is_clean(tmp_path: Path, chinook_source, target_url, another_target, point):
    spec_path = tmp_path / "invoices_test.yaml"
    spec_path.write_text(yaml.safe_dump(INVOICES))  # chunk_size 100: several chunks per window
    env = dict(os.environ, AIRFLOW_CONN_SRC=f"sqlite:///{chinook_source}", AIRFLOW_CONN_WH=airflow_uri(target_url))
    spec = invoices_spec()

    # A first clean run of an older window, so there is state to preserve.
    first = etl(["run", str(spec_path), "--start", "2021-01-01", "--end", "2022-01-01"], env)
    assert first.wait(120) == 0, first.stderr.read()
    before = fingerprint(target_url, spec)

    marker = tmp_path / "marker"
    crashing = etl(["run", str(spec_path), *WINDOW],
                   dict(env, DRIFTLESS_FAILPOINT=point, DRIFTLESS_FAILPOINT_MARKER=str(marker)))
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert crashing.poll() is None, crashing.stderr.read()
        assert time.monotonic() < deadline, "the load never reached the fail point"
        time.sleep(0.05)
    crashing.send_signal(signal.SIGKILL)
    crashing.wait(30)

    assert fingerprint(target_url, spec) == before, "a killed load must leave the target unchanged"

    rerun = etl(["run", str(spec_path), *WINDOW], env)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "success" and summary["loaded"] == 412

    # Compare with one clean run into an empty target.
    clean_url = another_target()
    clean_env = dict(env, AIRFLOW_CONN_WH=airflow_uri(clean_url))
    for window in (["--start", "2021-01-01", "--end", "2022-01-01"], WINDOW):
        assert etl(["run", str(spec_path), *window], clean_env).wait(120) == 0
    got, want = fingerprint(target_url, spec), fingerprint(clean_url, spec)
    assert (got["rows"], got["sha256"], got["watermark"]) == (want["rows"], want["sha256"], want["watermark"])
    with create_engine(target_url).connect() as conn:
        statuses = [r[0] for r in conn.execute(text("SELECT status FROM etl_runs ORDER BY id"))]
    assert statuses == ["success", "success"], "the killed attempt committed nothing, not even a run record"
