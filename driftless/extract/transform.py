"""Transforms declared in a spec, applied to each chunk before validation, and type conversion.

Order: ``rename`` -> ``cast`` -> ``derive`` -> ``function`` -> ``drop`` (see ``driftless.spec.TransformSpec``).

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
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from driftless.canonical import normalized_json
from driftless.errors import SourceError, SpecError
from driftless.schema import arrow_schema, arrow_type
from driftless.spec import TYPE_PATTERN, ColumnSpec, PipelineSpec

INT_BOUNDS = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
FLOAT32_MAX = 3.4028234663852886e38
TRUE_WORDS = {"true", "t", "yes", "y", "1"}
FALSE_WORDS = {"false", "f", "no", "n", "0"}
_STR = pd.StringDtype(na_value=np.nan)

# What a number written as text may look like (after the declared separators are normalized): an optional sign,
# digits with an optional '.' fraction, an optional exponent. No NaN, Infinity, hex, '_' or locale guessing.
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)  # ASCII digits only
# ISO 8601 as driftless accepts it by default: a calendar date, optionally a time (hours and minutes, optional
# seconds and up to 6 fractional digits) after 'T' or a space, optionally a zone ('Z', +HH, +HHMM, +HH:MM).
_ISO_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?",
                       re.ASCII)


@dataclass(frozen=True)
class Parsing:
    """How text values of a column are read: the column's declared ``format`` and number separators."""

    format: str | None = None
    decimal_separator: str = "."
    thousands_separator: str | None = None

    @classmethod
    def of(cls, column: ColumnSpec) -> Parsing:
        return cls(column.format, column.decimal_separator, column.thousands_separator)


DEFAULT_PARSING = Parsing()

# The same two rules as RE2 patterns, for Arrow's vectorized regex on whole text columns (see _arrow_text).
_NUMBER_RE2 = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_ISO_RE2 = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
            r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?$")
_NO_TEXT = pa.scalar(None, pa.string())


def _arrow_text(series: pd.Series) -> pa.Array | None:
    """The column as trimmed Arrow text when every value is text or NULL; None otherwise (mixed values).

    Text sources (CSV, text columns of a database) give whole columns of strings: the rules are then
    applied by Arrow's C++ kernels (RE2 regex, casts) instead of one Python call per value. Any other
    value (a number, a NaN) makes this None and the per-value path decides.
    """
    if series.dtype != object and not _is_stringish(series):
        return None
    try:
        text = pa.array(series, type=pa.string(), from_pandas=_is_stringish(series))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    return pc.utf8_trim_whitespace(text)


def _matching(text: pa.Array, pattern: str) -> tuple[pa.Array, np.ndarray]:
    """``text`` where it matches ``pattern`` (NULL elsewhere), and which non-NULL values did not match."""
    ok = pc.fill_null(pc.match_substring_regex(text, pattern), False)
    bad = pc.and_(pc.is_valid(text), pc.invert(ok)).to_numpy(zero_copy_only=False)
    return pc.if_else(ok, text, _NO_TEXT), bad


@dataclass(frozen=True)
class RowFailure:
    """Why one row (by its index label in the chunk) failed: the column, the check and a message."""

    index: Any
    column: str | None
    check: str
    message: str


class Conversion:
    """A column converted to its spec type: values (NA where missing or bad), and which rows were bad.

    Attributes:
        values: the converted values (see ``convert_column`` for their dtypes). A conversion may hand over a
            function making them instead (a zero-argument callable), called once on first use: numeric text
            converted by Arrow's kernels makes its ``Decimal`` objects only when someone reads them.
        bad: which rows did not convert.
        reason: what a value must look like (the quarantine message).
        arrow: the same values as an Arrow array of the column's Arrow type (``driftless.schema.arrow_type``),
            when the conversion made one on the way (text converted by Arrow's kernels, decimals Arrow
            accepted) and no value was bad; lets the chunk's Arrow table skip converting ``values`` back
            (``frame_to_arrow``).
    """

    def __init__(self, values: pd.Series | Callable[[], pd.Series], bad: np.ndarray, reason: str,
                 arrow: pa.Array | None = None) -> None:
        self._values = values
        self.bad = bad
        self.reason = reason
        self.arrow = arrow

    @property
    def values(self) -> pd.Series:
        if not isinstance(self._values, pd.Series):
            self._values = self._values()
        return self._values

    def __repr__(self) -> str:
        return f"Conversion(bad={int(self.bad.sum())}, reason={self.reason!r}, arrow={self.arrow is not None})"


