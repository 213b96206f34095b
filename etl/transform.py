"""Transforms declared in a spec, applied to each chunk before validation, and type conversion.

Order: ``rename`` -> ``cast`` -> ``derive`` -> ``function`` -> ``drop`` (see ``etl.spec.TransformSpec``).

Row-level failures never fail a chunk: a value that does not convert is left as it is (validation then
rejects the row with the reason), and a derive expression or a transform function that raises is retried
on halves of the chunk until the rows that make it raise are isolated; those rows are reported as
failures (column, check, message) and the rest go on.

Type conversion (``convert_column``) is the one place that turns source values into the spec's types:
timestamps become UTC, decimals stay ``decimal.Decimal`` (never floats), text is checked to be storable.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from etl.errors import SpecError
from etl.spec import TYPE_PATTERN, PipelineSpec

INT_BOUNDS = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
FLOAT32_MAX = 3.4028234663852886e38
TRUE_WORDS = {"true", "t", "yes", "y", "1"}
FALSE_WORDS = {"false", "f", "no", "n", "0"}
_STR = pd.StringDtype(na_value=np.nan)


@dataclass(frozen=True)
class RowFailure:
    """Why one row (by its index label in the chunk) failed: the column, the check and a message."""

    index: Any
    column: str | None
    check: str
    message: str


@dataclass
class Conversion:
    """A column converted to its spec type: values (NA where missing or bad), and which rows were bad."""

    values: pd.Series
    bad: np.ndarray
    reason: str


# ---------------------------------------------------------------------------------------------------------
# Type conversion
# ---------------------------------------------------------------------------------------------------------


def _is_stringish(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.StringDtype)


def _object_mask(series: pd.Series, predicate: Callable[[Any], bool]) -> np.ndarray:
    if series.dtype != object:
        return np.zeros(len(series), dtype=bool)
    return np.fromiter((predicate(v) for v in series.array), dtype=bool, count=len(series))


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def _to_integer(series: pd.Series, kind: str) -> Conversion:
    lo, hi = INT_BOUNDS[kind]
    missing = series.isna().to_numpy()
    if pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.astype("Int64") if str(series.dtype) not in ("uint64", "UInt64") else series
        num = values
    else:
        wrong = _object_mask(series, lambda v: _is_bool(v) or not isinstance(
            v, int | float | str | Decimal | np.integer | np.floating | type(None)))
        source = series.where(~wrong, None) if wrong.any() else series
        if _is_stringish(source) or source.dtype == object:
            source = source.map(lambda v: v.strip() if isinstance(v, str) else v)
        num = pd.to_numeric(source, errors="coerce")
        if wrong.any():
            num = num.where(~wrong)
    numeric = num.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = (~missing) & (np.isnan(numeric) | (numeric != np.floor(numeric)) | (numeric < lo) | (numeric > hi))
    if num.dtype.kind == "f":
        # float64 holds integers exactly only up to 2**53: parse big ones again from their text.
        big = (~bad) & (~missing) & (np.abs(np.nan_to_num(numeric)) >= 2**53)
        if big.any():
            exact = [_exact_int(v, lo, hi) for v in series[big].array]
            bad[np.flatnonzero(big)[[e is None for e in exact]]] = True
            num = num.astype(object)
            num[big] = exact
    values = pd.Series(num, index=series.index).where(~bad)
    values = values.astype("Int64") if values.dtype != "Int64" else values
    return Conversion(values, bad, f"expected {kind} (whole number in [{lo}, {hi}])")


def _exact_int(value: Any, lo: int, hi: int) -> int | None:
    try:
        number = int(Decimal(str(value).strip()))
    except (InvalidOperation, ValueError):
        return None
    return number if lo <= number <= hi and Decimal(str(value).strip()) == number else None


def _to_float(series: pd.Series, kind: str) -> Conversion:
    missing = series.isna().to_numpy()
    if pd.api.types.is_float_dtype(series.dtype) or (
        pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)
    ):
        num = series.astype("float64")
        bad = np.zeros(len(series), dtype=bool)
    else:
        wrong = _object_mask(series, lambda v: _is_bool(v) or not isinstance(
            v, int | float | str | Decimal | np.integer | np.floating | type(None)))
        source = series.where(~wrong, None) if wrong.any() else series
        num = pd.to_numeric(source, errors="coerce").astype("float64")
        bad = (~missing) & num.isna().to_numpy()
    if kind == "float":
        with np.errstate(invalid="ignore"):
            bad |= np.isfinite(num.to_numpy()) & (np.abs(num.to_numpy()) > FLOAT32_MAX)
    return Conversion(num.where(~bad), bad, f"expected a {kind} number")


def _decimal_value(value: Any, quantum: Decimal, int_digits: int) -> Decimal | None:
    if isinstance(value, Decimal):
        number = value
    elif _is_bool(value):
        return None
    elif isinstance(value, int | np.integer):
        number = Decimal(int(value))
    elif isinstance(value, float | np.floating):
        # repr gives the shortest text that round-trips, so 1.1 becomes Decimal('1.1'), not 1.1000000000000000888.
        number = Decimal(repr(float(value)))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
    else:
        return None
    if not number.is_finite():
        return None
    try:
        exact = number.quantize(quantum)
    except InvalidOperation:
        return None
    if exact != number or (exact.adjusted() + 1 > int_digits and exact != 0):
        return None  # more decimal places than the scale (never round silently) or too many digits
    return exact


def _to_decimal(series: pd.Series, precision: int, scale: int) -> Conversion:
    missing = series.isna().to_numpy()
    reason = (f"expected numeric({precision},{scale}): at most {precision - scale} digits before and {scale} after "
              "the decimal point, exactly")
    if series.dtype == object:
        # Fast path (C): Arrow accepts only Decimal and int values, and refuses any that would need rounding
        # or more digits than the precision; one refusal sends the chunk down the exact per-value path.
        try:
            pa.array(series, type=pa.decimal128(precision, scale), from_pandas=True)  # refuses booleans too
            values = series.where(~missing, None) if missing.any() else series
            return Conversion(values, np.zeros(len(series), dtype=bool), reason)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
    quantum = Decimal(1).scaleb(-scale)
    int_digits = precision - scale
    out = np.empty(len(series), dtype=object)
    bad = np.zeros(len(series), dtype=bool)
    for i, (value, absent) in enumerate(zip(series.array, missing, strict=True)):
        if absent:
            out[i] = None
            continue
        converted = _decimal_value(value, quantum, int_digits)
        if converted is None:
            bad[i] = True
        out[i] = converted
    return Conversion(pd.Series(out, index=series.index, dtype=object), bad, reason)


def _text_value(value: Any) -> tuple[str | None, bool]:
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float | Decimal | np.integer | np.floating) and not _is_bool(value):
        text = str(value)
    else:
        return None, True
    if "\x00" in text:
        return None, True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None, True
    return text, False


def _to_text(series: pd.Series, kind: str) -> Conversion:
    missing = series.isna().to_numpy()
    if _is_stringish(series):
        values = series.astype(_STR)
        bad = values.str.contains("\x00", regex=False).fillna(False).to_numpy(dtype=bool)
    else:
        out = np.empty(len(series), dtype=object)
        bad = np.zeros(len(series), dtype=bool)
        for i, (value, absent) in enumerate(zip(series.array, missing, strict=True)):
            if absent:
                out[i] = None
            else:
                out[i], bad[i] = _text_value(value)
        values = pd.Series(out, index=series.index, dtype=object).astype(_STR)
    return Conversion(values.where(~bad), bad,
                      f"expected {kind}: text (or a number) in valid UTF-8 without NUL characters")


def _bool_value(value: Any) -> bool | None:
    if _is_bool(value):
        return bool(value)
    if isinstance(value, int | np.integer) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None


def _to_boolean(series: pd.Series) -> Conversion:
    missing = series.isna().to_numpy()
    if pd.api.types.is_bool_dtype(series.dtype):
        return Conversion(series.astype("boolean"), np.zeros(len(series), dtype=bool), "expected a boolean")
    out = np.empty(len(series), dtype=object)
    bad = np.zeros(len(series), dtype=bool)
    for i, (value, absent) in enumerate(zip(series.array, missing, strict=True)):
        converted = None if absent else _bool_value(value)
        bad[i] = not absent and converted is None
        out[i] = converted
    return Conversion(pd.Series(out, index=series.index).astype("boolean"), bad,
                      "expected a boolean (true/false, t/f, yes/no, 1/0)")


def _to_timestamp(series: pd.Series, kind: str) -> Conversion:
    missing = series.isna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        stamps = series.dt.tz_convert("UTC") if series.dt.tz is not None else series.dt.tz_localize("UTC")
        bad = np.zeros(len(series), dtype=bool)
    else:
        # Numbers are not timestamps (pandas would read them as nanoseconds since 1970).
        wrong = _object_mask(series, lambda v: not isinstance(v, str | datetime | date | pd.Timestamp | type(None)))
        source = series.where(~wrong, None) if wrong.any() else series
        stamps = pd.to_datetime(source, utc=True, errors="coerce", format="ISO8601")
        retry = (~missing) & (~wrong) & stamps.isna().to_numpy()
        if retry.any():  # not ISO 8601: let pandas infer each value's format
            stamps = stamps.astype("datetime64[us, UTC]")
            stamps[retry] = pd.to_datetime(source[retry], utc=True, errors="coerce", format="mixed")
        bad = (~missing) & stamps.isna().to_numpy()
    stamps = stamps.astype("datetime64[us, UTC]") if str(stamps.dtype) != "datetime64[us, UTC]" else stamps
    years = stamps.dt.year.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad |= (years < 1) | (years > 9999)
    if kind == "date":
        naive = stamps.dt.tz_convert(None)
        bad |= (~naive.isna().to_numpy()) & (naive != naive.dt.normalize()).to_numpy()
        return Conversion(naive.where(~bad), bad, "expected a date (YYYY-MM-DD, no time of day)")
    if kind == "timestamp":
        stamps = stamps.dt.tz_convert(None)
    return Conversion(stamps.where(~bad), bad, f"expected a {kind} (ISO 8601; values without a zone are UTC)")


def _json_value(value: Any) -> tuple[str | None, bool]:
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return None, True
        return value, False
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False, default=_json_default), False
    except (TypeError, ValueError):
        return None, True


def _to_json(series: pd.Series) -> Conversion:
    missing = series.isna().to_numpy() if series.dtype != object else np.fromiter(
        (v is None or (isinstance(v, float) and math.isnan(v)) for v in series.array), dtype=bool, count=len(series))
    out = np.empty(len(series), dtype=object)
    bad = np.zeros(len(series), dtype=bool)
    for i, (value, absent) in enumerate(zip(series.array, missing, strict=True)):
        out[i], bad[i] = (None, False) if absent else _json_value(value)
    return Conversion(pd.Series(out, index=series.index, dtype=object), bad, "expected JSON (valid JSON text or a "
                      "value that encodes as JSON)")


def convert_column(series: pd.Series, type_name: str) -> Conversion:
    """Convert a column to a spec type; values that do not fit become NA and are flagged in ``bad``.

    Result dtypes: integers ``Int64``; float/double ``float64``; numeric ``object`` of ``Decimal``;
    text/varchar ``str``; boolean ``boolean``; timestamptz ``datetime64[us, UTC]``; timestamp
    ``datetime64[us]`` (UTC); date ``datetime64[us]`` at midnight; json ``object`` of JSON text.
    """
    m = TYPE_PATTERN.match(type_name)
    assert m, type_name
    if m["numeric"]:
        return _to_decimal(series, int(m["precision"]), int(m["scale"]))
    if m["varchar"]:
        return _to_text(series, type_name)
    kind = m["simple"]
    if kind in INT_BOUNDS:
        return _to_integer(series, kind)
    if kind in ("float", "double"):
        return _to_float(series, kind)
    if kind == "text":
        return _to_text(series, kind)
    if kind == "boolean":
        return _to_boolean(series)
    if kind in ("timestamp", "timestamptz", "date"):
        return _to_timestamp(series, kind)
    return _to_json(series)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def to_json_value(value: Any) -> Any:
    """A raw value as something JSON can hold (decimals and times as text, NaN/NaT as null)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, str | int | bool | float):
        return value
    if isinstance(value, dict | list):
        return value
    return _json_default(value)


