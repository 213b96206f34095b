"""The ``source:`` block of a file pipeline spec (``type: file``), typed and validated on load.

Files (CSV, JSON Lines, Parquet; optionally gzip or zstd compressed) under a ``location`` (a local
directory or any fsspec URL), chosen by a ``glob`` (a file's window is its modification time) or a
``path_pattern`` with a ``{date:...}`` placeholder (a file's window is the date in its path).
"""

from __future__ import annotations

import codecs
import re
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from driftless.sources.base import check_identifier, check_identifiers, one_or_more
from driftless.window import NULL_CURSOR_HELP, NullCursor

#: columns every file source adds to its records: the file (relative to ``location``), the line (CSV, JSON
#: Lines: the line the record starts on; Parquet: the row number, from 1) and the file's time (the time that
#: places it in a window). Declare them in ``columns`` to load them, or to key rows by file and line.
FILE_COLUMN, LINE_COLUMN, FILE_TIME_COLUMN = "_file", "_line", "_file_time"
SYNTHETIC_COLUMNS = (FILE_COLUMN, LINE_COLUMN, FILE_TIME_COLUMN)

# strptime directives a path date may use, and what each matches
DATE_DIRECTIVES = {"Y": r"\d{4}", "m": r"\d{2}", "d": r"\d{2}", "H": r"\d{2}", "M": r"\d{2}", "S": r"\d{2}",
                   "j": r"\d{3}", "%": "%"}
DATE_PLACEHOLDER = re.compile(r"\{date:([^{}]+)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(_Strict):
    """How CSV files are written. Every value is read as text; driftless converts it by the column's type."""

    delimiter: str = Field(",", min_length=1, max_length=1, description="field separator, e.g. ';' or '\\t'")
    quote_char: str | None = Field('"', description="quoting character; null: fields are never quoted")
    double_quote: bool = Field(True, description="a quote inside a quoted field is written twice")
    escape_char: str | None = Field(None, description="escape character inside fields, e.g. '\\\\'; default none")
    header: bool = Field(True, description="the first line names the columns")
    column_names: list[str] | None = Field(None, description="the columns in file order, for files without "
                                           "a header (header: false)")
    newlines_in_values: bool = Field(False, description="quoted values may span lines (slower to read)")
    null_values: list[str] = Field(default_factory=lambda: [""],
                                   description="unquoted field texts that mean NULL (default: the empty field; a "
                                   "quoted empty field \"\" stays an empty text)")

    @field_validator("quote_char", "escape_char")
    @classmethod
    def _one_char(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError(f"{value!r}: expected one character")
        return value

    @model_validator(mode="after")
    def _names(self) -> CsvOptions:
        if not self.header and not self.column_names:
            raise ValueError("header: false needs column_names (the columns in file order)")
        if self.header and self.column_names:
            raise ValueError("column_names is for files without a header; with header: true the header names them")
        if self.column_names and len(set(self.column_names)) != len(self.column_names):
            raise ValueError(f"column_names: duplicate names in {self.column_names}")
        return self


class FileSourceSpec(_Strict):
    """Files under a directory or URL, chosen per window by modification time or by a date in their path.

    A file belongs to the window holding its time (``glob``: its modification time; ``path_pattern``: the
    date in its path). Once loaded, the file keeps that time in ``etl_files`` in the target, so a re-run of
    the window reloads exactly the same files even after one of them was modified.
    """

    type: Literal["file"]
    location: str = Field(min_length=1, description="a local directory or an fsspec URL: /data/drops, "
                          "file:///data/drops, s3://bucket/drops (its filesystem package must be installed)")
    connection: str = Field("", description="optional connection id whose extra holds the filesystem's storage "
                            "options (credentials for s3://, gcs://); never in the spec itself. Default: none")
    glob: str | None = Field(None, description="files under location, e.g. '*.csv', '**/*.csv.gz'; a file's "
                             "window is its modification time")
    path_pattern: str | None = Field(None, description="files under location with a date in their path, e.g. "
                                     "'orders/{date:%Y-%m-%d}/*.csv'; a file's window is that date (UTC)")
    format: Literal["csv", "jsonl", "parquet"] = Field(description="csv, jsonl (JSON Lines: one object per "
                                                       "line) or parquet")
    compression: Literal["auto", "none", "gzip", "zstd"] = Field(
        "auto", description="auto: by the file name (.gz gzip, .zst/.zstd zstd, else none); read as a stream")
    encoding: str = Field("utf-8", description="text encoding of CSV and JSON Lines files")
    csv: CsvOptions = Field(default_factory=CsvOptions)
    primary_key: list[str] = Field(min_length=1)
    cursor: str = Field(description="column whose value places a record in a window; _file_time (the file's "
                        "time) keeps the target's windows aligned with the files'")
    lag: timedelta = Field(timedelta(0), description="also read files whose time lies this much before the "
                           "window start (late drops of a path-dated file)")
    null_cursor: NullCursor = Field("fail", description="records whose cursor is empty: " + NULL_CURSOR_HELP)

    _pk_list = field_validator("primary_key", mode="before")(one_or_more)

    _pk = field_validator("primary_key")(check_identifiers)

    _ids = field_validator("cursor")(check_identifier)

    @property
    def label(self) -> str:
        """What the source reads, in a few words (the DAG's documentation)."""
        return f"{self.location.rstrip('/')}/{self.glob or self.path_pattern}"

    @field_validator("connection")
    @classmethod
    def _conn(cls, value: str) -> str:
        return check_identifier(value) if value else value

    @field_validator("lag")
    @classmethod
    def _lag(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("lag must not be negative")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (expected e.g. utf-8, latin-1, cp1252)") from None

    @field_validator("path_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None:
            return value
        found = DATE_PLACEHOLDER.findall(value)
        if len(found) != 1:
            raise ValueError(f"{value!r}: expected exactly one {{date:FORMAT}} placeholder, e.g. "
                             "'orders/{date:%Y-%m-%d}/*.csv'")
        for directive in re.findall(r"%(.)", found[0]):
            if directive not in DATE_DIRECTIVES:
                raise ValueError(f"{value!r}: %{directive} is not supported in a path date (use %Y %m %d %H %M "
                                 "%S %j)")
        if "%Y" not in found[0]:
            raise ValueError(f"{value!r}: the path date needs a year (%Y)")
        return value

    @model_validator(mode="after")
    def _selection(self) -> FileSourceSpec:
        if (self.glob is None) == (self.path_pattern is None):
            raise ValueError("give exactly one of 'glob' (windows by modification time) or 'path_pattern' "
                             "(windows by the date in the path)")
        return self

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("format") == "parquet" and value in ("gzip", "zstd"):
            raise ValueError("Parquet files compress inside the file; an outer gzip/zstd layer cannot be read "
                             "as a stream (use compression: auto or none)")
        return value

    @property
    def table(self) -> None:
        """File sources have no table (for code that describes a SQL source by its table)."""
        return None

    @property
    def window_by(self) -> str:
        """``modified`` (glob) or ``path`` (path_pattern)."""
        return "path" if self.path_pattern else "modified"