# ---------------------------------------------------------------------------------------------------------
# Type conversion
# ---------------------------------------------------------------------------------------------------------
#
# The rules (the README's "Type conversion" section states them for users):
# * NULL (None, pd.NA, NaT) stays NULL. A float NaN or infinity is a value, not a NULL: every type refuses it.
# * Numbers written as text: optional sign, digits, optional '.' fraction, optional exponent, surrounding
#   whitespace ignored. Another decimal mark or digit grouping only when the column declares it.
# * Dates and timestamps written as text: ISO 8601 only (_ISO_TEXT), unless the column declares a strptime
#   ``format``; numbers only when it declares ``epoch_s`` / ``epoch_ms``. Never a guessed layout.
# A value that does not convert is flagged ``bad`` (the row is quarantined with the reason); nothing is rounded.


def _is_stringish(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.StringDtype)


def _object_mask(series: pd.Series, predicate: Callable[[Any], bool]) -> np.ndarray:
    if series.dtype != object:
        return np.zeros(len(series), dtype=bool)
    return np.fromiter((predicate(v) for v in series.array), dtype=bool, count=len(series))


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal | np.integer | np.floating) and not _is_bool(value)


def nan_is_value(dtype: Any) -> bool:
    """Whether a float NaN in a column of this dtype is a value rather than a NULL (``_missing``).

    In an object column (or an Arrow one, which keeps NULL apart from NaN) it is a value; in a pandas float or
    string column NaN is how pandas marks a NULL.
    """
    return pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.ArrowDtype)


def _missing(series: pd.Series) -> np.ndarray:
    """Which values are NULL. In an object column a NaN (float or Decimal) is a value (a bad one), not a NULL.

    Sources hand over object columns wherever a NaN could be confused with a NULL (``driftless.sources.sql.source``
    keeps a float column with a real NaN as objects), so only a typed float column's NaN means NULL.
    """
    missing = series.isna().to_numpy().copy()
    if series.dtype == object and missing.any():  # (Arrow columns: isna is already NULL only)
        where = np.flatnonzero(missing)
        values = series.array
        nan = np.fromiter((isinstance(values[i], float | np.floating | Decimal) for i in where), dtype=bool,
                          count=len(where))  # pandas counts float NaN and Decimal('NaN') as missing
        missing[where[nan]] = False
    return missing


def _number_text(value: str, parsing: Parsing) -> str | None:
    """A number written as text, normalized to plain ``[+-]digits[.digits][e..]``; None if it is not one."""
    text = value.strip()
    thousands, mark = parsing.thousands_separator, parsing.decimal_separator
    if thousands and thousands in text:
        whole, _, _ = text.partition(mark)
        groups = whole.lstrip("+-").split(thousands)
        if not (1 <= len(groups[0]) <= 3 and all(len(g) == 3 and g.isascii() and g.isdigit() for g in groups[1:])):
            return None  # 12,34 or 1,2345: not a grouping of thousands
        text = text.replace(thousands, "")
    if mark != ".":
        if "." in text:
            return None
        text = text.replace(mark, ".")
    return text if _NUMBER_TEXT.fullmatch(text) else None


def _numbers_from_text(series: pd.Series, parsing: Parsing) -> tuple[pd.Series, np.ndarray]:
    """Text values replaced by their normalized number text; returns the series and which text was no number."""
    text = _arrow_text(series) if parsing == DEFAULT_PARSING else None
    if text is not None:  # all text: checked by Arrow in one pass
        numbers, bad = _matching(text, _NUMBER_RE2)
        return pd.Series(numbers.to_numpy(zero_copy_only=False), index=series.index, dtype=object), bad
    if _is_stringish(series):
        texts = series.map(lambda v: _number_text(v, parsing) if isinstance(v, str) else v)
    else:  # kept as objects: map() would infer float64 for ints beside a None, and big ints would lose digits
        texts = pd.Series([_number_text(v, parsing) if isinstance(v, str) else v for v in series.array],
                          index=series.index, dtype=object)
    was_text = _object_mask(series, lambda v: isinstance(v, str)) if not _is_stringish(series) else series.notna(
    ).to_numpy()
    bad = was_text & texts.isna().to_numpy()
    return texts.astype(object) if _is_stringish(series) else texts, bad


def _numeric_source(series: pd.Series, parsing: Parsing) -> tuple[pd.Series, np.ndarray]:
    """An object/text column ready for ``pd.to_numeric``; returns it and the values already known bad."""
    wrong = _object_mask(series, lambda v: _is_bool(v) or not isinstance(
        v, int | float | str | Decimal | np.integer | np.floating | type(None)))
    if _is_stringish(series) or series.dtype == object:
        series, bad_text = _numbers_from_text(series, parsing)
        wrong |= bad_text
    if wrong.any():
        series = series.where(~wrong, None)
    return series, wrong


#: years 1 to 9999 in microseconds and days since 1970-01-01 UTC (PostgreSQL and Parquet hold wider ranges)
_US_RANGE = (-62135596800_000000, 253402300800_000000)
_DAY_RANGE = (-719162, 2932897)


