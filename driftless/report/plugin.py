"""Airflow plugin: the api-server serves the consistency reports, behind the UI's login.

``GET /driftless/reports/<run key>/report.html`` (and ``report.json``) read the report store
(``driftless.report.store``: ``$DRIFTLESS_REPORT_STORE``, else the local report directory);
``/driftless/reports/latest`` redirects to the newest report; ``/driftless/reports/`` lists them.
Requests need the same login as the UI (its session cookie, or a bearer token). The UI's navigation
gets a "Latest consistency report" entry.

Registered by the ``airflow.plugins`` entry point of the driftless distribution
(``driftless_reports = driftless.report.plugin:DriftlessReports``), so ``pip install driftless`` is
enough: nothing goes into Airflow's plugins folder. A checkout whose install predates the entry point
gets it from ``plugins/driftless_reports.py`` (which steps aside once the entry point exists).
"""

from __future__ import annotations

from html import escape
from importlib.metadata import entry_points

from airflow.api_fastapi.core_api.security import get_user
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from driftless.report import store

app = FastAPI(title="driftless reports", dependencies=[Depends(get_user)])


@app.get("/reports/", response_class=HTMLResponse)
def index() -> str:
    rows = "".join(f'<li><a href="{escape(f.name)}/report.html">{escape(f.name)}</a></li>' for f in store.history())
    return (f"<!doctype html><title>driftless reports</title><h1>Consistency reports</h1>"
            f"<ul>{rows or '<li>none yet</li>'}</ul>")


@app.get("/reports/latest")
def latest() -> RedirectResponse:
    newest = store.history()
    if not newest:
        raise HTTPException(404, "no consistency report yet: it is written after the first load (or daily)")
    return RedirectResponse(f"{store.URL_PREFIX}/{newest[0].name}/report.html", status_code=307)


@app.get("/reports/{key}/{name}")
def report(key: str, name: str) -> Response:
    body = store.read(key, name)
    if body is None:
        raise HTTPException(404, f"no report {key!r}/{name!r} in the report store (only the newest "
                                 f"{store.keep()} are kept)")
    return Response(body, media_type="text/html; charset=utf-8" if name.endswith(".html") else "application/json")


class DriftlessReports(AirflowPlugin):
    name = "driftless_reports"
    fastapi_apps = [{"app": app, "url_prefix": "/driftless", "name": "driftless consistency reports"}]
    external_views = [{"name": "Latest consistency report", "href": f"{store.URL_PREFIX}/latest", "destination": "nav"}]


def registered_by_entry_point() -> bool:
    """Whether an installed distribution registers this plugin through the ``airflow.plugins`` entry point."""
    return any(ep.value.split(":")[0] == __name__ for ep in entry_points(group="airflow.plugins"))
