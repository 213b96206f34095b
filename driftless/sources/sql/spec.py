"""The spec model of a SQL source (``source: {type: sql, ...}``); the connector is ``driftless.sources.sql.source``."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from driftless.sources.base import check_identifier, check_identifiers, check_source_name, one_or_more
from driftless.window import NULL_CURSOR_HELP, NullCursor


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SqlSourceSpec(_Strict):
    """A table or query in a SQL database, read incrementally by a cursor column."""

    type: Literal["sql"]
    connection: str = Field(min_length=1, description="connection id: an Airflow Connection or AIRFLOW_CONN_<ID>")
    table: str | None = Field(None, description="source table, optionally schema-qualified (schema.table); any "
                              "name the source holds, quoted by its SQL dialect (a dot always separates the schema)")
    query: str | None = Field(None, description="a SELECT whose result is filtered by the window")
    primary_key: list[str] = Field(min_length=1)
    cursor: str = Field(description="column whose value places a row in a window")
    lag: timedelta = Field(
        timedelta(0), description="re-read this much before the window start, for late-arriving rows"
    )
    null_cursor: NullCursor = Field("fail", description=NULL_CURSOR_HELP)

    _conn = field_validator("connection")(check_identifier)
    _cursor = field_validator("cursor")(check_identifier)

    _pk_list = field_validator("primary_key", mode="before")(one_or_more)

    _pk = field_validator("primary_key")(check_identifiers)

    @property
    def label(self) -> str:
        """What the source reads, in a few words (the DAG's documentation)."""
        return self.table or "a SQL query"

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value is not None:
            for part in value.split("."):
                check_source_name(part)
            if value.count(".") > 1:
                raise ValueError(f"{value!r}: expected table or schema.table")
        return value

    @field_validator("lag")
    @classmethod
    def _lag(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("lag must not be negative")
        return value

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSourceSpec:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        return self
