"""The one load entry point (``driftless.load.entry.load_rows``): replay, repair and dry runs load like a window.

Replay and repair used to upsert whatever the target's write mode (an ``append`` target got keys
overwritten, a soft-deleted row that came back kept its ``_deleted_at``), and the dry run re-created
the merge in Python (it reported updates for ``append``). Each is checked here on every dialect.
"""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, inspect

from driftless.dry_run import plan_window
from driftless.pipeline import extract_window, load_window, new_run_id, run_window
from driftless.quarantine.replay import replay
from driftless.reconcile.run import reconcile_pipeline
from driftless.spec import PipelineSpec, parse_spec
from driftless.state import read_runs
from driftless.window import Window
from tests.loadkit import ALL, DAY1, DAY2, ORDERS, order, read_target, source_db, stage_rows


def spec_of(qty_check: bool = True, **target: Any) -> PipelineSpec:
    """The loader tests' orders spec; with ``qty_check`` a qty above 5 is quarantined."""
    data = copy.deepcopy(ORDERS)
    data["max_reject_ratio"] = 1  # these tests quarantine rows on purpose
    if qty_check:
        data["columns"][1]["checks"] = {"max": 5}
    data["target"].update(target)
    return parse_spec(data, "test")


def load_frames(spec: PipelineSpec, window: Window, rows: list[dict[str, Any]], root: Path):
    run_id = new_run_id()
    manifest = extract_window(spec, window, run_id, root, frames=[pd.DataFrame(rows)])
    return load_window(spec, window, manifest, run_id)




# --- replay ---------------------------------------------------------------------------------------------

def test_replay_into_append_leaves_existing_keys_alone(wh, tmp_path):
    strict = spec_of(write_mode="append")
    load_frames(strict, DAY1, [order(1), order(2)], tmp_path)
    second = load_frames(strict, DAY2, [order(1, day=1, version=1, qty=6), order(3, day=1, qty=6), order(4, day=1)],
                         tmp_path)
    assert second.quarantined == 2
    relaxed = spec_of(qty_check=False, write_mode="append")
    replayed = replay(relaxed)
    assert (replayed.loaded, replayed.still_failing, replayed.superseded) == (2, 0, 0)
    rows = read_target(wh, relaxed)
    assert rows[1] == order(1)  # append: a key the target holds is left alone, also by a replay
    assert rows[3] == order(3, day=1, qty=6)  # a new key is inserted
    assert replayed.written == 1


def test_soft_deleted_row_returning_through_replay_is_undeleted(wh, tmp_path):
    strict = spec_of(deletes="soft")
    load_frames(strict, ALL, [order(1), order(2), order(3)], tmp_path)
    load_frames(strict, ALL, [order(2), order(3)], tmp_path)  # row 1 is gone at the source: marked deleted
    assert read_target(wh, strict)[1]["_deleted_at"] is not None
    load_frames(strict, DAY2, [order(1, day=1, version=1, qty=6), order(2, day=1, version=1)], tmp_path)
    relaxed = spec_of(qty_check=False, deletes="soft")
    assert replay(relaxed).loaded == 1
    row = read_target(wh, relaxed)[1]
    assert row["qty"] == 6 and row["_deleted_at"] is None
    assert read_target(wh, relaxed)[3]["_deleted_at"] is None


# --- repair ---------------------------------------------------------------------------------------------

def test_repair_into_append_leaves_existing_keys_alone(wh, tmp_path, connections):
    src = source_db(tmp_path / "src.db", [order(i) for i in range(1, 6)])
    connections(src=src)
    spec = spec_of(qty_check=False, write_mode="append")
    run_window(spec, DAY1)
    source_db(src, [order(2, version=1, status="changed at the source")])
    with sqlite3.connect(src) as db:
        db.execute("DELETE FROM orders WHERE id = 5")
    source_db(src, [order(6)])  # a key the target lacks
    summary = reconcile_pipeline(spec, do_repair=True)
    assert summary["changed"] == 1 and summary["missing_in_target"] == 1
    rows = read_target(wh, spec)
    assert rows[2] == order(2)  # append: the repair does not update a key the target holds
    assert rows[6] == order(6)  # but adds the missing one
    assert summary["after"]["changed"] == 1  # the append target keeps its first version: still a difference


def test_soft_deleted_row_returning_through_repair_is_undeleted(wh, tmp_path, connections):
    src = source_db(tmp_path / "src.db", [order(i) for i in range(1, 4)])
    connections(src=src)
    spec = spec_of(qty_check=False, deletes="soft")
    run_window(spec, ALL)
    with sqlite3.connect(src) as db:
        db.execute("DELETE FROM orders WHERE id = 1")
    run_window(spec, ALL)
    assert read_target(wh, spec)[1]["_deleted_at"] is not None
    source_db(src, [order(1, status="back")])  # back at the source, changed
    summary = reconcile_pipeline(spec, do_repair=True)
    assert summary["status"] == "REPAIRED", summary
    row = read_target(wh, spec)[1]
    assert row["status"] == "back" and row["_deleted_at"] is None