# ---------------------------------------------------------------------------------------------------------
# Derive expressions
# ---------------------------------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge}


def _fn_coalesce(*args: Any) -> Any:
    result = args[0]
    for arg in args[1:]:
        result = result.fillna(arg) if isinstance(result, pd.Series) else (arg if result is None else result)
    return result


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "upper": lambda s: s.str.upper(),
    "lower": lambda s: s.str.lower(),
    "strip": lambda s: s.str.strip(),
    "length": lambda s: s.str.len(),
    "coalesce": _fn_coalesce,
    "concat": lambda *parts: _concat(parts),
    "abs": lambda s: s.abs(),
}


def _concat(parts: tuple[Any, ...]) -> Any:
    result: Any = ""
    for part in parts:
        result = result + (part.astype(_STR) if isinstance(part, pd.Series) else str(part))
    return result


class DeriveExpression:
    """A derive expression, parsed once.

    Allowed: columns, constants, + - * / // % **, comparisons, and/or/not, and the functions upper,
    lower, strip, length, coalesce, concat, abs.

    Hand-written over ``ast`` because ``DataFrame.eval`` refuses object columns, and decimals are
    object columns of ``Decimal`` (so that money stays exact); evaluating Python with ``eval`` would
    run arbitrary code from a spec.
    """

    def __init__(self, name: str, expr: str) -> None:
        self.name, self.expr = name, expr
        try:
            self.tree = ast.parse(expr, mode="eval").body
        except SyntaxError as exc:
            raise SpecError(f"transforms.derive {name!r}: cannot parse {expr!r}: {exc.msg}") from None
        self._check(self.tree)

    def _check(self, node: ast.AST) -> None:
        allowed = (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name, ast.Constant, ast.Call, ast.Load,
                   ast.operator, ast.unaryop, ast.boolop, ast.cmpop)
        for sub in ast.walk(node):
            if not isinstance(sub, allowed):
                raise SpecError(f"transforms.derive {self.name!r}: {type(sub).__name__} is not allowed in "
                                f"{self.expr!r} (use columns, constants, operators and {sorted(_FUNCTIONS)})")
            if isinstance(sub, ast.Call) and not (isinstance(sub.func, ast.Name) and sub.func.id in _FUNCTIONS):
                raise SpecError(f"transforms.derive {self.name!r}: unknown function in {self.expr!r} "
                                f"(known: {', '.join(sorted(_FUNCTIONS))})")

    def evaluate(self, frame: pd.DataFrame) -> Any:
        return self._eval(self.tree, frame)

    def _eval(self, node: ast.AST, frame: pd.DataFrame) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in frame.columns:
                raise KeyError(f"no column {node.id!r}")
            return frame[node.id]
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](self._eval(node.left, frame), self._eval(node.right, frame))
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, frame)
            if isinstance(node.op, ast.Not):
                return ~operand if isinstance(operand, pd.Series) else not operand
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BoolOp):
            values = [self._eval(v, frame) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            result = values[0]
            for value in values[1:]:
                result = combine(result, value)
            return result
        if isinstance(node, ast.Compare):
            left, result = self._eval(node.left, frame), None
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comparator, frame)
                part = _CMPOPS[type(op)](left, right)
                result = part if result is None else result & part
                left = right
            return result
        if isinstance(node, ast.Call):
            return _FUNCTIONS[node.func.id](*[self._eval(a, frame) for a in node.args])  # type: ignore[attr-defined]
        raise SpecError(f"transforms.derive {self.name!r}: unsupported expression {self.expr!r}")


