"""Data lineage through OpenLineage: off unless the provider is installed and configured.

When ``apache-airflow-providers-openlineage`` is installed and has a transport configured
(``[openlineage] transport``, ``AIRFLOW__OPENLINEAGE__TRANSPORT``, ``OPENLINEAGE_URL`` or
``OPENLINEAGE_CONFIG``), the load tasks report the source table as an input dataset and the target
table as an output dataset through Airflow's hook-lineage collector, which the provider turns into
OpenLineage events at the end of the task. Dataset URIs follow the provider's naming
(``postgres://host:port/db.schema.table``, ``mysql://host:port/db.table``, ``file:///path.db``
for SQLite); they never contain credentials. Without the provider every function here is a no-op.
Set ``DRIFTLESS_LINEAGE=off`` to keep it off even then.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from sqlalchemy import URL

from driftless.settings import is_off, settings
from driftless.spec import PipelineSpec
from driftless.targets import capabilities

log = logging.getLogger(__name__)

PROVIDER = "airflow.providers.openlineage"


def provider_installed() -> bool:
    try:
        return importlib.util.find_spec(PROVIDER) is not None
    except (ImportError, ValueError):
        return False


def configured() -> bool:
    """Whether an OpenLineage transport is configured (environment or Airflow's ``[openlineage]``)."""
    if any(os.environ.get(k) for k in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "AIRFLOW__OPENLINEAGE__TRANSPORT",
                                        "AIRFLOW__OPENLINEAGE__CONFIG_PATH")):
        return True
    try:
        from airflow.configuration import conf

        return bool(conf.get("openlineage", "transport", fallback="") or conf.get("openlineage", "config_path",
                                                                                 fallback=""))
    except Exception:
        return False


def enabled() -> bool:
    """True only when the provider is installed, configured, and not switched off for driftless."""
    if is_off(settings().lineage):
        return False
    return provider_installed() and configured()


def dataset_uri(url: URL, table: str, schema: str | None = None) -> str:
    """An OpenLineage-style dataset URI for a table behind a SQLAlchemy URL (no credentials)."""
    database = capabilities(url)
    if database.file_database:
        return f"{database.lineage_scheme}://{url.database}#{table}"
    host = f"{url.host or 'localhost'}:{url.port or database.default_port}"
    parts = [p for p in (url.database, schema or database.default_schema, table) if p]
    return f"{database.lineage_scheme}://{host}/{'.'.join(parts)}"


def datasets(spec: PipelineSpec) -> tuple[list[str], list[str]]:
    """The (input, output) dataset URIs of a pipeline; resolves its connections (task run time only)."""
    from driftless.connections import resolve_url

    inputs = []
    if spec.source.type == "sql" and spec.source.table:
        schema, _, table = spec.source.table.rpartition(".")
        inputs.append(dataset_uri(resolve_url(spec.source.connection), table, schema or None))
    outputs = [dataset_uri(resolve_url(spec.target.connection), spec.target.table, spec.target.db_schema)]
    return inputs, outputs


def emit(spec: PipelineSpec, context: Any = None) -> bool:
    """Report the pipeline's datasets to Airflow's lineage collector; returns False when lineage is off."""
    if not enabled():
        return False
    try:
        from airflow.sdk.lineage import get_hook_lineage_collector

        collector = get_hook_lineage_collector()
        inputs, outputs = datasets(spec)
        for uri in inputs:
            collector.add_input_asset(context, uri=uri)
        for uri in outputs:
            collector.add_output_asset(context, uri=uri)
    except Exception as exc:  # lineage must never fail a sync
        log.warning("driftless lineage: not emitted (%s)", type(exc).__name__)
        return False
    return True
