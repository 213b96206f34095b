"""The file-arrival trigger of event-driven file pipelines (``trigger: {on: file}``), run by Airflow's triggerer.

Airflow's own file event triggers (``FileDeleteTrigger``, ``DirectoryFileDeleteTrigger``) delete the file they
saw, which would destroy a file source's data before it is read; ``FileTrigger`` is not an event trigger. This
one lists the source's ``location`` with its ``glob`` or ``path_pattern`` (the same listing the source reads),
deletes and moves nothing, and fires when a file's modification time is newer than the newest one it saw
before. That newest time is kept in the watched Asset's state store (Airflow 3.3), so after the triggerer
restarts the trigger (it does after every event) the same files do not fire again; without a state store
(no watched Asset) it counts from the moment it started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)

STATE_KEY = "newest_file_mtime"
MAX_LISTED = 100  # file names carried in the event (the asset event's extra); the count is always complete


class FileArrivalTrigger(BaseEventTrigger):
    """Fire when the file source ``source`` (its spec's ``source:`` block as JSON) has a file newer than seen.

    Args:
        source: the ``source:`` block of a file pipeline, as ``FileSourceSpec.model_dump(mode="json")``.
        poll_interval: seconds between two listings.
    """

    def __init__(self, source: dict[str, Any], poll_interval: float = 30.0) -> None:
        super().__init__()
        self.source = source
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("driftless.airflow.triggers.FileArrivalTrigger",
                {"source": self.source, "poll_interval": self.poll_interval})

    async def _stored(self) -> datetime | None:
        store = getattr(self, "asset_state_store", None)
        if store is None:
            return None
        value = await store.aget(STATE_KEY)
        return datetime.fromisoformat(value) if value else None

    async def _store(self, newest: datetime) -> None:
        store = getattr(self, "asset_state_store", None)
        if store is not None:
            await store.aset(STATE_KEY, newest.isoformat())

    async def run(self) -> AsyncIterator[TriggerEvent]:
        seen = await self._stored()
        if seen is None and getattr(self, "asset_state_store", None) is None:
            seen = datetime.now(UTC)  # nowhere to remember: only files from now on
        location = self.source.get("location")
        while True:
            # In a thread: the imports (pandas, the first time) and the listing must not block the triggerer's
            # event loop, which every other watcher and deferred task of this triggerer shares.
            new = await asyncio.to_thread(new_files, self.source, seen)
            if new:
                newest = new[-1][0]
                await self._store(newest)
                log.info("%d new file(s) in %s, the newest modified %s", len(new), location, newest.isoformat())
                yield TriggerEvent({"location": location, "new_files": len(new),
                                    "files": [path for _, path in new[:MAX_LISTED]], "newest": newest.isoformat()})
                return
            await asyncio.sleep(self.poll_interval)


def new_files(source: dict[str, Any], seen: datetime | None) -> list[tuple[datetime, str]]:
    """(modification time, path) of the source's files modified after ``seen`` (all when None), oldest first."""
    from driftless.sources.files.listing import filesystem, list_files
    from driftless.sources.files.spec import FileSourceSpec

    spec = FileSourceSpec.model_validate(source)
    fs, root = filesystem(spec)
    files, _undated = list_files(spec, fs, root)
    return sorted((f.mtime, f.path) for f in files if f.mtime is not None and (seen is None or f.mtime > seen))
