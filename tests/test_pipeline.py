"""``run_window``'s load beside the extract (``driftless.pipeline.Handoff``): faster, never different.

The load copies each chunk as it is staged and commits only when the window turns out as staged: with a
duplicate key, too many rejects or a failed extract it rolls back and the window ends exactly as the
sequential run (extract, then load) ends it. Every test runs on PostgreSQL and MariaDB (SQLite targets never
overlap: ``overlaps``).
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import URL, create_engine, text

from driftless.errors import LoadError, SourceError, ValidationFailed
from driftless.pipeline import Handoff, extract_window, load_window, overlaps, run_window, staging_dir
from driftless.spec import PipelineSpec, parse_spec
from driftless.state import read_runs
from tests.helpers import fingerprint
from tests.loadkit import DAY1, ORDERS, order, read_target, source_db, stage_rows

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request, connections) -> URL:
    """A fresh PostgreSQL or MariaDB target, connection id ``wh``."""
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url")
    connections(wh=url)
    return url


def spec_of(**top: Any) -> PipelineSpec:
    """The orders spec with chunks of 10 rows and a qty above 5 quarantined (at most 20% of a window)."""
    data = copy.deepcopy(ORDERS)
    data.update({"chunk_size": 10, "max_reject_ratio": 0.2, **top})
    data["columns"][1]["checks"] = {"max": 5}
    return parse_spec(data, "test")


def chunks(rows: list[dict[str, Any]], size: int = 10) -> list[pd.DataFrame]:
    return [pd.DataFrame(rows[i:i + size]) for i in range(0, len(rows), size)]


def overlapped(spec: PipelineSpec, frames, tmp_path: Path, run_id: str = "overlap") -> tuple[Handoff, Any]:
    """Extract ``frames`` with a load beside it; returns the handoff and the extract's manifest."""
    handoff = Handoff(spec, DAY1, run_id, staging_dir(spec, DAY1, run_id, tmp_path))
    manifest = extract_window(spec, DAY1, run_id, tmp_path, frames=frames, handoff=handoff)
    return handoff, manifest


def target_rows(url: URL, table: str = "orders") -> int | None:
    """Rows in a target table (None when there is no such table)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
    except Exception:  # noqa: BLE001 - no table yet
        return None
    finally:
        engine.dispose()


def runs_of(url: URL, spec: PipelineSpec) -> list[tuple]:
    engine = create_engine(url)
    try:
        return [(r["status"], r["extracted"], r["loaded"], r["quarantined"], r["deduplicated"])
                for r in read_runs(engine, spec.name)]
    finally:
        engine.dispose()


def test_overlap_applies_to_server_targets_only(connections, sqlite_url, pg_url, monkeypatch):
    connections(wh=pg_url)
    assert overlaps(spec_of())
    assert not overlaps(spec_of(source={"type": "queue", "broker": "redis_stream", "connection": "mq", "stream": "s",
                                        "primary_key": ["id"], "cursor": "updated_at"}))
    monkeypatch.setenv("DRIFTLESS_OVERLAP", "0")
    assert not overlaps(spec_of())
    monkeypatch.delenv("DRIFTLESS_OVERLAP")
    connections(wh=sqlite_url)
    assert not overlaps(spec_of())  # SQLite: the load's write lock would be held while the extract reads


def test_the_load_copies_chunks_before_the_extract_ends(connections, pg_url, tmp_path):
    """Proof of the overlap: while the extract waits between chunks, the load's COPY already holds the target."""
    connections(wh=pg_url)
    spec = spec_of()
    seen: list[bool] = []

    def frames():
        rows = [order(i, qty=1) for i in range(1, 31)]
        yield pd.DataFrame(rows[:10])
        yield pd.DataFrame(rows[10:20])  # the first chunk's put returns once the load has taken it
        engine = create_engine(pg_url)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # another backend holds a lock on orders: the load's COPY
                with engine.connect() as conn:
                    held = conn.execute(text(
                        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "WHERE c.relname = 'orders' AND l.granted AND l.pid <> pg_backend_pid()")).scalar()
                if held:
                    seen.append(True)
                    break
                time.sleep(0.05)
        finally:
            engine.dispose()
        yield pd.DataFrame(rows[20:])

    handoff, manifest = overlapped(spec, frames(), tmp_path)
    result = handoff.finish(manifest)
    assert seen == [True], "the load had not started while the extract was still reading"
    assert result is not None and result.loaded == 30 and handoff.handed == 30
    assert len(read_target(pg_url, spec)) == 30
    assert runs_of(pg_url, spec) == [("success", 30, 30, 0, 0)]


def test_overlapped_run_ends_as_the_sequential_run(server, tmp_path, monkeypatch, connections):
    """The same window (four chunks, two rejects) through ``run_window`` with and without the overlap."""
    rows = [order(i, qty=9 if i in (7, 23) else i % 5) for i in range(1, 41)]  # 2 of 40 rejected (5%)
    connections(src=source_db(tmp_path / "src.db", rows))
    results = {}
    for name, overlap in (("beside", "1"), ("after", "0")):  # two pipelines, one table each, in one database
        spec = spec_of(name=f"orders_{name}", target={"connection": "wh", "table": f"orders_{name}"})
        monkeypatch.setenv("DRIFTLESS_OVERLAP", overlap)
        result = run_window(spec, DAY1)
        results[name] = (result.status, result.extracted, result.loaded, result.quarantined, result.deduplicated,
                         result.watermark, fingerprint(server, spec), runs_of(server, spec))
    assert results["beside"] == results["after"]
    assert results["beside"][:5] == ("success", 40, 38, 2, 0)
    assert results["beside"][6]["rows"] == 38


