"""DAG parse time with many pipeline specs: DagBag over dags/ with 50 generated specs (goal: < 1 s).

``dag_parse_s`` is the first parse in a fresh process (imports included); ``dag_parse_warm_s`` the next.
The number of specs is fixed (``SPECS``), whatever ``make bench``'s N (rows of data) is.

    python benchmarks/bench_dags.py --specs 50      # prints one JSON line

``run(n)`` is what ``make bench`` calls (``n``, the rows of the other cases, is not used); it returns the
measurement as a dict and raises when a spec did not become a DAG or the folder has import errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SPECS = 50

from driftless import settings  # noqa: E402


def write_specs(directory: Path, n: int) -> None:
    """N specs like the shipped ones: three target connections, every fifth one partitioned by day."""
    from tests.helpers import INVOICES

    for i in range(n):
        spec = json.loads(json.dumps(INVOICES))
        spec["name"] = f"bench_pipeline_{i:03d}"
        spec["target"] = {"connection": f"wh{i % 3}", "table": f"invoices_{i:03d}"}
        if i % 5 == 0:
            spec["partition_by"] = "day"
        (directory / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))


def run(n: int | None = None, specs: int = SPECS) -> dict:
    """Parse dags/ with ``specs`` generated specs through Airflow's DagBag; returns counts and seconds.

    ``n`` (the row count ``make bench`` hands every module) is ignored: the DAG count does not scale with rows.
    """
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="driftless-bench-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.dag_processing.dagbag import DagBag

    previous = os.environ.get("DRIFTLESS_SPECS_DIR")
    with tempfile.TemporaryDirectory(prefix="driftless-bench-specs-") as tmp:
        write_specs(Path(tmp), specs)
        os.environ["DRIFTLESS_SPECS_DIR"] = tmp
        settings.reset()  # read once per process: read it again
        try:
            started = time.perf_counter()
            bag = DagBag(dag_folder=str(REPO / "dags"))
            elapsed = time.perf_counter() - started
            # A DAG processor parses again and again in one process: the second parse has the imports
            # (Airflow's own, driftless's) done, as every later one will.
            started = time.perf_counter()
            DagBag(dag_folder=str(REPO / "dags"))
            warm = time.perf_counter() - started
        finally:
            if previous is None:
                os.environ.pop("DRIFTLESS_SPECS_DIR", None)
            else:
                os.environ["DRIFTLESS_SPECS_DIR"] = previous
            settings.reset()
    # The folder also holds DAGs that are not generated from specs (the consistency report).
    pipeline_dags = sum(1 for dag_id in bag.dags if dag_id.startswith("bench_pipeline_"))
    if bag.import_errors or pipeline_dags != specs:
        errors = "; ".join(f"{path}: {str(err).strip().splitlines()[-1:]}" for path, err in bag.import_errors.items())
        raise RuntimeError(f"DAG parse: {pipeline_dags} DAGs from {specs} specs, {len(bag.import_errors)} import "
                           f"error(s): {errors[:2000]}")
    print(f"  DagBag of dags/ with {specs} specs: first parse {elapsed:.2f} s, warm {warm:.2f} s "
          f"({pipeline_dags} pipeline DAGs, {len(bag.dags)} in all; goal < 1 s)", flush=True)
    return {"dag_specs": specs, "dags": pipeline_dags, "dags_total": len(bag.dags),
            "import_errors": len(bag.import_errors),
            "dag_parse_s": round(elapsed, 3), "dag_parse_warm_s": round(warm, 3),
            "dag_parse_ms_per_dag": round(1000 * elapsed / specs, 2),
            "dag_parse_goal_met": elapsed < 1.0}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=SPECS)
    print(json.dumps(run(specs=parser.parse_args().specs)))
