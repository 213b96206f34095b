"""Loader benchmarks: driftless vs each database's bulk path, dlt and pandas, first load and nightly.

Every measured case runs in its own process (setup in another, untimed) and reports its own peak RSS
(VmHWM, ``benchmarks.rss``) with the baseline beside it (the interpreter plus imports). A case that fails
makes ``run`` raise, naming it, once the other cases have printed their figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES_PY = REPO / "benchmarks" / "cases.py"
DLT_PY = REPO / "benchmarks" / "dlt_cases.py"
BENCH_VENV = REPO / ".venv-bench"
DLT_VERSION = "1.31.0"
DATA = REPO / "bench-results" / "data"
# Arrow's default mimalloc pool keeps freed chunks around (about +50 MB peak at 1M rows); the system
# allocator returns them. Applied to every case alike (driftless, raw baselines, dlt); override by env.
ARROW_POOL = os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system")

# (case, label, group) in the order they run and print.
CASES = [
    ("pg_upsert_first", "driftless upsert -> PostgreSQL, first load", "pg"),
    ("pg_upsert_nightly", "driftless upsert -> PostgreSQL, nightly (10% changed)", "pg"),
    ("pg_raw_copy", "raw COPY into empty table (with PK)", "pg"),
    ("pg_raw_copy_nopk", "raw COPY into empty table (no PK)", "pg"),
    ("dlt_merge_first", "dlt merge -> PostgreSQL, first load", "dlt"),
    ("dlt_merge_nightly", "dlt merge -> PostgreSQL, nightly", "dlt"),
    ("pg_to_sql", "pandas to_sql -> PostgreSQL, first load", "pg"),
    ("mariadb_upsert_first", "driftless upsert -> MariaDB, first load", "mariadb"),
    ("mariadb_upsert_nightly", "driftless upsert -> MariaDB, nightly", "mariadb"),
    ("mariadb_raw_load", "raw LOAD DATA LOCAL into empty table", "mariadb"),
    ("sqlite_upsert_first", "driftless upsert -> SQLite, first load", "sqlite"),
    ("sqlite_upsert_nightly", "driftless upsert -> SQLite, nightly", "sqlite"),
    ("sqlite_raw_insert", "plain executemany INSERT into empty table", "sqlite"),
    ("pg_raw_copy_out", "raw COPY of the source table out to a CSV file", "pg"),
    ("window_pg_to_pg", "driftless window PG -> PG (extract+load+reconcile)", "pg"),
    ("dlt_window_pg_to_pg", "dlt sql_database(pyarrow) PG -> PG merge", "dlt"),
]


def bench_python() -> Path | None:
    """The bench venv's interpreter with dlt installed (made on first use; None if it cannot be)."""
    python = BENCH_VENV / "bin" / "python"
    check = [str(python), "-c", "import dlt, psycopg, pyarrow, sqlalchemy"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"[bench] installing dlt {DLT_VERSION} into {BENCH_VENV} (bench only, not the main venv)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"dlt[postgres,sql_database]=={DLT_VERSION}",
                        "psycopg[binary]", "pyarrow", "sqlalchemy"], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"[bench] dlt unavailable ({exc}); dlt cases skipped", flush=True)
        return None
    return python


def _run(cmd: list[str], timeout: float = 3600) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "ARROW_DEFAULT_MEMORY_POOL": ARROW_POOL})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _files(n: int, variant: str) -> str:
    from benchmarks.data import manifest_files

    return json.dumps(manifest_files(str(DATA / f"n{n}" / variant)))


def run_case(case: str, n: int, dlt_python: Path | None) -> dict:
    out = _run_case(case, n, dlt_python)
    # The cases that move the whole data set must end with all of it in the target (one row per key for dlt).
    if (case.startswith("dlt_") or "window" in case) and (out.get("rows"), out.get("distinct_keys", n)) != (n, n):
        raise RuntimeError(f"{case} ended with {out.get('rows')} rows ({out.get('distinct_keys')} keys), not {n}")
    return out


def _run_case(case: str, n: int, dlt_python: Path | None) -> dict:
    py = sys.executable
    if case.startswith("dlt_"):
        if dlt_python is None:
            raise RuntimeError("dlt not installed")
        if case == "dlt_window_pg_to_pg":
            _run([py, str(CASES_PY), "window_pg_to_pg", "setup", "--n", str(n)])
            return _run([str(dlt_python), str(DLT_PY), "window"])
        _run([py, str(CASES_PY), "dlt_merge", "setup", "--n", str(n)])
        if case == "dlt_merge_nightly":
            _run([str(dlt_python), str(DLT_PY), "merge", "--files", _files(n, "base")])
        variant = "nightly" if case.endswith("nightly") else "base"
        return _run([str(dlt_python), str(DLT_PY), "merge", "--files", _files(n, variant)])
    _run([py, str(CASES_PY), case, "setup", "--n", str(n)])
    return _run([py, str(CASES_PY), case, "measure", "--n", str(n)])


class CasesFailed(RuntimeError):
    """One or more cases failed; the message names each with its error."""