def _outside(numbers: pa.Array, bounds: tuple[int, int]) -> np.ndarray:
    """Which values (ints, or temporal values as their ints) lie outside ``[lo, hi)``; NULL is not outside."""
    lo, hi = bounds
    low, high = pc.min_max(numbers).values()
    if low.as_py() is None or (low.as_py() >= lo and high.as_py() < hi):
        return np.zeros(len(numbers), dtype=bool)
    return pc.fill_null(pc.or_(pc.less(numbers, lo), pc.greater_equal(numbers, hi)), False).to_numpy(
        zero_copy_only=False)


_INTEGER_RE2 = r"^-?[0-9]+$"  # the fast path's rule (checked without a regex): what Arrow's cast reads as pd.to_numeric
_INT_ARROW = {"smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64()}


def _integers_from_text(series: pd.Series, kind: str, reason: str) -> Conversion | None:
    """All-text column of plain whole numbers, converted by Arrow's cast; None when any value needs the full rules.

    Only when every non-NULL value is ``-?digits`` (after trimming) and fits int64: then the result is the one
    ``pd.to_numeric`` gives, out-of-range values flagged bad. '+5', '1.0', '1e3', text that is no number and
    numbers past int64 go the per-value path, which applies the README's rules and names each bad value.
    """
    text = _arrow_text(series)
    if text is None:
        return None
    # _INTEGER_RE2 without a regex (a quarter of the time): ASCII digits after leading '-'s; of those, Arrow's cast
    # refuses more than one '-' ('--5'), so what it reads is exactly what the pattern matches.
    if pc.any(pc.invert(pc.fill_null(pc.ascii_is_decimal(pc.utf8_ltrim(text, "-")), True))).as_py():
        return None
    try:
        ints = pc.cast(text, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    lo, hi = INT_BOUNDS[kind]
    bad = _outside(ints, (lo, hi + 1))
    if bad.any():
        ints = pc.if_else(pa.array(bad), pa.scalar(None, pa.int64()), ints)
    values = pd.Series(ints.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get).array, index=series.index)
    return Conversion(values, bad, reason, None if bad.any() else ints.cast(_INT_ARROW[kind]))


def _to_integer(series: pd.Series, kind: str, parsing: Parsing) -> Conversion:
    lo, hi = INT_BOUNDS[kind]
    reason = f"expected {kind} (whole number in [{lo}, {hi}]{_separators(parsing)})"
    if parsing == DEFAULT_PARSING and (fast := _integers_from_text(series, kind, reason)) is not None:
        return fast
    missing = _missing(series)
    wrong = np.zeros(len(series), dtype=bool)
    if pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.astype("Int64") if str(series.dtype) not in ("uint64", "UInt64") else series
        num = values
        original = series
    else:
        original, wrong = _numeric_source(series, parsing)
        num = pd.to_numeric(original, errors="coerce")
        if wrong.any():
            num = num.where(~wrong)
    numeric = num.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = (~missing) & (wrong | np.isnan(numeric) | (numeric != np.floor(numeric)) | (numeric < lo)
                            | (numeric > hi))
    if num.dtype.kind == "f":
        # float64 holds integers exactly only up to 2**53: parse big ones again from their text.
        big = (~bad) & (~missing) & (np.abs(np.nan_to_num(numeric)) >= 2**53)
        if big.any():
            exact = [_exact_int(v, lo, hi) for v in original[big].array]
            bad[np.flatnonzero(big)[[e is None for e in exact]]] = True
            num = num.astype(object)
            num[big] = exact
    values = pd.Series(num, index=series.index).where(~bad)
    values = values.astype("Int64") if values.dtype != "Int64" else values
    return Conversion(values, bad, reason)


def _separators(parsing: Parsing) -> str:
    if parsing == DEFAULT_PARSING:
        return "; text like -1234.5 or 1.5e3, no digit grouping"
    grouping = f", digits grouped by {parsing.thousands_separator!r}" if parsing.thousands_separator else ""
    return f"; text with decimal mark {parsing.decimal_separator!r}{grouping}"


def _exact_int(value: Any, lo: int, hi: int) -> int | None:
    try:
        number = int(Decimal(str(value).strip()))
    except (InvalidOperation, ValueError):
        return None
    return number if lo <= number <= hi and Decimal(str(value).strip()) == number else None


def _to_float(series: pd.Series, kind: str, parsing: Parsing) -> Conversion:
    missing = _missing(series)
    if pd.api.types.is_float_dtype(series.dtype) or (
        pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)
    ):
        num = series.astype("float64")
        bad = np.zeros(len(series), dtype=bool)
    else:
        source, wrong = _numeric_source(series, parsing)
        num = pd.to_numeric(source, errors="coerce").astype("float64")
        bad = (~missing) & (num.isna().to_numpy() | wrong)
    values = num.to_numpy()
    with np.errstate(invalid="ignore"):
        bad |= np.isinf(values)  # Infinity is no value any target stores portably
        if kind == "float":
            bad |= np.isfinite(values) & (np.abs(values) > FLOAT32_MAX)
    return Conversion(num.where(~bad), bad, f"expected a finite {kind} number{_separators(parsing)}")


