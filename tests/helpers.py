"""Helpers shared by tests: a spec for the Chinook invoices, target fingerprints, a running local Airflow."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, create_engine

from driftless.reconcile import table_fingerprint
from driftless.spec import PipelineSpec, parse_spec
from driftless.state import read_state
from tools.airflow_local import LocalAirflow, setup

INVOICES: dict[str, Any] = {
    "name": "invoices_test",
    "schedule": "@daily",
    "chunk_size": 100,
    "source": {"type": "sql", "connection": "src", "table": "Invoice", "primary_key": ["invoice_id"],
               "cursor": "updated_at"},
    "target": {"connection": "wh", "table": "invoices"},
    "columns": [
        {"name": "invoice_id", "source": "InvoiceId", "type": "integer", "nullable": False},
        {"name": "customer_id", "source": "CustomerId", "type": "integer", "nullable": False},
        {"name": "invoice_date", "source": "InvoiceDate", "type": "timestamp"},
        {"name": "billing_city", "source": "BillingCity", "type": "varchar(40)"},
        {"name": "total", "source": "Total", "type": "numeric(10,2)", "nullable": False},
        {"name": "updated_at", "type": "timestamp", "nullable": False},
    ],
}


def invoices_spec(**overrides: Any) -> PipelineSpec:
    data = copy.deepcopy(INVOICES)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return parse_spec(data, "test")


def fingerprint(url: URL, spec: PipelineSpec) -> dict[str, Any]:
    """Rows, checksum of all rows and watermark of a pipeline's target."""
    engine = create_engine(url)
    try:
        fp = table_fingerprint(engine, spec.target.table, spec.source.primary_key)
        state = read_state(engine, spec.name)
        fp["watermark"] = state.watermark if state else None
        return fp
    finally:
        engine.dispose()


REPORT_DAG = "consistency_report"

# The mark of every test module that starts a live Airflow stack (all components, task processes, Celery workers):
# each stack wants most of the 2 cores. With `make test`'s `-n 2 --dist loadgroup` the tests of one group run in one
# worker, so one stack at a time (the group is put into the node id by tests/conftest.py's
# `pytest_collection_modifyitems`: pytest-xdist 3.8.0's own tagging does not reach pytest 9.2's node ids).
LIVE_STACK = pytest.mark.xdist_group("airflow_stack")


@contextmanager
def running_airflow(env: dict[str, str], port: int, specs: Path, dag_ids: set[str], *, workers: int = 0,
                    report: bool = True, timeout: float = 180) -> Iterator[LocalAirflow]:
    """A started local Airflow (``make airflow``'s setup: migrate, pools, every component) that knows ``dag_ids``.

    Waits until the api-server answers, the Celery ``workers`` (if any) are connected and the dag-processor
    has registered every one of ``dag_ids``; stops every component afterwards.

    ``report=False``, for tests that do not look at the ``consistency_report`` DAG: it gets no daily run
    (``DRIFTLESS_REPORT_SCHEDULE=none``) and is paused before anything loads, so it never diffs every
    target while the test's own runs compete for the executor's slots and the machine's cores.
    """
    if not report:
        env["DRIFTLESS_REPORT_SCHEDULE"] = "none"
        dag_ids = {*dag_ids, REPORT_DAG}
    # No test changes a spec while its stack runs: the dag-processor parses the folder when it starts, and does not
    # parse it again every 30 s (a process per DAG file each time, competing with the test's tasks for the cores).
    env.setdefault("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "3600")
    setup(env, specs)
    stack = LocalAirflow(env, port, workers=workers)
    stack.start()
    try:
        stack.wait_ready(timeout=240)
        stack.wait_workers(timeout=180)
        token = stack.token()
        deadline = time.monotonic() + timeout
        while True:  # the dag-processor parses the folder once it is up
            if dag_ids <= {d["dag_id"] for d in stack.api("GET", "/dags?limit=1000", token)["dags"]}:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dag-processor did not register {sorted(dag_ids)} within {timeout:.0f} s; "
                                   f"logs in {stack.logs}")
            stack.check_alive()
            time.sleep(1)
        if not report:
            stack.api("PATCH", f"/dags/{REPORT_DAG}", token, json={"is_paused": True})
        yield stack
    finally:
        # Each component logs its clean exit well within a second of SIGTERM, then spends 10-20 s more in exit
        # handlers (closing its in-process execution API, waiting on helper processes); nothing of this stack outlives
        # the test (its metadata database is dropped), so what is left after 5 s is killed.
        stack.stop(timeout=5)
