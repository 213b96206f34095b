"""A hostile source: loosely typed text columns full of messy values, on SQLite, PostgreSQL and MariaDB.

Property: for every window, every source row in the window ends in exactly one place: loaded with exactly
its converted value, quarantined with a reason naming the column, or deduplicated (an older row of the
same key). Nothing outside the window is read, nothing raises anything but a driftless error. Rows with a
NULL cursor follow the declared ``null_cursor`` policy (fail: the window fails and writes nothing;
every_window: they are part of the window; skip: left out and counted by a WARN check). A window that
rejects more than ``max_reject_ratio`` (default 0.01), or rejects rows and would load none, fails, writes
nothing and is never recorded as a success.

The oracle is written here, independently of ``driftless.extract.transform``: each generated value comes with the value
it must load as (or ``BAD``), from hand-written catalogues of awkward values and from generators whose
expected value is obvious (an integer's text is that integer).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import URL, create_engine, inspect, text

from driftless.errors import SourceError, ValidationFailed
from driftless.pipeline import run_window
from driftless.spec import parse_spec
from driftless.window import Window

WINDOW = Window.parse("2025-01-01", "2025-01-16")
BAD = object()

AMOUNT = [  # text -> numeric(12,2)
    ("12.50", Decimal("12.50")), (" 7 ", Decimal("7.00")), ("-0.5", Decimal("-0.50")), ("1e2", Decimal("100.00")),
    ("9999999999.99", Decimal("9999999999.99")), ("+3", Decimal("3.00")),
    ("1,234.50", BAD), ("1.234", BAD), ("NaN", BAD), ("Infinity", BAD), ("-inf", BAD), ("abc", BAD), ("", BAD),
    ("1_000", BAD), ("12 34", BAD), ("99999999999.00", BAD), ("٣", BAD), ("0x10", BAD), ("1.2.3", BAD),
]
RATIO = [  # text -> double
    ("0.25", 0.25), ("1e3", 1000.0), ("-0.5", -0.5), ("  3 ", 3.0), ("1e-7", 1e-7), ("0.1", 0.1),
    ("NaN", BAD), ("Infinity", BAD), ("1,5", BAD), ("abc", BAD), ("", BAD), ("0x10", BAD), ("1e400", BAD),
]
QTY = [  # text -> integer
    ("42", 42), ("-7", -7), ("12.0", 12), ("1e3", 1000), ("2147483647", 2147483647),
    ("2.5", BAD), ("2147483648", BAD), ("NaN", BAD), ("1,000", BAD), ("", BAD), ("abc", BAD), ("٣", BAD),
    ("true", BAD),
]
DAY = [  # text -> date
    ("2025-01-05", date(2025, 1, 5)), ("2024-02-29", date(2024, 2, 29)), ("2025-01-06T00:00:00", date(2025, 1, 6)),
    ("05/03/2025", BAD), ("05.03.2025", BAD), ("15.03.2025", BAD), ("2025-02-30", BAD), ("2023-02-29", BAD),
    ("2025-03", BAD), ("20250305", BAD), ("", BAD), ("2025-01-06T10:00:00", BAD), ("March 5, 2025", BAD),
]
AT = [  # text -> timestamptz
    ("2025-03-05T10:00:00Z", datetime(2025, 3, 5, 10, tzinfo=UTC)),
    ("2025-03-05 10:00:00+02:00", datetime(2025, 3, 5, 8, tzinfo=UTC)),
    ("2025-03-05T10:00:00.123456", datetime(2025, 3, 5, 10, 0, 0, 123456, tzinfo=UTC)),
    ("2025-03-05T10:00:00.1234567Z", BAD), ("05/03/2025 10:00", BAD), ("1700000000", BAD), ("", BAD),
    ("2025-13-01T00:00:00", BAD), ("2025-03-05T25:00:00", BAD),
]
LABEL_LENGTH = 12
DOC = [  # text -> json (compared as parsed JSON: key order, spacing and number form do not matter)
    ('{"b": 2.50, "a": [1, 1e2]}', {"a": [1, 100], "b": Decimal("2.5")}),
    ('{"a":"\\u00e9t\\u00e9","z":null}', {"a": "été", "z": None}),
    ('[{"y": true}, "🐍", -0.0]', [{"y": True}, "🐍", Decimal("0")]),
    ("{oops", BAD), ("NaN", BAD), ("{'a': 1}", BAD), ("", BAD), ('{"a": Infinity}', BAD),
]

COLUMNS = ["amount", "ratio", "qty", "day", "at", "label", "doc"]


def _catalogue(pairs):
    return st.sampled_from(pairs)


def _label(nul_ok: bool):
    alphabet = st.characters(blacklist_categories=("Cs",), blacklist_characters="" if nul_ok else "\x00")
    combining = st.sampled_from(["e\u0301", "n\u0303", "👩‍👩‍👧", "🇳🇴", "ß", " ", "'", "\\", "\t", "\\N"])
    text_value = st.lists(st.one_of(alphabet, combining), max_size=8).map("".join)
    return text_value.map(lambda v: (v, v if len(v) <= LABEL_LENGTH and "\x00" not in v else BAD))


def _json_docs():
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=5),
                     st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False))
    tree = st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                     st.dictionaries(st.text(max_size=4), kids, max_size=3)),
                        max_leaves=6)

    def dumped(value, indent, sort):
        raw = json.dumps(value, default=str, indent=indent, sort_keys=sort, ensure_ascii=sort)
        # decimals were dumped as strings by default=str: write them back as JSON numbers
        return raw, json.loads(raw, parse_float=Decimal)

    return st.builds(dumped, tree, st.sampled_from([None, 1]), st.booleans())


def values(nul_ok: bool, hostile: bool) -> dict[str, st.SearchStrategy]:
    """Per column: NULL, a catalogue value (any, or only the good ones), or a generated good value."""
    null = st.just((None, None))

    def pick(pairs):
        return _catalogue(pairs if hostile else [p for p in pairs if p[1] is not BAD])

    return {
        "amount": st.one_of(null, pick(AMOUNT),
                            st.decimals(min_value=-10**6, max_value=10**6, places=2, allow_nan=False).map(
                                lambda d: (str(d), d))),
        "ratio": st.one_of(null, pick(RATIO), st.floats(allow_nan=False, allow_infinity=False).map(
            lambda f: (repr(f), f))),
        "qty": st.one_of(null, pick(QTY), st.integers(-(2**31), 2**31 - 1).map(lambda i: (str(i), i))),
        "day": st.one_of(null, pick(DAY), st.dates(date(1, 1, 1), date(9999, 12, 31)).map(
            lambda d: (d.isoformat(), d))),
        "at": st.one_of(null, pick(AT), st.datetimes(
            datetime(1900, 1, 2), datetime(2100, 1, 1),
            timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]),
        ).map(lambda d: (d.isoformat(), d.astimezone(UTC)))),
        "label": st.one_of(null, _label(nul_ok) if hostile else _label(nul_ok).filter(lambda p: p[1] is not BAD)),
        "doc": st.one_of(null, pick(DOC), _json_docs()),
    }


def _with_cursors(rows: list[dict], minutes: list[int], nulls: list[bool]) -> list[dict]:
    out, null_ids = [], set()
    for r, m, null in zip(rows, minutes, nulls, strict=False):
        # At most one NULL-cursor row per key: two would tie in the dedup order, and their arrival order is the
        # database's (ORDER BY cursor cannot order them), so no oracle could know which one wins.
        null = null and r["id"] not in null_ids
        if null:
            null_ids.add(r["id"])
        out.append({**r, "updated_at": None if null else datetime(2024, 12, 28) + timedelta(minutes=m)})
    return out


def rows_strategy(nul_ok: bool):
    key = st.integers(1, 8)  # few keys: duplicates within a window are common
    clean = st.fixed_dictionaries({"id": key, **values(nul_ok, hostile=False)})
    hostile = st.fixed_dictionaries({"id": key, **values(nul_ok, hostile=True)})
    row = st.integers(0, 9).flatmap(lambda i: hostile if i < 3 else clean)  # about 3 in 10 rows are hostile
    # Distinct cursor values (minutes from 2024-12-28), some outside the window on either side; ~4% NULL.
    minutes = st.lists(st.integers(0, 30 * 24 * 60), min_size=25, max_size=25, unique=True)
    nulls = st.lists(st.integers(0, 24).map(lambda i: i == 0), min_size=25, max_size=25)
    return st.builds(_with_cursors, st.lists(row, min_size=6, max_size=25), minutes, nulls)


def spec_for(name: str, null_cursor: str, max_reject_ratio: float | None) -> Any:
    return parse_spec({
        "name": name, "chunk_size": 7,
        **({} if max_reject_ratio is None else {"max_reject_ratio": max_reject_ratio}),
        "source": {"type": "sql", "connection": "src", "table": name, "primary_key": ["id"], "cursor": "updated_at",
                   "null_cursor": null_cursor},
        "target": {"connection": "wh", "table": name},
        "columns": [
            {"name": "id", "type": "integer", "nullable": False},
            {"name": "amount", "type": "numeric(12,2)"},
            {"name": "ratio", "type": "double"},
            {"name": "qty", "type": "integer"},
            {"name": "day", "type": "date"},
            {"name": "at", "type": "timestamptz"},
            {"name": "label", "type": f"varchar({LABEL_LENGTH})"},
            {"name": "doc", "type": "json"},
            {"name": "updated_at", "type": "timestamp"},
        ],
    }, f"{name}.yaml")


def create_source(url: URL, name: str, rows: list[dict]) -> None:
    dialect = url.get_backend_name()
    stamp = {"postgresql": "timestamp", "mysql": "DATETIME(6)"}.get(dialect, "TEXT")
    engine = create_engine(url)
    with engine.begin() as conn:
        # No primary key in the source: a key may repeat within a window (a log table, a view).
        conn.execute(text(f"CREATE TABLE {name} (id integer NOT NULL, amount text, ratio text, qty text, day text, "
                          f"at text, label text, doc text, updated_at {stamp})"))
        conn.execute(text(f"INSERT INTO {name} VALUES (:id, :amount, :ratio, :qty, :day, :at, :label, :doc, "
                          ":updated_at)"),
                     [{"id": r["id"], **{c: r[c][0] for c in COLUMNS},
                       "updated_at": r["updated_at"] if dialect != "sqlite" or r["updated_at"] is None
                       else r["updated_at"].isoformat(sep=" ")}
                      for r in rows])
    engine.dispose()


def expected_outcome(rows: list[dict], null_cursor: str) -> tuple[dict, dict, int]:
    """(loaded: id -> values, quarantined: id -> bad columns, deduplicated count) for the window."""
    start, end = WINDOW.start.replace(tzinfo=None), WINDOW.end.replace(tzinfo=None)
    in_window = [r for r in rows if r["updated_at"] is not None and start <= r["updated_at"] < end]
    if null_cursor == "every_window":
        in_window += [r for r in rows if r["updated_at"] is None]
    latest: dict[int, dict] = {}
    for r in sorted(in_window, key=lambda r: (r["updated_at"] is not None, r["updated_at"] or datetime.min)):
        latest[r["id"]] = r  # the latest cursor wins; a NULL cursor is older than any
    loaded, quarantined = {}, {}
    for ident, r in latest.items():
        bad = {c for c in COLUMNS if r[c][1] is BAD}
        if bad:
            quarantined[ident] = bad
        else:
            loaded[ident] = {c: r[c][1] for c in COLUMNS}
    return loaded, quarantined, len(in_window) - len(latest)


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalized(row: Any) -> dict[str, Any]:
    doc = None if row.doc is None else json.loads(row.doc, parse_float=Decimal)  # selected as text
    return {
        "amount": None if row.amount is None else Decimal(str(row.amount)),
        "ratio": row.ratio,
        "qty": row.qty,
        "day": None if row.day is None else date.fromisoformat(str(row.day)[:10]),
        "at": _as_utc(row.at),
        "label": row.label,
        "doc": doc,
    }


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | Decimal) and isinstance(b, int | Decimal):
        return Decimal(a) == Decimal(b)
    return a == b


def _target_state(url: URL, name: str) -> tuple[int, int, list[str]]:
    """(rows in the target table, quarantine entries, run statuses) of one pipeline; 0 where a table is absent."""
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one() if name in tables else 0
        entries = conn.execute(text("SELECT count(*) FROM etl_quarantine WHERE pipeline = :p"), {"p": name}
                               ).scalar_one() if "etl_quarantine" in tables else 0
        runs = [r for (r,) in conn.execute(text("SELECT status FROM etl_runs WHERE pipeline = :p"), {"p": name})
                ] if "etl_runs" in tables else []
    engine.dispose()
    return rows, entries, runs


def check_window(source_url: URL, target_url: URL, rows: list[dict], null_cursor: str,
                 max_reject_ratio: float | None) -> None:
    name = f"hs_{uuid.uuid4().hex[:8]}"
    create_source(source_url, name, rows)
    spec = spec_for(name, null_cursor, max_reject_ratio)
    nulls = sum(1 for r in rows if r["updated_at"] is None)
    loaded, quarantined, deduplicated = expected_outcome(rows, null_cursor)
    extracted = len(loaded) + len(quarantined) + deduplicated
    limit = spec.max_reject_ratio
    refused = null_cursor == "fail" and nulls > 0
    rejected_too_much = bool(quarantined) and (not loaded or len(quarantined) / extracted > limit)
    event("outcome: " + ("NULL cursors refused" if refused else "rejected too much" if rejected_too_much
                         else "loaded"))
    event(f"null_cursor {null_cursor}, {'with' if nulls else 'no'} NULL cursors")
    if refused or rejected_too_much:
        # The window fails loudly with a driftless error (a message, no traceback) and writes nothing.
        with pytest.raises(SourceError if refused else ValidationFailed) as failed:
            run_window(spec, WINDOW)
        assert ("NULL cursor" in str(failed.value)) if refused else ("failed validation" in str(failed.value))
        table_rows, entries, runs = _target_state(target_url, name)
        assert (table_rows, entries) == (0, 0) and "success" not in runs and "failed" in runs
        return
    event(f"{'some' if quarantined else 'no'} rows quarantined, {'some' if deduplicated else 'no'} deduplicated")
    result = run_window(spec, WINDOW)  # any exception fails the property
    assert result.status == "success"
    assert (result.extracted, result.loaded, result.quarantined, result.deduplicated) == (
        extracted, len(loaded), len(quarantined), deduplicated)
    checks = {c["check"]: c for c in result.checks}
    assert checks["quarantined"]["status"] == ("WARN" if quarantined else "PASS")
    if nulls and null_cursor != "fail":
        held = checks["null_cursor_rows"]
        assert (held["source"], held["status"]) == (nulls, "PASS" if null_cursor == "every_window" else "WARN")
    engine = create_engine(target_url)
    with engine.connect() as conn:
        # JSON as its text: a driver that decodes JSON (psycopg, jsonb) would hand over the JSON string "0.00" as
        # the Python text 0.00, indistinguishable from the JSON number 0.00
        as_text = "CHAR" if target_url.get_backend_name() == "mysql" else "TEXT"
        got = {r.id: normalized(r) for r in conn.execute(text(
            f"SELECT id, amount, ratio, qty, day, at, label, CAST(doc AS {as_text}) AS doc FROM {name}"))}
        entries = conn.execute(text("SELECT record_key, errors FROM etl_quarantine WHERE pipeline = :p"),
                               {"p": name}).all()
    engine.dispose()
    assert sorted(got) == sorted(loaded)
    for ident, want in loaded.items():
        have = got[ident]
        for column in COLUMNS:
            if column == "doc":
                assert _json_equal(have["doc"], want["doc"]), (ident, have["doc"], want["doc"])
            else:
                assert have[column] == want[column], (ident, column, have[column], want[column])
    named = {json.loads(key)[0]: {e["column"] for e in json.loads(errors)} for key, errors in entries}
    assert named == quarantined
    for _, errors in entries:
        assert all(e["column"] and e["check"] and e["message"] for e in json.loads(errors))


# Examples per dialect pair; DRIFTLESS_HOSTILE_EXAMPLES=300 for a long local run.
EXAMPLES = int(os.environ.get("DRIFTLESS_HOSTILE_EXAMPLES", "20"))
PAIRS = [("sqlite", "postgresql"), ("postgresql", "mariadb"), ("mariadb", "sqlite")]


def database(request, dialect: str, tmp_path, role: str) -> URL:
    if dialect == "sqlite":
        return URL.create("sqlite", database=str(tmp_path / f"{role}.db"))
    if dialect == "postgresql":
        return request.getfixturevalue("pg_databases")()
    if role == "source":
        return request.getfixturevalue("mariadb_url")
    raise AssertionError("one MariaDB database per test")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{s}-to-{t}" for s, t in PAIRS])
def test_every_row_of_a_hostile_window_is_loaded_exactly_quarantined_or_deduplicated(
        request, tmp_path, connections, source, target):
    if target == "mariadb":
        target_url = request.getfixturevalue("mariadb_url")
        source_url = database(request, source, tmp_path, "source")
    else:
        source_url = database(request, source, tmp_path, "source")
        target_url = database(request, target, tmp_path, "target")
    connections(src=source_url, wh=target_url)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rows=rows_strategy(nul_ok=source == "sqlite"),
           null_cursor=st.sampled_from(["fail", "every_window", "skip"]),
           max_reject_ratio=st.sampled_from([None, 0.5, 1, 1]))
    def prop(rows, null_cursor, max_reject_ratio):
        check_window(source_url, target_url, rows, null_cursor, max_reject_ratio)

    prop()
