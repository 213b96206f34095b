"""What every source is, and what the spec models of sources share. Imports nothing from driftless.

A source (``driftless.sources.sql.source.SqlSource``, ``driftless.sources.rest.source.RestSource``) reads a
window's records in chunks: that is the ``Source`` protocol. What else a source can do is declared by the small
capability protocols below; the engine asks ``isinstance(source, CountsWindow)`` (a typed question,
checked by mypy where a connector is used as one) instead of probing attributes by name:

* ``CountsWindow``: counts and sums a window again in the source (the window checks; SQL).
* ``CountsNullCursors``: counts the rows whose cursor is NULL (``null_cursor_rows``).
* ``Resumable``: a retried extraction continues from a checkpoint (REST).
* ``Metered``: reports what its reads did (requests, pages ...: the run's ``metrics``).
* ``Closable``: holds connections to release after use.
* ``KeepsTargetState``: keeps state of its own in the target, written in the load's transaction (files).
* ``ChecksWindow``: adds checks of its own to a window's checks (files).
* ``Acknowledges``: acknowledges consumed messages after the commit (queues): loads in the consuming
  process, and no reject ratio refuses its windows.

The helpers for spec models (``check_identifier``, ``check_source_name``, ``render_params``) live here too, so
that a source's spec model and the pipeline spec (``driftless.spec``) can share them without importing each other.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # the load path imports this module and never needs pandas or Arrow here
    import pandas as pd
    import pyarrow as pa


class Bounded(Protocol):
    """A window as sources see it: ``[start, end)``, aware UTC datetimes (``driftless.window.Window``)."""

    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime: ...


@runtime_checkable
class Source(Protocol):
    """Reads the records of a window, in chunks of at most the spec's ``chunk_size`` rows."""

    def read(self, window: Any) -> Iterator[pd.DataFrame]: ...


@runtime_checkable
class CountsWindow(Protocol):
    """Can read a window again: its row count and the sums of columns over its rows, as the source holds them now."""

    def count(self, window: Any) -> int: ...
    def sums(self, window: Any, columns: list[str]) -> dict[str, Any]: ...


@runtime_checkable
class CountsNullCursors(Protocol):
    """Can count the rows whose cursor is NULL (they lie in no window)."""

    def null_cursor_count(self) -> int: ...


@runtime_checkable
class Resumable(Protocol):
    """A retried extraction continues from ``checkpoint`` (saved after each staged chunk) via ``resume_from``."""

    checkpoint: dict[str, Any] | None

    def resume_from(self, checkpoint: dict[str, Any] | None,
                    staged: Callable[[], Iterable[pa.Table]] | None = None) -> None: ...


@runtime_checkable
class Metered(Protocol):
    """Reports what its last read did (JSON-able), kept in the manifest and the run record."""

    metrics: dict[str, Any]


@runtime_checkable
class Closable(Protocol):
    """Holds connections (an engine) to release once the source is no longer needed."""

    def close(self) -> None: ...


@runtime_checkable
class KeepsTargetState(Protocol):
    """Keeps state of its own in the target (a file source: the files loaded), asked of the source's class.

    ``prepare_target`` creates its tables before the load's transaction; ``record_loaded`` writes the
    window's state inside it, so it commits with the rows or not at all.
    """

    @staticmethod
    def prepare_target(engine: Any, schema: str | None) -> None: ...
    @staticmethod
    def record_loaded(conn: Any, spec: Any, window: Any, run_id: str, manifest: Any) -> None: ...


@runtime_checkable
class ChecksWindow(Protocol):
    """Adds checks of its own to a committed window's checks (rows of the checks' result table)."""

    def window_checks(self, result: Any) -> list[dict[str, Any]]: ...


# -- helpers of source spec models ---------------------------------------------------------------------

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def one_or_more(value: Any) -> Any:
    """A spec field that takes one name or a list of them (``primary_key: id``), as a list."""
    return [value] if isinstance(value, str) else value


def check_identifiers(values: list[str]) -> list[str]:
    """``check_identifier`` for each name of a list (``primary_key``)."""
    return [check_identifier(v) for v in values]


def check_identifier(value: str) -> str:
    """Accept a SQL identifier: a letter or underscore, then letters, digits, underscores (max 63)."""
    if not isinstance(value, str) or not IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a valid identifier (expected a letter or underscore followed by letters, "
            "digits or underscores, at most 63 characters)"
        )
    return value


SOURCE_NAME_MAX = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_source_name(value: str) -> str:
    """Accept a table or column name as the source holds it (``"Order Items"``, ``"Unit-Price"``, ``Straße``).

    Spaces, hyphens, non-ASCII letters, mixed case and reserved words are all accepted: they are safe because
    every path quotes them through the source's SQL dialect (SQLAlchemy). Only empty names, control characters
    and names over 128 characters are refused. Target names stay identifiers (``check_identifier``).
    """
    if not isinstance(value, str) or not value or len(value) > SOURCE_NAME_MAX or _CONTROL.search(value):
        raise ValueError(f"{value!r} is not a usable source name (expected 1 to {SOURCE_NAME_MAX} characters "
                         "without control characters)")
    return value


PLACEHOLDERS = {"start", "end", "start_epoch", "end_epoch", "start_date", "end_date"}


def render_params(params: dict[str, Any], window: Bounded | None) -> dict[str, Any]:
    """Fill the window into string parameter values; with ``window=None`` only check the placeholders.

    Placeholders: ``{start}``/``{end}`` (ISO-8601, UTC), ``{start_epoch}``/``{end_epoch}`` (epoch seconds),
    ``{start_date}``/``{end_date}`` (YYYY-MM-DD).
    """
    out: dict[str, Any] = {}
    values: dict[str, Any] = {}
    if window is not None:
        values = {
            "start": window.start.isoformat().replace("+00:00", "Z"),
            "end": window.end.isoformat().replace("+00:00", "Z"),
            "start_epoch": int(window.start.timestamp()),
            "end_epoch": int(window.end.timestamp()),
            "start_date": window.start.date().isoformat(),
            "end_date": window.end.date().isoformat(),
        }
    for name, value in params.items():
        if not isinstance(value, str):
            out[name] = value
            continue
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"params.{name}: {value!r} is not a valid template ({exc})") from exc
        unknown = fields - PLACEHOLDERS
        if unknown:
            raise ValueError(f"params.{name}: unknown placeholder(s) {sorted(unknown)} (expected any of "
                             f"{sorted(PLACEHOLDERS)}; write {{{{ and }}}} for literal braces)")
        out[name] = value.format(**values) if window is not None else value
    return out


@runtime_checkable
class Acknowledges(Protocol):
    """Consumes messages that are acknowledged to their broker only after the target committed (queues).

    The load must then run in the process that consumed them (``etl run``; in Airflow, one task): it is
    given this instance, which holds the consumed, unacknowledged messages. ``max_reject_ratio`` does not
    apply: a window refused for its rejects would not be acknowledged, and the broker would deliver the
    same messages again forever; what fails validation is quarantined (or dead-lettered), however much.
    """

    def acknowledge(self, result: Any) -> None: ...
