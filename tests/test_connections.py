from __future__ import annotations

import pytest

from driftless.connections import resolve_url, use_lookup
from driftless.errors import ConnectionNotFound
from driftless.redact import redact_url


def test_uri_forms(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PG", "postgres://u:p%40ss@db.example:5433/wh")
    url = resolve_url("pg")
    assert url.drivername == "postgresql+psycopg" and url.password == "p@ss" and url.port == 5433
    assert "p@ss" not in redact_url(url) and "***" in redact_url(url)
    monkeypatch.setenv("AIRFLOW_CONN_MY", "mysql://root@127.0.0.1:3306/test")
    assert resolve_url("my").drivername == "mysql+pymysql"
    monkeypatch.setenv("AIRFLOW_CONN_LITE", "sqlite:////tmp/x.db")
    assert resolve_url("lite").database == "/tmp/x.db"


def test_json_form(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_J", '{"conn_type": "postgres", "host": "h", "login": "l", "password": "s",'
                       ' "schema": "db", "port": 5432}')
    url = resolve_url("j")
    assert (url.host, url.username, url.database, url.port) == ("h", "l", "db", 5432)


def test_unsupported_scheme_and_missing(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_X", "ftp://h/x")
    with pytest.raises(ConnectionNotFound, match="URI scheme 'ftp' is not supported"):
        resolve_url("x")
    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    with pytest.raises(ConnectionNotFound, match="set AIRFLOW_CONN_NOPE"):
        resolve_url("nope")


def test_fallback_lookup(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_VIA_AIRFLOW", raising=False)
    use_lookup(lambda cid: {"conn_type": "sqlite", "host": f"/tmp/{cid}.db"})
    try:
        assert resolve_url("via_airflow").database == "/tmp/via_airflow.db"
    finally:
        use_lookup(None)
