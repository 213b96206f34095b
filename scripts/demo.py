"""``make demo``: sync the shipped Chinook database into a SQLite warehouse through Airflow, twice.

1. Prepare the source (``.demo/source.db``) from the shipped Chinook file, and a CSV drop of its tracks
   (``.demo/drops/tracks/<day>/tracks.csv.gz``); start an empty warehouse.
2. Migrate Airflow's metadata database (SQLite, inside the repo).
3. For each demo pipeline, run the nightly-sync DAG for one window with ``airflow dags test``,
   fingerprint the target, run the same window again and fingerprint it again.
4. Print a summary: rows per table, checksum and watermark after each run, and whether they match.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine  # noqa: E402

from driftless.reconcile import table_fingerprint  # noqa: E402
from driftless.spec import load_spec  # noqa: E402
from driftless.state import read_runs, read_state  # noqa: E402
from tools.airflow_local import ensure_pools  # noqa: E402
from tools.demo import prepare_file_drop, prepare_source  # noqa: E402

DEMO = REPO / ".demo"
PIPELINES = ["chinook_invoices", "chinook_invoice_lines", "chinook_customers_api", "chinook_tracks_csv"]
# The demo's one window: the store's whole history, given through the DAG's trigger-form params.
WINDOW = {"start": "2021-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:00+00:00"}
LOGICAL_DATE = "2026-01-01T02:00:00+00:00"


def sh(*args: str, env: dict[str, str]) -> None:
    started = time.monotonic()
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        sys.exit(f"demo: command failed ({proc.returncode}): {' '.join(args)}")
    print(f"  ok  {' '.join(args[:4])} ... ({time.monotonic() - started:.1f}s)")


def start_api(token: str) -> tuple[subprocess.Popen, str]:
    """Start the demo's local REST API (demo/api_server.py); returns the process and its base URL."""
    proc = subprocess.Popen([sys.executable, str(REPO / "demo" / "api_server.py")], cwd=REPO, text=True,
                            env={**os.environ, "DRIFTLESS_DEMO_API_TOKEN": token}, stdout=subprocess.PIPE)
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"demo: the local API did not start ({line or 'no output'})")
    return proc, line.removeprefix("listening on ")


def main() -> None:
    bin_dir = Path(sys.executable).parent
    source, warehouse = DEMO / "source.db", DEMO / "warehouse.db"
    print("driftless demo: Chinook (SQLite, shipped in demo/) -> warehouse (SQLite) through Airflow")
    prepare_source(source)
    drops = prepare_file_drop(DEMO / "drops")  # the CSV drop read by chinook_tracks_csv
    for leftover in DEMO.glob("warehouse.db*"):
        leftover.unlink()
    env = dict(os.environ)
    env.update({
        "AIRFLOW_CONN_CHINOOK": f"sqlite:///{source}",
        "AIRFLOW_CONN_WAREHOUSE": f"sqlite:///{warehouse}",
        "PATH": f"{bin_dir}:{env.get('PATH', '')}",
    })
    print(f"  source     {source}\n  warehouse  {warehouse}\n  AIRFLOW_HOME {env['AIRFLOW_HOME']}")
    print(f"  file drop  {', '.join(str(p.relative_to(REPO)) for p in drops)}")
    sh("airflow", "db", "migrate", env=env)
    pools = ensure_pools(env, REPO / "dags" / "pipelines")  # one pool per target connection (airflow/pools.py)
    print(f"  ok  pools {', '.join(pools)}")
    token = secrets.token_urlsafe(24)  # the REST pipeline's bearer token, known to the API and the connection
    api, api_url = start_api(token)
    host, port = api_url.removeprefix("http://").split(":")
    env["AIRFLOW_CONN_CHINOOK_API"] = json.dumps({"conn_type": "http", "host": host, "port": int(port),
                                                  "extra": {"token": token}})
    print(f"  api        {api_url}/v1/customers (bearer auth, cursor pagination)")
    try:
        rows = run_pipelines(env, warehouse)
    finally:
        api.terminate()
        api.wait(timeout=10)

    report(rows)


def run_pipelines(env: dict[str, str], warehouse: Path) -> list:
    engine = create_engine(f"sqlite:///{warehouse}")
    rows = []
    for name in PIPELINES:
        spec = load_spec(REPO / "dags" / "pipelines" / f"{name}.yaml")
        snapshots = []
        for _run in (1, 2):
            sh("airflow", "dags", "test", name, LOGICAL_DATE, "--conf", json.dumps(WINDOW), env=env)
            fp = table_fingerprint(engine, spec.target.table, spec.source.primary_key)
            state = read_state(engine, spec.name)
            fp["watermark"] = state.watermark.isoformat() if state and state.watermark else None
            last = read_runs(engine, spec.name)[-1]
            fp["written"] = last["written"]
            snapshots.append(fp)
        rows.append((name, spec.target.table, snapshots))
    return rows


def report(rows: list) -> None:
    print("\nwindow", WINDOW["start"], "->", WINDOW["end"])
    print(f"{'pipeline':<24}{'table':<16}{'run':>4}{'rows':>8}{'written':>9}  {'sha256':<14}{'watermark':<28}")
    identical = True
    for name, table, snaps in rows:
        for i, s in enumerate(snaps, 1):
            print(f"{name:<24}{table:<16}{i:>4}{s['rows']:>8}{s['written']:>9}  {s['sha256'][:12]:<14}"
                  f"{s['watermark']:<28}")
        same = {k: v for k, v in snaps[0].items() if k != "written"} == {
            k: v for k, v in snaps[1].items() if k != "written"}
        identical &= same and snaps[0]["rows"] > 0
    print("(written: rows inserted or changed by that run; the re-run rewrites nothing)")
    print("\nboth runs left identical targets:", "YES" if identical else "NO")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
