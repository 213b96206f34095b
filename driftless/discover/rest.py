"""``etl discover API --rest --endpoint /v1/customers --target WH``: a spec for a REST endpoint from one sampled page.

One request (the connection's auth, the spec defaults for retries and timeouts) fetches a page; from it:

* **records**: ``--records PATH``, else the body itself when it is a list, else the first list of objects
  under a common key (``data``, ``results``, ``items``, ``records``, ...), searched two levels deep.
* **columns**: every top-level field of the sampled records, typed by its values (``infer_type``): all
  booleans -> boolean, all whole numbers -> bigint, numbers with fractions -> double (DECIDE: numeric(p,s)
  for money), ISO timestamps with a zone -> timestamptz, without -> timestamp, ``YYYY-MM-DD`` -> date,
  objects and lists -> json, other text -> text, mixed -> text (DECIDE). A sample cannot prove NOT NULL, so
  only the key is declared ``nullable: false``. Field names keep their spelling in ``source:``; nested
  fields can be picked by path (``source: metadata.store_id``), which the comment of a json column lists.
* **key**: ``id``, else a field ending in ``id`` whose sampled values are unique and never null.
* **cursor**: a timestamp field by name (``updated_at``, ``modified*``, ...; ``created*`` with a DECIDE note).
* **paginator** (``guess_paginator``): a ``Link: rel="next"`` header -> link_header; a next-page URL in the
  body -> next_url; ``has_more`` -> cursor (the key as cursor field); a next cursor in the body -> cursor
  with ``cursor_path``; ``total_pages`` -> page_number; ``total`` with offset/limit -> offset; otherwise
  single_page (DECIDE). The comment says what was seen.
* **windows**: the sample says nothing about how the API filters by time, so the spec sets
  ``filter_by_cursor: true`` (each window reads the pages and keeps its own records) with a DECIDE comment
  on passing ``{start}``/``{end}`` as query parameters instead.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import requests

from driftless.connections import connection_fields
from driftless.discover.sql import NAMING_RULE, DiscoverResult, TablePlan, _unique_names, _write, _y, snake_name
from driftless.errors import DriftlessError
from driftless.extract.validate import check_code
from driftless.sources.rest.client import RestClient
from driftless.sources.rest.jsonpath import MISSING, select
from driftless.sources.rest.spec import RestSourceSpec

_ISO_ZONED = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d{1,6})?)?(Z|[+-]\d\d(:?\d\d)?)$")
_ISO_NAIVE = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d{1,6})?)?$")
_DATE = re.compile(r"^\d{4}-\d\d-\d\d$")
RECORD_KEYS = ("data", "results", "items", "records", "rows", "entries", "values", "objects")
_CURSOR_NAMES = [(re.compile(r"^(updated|modified|changed|last_?(updated|modified|update|change))", re.I), ""),
                 (re.compile(r"^(created|inserted)", re.I), "DECIDE: it marks when a record was created, so records "
                  "changed later are not read again; prefer a last-change time if the API has one")]


def infer_type(values: list[Any]) -> tuple[str, str | None]:
    """The spec type for a field's sampled values (None and missing ignored), and a note when one is due."""
    present = [v for v in values if v is not None]
    if not present:
        return "text", "DECIDE: null in every sampled record; text until you know better"
    kinds = {type(v) for v in present}
    if kinds == {bool}:
        return "boolean", None
    if kinds <= {int}:
        return "bigint", None
    if kinds <= {int, float}:
        return "double", "DECIDE: numbers with fractions: double; declare numeric(p,s) for amounts of money"
    if kinds <= {dict, list}:
        return "json", None
    if kinds == {str}:
        if all(_ISO_ZONED.match(v) for v in present):
            return "timestamptz", None
        if all(_ISO_NAIVE.match(v) for v in present):
            return "timestamp", "no time zone in the values: taken as UTC"
        if all(_DATE.match(v) for v in present):
            return "date", None
        return "text", None
    return "text", f"DECIDE: mixed values ({', '.join(sorted(k.__name__ for k in kinds))}); text"


def find_records(body: Any, path: str | None) -> tuple[str, list[Any]]:
    """The records' JSON path and list (see the module docstring)."""
    if path:
        found = select(body, path)
        if not isinstance(found, list):
            held = type(found).__name__ if found is not MISSING else "nothing"
            raise DriftlessError(f"--records: {path!r} holds {held} in the sampled body, expected a list of records")
        return path, found
    if isinstance(body, list):
        return "$", body
    if isinstance(body, dict):
        for key in [*RECORD_KEYS, *body]:
            value = body.get(key)
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                return key, value
            if isinstance(value, dict):
                for inner in [*RECORD_KEYS, *value]:
                    nested = value.get(inner)
                    if isinstance(nested, list) and nested and all(isinstance(v, dict) for v in nested):
                        return f"{key}.{inner}", nested
    raise DriftlessError("no list of records found in the sampled body (expected a list, or one under data, results, "
                         "items, ...); give --records PATH")


