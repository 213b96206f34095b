"""Shared fixtures: real databases, made fresh per test and dropped afterwards.

PostgreSQL (127.0.0.1:5432) and MariaDB (127.0.0.1:3306) tests skip with the reason when the
server is unreachable, except under ``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, create_engine, text

from driftless import settings as driftless_settings
from tools.demo import prepare_source

REPO = Path(__file__).resolve().parent.parent

# Tests get an Airflow home of their own (never the demo's .airflow), set before anything imports Airflow.
AIRFLOW_TEST_HOME = Path(tempfile.mkdtemp(prefix="driftless-airflow-"))
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_TEST_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["DRIFTLESS_STAGING_DIR"] = str(AIRFLOW_TEST_HOME / "staging")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN = URL.create("postgresql+psycopg", username=os.environ.get("DRIFTLESS_PG_USER", "postgres"),
                      host=os.environ.get("DRIFTLESS_PG_HOST", "127.0.0.1"),
                      port=int(os.environ.get("DRIFTLESS_PG_PORT", "5432")), database="postgres")
MARIADB_ADMIN = URL.create("mysql+pymysql", username=os.environ.get("DRIFTLESS_MARIADB_USER", "root"),
                           host=os.environ.get("DRIFTLESS_MARIADB_HOST", "127.0.0.1"),
                           port=int(os.environ.get("DRIFTLESS_MARIADB_PORT", "3306")), database="test")


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """Airflow's metadata database (SQLite in the tests' Airflow home), migrated once per session."""
    proc = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    yield AIRFLOW_TEST_HOME
    shutil.rmtree(AIRFLOW_TEST_HOME, ignore_errors=True)


def unavailable(service: str, exc: Exception) -> None:
    reason = f"{service} unreachable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    if IN_CI:
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


def airflow_uri(url: URL) -> str:
    """A URL as an ``AIRFLOW_CONN_<ID>`` value."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///{url.database}"
    return url.render_as_string(hide_password=False)


@pytest.fixture
def pg_databases() -> Iterator:
    """A factory of fresh PostgreSQL databases, all dropped after the test."""
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make() -> URL:
        name = f"driftless_t_{uuid.uuid4().hex[:10]}"
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # noqa: BLE001
            unavailable(f"PostgreSQL at {PG_ADMIN.host}:{PG_ADMIN.port}", exc)
        made.append(name)
        return PG_ADMIN.set(database=name)

    yield make
    if made:
        with admin.connect() as conn:
            for name in made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_databases) -> URL:
    """A fresh PostgreSQL database, dropped after the test."""
    return pg_databases()


@pytest.fixture
def mariadb_url() -> Iterator[URL]:
    """A fresh MariaDB database, dropped after the test."""
    name = f"driftless_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(MARIADB_ADMIN)
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        unavailable(f"MariaDB at {MARIADB_ADMIN.host}:{MARIADB_ADMIN.port}", exc)
    yield MARIADB_ADMIN.set(database=name)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    return URL.create("sqlite", database=str(tmp_path / "warehouse.db"))


@pytest.fixture(params=["sqlite", "postgresql"])
def target_url(request: pytest.FixtureRequest) -> URL:
    """Each target dialect the skeleton supports, as a fresh empty database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    request.applymarker(pytest.mark.integration)
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def wh(request, connections) -> URL:
    """A fresh target database of each dialect, defined as connection id ``wh``."""
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        request.applymarker(pytest.mark.integration)
        url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url")
    connections(wh=url)
    return url


@pytest.fixture
def another_target(request: pytest.FixtureRequest, target_url: URL, tmp_path: Path):
    """A factory of further empty databases of the same dialect as ``target_url``."""

    def make() -> URL:
        if target_url.get_backend_name() == "sqlite":
            return target_url.set(database=str(tmp_path / f"other_{uuid.uuid4().hex[:6]}.db"))
        return request.getfixturevalue("pg_databases")()

    return make


@pytest.fixture(scope="session")
def chinook_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's source database (Chinook with updated_at cursors), prepared once."""
    return prepare_source(tmp_path_factory.mktemp("chinook") / "source.db")


@pytest.fixture
def chinook_copy(chinook_source: Path, tmp_path: Path) -> Path:
    """A private copy of the demo source that a test may modify."""
    path = tmp_path / "source.db"
    shutil.copyfile(chinook_source, path)
    return path


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch):
    """Define connection ids as AIRFLOW_CONN_<ID> for the test: ``connections(chinook=url, ...)``."""

    def define(**urls: URL | str | Path) -> None:
        for conn_id, url in urls.items():
            value = f"sqlite:///{url}" if isinstance(url, Path) else (
                airflow_uri(url) if isinstance(url, URL) else url)
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)

    return define


def _then_reset_settings(method):
    """``monkeypatch.setenv``/``delenv`` of a ``DRIFTLESS_*`` variable also resets ``driftless.settings``."""

    def wrapper(self, name, *args, **kwargs):
        result = method(self, name, *args, **kwargs)
        if str(name).startswith("DRIFTLESS_"):
            driftless_settings.reset()
        return result

    return wrapper


# driftless reads its settings once per process (driftless.settings); a test that changes one sees it at once.
pytest.MonkeyPatch.setenv = _then_reset_settings(pytest.MonkeyPatch.setenv)
pytest.MonkeyPatch.delenv = _then_reset_settings(pytest.MonkeyPatch.delenv)


@pytest.fixture(autouse=True)
def _fresh_settings():
    """Each test starts from the environment as it is (an earlier test's monkeypatch undone)."""
    driftless_settings.reset()
    yield
    driftless_settings.reset()


@pytest.fixture(autouse=True)
def _no_airflow_connection_lookup():
    """Airflow task bodies switch on Airflow's connection lookup in-process; keep it from leaking."""
    from driftless import connections as conns

    conns.use_lookup(None)
    yield
    conns.use_lookup(None)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup``, put each test's ``xdist_group`` into its node id as ``<id>@<group>``.

    xdist's scheduler sends the tests of one group to one worker by that suffix. pytest-xdist 3.8.0 adds it by
    setting ``item._nodeid``, which pytest 9.2 no longer reads (a node keeps its id in ``_id``), so its groups are
    silently ignored; this does the same through the attribute pytest 9.2 reads. Written by hand because no
    released xdist does it yet; it steps aside once xdist's own suffix is in the id.
    """
    if not (getattr(config.option, "loadgroup", False) or getattr(config.option, "dist", None) == "loadgroup"):
        return
    from _pytest.nodeid import coerce_node_id  # pytest 9's node id type (no public constructor)

    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")

