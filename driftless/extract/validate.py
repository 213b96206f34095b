"""Validation of each chunk with pandera: split it into rows to load and rows to quarantine, with reasons.

The spec's columns compile to a pandera ``DataFrameSchema`` (nullability, ``unique``, and the
``checks``: range, allowed values, regex, length; ``varchar(n)`` implies a maximum length). A team that
prefers code names a pandera ``DataFrameModel`` as ``schema_model: package.module:Class``; it runs on the
converted chunk in addition to the column checks.

Per chunk: transforms (``driftless.extract.transform``) -> conversion to the spec's types -> lazy pandera validation.
A row is rejected for every value that does not convert, every failed check and every failed transform;
``SchemaErrors.failure_cases`` names the row (its index), the column and the check. A DataFrame-wide check
(``@pa.dataframe_check``) is one row-level reason (column null, the check's name), whatever columns pandera
lists for it, so the row keeps its key. A failure that names no row (a column missing, a wrong dtype
under a DataFrameModel) rejects every row of the chunk.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as arrow

from driftless.errors import SourceError, SpecError
from driftless.extract.transform import (
    RowFailure,
    Transformed,
    convert_column,
    convert_for,
    frame_to_arrow,
    load_reference,
    nan_is_value,
    to_json_value,
    transform_chunk,
)
from driftless.schema import arrow_type
from driftless.spec import TYPE_PATTERN, ColumnSpec, PipelineSpec

MAX_SHOWN_VALUE = 200
#: a column a source may add to its records: a non-null value is the source's reason for rejecting the record
#: (a queue message that is not JSON, say); the record is quarantined with that reason alone (check ``source``).
SOURCE_ERROR_COLUMN = "_source_error"


@dataclass
class ChunkResult:
    """One validated chunk.

    Attributes:
        good: the rows to load, as an Arrow table of exactly the spec's column types.
        rejects: one row per rejected record: ``record_key`` (JSON of the key values or null), ``entry_key``
            (identity in the quarantine table), ``record`` (the record as extracted, JSON), ``errors``
            (JSON list of ``{column, check, message}``).
        index: every row of the chunk in arrival order: the key and ordering columns (converted),
            ``_good`` (loaded or rejected), ``_pos`` (position in ``good`` or ``rejects``) and ``_ident``
            (null when the key is valid, else the record's hash): what window-level deduplication needs.
        reasons: rows per ``"column: check"``.
    """

    good: arrow.Table
    rejects: pd.DataFrame
    index: pd.DataFrame
    reasons: Counter = field(default_factory=Counter)


def _bound(column: ColumnSpec, value: Any, path: str) -> Any:
    """A check bound (from YAML) in the column's converted representation; ``path`` names it in errors."""
    m = TYPE_PATTERN.match(column.type)
    assert m, column.type  # the spec validated it
    if m["numeric"] and isinstance(value, int | float):
        value = repr(value)  # as text, so the bound reads exactly as written (0 -> Decimal('0.00'))
    conv = convert_column(pd.Series([value], dtype=object), column.type)
    if conv.bad[0]:
        raise SpecError(f"{path}: {value!r} is not a valid {column.type} value (column {column.name!r})")
    result = conv.values.iloc[0]
    return result


def column_checks(column: ColumnSpec, path: str | None = None) -> list[pa.Check]:
    """The pandera checks of one spec column; ``path`` (``columns[i].checks``) names the spec field in errors."""
    path = path or f"columns.{column.name}.checks"
    checks: list[pa.Check] = []
    m = TYPE_PATTERN.match(column.type)
    assert m
    c = column.checks
    if c is not None:
        if c.min is not None:
            checks.append(pa.Check.ge(_bound(column, c.min, f"{path}.min")))
        if c.max is not None:
            checks.append(pa.Check.le(_bound(column, c.max, f"{path}.max")))
        if c.allowed is not None:
            checks.append(pa.Check.isin([_bound(column, v, f"{path}.allowed[{i}]")
                                          for i, v in enumerate(c.allowed)]))
        if c.regex is not None:
            checks.append(pa.Check.str_matches(rf"(?:{c.regex})\Z", name="regex", error=f"regex {c.regex!r}"))
        if c.min_length is not None or c.max_length is not None:
            checks.append(pa.Check.str_length(min_value=c.min_length, max_value=c.max_length))
    if m["varchar"] and m["length"] and not (c and c.max_length is not None and c.max_length <= int(m["length"])):
        checks.append(pa.Check.str_length(max_value=int(m["length"])))
    return checks


def compile_schema(spec: PipelineSpec) -> pa.DataFrameSchema:
    """The spec's columns as a pandera schema over the converted chunk (dtypes are ensured by conversion)."""
    keys = set(spec.source.primary_key)
    return pa.DataFrameSchema(
        {
            c.name: pa.Column(None, checks=column_checks(c, f"columns[{i}].checks"),
                              nullable=c.nullable and c.name not in keys, unique=c.unique, required=True)
            for i, c in enumerate(spec.columns)
        },
        name=spec.name,
    )


def _model_schema(spec: PipelineSpec) -> pa.DataFrameSchema | None:
    if not spec.schema_model:
        return None
    try:
        model = load_reference(spec.schema_model)
    except SpecError as exc:
        raise SpecError(f"schema_model: {exc}") from exc
    if not (isinstance(model, type) and issubclass(model, pa.DataFrameModel)):
        raise SpecError(f"schema_model: {spec.schema_model!r} is not a pandera DataFrameModel class")
    schema = model.to_schema()
    # The model runs on the chunk's columns: a field that is no column would quarantine every row.
    unknown = [name for name, col in schema.columns.items()
               if not getattr(col, "regex", False) and name not in spec.column_names]
    if unknown:
        raise SpecError(f"schema_model: {spec.schema_model!r} has field(s) {', '.join(map(repr, unknown))} that "
                        f"are not columns of the spec (columns: {', '.join(spec.column_names)}); every record "
                        "would be quarantined. Name the fields after the spec's columns")
    return schema


class Validator:
    """Validates chunks of one spec; compile once per window, call ``validate`` per chunk."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.schema = compile_schema(spec)
        self.model = _model_schema(spec)
        self.keys = list(spec.source.primary_key)
        self.order = list(spec.dedup.order_by or [spec.source.cursor])
        # Numeric columns that pandera checks only for NULLs and uniqueness, and that nothing else reads from the
        # converted chunk (no key, no ordering, no schema_model): their Arrow decimals stand in for the Decimal
        # objects (as a pandas ArrowDtype column), which are then never made.
        self.arrow_only = set() if self.model is not None else {
            c.name for c in spec.columns
            if TYPE_PATTERN.match(c.type)["numeric"] and not self.schema.columns[c.name].checks  # type: ignore[index]
            and c.name not in self.keys and c.name not in self.order}

    def validate(self, frame: pd.DataFrame) -> ChunkResult:
        """Transform one chunk and split it into the rows to load and the rejected rows with their reasons."""
        return self.check(transform_chunk(frame, self.spec))

    def check(self, chunk: Transformed) -> ChunkResult:
        """The validate step: convert a transformed chunk to the spec's types, run the checks, split the rows."""
        raw, transformed, failures = chunk.raw, chunk.frame, list(chunk.failures)
        n = len(raw)
        converted: dict[str, pd.Series] = {}
        conv_bad: dict[str, np.ndarray] = {}
        in_arrow: dict[str, arrow.Array] = {}  # columns Arrow converted (Conversion.arrow), reused for ``good``
        for column in self.spec.columns:
            if column.name not in transformed.columns:
                failures.append(RowFailure(None, column.name, "column_in_dataframe",
                                           f"column {column.name!r} is missing from the records"))
                converted[column.name] = pd.Series([None] * n, index=raw.index, dtype=object)
                continue
            conv = convert_for(column, transformed[column.name])
            if conv.arrow is not None and column.name in self.arrow_only:
                converted[column.name] = pd.Series(pd.arrays.ArrowExtensionArray(conv.arrow), index=raw.index)
            else:
                converted[column.name] = conv.values
            if conv.arrow is not None:
                in_arrow[column.name] = conv.arrow
            if conv.bad.any():
                conv_bad[column.name] = conv.bad
                source = transformed[column.name]
                nan_value = nan_is_value(source.dtype)
                failures += [
                    RowFailure(i, column.name, f"type({column.type})",
                               f"{conv.reason}; got {_show(source.iat[i], nan_value)}")
                    for i in np.flatnonzero(conv.bad)
                ]
        typed = pd.DataFrame(converted, index=raw.index)
        for schema in (self.schema, self.model):
            if schema is not None:
                failures += self._pandera(schema, typed, conv_bad)
        if SOURCE_ERROR_COLUMN in raw.columns:
            failures = self._source_rejects(raw[SOURCE_ERROR_COLUMN], failures)
        bad = np.zeros(n, dtype=bool)
        for f in failures:
            if f.index is None:
                bad[:] = True
            else:
                bad[f.index] = True
        good_frame = typed[~bad]
        if bad.any():
            keep = arrow.array(~bad)
            in_arrow = {name: values.filter(keep) for name, values in in_arrow.items()}
        good, arrow_failures = self._to_arrow(good_frame, in_arrow)
        if arrow_failures:
            failures += arrow_failures
            for f in arrow_failures:
                bad[f.index] = True
            good, _ = self._to_arrow(typed[~bad])
        return self._result(raw, typed, bad, good, failures)

    @staticmethod
    def _source_rejects(marks: pd.Series, failures: list[RowFailure]) -> list[RowFailure]:
        """Rows the source rejected (``SOURCE_ERROR_COLUMN``): that reason replaces the row's other failures."""
        flagged = marks.notna().to_numpy()
        if not flagged.any():
            return failures
        kept = [f for f in failures if f.index is None or not flagged[f.index]]
        return kept + [RowFailure(int(i), None, "source", str(marks.iat[i])) for i in np.flatnonzero(flagged)]

    def _pandera(self, schema: pa.DataFrameSchema, typed: pd.DataFrame,
                 conv_bad: dict[str, np.ndarray]) -> list[RowFailure]:
        try:
            # The spec's own schema has no dtypes to coerce, so it changes nothing and need not copy the chunk
            # (half its cost); a schema_model may coerce, and runs on a copy.
            schema.validate(typed, lazy=True, inplace=schema is self.schema)
            return []
        except pa.errors.SchemaErrors as exc:
            cases = exc.failure_cases
        except pa.errors.SchemaError as exc:  # raised even when lazy for some schema-level problems
            return [RowFailure(None, None, "schema", str(exc).splitlines()[0][:500])]
        out = []
        wide_seen: set[tuple[int, str]] = set()
        for row in cases.itertuples(index=False):
            column = row.column if isinstance(row.column, str) else None
            index = None if pd.isna(row.index) else int(row.index)
            check = str(row.check)
            if index is not None and row.schema_context == "DataFrameSchema":
                # A DataFrame-wide check (``@pa.dataframe_check``) fails a row, not a column: pandera reports
                # it once per column of the row. One reason per row and check, keyed like any other.
                if (index, check) not in wide_seen:
                    wide_seen.add((index, check))
                    out.append(RowFailure(index, None, check, f"row failed dataframe check {check}"))
                continue
            if index is not None and column in conv_bad and conv_bad[column][index]:
                continue  # the value did not convert: that is the reason, not the NA left in its place
            value = "" if index is None else f"; got {_show(row.failure_case)}"
            what = f"column {column!r} failed {check}" if column else f"failed {check}"
            out.append(RowFailure(index, column, check, f"{what}{value}"))
        return out

    def _to_arrow(self, good: pd.DataFrame,
                  ready: dict[str, arrow.Array] | None = None) -> tuple[arrow.Table, list[RowFailure]]:
        """The rows to load as Arrow; a value conversion missed (should not happen) rejects its row."""
        try:
            return frame_to_arrow(good, self.spec, ready), []
        except SourceError:
            pass
        failures = []
        for column in self.spec.columns:
            typ = arrow_type(column.type)
            for label, value in good[column.name].items():
                try:
                    arrow.array(pd.Series([value]), type=typ, from_pandas=True)
                except (arrow.ArrowException, ValueError, TypeError, OverflowError) as exc:
                    failures.append(RowFailure(int(label), column.name, "arrow_type",
                                               f"value {_show(value)} does not fit {column.type}: {exc}"))
        return arrow.table({}), failures

    def _result(self, raw: pd.DataFrame, typed: pd.DataFrame, bad: np.ndarray, good: arrow.Table,
                failures: list[RowFailure]) -> ChunkResult:
        index = typed[self.keys + [c for c in self.order if c not in self.keys]].copy()
        index["_good"] = ~bad
        index["_pos"] = np.where(bad, np.cumsum(bad) - 1, np.cumsum(~bad) - 1)
        index["_ident"] = None
        reasons: Counter = Counter()
        bad_rows = np.flatnonzero(bad)
        if len(bad_rows) == 0:
            rejects = pd.DataFrame({"record_key": pd.Series(dtype=object), "entry_key": pd.Series(dtype=object),
                                    "record": pd.Series(dtype=object), "errors": pd.Series(dtype=object)})
            return ChunkResult(good, rejects, index, reasons)
        keys_valid = typed[self.keys].notna().all(axis=1).to_numpy().copy()
        for f in failures:
            if f.column in self.keys and f.index is not None:
                keys_valid[f.index] = False
        per_row: dict[int, list[dict[str, Any]]] = {int(i): [] for i in bad_rows}
        everyone = [f for f in failures if f.index is None]
        for f in failures:
            if f.index is not None:
                per_row[int(f.index)].append({"column": f.column, "check": f.check, "message": f.message})
        records = raw.iloc[bad_rows].to_dict("records")
        # NaN means NULL only in a float column (pandas' NULL there); elsewhere it is the value that came in.
        nan_values = {c: nan_is_value(t) for c, t in raw.dtypes.items()}
        out_keys, out_entries, out_records, out_errors, idents = [], [], [], [], []
        for i, record in zip(bad_rows, records, strict=True):
            errors = per_row[int(i)] + [{"column": f.column, "check": f.check, "message": f.message}
                                        for f in everyone]
            for e in errors:
                reasons[f"{e['column'] or '(row)'}: {e['check']}"] += 1
            record_json = json.dumps({k: to_json_value(v, nan_values[k]) for k, v in record.items()}, sort_keys=True,
                                     default=str)
            if keys_valid[i]:
                key_json = json.dumps([to_json_value(typed.at[i, k]) for k in self.keys], default=str)
                entry = hashlib.sha256(("k" + key_json).encode()).hexdigest()
                ident = None
            else:
                key_json = None
                entry = hashlib.sha256(("r" + record_json).encode()).hexdigest()
                ident = entry
            out_keys.append(key_json)
            out_entries.append(entry)
            out_records.append(record_json)
            out_errors.append(json.dumps(errors, default=str))
            idents.append(ident)
        index.loc[bad_rows, "_ident"] = idents
        rejects = pd.DataFrame({"record_key": pd.Series(out_keys, dtype=object),
                                "entry_key": pd.Series(out_entries, dtype=object),
                                "record": pd.Series(out_records, dtype=object),
                                "errors": pd.Series(out_errors, dtype=object)})
        return ChunkResult(good, rejects, index, reasons)


def _show(value: Any, nan_is_value: bool = False) -> str:
    if nan_is_value and isinstance(value, float | np.floating) and np.isnan(value):
        return "NaN"
    if value is None or (not isinstance(value, str | list | dict | tuple) and pd.isna(value) is True):
        return "null"  # None, NA and NaT (and a float column's NaN) mean NULL here
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Decimal | datetime | date):
        text = str(value)
    else:
        text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[:MAX_SHOWN_VALUE] + "..."