def _decimal_value(value: Any, quantum: Decimal, int_digits: int, parsing: Parsing) -> Decimal | None:
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
        text = _number_text(value, parsing)
        if text is None:
            return None
        number = Decimal(text)
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


def _to_decimal(series: pd.Series, precision: int, scale: int, parsing: Parsing) -> Conversion:
    missing = _missing(series)
    reason = (f"expected numeric({precision},{scale}): at most {precision - scale} digits before and {scale} after "
              f"the decimal point, exactly{_separators(parsing)}")
    if series.dtype == object and np.array_equal(missing, series.isna().to_numpy()):
        # Fast path (C): Arrow accepts only Decimal and int values, and refuses any that would need rounding
        # or more digits than the precision; one refusal sends the chunk down the exact per-value path.
        # (Only when no NaN float is present: Arrow would read it as NULL.)
        try:
            exact = pa.array(series, type=pa.decimal128(precision, scale), from_pandas=True)  # refuses booleans too
            # Arrow refuses Decimal('Infinity') and reads Decimal('NaN') as NULL: a NULL more than the missing
            # values is a NaN, sent down the per-value path (one vectorized count instead of a check per value).
            if exact.null_count == int(missing.sum()):
                values = series.where(~missing, None) if missing.any() else series
                return Conversion(values, np.zeros(len(series), dtype=bool), reason, exact)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
    text = _arrow_text(series) if parsing == DEFAULT_PARSING else None
    if text is not None:
        # All text: Arrow's cast refuses a value needing rounding or more digits than the precision, exactly
        # like _decimal_value; one refusal sends the chunk down the per-value path, which names each bad value.
        numbers, bad = _matching(text, _NUMBER_RE2)
        try:
            decimals = pc.cast(numbers, pa.decimal128(precision, scale))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        else:
            index = series.index

            def values() -> pd.Series:  # Decimal objects cost more than the rest: made only when read
                return pd.Series(decimals.to_numpy(zero_copy_only=False), index=index, dtype=object)

            return Conversion(values, bad, reason, None if bad.any() else decimals)
    quantum = Decimal(1).scaleb(-scale)
    int_digits = precision - scale
    out = np.empty(len(series), dtype=object)
    bad = np.zeros(len(series), dtype=bool)
    for i, (value, absent) in enumerate(zip(series.array, missing, strict=True)):
        if absent:
            out[i] = None
            continue
        converted = _decimal_value(value, quantum, int_digits, parsing)
        if converted is None:
            bad[i] = True
        out[i] = converted
    return Conversion(pd.Series(out, index=series.index, dtype=object), bad, reason)


def _text_value(value: Any) -> tuple[str | None, bool]:
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | Decimal | np.integer) and not _is_bool(value):
        text = str(value)
    elif isinstance(value, float | np.floating) and math.isfinite(value):
        text = str(value)
    else:
        return None, True  # also NaN and Infinity: no text a reader could trust
    if "\x00" in text:
        return None, True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None, True
    return text, False


def _to_text(series: pd.Series, kind: str) -> Conversion:
    missing = _missing(series)
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
                      f"expected {kind}: text (or a finite number) in valid UTF-8 without NUL characters")


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
    missing = _missing(series)
    if pd.api.types.is_bool_dtype(series.dtype):
        return Conversion(series.astype("boolean"), np.zeros(len(series), dtype=bool), "expected a boolean")
    out = np.empty(len(series), dtype=object)
    bad = np.zeros(len(series), dtype=bool)
    for i, (value, absent) in enumerate(zip(series.array, missing, strict=True)):
        converted = None if absent else _bool_value(value)
        bad[i] = not absent and converted is None
        out[i] = converted
    return Conversion(pd.Series(out, index=series.index).astype("boolean"), bad,
                      "expected a boolean (true/false, t/f, yes/no, y/n, 1/0)")


def _stamps_from_text(texts: pd.Series, parsing: Parsing) -> pd.Series:
    """Text (already stripped) to UTC timestamps under the column's rules; NaT where a value does not match."""
    fmt = parsing.format
    if fmt is None:
        iso = texts.map(lambda v: isinstance(v, str) and _ISO_TEXT.fullmatch(v) is not None).to_numpy(dtype=bool)
        return pd.to_datetime(texts.where(iso, None), utc=True, errors="coerce", format="ISO8601")
    if fmt in EPOCH_UNITS:
        return _stamps_from_epoch(texts.map(lambda v: _number_text(v, DEFAULT_PARSING)), fmt)
    return pd.to_datetime(texts, utc=True, errors="coerce", format=fmt, exact=True)


