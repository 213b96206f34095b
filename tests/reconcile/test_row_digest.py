"""Stored row digests: the database's generated column equals the diff's computed hash, and diffs use it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, inspect, text

from driftless.cli import main
from driftless.pipeline import run_window
from driftless.reconcile.cli import digest_command_run
from driftless.reconcile.diff import DeepDiff, deep_diff
from driftless.reconcile.digest import DIGEST_COLUMN, DigestUnsupported
from driftless.reconcile.run import reconcile_pipeline
from driftless.window import Window
from tests.diff_fixtures import N_ROWS, create_filled, expected, found, plant, url_for
from tests.helpers import INVOICES, invoices_spec

WINDOW = Window.parse("2021-01-01", "2026-01-01")

DIGESTIBLE = ["postgresql", "mariadb", "sqlite"]
PAIRS = [("postgresql", "mariadb"), ("mariadb", "postgresql"), ("postgresql", "sqlite"), ("sqlite", "mariadb")]


@pytest.mark.parametrize("dialect", DIGESTIBLE)
def test_stored_digest_equals_the_computed_row_hash(request, dialect):
    url = url_for(request, dialect)
    create_filled(url)  # every column type, NULLs, '' and unicode, microseconds, a time-zone-aware column
    assert digest_command_run(url, "t", None, None)["digest"] == "added"
    with DeepDiff(url, url, "t", ["id"], use_digest=False) as diff:
        side = diff.src
        # (SQLite: both are driftless_h48() of the same SQL row text; PostgreSQL/MariaDB: the database's MD5)
        computed = side.d.row_hash(side.row_text)
        rows = side.execute(f"SELECT COUNT(*), SUM(CASE WHEN {DIGEST_COLUMN} = {computed} THEN 1 ELSE 0 END), "
                            f"COUNT(DISTINCT {DIGEST_COLUMN}) FROM t", {})[0]
    total, equal, distinct = (int(v) for v in rows)
    assert total == N_ROWS
    assert equal == N_ROWS  # the database's stored hash is the very hash the diff computes, row by row
    assert distinct == N_ROWS  # and it is a hash of each row, not a constant


@pytest.mark.parametrize(("src", "tgt"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_diffs_with_digests_find_changes_made_after_the_digest_was_added(request, src, tgt):
    su, tu = url_for(request, src), url_for(request, tgt)
    create_filled(su)
    table = create_filled(tu)
    for url in (su, tu):
        digest_command_run(url, "t", None, None)
    identical = deep_diff(su, tu, "t", ["id"])
    assert identical.differences == 0
    assert identical.row_digest == {"source": True, "target": True}
    plant(tu, table)  # ordinary writes: the database recomputes the digest of every changed row
    result = deep_diff(su, tu, "t", ["id"], bucket_rows=512, leaf_rows=16)
    assert result.row_digest == identical.row_digest
    assert found(result, ["id"]) == expected()
    assert result.rows_source == N_ROWS
    assert result.rows_target == N_ROWS  # two rows deleted, two inserted


@pytest.mark.parametrize("dialect", DIGESTIBLE)
def test_digest_covering_other_columns_is_not_used_until_refreshed(request, dialect):
    url = url_for(request, dialect)
    other = url_for(request, "sqlite" if dialect != "sqlite" else "postgresql")
    create_filled(url)
    create_filled(other)
    digest_command_run(url, "t", None, None)
    subset = deep_diff(url, other, "t", ["id"], columns=["id", "i", "s"])
    assert subset.row_digest["source"] is False and subset.differences == 0
    for u in (url, other):
        engine = create_engine(u)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE t ADD COLUMN note VARCHAR(20)"))
            conn.execute(text("UPDATE t SET note = 'x' WHERE id = 7"))
        engine.dispose()
    stale = deep_diff(url, other, "t", ["id"])
    assert stale.row_digest["source"] is False  # the digest does not cover the new column: rows are hashed
    assert stale.differences == 0
    assert digest_command_run(url, "t", None, None)["digest"] == "refreshed"
    assert digest_command_run(url, "t", None, None)["digest"] == "current"
    if dialect == "mariadb":  # one index on (key, digest), replaced with the column rather than left behind
        engine = create_engine(url)
        indexes = [(ix["name"], ix["column_names"]) for ix in inspect(engine).get_indexes("t")]
        engine.dispose()
        assert indexes == [("ix_driftless_h48", ["id", DIGEST_COLUMN])]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE t SET note = 'y' WHERE id = 7"))
    engine.dispose()
    fresh = deep_diff(url, other, "t", ["id"])
    assert fresh.row_digest["source"] is True
    assert [(c["key"]["id"], set(c["columns"])) for c in fresh.changed] == [(7, {"note"})]


def test_sqlite_digest_is_nulled_by_foreign_writes_and_hashed_by_the_diff(request, sqlite_url):
    create_filled(sqlite_url)
    other = url_for(request, "postgresql")
    create_filled(other)
    digest_command_run(sqlite_url, "t", None, None)
    engine = create_engine(sqlite_url)  # a plain connection, without driftless's functions: any other tool
    with engine.begin() as conn:
        conn.execute(text("UPDATE t SET v = 'by hand' WHERE id = 5"))
        conn.execute(text("INSERT INTO t (id, v) VALUES (99999, 'new')"))
        nulls = conn.execute(text(f"SELECT id FROM t WHERE {DIGEST_COLUMN} IS NULL ORDER BY id")).scalars().all()
    engine.dispose()
    assert nulls == [5, 99999]  # the trigger cleared the changed row's digest; the new row has none
    result = deep_diff(other, sqlite_url, "t", ["id"])
    assert result.row_digest == {"source": False, "target": True}
    assert [c["key"]["id"] for c in result.changed] == [5] and [e["key"]["id"] for e in result.extra] == [99999]


def test_mariadb_timestamp_columns_are_refused_with_the_reason(request):
    mariadb = url_for(request, "mariadb")
    engine = create_engine(mariadb)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE tsz (id INT PRIMARY KEY, at TIMESTAMP(6) NULL)"))
    try:
        with pytest.raises(DigestUnsupported, match=r"`?at`? is a TIMESTAMP.*session's time zone"):
            digest_command_run(mariadb, "tsz", None, None)
        assert DIGEST_COLUMN not in {c["name"] for c in inspect(engine).get_columns("tsz")}  # nothing changed
    finally:
        engine.dispose()


def test_cli_digest_add_is_idempotent_and_drop_removes_it(request, capsys):
    url = url_for(request, "postgresql")
    create_filled(url, n=50)
    uri = url.render_as_string(hide_password=False)
    outputs = []
    for argv in (["digest", "add", uri, "--table", "t"], ["digest", "add", uri, "--table", "t"],
                 ["digest", "drop", uri, "--table", "t"], ["digest", "drop", uri, "--table", "t"]):
        assert main(argv) == 0
        outputs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert [o["digest"] for o in outputs] == ["added", "current", "dropped", "absent"]
    assert outputs[0]["columns"][:3] == ["id", "i", "n"]
    assert main(["digest", "add", uri, "--table", "t", "--columns", "id,nope"]) == 1
    assert "no column(s) ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("target", DIGESTIBLE)
@pytest.mark.parametrize("write_mode", ["upsert", "replace"])
def test_pipeline_target_keeps_its_digest_through_loads_evolution_and_replace(
        request, chinook_copy, connections, target, write_mode):
    url = url_for(request, target)
    connections(src=chinook_copy, wh=url)
    spec = invoices_spec(reconcile={"row_digest": True}, target={"write_mode": write_mode})
    run_window(spec, WINDOW)
    first = reconcile_pipeline(spec, deep=True)
    assert first["status"] == "PASS" and first["rows_target"] == 412
    assert first["row_digest"] == {"source": False, "target": True}  # the source is SQLite: hashed as read
    # a new spec column: the loader adds it and brings the digest up to date in the same run
    columns = [*INVOICES["columns"], {"name": "billing_country", "source": "BillingCountry", "type": "varchar(40)"}]
    evolved = invoices_spec(reconcile={"row_digest": True}, target={"write_mode": write_mode}, columns=columns)
    run_window(evolved, WINDOW)
    engine = create_engine(url)
    with engine.begin() as conn:  # drift made by hand, after the loads
        conn.execute(text("UPDATE invoices SET billing_country = 'Nowhere' WHERE invoice_id = 3"))
    engine.dispose()
    second = reconcile_pipeline(evolved, deep=True)
    assert second["row_digest"] == {"source": False, "target": True}
    assert (second["missing_in_target"], second["extra_in_target"], second["changed"]) == (0, 0, 1)
    assert second["changed_columns"] == {"billing_country": 1}
    # re-running the window rewrites the drifted row (replace: re-creates the table, digest included)
    run_window(evolved, WINDOW)
    third = reconcile_pipeline(evolved, deep=True)
    assert third["row_digest"]["target"] is True
    assert (third["changed"], third["status"]) == (0, "PASS")


def test_mariadb_digest_of_a_table_in_another_schema_refreshes_and_drops(request):
    url = url_for(request, "mariadb")
    schema = f"{url.database}_other"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{schema}`"))
    try:
        create_filled(url.set(database=schema), n=20)
        assert digest_command_run(url, "t", schema, None)["digest"] == "added"
        with engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE `{schema}`.t ADD COLUMN note VARCHAR(10)"))
        assert digest_command_run(url, "t", schema, None)["digest"] == "refreshed"
        indexes = [(ix["name"], ix["column_names"]) for ix in inspect(engine).get_indexes("t", schema=schema)]
        assert indexes == [("ix_driftless_h48", ["id", DIGEST_COLUMN])]
        assert digest_command_run(url, "t", schema, None, drop=True)["digest"] == "dropped"
        assert inspect(engine).get_indexes("t", schema=schema) == []
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{schema}`"))
        engine.dispose()
