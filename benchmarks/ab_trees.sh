#!/bin/bash
# Side-by-side loader benchmark of two code trees (e.g. main and a branch), alternating, one repetition each:
#   benchmarks/ab_trees.sh BEFORE_DIR AFTER_DIR [CASES] [ROUNDS] [N]
# Make a tree with `git archive REV | tar -x -C DIR`. Both trees run this tree's harness (benchmarks/run.py,
# bench_loaders.py, cases.py are copied in) over their own etl/, on this tree's generated data; the machine's
# load average is printed before each run. Ratios are meaningful within one run only.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
before=$1 after=$2
cases=${3:-pg_upsert_nightly,pg_raw_copy,mariadb_upsert_nightly,mariadb_raw_load}
rounds=${4:-3} n=${5:-1000000}
py=${PYTHON:-$here/.venv/bin/python}
export BENCH_DB_PREFIX=${BENCH_DB_PREFIX:-driftless_bench_ab}
for tree in "$before" "$after"; do
  cp "$here"/benchmarks/{run.py,bench_loaders.py,cases.py,data.py,rss.py,dlt_cases.py} "$tree/benchmarks/"
  mkdir -p "$tree/bench-results" "$here/bench-results/data"
  [ -e "$tree/bench-results/data" ] || ln -s "$here/bench-results/data" "$tree/bench-results/data"
done
for round in $(seq "$rounds"); do
  for tree in "$before" "$after"; do
    echo "=== round $round: $tree, $(date -u +%H:%M:%S), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd "$tree" && PYTHONPATH=$tree "$py" benchmarks/run.py --n "$n" --reps 1 --only loaders --case "$cases" --no-dlt \
      | grep -v '^{')
  done
done