def _first(body: Any, paths: list[str]) -> tuple[str, Any] | None:
    for path in paths:
        value = select(body, path) if isinstance(body, dict) else MISSING
        if value is not MISSING:
            return path, value
    return None


def guess_paginator(response: requests.Response, body: Any, records: list[Any], key_field: str | None
                    ) -> tuple[dict[str, Any], str]:
    """A paginator for what the sampled page shows, and the comment saying what was seen."""
    if response.links.get("next"):
        return {"type": "link_header"}, "the response has a Link header with rel=\"next\""
    next_url = _first(body, ["next", "next_url", "links.next", "paging.next", "_links.next.href", "meta.next"])
    if next_url and (next_url[1] is None or (isinstance(next_url[1], str) and "://" in next_url[1])):
        return {"type": "next_url", "next_url_path": next_url[0]}, f"the body has a next-page URL at {next_url[0]}"
    has_more = _first(body, ["has_more", "meta.has_more", "hasMore"])
    cursor = _first(body, ["next_cursor", "meta.next_cursor", "cursor", "meta.cursor", "nextCursor"])
    if cursor is not None:
        spec: dict[str, Any] = {"type": "cursor", "cursor_path": cursor[0], "has_more_path": has_more[0] if has_more
                                else None}
        return spec, (f"the body has a next cursor at {cursor[0]}"
                      + ("" if has_more else "; DECIDE: cursor_param (how the API takes it) is a guess"))
    if has_more is not None:
        spec = {"type": "cursor", "has_more_path": has_more[0]}
        if key_field and key_field != "id":
            spec["cursor_field"] = key_field
        return spec, (f"the body has {has_more[0]}: the last record's key is sent as starting_after; DECIDE: "
                      "cursor_param if the API names it otherwise")
    pages = _first(body, ["total_pages", "meta.total_pages", "pages", "meta.pages", "totalPages"])
    if pages is not None:
        return {"type": "page_number", "total_pages_path": pages[0]}, f"the body has {pages[0]}"
    total = _first(body, ["total", "meta.total", "count", "total_count", "totalCount"])
    if total is not None:
        return ({"type": "offset", "limit": max(len(records), 1), "total_path": total[0]},
                f"the body has a total at {total[0]}: offset/limit pages; DECIDE: offset_param and limit_param "
                "if the API names them otherwise")
    return {"type": "single_page"}, ("DECIDE: the sampled page shows no way to the next one (no Link header, next "
                                     "URL, cursor, has_more or total): one page per window")


def _cursor_choice(columns: list[tuple[str, str, str, str | None]]) -> tuple[str | None, str]:
    stamps = [c for c in columns if c[2] in ("timestamp", "timestamptz", "date")]
    for pattern, note in _CURSOR_NAMES:
        for c in stamps:
            if pattern.search(c[1]):
                others = [o[0] for o in stamps if o is not c]
                why = note or "its name says it changes when a record changes"
                return c[0], f"cursor {c[0]}: {why}" + (f"; alternatives: {', '.join(others)}" if others else "")
    if stamps:
        return stamps[0][0], (f"cursor {stamps[0][0]}: DECIDE: no field is named like a last-change time; this one "
                              "is a guess" + (f"; alternatives: {', '.join(o[0] for o in stamps[1:])}"
                                             if stamps[1:] else ""))
    return None, ""


