"""Loads that start at once into a fresh target (partition slices on several workers) create its tables once."""

from __future__ import annotations

import threading

import pytest

from driftless.schema import target_table
from driftless.state import read_runs
from driftless.targets.loaders import loader_for
from tests.helpers import invoices_spec


@pytest.mark.integration
@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_concurrent_ensure_tables_on_a_fresh_target(dialect, request):
    url = request.getfixturevalue("pg_url" if dialect == "postgresql" else "mariadb_url")
    target = target_table(invoices_spec())
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def create() -> None:
        loader = loader_for(url)
        try:
            start.wait()
            loader.ensure_tables(target)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            loader.dispose()

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    loader = loader_for(url)
    try:
        assert read_runs(loader.engine, "invoices_test") == []  # the state tables exist, empty
    finally:
        loader.dispose()
