"""Where a loader benchmark case spends its time: per-step and per-SQL-statement wall time.

``python benchmarks/profile_load.py CASE --n N`` runs the case's untimed setup (``cases.py CASE setup``)
in a child process, then the case's load in this one, printing each loader step (``stage`` per chunk,
summed; ``merge``) and each SQL statement the loader sent that took over 10 ms, with its share of the
whole. CASE is one of the driftless upsert cases of ``benchmarks/cases.py`` (e.g. ``pg_upsert_nightly``,
``mariadb_upsert_nightly``). Timings are wall time, as noisy as the machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--no-setup", action="store_true",
                        help="skip the setup (the target stays as the last run left it)")
    args = parser.parse_args()
    if not args.no_setup:
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "cases.py"), args.case, "setup", "--n", str(args.n)],
                       check=True, stdout=subprocess.DEVNULL)
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from benchmarks import cases, rss
    from driftless.load.base import Loader

    steps: dict[str, float] = defaultdict(float)
    statements: list[tuple[float, str]] = []

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        conn.info["t0"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        statements.append((time.perf_counter() - conn.info.pop("t0"), " ".join(statement.split())))

    def timed(cls: type, name: str) -> None:
        original = getattr(cls, name)

        def wrapper(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003
            t0 = time.perf_counter()
            try:
                return original(self, *a, **kw)
            finally:
                steps[f"{type(self).__name__}.{name}"] += time.perf_counter() - t0

        setattr(cls, name, wrapper)

    from driftless.targets.loaders import loader_for  # noqa: F401 - imports every loader class
    for cls in {*Loader.__subclasses__()}:
        for name in ("stage", "merge", "ensure_tables"):
            if name in vars(cls) or name == "ensure_tables":
                timed(cls, name)
    kind = args.case.split("_")[0]
    variant = "nightly" if args.case.endswith("nightly") else "base"
    t0 = time.perf_counter()
    out = cases.driftless_load({"pg": "pg", "mariadb": "mariadb", "sqlite": "sqlite"}[kind], variant, args.n)
    total = time.perf_counter() - t0
    print(f"{args.case} N={args.n:,}: {total:.2f} s, rows {out['rows']:,}, written {out['written']:,}, "
          f"peak RSS {rss.peak_mb():.0f} MB")
    for name, secs in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  step {name:<40} {secs:7.2f} s  {100 * secs / total:5.1f}%")
    for secs, sql in sorted(statements, reverse=True):
        if secs >= 0.01:
            print(f"  sql  {secs:7.2f} s  {100 * secs / total:5.1f}%  {sql[:160]}")


if __name__ == "__main__":
    main()
