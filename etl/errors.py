"""The one exception hierarchy of driftless; every message is meant to be read by a user."""


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


def error_detail(exc: BaseException) -> str:
    """The first line of an error's cause, for messages.

    A database driver's own words (SQLAlchemy keeps them in ``orig``: the server's message), else the
    error's message, else its type name. The one helper for this; the error itself is chained
    (``raise ... from exc``), so logs keep the rest.
    """
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__
