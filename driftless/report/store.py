"""Where the consistency reports live, so that every worker writes and the api-server serves the same ones.

The store is ``$DRIFTLESS_REPORT_STORE``: any location Airflow's ``ObjectStoragePath`` understands
(``file:///shared/reports``, ``s3://bucket/driftless-reports`` with ``DRIFTLESS_REPORT_STORE_CONN_ID``
naming the Airflow Connection that holds its credentials, ...). Without it, the local directory
``$DRIFTLESS_REPORT_DIR``, else ``$AIRFLOW_HOME/driftless-reports``: enough for one machine
(``make airflow``), not for Celery workers on several machines.

Each report run writes ``<store>/<run key>/report.html`` and ``report.json``; the newest
``$DRIFTLESS_REPORT_KEEP`` (default 30) are kept, older ones are deleted. The api-server serves
them at ``/driftless/reports/<run key>/report.html`` (the plugin ``driftless.report.plugin``), which is
where the report task's "Consistency report" link points.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from driftless.errors import DriftlessError
from driftless.settings import settings

DEFAULT_KEEP = 30
URL_PREFIX = "/driftless/reports"
FILES = ("report.html", "report.json")
_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")


def run_key(run_id: str) -> str:
    """A run id as a folder name: ``manual__2026-01-01T00:00:00+00:00`` -> ``manual__2026-01-01T00_00_00_00_00``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:120]


def valid_key(key: str) -> bool:
    """Whether ``key`` can name a report folder (no separators, no ``..``): guards the server's paths."""
    return bool(_KEY.match(key)) and key not in (".", "..")


def store_root() -> Any:
    """The store as an ``ObjectStoragePath`` (see the module docstring for the settings)."""
    from airflow.sdk import ObjectStoragePath

    url = settings().report_store
    if url:
        return ObjectStoragePath(url, conn_id=settings().report_store_conn_id)
    local = settings().report_dir or str(
        Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "driftless-reports")
    return ObjectStoragePath(Path(local).resolve().as_uri())


def keep() -> int:
    value = settings().report_keep or str(DEFAULT_KEEP)
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise DriftlessError(f"DRIFTLESS_REPORT_KEEP={value!r}: expected a whole number of reports >= 1")
    return number


def publish(local_dir: str | Path, key: str) -> Any:
    """Copy a written report (``report.html``, ``report.json``) into the store; prune the oldest ones.

    Returns the report's folder in the store. A store that is the local directory itself is not copied.
    """
    root = store_root()
    folder = root / key
    source = Path(local_dir)
    if not (root.protocol == "file" and Path(folder.path).resolve() == source.resolve()):
        folder.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            (folder / name).write_bytes((source / name).read_bytes())
    prune(root, keep())
    return folder


def history(root: Any = None) -> list[Any]:
    """The report folders of the store, newest first (by the modification time of their report.json)."""
    root = root if root is not None else store_root()
    if not root.exists():
        return []
    folders = []
    for child in root.iterdir():
        marker = child / "report.json"
        if child.is_dir() and valid_key(child.name) and marker.exists():
            folders.append((float(marker.stat().st_mtime or 0), child.name, child))
    return [f for *_, f in sorted(folders, key=lambda t: (t[0], t[1]), reverse=True)]


def prune(root: Any, keep_newest: int) -> list[str]:
    """Delete all but the newest ``keep_newest`` reports; returns the deleted keys."""
    removed = []
    for folder in history(root)[keep_newest:]:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
        removed.append(folder.name)
    return removed


def read(key: str, name: str) -> bytes | None:
    """A stored report file, or None when there is none by that key and name."""
    if not valid_key(key) or name not in FILES:
        return None
    path = store_root() / key / name
    return path.read_bytes() if path.exists() else None


def report_url(key: str) -> str:
    """The report's address on the api-server (``[api] base_url``, as the UI's links use)."""
    base = os.environ.get("AIRFLOW__API__BASE_URL") or ""
    if not base:
        try:
            from airflow.configuration import conf

            base = conf.get("api", "base_url", fallback="") or ""
        except Exception:  # outside Airflow: a relative link still works from the UI
            base = ""
    return f"{base.rstrip('/')}{URL_PREFIX}/{key}/report.html"
