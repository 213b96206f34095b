"""Fail points: named places where a test can freeze a run to kill it there (SIGKILL, connection kill).

Off unless ``DRIFTLESS_FAILPOINT`` names the point. The process then touches the file named by
``DRIFTLESS_FAILPOINT_MARKER`` (so the test knows it got there) and sleeps until killed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def failpoint(name: str) -> None:
    if os.environ.get("DRIFTLESS_FAILPOINT") != name:
        return
    marker = os.environ.get("DRIFTLESS_FAILPOINT_MARKER")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("DRIFTLESS_FAILPOINT_SLEEP", "600")))