# --- dry runs agree with real runs --------------------------------------------------------------------------

MODES = {
    "upsert": ({}, DAY2),
    "append": ({"write_mode": "append"}, DAY2),
    "replace": ({"write_mode": "replace"}, DAY2),
    "deletes_soft": ({"deletes": "soft"}, ALL),
    "deletes_hard": ({"deletes": "hard"}, ALL),
}


def _snapshot(url, spec) -> dict[int, dict[str, Any]]:
    try:
        return read_target(url, spec)
    except Exception:  # noqa: BLE001 - no table yet
        return {}


def _effect(before: dict, after: dict, staged: set[int]) -> dict[str, int]:
    """What a real load did, read from the target before and after it."""
    both = staged & before.keys() & after.keys()
    marked = {k for k in before.keys() & after.keys() - staged
              if before[k].get("_deleted_at") is None and after[k].get("_deleted_at") is not None}
    return {"would_insert": len(staged & after.keys() - before.keys()),
            "would_update": sum(before[k] != after[k] for k in both),
            "unchanged": sum(before[k] == after[k] for k in both),
            "would_delete": len(before.keys() - after.keys()) + len(marked)}


@pytest.mark.parametrize("mode", list(MODES))
def test_dry_run_agrees_with_the_real_run(wh, tmp_path, mode):
    options, window = MODES[mode]
    spec = spec_of(qty_check=False, **options)
    first = [order(i) for i in range(1, 41)]
    load_window(spec, ALL if window is ALL else DAY1, stage_rows(tmp_path, spec, DAY1, first, tag="first"), "first")
    # 10 changed, 10 as they were, 5 new; under delete detection the 20 not delivered are deleted.
    second = ([order(i, day=1, version=1) for i in range(1, 11)] + [order(i) for i in range(11, 21)]
              + [order(i, day=1) for i in range(41, 46)])
    manifest = stage_rows(tmp_path, spec, window, second, tag="second", chunk=7)
    before = _snapshot(wh, spec)
    engine = create_engine(wh)
    runs_before = len(read_runs(engine, spec.name))

    plan = plan_window(spec, manifest)

    assert _snapshot(wh, spec) == before and len(read_runs(engine, spec.name)) == runs_before  # nothing written
    engine.dispose()
    real = load_window(spec, window, manifest, "second")
    effect = _effect(before, _snapshot(wh, spec), {r["id"] for r in second})
    if mode == "append":  # insert-only: nothing is updated
        assert (plan["would_update"], plan["would_insert"], plan["unchanged"]) == (0, 5, 20)
    assert {k: plan[k] for k in ("would_insert", "would_update", "unchanged")} == \
        {k: effect[k] for k in ("would_insert", "would_update", "unchanged")}
    assert plan["would_delete"] == effect["would_delete"]
    assert plan["written"] == real.written and plan["staged"] == 25
    if mode == "upsert":
        assert plan["changed_columns"]["status"] == 10 and plan["sample_keys"]["update"] == [[1], [2], [3], [4], [5]]
        assert plan["sample_keys"]["insert"] == [[41], [42], [43], [44], [45]]


def test_dry_run_on_a_missing_target_creates_nothing(wh, tmp_path):
    spec = spec_of(qty_check=False, deletes="soft")
    plan = plan_window(spec, stage_rows(tmp_path, spec, DAY1, [order(i) for i in range(1, 6)]))
    assert (plan["would_insert"], plan["would_update"], plan["would_delete"]) == (5, 0, 0)
    assert plan["schema_changes"] == ["created table orders"]
    assert _snapshot(wh, spec) == {}
    engine = create_engine(wh)
    try:
        assert read_runs(engine, spec.name) == []
    finally:
        engine.dispose()


def test_dry_run_of_a_new_column_leaves_the_target_as_it_was(wh, tmp_path):
    spec = spec_of(qty_check=False)
    load_window(spec, DAY1, stage_rows(tmp_path, spec, DAY1, [order(i) for i in range(1, 6)], tag="a"), "a")
    data = copy.deepcopy(ORDERS)
    data["columns"].append({"name": "channel", "type": "text"})
    wider = parse_spec(data, "test")
    rows = [{**order(i, day=1, version=1), "channel": "web"} for i in range(1, 4)]
    plan = plan_window(wider, stage_rows(tmp_path, wider, DAY2, rows, tag="b"))
    assert (plan["would_insert"], plan["would_update"], plan["unchanged"]) == (0, 3, 0)
    assert len(plan["schema_changes"]) == 1 and plan["schema_changes"][0].startswith("added column channel")
    engine = create_engine(wh)
    try:
        assert "channel" not in {c["name"] for c in inspect(engine).get_columns("orders")}
    finally:
        engine.dispose()
    assert read_target(wh, spec)[1] == order(1)
