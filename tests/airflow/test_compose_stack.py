"""Against the docker-compose stack (CeleryExecutor): a REST backfill of the shipped Chinook pipeline.

Runs only when ``DRIFTLESS_COMPOSE_AIRFLOW_URL`` points at the stack's api-server (the integration
workflow sets it after ``docker compose -f docker-compose.integration.yml up --wait``).
"""

from __future__ import annotations

import os
import time

import pytest
import requests

URL = os.environ.get("DRIFTLESS_COMPOSE_AIRFLOW_URL")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not URL, reason="DRIFTLESS_COMPOSE_AIRFLOW_URL is not set")]


def _api(method: str, path: str, token: str, **kwargs):
    r = requests.request(method, f"{URL}/api/v2{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60,
                         **kwargs)
    assert r.status_code < 400, f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}"
    return r.json()


@pytest.mark.timeout(900)
def test_backfill_on_the_celery_stack():
    token = requests.post(f"{URL}/auth/token", json={"username": "admin", "password": "admin"},
                          timeout=30).json()["access_token"]
    deadline = time.monotonic() + 300
    while "chinook_invoices" not in {d["dag_id"] for d in _api("GET", "/dags", token)["dags"]}:
        assert time.monotonic() < deadline, "the dag-processor did not register chinook_invoices"
        time.sleep(5)
    _api("PATCH", "/dags/chinook_invoices", token, json={"is_paused": False})
    backfill = _api("POST", "/backfills", token, json={
        "dag_id": "chinook_invoices", "from_date": "2025-11-03T02:00:00Z", "to_date": "2025-11-06T02:00:00Z",
        "reprocess_behavior": "completed", "max_active_runs": 3})
    deadline = time.monotonic() + 600
    while _api("GET", f"/backfills/{backfill['id']}", token)["completed_at"] is None:
        assert time.monotonic() < deadline, "backfill not completed within 600 s"
        time.sleep(5)
    runs = [r for r in _api("GET", "/dags/chinook_invoices/dagRuns?limit=100", token)["dag_runs"]
            if r["run_type"] == "backfill"]
    assert len(runs) >= 3 and all(r["state"] == "success" for r in runs), runs
