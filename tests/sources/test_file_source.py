"""File sources (``source.type: file``): formats, windows, the manifest of loaded files, bad files, checks."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import URL, create_engine, text

from driftless.errors import SourceError, SpecError
from driftless.pipeline import run_window
from driftless.sources.files.source import FileSource
from driftless.spec import parse_spec
from driftless.window import Window

DAY1 = Window.parse("2025-01-01", "2025-01-02")
DAY2 = Window.parse("2025-01-02", "2025-01-03")

BASE: dict[str, Any] = {
    "name": "orders_files",
    "chunk_size": 100,
    "max_reject_ratio": 1,
    "source": {"type": "file", "location": "", "glob": "*.csv", "format": "csv", "primary_key": ["id"],
               "cursor": "_file_time"},
    "target": {"connection": "wh", "table": "orders"},
    "columns": [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "name", "type": "text"},
        {"name": "amount", "type": "numeric(10,2)"},
        {"name": "_file", "type": "text"},
        {"name": "_line", "type": "integer"},
        {"name": "_file_time", "type": "timestamptz"},
    ],
}


def make_spec(location: Path | str, **source: Any) -> Any:
    data = copy.deepcopy(BASE)
    data["source"].update(location=str(location), **source)
    if "path_pattern" in source and "glob" not in source:
        data["source"].pop("glob")
    return parse_spec(data, "test.yaml")


def at(path: Path, when: str) -> Path:
    """Set a file's modification time (UTC)."""
    ts = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()
    os.utime(path, (ts, ts))
    return path


def write(path: Path, body: str | bytes, when: str | None = "2025-01-01T12:00:00") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    return at(path, when) if when else path


def rows(url: URL, sql: str = "SELECT id, name, amount, _file, _line FROM orders ORDER BY id") -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------------


def test_spec_errors_name_the_field(tmp_path):
    with pytest.raises(SpecError, match=r"test.yaml: source: give exactly one of 'glob'"):
        make_spec(tmp_path, path_pattern="x/{date:%Y-%m-%d}/*.csv", glob="*.csv")
    with pytest.raises(SpecError, match=r"test.yaml: source.path_pattern: .*exactly one \{date:FORMAT\}"):
        make_spec(tmp_path, path_pattern="x/*.csv")
    with pytest.raises(SpecError, match=r"source.path_pattern: .*%b is not supported"):
        make_spec(tmp_path, path_pattern="{date:%Y-%b}/*.csv")
    with pytest.raises(SpecError, match=r"source.encoding: unknown encoding 'klingon'"):
        make_spec(tmp_path, encoding="klingon")
    with pytest.raises(SpecError, match=r"source.csv: .*header: false needs column_names"):
        make_spec(tmp_path, csv={"header": False})
    with pytest.raises(SpecError, match=r"source.format: .*'csv', 'jsonl' or 'parquet'"):
        make_spec(tmp_path, format="xlsx")
    with pytest.raises(SpecError, match=r"source.compression: Parquet files compress inside"):
        make_spec(tmp_path, format="parquet", compression="gzip")


# ---------------------------------------------------------------------------------------------------------
# Formats: raw values in, driftless converts; a bad value is quarantined with its file and line
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_csv_declared_dialect_encoding_and_raw_text(tmp_path, wh):
    write(tmp_path / "drop" / "a.csv", "id;name;amount;ignored\n1;'Ol\u00e9; ''quoted''';1.50;x\n"
          "2;'';2;y\n3;;oops;z\n\n4;plain;4.5;w\n".encode("latin-1"))
    spec = make_spec(tmp_path / "drop", encoding="latin-1",
                     csv={"delimiter": ";", "quote_char": "'", "double_quote": True})
    result = run_window(spec, DAY1)
    assert (result.extracted, result.loaded, result.quarantined) == (4, 3, 1)
    assert rows(wh) == [(1, "Ol\u00e9; 'quoted'", Decimal("1.50"), "a.csv", 2),
                        (2, "", Decimal("2.00"), "a.csv", 3),  # a quoted empty field is an empty text
                        (4, "plain", Decimal("4.50"), "a.csv", 6)]  # line 6: the blank line 5 is counted
    record, errors = rows(wh, "SELECT record, errors FROM etl_quarantine")[0]
    record, errors = json.loads(record), json.loads(errors)
    assert (record["_file"], record["_line"], record["amount"], record["name"]) == ("a.csv", 4, "oops", None)
    assert errors[0]["column"] == "amount" and errors[0]["check"] == "type(numeric(10,2))"
    assert result.metrics["files"][0]["blank_lines"] == 1


