"""Structured, quiet-by-default logging: ``key=value`` lines, INFO only when asked for."""

from __future__ import annotations

import logging
import sys
from typing import Any


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {} if getattr(record, "fields_in_message", False) else getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname.lower()} {record.name}: " \
               f"{record.getMessage()}{' ' + extra if extra else ''}"


def configure(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("driftless")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False


def render(fields: dict[str, Any]) -> str:
    """``k=v k=v``, as the log lines show fields."""
    return " ".join(f"{k}={v}" for k, v in fields.items())


def event(logger: logging.Logger, message: str, **fields: Any) -> None:
    """Log at INFO with structured fields, also written into the message text.

    Handlers that drop a record's extra attributes (Airflow's task log handler does) still show the
    numbers; the fields stay on the record (``record.fields``) for handlers that read them.
    """
    if fields:
        logger.info("%s %s", message, render(fields), extra={"fields": fields, "fields_in_message": True})
    else:
        logger.info(message)
