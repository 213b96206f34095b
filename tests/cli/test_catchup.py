"""``etl run PIPELINE`` without --start/--end: every complete window since the watermark, each committed alone."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from driftless.catchup import last_boundary, next_boundary, parse_step, plan_windows
from driftless.errors import DriftlessError
from driftless.spec import parse_spec
from tests.conftest import airflow_uri
from tests.helpers import fingerprint

D = datetime(2025, 3, 1, tzinfo=UTC)
SPEC = {
    "name": "events",
    "schedule": "@daily",
    "start_date": "2025-03-01",
    "chunk_size": 7,
    "source": {"type": "sql", "connection": "src", "table": "events", "primary_key": ["id"], "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "events"},
    "columns": [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "amount", "type": "numeric(10,2)", "nullable": False},
        {"name": "updated_at", "type": "timestamp", "nullable": False},
    ],
}


def make_source(path: Path, days: range, per_day: int = 6, first_id: int = 1) -> int:
    """Rows spread over the given days of March 2025 (cursor text in SQLAlchemy's SQLite format)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, amount NUMERIC(10,2), updated_at TEXT)")
        rid = first_id
        for day in days:
            for i in range(per_day):
                stamp = D + timedelta(days=day, hours=4 * i, minutes=i)
                db.execute("INSERT INTO events VALUES (?, ?, ?)",
                           (rid, f"{rid}.{i}5", stamp.strftime("%Y-%m-%d %H:%M:%S.000000")))
                rid += 1
    return rid


def etl(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "driftless.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def run(args: list[str], env: dict[str, str]) -> tuple[int, list[dict], str]:
    proc = etl(args, env)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, [json.loads(line) for line in out.splitlines() if line.strip()], err


def setup(tmp_path: Path, target_url, days=range(0, 5)) -> tuple[Path, Path, dict[str, str]]:
    source = tmp_path / "source.db"
    make_source(source, days)
    spec_path = tmp_path / "events.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    env = dict(os.environ, AIRFLOW_CONN_SRC=f"sqlite:///{source}", AIRFLOW_CONN_WH=airflow_uri(target_url))
    return source, spec_path, env


def windows_of(lines: list[dict]) -> list[tuple[str, str]]:
    return [(w["window"]["start"], w["window"]["end"]) for w in lines]


def day(n: int) -> str:
    return (D + timedelta(days=n)).isoformat()


# --- planning (no database) ---------------------------------------------------------------------------------------

def test_plan_from_start_date_whole_intervals_only():
    spec = parse_spec(SPEC)
    windows = plan_windows(spec, None, datetime(2025, 3, 4, 12, tzinfo=UTC))
    days = [D + timedelta(days=i) for i in range(4)]
    assert [(w.start, w.end) for w in windows] == list(zip(days, days[1:], strict=False))


def test_plan_from_an_off_grid_watermark_starts_with_the_rest_of_its_interval():
    spec = parse_spec({**SPEC, "schedule": "0 2 * * *"})
    wm = datetime(2025, 3, 2, 17, 30, tzinfo=UTC)
    windows = plan_windows(spec, wm, datetime(2025, 3, 4, 2, tzinfo=UTC))
    third, fourth = datetime(2025, 3, 3, 2, tzinfo=UTC), datetime(2025, 3, 4, 2, tzinfo=UTC)
    assert [(w.start, w.end) for w in windows] == [(wm, third), (third, fourth)]


def test_plan_with_a_step_and_never_into_the_future():
    spec = parse_spec({**SPEC, "schedule": "@hourly"})
    now = datetime.now(UTC)
    windows = plan_windows(spec, now - timedelta(hours=5, minutes=1), now, parse_step("PT2H"))
    assert len(windows) == 2 and all(w.end - w.start == timedelta(hours=2) for w in windows)
    hourly = plan_windows(spec, now - timedelta(hours=5), now)
    assert hourly[-1].end == last_boundary("@hourly", now) <= now
    assert all(a.end == b.start for a, b in zip(hourly, hourly[1:], strict=False))


def test_boundaries_and_bad_steps():
    at = datetime(2025, 3, 2, tzinfo=UTC)
    assert last_boundary("@daily", at) == at
    assert next_boundary("@daily", at) == at + timedelta(days=1)
    assert last_boundary("0 2 * * *", at) == datetime(2025, 3, 1, 2, tzinfo=UTC)
    for bad in ("1 day", "-P1D", "PT0S"):
        with pytest.raises(DriftlessError, match="--window"):
            parse_step(bad)
    with pytest.raises(DriftlessError, match="@once"):
        plan_windows(parse_spec({**SPEC, "schedule": "@once"}), None, at)


# --- runs ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_first_run_without_watermark_catches_up_from_start_date(tmp_path, wh):
    _, spec_path, env = setup(tmp_path, wh)
    code, lines, err = run(["run", str(spec_path), "--until", (D + timedelta(days=4, hours=6)).isoformat()], env)
    assert code == 0, err
    assert windows_of(lines) == [(day(i), day(i + 1)) for i in range(4)]
    assert [w["catchup"] for w in lines] == [{"window": i, "of": 4} for i in range(1, 5)]
    assert all(w["status"] == "success" and w["loaded"] == 6 for w in lines)
    assert "window 2/4" in err and "rows loaded" in err
    spec = parse_spec(SPEC)
    fp = fingerprint(wh, spec)
    assert fp["rows"] == 24 and fp["watermark"] == D + timedelta(days=4)

    # Nothing complete is left: a second catch-up runs no window.
    code, lines, err = run(["run", str(spec_path), "--until", day(4)], env)
    assert code == 0 and lines == [] and "up to date" in err


@pytest.mark.slow
def test_first_run_until_now_ends_at_the_last_schedule_time(tmp_path, sqlite_url):
    _, spec_path, env = setup(tmp_path, sqlite_url)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    spec = dict(SPEC, start_date=(today - timedelta(days=2)).date().isoformat())
    spec_path.write_text(yaml.safe_dump(spec))
    code, lines, err = run(["run", str(spec_path)], env)
    after = datetime.now(UTC)
    assert code == 0, err
    assert lines[0]["window"]["start"] == (today - timedelta(days=2)).isoformat()
    assert lines[-1]["window"]["end"] == last_boundary("@daily", after).isoformat()
    assert all(datetime.fromisoformat(w["window"]["end"]) <= after for w in lines)


@pytest.mark.slow
def test_run_after_three_missed_intervals(tmp_path, wh):
    source, spec_path, env = setup(tmp_path, wh, days=range(0, 2))
    code, lines, err = run(["run", str(spec_path), "--start", day(0), "--end", day(2)], env)  # the last run: 2 days
    assert code == 0, err
    make_source(source, range(2, 5), first_id=100)  # rows of the three days whose runs were missed

    code, lines, err = run(["run", str(spec_path), "--until", day(5)], env)
    assert code == 0, err
    assert windows_of(lines) == [(day(2), day(3)), (day(3), day(4)), (day(4), day(5))]
    assert [w["loaded"] for w in lines] == [6, 6, 6]
    assert [w["watermark"] for w in lines] == [day(3), day(4), day(5)]
    with create_engine(wh).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 30


@pytest.mark.slow
def test_killed_in_the_middle_of_a_catch_up_then_resumed(tmp_path, target_url, another_target):
    _, spec_path, env = setup(tmp_path, target_url)
    spec = parse_spec(SPEC)
    marker = tmp_path / "marker"
    # Frozen just before the commit of window 3 of 5, then SIGKILLed.
    crashing = etl(["run", str(spec_path), "--until", day(5)],
                   dict(env, DRIFTLESS_FAILPOINT="before_commit", DRIFTLESS_FAILPOINT_AFTER="2",
                        DRIFTLESS_FAILPOINT_MARKER=str(marker)))
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert crashing.poll() is None, crashing.stderr.read()
        assert time.monotonic() < deadline, "the catch-up never reached window 3"
        time.sleep(0.05)
    crashing.send_signal(signal.SIGKILL)
    out, _ = crashing.communicate(timeout=30)
    done = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert windows_of(done) == [(day(0), day(1)), (day(1), day(2))]
    killed = fingerprint(target_url, spec)
    assert killed["rows"] == 12 and killed["watermark"] == D + timedelta(days=2)

    code, resumed, err = run(["run", str(spec_path), "--until", day(5)], env)
    assert code == 0, err
    assert windows_of(resumed) == [(day(2), day(3)), (day(3), day(4)), (day(4), day(5))], "resumes at window 3"
    marks = [datetime.fromisoformat(w["watermark"]) for w in done + resumed]
    assert marks == sorted(marks) and len(set(marks)) == 5, "the watermark only moves forward"

    clean = another_target()
    code, _, err = run(["run", str(spec_path), "--until", day(5)], dict(env, AIRFLOW_CONN_WH=airflow_uri(clean)))
    assert code == 0, err
    got, want = fingerprint(target_url, spec), fingerprint(clean, spec)
    assert (got["rows"], got["sha256"], got["watermark"]) == (want["rows"], want["sha256"], want["watermark"])
    with create_engine(target_url).connect() as conn:
        runs = conn.execute(text("SELECT window_start, window_end, status FROM etl_runs ORDER BY id")).all()
    assert [r.status for r in runs] == ["success"] * 5, "the killed window committed nothing, not even its run record"
    assert len({(str(r.window_start), str(r.window_end)) for r in runs}) == 5, "no window ran twice"


def test_all_continues_past_a_failing_pipeline(tmp_path, sqlite_url):
    _, spec_path, env = setup(tmp_path, sqlite_url)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "events.yaml").write_text(spec_path.read_text())
    broken = dict(SPEC, name="a_broken", target={"connection": "nowhere", "table": "x"})
    (specs / "a_broken.yaml").write_text(yaml.safe_dump(broken))
    (specs / "b_invalid.yaml").write_text(yaml.safe_dump(dict(SPEC, name="b_invalid", schedule="often")))
    code, lines, err = run(["run", "--all", "--specs-dir", str(specs), "--until", day(2)], env)
    assert code == 1
    assert windows_of(lines) == [(day(0), day(1)), (day(1), day(2))], "the good pipeline ran after the bad ones"
    assert "summary: 3 pipeline(s), 1 ok, 2 not ok" in err
    assert "connection 'nowhere' is not defined" in err and re.search(r"b_invalid.yaml:\d+: schedule", err), err
    assert "Traceback" not in err


@pytest.mark.slow
def test_run_arguments_are_checked(tmp_path, sqlite_url):
    _, spec_path, env = setup(tmp_path, sqlite_url)
    for args, message in [(["--start", day(0)], "give both --start and --end"),
                          (["--start", day(0), "--end", day(1), "--window", "P1D"], "--window and --until"),
                          (["--until", "2999-01-01"], "after now"),
                          (["--run-id", "x"], "--run-id")]:
        code, _, err = run(["run", str(spec_path), *args], env)
        assert code == 1 and message in err, err
    code, _, err = run(["run", "--all", str(spec_path)], env)
    assert code == 1 and "give no PIPELINE" in err


def test_a_failed_window_stops_the_catch_up_and_keeps_the_committed_ones(tmp_path, sqlite_url):
    source, spec_path, env = setup(tmp_path, sqlite_url)
    with sqlite3.connect(source) as db:  # day 2 holds only rows that do not convert: that window fails
        db.execute("UPDATE events SET amount = 'n/a' WHERE updated_at LIKE '2025-03-03%'")
    code, lines, err = run(["run", str(spec_path), "--until", day(5)], env)
    assert code == 1
    assert windows_of(lines) == [(day(0), day(1)), (day(1), day(2))]
    assert "window 3/5" in err and "2 later window(s) not run" in err and "2 of 5 window(s) committed" in err
    assert fingerprint(sqlite_url, parse_spec(SPEC))["watermark"] == D + timedelta(days=2)


def test_failed_checks_stop_the_catch_up_after_their_committed_window(tmp_path, sqlite_url, connections):
    """A window whose checks fail stays committed (its JSON line says checks_failed); the later ones wait."""
    import io

    from driftless.catchup import catch_up
    from driftless.pipeline import run_window
    from driftless.reconcile.checks import ChecksFailed

    source, spec_path, _ = setup(tmp_path, sqlite_url)
    connections(src=source, wh=sqlite_url)
    spec = parse_spec(SPEC)
    calls = []

    def run_then_fail_checks(spec, window):  # the real window run; the second one's checks are made to fail
        result = run_window(spec, window)
        calls.append(window)
        if len(calls) == 2:
            result.status = "checks_failed"
            raise ChecksFailed("count check FAIL (planted)", result)
        return result

    out, err = io.StringIO(), io.StringIO()
    result = catch_up(spec, until=D + timedelta(days=5), out=out, err=err, run=run_then_fail_checks)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [w["status"] for w in lines] == ["success", "checks_failed"]
    assert (result.status, result.done, result.planned) == ("checks_failed", 2, 5)
    assert "stopped after window 2/5: its checks failed" in err.getvalue()
    assert fingerprint(sqlite_url, spec)["watermark"] == D + timedelta(days=2)