def test_csv_without_header_and_values_spanning_lines(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    write(tmp_path / "a.csv", '1,"two\nlines",1\n2,b,2\n3,"x\r\ny\nz",3\n4,d,4\n')
    spec = make_spec(tmp_path, csv={"header": False, "column_names": ["id", "name", "amount"],
                                    "newlines_in_values": True})
    run_window(spec, DAY1)
    assert [(r[0], r[1], r[4]) for r in rows(sqlite_url)] == [(1, "two\nlines", 1), (2, "b", 3),
                                                             (3, "x\r\ny\nz", 4), (4, "d", 7)]


def test_jsonl_values_are_raw_and_lines_exact(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    write(tmp_path / "a.jsonl", '{"id": 1, "name": {"nested": true}, "amount": "1.25"}\n\n'
          '{"id": "2", "name": "b", "amount": 2.5, "extra": 1}\n{"id": 3, "name": 7, "amount": 1.999}\n')
    spec = make_spec(tmp_path, glob="*.jsonl", format="jsonl")
    result = run_window(spec, DAY1)
    assert (result.loaded, result.quarantined) == (2, 1)
    assert rows(sqlite_url) == [(1, '{"nested": true}', Decimal("1.25"), "a.jsonl", 1),
                                (2, "b", Decimal("2.50"), "a.jsonl", 3)]
    record = json.loads(rows(sqlite_url, "SELECT record FROM etl_quarantine")[0][0])
    assert (record["_line"], record["amount"]) == (4, 1.999)  # needs rounding: refused, never rounded


def test_parquet_keeps_nan_apart_from_null_and_big_integers_exact(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    big = 2**62 + 1  # not representable as a float64
    table = pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()),
                      "name": ["a", None, "c", "d"],
                      "amount": pa.array([1.5, None, float("nan"), 2.0], pa.float64()),
                      "other": pa.array([big, None, 1, 2], pa.int64())})
    (tmp_path / "p").mkdir()
    pq.write_table(table, tmp_path / "p" / "a.parquet", row_group_size=2)
    at(tmp_path / "p" / "a.parquet", "2025-01-01T06:00:00")
    data = copy.deepcopy(BASE)
    data["source"].update(location=str(tmp_path / "p"), glob="*.parquet", format="parquet")
    data["columns"].append({"name": "other", "type": "bigint"})
    spec = parse_spec(data, "test.yaml")
    result = run_window(spec, DAY1)
    assert (result.loaded, result.quarantined) == (3, 1)  # the NaN is a value no type accepts
    assert rows(sqlite_url, "SELECT id, amount, other, _line FROM orders ORDER BY id") == [
        (1, Decimal("1.50"), big, 1), (2, None, None, 2), (4, Decimal("2.00"), 2, 4)]
    key, errors = rows(sqlite_url, "SELECT record_key, errors FROM etl_quarantine")[0]
    assert json.loads(key) == [3] and json.loads(errors)[0]["column"] == "amount"


def test_fsspec_urls(tmp_path, connections, sqlite_url):
    import fsspec

    connections(wh=sqlite_url)
    write(tmp_path / "a.csv", "id,name,amount\n1,a,1\n")
    assert run_window(make_spec(f"file://{tmp_path}"), DAY1).loaded == 1
    fs = fsspec.filesystem("memory")
    fs.pipe("/drops/b.csv", b"id,name,amount\n2,b,2\n")  # stamped with the time of writing
    spec = make_spec("memory://drops")
    result = run_window(spec, Window(datetime(2020, 1, 1, tzinfo=UTC), datetime.now(UTC)))
    assert result.loaded == 1 and result.metrics["files"][0]["path"] == "b.csv"
    fs.rm("/drops/b.csv")


