"""dlt side of the benchmarks; runs under the bench-only venv (.venv-bench), never the main one.

``python benchmarks/dlt_cases.py merge FILES_JSON | window --n N`` prints one JSON line with
``seconds``, ``peak_rss_mb`` and ``baseline_rss_mb`` (VmHWM, see ``benchmarks.rss``).
dlt gets its fastest documented inputs: Arrow tables for the merge
case, the ``pyarrow`` backend for ``sql_database``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "bench-results"
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "driftless_bench")  # as in benchmarks/cases.py
TARGET = f"postgresql://postgres:trust@127.0.0.1:5432/{DB_PREFIX}_tgt"
SOURCE = f"postgresql://postgres:trust@127.0.0.1:5432/{DB_PREFIX}_src"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=["merge", "window"])
    parser.add_argument("--files", help="JSON list of Parquet files (merge)")
    parser.add_argument("--chunk", type=int, default=50_000)
    args = parser.parse_args()
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    import dlt

    sys.path.insert(0, str(RESULTS.parent))
    from benchmarks import rss

    if args.case == "merge":
        import pyarrow.parquet  # noqa: F401 - imports are baseline, as in the driftless cases
    else:
        from dlt.sources.sql_database import sql_database  # noqa: F401
    baseline = rss.baseline_mb()
    t0 = time.perf_counter()
    pipeline = dlt.pipeline(pipeline_name=f"bench_{args.case}", pipelines_dir=str(RESULTS / "dlt"),
                            destination=dlt.destinations.postgres(credentials=TARGET), dataset_name="dlt_bench")
    if args.case == "merge":
        import pyarrow.parquet as pq

        files = json.loads(args.files)

        @dlt.resource(name="orders", primary_key="id", write_disposition="merge")
        def orders():
            for name in files:
                yield pq.read_table(name)

        info = pipeline.run(orders())
    else:
        from dlt.sources.sql_database import sql_database

        source = sql_database(SOURCE, table_names=["orders"], backend="pyarrow", chunk_size=args.chunk)
        source.orders.apply_hints(primary_key="id", write_disposition="merge")
        info = pipeline.run(source)
    seconds = time.perf_counter() - t0
    peak = rss.peak_mb()
    info.raise_on_failed_jobs()
    # Untimed: the merge really holds the rows it was given (one per key), so the figure is what it says.
    import psycopg

    with psycopg.connect(TARGET) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT id) FROM dlt_bench.orders").fetchone() or (0, 0)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "baseline_rss_mb": baseline,
                      "rows": rows[0], "distinct_keys": rows[1]}))


if __name__ == "__main__":
    main()
