"""Fail points: named places where a test can freeze a run to kill it there (SIGKILL, connection kill).

Off unless ``DRIFTLESS_FAILPOINT`` names the point. The process then touches the file named by
``DRIFTLESS_FAILPOINT_MARKER`` (so the test knows it got there) and sleeps until killed; or, when
``DRIFTLESS_FAILPOINT_RESUME`` names a file, until that file exists, and then goes on (so a test can
change the world at that point, for example drop the source table between load and checks).
``DRIFTLESS_FAILPOINT_AFTER=N`` lets the process pass the point N times first (to stop a catch-up in
its third window, say).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from driftless.settings import settings

_passed: dict[str, int] = {}


def failpoint(name: str) -> None:
    s = settings()
    if s.failpoint != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] <= int(s.failpoint_after or "0"):
        return
    marker = s.failpoint_marker
    if marker:
        Path(marker).write_text(str(os.getpid()))
    limit = float(s.failpoint_sleep or "600")
    resume = s.failpoint_resume
    if not resume:
        time.sleep(limit)
        return
    deadline = time.monotonic() + limit
    while not Path(resume).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
