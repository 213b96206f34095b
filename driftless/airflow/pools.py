"""One Airflow pool per target connection, so backfills and parallel slices cannot flood a database.

Every task that writes into a target (``load``, the mapped ``sync_slice`` and ``finish``) runs in the
pool ``driftless_<target connection id>``. A pool's slots bound how many of those tasks run at once
against that database, across all pipelines and all runs (a backfill of 300 windows still loads at
most ``slots`` windows at a time). ``make airflow`` and ``make demo`` create the pools with
``airflow pools set`` (``DRIFTLESS_POOL_SLOTS``, default 4); change a pool's slots in the UI
(Admin > Pools) at any time. The scheduler does not run a task whose pool does not exist, so a new
target connection needs its pool: ``python -m tools.airflow_local pools``.
"""

from __future__ import annotations

from pathlib import Path

from driftless.settings import Settings, settings
from driftless.spec import PipelineSpec, load_specs

DEFAULT_SLOTS = 4


def pool_name(spec: PipelineSpec) -> str:
    return f"driftless_{spec.target.connection}"


def slots(env: dict[str, str] | None = None) -> int:
    """Slots per pool: ``DRIFTLESS_POOL_SLOTS`` of ``env`` (default: the process environment), else 4."""
    return int((settings() if env is None else Settings.from_env(env)).pool_slots or DEFAULT_SLOTS)


def pools_for(specs_dir: str | Path) -> dict[str, str]:
    """``{pool name: description}`` for every target connection used by the specs of a directory."""
    pools: dict[str, str] = {}
    for spec in load_specs(specs_dir):
        pools.setdefault(pool_name(spec), f"driftless loads into connection {spec.target.connection!r}")
    return pools