def _stamps_from_epoch(numbers: pd.Series, fmt: str) -> pd.Series:
    num = pd.to_numeric(numbers, errors="coerce").astype("float64")
    with np.errstate(invalid="ignore"):
        num = num.where(np.isfinite(num.to_numpy()))
    # Out of range (year > 9999 or < 1) is no timestamp: NaT, so the row is quarantined, not an OverflowError.
    seconds = num / 1000 if fmt == "epoch_ms" else num
    num = num.where(seconds.abs() < 253402300800)
    return pd.to_datetime(num, unit=EPOCH_UNITS[fmt], utc=True, errors="coerce")


def _arrow_stamps(stamps: pa.Array, missing: np.ndarray, kind: str, index: pd.Index) -> Conversion | None:
    """ISO 8601 text Arrow read (timestamp[us, UTC]; NULL where the text did not match) when every value is good.

    The checks ``_to_timestamp`` makes, in Arrow: a NULL that was no missing value did not match the rules, and
    a year outside 1..9999 (once in UTC) is no timestamp a target stores. None when any value is bad: then
    ``_to_timestamp`` goes on and names each.
    """
    if stamps.null_count != int(missing.sum()) or _outside(stamps.cast(pa.int64()), _US_RANGE).any():
        return None
    if kind == "timestamp":
        stamps = stamps.cast(pa.timestamp("us"))  # the UTC wall time
    values = pd.Series(stamps.to_pandas().array, index=index)  # .array: the index is set, not aligned to
    return Conversion(values, np.zeros(len(stamps), dtype=bool), f"expected a {kind} (ISO 8601; values without a zone "
                      "are UTC)", stamps)


