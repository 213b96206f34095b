"""Run the whole benchmark K times and print the median of every ratio (and figure) the runs report.

``python benchmarks/medians.py --runs 3 -- --n 1000000 --reps 1`` runs ``benchmarks/run.py --n 1000000
--reps 1`` three times, one after another. Each run measures every case side by side, so each run's ratios
are its own (driftless and its anchors under the same machine load); the medians are taken over the runs'
ratios, not computed from median times. Prints one row per key (each run's value, then the median) and, last,
one JSON line of the medians. A run that fails (``run.py`` exits non-zero) stops this script with its status:
a failed case is never averaged away.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Ratios that no module prints as a key of its own, computed per run from that run's figures.
DERIVED = {
    "ratio_deep_diff_vs_count_scan_mariadb": ("recon_deep_s", "recon_count_scan_s"),
    "ratio_deep_diff_vs_count_scan_sqlite": ("recon_sqlite_deep_s", "recon_sqlite_count_scan_s"),
}


def derive(run: dict) -> dict:
    out = dict(run)
    for key, (a, b) in DERIVED.items():
        if isinstance(run.get(a), (int, float)) and run.get(b):
            out[key] = round(run[a] / run[b], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for run.py, after --")
    args = parser.parse_args(argv)
    passed = [a for a in args.args if a != "--"]
    runs: list[dict] = []
    for i in range(args.runs):
        print(f"== run {i + 1} of {args.runs}: benchmarks/run.py {' '.join(passed)}", flush=True)
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), *passed],
                              stdout=subprocess.PIPE, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            print(f"run {i + 1} failed (exit {proc.returncode}); no medians", file=sys.stderr)
            return proc.returncode
        runs.append(derive(json.loads(proc.stdout.strip().splitlines()[-1])))
    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                      for r in runs)]
    medians = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    print(f"\n== medians over {args.runs} runs (each run's values, then the median)")
    for k in sorted(keys, key=lambda k: (not k.startswith("ratio") and "_vs_" not in k, k)):
        print(f"  {k:48s} {' / '.join(str(r[k]) for r in runs):40s} -> {medians[k]}")
    print(json.dumps(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