# ---------------------------------------------------------------------------------------------------------
# Windows and the manifest of loaded files (etl_files)
# ---------------------------------------------------------------------------------------------------------


def test_windows_by_modification_time(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    write(tmp_path / "a.csv", "id,name,amount\n1,a,1\n", "2025-01-01T23:59:59")
    write(tmp_path / "b.csv", "id,name,amount\n2,b,2\n", "2025-01-02T00:00:00")
    spec = make_spec(tmp_path)
    assert [f["path"] for f in run_window(spec, DAY1).metrics["files"]] == ["a.csv"]
    assert [f["path"] for f in run_window(spec, DAY2).metrics["files"]] == ["b.csv"]


def test_windows_by_path_date_and_lag(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    write(tmp_path / "orders" / "2025-01-01" / "a.csv", "id,name,amount\n1,a,1\n", "2025-03-01T00:00:00")
    write(tmp_path / "orders" / "2025-01-02" / "b.csv", "id,name,amount\n2,b,2\n", "2024-01-01T00:00:00")
    write(tmp_path / "orders" / "copy-of-01" / "c.csv", "id,name,amount\n3,c,3\n")
    spec = make_spec(tmp_path, path_pattern="orders/{date:%Y-%m-%d}/*.csv")
    result = run_window(spec, DAY2)
    assert [f["path"] for f in result.metrics["files"]] == ["orders/2025-01-02/b.csv"]
    assert result.metrics["undated_files"] == ["orders/copy-of-01/c.csv"]  # matched the glob, no date
    assert rows(sqlite_url, "SELECT _file_time FROM orders")[0][0].startswith("2025-01-02")
    lagged = make_spec(tmp_path, path_pattern="orders/{date:%Y-%m-%d}/*.csv", lag="P1D")
    assert [f["path"] for f in run_window(lagged, DAY2).metrics["files"]] == [
        "orders/2025-01-01/a.csv", "orders/2025-01-02/b.csv"]


def test_manifest_rerun_reloads_same_files_and_changed_files_are_reported(tmp_path, wh):
    drop = tmp_path / "drop"
    write(drop / "a.csv", "id,name,amount\n1,a,1\n2,b,2\n", "2025-01-01T10:00:00")
    spec = make_spec(drop)
    first = run_window(spec, DAY1)
    assert first.loaded == 2
    loaded = rows(wh, "SELECT path, records, sha256, window_start, run_id FROM etl_files")
    assert [(p, n) for p, n, *_ in loaded] == [("a.csv", 2)] and loaded[0][4] == first.run_id

    # The file is rewritten the next day: its new modification time lies in DAY2.
    write(drop / "a.csv", "id,name,amount\n1,a,10\n2,b,2\n3,c,3\n", "2025-01-02T10:00:00")
    second = run_window(spec, DAY2)
    assert second.loaded == 0 and second.metrics["files"] == []  # not loaded twice, in another window
    assert [c["path"] for c in second.metrics["changed_files"]] == ["a.csv"]
    assert second.metrics["changed_files"][0]["action"].startswith("not reloaded")
    warn = next(c for c in second.checks if c["check"] == "files_changed")
    assert warn["status"] == "WARN" and "a.csv" in warn["message"]

    # A re-run of DAY1 reloads exactly that file, as it is now, and reports it reloaded.
    rerun = run_window(spec, DAY1)
    assert [f["path"] for f in rerun.metrics["files"]] == ["a.csv"] and rerun.loaded == 3
    assert rerun.metrics["changed_files"][0]["action"] == "reloaded"
    assert [(r[0], r[2]) for r in rows(wh)] == [(1, Decimal("10.00")), (2, Decimal("2.00")), (3, Decimal("3.00"))]
    assert rows(wh, "SELECT records, run_id FROM etl_files") == [(3, rerun.run_id)]
    # Now recorded as it is: DAY2 no longer reports it.
    assert run_window(spec, DAY2).metrics["changed_files"] == []

    (drop / "a.csv").unlink()
    gone = run_window(spec, DAY1)
    assert [m["path"] for m in gone.metrics["missing_files"]] == ["a.csv"]
    assert next(c for c in gone.checks if c["check"] == "files_changed")["status"] == "WARN"
    assert len(rows(wh)) == 3  # rows of a vanished file stay


def test_touched_but_unchanged_file_is_not_reported(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    write(tmp_path / "a.csv", "id,name,amount\n1,a,1\n", "2025-01-01T10:00:00")
    spec = make_spec(tmp_path)
    run_window(spec, DAY1)
    at(tmp_path / "a.csv", "2025-01-02T10:00:00")  # same bytes, new modification time
    result = run_window(spec, DAY2)
    assert result.metrics["files"] == [] and result.metrics["changed_files"] == []


def test_manifest_commits_with_the_data(tmp_path, connections, sqlite_url, monkeypatch):
    """A load that fails after writing etl_files rolls it back with the data: a re-run loads the file again."""
    import driftless.load.entry as entry  # the one load writes the run record (driftless.load.entry.load_rows)
    from driftless.errors import LoadError

    connections(wh=sqlite_url)
    write(tmp_path / "a.csv", "id,name,amount\n1,a,1\n")
    spec = make_spec(tmp_path)

    def broken(*args, **kwargs):
        raise LoadError("the run record could not be written")

    monkeypatch.setattr(entry, "record_run", broken)
    with pytest.raises(LoadError):
        run_window(spec, DAY1)
    monkeypatch.undo()
    connections(wh=sqlite_url)
    assert rows(sqlite_url, "SELECT count(*) FROM etl_files") == [(0,)]
    assert rows(sqlite_url, "SELECT count(*) FROM orders") == [(0,)]
    assert run_window(spec, DAY1).loaded == 1
    assert rows(sqlite_url, "SELECT path FROM etl_files") == [("a.csv",)]


# ---------------------------------------------------------------------------------------------------------
# Checks: records per file against records accounted for
# ---------------------------------------------------------------------------------------------------------


def test_file_records_check(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    write(tmp_path / "a.csv", "id,name,amount\n1,a,1\n2,b,bad\n1,a,1\n")
    write(tmp_path / "b.csv", "id,name,amount\n3,c,3\n")
    spec = make_spec(tmp_path)
    result = run_window(spec, DAY1)
    check = next(c for c in result.checks if c["check"] == "file_records")
    assert (check["status"], check["source"], check["target"]) == ("PASS", 4, 4)
    assert (result.loaded, result.quarantined, result.deduplicated) == (2, 1, 1)
    # The same check against counts that do not add up (a run that lost a record) fails, naming the numbers.
    result.loaded -= 1
    failed = next(c for c in FileSource(spec).window_checks(result) if c["check"] == "file_records")
    assert failed["status"] == "FAIL" and "held 4 records but 3 are accounted for" in failed["message"]


# ---------------------------------------------------------------------------------------------------------
# Compressed files, read as streams; memory bounded by chunk_size
# ---------------------------------------------------------------------------------------------------------


def _compress(data: bytes, codec: str) -> bytes:
    if codec == "gzip":
        return gzip.compress(data, compresslevel=1)
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "codec", "n", "chunk"), [("csv", "gzip", 1_200_000, 5_000),
                                                           ("jsonl", "zstd", 200_000, 1_000)])
def test_compressed_file_read_in_bounded_chunks(tmp_path, connections, sqlite_url, fmt, codec, n, chunk):
    """A file hundreds of times the chunk size: every chunk has chunk_size rows, and memory stays far below the file."""
    import tracemalloc

    connections(wh=sqlite_url)
    if fmt == "csv":
        body = "id,name,amount\n" + "".join(f"{i},name number {i} with some padding text,{i % 997}.25\n"
                                            for i in range(n))
    else:
        body = "".join(json.dumps({"id": i, "name": f"name number {i} with some padding text", "amount": i % 997})
                       + "\n" for i in range(n))
    raw = body.encode()
    suffix = ".gz" if codec == "gzip" else ".zst"
    write(tmp_path / f"big.{fmt}{suffix}", _compress(raw, codec))
    # 240 chunks of 5,000 CSV rows, 200 of 1,000 JSON lines (parsed into Python objects: a chunk costs more): the
    # file is hundreds of chunks, and tracemalloc (which slows every allocation) follows a few hundred chunks, not
    # the 12,000 of the suite's usual 100 rows.
    spec = make_spec(tmp_path, glob=f"*{suffix}", format=fmt).model_copy(update={"chunk_size": chunk})
    chunk_size = spec.chunk_size
    source = FileSource(spec)
    sizes, arrow_peak = [], 0
    tracemalloc.start()
    try:
        for frame in source.read(DAY1):
            sizes.append(len(frame))
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(sizes) == n and set(sizes[:-1]) == {chunk_size} and 0 < sizes[-1] <= chunk_size
    assert source.metrics["files"][0]["records"] == n
    # The file is never held whole: far less memory than its decompressed size (len(raw) is 66 MB / 15 MB).
    assert len(raw) > 12_000_000
    assert python_peak + arrow_peak < len(raw) / 3, (python_peak, arrow_peak, len(raw))
    assert source.metrics["files"][0]["sha256"] == hashlib.sha256((tmp_path / f"big.{fmt}{suffix}").read_bytes()
                                                                  ).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Bad files: a SourceError naming the file and the line; the window loads nothing
# ---------------------------------------------------------------------------------------------------------


def _fails(spec: Any, pattern: str, url: URL) -> str:
    with pytest.raises(SourceError, match=pattern) as info:
        run_window(spec, DAY1)
    assert rows(url, "SELECT count(*) FROM etl_runs WHERE status = 'failed'") == [(1,)]
    if _has(url, "etl_files"):
        assert rows(url, "SELECT count(*) FROM etl_files") == [(0,)]
    return str(info.value)


def _has(url: URL, table: str) -> bool:
    from sqlalchemy import inspect

    engine = create_engine(url)
    try:
        return inspect(engine).has_table(table)
    finally:
        engine.dispose()


CSV_CASES = [
    ("truncated.csv.gz", gzip.compress(b"id,name,amount\n" + b"".join(b"%d,n%d,%d\n" % (i, i * 7, i)
                                                                        for i in range(5000)))[:-100],
     r"file truncated.csv.gz: the file is truncated or its compression is corrupt \(Truncated compressed "
     r"stream\), at its start; nothing"),
    ("cut.csv.gz", (lambda z: z[:len(z) // 2])(gzip.compress(b"id,name,amount\n" + b"".join(
        b"%d,n%d,%d\n" % (i, i * 7919 % 100003, i) for i in range(400_000)), compresslevel=1)),
     r"file cut.csv.gz: the file is truncated or its compression is corrupt \(Truncated compressed stream\), "
     r"after line [1-9]\d{4,}; nothing"),
    ("latin.csv", "id,name,amount\n1,a,1\n2,Jos\u00e9,2\n".encode("latin-1"),
     r"file latin.csv, line 3: not valid utf-8 .*declare the file's encoding in source.encoding"),
    ("header.csv", b"id,title,amount\n1,a,1\n",
     r"file header.csv, line 1: the header lacks column\(s\) \['name'\] that the spec reads; it has \['id', 'title'"),
    ("fields.csv", b"id,name,amount\n1,a,1\n2,b,2\n3,c\n4,d,4\n",
     r"file fields.csv, line 4: expected 3 fields as in the header, found 2: '3,c'"),
    ("empty.csv", b"", r"file empty.csv, line 1: expected a header line naming the columns, found an empty file"),
]


@pytest.mark.parametrize(("name", "body", "pattern"), CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_bad_csv_files(tmp_path, connections, sqlite_url, name, body, pattern):
    connections(wh=sqlite_url)
    write(tmp_path / "good.csv", "id,name,amount\n9,ok,9\n", "2025-01-01T01:00:00")  # read first, loaded never
    write(tmp_path / name, body)
    _fails(make_spec(tmp_path, glob="*.csv*"), pattern, sqlite_url)
    if _has(sqlite_url, "orders"):
        assert rows(sqlite_url, "SELECT count(*) FROM orders") == [(0,)]


def test_bad_jsonl_and_parquet_files(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    write(tmp_path / "j" / "a.jsonl", '{"id": 1, "name": "a", "amount": 1}\n{"id": 2, "name": \n')
    _fails(make_spec(tmp_path / "j", glob="*.jsonl", format="jsonl"),
           r"file a.jsonl, line 2: not valid JSON \(Expecting value at column 19\)", sqlite_url)
    write(tmp_path / "k" / "a.jsonl", '{"id": 1, "name": "a", "amount": 1}\n[1, 2]\n')
    with pytest.raises(SourceError, match=r"file a.jsonl, line 2: expected a JSON object per line, got list"):
        run_window(make_spec(tmp_path / "k", glob="*.jsonl", format="jsonl"), DAY1)
    write(tmp_path / "t" / "a.jsonl", '{"id": 1, "name": "a", "amount": 1}\n{"id": 2, "na')
    with pytest.raises(SourceError, match=r"file a.jsonl, line 2: not valid JSON .*; the file may be truncated"):
        run_window(make_spec(tmp_path / "t", glob="*.jsonl", format="jsonl"), DAY1)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": [1, 2], "name": ["a", "b"], "amount": [1, 2]}), sink)
    write(tmp_path / "p" / "cut.parquet", sink.getvalue().to_pybytes()[:-30])
    with pytest.raises(SourceError, match=r"file cut.parquet: not a readable Parquet file"):
        run_window(make_spec(tmp_path / "p", glob="*.parquet", format="parquet"), DAY1)


def test_unreadable_file(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    write(tmp_path / "a.csv", "id,name,amount\n1,a,1\n")
    write(tmp_path / "b.csv.gz", "id,name,amount\n2,b,2\n")  # named .gz, but not gzip
    with pytest.raises(SourceError, match=r"file b.csv.gz: cannot read it, at its start: zlib inflate failed"):
        run_window(make_spec(tmp_path, glob="*.csv*"), DAY1)


def test_empty_cursor_in_a_file_column(tmp_path, connections, sqlite_url):
    connections(wh=sqlite_url)
    write(tmp_path / "a.csv", "id,name,amount,updated\n1,a,1,2025-01-01\n2,b,2,\n3,c,3,2025-01-01\n")
    data = copy.deepcopy(BASE)
    data["source"].update(location=str(tmp_path), cursor="updated")
    data["columns"].append({"name": "updated", "type": "date"})
    with pytest.raises(SourceError, match=r"file a.csv, line 3: the cursor 'updated' is empty"):
        run_window(parse_spec(data, "t"), DAY1)
    data["source"]["null_cursor"] = "skip"
    result = run_window(parse_spec(data, "t"), DAY1)
    assert result.loaded == 2 and result.metrics["files"][0]["null_cursor_skipped"] == 1
    assert next(c for c in result.checks if c["check"] == "file_records")["status"] == "PASS"
    assert next(c for c in result.checks if c["check"] == "null_cursor_rows")["status"] == "WARN"


# ---------------------------------------------------------------------------------------------------------
# The shipped demo pipeline, as an Airflow DAG
# ---------------------------------------------------------------------------------------------------------


def test_demo_file_pipeline_builds_a_dag():
    from driftless.airflow.dags import build_dag
    from tests.airflow.test_dags import REPO

    dag = build_dag(REPO / "dags" / "pipelines" / "chinook_tracks_csv.yaml")
    assert [t.task_id for t in dag.topological_sort()] == ["extract", "load", "reconcile"]
    assert "source:file" in dag.tags
    assert [a.uri for a in dag.get_task("load").outlets] == ["driftless://warehouse/default/tracks"]


@pytest.mark.airflow
@pytest.mark.slow
def test_demo_file_pipeline_runs_in_airflow_by_day(airflow_db, tmp_path, monkeypatch, connections, sqlite_url):
    import yaml

    from driftless.airflow.dags import build_dag
    from tests.airflow.test_dags import REPO
    from tools.demo import prepare_file_drop

    connections(warehouse=sqlite_url)
    prepare_file_drop(tmp_path / "drops")
    data = yaml.safe_load((REPO / "dags" / "pipelines" / "chinook_tracks_csv.yaml").read_text())
    data["source"]["location"] = str(tmp_path / "drops")
    specs_dir = tmp_path / "pipelines"
    specs_dir.mkdir()
    spec_path = specs_dir / "chinook_tracks_csv.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
    # The run at 2025-06-02 00:00 syncs [06-01, 06-02) (and the day before, lag P1D): the 06-01 file.
    run = build_dag(spec_path).test(logical_date=datetime(2025, 6, 2, tzinfo=UTC))
    assert run.state == "success"
    assert rows(sqlite_url, "SELECT count(*), min(_file), max(_file) FROM tracks") == [
        (1752, "tracks/2025-06-01/tracks.csv.gz", "tracks/2025-06-01/tracks.csv.gz")]
    run = build_dag(spec_path).test(logical_date=datetime(2025, 6, 3, tzinfo=UTC))
    assert run.state == "success"
    assert rows(sqlite_url, "SELECT count(*), round(sum(unit_price), 2) FROM tracks") == [(3503, 3680.97)]
    assert rows(sqlite_url, "SELECT path, records FROM etl_files ORDER BY path") == [
        ("tracks/2025-06-01/tracks.csv.gz", 1752), ("tracks/2025-06-02/tracks.csv.gz", 1751)]


def test_big_integers_beside_nulls_convert_exactly():
    """Raw integers in an object column with NULLs (JSON Lines, Parquet, REST) keep every digit."""
    import pandas as pd

    from driftless.extract.transform import convert_column

    conv = convert_column(pd.Series([2**62 + 1, None, 12, -(2**63)], dtype=object), "bigint")
    assert conv.values.tolist()[0] == 2**62 + 1 and conv.values.tolist()[3] == -(2**63)
    assert not conv.bad.any()


def test_csv_reader_hands_over_frames_of_exactly_batch_rows(tmp_path):
    """The reader cuts Arrow's blocks into frames of exactly ``batch_rows`` (the last one shorter): every record
    once, in order, with the line it starts on, also across a value that spans lines."""
    from fsspec.implementations.local import LocalFileSystem

    from driftless.sources.files.readers import OpenFile, read_csv

    body = "id,name\n" + "".join(f'{i},"name\n{i}"\n' if i == 500 else f"{i},n{i}\n" for i in range(1000))
    path = write(tmp_path / "a.csv", body)
    spec = make_spec(tmp_path, csv={"newlines_in_values": True}).source
    opened = OpenFile(LocalFileSystem(), str(path), "a.csv", None)
    try:
        got = list(read_csv(opened, spec, ["id", "name"], batch_rows=300))
    finally:
        opened.close()
    assert [len(frame) for frame, _ in got] == [300, 300, 300, 100]
    assert all(len(frame) == len(lines) for frame, lines in got)
    ids = [int(v) for frame, _ in got for v in frame["id"]]
    lines = [int(n) for _, ls in got for n in ls]
    assert ids == list(range(1000))
    assert lines == [i + 2 if i <= 500 else i + 3 for i in range(1000)]  # record 500 spans two lines
    assert got[1][0]["name"].iloc[200] == "name\n500"