def discover_rest(api_conn: str, endpoint: str, target_conn: str, out_dir: Path, records_path: str | None = None,
                  name: str | None = None, schedule: str = "@daily", target_schema: str | None = None,
                  force: bool = False, out: TextIO | None = None) -> DiscoverResult:
    """Sample one page of ``endpoint`` and write a spec for it (see the module docstring)."""
    out = out or sys.stdout
    probe = RestSourceSpec.model_validate({"type": "rest", "connection": api_conn, "endpoint": endpoint,
                                           "primary_key": ["id"], "cursor": "id",
                                           "retries": {"max_attempts": 2}})
    client = RestClient(probe, connection_fields(api_conn))
    response = client.request(client.url, {})
    try:
        body = response.json()
    except ValueError as exc:
        raise DriftlessError(f"{client.redact.url(response.url)}: the sampled page is not JSON") from exc
    path, records = find_records(body, records_path)
    records = [r for r in records if isinstance(r, dict)]
    if not records:
        raise DriftlessError(f"{client.redact.url(response.url)}: the sampled page has no records at {path!r}; "
                             "discover needs at least one to propose columns")
    fields: list[str] = []
    for record in records:
        fields += [k for k in record if k not in fields]
    targets = _unique_names([snake_name(f) for f in fields])
    columns = []  # (target, source, type, note)
    for field, target in zip(fields, targets, strict=True):
        kind, note = infer_type([r.get(field) for r in records])
        if kind == "json":
            nested = sorted({f"{field}.{k}" for r in records if isinstance(r.get(field), dict) for k in r[field]})
            if nested:
                note = f"or pick fields by path, e.g. source: {nested[0]}" + (f" ({len(nested)} nested fields)"
                                                                               if len(nested) > 1 else "")
        columns.append((target, field, kind, note))
    pipeline = snake_name(name or f"{api_conn}_{endpoint.strip('/').rsplit('/', 1)[-1] or 'records'}")
    plan = TablePlan(endpoint, None, pipeline)
    key = next((c for c in columns if c[1] == "id"), None) or next(
        (c for c in columns if re.search(r"id$", c[1], re.I) and c[2] in ("bigint", "text")
         and len({str(r.get(c[1])) for r in records}) == len(records) and all(r.get(c[1]) is not None
                                                                              for r in records)), None)
    if key is None:
        plan.problems.append("no field looks like a key (id, or a field ending in id with unique values): name the "
                             "field(s) that identify a record in source.primary_key")
    cursor, cursor_note = _cursor_choice(columns)
    if cursor is None:
        plan.problems.append("no timestamp field to place records in windows: name one in source.cursor (with "
                             "`format:` on its column if it is not ISO 8601)")
    paginator, paginator_note = guess_paginator(response, body, records, key[1] if key else None)
    cursor_field = next((c[1] for c in columns if c[0] == cursor), None)
    nulls = sum(1 for r in records if cursor_field and r.get(cursor_field) is None)
    stamps = []
    for r in records:
        try:
            stamps.append(datetime.fromisoformat(str(r.get(cursor_field)).replace("Z", "+00:00")).date())
        except ValueError:
            pass
    start = min(stamps) if stamps else datetime.now(UTC).date()
    label = f"{api_conn} {endpoint}"
    lines = [f"# Discovered by `etl discover {api_conn} --rest --endpoint {endpoint} --target {target_conn}` from one "
             f"sampled page ({len(records)} record(s)).",
             "# Lines marked DECIDE need a person; re-running discover shows what changed and never overwrites "
             "this file without --force."]
    lines += [f"# TO DO before this spec can run: {p}" for p in plan.problems]
    lines += [f"name: {pipeline}", f"description: {_y(f'{label}, discovered')}",
              f"schedule: {_y(schedule)}",
              f"start_date: {start}  # DECIDE: the oldest cursor value of the sampled page; the first run reads "
              "from here, so set it earlier if the API holds older records",
              "source:", "  type: rest", f"  connection: {api_conn}", f"  endpoint: {_y(endpoint)}",
              f"  records: {_y(path)}",
              f"  paginator: {_y(paginator)}  # {paginator_note}",
              f"  primary_key: {_y([key[0]] if key else [])}",
              f"  cursor: {_y(cursor) if cursor else 'null'}  # {cursor_note or 'DECIDE: none found'}",
              "  filter_by_cursor: true  # DECIDE: each window reads every page and keeps its records; if the API "
              "filters by time, pass the window as params (e.g. updated_since: '{start}', updated_before: '{end}')"]
    if nulls:
        lines.append(f"  null_cursor: every_window  # {nulls} sampled record(s) have no cursor value")
    lines += ["target:", f"  connection: {target_conn}", f"  table: {pipeline}"]
    if target_schema:
        lines.append(f"  schema: {target_schema}")
    lines += ["  write_mode: upsert", f"columns:  # {NAMING_RULE}"]
    for target, source, kind, note in columns:
        parts = [f"name: {target}"] + ([f"source: {_y(source)}"] if source != target else []) + [f"type: {_y(kind)}"]
        if key and target == key[0]:
            parts.append("nullable: false")
        lines.append(f"  - {{{', '.join(parts)}}}" + (f"  # {note}" if note else ""))
    result = DiscoverResult()
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(plan, "\n".join(lines) + "\n", out_dir, force, result, out, check_code)
    return result