def _to_timestamp(series: pd.Series, kind: str, parsing: Parsing) -> Conversion:
    missing = _missing(series)
    epoch = parsing.format in EPOCH_UNITS
    in_arrow: pa.Array | None = None  # the stamps as Arrow timestamp[us, UTC], when Arrow's cast read the text
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        stamps = series.dt.tz_convert("UTC") if series.dt.tz is not None else series.dt.tz_localize("UTC")
        bad = np.zeros(len(series), dtype=bool)
    elif epoch and pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        stamps = _stamps_from_epoch(series, cast(str, parsing.format))
        bad = (~missing) & stamps.isna().to_numpy()
    elif parsing.format is None and (text := _arrow_text(series)) is not None:  # all text: Arrow checks ISO 8601
        iso, _ = _matching(text, _ISO_RE2)
        try:
            # Arrow's ISO 8601 cast reads what pandas reads (a value with a zone; 24:00, a bad day or a value
            # without a zone makes it refuse, and pandas, which knows those rules, reads the chunk instead).
            in_arrow = pc.cast(iso, pa.timestamp("us", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            stamps = pd.to_datetime(pd.Series(iso.to_numpy(zero_copy_only=False), index=series.index, dtype=object),
                                    utc=True, errors="coerce", format="ISO8601")
        else:
            if kind != "date" and (done := _arrow_stamps(in_arrow, missing, kind, series.index)) is not None:
                return done
            stamps = pd.Series(in_arrow.to_pandas().array, index=series.index)
        bad = (~missing) & stamps.isna().to_numpy()
    else:
        wrong = _object_mask(series, lambda v: not (
            isinstance(v, str | datetime | date | pd.Timestamp | type(None)) or (epoch and _is_number(v))))
        source = series.where(~wrong, None) if wrong.any() else series
        texts = source.map(lambda v: v.strip() if isinstance(v, str) else None)
        is_text = texts.notna().to_numpy()
        stamps = pd.Series(pd.NaT, index=series.index, dtype="datetime64[us, UTC]")
        if is_text.any():
            stamps[is_text] = _stamps_from_text(texts[is_text], parsing).astype("datetime64[us, UTC]")
        other = (~is_text) & (~missing) & (~wrong)
        if other.any():  # datetime/date objects, or numbers under a declared epoch format
            values = source[other]
            numbers = values.map(_is_number).to_numpy(dtype=bool)
            converted = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
            if numbers.any():
                converted[numbers] = _stamps_from_epoch(values[numbers], cast(str, parsing.format)).astype(
                    "datetime64[us, UTC]")
            if (~numbers).any():
                converted[~numbers] = pd.to_datetime(values[~numbers], utc=True, errors="coerce",
                                                     format="ISO8601").astype("datetime64[us, UTC]")
            stamps[other] = converted
        bad = (~missing) & stamps.isna().to_numpy()
    stamps = stamps.astype("datetime64[us, UTC]") if str(stamps.dtype) != "datetime64[us, UTC]" else stamps
    years = stamps.dt.year.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad |= (years < 1) | (years > 9999)
    layout = {None: "ISO 8601", "epoch_s": "seconds since 1970-01-01 UTC",
              "epoch_ms": "milliseconds since 1970-01-01 UTC"}.get(parsing.format, f"format {parsing.format!r}")
    if kind == "date":
        naive = stamps.dt.tz_convert(None)
        bad |= (~naive.isna().to_numpy()) & (naive != naive.dt.normalize()).to_numpy()
        example = "YYYY-MM-DD" if parsing.format is None else layout
        return Conversion(naive.where(~bad), bad, f"expected a date ({example}, no time of day)")
    if in_arrow is not None and bad.any():
        in_arrow = None
    if kind == "timestamp":
        stamps = stamps.dt.tz_convert(None)
        in_arrow = None if in_arrow is None else in_arrow.cast(pa.timestamp("us"))  # the UTC wall time, as above
    zone = "; values without a zone are UTC" if parsing.format is None else ""
    return Conversion(stamps.where(~bad), bad, f"expected a {kind} ({layout}{zone})", in_arrow)


def _json_value(value: Any) -> tuple[str | None, bool]:
    if isinstance(value, str):
        try:
            json.loads(value, parse_constant=_refuse_constant)
        except ValueError:
            return None, True
        return value, False
    try:  # decoded JSON (dicts, lists, exact Decimal numbers from a REST body): numbers written as they came
        return normalized_json(value), False
    except ValueError:  # NaN or Infinity
        return None, True
    except TypeError:  # values JSON has no type for (datetimes, numpy scalars): as text
        pass
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False, default=_json_default), False
    except (TypeError, ValueError):
        return None, True


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN/Infinity, which no database's JSON holds


def _to_json(series: pd.Series) -> Conversion:
    missing = _missing(series)
    out = np.empty(len(series), dtype=object)
    bad = np.zeros(len(series), dtype=bool)
    for i, (value, absent) in enumerate(zip(series.array, missing, strict=True)):
        out[i], bad[i] = (None, False) if absent else _json_value(value)
    return Conversion(pd.Series(out, index=series.index, dtype=object), bad, "expected JSON (valid JSON text or a "
                      "value that encodes as JSON; no NaN or Infinity)")


# ---------------------------------------------------------------------------------------------------------
# Typed Arrow columns
# ---------------------------------------------------------------------------------------------------------
#
# Sources that read typed data (PostgreSQL through ADBC, Parquet files) hand over ``pd.ArrowDtype`` columns. A
# column whose Arrow type already is its spec type (or widens to it exactly) is checked by Arrow's kernels and
# passed on as it is: integers for their range, timestamps and dates for years 1-9999, doubles for NaN and
# infinity, decimals by an exact cast (one that would round or overflow refuses, and the per-value path names
# the values). Any other combination becomes the driver's Python objects and goes the general way.


def _arrow_array(series: pd.Series) -> pa.Array:
    values = series.array._pa_array  # the ChunkedArray behind an ArrowExtensionArray (no copy)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _with_nul(text: pa.Array) -> np.ndarray:
    """Which values of a string array hold a NUL character (no database's text stores one)."""
    offsets, data = text.buffers()[1:3]
    if data is not None and len(text):
        width = 8 if pa.types.is_large_string(text.type) else 4
        bounds = np.frombuffer(offsets, dtype=np.int64 if width == 8 else np.int32, count=len(text) + 1,
                               offset=text.offset * width)
        if not (np.frombuffer(data, dtype=np.uint8)[bounds[0]:bounds[-1]] == 0).any():
            return np.zeros(len(text), dtype=bool)  # one pass over the bytes: the usual case
    return pc.fill_null(pc.match_substring(text, "\x00"), False).to_numpy(zero_copy_only=False)


def _typed(values: pa.Array, bad: np.ndarray, index: pd.Index, reason: str, mapper: Any = None) -> Conversion:
    """A Conversion of typed Arrow ``values`` (bad ones set to NULL), with the pandas values downstream uses."""
    if bad.any():
        values = pc.if_else(pa.array(bad), pa.scalar(None, values.type), values)
    series = pd.Series(values.to_pandas(types_mapper=mapper), index=index) if mapper != "arrow" else pd.Series(
        pd.arrays.ArrowExtensionArray(values), index=index)
    return Conversion(series, bad, reason, None if bad.any() else values)


def _convert_arrow(series: pd.Series, type_name: str, parsing: Parsing) -> Conversion | None:
    """A typed Arrow column converted without Python objects; None when its type needs the general path."""
    if parsing != DEFAULT_PARSING:
        return None
    m = TYPE_PATTERN.match(type_name)
    assert m, type_name
    values = _arrow_array(series)
    t = values.type
    none = np.zeros(len(values), dtype=bool)
    kind = m["simple"]
    if m["numeric"]:
        precision, scale = int(m["precision"]), int(m["scale"])
        reason = (f"expected numeric({precision},{scale}): at most {precision - scale} digits before and {scale} "
                  f"after the decimal point, exactly{_separators(parsing)}")
        target = pa.decimal128(precision, scale)
        if pa.types.is_string(t) or pa.types.is_large_string(t):  # numeric as its exact text (ADBC)
            try:
                # Arrow's decimal parser reads exactly _NUMBER_RE2's grammar (sign, ASCII digits, '.', exponent;
                # no whitespace, NaN or Infinity) and refuses rounding: when it reads every value, all are good.
                return _typed(pc.cast(values, target), none, series.index, reason, "arrow")
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                numbers, bad = _matching(pc.utf8_trim_whitespace(values), _NUMBER_RE2)
        elif pa.types.is_decimal(t) or pa.types.is_integer(t):
            numbers, bad = values, none
        else:
            return None
        try:  # refuses a value that would need rounding or more digits than the precision
            decimals = pc.cast(numbers, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        return _typed(decimals, bad, series.index, reason, "arrow")  # Decimal objects would cost ~0.7 us each
    if m["varchar"] or kind == "text":
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            return None
        bad = _with_nul(values)
        return _typed(values.cast(pa.string()), bad, series.index,
                      f"expected {type_name if m['varchar'] else kind}: text (or a finite number) in valid UTF-8 "
                      "without NUL characters", {pa.string(): _STR}.get)
    if kind in INT_BOUNDS:
        if not pa.types.is_integer(t) or (pa.types.is_unsigned_integer(t) and t.bit_width == 64):
            return None
        lo, hi = INT_BOUNDS[kind]
        bad = _outside(values, (lo, hi + 1))
        return _typed(values.cast(_INT_ARROW[kind], safe=False) if not bad.any() else values.cast(pa.int64()),
                      bad, series.index, f"expected {kind} (whole number in [{lo}, {hi}]{_separators(parsing)})",
                      {t: pd.Int64Dtype() for t in (pa.int16(), pa.int32(), pa.int64())}.get)
    if kind in ("timestamp", "timestamptz"):
        if not (pa.types.is_timestamp(t) and t.unit in ("s", "ms", "us")):
            return None  # nanoseconds would need a check for what microseconds lose
        try:
            micros = values.cast(pa.timestamp("us", tz=t.tz))
        except pa.ArrowInvalid:  # seconds or milliseconds past what microseconds hold
            return None
        bad = _outside(micros.cast(pa.int64()), _US_RANGE)
        # A value without a zone is UTC (as for text); a timestamp column keeps the UTC wall time.
        stamps = micros.cast(pa.int64()).cast(pa.timestamp("us", tz="UTC") if kind == "timestamptz" else
                                              pa.timestamp("us"))
        return _typed(stamps, bad, series.index, f"expected a {kind} (ISO 8601; values without a zone are UTC)")
    if kind == "date":
        if not pa.types.is_date32(t):
            return None
        bad = _outside(values.cast(pa.int32()), _DAY_RANGE)
        conv = _typed(values, bad, series.index, "expected a date (YYYY-MM-DD, no time of day)")
        days = pc.if_else(pa.array(bad), pa.scalar(None, pa.int64()), values.cast(pa.int32()).cast(pa.int64()))
        midnight = pd.Series(pc.multiply(days, 86_400_000_000).cast(pa.timestamp("us")).to_pandas(),
                             index=series.index)  # as the other paths give dates: midnight, datetime64[us]
        return Conversion(midnight, bad, conv.reason, conv.arrow)
    if kind == "double":
        if not pa.types.is_float64(t):
            return None
        bad = pc.fill_null(pc.invert(pc.is_finite(values)), False).to_numpy(zero_copy_only=False)
        return _typed(values, bad, series.index, f"expected a finite {kind} number{_separators(parsing)}")
    if kind == "boolean":
        if not pa.types.is_boolean(t):
            return None
        return _typed(values, none, series.index, "expected a boolean", {pa.bool_(): pd.BooleanDtype()}.get)
    return None


def _arrow_objects(series: pd.Series) -> pd.Series:
    """A typed Arrow column as the Python objects a driver hands over (int, Decimal, str, datetime, None...).

    Timestamps and dates outside years 1-9999 have no Python object: they become a float NaN, which every
    type refuses (the row is quarantined), never a NULL.
    """
    values = _arrow_array(series)
    t = values.type
    outside = None
    if pa.types.is_timestamp(t):
        outside = _outside(values.cast(pa.timestamp("us", tz=t.tz), safe=False).cast(pa.int64()), _US_RANGE)
    elif pa.types.is_date32(t):
        outside = _outside(values.cast(pa.int32()), _DAY_RANGE)
    if outside is not None and outside.any():
        values = pc.if_else(pa.array(outside), pa.scalar(None, t), values)
    objects = pd.Series(values.to_pylist(), index=series.index, dtype=object)
    if outside is not None and outside.any():
        objects[outside] = float("nan")
    return objects


EPOCH_UNITS = {"epoch_s": "s", "epoch_ms": "ms"}


def convert_column(series: pd.Series, type_name: str, parsing: Parsing = DEFAULT_PARSING) -> Conversion:
    """Convert a column to a spec type; values that do not fit become NA and are flagged in ``bad``.

    ``parsing`` carries the column's declared text layouts (``Parsing.of(column)``); the default is strict:
    ISO 8601 dates and timestamps, numbers with a '.' decimal mark and no grouping.

    Result dtypes: integers ``Int64``; float/double ``float64``; numeric ``object`` of ``Decimal``;
    text/varchar ``str``; boolean ``boolean``; timestamptz ``datetime64[us, UTC]``; timestamp
    ``datetime64[us]`` (UTC); date ``datetime64[us]`` at midnight; json ``object`` of JSON text.
    """
    if isinstance(series.dtype, pd.ArrowDtype):  # typed data (ADBC, Parquet): see _convert_arrow
        if (typed := _convert_arrow(series, type_name, parsing)) is not None:
            return typed
        series = _arrow_objects(series)
    m = TYPE_PATTERN.match(type_name)
    assert m, type_name
    if m["numeric"]:
        return _to_decimal(series, int(m["precision"]), int(m["scale"]), parsing)
    if m["varchar"]:
        return _to_text(series, type_name)
    kind = m["simple"]
    if kind in INT_BOUNDS:
        return _to_integer(series, kind, parsing)
    if kind in ("float", "double"):
        return _to_float(series, kind, parsing)
    if kind == "text":
        return _to_text(series, kind)
    if kind == "boolean":
        return _to_boolean(series)
    if kind in ("timestamp", "timestamptz", "date"):
        return _to_timestamp(series, kind, parsing)
    return _to_json(series)


def convert_for(column: ColumnSpec, series: pd.Series) -> Conversion:
    """``convert_column`` with the column's type and declared text layouts."""
    return convert_column(series, column.type, Parsing.of(column))


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


def to_json_value(value: Any, nan_is_value: bool = False) -> Any:
    """A raw value as something JSON can hold (decimals and times as text, NA/NaT as null).

    A float NaN is null where it is how pandas marks a NULL (a float column), and stays a NaN where it is a
    value (``nan_is_value``: an object or Arrow column, see ``_missing``); Python's ``json`` writes it as
    ``NaN`` and reads it back, so a replayed record is refused again instead of loading a NULL.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return (float("nan") if nan_is_value else None) if math.isnan(value) else str(float(value))
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
            raise SpecError(f"transforms.derive {name!r}: cannot parse {expr!r}: {exc.msg}") from exc
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
        raise SpecError(f"cannot import {ref!r}: {exc}") from exc
    except AttributeError as exc:
        raise SpecError(f"cannot import {ref!r}: module {module_name!r} has no attribute {attr!r}") from exc
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


@dataclass
class Transformed:
    """One chunk after the spec's transforms (the extract's first step; validation is the next).

    Attributes:
        raw: the chunk as the source gave it (positional index): what a rejected record keeps.
        frame: the chunk after rename, cast, derive, function and drop, same rows as ``raw``.
        failures: rows whose transform failed (validation rejects them with the reason).
    """

    raw: pd.DataFrame
    frame: pd.DataFrame
    failures: list[RowFailure]


def transform_chunk(frame: pd.DataFrame, spec: PipelineSpec) -> Transformed:
    """The transform step of one chunk: ``apply_transforms`` on the chunk re-indexed from 0."""
    raw = frame.reset_index(drop=True)
    transformed, failures = apply_transforms(raw, spec)
    return Transformed(raw, transformed, failures)


@cache
def _expression(name: str, expr: str) -> DeriveExpression:
    return DeriveExpression(name, expr)


# ---- a converted chunk as Arrow (the staging files' types) --------------------------------------------


def _column_to_arrow(series: pd.Series, column: ColumnSpec) -> pa.Array:
    kind = column.type
    if kind == "timestamptz":
        series = pd.to_datetime(series, utc=True)
    elif kind == "timestamp":
        series = pd.to_datetime(series, utc=True).dt.tz_convert(None)
    elif kind == "json":
        # stored normalized (sorted keys, literal unicode, numbers as written): see driftless.canonical
        series = series.map(lambda v: None if v is None or v is pd.NA else normalized_json(v))
    return pa.array(series, type=arrow_type(kind), from_pandas=True)


def frame_to_arrow(frame: pd.DataFrame, spec: PipelineSpec, ready: dict[str, pa.Array] | None = None) -> pa.Table:
    """A chunk as an Arrow table with exactly the spec's column types; names the column that does not fit.

    ``ready``: columns already in Arrow (the same values as the frame's, of the column's Arrow type), used as
    they are instead of converting the frame's column.
    """
    arrays = []
    for column in spec.columns:
        if ready and column.name in ready:
            arrays.append(ready[column.name])
            continue
        try:
            arrays.append(_column_to_arrow(frame[column.name], column))
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            sample = frame[column.name].dropna().head(3).tolist()
            raise SourceError(
                f"pipeline {spec.name!r}: column {column.name!r} does not fit type {column.type!r} "
                f"({exc}); first values: {sample!r}"
            ) from exc
    return pa.Table.from_arrays(arrays, schema=arrow_schema(spec))
