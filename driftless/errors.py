"""The one exception hierarchy of driftless; every message is meant to be read by a user."""

from __future__ import annotations

from typing import TYPE_CHECKING

from driftless.settings import settings

if TYPE_CHECKING:
    from sqlalchemy import URL


class DriftlessError(Exception):
    """Base class: an error a user can act on. The CLI prints its message, not a traceback."""


class SpecError(DriftlessError):
    """A pipeline spec is malformed: the message names the file, the field path and what was expected."""


class ConnectionNotFound(DriftlessError):
    """A connection id in a spec resolves to nothing (no Airflow Connection, no AIRFLOW_CONN_<ID>)."""


class SourceError(DriftlessError):
    """Reading from a source failed."""


class ValidationFailed(DriftlessError):
    """Records failed validation beyond what the pipeline accepts."""


class LoadError(DriftlessError):
    """Writing into the target failed; the target transaction was rolled back."""


class ReconciliationFailed(DriftlessError):
    """Source and target disagree beyond the configured thresholds."""


#: The connect timeout every engine of a database server gets (``driftless.targets.connect_args``) unless
#: ``$DRIFTLESS_CONNECT_TIMEOUT_S`` or the connection's own ``connect_timeout`` says otherwise. It lives here,
#: not in ``driftless.targets``, because the messages below name it (and every module imports this one).
DEFAULT_CONNECT_TIMEOUT_S = 10
CONNECT_TIMEOUT_ENV = "DRIFTLESS_CONNECT_TIMEOUT_S"


def connect_timeout_s(url: URL | None = None) -> int | None:
    """The connect timeout in seconds that applies to a database server at ``url``.

    The connection's own ``connect_timeout`` when it sets one, else ``$DRIFTLESS_CONNECT_TIMEOUT_S``,
    else ``DEFAULT_CONNECT_TIMEOUT_S``. (A SQLite file has none: ``driftless.targets.connect_args``.)
    """
    if url is not None:
        own = url.query.get("connect_timeout")
        if own is not None:
            try:
                return int(float(own if isinstance(own, str) else own[0]))
            except ValueError:
                return None  # the driver reports it
    raw = settings().connect_timeout_s or ""
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise DriftlessError(f"{CONNECT_TIMEOUT_ENV} must be a whole number of seconds above 0, not {raw!r}")
    return value


CONNECTION_LOST = "the connection to the database was lost"

# PyMySQL codes meaning the session is gone: server shutdown, connection killed (MariaDB), server gone
# away, lost during a query, lost in a read, disconnected for inactivity (MySQL 8).
_MYSQL_LOST = {1053, 1927, 2006, 2013, 2055, 4031}
# What drivers say when the session ended under them (PostgreSQL's terminate, a server restart, a network cut).
_LOST_WORDS = ("server closed the connection", "connection is lost", "connection is closed",
               "terminating connection", "lost connection", "gone away", "connection was killed",
               "consuming input failed", "connection already closed", "connection reset by peer", "broken pipe")


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception behind a SQLAlchemy one (``DBAPIError.orig``), else ``exc``."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def connection_lost(exc: BaseException) -> bool:
    """Whether a database error means the session ended under the client (killed, server gone, network cut)."""
    if getattr(exc, "connection_invalidated", False):  # SQLAlchemy recognised a disconnect
        return True
    orig = _driver_error(exc)
    module, name = type(orig).__module__, type(orig).__name__
    if module.startswith("pymysql") and orig.args:
        code = orig.args[0]
        # InterfaceError(0, ''): PyMySQL's word for "this connection is already closed".
        if code in _MYSQL_LOST or (name == "InterfaceError" and code == 0):
            return True
    if module.startswith("psycopg"):
        state = getattr(orig, "sqlstate", None) or ""
        if state.startswith("08") or state in ("57P01", "57P02"):  # connection exception; admin/crash shutdown
            return True
    text = str(orig).lower()
    return any(words in text for words in _LOST_WORDS)


def _server_reason(orig: BaseException) -> str:
    """Why the server ended the session, when it said so (PostgreSQL's terminate, MariaDB's kill or shutdown)."""
    if type(orig).__module__.startswith("psycopg") and getattr(orig, "sqlstate", None):
        return (str(orig).strip().splitlines() or [""])[0][:200]
    if type(orig).__module__.startswith("pymysql") and len(orig.args) > 1 and orig.args[0] in (1053, 1927, 4031):
        return str(orig.args[1])[:200]
    return ""


def _connect_timed_out(orig: BaseException) -> bool:
    name, text = type(orig).__name__, str(orig).lower()
    if name == "ConnectionTimeout" or "connection timeout expired" in text:  # psycopg / libpq
        return True
    return bool(orig.args) and orig.args[0] == 2003 and "timed out" in text  # PyMySQL: can't connect (timed out)


def driver_error_summary(exc: BaseException, url: URL | None = None, limit: int = 300) -> str:
    """One readable line for an error's cause, for a user's message: the one helper for this (``error_detail``).

    Database errors, raw driver or wrapped by SQLAlchemy, and any other error alike (its message's first
    line, else its type name); the error itself is chained (``raise ... from exc``), so logs keep the rest.

    The server's own first line where it has one (PyMySQL's ``(code, message)`` becomes the message);
    a session that ended under the client says so (``CONNECTION_LOST``), as does a server that did not
    answer within the connect timeout (``url``'s, when given). The caller names the database (redacted
    URL) and the step.
    """
    orig = _driver_error(exc)
    if connection_lost(exc):
        return f"{CONNECTION_LOST} ({reason})" if (reason := _server_reason(orig)) else CONNECTION_LOST
    if _connect_timed_out(orig):
        seconds = connect_timeout_s(url) if url is not None else connect_timeout_s()
        return (f"no answer within the connect timeout of {seconds} s (host down, or a firewall dropping packets; "
                f"set DRIFTLESS_CONNECT_TIMEOUT_S or the connection's connect_timeout to wait longer)")
    if type(orig).__module__.startswith("pymysql") and len(orig.args) > 1 and isinstance(orig.args[1], str):
        text = f"{orig.args[1]} (MySQL error {orig.args[0]})"
    else:
        text = str(orig).strip()
    first = text.splitlines()[0].strip() if text else ""
    return (first or type(orig).__name__)[:limit]


#: The one helper for an error's first line in a message (arch's name; the ops sites call it ``driver_error_summary``).
error_detail = driver_error_summary
