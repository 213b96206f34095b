"""driftless's settings: the ``DRIFTLESS_*`` environment variables, read in one place.

Every setting is an environment variable; an unset or empty variable means the default. The values are
read once per process (``settings()``, cached) and kept as text here: each is checked where it is used,
so a bad value fails only what needs it, with a message naming the variable. ``reset()`` reads the
environment again (tests that change it; ``use(...)`` overrides of this process are dropped too).

Who reads what: the CLI and the engine (specs, staging, connect timeout, metrics), the Airflow layer
(pools, alerts, lineage, report), the DAG files (retries, slices, report schedule) and the test-only
fail points. ``tools/`` keeps its own environment for the processes it starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cache
from typing import Any


def _setting(env: str, doc: str) -> Any:
    return field(default=None, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Each field is one ``DRIFTLESS_*`` variable (``metadata["env"]``), as text, or None when unset."""

    specs_dir: str | None = _setting(
        "DRIFTLESS_SPECS_DIR", "Directory of pipeline specs. Default: dags/pipelines of the working directory, "
        "else of the driftless checkout (the DAG file: the pipelines folder beside it).")
    staging_dir: str | None = _setting(
        "DRIFTLESS_STAGING_DIR", "Where a window's staged Parquet files live between extract and load. Default: "
        "$XDG_CACHE_HOME/driftless/staging (~/.cache/...); in Airflow tasks $AIRFLOW_HOME/driftless-staging.")
    connect_timeout_s: str | None = _setting(
        "DRIFTLESS_CONNECT_TIMEOUT_S", "Seconds to wait for a database server to accept a connection "
        "(default 10), unless the connection sets its own connect_timeout.")
    statsd_host: str | None = _setting(
        "DRIFTLESS_STATSD_HOST", "Send run metrics to this StatsD host (outside Airflow, or when Airflow has no "
        "metrics backend). Default: no StatsD.")
    statsd_port: str | None = _setting("DRIFTLESS_STATSD_PORT", "StatsD port (default 8125).")
    statsd_prefix: str | None = _setting("DRIFTLESS_STATSD_PREFIX", "Prefix of the StatsD metric names (default none).")
    textfile_dir: str | None = _setting(
        "DRIFTLESS_TEXTFILE_DIR", "Write the latest run's metrics as a Prometheus textfile into this directory "
        "(node_exporter's textfile collector). Default: none.")
    sql_adbc: str | None = _setting(
        "DRIFTLESS_SQL_ADBC", "0/off/false/no: read PostgreSQL sources through psycopg's text COPY instead of "
        "ADBC's binary COPY into typed Arrow (default: ADBC, where adbc-driver-postgresql is installed).")
    overlap: str | None = _setting(
        "DRIFTLESS_OVERLAP", "0/off/false/no: etl run loads a window into a PostgreSQL or MariaDB target only after "
        "the whole window is extracted, instead of beside the extract (default: beside it; see run_window).")
    pool_slots: str | None = _setting(
        "DRIFTLESS_POOL_SLOTS", "Slots of each target's Airflow pool when make airflow / tools create it (default 4).")
    alerts_conn_id: str | None = _setting(
        "DRIFTLESS_ALERTS_CONN_ID", "Airflow Connection holding the failure-alert webhook (default driftless_alerts).")
    lineage: str | None = _setting(
        "DRIFTLESS_LINEAGE", "0/off/false/no: emit no OpenLineage events even when a transport is configured.")
    on_drift: str | None = _setting(
        "DRIFTLESS_ON_DRIFT", "What the consistency report does on drift: fail (default) or warn.")
    report_dir: str | None = _setting(
        "DRIFTLESS_REPORT_DIR", "Local directory of consistency reports (default $AIRFLOW_HOME/driftless-reports).")
    report_store: str | None = _setting(
        "DRIFTLESS_REPORT_STORE", "Shared report store, any ObjectStoragePath URL (s3://..., file:///...); "
        "default: the local report directory.")
    report_store_conn_id: str | None = _setting(
        "DRIFTLESS_REPORT_STORE_CONN_ID", "Airflow Connection with the report store's credentials.")
    report_keep: str | None = _setting("DRIFTLESS_REPORT_KEEP", "How many reports the store keeps (default 30).")
    report_schedule: str | None = _setting(
        "DRIFTLESS_REPORT_SCHEDULE", "Cron schedule of the consistency_report DAG (default '0 6 * * *').")
    task_retries: str | None = _setting("DRIFTLESS_TASK_RETRIES", "Retries of each pipeline task (default 3).")
    retry_delay_s: str | None = _setting("DRIFTLESS_RETRY_DELAY_S", "Seconds between task retries (default 30).")
    max_slices: str | None = _setting(
        "DRIFTLESS_MAX_SLICES", "Slices of one partitioned window that run at once (default 16).")
    worker_name: str | None = _setting(
        "DRIFTLESS_WORKER_NAME", "The hostname a task instance records ([core] hostname_callable = "
        "driftless.airflow.workers.task_hostname), e.g. the Celery worker's name when workers share a host.")
    # Test-only (driftless.failpoints): freeze a run at a named point so a test can kill it there.
    failpoint: str | None = _setting("DRIFTLESS_FAILPOINT", "Tests only: the fail point to stop at.")
    failpoint_after: str | None = _setting("DRIFTLESS_FAILPOINT_AFTER", "Tests only: pass the point N times first.")
    failpoint_marker: str | None = _setting("DRIFTLESS_FAILPOINT_MARKER", "Tests only: file touched at the point.")
    failpoint_sleep: str | None = _setting("DRIFTLESS_FAILPOINT_SLEEP", "Tests only: seconds to wait (600).")
    failpoint_resume: str | None = _setting("DRIFTLESS_FAILPOINT_RESUME", "Tests only: go on once this file exists.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """The settings an environment holds (empty or blank values count as unset)."""
        values = {}
        for f in fields(cls):
            raw = (environ.get(f.metadata["env"]) or "").strip()
            values[f.name] = raw or None
        return cls(**values)


def is_off(value: str | None) -> bool:
    """Whether a switch setting says off: ``0``, ``off``, ``false`` or ``no`` (any case); unset means on."""
    return (value or "").strip().lower() in ("0", "off", "false", "no")


_overrides: dict[str, Any] = {}


@cache
def settings() -> Settings:
    """This process's settings: the environment as first read, with ``use(...)`` overrides."""
    return replace(Settings.from_env(os.environ), **_overrides)


def use(**values: str) -> None:
    """Override settings for this process (the Airflow layer's defaults), without touching the environment."""
    _overrides.update(values)
    settings.cache_clear()


def reset() -> None:
    """Read the environment again on the next ``settings()`` and drop ``use`` overrides (tests)."""
    _overrides.clear()
    settings.cache_clear()
