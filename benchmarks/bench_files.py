"""File source benchmark: a CSV and a Parquet file of N rows into PostgreSQL, against raw COPY of the same file.

Each case runs in its own process (``python benchmarks/bench_files.py measure CASE --n N``), which reports its
wall time, peak RSS (``VmHWM``, ``benchmarks.rss``: everything the process held, imports included) and the
baseline beside it (VmHWM once the imports were done):

* ``raw_copy_csv``: ``COPY orders FROM STDIN (FORMAT csv, HEADER)`` of the CSV file into an empty table with the
  primary key, streamed from the file: the floor for loading that file.
* ``raw_copy_parquet``: the Parquet file read with pyarrow and written as CSV into the same COPY (PostgreSQL has
  no Parquet COPY; this is the least a loader of the file must do).
* ``driftless_csv`` / ``driftless_parquet``: ``run_window`` of a ``source.type: file`` pipeline (every value read
  as raw text or as stored, converted and validated by the spec's rules, staged, merged into the target with the
  watermark and ``etl_files`` in one transaction, then the window's checks) into an empty target.

    python benchmarks/bench_files.py --n 1000000

``run(n)`` is picked up by ``make bench``. Files and databases are made untimed before each case.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import URL, create_engine, text  # noqa: E402

from benchmarks import rss  # noqa: E402

PG = URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=5432)
DB = f"{os.environ.get('BENCH_DB_PREFIX', 'driftless_bench')}_files"  # BENCH_DB_PREFIX as in cases.py
DATA = REPO / "bench-results" / "files"
CASES = ["raw_copy_csv", "driftless_csv", "raw_copy_parquet", "driftless_parquet"]
DDL = ("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id integer NOT NULL, status text, "
       "amount numeric(12,2), currency varchar(3), created_at timestamptz)")
COLUMNS = [
    {"name": "id", "type": "bigint", "nullable": False},
    {"name": "customer_id", "type": "integer", "nullable": False},
    {"name": "status", "type": "text"},
    {"name": "amount", "type": "numeric(12,2)"},
    {"name": "currency", "type": "varchar(3)"},
    {"name": "created_at", "type": "timestamptz"},
]


def files(n: int) -> tuple[Path, Path]:
    """The CSV and Parquet files of N rows (made once per N, deterministic)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    DATA.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = DATA / f"orders_{n}.csv", DATA / f"orders_{n}.parquet"
    if csv_path.exists() and parquet_path.exists():
        return csv_path, parquet_path
    ids = np.arange(1, n + 1, dtype=np.int64)
    table = pa.table({
        "id": ids,
        "customer_id": pa.array((ids * 7919) % 50_000, pa.int32()),
        "status": pa.array(np.array(["new", "paid", "shipped", "cancelled"])[ids % 4]),
        "amount": pa.array(((ids * 104729) % 10_000_000) / 100).cast(pa.decimal128(12, 2)),
        "currency": pa.array(np.array(["EUR", "USD", "NOK"])[ids % 3]),
        "created_at": pa.array(1_735_689_600_000_000 + ids * 997_000, pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, parquet_path, row_group_size=100_000)
    # ISO 8601 with a zone, as driftless reads timestamps by default (and COPY accepts)
    text_table = table.set_column(5, "created_at", pa.compute.strftime(table["created_at"], "%Y-%m-%dT%H:%M:%S%z"))
    pcsv.write_csv(text_table, csv_path, pcsv.WriteOptions(quoting_style="needed"))
    when = time.mktime((2025, 1, 1, 12, 0, 0, 0, 0, 0)) - time.timezone
    for path in (csv_path, parquet_path):
        os.utime(path, (when, when))
    return csv_path, parquet_path


def case_env() -> dict[str, str]:
    """The environment of a case's process: Arrow's system allocator (read when pyarrow loads, so set here)."""
    return {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system")}


def recreate_db(create: bool = True) -> None:
    admin = create_engine(PG.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
        if create:
            conn.execute(text(f'CREATE DATABASE "{DB}"'))
    admin.dispose()


def spec(path: Path, fmt: str):
    from driftless.spec import parse_spec

    return parse_spec({"name": f"bench_files_{fmt}", "chunk_size": 50_000, "source": {
        "type": "file", "location": str(path.parent), "glob": path.name, "format": fmt, "primary_key": ["id"],
        "cursor": "_file_time"}, "target": {"connection": "bench_wh", "table": "orders"},
        "columns": [*COLUMNS, {"name": "_file_time", "type": "timestamptz", "nullable": False}]}, "bench")


def measure(case: str, n: int) -> dict:
    """One timed case in this process; the database was made fresh by the caller."""
    import psycopg

    csv_path, parquet_path = files(n)
    os.environ["AIRFLOW_CONN_BENCH_WH"] = PG.set(drivername="postgresql", database=DB).render_as_string(False)
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from driftless.pipeline import run_window  # imports are not timed
    from driftless.window import Window

    if not case.startswith("raw_copy"):
        rss.import_window_modules()
    baseline = rss.baseline_mb()
    started = time.perf_counter()
    if case.startswith("raw_copy"):
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={DB}") as conn:
            conn.execute(DDL)
            with conn.cursor().copy("COPY orders FROM STDIN (FORMAT csv, HEADER)") as copy:
                if case == "raw_copy_csv":
                    with open(csv_path, "rb") as f:
                        while block := f.read(1 << 20):
                            copy.write(block)
                else:
                    for i, batch in enumerate(pq.ParquetFile(parquet_path).iter_batches(batch_size=50_000)):
                        sink = pa.BufferOutputStream()
                        pcsv.write_csv(pa.Table.from_batches([batch]), sink,
                                       pcsv.WriteOptions(include_header=i == 0))
                        copy.write(sink.getvalue().to_pybytes())
            loaded = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    else:
        fmt = "csv" if case == "driftless_csv" else "parquet"
        result = run_window(spec(csv_path if fmt == "csv" else parquet_path, fmt),
                            Window.parse("2025-01-01", "2025-01-02"))
        loaded = result.loaded
        assert result.status == "success", result.checks
    seconds = time.perf_counter() - started
    assert loaded == n, f"{case}: loaded {loaded} of {n}"
    return {"case": case, "seconds": round(seconds, 2), "peak_rss_mb": rss.peak_mb(), "baseline_rss_mb": baseline,
            "arrow_pool": pa.default_memory_pool().backend_name}


def run(n: int, reps: int = 1) -> dict:
    """Every case ``reps`` times, each in a fresh process and database; returns the JSON keys.

    Seconds are the median of the repetitions (as ``benchmarks/run.py`` says); peak RSS the largest. The
    cases of one repetition run side by side (raw COPY, then driftless, of each format), so the ratio compares
    runs made under the same load.
    """
    files(n)  # untimed
    got: dict[str, list[dict]] = {case: [] for case in CASES}
    for _ in range(reps):
        for case in CASES:
            recreate_db()
            proc = subprocess.run([sys.executable, __file__, "measure", case, "--n", str(n)], capture_output=True,
                                  text=True, cwd=tempfile.gettempdir(), env=case_env())
            if proc.returncode != 0:
                raise RuntimeError(f"{case} failed: {proc.stderr.strip().splitlines()[-3:]}")
            got[case].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out: dict = {}
    for case in CASES:
        runs = sorted(got[case], key=lambda r: r["seconds"])
        best = runs[len(runs) // 2] | {"peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
        print(f"  {case:<20} {best['seconds']:>8.2f} s  peak RSS {best['peak_rss_mb']:>6.0f} MB "
              f"(baseline {best['baseline_rss_mb']:.0f} MB)", flush=True)
        out[f"files_{case}_s"] = best["seconds"]
        out[f"files_{case}_rss_mb"] = best["peak_rss_mb"]
        out[f"files_{case}_baseline_rss_mb"] = best["baseline_rss_mb"]
    for fmt in ("csv", "parquet"):
        ratio = out[f"files_driftless_{fmt}_s"] / out[f"files_raw_copy_{fmt}_s"]
        out[f"files_{fmt}_vs_raw_copy"] = round(ratio, 2)
        per_rep = [d["seconds"] / r["seconds"] for d, r in zip(got[f"driftless_{fmt}"], got[f"raw_copy_{fmt}"],
                                                                strict=True)]
        print(f"  driftless / raw COPY ({fmt}): {ratio:.2f}x (goal <= 2x; per repetition "
              f"{', '.join(f'{x:.2f}' for x in per_rep)})", flush=True)
    recreate_db(create=False)  # leave nothing behind
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="all", choices=["all", "measure"])
    parser.add_argument("case", nargs="?", choices=CASES)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "measure":
        print(json.dumps(measure(args.case, args.n)))
    else:
        print(json.dumps(run(args.n, args.reps)))


if __name__ == "__main__":
    main()
