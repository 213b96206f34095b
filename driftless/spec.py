"""Pipeline specs: the YAML files of the specs directory (``default_specs_dir``), typed and validated on load.

A spec says where records come from (``source``), where they go (``target``) and what they look
like (``columns``). Connections are referenced by id only; credentials never appear in a spec.
Every error names the file, the field path and what was expected.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from driftless.errors import SpecError
from driftless.settings import settings
from driftless.sources.base import check_identifier, check_source_name, one_or_more
from driftless.sources.files.spec import FileSourceSpec
from driftless.sources.queues.spec import QueueSourceSpec
from driftless.sources.rest.spec import RestSourceSpec
from driftless.sources.sql.spec import SqlSourceSpec

CRON_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@once"}
TYPE_PATTERN = re.compile(
    r"^(?:(?P<simple>smallint|integer|bigint|text|float|double|boolean|timestamp|timestamptz|date|json)"
    r"|(?P<varchar>varchar|string)(?:\((?P<length>\d+)\))?"
    r"|(?P<numeric>numeric|decimal)\((?P<precision>\d+)\s*,\s*(?P<scale>\d+)\))$"
)
CURSOR_TYPES = {"timestamp", "timestamptz", "date"}
NUMERIC_TYPES = {"smallint", "integer", "bigint", "numeric", "decimal", "float", "double"}
EPOCH_FORMATS = {"epoch_s", "epoch_ms"}


Identifier = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnChecks(_Strict):
    """Checks on a column's values (after transforms and type conversion); nulls are not checked here.

    ``min``/``max`` are inclusive bounds (numbers, or ISO dates/timestamps for date and timestamp
    columns); ``allowed`` lists the accepted values; ``regex`` must match the whole text;
    ``min_length``/``max_length`` bound the length of text (``varchar(n)`` already implies ``max_length: n``).
    """

    min: float | int | str | date | datetime | None = None
    max: float | int | str | date | datetime | None = None
    allowed: list[Any] | None = Field(None, min_length=1)
    regex: str | None = None
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=0)

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value


class ColumnSpec(_Strict):
    """One column of the records, as the target table will hold it."""

    name: Identifier
    source: str | None = Field(None, description="the column's name in the source, when it differs; any name the "
                               "source holds (quoted by its SQL dialect); for REST records a key as written, else a "
                               "path into nested objects such as metadata.store_id or items[0].sku")
    type: str = Field(description="smallint, integer, bigint, text, varchar(n), numeric(p,s), float, "
                      "double, boolean, timestamp (UTC, no zone), timestamptz, date or json")
    nullable: bool = True
    unique: bool = Field(False, description="values must be unique within a chunk (keys are deduplicated instead)")
    checks: ColumnChecks | None = Field(None, description="value checks; a row failing one is quarantined")
    format: str | None = Field(
        None, description="date, timestamp and timestamptz columns: how text values are written, as a strptime "
        "layout ('%d/%m/%Y', '%d.%m.%Y %H:%M:%S'), or 'epoch_s' / 'epoch_ms' for numbers of seconds / "
        "milliseconds since 1970-01-01 UTC. Without it, text must be ISO 8601 and numbers are refused")
    decimal_separator: Literal[".", ","] = Field(
        ".", description="numeric columns: the decimal mark of text values ('1234,50' needs ',')")
    thousands_separator: Literal[",", ".", " ", "'", "_"] | None = Field(
        None, description="numeric columns: the digit-group mark of text values ('1,234.50' needs ','); without "
        "it a grouped number is refused. Groups must be of three digits")

    _name = field_validator("name")(check_identifier)
    _source = field_validator("source")(lambda v: v if v is None else check_source_name(v))

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

    @field_validator("format")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        if value is None or value in EPOCH_FORMATS:
            return value
        if "%" not in value:
            raise ValueError(f"{value!r} is not a strptime layout (expected e.g. '%d/%m/%Y') or one of "
                             f"{sorted(EPOCH_FORMATS)}")
        sample = datetime(2001, 2, 3, 4, 5, 6, 7000)
        try:
            datetime.strptime(sample.strftime(value), value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a usable strptime layout ({exc})") from exc
        return value

    @model_validator(mode="after")
    def _parsing_fits_type(self) -> ColumnSpec:
        kind = self.type.split("(")[0]
        if self.format is not None and kind not in CURSOR_TYPES:
            raise ValueError(f"format: only date, timestamp and timestamptz columns take a format "
                             f"(column {self.name!r} is {self.type!r})")
        separators = self.decimal_separator != "." or self.thousands_separator is not None
        if separators and kind not in NUMERIC_TYPES:
            raise ValueError(f"decimal_separator/thousands_separator: only numeric columns take them "
                             f"(column {self.name!r} is {self.type!r})")
        if self.thousands_separator == self.decimal_separator:
            raise ValueError(f"thousands_separator and decimal_separator must differ (both "
                             f"{self.decimal_separator!r})")
        return self


class TargetSpec(_Strict):
    """The table in the warehouse that the pipeline keeps in sync."""

    connection: Identifier
    table: Identifier
    db_schema: Identifier | None = Field(None, alias="schema", description="database schema of the table")
    write_mode: Literal["upsert", "append", "replace"] = Field(
        "upsert", description="upsert: insert or update by key; append: insert new keys only (a re-run adds "
        "nothing); replace: the window's rows become the table, swapped in atomically (see driftless/load/modes.py)")
    deletes: Literal["none", "soft", "hard"] = Field(
        "none", description="upsert only: target rows whose cursor lies in the window but whose key the window "
        "did not deliver are marked (_deleted_at, soft) or removed (hard); meant for full-refresh windows")
    delete_flag: Identifier | None = Field(
        None, description="a boolean column of the records that marks rows deleted at the source: set "
        "_deleted_at from the row's cursor (or delete the row when deletes is hard)")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _conn = field_validator("connection")(check_identifier)
    _table = field_validator("table")(check_identifier)
    _schema = field_validator("db_schema")(check_identifier)
    _flag = field_validator("delete_flag")(lambda v: v if v is None else check_identifier(v))

    @model_validator(mode="after")
    def _deletes_need_upsert(self) -> TargetSpec:
        if self.deletes != "none" and self.write_mode != "upsert":
            raise ValueError(f"deletes: {self.deletes!r} needs write_mode 'upsert' (got {self.write_mode!r}; "
                             "replace already removes rows absent from the window)")
        return self


FUNCTION_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def check_reference(value: str | None) -> str | None:
    """Accept ``module.path:attribute`` (a function or class importable from the Python path)."""
    if value is not None and not FUNCTION_REF.match(value):
        raise ValueError(f"{value!r} is not a reference of the form 'package.module:name'")
    return value


class DeriveSpec(_Strict):
    """A column computed from others: ``expr`` is an expression over the chunk's columns.

    Allowed: column names, constants, ``+ - * / // % **``, comparisons, ``and``/``or``/``not`` and the
    functions ``upper``, ``lower``, ``strip``, ``length``, ``coalesce``, ``concat``, ``abs``
    (``driftless.extract.transform.DeriveExpression``; not pandas' ``DataFrame.eval``, not Python's ``eval``).
    Decimals stay exact. A row whose expression fails is quarantined with the reason.
    """

    name: Identifier
    expr: str = Field(min_length=1, description="e.g. 'quantity * unit_price' or \"upper(coalesce(city, '?'))\"")

    _name = field_validator("name")(check_identifier)


class TransformSpec(_Strict):
    """Per-chunk transforms, applied in this order: rename, cast, derive, function, drop.

    * ``rename``: ``{field_in_records: column}``, for sources whose field names differ from column names.
    * ``cast``: ``{column: type}``: convert before deriving (values that do not convert are left as they
      are, and validation quarantines the row with the reason).
    * ``derive``: columns computed from others; a derived column is listed in ``columns`` and not read from
      the source.
    * ``function``: ``package.module:function`` taking and returning a DataFrame with the same rows (index).
    * ``drop``: fields removed from the records (fields not listed in ``columns`` are never loaded anyway).
    """

    rename: dict[str, Identifier] = Field(default_factory=dict)
    cast: dict[Identifier, str] = Field(default_factory=dict)
    derive: list[DeriveSpec] = Field(default_factory=list)
    function: str | None = None
    drop: list[str] = Field(default_factory=list)

    _function = field_validator("function")(check_reference)

    @field_validator("cast")
    @classmethod
    def _cast(cls, value: dict[str, str]) -> dict[str, str]:
        return {check_identifier(k): ColumnSpec._type(v) for k, v in value.items()}


class DedupSpec(_Strict):
    """How rows with one primary key within a window are reduced to one.

    Rows are ordered by ``order_by`` (default: the cursor), ties by arrival; ``keep: last`` keeps the
    latest row, ``keep: first`` the earliest. The number of rows dropped is reported per window.
    """

    order_by: list[Identifier] = Field(default_factory=list)
    keep: Literal["last", "first"] = "last"

    @field_validator("order_by", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ReconcileSpec(_Strict):
    """Checks run after each window's load, and how a repair treats rows the source no longer has."""

    sum_columns: list[Identifier] = Field(
        default_factory=list, description="numeric columns whose sums over the window must agree in source and target")
    warn_ratio: float = Field(0.0, ge=0, description="relative difference |source - target| / max(|source|, 1) "
                              "above which a sum check is WARN")
    fail_ratio: float = Field(0.0, ge=0, description="relative difference above which a sum check is FAIL "
                              "(the window's task fails)")
    propagate_deletes: bool = Field(False, description="rows deleted in the source are deleted from the target "
                                    "by a repair (otherwise extras are only reported)")
    row_digest: bool = Field(False, description="keep a stored row digest column in the target (PostgreSQL, "
                             "MariaDB/MySQL): deep diffs then read one integer per row instead of hashing every "
                             "row; costs one MD5 per written row (see driftless.reconcile.digest)")

    @field_validator("sum_columns")
    @classmethod
    def _sum_columns(cls, value: list[str]) -> list[str]:
        return [check_identifier(v) for v in value]

    @model_validator(mode="after")
    def _ratios(self) -> ReconcileSpec:
        if self.fail_ratio < self.warn_ratio:
            raise ValueError(f"fail_ratio ({self.fail_ratio}) must not be below warn_ratio ({self.warn_ratio})")
        return self


