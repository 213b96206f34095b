"""Pipeline specs: the YAML files in ``dags/pipelines/``, typed and validated on load.

A spec says where records come from (``source``), where they go (``target``) and what they look
like (``columns``). Connections are referenced by id only; credentials never appear in a spec.
Every error names the file, the field path and what was expected.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.rest.spec import RestSourceSpec
from etl.errors import SpecError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
CRON_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@once"}
TYPE_PATTERN = re.compile(
    r"^(?:(?P<simple>smallint|integer|bigint|text|float|double|boolean|timestamp|timestamptz|date|json)"
    r"|(?P<varchar>varchar|string)(?:\((?P<length>\d+)\))?"
    r"|(?P<numeric>numeric|decimal)\((?P<precision>\d+)\s*,\s*(?P<scale>\d+)\))$"
)
CURSOR_TYPES = {"timestamp", "timestamptz", "date"}


def check_identifier(value: str) -> str:
    """Accept a SQL identifier: a letter or underscore, then letters, digits, underscores (max 63)."""
    if not isinstance(value, str) or not IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a valid identifier (expected a letter or underscore followed by letters, "
            "digits or underscores, at most 63 characters)"
        )
    return value


Identifier = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One column of the records, as the target table will hold it."""

    name: Identifier
    source: str | None = Field(None, description="the column's name in the source, when it differs")
    type: str = Field(description="smallint, integer, bigint, text, varchar(n), numeric(p,s), float, "
                      "double, boolean, timestamp (UTC, no zone), timestamptz, date or json")
    nullable: bool = True

    _name = field_validator("name")(check_identifier)
    _source = field_validator("source")(check_identifier)

    @property
    def source_name(self) -> str:
        return self.source or self.name

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        normalized = value.strip().lower()
        if not TYPE_PATTERN.match(normalized):
            raise ValueError(
                f"unknown column type {value!r} (expected one of smallint, integer, bigint, text, "
                "varchar(n), numeric(p,s), float, double, boolean, timestamp, timestamptz, date, json)"
            )
        return normalized


class SqlSourceSpec(_Strict):
    """A table or query in a SQL database, read incrementally by a cursor column."""

    type: Literal["sql"]
    connection: Identifier = Field(description="connection id: an Airflow Connection or AIRFLOW_CONN_<ID>")
    table: str | None = Field(None, description="source table, optionally schema-qualified (schema.table)")
    query: str | None = Field(None, description="a SELECT whose result is filtered by the window")
    primary_key: list[Identifier] = Field(min_length=1)
    cursor: Identifier = Field(description="column whose value places a row in a window")
    lag: timedelta = Field(
        timedelta(0), description="re-read this much before the window start, for late-arriving rows"
    )

    _conn = field_validator("connection")(check_identifier)
    _cursor = field_validator("cursor")(check_identifier)

    @field_validator("primary_key", mode="before")
    @classmethod
    def _pk_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("primary_key")
    @classmethod
    def _pk(cls, value: list[str]) -> list[str]:
        return [check_identifier(v) for v in value]

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value is not None:
            for part in value.split("."):
                check_identifier(part)
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


class TargetSpec(_Strict):
    """The table in the warehouse that the pipeline keeps in sync."""

    connection: Identifier
    table: Identifier
    db_schema: Identifier | None = Field(None, alias="schema", description="database schema of the table")
    write_mode: Literal["upsert"] = "upsert"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _conn = field_validator("connection")(check_identifier)
    _table = field_validator("table")(check_identifier)
    _schema = field_validator("db_schema")(check_identifier)


class PipelineSpec(_Strict):
    """One pipeline: a source stream synced window by window into one target table."""

    name: Identifier
    description: str = ""
    schedule: str = Field("@daily", description="cron expression or preset; each run's data interval "
                          "is the extraction window")
    start_date: date | datetime = date(2025, 1, 1)
    chunk_size: int = Field(50_000, gt=0, le=5_000_000, description="records per chunk held in memory")
    source: Annotated[SqlSourceSpec | RestSourceSpec, Field(discriminator="type")]
    target: TargetSpec
    columns: list[ColumnSpec] = Field(min_length=1)
    partition_by: Literal["hour", "day", "week"] | None = Field(
        None, description="fan each window out into slices of this length, loaded in parallel by mapped "
        "Airflow tasks; the watermark moves once all slices are in (see etl/partitions.py)")

    _name = field_validator("name")(check_identifier)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if value not in CRON_PRESETS and not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is not a cron expression or preset (expected e.g. '0 2 * * *' or '@daily')"
            )
        return value

    @model_validator(mode="after")
    def _columns_cover_keys(self) -> PipelineSpec:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"columns: duplicate column names {dupes}")
        by_name = {c.name: c for c in self.columns}
        for key in self.source.primary_key:
            if key not in by_name:
                raise ValueError(f"source.primary_key: column {key!r} is not listed in columns")
        cursor = by_name.get(self.source.cursor)
        if cursor is None:
            raise ValueError(f"source.cursor: column {self.source.cursor!r} is not listed in columns")
        if cursor.type not in CURSOR_TYPES:
            raise ValueError(
                f"source.cursor: column {cursor.name!r} has type {cursor.type!r}; a cursor must be one of "
                f"{sorted(CURSOR_TYPES)}"
            )
        return self

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        return next(c for c in self.columns if c.name == name)


