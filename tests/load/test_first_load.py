"""The first load into an empty target writes straight into it (PostgreSQL COPY, MariaDB LOAD DATA), skipping
staging and merge: it must leave exactly what the staged path leaves, in every write mode, with repeated
keys, beside a concurrent writer, and nothing at all when it fails half-way."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import create_engine, func, select, text

from driftless.errors import LoadError
from driftless.load.base import Loader
from driftless.load.entry import LoadResult, RunRecord, load_rows
from driftless.load.modes import write_mode_for
from driftless.schema import arrow_schema, target_table
from driftless.targets.loaders import LOADERS
from tests.loadkit import DAY1, T0, order, orders_spec, read_target, state_of

FAST = ("postgresql", "mysql")  # the databases with a fast path (SQLite writes into the target anyway)


def chunks_of(spec, rows: list[dict[str, Any]], size: int) -> list[pa.Table]:
    schema = arrow_schema(spec)
    return [pa.Table.from_pylist(rows[i:i + size], schema=schema) for i in range(0, len(rows), size)]


def run_record(run_id: str) -> RunRecord:
    return RunRecord(run_id, DAY1, "success", datetime.now(UTC), advance_watermark=True,
                     max_cursor=DAY1.start + timedelta(hours=1))


def window_rows() -> list[dict[str, Any]]:
    """A window with what a first load must keep exact: NULL vs '', case and trailing spaces, decimals,
    source-deleted rows, and repeated keys (key 7 twice in one chunk, key 40 in two chunks; rows in cursor
    order, so the later record is the newer one)."""
    rows = [order(i, status="Paid " if i % 5 == 0 else "paid", note="" if i % 6 == 0 else None if i % 4 == 0
                  else f"n{i}", is_deleted=i % 9 == 0) for i in range(1, 61)]
    rows.insert(8, order(7, version=3, status="seventh again"))  # same chunk as key 7's first record
    rows.append(order(40, version=5, status="fortieth again"))  # a later chunk
    rows.sort(key=lambda r: r["updated_at"])
    return rows


class Spy:
    """Records what ``claim_empty`` answered, and can refuse the fast path (the staged path for comparison)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse: bool = False) -> None:
        self.answers: list[bool] = []
        for cls in LOADERS.values():
            original = cls.claim_empty

            def claim(loader: Loader, conn, target, original=original) -> bool:
                answer = False if refuse else original(loader, conn, target)
                self.answers.append(answer)
                return answer

            monkeypatch.setattr(cls, "claim_empty", claim)


MODES = [
    pytest.param({}, id="upsert"),
    pytest.param({"write_mode": "append"}, id="append"),
    pytest.param({"write_mode": "replace"}, id="replace"),
    pytest.param({"deletes": "soft"}, id="soft-deletes"),
    pytest.param({"deletes": "hard"}, id="hard-deletes"),
    pytest.param({"delete_flag": "is_deleted"}, id="flag-soft"),
    pytest.param({"delete_flag": "is_deleted", "deletes": "hard"}, id="flag-hard"),
]


@pytest.mark.parametrize("target", MODES)
@pytest.mark.parametrize("size", [1000, 16], ids=["one-chunk", "chunks"])
def test_first_load_equals_the_staged_path(wh, monkeypatch, target, size):
    rows = window_rows()
    staged_spec, fast_spec = orders_spec(table="orders_staged", **target), orders_spec(**target)

    with monkeypatch.context() as m:
        Spy(m, refuse=True)
        staged = load_rows(staged_spec, chunks_of(staged_spec, rows, size), window=DAY1, run=run_record("s"))
    spy = Spy(monkeypatch)
    fast = load_rows(fast_spec, chunks_of(fast_spec, rows, size), window=DAY1, run=run_record("f"))

    assert spy.answers == ([True] if wh.get_backend_name() in FAST else [])
    assert read_target(wh, fast_spec) == read_target(wh, staged_spec)
    assert (fast.loaded, fast.written, fast.deleted) == (staged.loaded, staged.written, staged.deleted)
    assert fast.watermark == staged.watermark == DAY1.end
    got = read_target(wh, fast_spec)
    if target.get("write_mode") == "append":  # the first record of a key wins
        assert got[7]["status"] == "paid" and got[40]["status"] == "Paid "
    else:  # the latest wins
        assert got[7]["status"] == "seventh again"
        assert got[40]["status"] == "fortieth again"
    assert got[6]["note"] == "" and got[4]["note"] is None and got[5]["status"] == "Paid "
    flag_hard = target.get("delete_flag") and target.get("deletes") == "hard"
    assert (9 in got) is not flag_hard  # a source-deleted row: gone (hard) or kept with _deleted_at (soft)
    assert len(got) == 60 - (6 if flag_hard else 0)

    # A re-run of the window, now into a target that has rows (the staged path), changes nothing.
    again = load_rows(fast_spec, chunks_of(fast_spec, rows, size), window=DAY1, run=run_record("f2"))
    assert spy.answers[-1:] == ([False] if wh.get_backend_name() in FAST else [])
    assert read_target(wh, fast_spec) == read_target(wh, staged_spec)
    if wh.get_backend_name() != "sqlite" and target.get("write_mode") != "replace" and not flag_hard:
        assert again.written == 0  # (source-deleted rows hard-deleted are inserted and deleted again)


