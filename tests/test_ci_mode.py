"""Integration tests skip without their server locally, and fail under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE = """
import pytest

@pytest.mark.integration
def test_needs_postgres(pg_url):
    pass
"""


def run_probe(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    probe = REPO / "tests" / f"test_zz_probe_{os.getpid()}.py"
    probe.write_text(PROBE)
    try:
        env = dict(os.environ, CI=ci, DRIFTLESS_PG_PORT="1")
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    finally:
        probe.unlink()


def test_unreachable_server_skips_locally_and_fails_in_ci(tmp_path):
    local = run_probe(tmp_path, "")
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    ci = run_probe(tmp_path, "true")
    assert ci.returncode == 1 and "1 failed" in ci.stdout and "CI=true requires it" in ci.stdout, ci.stdout
