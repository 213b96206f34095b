"""Loaders on real databases: every write mode on every dialect, re-runs, deletes, exact round trips."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pyarrow as pa
import pytest
from sqlalchemy import create_engine, text

import driftless.targets.postgres.load
from driftless.errors import LoadError, SpecError
from driftless.load.entry import load_rows
from driftless.pipeline import load_window
from driftless.schema import arrow_schema
from tests.loadkit import ALL, DAY1, DAY2, T0, order, orders_spec, read_target, stage_rows, state_of


def load(tmp_path, spec, window, rows, run_id="r", **kw):
    return load_window(spec, window, stage_rows(tmp_path, spec, window, rows, tag=run_id, **kw), run_id)


def test_upsert_rerun_and_changes(wh, tmp_path):
    spec = orders_spec()
    day1 = [order(i) for i in range(1, 301)]
    first = load(tmp_path, spec, DAY1, day1, "a", chunk=64)
    assert (first.loaded, first.written) == (300, 300)
    again = load(tmp_path, spec, DAY1, day1, "b", chunk=64)
    assert (again.loaded, again.written) == (300, 0)  # a re-run writes nothing
    # Day 2: 30 rows changed (one of them twice: the later version wins), 20 new.
    changed = [order(i, day=1, version=1) for i in range(1, 31)]
    twice = order(5, day=1, version=2, status="latest")
    new = [order(i, day=1) for i in range(301, 321)]
    result = load(tmp_path, spec, DAY2, [*changed, twice, *new], "c")
    assert result.written in (50, 51)  # SQLite applies the two versions of row 5 one after the other
    rows = read_target(wh, spec)
    assert len(rows) == 320
    assert rows[5]["status"] == "latest"
    assert rows[10] == order(10, day=1, version=1)
    assert rows[200] == order(200)
    watermark, runs = state_of(wh, spec)
    assert watermark == DAY2.end and runs == ["success"] * 3


def test_large_window_merge(wh, tmp_path, monkeypatch):
    """The large-window paths: PostgreSQL's unique-index check and MERGE (threshold lowered here), MariaDB
    skipping the insert when every staged key exists; with repeated keys, new keys and unchanged rows."""
    monkeypatch.setattr(driftless.targets.postgres.load, "INDEX_THRESHOLD", 50)
    spec = orders_spec()
    load(tmp_path, spec, DAY1, [order(i) for i in range(1, 201)], "a", chunk=64)
    # Every key exists, 20 rows changed (one of them to an empty note, one to a NULL note).
    day2 = [order(i, version=1, note="" if i == 10 else None if i == 20 else f"n{i}") if i % 10 == 0 else order(i)
            for i in range(1, 201)]
    assert load(tmp_path, spec, DAY2, day2, "b", chunk=64).written == 20
    expected = {r["id"]: r for r in day2}
    assert read_target(wh, spec) == expected
    # New keys beside existing ones, one existing key repeated (its later record wins).
    new = [order(i, day=1) for i in range(201, 231)]
    again = [*day2, *new, order(3, day=1, version=2)]
    assert load(tmp_path, spec, DAY2, again, "c", chunk=64).written == 31
    expected.update({r["id"]: r for r in new})
    expected[3] = order(3, day=1, version=2)
    assert read_target(wh, spec) == expected
    rerun = load(tmp_path, spec, DAY2, again, "d", chunk=64).written  # SQLite writes both records of key 3 again
    assert rerun == (2 if wh.get_backend_name() == "sqlite" else 0)
    assert read_target(wh, spec) == expected
    if wh.get_backend_name() == "postgresql":
        # Staged out of cursor order, the newer record (equal to the target) first: it still wins.
        schema = arrow_schema(spec)
        older, newer = order(3, day=1, version=1), expected[3]
        rows = [pa.Table.from_pylist([newer, *day2[100:]], schema=schema), pa.Table.from_pylist([older], schema=schema)]
        assert load_rows(spec, rows, window=DAY2).written == 0
        assert read_target(wh, spec)[3] == newer


def test_changes_a_collation_calls_equal_are_written(wh, tmp_path):
    """Letter case and trailing spaces are changes too, though MariaDB's default collations call them equal."""
    spec = orders_spec()
    load(tmp_path, spec, DAY1, [order(1, status="paid", note="x"), order(2, note="")], "a")
    changed = [order(1, status="PAID", note="x "), order(2, note=" ")]
    assert load(tmp_path, spec, DAY1, changed, "b").written == 2
    rows = read_target(wh, spec)
    assert (rows[1]["status"], rows[1]["note"], rows[2]["note"]) == ("PAID", "x ", " ")


def test_append_is_insert_only_and_idempotent(wh, tmp_path):
    spec = orders_spec(write_mode="append")
    day1 = [order(i) for i in range(1, 101)]
    assert load(tmp_path, spec, DAY1, day1, "a").written == 100
    assert load(tmp_path, spec, DAY1, day1, "b").written == 0
    # Changed versions of existing keys are ignored; new keys (first version of a duplicate) inserted.
    rows2 = [order(1, day=1, version=5), order(101, day=1, version=1), order(101, day=1, version=2)]
    assert load(tmp_path, spec, DAY2, rows2, "c").written == 1
    rows = read_target(wh, spec)
    assert len(rows) == 101
    assert rows[1] == order(1)
    assert rows[101] == order(101, day=1, version=1)