#: what a ``trigger.on`` can watch, and why some brokers are not offered (the README section "Event-driven runs")
TRIGGER_KINDS = {
    "redis": "a Redis pub/sub channel, through the redis and common-messaging providers",
    "file": "new files of the pipeline's own file source (driftless's FileArrivalTrigger; it deletes nothing)",
}
UNSUPPORTED_TRIGGERS = {
    "rabbitmq": "no Airflow provider offers a RabbitMQ/AMQP MessageQueueTrigger",
    "amqp": "no Airflow provider offers a RabbitMQ/AMQP MessageQueueTrigger",
}


class TriggerSpec(_Strict):
    """Run the pipeline when data arrives, instead of (or besides) on its schedule.

    The DAG is scheduled on an Airflow Asset watched by an ``AssetWatcher``; the triggerer runs the
    watcher, and each event starts a run (events arriving while a run is queued or running start one
    more run after it, not one each).

    * ``on: redis``: a ``MessageQueueTrigger`` (provider apache-airflow-providers-common-messaging) on
      Redis pub/sub ``channels``; a message's content is not read, it only says "there is new data".
    * ``on: file`` (file sources only): the source's own ``location`` and ``glob``/``path_pattern`` are
      listed every ``poll_interval`` seconds; a file modified after the newest one seen before starts
      a run. Nothing is deleted or moved.

    A run started this way syncs the window from the pipeline's watermark (the end of the latest window
    it loaded; the spec's start_date the first time) to the moment Airflow queued the run. With an
    explicit ``schedule`` the pipeline also runs on that schedule (a safety net for a missed event);
    without one it runs only on events.
    """

    on: str = Field(description="what to watch: 'redis' (a Redis pub/sub channel) or 'file' (the file source's "
                    "new files)")
    connection: Identifier = Field("redis_default", description="on: redis: the Airflow Connection of the Redis "
                                   "server, e.g. AIRFLOW_CONN_REDIS_DEFAULT=redis://host:6379 (a database other "
                                   "than 0: ?db=N); it must be defined for the triggerer too")
    channels: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="on: redis: the pub/sub channel(s) to subscribe to; one name or a list "
        "(PUBLISH to one of them after writing the data)")
    poll_interval: float = Field(5.0, gt=0, le=3600, description="seconds between two looks of the watcher (at "
                                 "its subscription, or at the file listing): the most an event waits before its "
                                 "run is queued (messages are buffered meanwhile, not lost)")

    _conn = field_validator("connection")(check_identifier)
    _channels = field_validator("channels", mode="before")(one_or_more)

    @field_validator("on")
    @classmethod
    def _on(cls, value: str) -> str:
        kind = str(value).strip().lower()
        if kind in TRIGGER_KINDS:
            return kind
        why = UNSUPPORTED_TRIGGERS.get(kind)
        expected = ", ".join(f"{k!r} ({v})" for k, v in TRIGGER_KINDS.items())
        raise ValueError(f"{value!r} cannot be watched{f' ({why})' if why else ''}; expected one of: {expected}")

    def check_fields(self) -> None:
        """The fields that ``on`` needs or refuses (called by ``PipelineSpec``, whose errors name the path)."""
        if self.on == "redis" and not self.channels:
            raise ValueError("trigger.channels: on: redis needs the channel(s) to subscribe to")
        if self.on == "file":
            extra = sorted(f for f in ("channels", "connection") if f in self.model_fields_set)
            if extra:
                raise ValueError(f"trigger.{extra[0]}: on: file watches the source's own location; remove "
                                 f"{', '.join(extra)}")

    @property
    def watches(self) -> str:
        """What the watcher watches, in a few words (the report's catalog; the DAG page words it in full)."""
        return f"redis {', '.join(self.channels or [])}" if self.on == "redis" else "new files"


