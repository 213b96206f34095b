"""The extraction window: the unit of work of every sync."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, bindparam, or_
from sqlalchemy.types import TypeEngine

from driftless.errors import DriftlessError

NullCursor = Literal["fail", "every_window", "skip"]
NULL_CURSOR_HELP = (
    "rows whose cursor is NULL lie in no window. fail (default): a window fails, loading nothing, while the "
    "source holds any (the error gives the count); every_window: they are read by every window and upserted "
    "(the target's cursor column must be nullable); skip: they are left out, and each window's checks count "
    "them (null_cursor_rows, WARN)"
)


def parse_instant(value: str | datetime, what: str = "timestamp") -> datetime:
    """Parse an ISO-8601 string (or take a datetime) as an aware UTC datetime.

    A value without a time zone is taken to be UTC.
    """
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError as exc:
            raise DriftlessError(
                f"{what}: {value!r} is not an ISO-8601 date or timestamp (expected e.g. 2025-01-31 or "
                "2025-01-31T00:00:00Z)"
            ) from exc
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _as_cursor(value: datetime, cursor_type: str | None) -> datetime | date:
    value = value.astimezone(UTC)
    if cursor_type == "timestamp":
        return value.replace(tzinfo=None)
    if cursor_type == "date":
        return value.date()
    return value


@dataclass(frozen=True, order=True)
class Window:
    """A half-open interval of time, ``[start, end)``, in UTC.

    A window selects the source rows whose cursor column is ``>= start`` and ``< end``.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", parse_instant(self.start, "window start"))
        object.__setattr__(self, "end", parse_instant(self.end, "window end"))
        if not self.start < self.end:
            raise DriftlessError(
                f"window start {self.start.isoformat()} must be before window end {self.end.isoformat()}"
            )

    @classmethod
    def parse(cls, start: str | datetime, end: str | datetime) -> Window:
        return cls(parse_instant(start, "--start"), parse_instant(end, "--end"))

    def refuse_future(self, what: str, how: str, now: datetime | None = None) -> None:
        """Raise when the window ends after ``now``: its rows may not exist yet, and the watermark would pass now.

        ``what`` names the input in the message, ``how`` says how to go ahead anyway.
        """
        now = now or datetime.now(UTC)
        if self.end > now:
            raise DriftlessError(
                f"{what}: the window ends at {self.end.isoformat()}, after now ({now.isoformat(timespec='seconds')}): "
                f"rows up to then may not exist yet. Give an end in the past, or {how}")

    def widened(self, lag: timedelta | None) -> Window:
        """The window extended backwards by ``lag`` (to catch late-arriving rows)."""
        return Window(self.start - lag, self.end) if lag else self

    def bounds(self, cursor_type: str | None = None, lag: timedelta | None = None) -> tuple[Any, Any]:
        """``(low, high)`` of the rows the window selects, ``low <= cursor < high``, as the cursor column compares.

        ``lag`` widens the start backwards. ``cursor_type`` (a spec column type) gives the values' type:
        ``timestamp`` (no zone, UTC): naive UTC datetimes; ``date``: dates (a window starting mid-day takes
        that whole day); otherwise (``timestamptz``, None) aware UTC datetimes. Sources, checks and write
        modes all take a window's bounds from here.
        """
        start, end = self.widened(lag).start, self.end
        return _as_cursor(start, cursor_type), _as_cursor(end, cursor_type)

    def condition(self, cursor: Any, cursor_type: str, lag: timedelta | None = None, *,
                  null_cursor: NullCursor = "fail", bind_type: TypeEngine[Any] | None = None,
                  names: tuple[str, str] = ("window_start", "window_end")) -> ColumnElement[bool]:
        """The SQL condition selecting the window's rows by ``cursor`` (a column), bounds bound as parameters.

        Under ``null_cursor: every_window`` rows whose cursor is NULL belong to every window (``OR cursor IS NULL``).
        """
        low, high = self.bounds(cursor_type, lag)
        inside = and_(cursor >= bindparam(names[0], low, type_=bind_type),
                      cursor < bindparam(names[1], high, type_=bind_type))
        return or_(inside, cursor.is_(None)) if null_cursor == "every_window" else inside

    @property
    def key(self) -> str:
        """A filesystem- and log-friendly name of the window."""
        return f"{self.start:%Y%m%dT%H%M%SZ}_{self.end:%Y%m%dT%H%M%SZ}"

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}
