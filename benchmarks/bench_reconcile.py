"""Deep diff vs count(*) scans vs a pandas pull, on N rows with 150 planted differences.

PostgreSQL holds the source; the target is MariaDB (keys ``recon_*``) and SQLite (keys
``recon_sqlite_*``). 150 differences are planted at random (seeded) keys: 50 changed rows (amount,
name, timestamp or flag), 50 rows missing in the target, 50 extra rows in the target.

Both tables carry a stored row digest (``etl digest add``, ``driftless.reconcile.digest``), added before
the changes are planted: PostgreSQL and MariaDB re-hash the changed rows themselves; in SQLite a
trigger clears the digest of each changed row and the diff hashes those rows as it reads them.

* ``recon_deep_s``: the deep diff finding them (``driftless.reconcile.diff.DeepDiff``, connections included).
* ``recon_deep_hashing_s``: the same diff told not to use the digests (it hashes every row).
* ``recon_digest_add_s``: adding the digests (once per table; afterwards the databases keep them).
* ``recon_count_scan_s``: ``SELECT count(*)`` on both sides (in parallel, as the diff queries them).
* ``recon_pandas_s``: both tables read into pandas, normalized, outer-merged and compared.
* ``recon_found``: differences the deep diff found (all 150 expected, nothing else).

Each method runs once untimed before its timed run, so that all are measured with warm caches.

Usage: ``python benchmarks/bench_reconcile.py --n 1000000`` (prints one JSON line). ``run(n)``
returns the same dict for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from sqlalchemy import URL, create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driftless.reconcile.cli import digest_command_run  # noqa: E402
from driftless.reconcile.diff import DeepDiff  # noqa: E402

PG_ADMIN = URL.create("postgresql+psycopg", username=os.environ.get("DRIFTLESS_PG_USER", "postgres"),
                      host=os.environ.get("DRIFTLESS_PG_HOST", "127.0.0.1"),
                      port=int(os.environ.get("DRIFTLESS_PG_PORT", "5432")), database="postgres")
MARIADB_ADMIN = URL.create("mysql+pymysql", username=os.environ.get("DRIFTLESS_MARIADB_USER", "root"),
                           host=os.environ.get("DRIFTLESS_MARIADB_HOST", "127.0.0.1"),
                           port=int(os.environ.get("DRIFTLESS_MARIADB_PORT", "3306")), database="test",
                           query={"charset": "utf8mb4"})
DB = f"{os.environ.get('BENCH_DB_PREFIX', 'driftless_bench')}_recon"  # BENCH_DB_PREFIX as in cases.py
PLANTED = 150


def _exec(url: URL, *statements: str, autocommit: bool = False) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT") if autocommit else create_engine(url)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(text(s))
    engine.dispose()


def plan(n: int, seed: int = 6) -> dict[str, list[int]]:
    """Which keys get which planted difference (disjoint, spread over the whole key range)."""
    keys = random.Random(seed).sample(range(1, n + 1), PLANTED)
    return {"changed": sorted(keys[:50]), "missing": sorted(keys[50:100]), "extra": sorted(keys[100:])}


def _update_sql(keys: list[int]) -> list[str]:
    # four kinds of change, round robin: amount, name, timestamp (+1 microsecond), flag
    out = []
    for j, k in enumerate(keys):
        out.append([
            f"UPDATE bench SET amount = amount + 0.01 WHERE id = {k}",
            f"UPDATE bench SET name = 'changed-{k}' WHERE id = {k}",
            f"UPDATE bench SET ts = {{ts_plus}} WHERE id = {k}",
            f"UPDATE bench SET flag = NOT flag WHERE id = {k}",
        ][j % 4])
    return out


def setup_postgres(n: int, deleted: list[int]) -> URL:
    _exec(PG_ADMIN, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', f'CREATE DATABASE "{DB}"', autocommit=True)
    url = PG_ADMIN.set(database=DB)
    _exec(url,
          "CREATE TABLE bench (id integer PRIMARY KEY, amount numeric(12,2), name text, ts timestamp(6), flag boolean)",
          "INSERT INTO bench SELECT i, (i * 7 % 100000) / 100.0, 'name-' || i, "
          f"timestamp '2025-01-01' + i * interval '1 second', i % 3 = 0 FROM generate_series(1, {n}) i",
          f"DELETE FROM bench WHERE id IN ({','.join(map(str, deleted))})",
          "ANALYZE bench")
    return url


def add_digest(url: URL) -> float:
    """Add the stored row digest; returns the seconds it took."""
    return float(digest_command_run(url, "bench", None, None)["duration_s"])


def setup_mariadb(n: int, p: dict[str, list[int]]) -> URL:
    _exec(MARIADB_ADMIN, f"DROP DATABASE IF EXISTS `{DB}`", f"CREATE DATABASE `{DB}` CHARACTER SET utf8mb4")
    url = MARIADB_ADMIN.set(database=DB)
    _exec(url,
          "CREATE TABLE bench (id INT PRIMARY KEY, amount DECIMAL(12,2), name TEXT, ts DATETIME(6), flag BOOL)",
          f"INSERT INTO bench SELECT seq, (seq * 7 % 100000) / 100, CONCAT('name-', seq), "
          f"TIMESTAMP '2025-01-01 00:00:00' + INTERVAL seq SECOND, seq % 3 = 0 FROM seq_1_to_{n}",
          f"DELETE FROM bench WHERE id IN ({','.join(map(str, p['missing']))})")
    return url


def plant_changes(url: URL, p: dict[str, list[int]]) -> None:
    ts_plus = {"mysql": "ts + INTERVAL 1 MICROSECOND", "sqlite": "substr(ts, 1, 20) || '000001'"}
    _exec(url, *[s.format(ts_plus=ts_plus[url.get_backend_name()]) for s in _update_sql(p["changed"])])


def setup_sqlite(n: int, p: dict[str, list[int]], directory: Path) -> URL:
    url = URL.create("sqlite", database=str(directory / "bench.db"))
    _exec(url,
          "CREATE TABLE bench (id INTEGER PRIMARY KEY, amount NUMERIC(12, 2), name TEXT, ts DATETIME, flag BOOLEAN)",
          f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) "
          "INSERT INTO bench SELECT i, (i * 7 % 100000) / 100.0, 'name-' || i, "
          "strftime('%Y-%m-%d %H:%M:%S', '2025-01-01', '+' || i || ' seconds') || '.000000', i % 3 = 0 FROM s",
          f"DELETE FROM bench WHERE id IN ({','.join(map(str, p['missing']))})")
    return url


def time_deep(source: URL, target: URL, use_digest: bool = True) -> tuple[float, dict]:
    t0 = time.perf_counter()
    with DeepDiff(source, target, "bench", ["id"], use_digest=use_digest) as diff:
        result = diff.run()
    elapsed = time.perf_counter() - t0
    return elapsed, {"missing": sorted(e["key"]["id"] for e in result.missing),
                     "extra": sorted(e["key"]["id"] for e in result.extra),
                     "changed": sorted(e["key"]["id"] for e in result.changed), "queries": result.queries,
                     "rows_fetched": result.rows_fetched, "row_digest": result.row_digest}


def time_count(source: URL, target: URL) -> float:
    engines = [create_engine(source), create_engine(target)]
    for e in engines:  # connect first: the diff's timing includes connecting, but a count is about the scan
        with e.connect() as conn:
            conn.execute(text("SELECT 1"))

    def count(engine):
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM bench")).scalar_one()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(count, engines))
    elapsed = time.perf_counter() - t0
    for e in engines:
        e.dispose()
    return elapsed


def time_pandas(source: URL, target: URL) -> tuple[float, int]:
    """Read both tables whole, normalize the values, outer-merge on the key and compare."""
    t0 = time.perf_counter()
    frames = []
    for url in (source, target):
        engine = create_engine(url)
        with engine.connect() as conn:
            df = pd.read_sql_query(text("SELECT id, amount, name, ts, flag FROM bench"), conn)
        engine.dispose()
        df["amount"] = df["amount"].astype(float).round(2)
        df["ts"] = pd.to_datetime(df["ts"])
        df["flag"] = df["flag"].astype(int)
        frames.append(df)
    merged = frames[0].merge(frames[1], on="id", how="outer", suffixes=("_s", "_t"), indicator=True)
    both = merged[merged["_merge"] == "both"]
    changed = sum(
        (both[f"{c}_s"] != both[f"{c}_t"]).to_numpy() for c in ("amount", "name", "ts", "flag")
    ).astype(bool).sum()
    found = int((merged["_merge"] != "both").sum() + changed)
    return time.perf_counter() - t0, found


def _measure(source: URL, target: URL, p: dict[str, list[int]], prefix: str, digest_s: float) -> dict:
    # Every method is timed warm (run once untimed first): right after the set-up, the database
    # caches hold whatever the set-up touched last, which would favour whichever method runs later.
    time_deep(source, target)
    deep_s, found = time_deep(source, target)
    time_deep(source, target, use_digest=False)
    hashing_s, found_hashing = time_deep(source, target, use_digest=False)
    time_count(source, target)
    count_s = time_count(source, target)
    time_pandas(source, target)
    pandas_s, pandas_found = time_pandas(source, target)
    exact = all(f["missing"] == p["missing"] and f["extra"] == p["extra"] and f["changed"] == p["changed"]
                for f in (found, found_hashing))
    n_found = len(found["missing"]) + len(found["extra"]) + len(found["changed"])
    return {
        f"{prefix}_deep_s": round(deep_s, 3),
        f"{prefix}_deep_hashing_s": round(hashing_s, 3),
        f"{prefix}_digest_add_s": round(digest_s, 3),
        f"{prefix}_row_digest": found["row_digest"],
        f"{prefix}_count_scan_s": round(count_s, 3),
        f"{prefix}_pandas_s": round(pandas_s, 3),
        f"{prefix}_found": n_found,
        f"{prefix}_exact": exact,
        f"{prefix}_pandas_found": pandas_found,
        f"{prefix}_queries": found["queries"],
        f"{prefix}_rows_fetched": found["rows_fetched"],
    }


def run(n: int = 1_000_000, targets: tuple[str, ...] = ("mariadb", "sqlite")) -> dict:
    """Set up PostgreSQL and each target with ``n`` rows and 150 differences; measure; clean up."""
    p = plan(n)
    out: dict = {"recon_n": n, "recon_planted": PLANTED}
    pg = setup_postgres(n, p["extra"])
    pg_digest_s = add_digest(pg)
    try:
        with tempfile.TemporaryDirectory(prefix="driftless-bench-") as tmp:
            for target in targets:
                if target == "mariadb":
                    url = setup_mariadb(n, p)
                    digest_s = add_digest(url)
                    plant_changes(url, p)  # after the digest: the database re-hashes the changed rows
                    try:
                        out.update(_measure(pg, url, p, "recon", pg_digest_s + digest_s))
                    finally:
                        _exec(MARIADB_ADMIN, f"DROP DATABASE IF EXISTS `{DB}`")
                else:
                    url = setup_sqlite(n, p, Path(tmp))
                    digest_s = add_digest(url)
                    plant_changes(url, p)
                    prefix = "recon_sqlite" if "mariadb" in targets else "recon"
                    out.update(_measure(pg, url, p, prefix, pg_digest_s + digest_s))
    finally:
        _exec(PG_ADMIN, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', autocommit=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--targets", default="mariadb,sqlite", help="comma-separated: mariadb, sqlite")
    args = parser.parse_args()
    print(json.dumps(run(args.n, tuple(args.targets.split(",")))))


if __name__ == "__main__":
    main()