class PipelineSpec(_Strict):
    """One pipeline: a source stream synced window by window into one target table."""

    name: Identifier
    description: str = ""
    schedule: str = Field("@daily", description="cron expression or preset; each run's data interval "
                          "is the extraction window")
    start_date: date | datetime = date(2025, 1, 1)
    chunk_size: int = Field(50_000, gt=0, le=5_000_000, description="records per chunk held in memory")
    source: Annotated[SqlSourceSpec | RestSourceSpec | FileSourceSpec | QueueSourceSpec, Field(discriminator="type")]
    target: TargetSpec
    columns: list[ColumnSpec] = Field(min_length=1)
    transforms: TransformSpec = Field(default_factory=TransformSpec)
    schema_model: str | None = Field(None, description="a pandera DataFrameModel, 'package.module:Class', "
                                     "validated in addition to the column checks")
    max_reject_ratio: float = Field(0.01, ge=0, le=1, description="fail the window (load nothing) when "
                                    "more than this share of its records fails validation (default 0.01; 1 "
                                    "accepts any share; a window whose records are all rejected always fails)")
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    reconcile: ReconcileSpec = Field(default_factory=ReconcileSpec)
    trigger: TriggerSpec | None = Field(
        None, description="run when a message arrives on a Redis pub/sub channel (see TriggerSpec); the schedule "
        "stays only when it is given explicitly")
    partition_by: Literal["hour", "day", "week"] | None = Field(
        None, description="fan each window out into slices of this length, loaded in parallel by mapped "
        "Airflow tasks; the watermark moves once all slices are in (see driftless/airflow/partitions.py)")

    _name = field_validator("name")(check_identifier)
    _model = field_validator("schema_model")(check_reference)

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
        if self.source.null_cursor == "every_window" and not cursor.nullable:
            raise ValueError(f"source.null_cursor: 'every_window' loads rows whose cursor is NULL, but the cursor "
                             f"column {cursor.name!r} is declared nullable: false; make it nullable or choose "
                             "'fail' or 'skip'")
        for i, derived in enumerate(self.transforms.derive):
            if derived.name not in by_name:
                raise ValueError(f"transforms.derive[{i}].name: column {derived.name!r} is not listed in columns")
        derived_names = {d.name for d in self.transforms.derive}
        for name in self.transforms.cast:
            if name not in by_name:
                raise ValueError(f"transforms.cast.{name}: column {name!r} is not listed in columns "
                                 f"(expected one of: {', '.join(by_name)})")
            if name in derived_names:
                raise ValueError(f"transforms.cast.{name}: column {name!r} is derived, and casts run before "
                                 "derive; convert in the expression instead")
        for name in self.transforms.drop:
            if name in by_name:
                raise ValueError(f"transforms.drop: {name!r} is a column of the target; remove it from columns "
                                 "instead")
        for name in self.dedup.order_by:
            if name not in by_name:
                raise ValueError(f"dedup.order_by: column {name!r} is not listed in columns")
        if self.trigger is not None:  # checked here, so that the errors name trigger.<field>
            self.trigger.check_fields()
        if self.trigger is not None and self.trigger.on == "file" and self.source.type != "file":
            raise ValueError(f"trigger.on: 'file' watches a file source's location; this source is "
                             f"{self.source.type!r} (use on: redis and publish a notification instead)")
        if self.source.type == "queue" and self.partition_by:
            raise ValueError("partition_by: a queue source is drained by one process (it acknowledges what it "
                             "consumed after the load); remove the option")
        if self.source.type == "queue" and self.reconcile.sum_columns:
            raise ValueError("reconcile.sum_columns: a queue source's records do not lie in the window by their "
                             "cursor, so the target cannot be summed over it; remove the option")
        for name in self.reconcile.sum_columns:
            col = by_name.get(name)
            if col is None:
                raise ValueError(f"reconcile.sum_columns: column {name!r} is not listed in columns")
            if col.type.split("(")[0] not in NUMERIC_TYPES:
                raise ValueError(f"reconcile.sum_columns: column {name!r} has type {col.type!r}; "
                                 f"only numeric columns can be summed ({sorted(NUMERIC_TYPES)})")
        if self.reconcile.propagate_deletes and not self.source.table:
            raise ValueError("reconcile.propagate_deletes: has no effect here: deletes are propagated only by "
                             "`etl reconcile --repair`, which needs a SQL source table (this source is "
                             f"{'a query' if self.source.type == 'sql' else self.source.type!r}); remove the option")
        flag = self.target.delete_flag
        if flag is not None and (flag not in by_name or by_name[flag].type != "boolean"):
            raise ValueError(f"target.delete_flag: {flag!r} must name a boolean column listed in columns")
        return self

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def source_columns(self) -> list[ColumnSpec]:
        """The columns read from the source: all but those that ``transforms.derive`` computes."""
        derived = {d.name for d in self.transforms.derive}
        return [c for c in self.columns if c.name not in derived]

    def column(self, name: str) -> ColumnSpec:
        return next(c for c in self.columns if c.name == name)

    @property
    def runs_on_schedule(self) -> bool:
        """Whether Airflow runs the pipeline on ``schedule``.

        Always without a trigger; with one, only when the spec gives ``schedule`` explicitly (the default
        ``@daily`` does not count).
        """
        return self.trigger is None or "schedule" in self.model_fields_set

    @property
    def schedule_text(self) -> str:
        """When the pipeline runs, in a few words: ``@daily``, ``on redis orders.arrived``, or both."""
        if self.trigger is None:
            return self.schedule
        events = f"on {self.trigger.watches}"
        return f"{self.schedule} or {events}" if self.runs_on_schedule else events


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


