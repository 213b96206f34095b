"""Which files a file source sees: the filesystem (fsspec), the glob, and each file's time.

A file's time places it in a window: its modification time (``glob``) or the date in its path
(``path_pattern``), in UTC.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from driftless.errors import SourceError
from driftless.sources.files.spec import DATE_DIRECTIVES, DATE_PLACEHOLDER, FileSourceSpec

# what the filesystems of fsspec call a file's modification time, in order of preference
MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "mtime_ns")


@dataclass(frozen=True)
class FileInfo:
    """One file: its path relative to the location, size, modification time and the time from its path."""

    path: str
    full: str
    size: int
    mtime: datetime | None
    path_time: datetime | None = None


def filesystem(spec: FileSourceSpec) -> tuple[Any, str]:
    """The fsspec filesystem of ``location`` and the root path on it (no trailing slash)."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:  # pragma: no cover - fsspec comes with Airflow
        raise SourceError("file sources need the fsspec package (pip install fsspec)") from exc
    options: dict[str, Any] = {}
    if spec.connection:
        from driftless.connections import connection_fields

        options = dict(connection_fields(spec.connection).get("extra") or {})
    try:
        fs, root = url_to_fs(spec.location, **options)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"source.location {spec.location!r}: no usable filesystem ({exc}); for a URL such as "
                          "s3:// install its fsspec package (s3fs, gcsfs, adlfs ...)") from exc
    return fs, root.rstrip("/") or "/"


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, str):
        try:
            return _as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def modification_time(info: dict[str, Any], protocol: str) -> datetime | None:
    """A file's modification time from an fsspec ``info`` dict (keys differ between filesystems)."""
    for key in MTIME_KEYS:
        if info.get(key) is not None:
            value = info[key] / 1e9 if key == "mtime_ns" else info[key]
            return _as_utc(value)
    if protocol == "memory":  # the in-memory filesystem replaces a file on each write: created = modified
        return _as_utc(info.get("created"))
    return None


def _glob_regex(pattern: str) -> str:
    """A glob (``*``, ``**``, ``?``, ``[...]``) as a regex over '/'-separated relative paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            out.append(fnmatch.translate(pattern[i:end + 1])[4:-3])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


class PathDates:
    """The date in a path under a ``path_pattern`` such as ``orders/{date:%Y-%m-%d}/*.csv``."""

    def __init__(self, pattern: str) -> None:
        match = DATE_PLACEHOLDER.search(pattern)
        assert match is not None  # the spec checked it
        self.format = match[1]
        before, after = pattern[:match.start()], pattern[match.end():]
        date_re = "".join(f"(?:{DATE_DIRECTIVES[p[1]]})" if p.startswith("%") else re.escape(p)
                          for p in re.findall(r"%.|[^%]", self.format))
        self.regex = re.compile(f"{_glob_regex(before)}(?P<date>{date_re}){_glob_regex(after)}")
        self.glob = before + re.sub(r"%.", "*", self.format) + after

    def time_of(self, relative: str) -> datetime | None:
        """The path's date as UTC midnight (or the time the format gives), None when the path has none."""
        match = self.regex.fullmatch(relative)
        if match is None:
            return None
        try:
            return datetime.strptime(match["date"], self.format).replace(tzinfo=UTC)
        except ValueError:
            return None


def list_files(spec: FileSourceSpec, fs: Any, root: str) -> tuple[list[FileInfo], list[str]]:
    """The files under ``root`` that the spec selects, and paths matched by the glob that carry no date.

    Directories are left out. Paths are '/'-separated and relative to ``root``.
    """
    dates = PathDates(spec.path_pattern) if spec.path_pattern else None
    pattern = dates.glob if dates else spec.glob
    assert pattern is not None
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    try:
        found = fs.glob(f"{root.rstrip('/')}/{pattern}", detail=True)
    except (OSError, ValueError) as exc:
        raise SourceError(f"source.location {spec.location!r}: listing {pattern!r} failed: {exc}") from exc
    prefix = root.rstrip("/") + "/"
    files, undated = [], []
    for full, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        relative = full[len(prefix):] if full.startswith(prefix) else full
        path_time = None
        if dates is not None:
            path_time = dates.time_of(relative)
            if path_time is None:
                undated.append(relative)
                continue
        files.append(FileInfo(relative, full, int(info.get("size") or 0), modification_time(info, protocol),
                              path_time))
    if dates is None:
        missing = [f.path for f in files if f.mtime is None]
        if missing:
            raise SourceError(f"source.location {spec.location!r}: the filesystem does not tell the modification "
                              f"time of {missing[0]!r} (and {len(missing) - 1} more); windows by modification time "
                              "need it: use path_pattern (a date in the path) instead of glob")
    return files, undated