def _members(annotation: Any) -> list[type[BaseModel]]:
    args = getattr(annotation, "__args__", ())
    return [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]


def _tag(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    return getattr(field.annotation, "__args__", (None,))[0]


def _resolve(loc: tuple[Any, ...]) -> tuple[list[Any], list[type[BaseModel]]]:
    """Follow an error location through the spec models: the path without union tags, and the model(s) there.

    Discriminated unions (``source: sql | rest``, ``paginator: offset | cursor | ...``) put the tag
    into pydantic's location; it is noise to a user, who wrote ``source.table``, not ``source.sql.table``.
    """
    path: list[Any] = []
    models: list[type[BaseModel]] = [PipelineSpec]
    for part in loc:
        if isinstance(part, int):
            path.append(part)
            continue
        tagged = [m for m in models if _tag(m) == part]
        if tagged and len(models) > 1:
            models = tagged
            continue
        path.append(part)
        model = models[0] if models else None
        field = None
        if model is not None:
            field = model.model_fields.get(part) or next(
                (f for f in model.model_fields.values() if f.alias == part), None)
        models = _members(field.annotation) if field is not None else []
    return path, models


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in _resolve(loc)[0]:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names accepted at the mapping that holds ``loc``'s last element."""
    models = _resolve(loc[:-1])[1]
    if not models:
        return []
    return sorted(f.alias or name for name, f in models[0].model_fields.items())


def format_validation_error(source: str, exc: ValidationError) -> str:
    """Turn a pydantic error into lines of ``file: field.path: what was expected (got ...)``."""
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(err["loc"])
            msg = "unknown field" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            expected = ", ".join(repr(_tag(m)) for m in _resolve(err["loc"])[1])
            msg = (f"unknown type {err['ctx'].get('tag')!r}" if err["type"] == "union_tag_invalid"
                   else "Field required") + f" (expected one of: {expected})"
            err = {**err, "loc": (*err["loc"], "type")}
        got = err.get("input")
        shown = "" if err["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        path = _field_path(err["loc"])
        # Cross-field checks raise from the model with the field path as the message's prefix.
        prefixed = re.match(r"^([\w.\[\]]+): (.*)$", msg, re.S)
        if prefixed and prefixed[1].split(".")[0] in PipelineSpec.model_fields:
            path = f"{path}.{prefixed[1]}" if err["loc"] else prefixed[1]
            msg = prefixed[2]
        lines.append(f"{source}: {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> PipelineSpec:
    """Validate an already-parsed YAML document; ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of pipeline fields at the top level, "
                        f"got {type(data).__name__}")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(source, exc)) from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate one spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror})") from None
    try:
        # libyaml's C loader when available: ~10x faster than the pure-Python one (DAG parse time).
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    spec = parse_spec(data, str(path))
    if path.stem != spec.name:
        raise SpecError(f"{path}: name: {spec.name!r} must match the file name {path.stem!r}")
    return spec


def spec_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise SpecError(f"{directory}: not a directory of pipeline specs")
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


def load_specs(directory: str | Path) -> list[PipelineSpec]:
    """Load every spec of a directory; all errors of all files are reported together."""
    specs, errors = [], []
    for path in spec_files(directory):
        try:
            specs.append(load_spec(path))
        except SpecError as exc:
            errors.append(str(exc))
    names = [s.name for s in specs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"{directory}: pipeline name {name!r} is used by more than one spec")
    if errors:
        raise SpecError("\n".join(errors))
    return specs


def default_specs_dir() -> Path:
    """``$DRIFTLESS_SPECS_DIR``, else ``dags/pipelines`` of the working directory or of this checkout."""
    import os

    env = os.environ.get("DRIFTLESS_SPECS_DIR")
    if env:
        return Path(env)
    local = Path.cwd() / "dags" / "pipelines"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "dags" / "pipelines"


def find_spec(name_or_path: str, specs_dir: str | Path | None = None) -> PipelineSpec:
    """A spec by pipeline name (looked up in the specs directory) or by file path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        return load_spec(candidate)
    directory = Path(specs_dir) if specs_dir else default_specs_dir()
    for path in spec_files(directory):
        if path.stem == name_or_path:
            return load_spec(path)
    known = ", ".join(p.stem for p in spec_files(directory)) or "none"
    raise SpecError(f"no pipeline named {name_or_path!r} in {directory} (known: {known})")
