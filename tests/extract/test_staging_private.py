"""Staging of `etl run`: under $DRIFTLESS_STAGING_DIR, private (0700/0600), and a killed run's copy is pruned."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from driftless.extract.staging import owned_run_dir, prune_stale, staging_root
from tests.helpers import INVOICES

WINDOW = ["--start", "2021-01-01", "--end", "2026-01-01"]


def _start(spec_path: Path, env: dict[str, str], **failpoint: str) -> subprocess.Popen:
    env = dict(env, **{f"DRIFTLESS_FAILPOINT{'_' + k.upper() if k != 'point' else ''}": v
                       for k, v in failpoint.items()})
    return subprocess.Popen([sys.executable, "-m", "driftless.cli", "run", str(spec_path), *WINDOW], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(0o022))  # the usual umask: files would be 0644


def _wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run never reached the fail point"
        time.sleep(0.05)


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*/*") if p.is_dir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_a_killed_run_leaves_private_staging_that_the_next_run_prunes(tmp_path, chinook_source):
    spec_path = tmp_path / "invoices_test.yaml"
    spec_path.write_text(yaml.safe_dump(INVOICES))
    root, tmp = tmp_path / "staging", tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, AIRFLOW_CONN_SRC=f"sqlite:///{chinook_source}",
               AIRFLOW_CONN_WH=f"sqlite:///{tmp_path / 'wh.db'}", DRIFTLESS_STAGING_DIR=str(root), TMPDIR=str(tmp))

    marker = tmp_path / "killed_marker"
    killed = _start(spec_path, env, point="mid_load", marker=str(marker))
    _wait_for(marker, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)

    # The killed run's copy of the source is where the README says, and private.
    assert list(tmp.iterdir()) == [], "nothing is staged in $TMPDIR"
    [leaked] = _run_dirs(root)
    assert leaked.relative_to(root).parts[:2] == ("invoices_test", "20210101T000000Z_20260101T000000Z")
    staged = [p for p in leaked.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in staged) and (leaked / "_manifest.json") in staged
    for directory in (root, *leaked.relative_to(root).parents, leaked.relative_to(root)):
        assert _mode(root / directory) == 0o700, f"{root / directory} is {oct(_mode(root / directory))}"
    for path in staged:
        assert _mode(path) == 0o600, f"{path} is {oct(_mode(path))}"
    assert json.loads((leaked / "_owner.lock").read_text())["pid"] == killed.pid

    # The next run prunes it at its start; while it is alive, its own directory is not pruned.
    marker2 = tmp_path / "live_marker"
    live = _start(spec_path, env, point="mid_load", marker=str(marker2), sleep="4")
    _wait_for(marker2, live)
    assert not leaked.exists(), "the killed run's staging is pruned by the next run"
    [own] = _run_dirs(root)
    assert prune_stale(root) == [] and own.exists(), "a live run's staging is never pruned"
    out, err = live.communicate(timeout=120)
    assert live.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["loaded"] == 412
    assert _run_dirs(root) == [], "a finished run removes its staging"
    assert list(tmp.iterdir()) == []


def test_an_unlocked_owned_directory_is_pruned_at_once_and_airflow_ones_after_a_week(tmp_path):
    root = tmp_path / "staging"
    airflow_run = root / "p" / "w" / "manual__1"
    airflow_run.mkdir(parents=True)
    (airflow_run / "part-00000.parquet").write_bytes(b"x")
    with owned_run_dir(root / "p" / "w" / "cli__1") as held:
        assert prune_stale(root) == []  # held by this process: alive
        # A second holder is refused (the lock is exclusive), so a prune's probe cannot take it either.
        child = subprocess.run([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1]); "
                                "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(held / "_owner.lock")],
                               capture_output=True, text=True)
        assert child.returncode != 0 and "BlockingIOError" in child.stderr
    assert not held.exists(), "the owner removes its directory when the run ends"
    assert airflow_run.exists(), "an Airflow run's staging is kept for its retries"


def test_default_staging_root_is_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("DRIFTLESS_STAGING_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert staging_root() == tmp_path / ".cache" / "driftless" / "staging"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert staging_root() == tmp_path / "xdg" / "driftless" / "staging"
    monkeypatch.setenv("DRIFTLESS_STAGING_DIR", str(tmp_path / "mine"))
    assert staging_root() == tmp_path / "mine"