# ---------------------------------------------------------------------------------------------------------
# Applying the transforms
# ---------------------------------------------------------------------------------------------------------


@cache
def load_reference(ref: str) -> Any:
    """Import ``package.module:name`` (a function or class); errors name the reference."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise SpecError(f"cannot import {ref!r}: {exc}") from None
    except AttributeError:
        raise SpecError(f"cannot import {ref!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _isolate(apply: Callable[[pd.DataFrame], Any], frame: pd.DataFrame, failures: dict[Any, str]) -> list[Any]:
    """Apply to ``frame``; when it raises, bisect to find the rows that make it raise.

    Returns the results of the parts that succeeded; ``failures`` collects index label -> error.
    """
    try:
        return [apply(frame)]
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's expression or function may raise anything
        if len(frame) <= 1:
            for label in frame.index:
                failures[label] = f"{type(exc).__name__}: {exc}"[:500]
            return []
    middle = len(frame) // 2
    return _isolate(apply, frame.iloc[:middle], failures) + _isolate(apply, frame.iloc[middle:], failures)


def apply_transforms(frame: pd.DataFrame, spec: PipelineSpec) -> tuple[pd.DataFrame, list[RowFailure]]:
    """Run the spec's transforms on one chunk; returns the frame and the rows that failed a transform.

    Failed rows stay in the frame (their derived values are NA) and are reported, so that validation
    can quarantine them with the reason.
    """
    t = spec.transforms
    failures: list[RowFailure] = []
    if not (t.rename or t.cast or t.derive or t.function or t.drop):
        return frame, failures
    frame = frame.rename(columns=t.rename) if t.rename else frame.copy()
    for name, type_name in t.cast.items():
        if name in frame.columns:
            conv = convert_column(frame[name], type_name)
            # Values that do not convert stay as they were, for validation to reject with the reason.
            frame[name] = conv.values.astype(object).where(~conv.bad, frame[name])
    for derived in t.derive:
        expression = _expression(derived.name, derived.expr)
        errors: dict[Any, str] = {}

        def evaluate(part: pd.DataFrame, expression: DeriveExpression = expression) -> pd.Series:
            value = expression.evaluate(part)
            return value if isinstance(value, pd.Series) else pd.Series([value] * len(part), index=part.index)

        parts = _isolate(evaluate, frame, errors)
        values = pd.concat(parts) if parts else pd.Series(dtype=object)
        frame[derived.name] = values.reindex(frame.index)
        failures += [RowFailure(i, derived.name, "derive", f"derive {derived.expr!r} failed: {e}")
                     for i, e in errors.items()]
    if t.function:
        function = load_reference(t.function)
        errors = {}

        def call(part: pd.DataFrame) -> pd.DataFrame:
            result = function(part.copy())
            if not isinstance(result, pd.DataFrame) or not result.index.equals(part.index):
                raise SpecError(
                    f"transforms.function {t.function!r} must return a DataFrame with the same rows (index) as "
                    f"it was given; got {type(result).__name__} with {len(getattr(result, 'index', []))} rows "
                    f"for {len(part)}. Reject rows with column checks instead of dropping them"
                )
            return result

        parts = _isolate(call, frame, errors)
        if errors:
            done = pd.concat(parts) if parts else frame.iloc[:0]
            frame = pd.concat([done, frame.loc[list(errors)]]).reindex(frame.index)
            failures += [RowFailure(i, None, "function", f"transforms.function {t.function} failed: {e}")
                         for i, e in errors.items()]
        else:
            frame = parts[0]
    if t.drop:
        frame = frame.drop(columns=[c for c in t.drop if c in frame.columns])
    return frame, failures


@cache
def _expression(name: str, expr: str) -> DeriveExpression:
    return DeriveExpression(name, expr)