def run(n: int, reps: int = 3, only: str | None = None, dlt: bool = True) -> dict:
    """Run every case ``reps`` times; returns the JSON keys (medians) and prints a table.

    ``dlt=False`` leaves out the dlt cases (their keys are then null), saying so. A failing case does not
    stop the others; once all have run, ``CasesFailed`` names every failed case.
    """
    from benchmarks.data import prepare

    prepare(DATA, n)
    dlt_python = bench_python() if dlt else None
    if not dlt:
        print("  dlt cases left out (--no-dlt)", flush=True)
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}
    print(f"  {'case':<58} {'median':>11}  {'peak RSS':>8}  {'baseline':>8}", flush=True)
    wanted = only.split(",") if only else []
    for case, label, _group in CASES:
        if wanted and not any(w in case for w in wanted) or not dlt and case.startswith("dlt_"):
            continue
        runs = []
        for _ in range(reps):
            try:
                runs.append(run_case(case, n, dlt_python))
            except Exception as exc:  # noqa: BLE001 - go on with the other cases, then fail naming this one
                failed[case] = f"{type(exc).__name__}: {exc}"
                print(f"  {label:<58} FAILED: {failed[case]}", file=sys.stderr, flush=True)
                break
        if case in failed:
            continue
        secs = [r["seconds"] for r in runs]
        results[case] = {"label": label, "median_s": statistics.median(secs), "runs_s": secs,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                         "baseline_rss_mb": max(r["baseline_rss_mb"] for r in runs),
                         "note": f"extrapolated from {runs[0]['rows']} rows" if runs[0].get("extrapolated") else ""}
        r = results[case]
        print(f"  {label:<58} {r['median_s']:9.2f} s  {r['peak_rss_mb']:5.0f} MB  {r['baseline_rss_mb']:5.0f} MB  "
              f"(runs: {', '.join(f'{s:.2f}' for s in secs)}) {r['note']}", flush=True)
    print("  peak RSS: the case process's VmHWM (imports included); baseline: its VmHWM once imports were done",
          flush=True)
    if failed:
        raise CasesFailed("; ".join(f"{case}: {error}" for case, error in failed.items()))
    return summarize(n, results)


def summarize(n: int, results: dict[str, dict]) -> dict:
    def s(case):
        return round(results[case]["median_s"], 3) if case in results else None

    def mb(case, key="peak_rss_mb"):
        return round(results[case][key], 1) if case in results else None

    def ratio(a, b):
        return round(s(a) / s(b), 2) if s(a) and s(b) else None

    out = {
        "arrow_memory_pool": ARROW_POOL,
        "pg_upsert_first_s": s("pg_upsert_first"),
        "pg_upsert_nightly_s": s("pg_upsert_nightly"),
        "pg_raw_copy_s": s("pg_raw_copy"),
        "pg_raw_copy_nopk_s": s("pg_raw_copy_nopk"),
        "dlt_merge_first_s": s("dlt_merge_first"),
        "dlt_merge_nightly_s": s("dlt_merge_nightly"),
        "pandas_to_sql_s": s("pg_to_sql"),
        "pg_upsert_peak_rss_mb": max(filter(None, [mb("pg_upsert_first"), mb("pg_upsert_nightly")]), default=None),
        "dlt_merge_peak_rss_mb": max(filter(None, [mb("dlt_merge_first"), mb("dlt_merge_nightly")]), default=None),
        "pg_raw_copy_peak_rss_mb": mb("pg_raw_copy"),
        "pandas_to_sql_peak_rss_mb": mb("pg_to_sql"),
        "mariadb_upsert_first_s": s("mariadb_upsert_first"),
        "mariadb_upsert_nightly_s": s("mariadb_upsert_nightly"),
        "mariadb_raw_load_s": s("mariadb_raw_load"),
        "mariadb_upsert_peak_rss_mb": mb("mariadb_upsert_nightly"),
        "sqlite_upsert_first_s": s("sqlite_upsert_first"),
        "sqlite_upsert_nightly_s": s("sqlite_upsert_nightly"),
        "sqlite_raw_insert_s": s("sqlite_raw_insert"),
        "sqlite_upsert_peak_rss_mb": mb("sqlite_upsert_nightly"),
        "window_pg_to_pg_s": s("window_pg_to_pg"),
        "window_pg_to_pg_peak_rss_mb": mb("window_pg_to_pg"),
        "window_pg_to_pg_baseline_rss_mb": mb("window_pg_to_pg", "baseline_rss_mb"),
        "pg_upsert_baseline_rss_mb": max(filter(None, [mb("pg_upsert_first", "baseline_rss_mb"),
                                                       mb("pg_upsert_nightly", "baseline_rss_mb")]), default=None),
        "pg_raw_copy_out_s": s("pg_raw_copy_out"),
        "dlt_window_pg_to_pg_s": s("dlt_window_pg_to_pg"),
        "dlt_window_pg_to_pg_peak_rss_mb": mb("dlt_window_pg_to_pg"),
        # Goal ratios (issue 5): nightly/COPY <= 2, dlt/nightly >= 4, MariaDB <= 2, SQLite <= 1.5, dlt window >= 3.
        "ratio_pg_nightly_vs_copy": ratio("pg_upsert_nightly", "pg_raw_copy"),
        "ratio_dlt_vs_pg_nightly": ratio("dlt_merge_nightly", "pg_upsert_nightly"),
        "ratio_mariadb_nightly_vs_load": ratio("mariadb_upsert_nightly", "mariadb_raw_load"),
        "ratio_sqlite_nightly_vs_insert": ratio("sqlite_upsert_nightly", "sqlite_raw_insert"),
        "ratio_dlt_window_vs_window": ratio("dlt_window_pg_to_pg", "window_pg_to_pg"),
        # Issue 13: the whole window within 2.5x of moving its rows raw (COPY out to a file, COPY in from one).
        "ratio_window_vs_raw_copy_out_in": (round(s("window_pg_to_pg") / (s("pg_raw_copy_out") + s("pg_raw_copy")), 2)
                                            if s("window_pg_to_pg") and s("pg_raw_copy_out") and s("pg_raw_copy")
                                            else None),
    }
    return out