def test_repeated_key_in_a_later_chunk_after_direct_chunks(wh, monkeypatch):
    """Chunks already copied into the target, then a chunk repeating one of their keys with a newer record."""
    spec = orders_spec()
    rows = [order(i) for i in range(1, 101)]
    newer = order(3, version=9, status="newest", updated_at=T0 + timedelta(hours=2))
    spy = Spy(monkeypatch)
    result = load_rows(spec, [*chunks_of(spec, rows, 40), *chunks_of(spec, [newer], 1)], window=DAY1,
                       run=run_record("a"))
    assert spy.answers == ([True] if wh.get_backend_name() in FAST else [])
    expected = {r["id"]: r for r in rows} | {3: newer}
    assert read_target(wh, spec) == expected
    assert result.loaded == 101
    assert result.written == (101 if wh.get_backend_name() == "sqlite" else 100)
    assert state_of(wh, spec) == (DAY1.end, ["success"])


def _rows_in(url, spec) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(target_table(spec))).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.parametrize("failure", ["source", "copy"])
def test_a_failure_half_way_leaves_the_target_empty_and_the_watermark(wh, monkeypatch, failure):
    """A load that fails after rows went straight into the target (the source breaks off between chunks, or
    a COPY / LOAD DATA fails on a row) rolls back all of them, the run record and the watermark."""
    spec = orders_spec()
    rows = [order(i) for i in range(1, 201)]
    chunks = chunks_of(spec, rows, 50)
    load_rows(spec, [], window=DAY1)  # the target exists, empty
    spy = Spy(monkeypatch)

    def broken():
        yield from chunks[:2]
        raise RuntimeError("the source went away")

    if failure == "source":
        with pytest.raises(RuntimeError, match="went away"):
            load_rows(spec, broken(), window=DAY1, run=run_record("a"))
    else:
        bad = order(150)
        bad["updated_at"] = None  # NOT NULL: the database refuses the row, in the third chunk
        third = pa.Table.from_pylist([*rows[100:149], bad], schema=arrow_schema(spec))
        with pytest.raises(LoadError):
            load_rows(spec, [*chunks[:2], third], window=DAY1, run=run_record("a"))
    assert spy.answers == ([True] if wh.get_backend_name() in FAST else [])
    assert _rows_in(wh, spec) == 0
    assert state_of(wh, spec) == (None, [])

    # The re-run is the clean first load.
    result = load_rows(spec, chunks, window=DAY1, run=run_record("b"))
    assert result.written == 200 and read_target(wh, spec) == {r["id"]: r for r in rows}
    assert state_of(wh, spec) == (DAY1.end, ["success"])


def _lock_waits(conn, backend: str) -> int:
    """Statements of this test's database waiting for a lock (MariaDB: running for a second or more)."""
    if backend == "postgresql":
        sql = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
               "AND datname = current_database()")
    else:
        sql = ("SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() AND command = 'Query' "
               "AND id <> CONNECTION_ID() AND time >= 1")
    return conn.execute(text(sql)).scalar_one()


@pytest.mark.parametrize("wh", ["postgresql", "mariadb"], indirect=True)  # SQLite serializes writers anyway
def test_first_load_beside_a_concurrent_writer(wh, monkeypatch):
    """Another writer inserts into the empty target (a key of the window with a newer cursor value, and a key
    the window does not deliver) and commits while the load runs: the load waits for it, then finds rows and
    takes the staged path: the window's record wins (upsert), the undelivered row in scope is deleted
    (``deletes: hard``). Writing straight into the target beside the writer would keep the writer's rows."""
    backend = wh.get_backend_name()
    spec = orders_spec(deletes="hard")
    rows = [order(i) for i in range(1, 101)]
    load_rows(spec, [], window=DAY1)  # the target exists, empty
    table = write_mode_for(spec).table(target_table(spec))
    other = create_engine(wh)
    spy = Spy(monkeypatch)
    outcome: dict[str, Any] = {}
    try:
        with other.connect() as writer:
            writer.begin()
            writer.execute(table.insert(), [order(5, status="writer's", updated_at=T0 + timedelta(hours=3)),
                                            order(500, status="not delivered")])

            def load() -> None:
                try:
                    outcome["result"] = load_rows(spec, chunks_of(spec, rows, 30), window=DAY1, run=run_record("a"))
                except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                    outcome["error"] = exc

            thread = threading.Thread(target=load)
            thread.start()
            # Autocommit: each poll its own transaction (PostgreSQL keeps a transaction's pg_stat_activity snapshot).
            with other.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
                deadline = time.monotonic() + 60
                while not _lock_waits(watcher, backend) and thread.is_alive():
                    assert time.monotonic() < deadline, "the load never waited for the writer"
                    time.sleep(0.05)
            writer.commit()
        thread.join(120)
    finally:
        other.dispose()
    assert "error" not in outcome, outcome.get("error")
    assert spy.answers == [False]
    assert read_target(wh, spec) == {r["id"]: r for r in rows}
    result: LoadResult = outcome["result"]
    assert (result.loaded, result.deleted) == (100, 1)


@pytest.mark.parametrize("wh", ["postgresql"], indirect=True)
def test_no_fast_path_when_the_server_defaults_to_repeatable_read(wh, monkeypatch):
    """Under REPEATABLE READ the first look at the target fixes the snapshot, so the look after the lock could
    miss a writer's committed rows: PostgreSQL's fast path is off there, and the load is the staged one."""
    admin = create_engine(wh, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{wh.database}" SET default_transaction_isolation = \'repeatable read\''))
    admin.dispose()
    spec = orders_spec()
    rows = [order(i) for i in range(1, 41)]
    spy = Spy(monkeypatch)
    result = load_rows(spec, chunks_of(spec, rows, 15), window=DAY1, run=run_record("rr"))
    assert spy.answers == [False]
    assert result.loaded == 40
    assert read_target(wh, spec) == {r["id"]: r for r in rows}
