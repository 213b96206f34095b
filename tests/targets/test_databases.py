"""driftless.targets: one database per backend name and connection type, its engine's session set-up."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

from driftless.errors import DriftlessError, LoadError, ReconciliationFailed
from driftless.targets import capabilities, database_for, database_for_scheme, engine_for, hash_dialect_for
from driftless.targets.loaders import loader_for
from driftless.targets.mysql.load import MySqlLoader
from driftless.targets.mysql.rowhash import MySqlHash
from driftless.targets.postgres.load import PostgresLoader
from driftless.targets.sqlite.load import SqliteLoader


def test_each_backend_and_scheme_finds_its_database():
    assert capabilities(make_url("postgresql+psycopg://u@h/db")).name == "postgresql"
    assert capabilities(make_url("mariadb+pymysql://u@h/db")).name == "mysql"  # MariaDB is the MySQL module
    assert hash_dialect_for(make_url("mysql+pymysql://u@h/db")) is MySqlHash
    assert database_for_scheme("postgres").capabilities.driver == "postgresql+psycopg"  # Airflow's conn_type
    assert database_for_scheme("MariaDB").capabilities.driver == "mysql+pymysql"
    assert database_for_scheme("ftp") is None


def test_an_unknown_database_is_refused_naming_the_supported_ones():
    url = make_url("oracle://u@h/db")
    with pytest.raises(DriftlessError, match=r"'oracle'.*supported: mariadb, mysql, postgresql, sqlite"):
        database_for(url)
    with pytest.raises(LoadError):
        loader_for(url)
    with pytest.raises(ReconciliationFailed):
        hash_dialect_for(url)


def test_loaders_by_database(tmp_path):
    loader = loader_for(make_url(f"sqlite:///{tmp_path / 'w.db'}"))
    try:
        assert isinstance(loader, SqliteLoader)
    finally:
        loader.dispose()
    assert not issubclass(MySqlLoader, PostgresLoader) and MySqlLoader.transactional_ddl is False


def test_engines_get_their_databases_session_set_up(tmp_path):
    mysql = engine_for(make_url("mysql+pymysql://u@h/db"))
    own = engine_for(make_url("mysql+pymysql://u@h/db?charset=latin1"))
    sqlite = engine_for(make_url(f"sqlite:///{tmp_path / 'w.db'}"))
    try:
        assert mysql.url.query["charset"] == "utf8mb4" and own.url.query["charset"] == "latin1"
        assert mysql.pool._pre_ping and not sqlite.pool._pre_ping  # a SQLite connection is a file in this process
    finally:
        for engine in (mysql, own, sqlite):
            engine.dispose()
