"""Helpers shared by tests: a spec for the Chinook invoices and target fingerprints."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import URL, create_engine

from driftless.reconcile import table_fingerprint
from driftless.spec import PipelineSpec, parse_spec
from driftless.state import read_state

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
