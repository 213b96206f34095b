"""The bodies of the pipeline DAGs' tasks: each is one call into the engine.

Only the DAG tasks import this module, at run time; it reads the window from the Airflow context
(the run's data interval, or ``start``/``end`` from the trigger form) and keeps XCom small.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from etl import connections
from etl.pipeline import WindowResult, extract_window, load_window, reconcile_window
from etl.spec import load_spec
from etl.staging import Manifest
from etl.window import Window


def _setup() -> None:
    connections.use_lookup(connections.airflow_lookup)
    if not os.environ.get("DRIFTLESS_STAGING_DIR"):
        home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
        os.environ["DRIFTLESS_STAGING_DIR"] = str(Path(home) / "driftless-staging")


def window_from_context(context: dict[str, Any]) -> Window:
    """The run's window: trigger-form ``start``/``end`` when given, else the run's data interval."""
    params = context.get("params") or {}
    start = params.get("start") or context["data_interval_start"]
    end = params.get("end") or context["data_interval_end"]
    return Window.parse(start, end)


def extract(spec_path: str, context: dict[str, Any]) -> dict[str, Any]:
    _setup()
    spec = load_spec(spec_path)
    manifest = extract_window(spec, window_from_context(context), context["run_id"])
    return manifest.to_dict()


def load(spec_path: str, manifest: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    _setup()
    spec = load_spec(spec_path)
    window = Window.parse(manifest["window_start"], manifest["window_end"])
    result = load_window(spec, window, Manifest.from_dict(manifest), context["run_id"])
    return result.to_xcom()


def reconcile(spec_path: str, result: dict[str, Any]) -> dict[str, Any]:
    _setup()
    spec = load_spec(spec_path)
    return reconcile_window(spec, WindowResult.from_xcom(result)).to_xcom()