def validate_chunk(spec: PipelineSpec, frame: pd.DataFrame) -> ChunkResult:
    """Validate one chunk (compiles the schema each call; use ``Validator`` for many chunks)."""
    return Validator(spec).validate(frame)


def check_code(spec: PipelineSpec) -> list[str]:
    """What ``etl specs check`` adds to the spec's own validation: its code references and expressions.

    Imports ``transforms.function`` and ``schema_model`` (whose fields must be columns of the spec), parses
    the derive expressions and compiles the column checks; returns the problems (empty when all is well),
    each as ``field.path: message``.
    """
    from driftless.extract.transform import DeriveExpression

    problems = []
    for build in (compile_schema, _model_schema):
        try:
            build(spec)
        except SpecError as exc:
            problems.append(str(exc))
    for i, derived in enumerate(spec.transforms.derive):
        try:
            DeriveExpression(derived.name, derived.expr)
        except SpecError as exc:
            detail = str(exc).removeprefix(f"transforms.derive {derived.name!r}: ")
            problems.append(f"transforms.derive[{i}].expr: {detail}")
    if spec.transforms.function:
        try:
            if not callable(load_reference(spec.transforms.function)):
                problems.append(f"transforms.function: {spec.transforms.function!r} is not callable")
        except SpecError as exc:
            problems.append(f"transforms.function: {exc}")
    return problems
