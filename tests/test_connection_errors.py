"""Database connections: a connection killed mid-load is reported as lost; a host that never answers times out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import URL, create_engine, text

from tests.conftest import MARIADB_ADMIN, PG_ADMIN, airflow_uri
from tests.helpers import INVOICES

WINDOW = ["--start", "2021-01-01", "--end", "2026-01-01"]


def etl_run(spec_path: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "driftless.cli", "run", str(spec_path), *WINDOW], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_sessions(url: URL) -> int:
    """End every session on ``url``'s database from another session, as an operator would."""
    if url.get_backend_name() == "postgresql":
        engine = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        sql = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE datname = :db AND pid <> pg_backend_pid()")
        with engine.connect() as conn:
            killed = len(conn.execute(text(sql), {"db": url.database}).all())
    else:
        engine = create_engine(MARIADB_ADMIN)
        with engine.connect() as conn:
            ids = conn.execute(text("SELECT id FROM information_schema.processlist "
                                    "WHERE db = :db AND id <> CONNECTION_ID()"), {"db": url.database}).scalars().all()
            for session in ids:
                conn.execute(text(f"KILL {int(session)}"))
            killed = len(ids)
    engine.dispose()
    return killed


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("dialect", ["mariadb", "postgresql"])
def test_a_connection_killed_mid_load_is_reported_as_lost(request, dialect, tmp_path, chinook_source):
    url: URL = request.getfixturevalue("mariadb_url" if dialect == "mariadb" else "pg_url")
    spec_path = tmp_path / "invoices_test.yaml"
    spec_path.write_text(yaml.safe_dump(INVOICES))
    marker = tmp_path / "marker"
    env = dict(os.environ, AIRFLOW_CONN_SRC=f"sqlite:///{chinook_source}", AIRFLOW_CONN_WH=airflow_uri(url),
               DRIFTLESS_STAGING_DIR=str(tmp_path / "staging"), DRIFTLESS_FAILPOINT="mid_load",
               DRIFTLESS_FAILPOINT_MARKER=str(marker), DRIFTLESS_FAILPOINT_SLEEP="3")
    proc = etl_run(spec_path, env)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the load never reached the fail point"
        time.sleep(0.05)
    assert _kill_sessions(url) >= 1, "the load's session was found and ended"
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 1 and out == ""
    assert "Traceback" not in err and "(0, '')" not in err
    driver = {"mariadb": "mysql+pymysql", "postgresql": "postgresql+psycopg"}[dialect]
    where = url.set(drivername=driver).render_as_string(hide_password=True)
    assert f"into {where} failed: the connection to the database was lost" in err, err
    # The failed attempt is on record, with the same words.
    engine = create_engine(url)
    with engine.connect() as conn:
        status, message = conn.execute(text("SELECT status, message FROM etl_runs ORDER BY id DESC")).first()
    engine.dispose()
    assert status == "failed" and "the connection to the database was lost" in message
    assert not list((tmp_path / "staging").glob("*/*/*")), "the failed run removed its staging"


def _unanswered_port() -> tuple[socket.socket, list[socket.socket]]:
    """A local port whose TCP handshake never completes: a listener with a full backlog that never accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs are dropped, as by a firewall that blackholes them
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(TimeoutError):  # it really hangs
        probe.connect(server.getsockname())
    probe.close()
    return server, fillers


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
@pytest.mark.parametrize("role", ["source", "target"])
@pytest.mark.slow
def test_a_host_that_never_answers_fails_within_the_connect_timeout(scheme, role, tmp_path, chinook_source):
    server, fillers = _unanswered_port()
    port = server.getsockname()[1]
    try:
        spec_path = tmp_path / "invoices_test.yaml"
        spec_path.write_text(yaml.safe_dump(INVOICES))
        hung = f"{scheme}://someone:s3cret@127.0.0.1:{port}/nowhere"
        reachable = {"AIRFLOW_CONN_SRC": f"sqlite:///{chinook_source}",
                     "AIRFLOW_CONN_WH": f"sqlite:///{tmp_path / 'wh.db'}"}
        env = dict(os.environ, **reachable, DRIFTLESS_STAGING_DIR=str(tmp_path / "staging"),
                   DRIFTLESS_CONNECT_TIMEOUT_S="2")
        env["AIRFLOW_CONN_SRC" if role == "source" else "AIRFLOW_CONN_WH"] = hung
        started = time.monotonic()
        proc = etl_run(spec_path, env)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("etl run still waited for the host after 60 s")
        elapsed = time.monotonic() - started
    finally:
        for sock in (*fillers, server):
            sock.close()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err and "s3cret" not in err
    driver = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}[scheme]
    assert f"{driver}://someone:***@127.0.0.1:{port}/nowhere" in err, err
    assert "no answer within the connect timeout of 2 s" in err, err
    # Every connection attempt gives up after 2 s (the target is also tried once more to record the failed run).
    assert elapsed < 15, f"took {elapsed:.1f} s"


def test_connect_timeout_default_setting_and_override(monkeypatch):
    from sqlalchemy import make_url

    from driftless.errors import DriftlessError
    from driftless.targets import connect_args

    monkeypatch.delenv("DRIFTLESS_CONNECT_TIMEOUT_S", raising=False)
    assert connect_args(make_url("postgresql+psycopg://u@h/db")) == {"connect_timeout": 10}  # the default
    assert connect_args(make_url("mysql+pymysql://u@h/db")) == {"connect_timeout": 10}
    assert connect_args(make_url("sqlite:////tmp/x.db")) == {}  # a file: nothing to wait for
    monkeypatch.setenv("DRIFTLESS_CONNECT_TIMEOUT_S", "3")
    assert connect_args(make_url("postgresql+psycopg://u@h/db")) == {"connect_timeout": 3}
    # A connection's own setting (URI query or Airflow extra: both end in the URL's query) wins.
    assert connect_args(make_url("mysql+pymysql://u@h/db?connect_timeout=7")) == {}
    monkeypatch.setenv("DRIFTLESS_CONNECT_TIMEOUT_S", "soon")
    with pytest.raises(DriftlessError, match="DRIFTLESS_CONNECT_TIMEOUT_S must be a whole number of seconds"):
        connect_args(make_url("postgresql+psycopg://u@h/db"))


def test_driver_error_summary_is_one_readable_line():
    import psycopg
    import pymysql
    from sqlalchemy.exc import OperationalError

    from driftless.errors import CONNECTION_LOST, driver_error_summary

    # PyMySQL's (code, message) tuples: the message first, the code kept.
    missing = pymysql.err.ProgrammingError(1146, "Table 'db.x' doesn't exist")
    assert driver_error_summary(missing) == "Table 'db.x' doesn't exist (MySQL error 1146)"
    # PyMySQL's "already closed" and "lost during query", raw or wrapped by SQLAlchemy: the session is gone.
    assert driver_error_summary(pymysql.err.InterfaceError(0, "")) == CONNECTION_LOST
    lost = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
    assert driver_error_summary(OperationalError("INSERT ...", {}, lost)) == CONNECTION_LOST
    # When the server said why, the reason is kept.
    shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert driver_error_summary(shutdown) == f"{CONNECTION_LOST} (terminating connection due to administrator command)"
    # Anything else: the driver's first line, never the SQL that SQLAlchemy appends.
    wrapped = OperationalError("SELECT 1", {}, psycopg.OperationalError("permission denied\nDETAIL: more"))
    assert driver_error_summary(wrapped) == "permission denied"
