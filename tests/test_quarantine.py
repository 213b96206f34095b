"""Quarantine end to end on real targets: every row loaded or quarantined, thresholds, replay, duplicates."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, text

from driftless.cli import main
from driftless.errors import LoadError, ValidationFailed
from driftless.pipeline import extract_window, load_window, new_run_id, run_window
from driftless.quarantine.replay import replay
from driftless.quarantine.store import list_quarantine
from driftless.spec import parse_spec
from driftless.state import as_utc, read_runs
from driftless.window import Window
from tests.helpers import INVOICES, fingerprint, invoices_spec

WINDOW = Window.parse("2024-01-01", "2024-02-01")

MESSY: dict = {
    "name": "messy",
    "source": {"type": "sql", "connection": "src", "table": "unused", "primary_key": ["id"], "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "messy"},
    "max_reject_ratio": 1,  # these tests are about quarantining any share of a window
    "columns": [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "tag", "type": "text", "nullable": False},
        {"name": "amount", "type": "numeric(10,2)", "nullable": False},
        {"name": "name", "type": "varchar(10)"},
        {"name": "qty", "type": "integer"},
        {"name": "happened_at", "type": "timestamptz"},
        {"name": "day", "type": "date"},
        {"name": "updated_at", "type": "timestamp", "nullable": False},
    ],
}


def messy_spec(name: str, **overrides) -> object:
    data = json.loads(json.dumps(MESSY))
    data["name"] = name
    data["target"]["table"] = name
    data.update(overrides)
    return parse_spec(data, "test")


def load_frames(spec, frames, root: Path, window: Window = WINDOW):
    run_id = new_run_id()
    manifest = extract_window(spec, window, run_id, root, frames=frames)
    return load_window(spec, window, manifest, run_id)


# Each value is drawn with whether it is valid, so the test knows what must happen to its row.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
GOOD_TS = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2024, 1, 31), timezones=ZONES | st.none())

VALUES = {
    "id": st.one_of(st.tuples(st.just(True), st.integers(1, 6)),
                    st.tuples(st.just(False), st.sampled_from([None, float("nan"), "abc", 1.5, 2**40]))),
    "amount": st.one_of(
        st.tuples(st.just(True), st.decimals(min_value=-10**6, max_value=10**6, places=2, allow_nan=False)),
        st.tuples(st.just(True), st.sampled_from([1.5, "12.30", 7])),
        st.tuples(st.just(False), st.sampled_from(["abc", Decimal("1.234"), 10**9, float("inf"), None, True]))),
    "name": st.one_of(st.tuples(st.just(True), TEXT | st.none()),
                      st.tuples(st.just(False), st.text(min_size=11, max_size=15) | st.just({"a": 1}) |
                                st.just("nul\x00")),),
    "qty": st.one_of(st.tuples(st.just(True), st.integers(-5, 5) | st.none()),
                     st.tuples(st.just(False), st.sampled_from(["x", 2.5, 2**33, float("nan")]))),  # NaN: no NULL
    "happened_at": st.one_of(st.tuples(st.just(True), GOOD_TS),
                             st.tuples(st.just(True), GOOD_TS.map(lambda d: d.isoformat())),
                             st.tuples(st.just(False), st.sampled_from(["yesterday", "2024-13-45", 12345]))),
    "day": st.one_of(st.tuples(st.just(True), st.dates(date(2000, 1, 1), date(2030, 1, 1)) | st.none()),
                     st.tuples(st.just(False), st.sampled_from(["2023-02-29", "soon"]))),
    "updated_at": st.one_of(st.tuples(st.just(True), st.datetimes(datetime(2024, 1, 1), datetime(2024, 1, 31))),
                            st.tuples(st.just(False), st.sampled_from([None, "garbage"]))),
}
ROWS = st.lists(st.fixed_dictionaries(VALUES), min_size=1, max_size=25)


def expected_outcome(rows):
    """tag -> 'loaded' | 'quarantined' | 'deduplicated', computed independently of the implementation."""
    outcome, latest = {}, {}
    for seq, row in enumerate(rows):
        tag = f"r{seq}"
        valid = all(ok for ok, _ in row.values())
        key_ok = row["id"][0]
        if key_ok:
            order_ok, cursor = row["updated_at"]
            rank = (1, cursor, seq) if order_ok else (0, datetime.min, seq)
            previous = latest.get(row["id"][1])
            if previous is None or rank > previous[0]:
                if previous is not None:
                    outcome[previous[1]] = "deduplicated"
                latest[row["id"][1]] = (rank, tag)
            else:
                outcome[tag] = "deduplicated"
                continue
        outcome[tag] = "loaded" if valid else "quarantined"
    return outcome


def to_frame(rows, chunk: int):
    records = [{k: v for k, (_, v) in row.items()} | {"tag": f"r{i}"} for i, row in enumerate(rows)]
    frames = [pd.DataFrame(records[i:i + chunk], dtype=object) for i in range(0, len(records), chunk)]
    return frames, records


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, chunk=st.integers(1, 10))
def test_every_messy_row_is_loaded_or_quarantined_never_both(any_url, tmp_path_factory, rows, chunk):
    target_url = any_url  # SQLite, PostgreSQL and MariaDB
    spec = messy_spec(f"messy_{uuid.uuid4().hex[:8]}")
    frames, records = to_frame(rows, chunk)
    expected = expected_outcome(rows)
    if "loaded" not in expected.values():
        # Every record rejected: the window fails whatever max_reject_ratio says, and writes nothing.
        with pytest.raises(ValidationFailed, match="always fails"):
            load_frames(spec, frames, tmp_path_factory.mktemp("staging"))
        engine = create_engine(target_url)
        try:
            assert not inspect(engine).has_table(spec.target.table) and list_quarantine(engine, spec) == []
        finally:
            engine.dispose()
        return
    result = load_frames(spec, frames, tmp_path_factory.mktemp("staging"))

    engine = create_engine(target_url)
    try:
        with engine.connect() as conn:
            loaded = {r.tag: r for r in conn.execute(text(f"SELECT * FROM {spec.target.table}"))}
        entries = list_quarantine(engine, spec)
    finally:
        engine.dispose()
    quarantined = {e["record"]["tag"] for e in entries}

    assert not set(loaded) & quarantined, "a row was both loaded and quarantined"
    assert set(loaded) == {t for t, o in expected.items() if o == "loaded"}
    assert quarantined == {t for t, o in expected.items() if o == "quarantined"}
    assert result.deduplicated == sum(o == "deduplicated" for o in expected.values())
    assert result.extracted == len(rows) == result.loaded + result.quarantined + result.deduplicated
    for entry in entries:
        assert entry["errors"] and all(e["check"] and e["message"] for e in entry["errors"])
    # loaded values are the exact, normalized ones
    for tag, row in loaded.items():
        raw = records[int(tag[1:])]
        amount = raw["amount"]
        assert Decimal(str(row.amount)) == Decimal(repr(amount) if isinstance(amount, float) else str(amount))
        if raw["happened_at"] is not None:
            want = pd.Timestamp(raw["happened_at"])
            want = want.tz_localize("UTC") if want.tzinfo is None else want.tz_convert("UTC")
            assert as_utc(row.happened_at) == want.to_pydatetime()
        if raw["qty"] is None:
            assert row.qty is None


def good_rows(n: int, start: int = 1, amount: str = "10.00"):
    return pd.DataFrame({
        "id": range(start, start + n),
        "tag": [f"t{i}" for i in range(start, start + n)],
        "amount": [Decimal(amount)] * n,
        "name": ["ok"] * n,
        "qty": [1] * n,
        "happened_at": [datetime(2024, 1, 5, tzinfo=UTC)] * n,
        "day": [date(2024, 1, 5)] * n,
        "updated_at": [datetime(2024, 1, 5, 12) + timedelta(minutes=i) for i in range(n)],
    })


def test_above_max_reject_ratio_nothing_changes(target_url, connections, tmp_path):
    connections(wh=target_url)
    spec = messy_spec("ratio", max_reject_ratio=0.2)
    load_frames(spec, [good_rows(10)], tmp_path / "a", Window.parse("2023-12-01", "2024-01-01"))
    before = fingerprint(target_url, spec)

    bad = good_rows(10, start=5)
    bad.loc[0:3, "amount"] = "not money"
    bad.loc[4:5, "name"] = "far too long for ten"
    with pytest.raises(ValidationFailed) as err:
        load_frames(spec, [bad], tmp_path / "b")
    message = str(err.value)
    assert "6 of 10 records (60.0%) failed validation, above max_reject_ratio 0.2" in message
    assert "amount: type(numeric(10,2)) (4); name: str_length(None, 10) (2)" in message
    assert "watermark stays" in message
    assert fingerprint(target_url, spec) == before
    engine = create_engine(target_url)
    try:
        assert list_quarantine(engine, spec) == []
        runs = read_runs(engine, spec.name)
    finally:
        engine.dispose()
    assert [r["status"] for r in runs] == ["success", "failed"]

    at_limit = messy_spec("ratio", max_reject_ratio=0.6)  # 60% is not above 0.6: the window loads
    result = load_frames(at_limit, [bad], tmp_path / "c")
    assert (result.loaded, result.quarantined) == (4, 6)


def test_duplicates_reduced_to_latest_across_chunks(target_url, connections, tmp_path):
    connections(wh=target_url)
    spec = messy_spec("dups")
    first = good_rows(3)                       # ids 1, 2, 3 at 12:00, 12:01, 12:02
    second = good_rows(2, start=2, amount="99.00")
    second["updated_at"] = [datetime(2024, 1, 6), datetime(2024, 1, 4)]  # id 2 newer, id 3 older
    result = load_frames(spec, [first, second], tmp_path / "a")
    assert (result.extracted, result.loaded, result.deduplicated) == (5, 3, 2)
    engine = create_engine(target_url)
    with engine.connect() as conn:
        amounts = dict(conn.execute(text("SELECT id, amount FROM dups ORDER BY id")).all())
    engine.dispose()
    assert {k: Decimal(str(v)) for k, v in amounts.items()} == {1: Decimal("10"), 2: Decimal("99"), 3: Decimal("10")}

    keep_first = messy_spec("dups_first", dedup={"keep": "first"})
    result = load_frames(keep_first, [first, second], tmp_path / "b")
    engine = create_engine(target_url)
    with engine.connect() as conn:
        amounts = dict(conn.execute(text("SELECT id, amount FROM dups_first ORDER BY id")).all())
    engine.dispose()
    assert {k: Decimal(str(v)) for k, v in amounts.items()} == {1: Decimal("10"), 2: Decimal("10"), 3: Decimal("99")}


def test_newer_bad_row_supersedes_older_good_one(sqlite_url, connections, tmp_path):
    connections(wh=sqlite_url)
    spec = messy_spec("supersede")
    rows = good_rows(2)
    newer = good_rows(1)
    newer["updated_at"] = [datetime(2024, 1, 20)]
    newer["amount"] = ["garbage"]
    result = load_frames(spec, [rows, newer], tmp_path)
    assert (result.loaded, result.quarantined, result.deduplicated) == (1, 1, 1)
    engine = create_engine(sqlite_url)
    (entry,) = list_quarantine(engine, spec)
    engine.dispose()
    assert entry["record_key"] == [1] and entry["record"]["amount"] == "garbage"


def write_spec(directory: Path, data: dict) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_replay_after_fixing_the_spec_loads_once(target_url, connections, chinook_copy, tmp_path, capsys):
    """Through the real SQL source and the CLI: quarantine, list, fix the spec, replay twice."""
    with sqlite3.connect(chinook_copy) as db:
        db.execute("UPDATE Invoice SET Total = -Total WHERE InvoiceId IN (3, 7)")
        db.execute("UPDATE Invoice SET BillingCity = 'A city with a name longer than forty characters' "
                   "WHERE InvoiceId = 9")
    connections(src=chinook_copy, wh=target_url)
    data = json.loads(json.dumps(INVOICES))
    data["columns"][4]["checks"] = {"min": 0}
    data["max_reject_ratio"] = 0.05
    specs = tmp_path / "specs"
    path = write_spec(specs, data)

    assert main(["run", str(path), "--start", "2021-01-01", "--end", "2026-01-01"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["extracted"], summary["loaded"], summary["quarantined"]) == (412, 409, 3)
    assert main(["quarantine", "list", str(path)]) == 0
    out = capsys.readouterr()
    listed = [json.loads(line) for line in out.out.splitlines()]
    assert sorted(e["record_key"][0] for e in listed) == [3, 7, 9]
    assert "3 quarantined record(s)" in out.err
    by_id = {e["record_key"][0]: e for e in listed}
    assert by_id[9]["errors"][0]["check"] == "str_length(None, 40)"
    assert Decimal(by_id[3]["record"]["total"]) < 0  # decimals are kept as exact text in the record

    before = fingerprint(target_url, invoices_spec())
    # Fix 1: negative totals are credit notes, allowed now. The long city still fails.
    data["columns"][4]["checks"] = None
    write_spec(specs, data)
    assert main(["quarantine", "replay", str(path)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["considered"], first["loaded"], first["still_failing"]) == (3, 2, 1)
    after = fingerprint(target_url, invoices_spec())
    assert after["rows"] == before["rows"] + 2 and after["watermark"] == before["watermark"]

    assert main(["quarantine", "replay", str(path)]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["considered"], second["loaded"]) == (1, 0)
    assert fingerprint(target_url, invoices_spec()) == after

    engine = create_engine(target_url)
    try:
        (left,) = list_quarantine(engine, invoices_spec())
        runs = read_runs(engine, "invoices_test")
    finally:
        engine.dispose()
    assert left["record_key"] == [9]
    assert [r["status"] for r in runs] == ["success", "replay", "replay"]
    assert runs[0]["quarantined"] == 3 and runs[0]["deduplicated"] == 0


def test_replay_does_not_overwrite_newer_rows(sqlite_url, connections, tmp_path):
    connections(wh=sqlite_url)
    spec = messy_spec("stale", transforms={})
    newer = good_rows(1, amount="5.00")
    newer["updated_at"] = [datetime(2024, 1, 25)]
    load_frames(spec, [newer], tmp_path / "b")
    old = good_rows(2)  # a backfill of an older window: an older version of id 1, with a bad amount
    old["amount"] = ["1.234", "10.00"]  # too many decimals: quarantined (id 2 loads: not all rejected)
    assert load_frames(spec, [old], tmp_path / "a").quarantined == 1
    fixed = messy_spec("stale", columns=[dict(c, type="numeric(12,3)") if c["name"] == "amount" else c
                                         for c in MESSY["columns"]])
    # numeric(10,2) -> numeric(12,3) is a type change: refused before anything is written
    with pytest.raises(LoadError, match=r"'amount' was widened from NUMERIC\(10, 2\)"):
        replay(fixed)
    # a transform that rounds the amount is the fix that needs no DDL; but the target holds a newer row
    rounded = messy_spec("stale", transforms={"function": "tests.validate_models:round_amount"})
    result = replay(rounded)
    assert (result.considered, result.loaded, result.superseded) == (1, 0, 1)
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT amount FROM stale WHERE id = 1")).scalar_one() == 5
    assert list_quarantine(engine, spec) == []
    engine.dispose()


@pytest.fixture(params=["sqlite_url", pytest.param("pg_url", marks=pytest.mark.integration),
                        pytest.param("mariadb_url", marks=pytest.mark.integration)])
def any_url(request, connections):
    url = request.getfixturevalue(request.param)
    connections(wh=url)
    return url


def test_repeated_failures_update_one_entry_and_replay(any_url, tmp_path):
    spec = messy_spec("repeat")
    rows = good_rows(3)
    rows.loc[1, "name"] = "🦀 crab named Ferris"   # 4-byte UTF-8, longer than varchar(10)
    rows.loc[2, "id"] = None                        # invalid key: the entry is keyed by the record
    first = load_frames(spec, [rows], tmp_path / "a")
    assert (first.loaded, first.quarantined) == (1, 2)
    second = load_frames(spec, [rows], tmp_path / "b")   # the same window again
    assert (second.loaded, second.quarantined) == (1, 2)
    engine = create_engine(any_url)
    try:
        entries = {json.dumps(e["record_key"]): e for e in list_quarantine(engine, spec)}
    finally:
        engine.dispose()
    assert set(entries) == {"[2]", "null"}
    crab = entries["[2]"]
    assert crab["record"]["name"] == "🦀 crab named Ferris"
    assert crab["times_seen"] == 2 and as_utc(crab["last_seen"]) >= as_utc(crab["first_seen"])
    assert crab["errors"] == [{"column": "name", "check": "str_length(None, 10)",
                               "message": "column 'name' failed str_length(None, 10); got '🦀 crab named Ferris'"}]

    wider = messy_spec("repeat", transforms={"function": "tests.validate_models:shorten_name"})
    result = replay(wider)
    assert (result.considered, result.loaded, result.still_failing) == (2, 1, 1)
    engine = create_engine(any_url)
    try:
        with engine.connect() as conn:
            table = engine.dialect.identifier_preparer.quote("repeat")  # a reserved word in MariaDB
            assert conn.execute(text(f"SELECT name FROM {table} WHERE id = 2")).scalar_one() == "🦀 crab"
        (left,) = list_quarantine(engine, spec)
    finally:
        engine.dispose()
    assert left["record_key"] is None and left["errors"][0]["check"] == "not_nullable"


def test_a_fixed_row_loaded_later_resolves_its_entry(target_url, connections, tmp_path):
    connections(wh=target_url)
    spec = messy_spec("resolve")
    bad = good_rows(2)
    bad["amount"] = ["oops", "1.5"]
    bad["updated_at"] = [datetime(2024, 1, 10), datetime(2024, 1, 10)]
    assert load_frames(spec, [bad], tmp_path / "a").quarantined == 1
    older = good_rows(1)                        # a backfill brings an older good version of id 1
    older["updated_at"] = [datetime(2024, 1, 3)]
    load_frames(spec, [older], tmp_path / "b")
    engine = create_engine(target_url)
    try:
        assert [e["record_key"] for e in list_quarantine(engine, spec)] == [[1]]  # still the newest version
        fixed = good_rows(1)
        fixed["updated_at"] = [datetime(2024, 1, 12)]
        load_frames(spec, [fixed], tmp_path / "c")
        assert list_quarantine(engine, spec) == []
    finally:
        engine.dispose()


def test_derived_columns_through_the_sql_source(sqlite_url, connections, chinook_source):
    connections(src=chinook_source, wh=sqlite_url)
    data = json.loads(json.dumps(INVOICES))
    data["columns"] += [{"name": "total_cents", "type": "numeric(12,0)"}, {"name": "city", "type": "varchar(40)"}]
    data["transforms"] = {"derive": [{"name": "total_cents", "expr": "total * 100"},
                                     {"name": "city", "expr": "upper(coalesce(billing_city, '?'))"}]}
    spec = parse_spec(data, "test")
    result = run_window(spec, Window.parse("2021-01-01", "2026-01-01"))
    assert (result.extracted, result.loaded, result.quarantined) == (412, 412, 0)
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        sql = "SELECT total, total_cents, billing_city, city FROM invoices WHERE invoice_id = 1"
        row = conn.execute(text(sql)).one()
    engine.dispose()
    assert Decimal(str(row.total)) * 100 == Decimal(str(row.total_cents))
    assert row.city == row.billing_city.upper()


def test_resumed_extraction_keeps_counts_and_deduplicates(tmp_path):
    from driftless.extract.dedup import WindowDedup
    from driftless.extract.staging import StagingWriter
    from driftless.extract.validate import Validator

    def stage(validator, writer, dedup, frame):  # the extract's per-chunk steps (driftless.pipeline._extract)
        checked = validator.validate(frame)
        dedup.add(checked.index, writer.stage(checked.good, checked.rejects, checked.reasons))

    spec = messy_spec("resume")
    validator = Validator(spec)
    first = good_rows(3)
    first.loc[2, "amount"] = "bad"
    directory = tmp_path / "stage"
    writer = StagingWriter(directory, spec.name, "a", "b", resume=True)
    dedup = WindowDedup(spec, writer)
    stage(validator, writer, dedup, first)
    writer.save_progress({"source": {"page": 2}})
    stage(validator, writer, dedup, good_rows(2, start=10))   # staged after the last resume point: dropped on resume
    # interrupted here: no manifest; a new attempt resumes after the first chunk
    writer = StagingWriter(directory, spec.name, "a", "b", resume=True)
    assert writer.checkpoint == {"source": {"page": 2}}
    dedup = WindowDedup(spec, writer)
    again = good_rows(2, start=2)          # id 2 again, newer; id 3 again, now valid
    again["updated_at"] = [datetime(2024, 1, 9), datetime(2024, 1, 9)]
    stage(validator, writer, dedup, again)
    dedup.apply()
    manifest = writer.close(None)
    assert (manifest.extracted, manifest.records, manifest.quarantined, manifest.deduplicated) == (5, 3, 1, 1)
    assert sorted(manifest.tables().__next__().column("id").to_pylist()) == [1]
    assert manifest.reasons == {"amount: type(numeric(10,2))": 1}


def test_a_nan_value_stays_a_nan_in_quarantine_and_is_never_replayed_as_null(any_url, tmp_path, capsys):
    """A NaN that came in as a value is a bad value, not a NULL: replay refuses it again (it used to load NULL)."""
    capped = [dict(c, checks={"max": 5}) if c["name"] == "amount" else c for c in MESSY["columns"]]
    spec = messy_spec("nans", columns=capped)
    values = good_rows(2, amount="1.00")
    values["qty"] = pd.Series([1, float("nan")], dtype=object)  # id 2: a NaN as a value (an object column)
    nulls = good_rows(1, start=3)  # id 3: amount 10 fails the cap; its qty is NULL, in a float column
    nulls["qty"] = pd.Series([float("nan")], dtype="float64")
    assert load_frames(spec, [values, nulls], tmp_path / "a").quarantined == 2
    engine = create_engine(any_url)
    try:
        entries = {e["record_key"][0]: e for e in list_quarantine(engine, spec)}
    finally:
        engine.dispose()
    assert isinstance(entries[2]["record"]["qty"], float) and entries[2]["record"]["qty"] != entries[2]["record"]["qty"]
    assert entries[3]["record"]["qty"] is None
    assert [e["message"].rsplit("; ", 1)[-1] for e in entries[2]["errors"]] == ["got NaN"]  # not "got null"
    assert main(["quarantine", "list", str(_spec_path(tmp_path, spec.name, capped))]) == 0
    records = [json.loads(line)["record"] for line in capsys.readouterr().out.splitlines()]
    listed = {record["id"]: record for record in records}
    assert (listed[2]["qty"], listed[3]["qty"]) == ("NaN", None)  # strict JSON on stdout: the NaN as text
    result = replay(messy_spec("nans"))  # the cap lifted: id 3 passes, id 2's NaN is refused again
    assert (result.considered, result.loaded) == (2, 1)
    engine = create_engine(any_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id, qty FROM nans ORDER BY id")).all() == [(1, 1), (3, None)]
        assert [e["record_key"] for e in list_quarantine(engine, spec)] == [[2]]
    finally:
        engine.dispose()


def _spec_path(tmp_path: Path, name: str, columns: list) -> Path:
    data = json.loads(json.dumps(MESSY)) | {"name": name, "columns": columns}
    data["target"]["table"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
