"""``make bench``: run every benchmark module and print a table, then one JSON line (the last line).

A benchmark module is ``benchmarks/bench_*.py`` with a function ``run(n) -> dict``; it prints its own
rows of the table and returns the keys it adds to the JSON line. Modules run in name order;
``--only loaders,rest`` picks some. ``--reps`` sets repetitions for modules whose ``run`` takes ``reps``.

A module (or a case in it) that fails does not stop the others, but the run then ends with the errors on
stderr and exit status 1, and prints no JSON line: an error is never reported as if it were a figure.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def modules(only: list[str] | None) -> list[str]:
    names = sorted(p.stem for p in (REPO / "benchmarks").glob("bench_*.py"))
    if only:
        names = [m for m in names if m.removeprefix("bench_") in only or m in only]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of generated data (default 1,000,000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per case; medians are reported")
    parser.add_argument("--only", help="comma-separated module names (e.g. loaders)")
    parser.add_argument("--case", help="loaders: only cases whose name contains this (comma-separated: any of these)")
    parser.add_argument("--no-dlt", action="store_true", help="loaders: leave out the dlt cases (no bench venv)")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    summary: dict = {"n": args.n}
    failed: dict[str, str] = {}
    started = time.perf_counter()
    print(f"driftless benchmarks, N={args.n:,}, {args.reps} repetitions (medians), python {platform.python_version()}"
          " — timings on a shared 2-core machine are noisy", flush=True)
    for name in modules(only):
        module = importlib.import_module(f"benchmarks.{name}")
        if not callable(getattr(module, "run", None)):
            print(f"\n[{name}] skipped: it has no run(n) function", flush=True)
            continue
        print(f"\n[{name}]", flush=True)
        params = inspect.signature(module.run).parameters
        kwargs = {}
        if "reps" in params:
            kwargs["reps"] = args.reps
        if "only" in params and args.case:
            kwargs["only"] = args.case
        if "dlt" in params and args.no_dlt:
            kwargs["dlt"] = False
        try:
            summary.update(module.run(args.n, **kwargs))
        except Exception as exc:  # noqa: BLE001 - one module failing must not hide the others' numbers
            traceback.print_exc()
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"[{name}] FAILED: {failed[name]}", file=sys.stderr, flush=True)
    if failed:
        print(f"\nbenchmark FAILED ({len(failed)} module(s)); no JSON line:", file=sys.stderr)
        for name, error in failed.items():
            print(f"  {name}: {error}", file=sys.stderr)
        return 1
    summary["bench_total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