def test_replace_swaps_in_the_window(wh, tmp_path):
    spec = orders_spec(write_mode="replace")
    assert load(tmp_path, spec, DAY1, [order(i) for i in range(1, 101)], "a").written == 100
    day2 = [order(i, day=1, version=1) for i in range(50, 81)] + [order(60, day=1, version=3)]
    load(tmp_path, spec, DAY2, day2, "b")
    rows = read_target(wh, spec)
    assert sorted(rows) == list(range(50, 81))
    assert rows[60] == order(60, day=1, version=3)
    load(tmp_path, spec, DAY2, day2, "c")  # re-run: same table
    assert read_target(wh, spec) == rows
    assert state_of(wh, spec) == (DAY2.end, ["success"] * 3)


@pytest.mark.parametrize("deletes", ["soft", "hard"])
def test_delete_detection_on_full_refresh(wh, tmp_path, deletes):
    spec = orders_spec(deletes=deletes)
    everything = [order(i) for i in range(1, 51)]
    load(tmp_path, spec, ALL, everything, "a")
    # Rows 1..10 vanished from the source; a full-refresh window notices.
    remaining = everything[10:]
    result = load(tmp_path, spec, ALL, remaining, "b")
    assert result.written == 10
    rows = read_target(wh, spec)
    if deletes == "hard":
        assert sorted(rows) == list(range(11, 51))
    else:
        assert sorted(rows) == list(range(1, 51))
        gone = {i for i, r in rows.items() if r["_deleted_at"] is not None}
        assert gone == set(range(1, 11))
        assert rows[1]["_deleted_at"] == ALL.end  # deterministic: the window end (it lies in the past)
    assert load(tmp_path, spec, ALL, remaining, "c").written == 0  # re-run: nothing more to do
    # A window that does not cover row 20's cursor leaves it alone even though it is absent.
    load(tmp_path, spec, DAY2, [order(60, day=1)], "d")
    assert 20 in read_target(wh, spec)
    if deletes == "soft":  # a row that comes back is live again
        load(tmp_path, spec, ALL, [order(3, version=1), *remaining], "e")
        assert read_target(wh, spec)[3]["_deleted_at"] is None


@pytest.mark.parametrize("deletes", ["none", "hard"])
def test_source_delete_flag(wh, tmp_path, deletes):
    spec = orders_spec(delete_flag="is_deleted", deletes=deletes)
    load(tmp_path, spec, DAY1, [order(i) for i in range(1, 21)], "a")
    flagged = [order(i, day=1, version=1, is_deleted=True) for i in (2, 4)]
    load(tmp_path, spec, DAY2, flagged, "b")
    load(tmp_path, spec, DAY2, flagged, "c")  # re-run: same state
    rows = read_target(wh, spec)
    if deletes == "hard":
        assert sorted(rows) == [i for i in range(1, 21) if i not in (2, 4)]
    else:
        assert len(rows) == 20
        assert rows[2]["_deleted_at"] == flagged[0]["updated_at"]
        assert rows[2]["is_deleted"] is True
        assert rows[3]["_deleted_at"] is None


def test_write_mode_options_are_checked():
    with pytest.raises(SpecError, match="deletes.*needs write_mode 'upsert'"):
        orders_spec(write_mode="append", deletes="soft")
    with pytest.raises(SpecError, match="delete_flag.*boolean column"):
        orders_spec(delete_flag="status")
    with pytest.raises(SpecError, match="write_mode"):
        orders_spec(write_mode="merge")


TRICKY = [
    "",
    "tab\there, newline\nthere, cr\rhere",
    "back\\slash \\N \\t and \"quotes\", 'single', commas,,",
    "NULL",
    "\\N",
    "unicode: żółć 東京 🚀 \u00a0 \u200b",
    "x" * 300_000,  # large text
]


def test_values_round_trip_exactly(wh, tmp_path):
    spec = orders_spec()
    base = T0 + timedelta(microseconds=1)
    rows = []
    for i, note in enumerate([*TRICKY, None], start=1):
        rows.append(order(i, note=note, status=note if note is None or len(note) < 100 else "long",
                          amount=[Decimal("9999999999.99"), Decimal("-0.01"), Decimal("0.00"), None][i % 4],
                          created_at=[base, T0 + timedelta(microseconds=999_999), None][i % 3],
                          updated_at=base + timedelta(seconds=i, microseconds=i * 111_111 % 1_000_000),
                          qty=[None, -(2**31), 2**31 - 1][i % 3], currency=[None, "PLN", "€$¥"][i % 3],
                          is_deleted=[None, True, False][i % 3]))
    load(tmp_path, spec, DAY1, rows, "a", chunk=3)
    got = read_target(wh, spec)
    assert [got[r["id"]] for r in rows] == rows
    assert load(tmp_path, spec, DAY1, rows, "b", chunk=3).written == 0  # re-run sees no difference


@pytest.mark.integration
def test_mariadb_without_local_infile_falls_back(mariadb_url, connections, tmp_path):
    url = mariadb_url.update_query_dict({"local_infile": "0"})
    connections(wh=url)
    spec = orders_spec()
    rows = [order(i, note=TRICKY[i % len(TRICKY)][:1000]) for i in range(1, 201)]
    assert load(tmp_path, spec, DAY1, rows, "a", chunk=50).written == 200
    assert [read_target(mariadb_url, spec)[r["id"]] for r in rows] == rows


@pytest.mark.integration
def test_mariadb_refuses_values_that_would_be_truncated(mariadb_url, connections, tmp_path):
    connections(wh=mariadb_url)
    spec = orders_spec()
    rows = [order(1), order(2, currency="TOOLONG")]
    with pytest.raises(LoadError, match="Data too long for column 'currency'|changed values on the way in"):
        load(tmp_path, spec, DAY1, rows, "a")
    engine = create_engine(mariadb_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar() == 0
    engine.dispose()
