"""A minimal JSON path for picking values out of a response body: ``$``, ``$.data.items``, ``results[0].id``.

Hand-written on purpose: selectors in specs only ever walk keys and list indexes, and a full JSONPath
library (filters, wildcards, recursive descent) would add a dependency for syntax no spec needs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

MISSING = object()
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@lru_cache(maxsize=256)
def parse_path(path: str) -> tuple[str | int, ...]:
    """``"$.data[0].id"`` -> ``("data", 0, "id")``; raises ``ValueError`` on malformed paths."""
    text = path.strip()
    if text in ("", "$"):
        return ()
    text = text.removeprefix("$").removeprefix(".")
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "." and pos > 0:
            pos += 1
        m = _PART.match(text, pos)
        if not m:
            raise ValueError(f"{path!r} is not a JSON path (expected e.g. '$', 'data', 'data.items' or 'data[0].id')")
        parts.append(int(m[2]) if m[2] is not None else m[1])
        pos = m.end()
    return tuple(parts)


def select(document: Any, path: str, default: Any = MISSING) -> Any:
    """The value at ``path`` in ``document``; ``default`` (or ``MISSING``) when some step does not exist."""
    value = document
    for part in parse_path(path):
        if isinstance(part, int):
            if not isinstance(value, list) or part >= len(value):
                return default
            value = value[part]
        else:
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
    return value
