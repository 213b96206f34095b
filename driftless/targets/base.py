"""What every database module in ``driftless.targets`` declares: its capabilities record.

The rest of driftless asks a database's ``Capabilities`` (through ``driftless.targets.capabilities``)
instead of comparing dialect names; a fact that differs between databases is a field here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL

from driftless.errors import connect_timeout_s


@dataclass(frozen=True)
class Capabilities:
    """What one database can do and how it looks from outside, as far as driftless needs to know.

    Attributes:
        name: the database family, for messages (``postgresql``, ``mysql``, ``sqlite``).
        backends: SQLAlchemy backend names it serves (``URL.get_backend_name()``).
        schemes: Airflow connection types and URI schemes meaning this database.
        driver: the SQLAlchemy driver driftless uses for it (``postgresql+psycopg``).
        file_database: a file opened in this process (no server, host, port or connect timeout).
        streams_copy: the SQL source can read a window as text through ``COPY ... TO STDOUT``.
        lineage_scheme: the OpenLineage namespace scheme of its datasets.
        default_port: the server's port when a URL names none.
        default_schema: the schema a table is in when a URL or spec names none (None: the database itself).
        bare_float_is_double: a reflected ``FLOAT`` without a precision is double precision.
        zoned_timestamps: timestamp columns keep whether they hold a time zone (``timestamptz``).
        json_as_longtext: JSON columns are stored (and reflected) as ``LONGTEXT``.
        text_keys_only_varchar: a text primary key needs a length (``varchar(n)``, not ``text``).
        exact_digits: significant digits a ``numeric`` keeps exactly (None: as declared).
        schemas: tables live in schemas (SQLite: one namespace per file).
        timestamps_as_text: timestamps are stored as text whose layout varies by writer (SQLite).
    """

    name: str
    backends: tuple[str, ...]
    schemes: tuple[str, ...]
    driver: str
    file_database: bool = False
    streams_copy: bool = False
    lineage_scheme: str = ""
    default_port: int | None = None
    default_schema: str | None = None
    bare_float_is_double: bool = False
    zoned_timestamps: bool = False
    json_as_longtext: bool = False
    text_keys_only_varchar: bool = False
    exact_digits: int | None = None
    schemas: bool = True
    timestamps_as_text: bool = False


def network_connect_args(url: URL) -> dict[str, Any]:
    """Driver arguments of a database server: the connect timeout, unless the URL sets its own.

    ``$DRIFTLESS_CONNECT_TIMEOUT_S`` seconds (default ``driftless.errors.DEFAULT_CONNECT_TIMEOUT_S``); without
    it a host that drops packets hangs a run for the operating system's TCP timeout (minutes).
    """
    if "connect_timeout" in url.query:
        return {}
    return {"connect_timeout": connect_timeout_s()}