def test_a_duplicate_key_makes_the_load_give_way_and_the_window_loads_from_staging(server, tmp_path):
    spec = spec_of()
    rows = [order(i, qty=1) for i in range(1, 21)] + [order(5, version=1, qty=1)]
    rows += [order(i, qty=1) for i in range(21, 30)]
    handoff, manifest = overlapped(spec, chunks(rows), tmp_path)
    assert manifest.deduplicated == 1 and manifest.records == 29
    assert handoff.finish(manifest) is None  # rolled back: the dedup dropped a row it had copied
    assert not target_rows(server)  # nothing committed (the table may exist, empty)
    assert runs_of(server, spec) == []
    result = load_window(spec, DAY1, manifest, "overlap")  # what run_window does next
    assert (result.loaded, result.deduplicated) == (29, 1)
    assert read_target(server, spec)[5]["status"] == order(5, version=1)["status"]  # the later record won
    assert runs_of(server, spec) == [("success", 30, 29, 0, 1)]


def test_too_many_rejects_make_the_load_give_way_and_nothing_is_written(server, tmp_path):
    spec = spec_of()
    rows = [order(i, qty=9 if i % 3 == 0 else 1) for i in range(1, 31)]  # 10 of 30 rejected: above 20%
    handoff, manifest = overlapped(spec, chunks(rows), tmp_path)
    assert handoff.finish(manifest) is None
    assert not target_rows(server)
    with pytest.raises(ValidationFailed, match="10 of 30 records"):
        load_window(spec, DAY1, manifest, "overlap")
    assert not target_rows(server)
    assert runs_of(server, spec) == [("failed", 30, 0, 10, None)]  # (a failed run records no dedup count)


def test_a_failed_extract_rolls_the_load_back(server, tmp_path):
    spec = spec_of()

    def frames():
        yield from chunks([order(i, qty=1) for i in range(1, 21)])
        raise SourceError("the source went away after two chunks")

    handoff = Handoff(spec, DAY1, "broken", staging_dir(spec, DAY1, "broken", tmp_path))
    with pytest.raises(SourceError, match="went away"):
        extract_window(spec, DAY1, "broken", tmp_path, frames=frames(), handoff=handoff)
    assert handoff.started and not any(t.name == "driftless-load" for t in threading.enumerate())
    assert not target_rows(server)  # the 20 rows the load had copied were rolled back
    assert [r[0] for r in runs_of(server, spec)] == ["failed"]


def test_a_failed_load_fails_the_run_and_the_extract_still_ends(server, tmp_path, monkeypatch):
    """The load fails while the extract goes on: the extract is not blocked, and the load's error is raised."""
    spec = spec_of()
    load_window(spec, DAY1, stage_rows(tmp_path, spec, DAY1, [order(1000)]), "first")  # creates the table
    engine = create_engine(server)
    try:  # qty NOT NULL in the target while the spec allows NULL: the load of a NULL qty fails
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE orders ALTER COLUMN qty SET NOT NULL"
                              if server.get_backend_name() == "postgresql"
                              else "ALTER TABLE orders MODIFY qty integer NOT NULL"))
    finally:
        engine.dispose()
    rows = [order(i, qty=None) for i in range(1, 51)]
    handoff, manifest = overlapped(spec, chunks(rows), tmp_path)
    assert manifest.records == 50
    with pytest.raises(LoadError, match="(?i)null"):
        handoff.finish(manifest)
    assert target_rows(server) == 1  # the first run's row, nothing of this one
    assert [r[0] for r in runs_of(server, spec)] == ["success", "failed"]


def test_a_slow_source_makes_the_load_give_way_instead_of_idling_in_its_transaction(server, tmp_path,
                                                                                    monkeypatch):
    """No chunk for ``idle_limit_s``: the load rolls back at once (its lock and transaction released), and
    the window loads after the extract, as it would without overlap."""
    monkeypatch.setattr(Handoff, "idle_limit_s", 0.3)
    spec = spec_of()
    released: list[bool] = []

    def frames():
        rows = [order(i, qty=1) for i in range(1, 31)]
        yield pd.DataFrame(rows[:10])
        time.sleep(1.5)  # a slow page: the load gives way meanwhile
        released.append(not any(t.name == "driftless-load" for t in threading.enumerate()))
        yield pd.DataFrame(rows[10:20])
        yield pd.DataFrame(rows[20:])

    handoff, manifest = overlapped(spec, frames(), tmp_path)
    assert released == [True]  # the load had ended while the source was still being read
    assert handoff.finish(manifest) is None and handoff.handed == 10
    assert not target_rows(server)
    result = load_window(spec, DAY1, manifest, "overlap")
    assert result.loaded == 30 and runs_of(server, spec) == [("success", 30, 30, 0, 0)]


def test_a_failure_after_the_last_chunk_rolls_the_load_back_at_once(server, tmp_path, monkeypatch, connections):
    """The extract fails in its window-wide dedup, after handing over every chunk: ``run_window`` ends the load
    before it raises (it does not leave it waiting for a chunk that will never come)."""
    from driftless.extract.dedup import WindowDedup

    def broken(self):
        raise OSError("No space left on device")

    connections(src=source_db(tmp_path / "src.db", [order(i, qty=1) for i in range(1, 31)]))
    monkeypatch.setattr(WindowDedup, "apply", broken)
    with pytest.raises(OSError, match="No space left"):
        run_window(spec_of(), DAY1)
    assert not any(t.name == "driftless-load" for t in threading.enumerate())
    assert not target_rows(server)
    assert [r[0] for r in runs_of(server, spec_of())] == ["failed"]