def yaml_line_finder(text: str) -> Callable[[str], int | None]:
    """For a spec's YAML text: the line (1-based) of a field path such as ``columns[2].type``.

    The line of the deepest part of the path the document holds (a missing field: the mapping that lacks it).
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None

    def line_of(path: str) -> int | None:
        node, line = root, None
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
            if isinstance(node, yaml.SequenceNode) and part.startswith("["):
                index = int(part[1:-1])
                if index >= len(node.value):
                    break
                node = node.value[index]
                line = node.start_mark.line + 1
            elif isinstance(node, yaml.MappingNode):
                found = next(((k, v) for k, v in node.value if k.value == part), None)
                if found is None:
                    break
                line = found[0].start_mark.line + 1
                node = found[1]
            else:
                break
        return line

    return line_of


def format_validation_error(source: str, exc: ValidationError,
                            line_of: Callable[[str], int | None] | None = None) -> str:
    """Turn a pydantic error into lines of ``file[:line]: field.path: what was expected (got ...)``.

    ``line_of`` (``yaml_line_finder``) adds the YAML line of each field; an unknown field gets a "did you
    mean" when a known one is spelt alike.
    """
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(err["loc"])
            msg = "unknown field" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
            close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {close[0]!r}?"
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
        line = line_of(path) if line_of is not None else None
        lines.append(f"{source}{f':{line}' if line else ''}: {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>", text: str | None = None) -> PipelineSpec:
    """Validate an already-parsed YAML document; ``source`` names it in errors (with line numbers from ``text``)."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of pipeline fields at the top level, "
                        f"got {type(data).__name__}")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(source, exc, yaml_line_finder(text) if text else None)) from exc


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate one spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror})") from exc
    try:
        # libyaml's C loader when available: ~10x faster than the pure-Python one (DAG parse time).
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from exc
    spec = parse_spec(data, str(path), text)
    if path.stem != spec.name:
        line = yaml_line_finder(text)("name")
        raise SpecError(f"{path}{f':{line}' if line else ''}: name: {spec.name!r} must match the file name "
                        f"{path.stem!r}")
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


def default_specs_dir(dags_folder: str | Path | None = None) -> Path:
    """Where the pipeline specs are, one rule for the DAGs, the report DAG and every command.

    1. ``$DRIFTLESS_SPECS_DIR`` when set: the one setting of an installed deployment (give it to
       Airflow's processes and to the shell that runs ``driftless`` alike);
    2. else ``pipelines/`` in the DAGs folder: ``dags_folder`` when given (the DAG file's folder, under
       Airflow), else ``$AIRFLOW__CORE__DAGS_FOLDER``, else ``dags`` of the working directory (a checkout).

    A relative path is taken from the working directory and returned absolute, so a task on a worker
    gets the same files as the parse that named them.
    """
    env = (settings().specs_dir or "").strip()
    if env:
        return Path(env).expanduser().absolute()
    folder = dags_folder or (os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or "").strip() or Path("dags")
    return (Path(folder).expanduser() / "pipelines").absolute()


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
