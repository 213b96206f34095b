r"""Canonical texts of JSON documents and floating-point numbers: what the deep diff compares.

Each database prints a JSON document and a float its own way (key order, spacing, ``2.50`` vs
``2.5``, ``\u00e9`` vs ``é``, ``1e-07`` vs ``1e-7``). The deep diff compares one canonical text
per value instead (``driftless.reconcile.dialects`` makes every database produce exactly these texts in
SQL; the functions here are their Python twins, used by SQLite and to check a row the SQL flagged):

* **number** (JSON numbers and floats): its exact decimal value in normalized scientific notation,
  ``[-]D.DDDE[-]N``: one non-zero digit before the point, the other significant digits after it
  (at least one, ``0`` if none), no trailing zeros, the exponent without ``+`` or leading zeros.
  ``2.50``, ``2.5`` and ``25e-1`` are ``2.5E0``; ``100`` and ``1e2`` are ``1.0E2``; zero (also
  ``-0``) is ``0.0E0``. Not rounded: ``12345678901234567890`` is ``1.234567890123456789E19``.
* **double** (8-byte float): the shortest decimal that reads back as the same double (what
  Python's ``repr`` prints), as a number above: ``0.1`` is ``1.0E-1``, ``1e300`` is ``1.0E300``.
  ``NaN``, ``Infinity`` and ``-Infinity`` are those words.
* **float** (4-byte float): the value rounded to the nearest 4-byte float, then as a double:
  ``0.1`` is ``1.0000000149011612E-1`` whether a database kept it in 4 or 8 bytes.
* **JSON**: no insignificant whitespace; object keys sorted by their Unicode code points (= UTF-8
  bytes); of a repeated key the last value; strings with every character literal except ``"``,
  ``\`` and the control characters below U+0020 (``\b \f \n \r \t``, others ``\u00XX``);
  numbers as above; ``true``, ``false``, ``null``. A text that is not valid JSON is compared as is.

The loader stores JSON in a *normalized* form (``normalized_json``): sorted keys, no whitespace,
literal unicode, but numbers exactly as written (``2.50`` stays ``2.50``), so that what a user
reads back is their data, and MariaDB (whose ``JSON_NORMALIZE`` keeps string escapes as written)
produces the canonical text from it in SQL.
"""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal
from typing import Any


class _Number(str):
    """A JSON number token, exactly as written."""


def canonical_number(token: str | int | float | Decimal) -> str:
    """The canonical text of a number (see the module docstring); ``token`` as written or a number."""
    if isinstance(token, float):
        return str(canonical_double(token))
    d = Decimal(token) if not isinstance(token, Decimal) else token
    if not d.is_finite():
        return "NaN" if d.is_nan() else ("-Infinity" if d < 0 else "Infinity")
    sign, digits, exponent = d.as_tuple()
    significant = "".join(map(str, digits)).lstrip("0")
    if not significant:
        return "0.0E0"
    power = len(significant) - 1 + int(exponent)
    mantissa = significant.rstrip("0")
    return f"{'-' if sign else ''}{mantissa[0]}.{mantissa[1:] or '0'}E{power}"


def canonical_double(value: Any) -> str | None:
    """The canonical text of an 8-byte float (None stays None; a text that is no number stays as is)."""
    x = _as_float(value)
    if not isinstance(x, float):
        return x
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return canonical_number(Decimal(repr(x)))


def canonical_float32(value: Any) -> str | None:
    """The canonical text of a 4-byte float: rounded to the nearest 4-byte float, then as a double."""
    x = _as_float(value)
    if not isinstance(x, float) or not math.isfinite(x):
        return canonical_double(x)
    try:
        x = struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        x = math.inf if x > 0 else -math.inf
    return canonical_double(x)


def _as_float(value: Any) -> float | str | None:
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _reject(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")


def _parse(text: str, constants: Any) -> Any:
    return json.loads(text, parse_float=_Number, parse_int=_Number, parse_constant=constants)


def _write(value: Any, number: Any, out: list[str]) -> None:
    if isinstance(value, str):  # _Number is a str: test it first
        out.append(number(value) if isinstance(value, _Number) else json.dumps(value, ensure_ascii=False))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(json.dumps(str(key), ensure_ascii=False))
            out.append(":")
            _write(value[key], number, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, number, out)
        out.append("]")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int | float | Decimal):
        out.append(number(value))
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def canonical_json(value: Any) -> str | None:
    """The canonical text of a JSON document (text, or a number as SQLite may hold it); None stays None.

    A text that is not valid JSON comes back unchanged (it then equals only the same text).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    try:
        doc = _parse(text, _reject)
    except (ValueError, RecursionError):
        return text
    out: list[str] = []
    _write(doc, canonical_number, out)
    return "".join(out)


def _verbatim(number: Any) -> str:
    if isinstance(number, float):
        if not math.isfinite(number):
            raise ValueError(f"{number} is not a JSON number")
        return repr(number)
    return str(number)


def normalized_json(value: Any) -> Any:
    """The JSON text the loader stores: sorted keys, no whitespace, literal unicode, numbers as written.

    ``value`` is JSON text or a decoded value (dict, list, ...); None stays None. A text that does
    not parse is returned unchanged (validation decides about it, not this function).
    """
    if value is None:
        return None
    out: list[str] = []
    if isinstance(value, str):
        try:
            doc = _parse(value, _Number)
        except (ValueError, RecursionError):
            return value
        _write(doc, str, out)
    else:
        _write(value, _verbatim, out)
    return "".join(out)


def json_equal(a: str | None, b: str | None) -> bool:
    """Whether two JSON texts have the same canonical text."""
    return a == b or canonical_json(a) == canonical_json(b)


__all__ = ["canonical_double", "canonical_float32", "canonical_json", "canonical_number", "json_equal",
           "normalized_json"]
