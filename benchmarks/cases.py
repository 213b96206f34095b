"""One benchmark case per process: ``python benchmarks/cases.py CASE setup|measure --n N``.

``setup`` prepares the databases untimed (a fresh target; for "nightly" cases also the first load);
``measure`` runs the timed step and prints one JSON line with ``seconds``, ``peak_rss_mb`` (this process's
VmHWM, ``benchmarks.rss``: everything the case held in memory, imports included) and ``baseline_rss_mb``
(VmHWM once the imports were done, before the step: the interpreter plus imports).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from sqlalchemy import URL, create_engine, text  # noqa: E402

from benchmarks import data, rss  # noqa: E402

RESULTS = REPO / "bench-results"
DATA = RESULTS / "data"
PG = URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=5432)
# BENCH_DB_PREFIX names the benchmark's databases, so that two benchmark runs on one server keep apart.
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "driftless_bench")
PG_TARGET, PG_SOURCE = f"{DB_PREFIX}_tgt", f"{DB_PREFIX}_src"
MARIADB = URL.create("mysql+pymysql", username="root", host="127.0.0.1", port=3306)
MARIADB_DB = DB_PREFIX
SQLITE_PATH = RESULTS / "bench.db"
DLT_DIR = RESULTS / "dlt"
TO_SQL_CAP = int(os.environ.get("BENCH_TO_SQL_ROWS", "100000"))


def conn_env(n: int) -> None:
    """Connection ids of the bench spec (wh: target, src: source), as AIRFLOW_CONN_* variables."""
    os.environ["AIRFLOW_CONN_SRC"] = PG.set(drivername="postgresql", database=PG_SOURCE).render_as_string(False)
    os.environ.setdefault("AIRFLOW_CONN_WH", PG.set(drivername="postgresql", database=PG_TARGET)
                          .render_as_string(False))


def target_env(kind: str, pg_db: str = PG_TARGET) -> None:
    if kind == "pg":
        url = PG.set(drivername="postgresql", database=pg_db).render_as_string(False)
    elif kind == "mariadb":
        url = MARIADB.set(drivername="mysql", database=MARIADB_DB).render_as_string(False)
    else:
        url = f"sqlite:///{SQLITE_PATH}"
    os.environ["AIRFLOW_CONN_WH"] = url


def recreate_pg(name: str) -> None:
    admin = create_engine(PG.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def recreate_mariadb() -> None:
    admin = create_engine(MARIADB.set(database="mysql"))
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{MARIADB_DB}`"))
        conn.execute(text(f"CREATE DATABASE `{MARIADB_DB}` CHARACTER SET utf8mb4"))
    admin.dispose()


def recreate_sqlite() -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{SQLITE_PATH}{suffix}").unlink(missing_ok=True)


def spec():
    from driftless.spec import parse_spec

    return parse_spec(data.SPEC, "bench")


def window():
    from driftless.window import Window

    return Window.parse(*data.WINDOW)


def create_target(kind: str) -> None:
    """The target table as driftless creates it (same DDL for the raw baselines)."""
    from driftless.connections import resolve_url
    from driftless.load.modes import write_mode_for
    from driftless.schema import target_table
    from driftless.targets.loaders import loader_for

    target_env(kind)
    s = spec()
    loader = loader_for(resolve_url("wh"))
    loader.ensure_tables(write_mode_for(s).table(target_table(s)))
    loader.dispose()


def driftless_load(kind: str, variant: str, n: int, pg_db: str = PG_TARGET) -> dict:
    from driftless.extract.staging import Manifest
    from driftless.pipeline import load_window

    target_env(kind, pg_db)
    dirs = data.prepare(DATA, n)
    result = load_window(spec(), window(), Manifest.read(dirs[variant]), f"bench_{variant}")
    return {"rows": result.loaded, "written": result.written}


def text_file(n: int, fmt: str) -> Path:
    """The base data as one CSV (PostgreSQL COPY) or TSV (MariaDB LOAD DATA) file, made once."""
    path = DATA / f"n{n}" / f"base.{fmt}"
    if path.is_file():
        return path
    from driftless.load.base import as_text

    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        for name in data.manifest_files(data.prepare(DATA, n)["base"]):
            chunk = pq.read_table(name)
            if fmt == "csv":
                pacsv.write_csv(chunk, fh, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
            else:
                import pyarrow.compute as pc

                cols = [pc.fill_null(as_text(chunk[c]), "\\N") for c in chunk.column_names]
                lines = pc.binary_join_element_wise(*cols, "\t")
                fh.write(("\n".join(lines.to_pylist()) + "\n").encode())
    tmp.replace(path)
    return path


def setup(case: str, n: int) -> None:
    data.prepare(DATA, n)
    if case.startswith(("pg_", "dlt_merge")) and case != "pg_raw_copy_out":
        recreate_pg(PG_TARGET)
        shutil.rmtree(DLT_DIR, ignore_errors=True)
        if case in ("pg_raw_copy", "pg_to_sql"):
            create_target("pg")
        if case == "pg_raw_copy":
            text_file(n, "csv")
        if case == "pg_raw_copy_nopk":
            text_file(n, "csv")
            eng = create_engine(PG.set(database=PG_TARGET))
            with eng.begin() as conn:
                conn.execute(text("CREATE TABLE orders (id bigint NOT NULL, customer_id integer NOT NULL, "
                                  "qty integer NOT NULL, status text NOT NULL, amount numeric(12,2) NOT NULL, "
                                  "currency varchar(3) NOT NULL, created_at timestamptz NOT NULL, "
                                  "updated_at timestamptz NOT NULL, note text)"))
            eng.dispose()
        if case == "pg_upsert_nightly":
            driftless_load("pg", "base", n)
    elif case.startswith("mariadb_"):
        recreate_mariadb()
        if case == "mariadb_raw_load":
            create_target("mariadb")
            text_file(n, "tsv")
        if case == "mariadb_upsert_nightly":
            driftless_load("mariadb", "base", n)
    elif case.startswith("sqlite_"):
        recreate_sqlite()
        if case == "sqlite_raw_insert":
            create_target("sqlite")
        if case == "sqlite_upsert_nightly":
            driftless_load("sqlite", "base", n)
    elif "window" in case or case == "pg_raw_copy_out":
        prepare_source(n)
        recreate_pg(PG_TARGET)
        shutil.rmtree(DLT_DIR, ignore_errors=True)


def prepare_source(n: int) -> None:
    """A PostgreSQL source database holding the base data, indexed on the cursor (made once per N)."""
    eng = create_engine(PG.set(database="postgres"))
    with eng.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": PG_SOURCE}).first()
    eng.dispose()
    if exists:
        src = create_engine(PG.set(database=PG_SOURCE))
        with src.connect() as conn:
            try:
                if conn.execute(text("SELECT count(*) FROM orders")).scalar() == n:
                    src.dispose()
                    return
            except Exception:  # noqa: BLE001 - half-made source: rebuild
                pass
        src.dispose()
    recreate_pg(PG_SOURCE)
    driftless_load("pg", "base", n, pg_db=PG_SOURCE)
    src = create_engine(PG.set(database=PG_SOURCE))
    with src.begin() as conn:
        conn.execute(text("CREATE INDEX ON orders (updated_at)"))
        conn.execute(text("DROP TABLE etl_state; DROP TABLE etl_runs"))
        conn.execute(text("ANALYZE orders"))
    src.dispose()


def measure(case: str, n: int) -> dict:
    out: dict = {}
    import driftless.pipeline  # noqa: F401
    import driftless.targets.sqlite.load  # noqa: F401 - imports are not what is measured

    if "window" in case:
        rss.import_window_modules()
    baseline = rss.baseline_mb()
    t0 = time.perf_counter()
    if case in ("pg_upsert_first", "pg_upsert_nightly"):
        out = driftless_load("pg", "nightly" if case.endswith("nightly") else "base", n)
    elif case in ("mariadb_upsert_first", "mariadb_upsert_nightly"):
        out = driftless_load("mariadb", "nightly" if case.endswith("nightly") else "base", n)
    elif case in ("sqlite_upsert_first", "sqlite_upsert_nightly"):
        out = driftless_load("sqlite", "nightly" if case.endswith("nightly") else "base", n)
    elif case in ("pg_raw_copy", "pg_raw_copy_nopk"):
        import psycopg

        path = text_file(n, "csv")
        t0 = time.perf_counter()
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={PG_TARGET}") as conn:
            with conn.cursor().copy("COPY orders FROM STDIN WITH (FORMAT csv)") as copy, open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    copy.write(block)
    elif case == "pg_raw_copy_out":
        import psycopg

        # The floor of an extract: the source table as CSV, streamed to a file (no window filter, no order).
        path = RESULTS / "copy-out.csv"
        t0 = time.perf_counter()
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={PG_SOURCE}") as conn:
            with conn.cursor().copy("COPY orders TO STDOUT WITH (FORMAT csv)") as copy, open(path, "wb") as fh:
                for block in copy:
                    fh.write(block)
        out["seconds"] = time.perf_counter() - t0
        path.unlink()
    elif case == "mariadb_raw_load":
        import pymysql

        path = text_file(n, "tsv")
        t0 = time.perf_counter()
        conn = pymysql.connect(host="127.0.0.1", user="root", database=MARIADB_DB, local_infile=True,
                               charset="utf8mb4")
        with conn.cursor() as cur:
            cur.execute("LOAD DATA LOCAL INFILE %s INTO TABLE orders CHARACTER SET utf8mb4", (str(path),))
        conn.commit()
        conn.close()
    elif case == "sqlite_raw_insert":
        from driftless.targets.sqlite.load import sqlite_columns

        files = data.manifest_files(data.prepare(DATA, n)["base"])
        t0 = time.perf_counter()
        db = sqlite3.connect(SQLITE_PATH, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        for name in files:
            chunk = pq.read_table(name)
            db.executemany(f"INSERT INTO orders VALUES ({', '.join('?' * chunk.num_columns)})",
                           zip(*sqlite_columns(chunk), strict=True))
        db.execute("COMMIT")
        db.close()
    elif case == "pg_to_sql":
        rows = min(n, TO_SQL_CAP)
        files = data.manifest_files(data.prepare(DATA, n)["base"])
        frames, got = [], 0
        for name in files:
            if got >= rows:
                break
            frames.append(pq.read_table(name).slice(0, rows - got))
            got += frames[-1].num_rows
        frame = pa.concat_tables(frames).to_pandas()
        eng = create_engine(PG.set(database=PG_TARGET))
        t0 = time.perf_counter()
        from sqlalchemy import Numeric

        frame.to_sql("orders", eng, if_exists="append", index=False, chunksize=10_000,
                     dtype={"amount": Numeric(12, 2)})
        eng.dispose()
        seconds = time.perf_counter() - t0
        # to_sql is far too slow to run at N; its time is scaled linearly from ``rows`` rows.
        out = {"rows": rows, "measured_s": seconds, "extrapolated": rows < n, "seconds": seconds * n / rows}
    elif case == "window_pg_to_pg":
        from driftless.pipeline import run_window

        conn_env(n)
        target_env("pg")
        result = run_window(spec(), window(), run_id=f"bench_window_{os.getpid()}")  # own staging dir
        out = {"rows": result.loaded, "checks": [c["status"] for c in result.checks]}
    else:
        raise SystemExit(f"unknown case {case!r}")
    out.setdefault("seconds", time.perf_counter() - t0)
    out["peak_rss_mb"] = rss.peak_mb()
    out["baseline_rss_mb"] = baseline
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("phase", choices=["setup", "measure"])
    parser.add_argument("--n", type=int, required=True)
    args = parser.parse_args()
    if args.phase == "setup":
        setup(args.case, args.n)
        print(json.dumps({"ok": True}))
    else:
        print(json.dumps(measure(args.case, args.n)))


if __name__ == "__main__":
    main()
