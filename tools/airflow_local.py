"""A local Airflow for trying driftless by hand (``make airflow``) and for the tests that need a real one.

``python -m tools.airflow_local up`` migrates the metadata database (``$DRIFTLESS_AIRFLOW_DB``, else
the database ``driftless_airflow_<checkout hash>`` on the local PostgreSQL, else SQLite in ``$AIRFLOW_HOME``),
creates one pool per target connection, starts the demo REST API (``chinook_api``), the api-server,
scheduler, dag-processor and triggerer on 127.0.0.1, unpauses ``consistency_report``, prints the URL and
the login, and stops everything cleanly on Ctrl-C.
``--executor celery`` (``make airflow EXECUTOR=celery``) runs the CeleryExecutor instead of the
LocalExecutor and starts ``--workers`` Celery workers (default 2): broker Redis (``$DRIFTLESS_CELERY_BROKER``,
default ``redis://127.0.0.1:6379/0``, every key prefixed ``driftless_<checkout hash>:`` so clones sharing one
Redis never take each other's tasks), result backend the metadata database (PostgreSQL).
``python -m tools.airflow_local pools`` only (re)creates the pools.

Login: the simple auth manager with one admin user. Its user list is ``[core]
simple_auth_manager_users``; its passwords live in the JSON file ``[core]
simple_auth_manager_passwords_file``, which this module writes (``admin``/``admin`` unless
``DRIFTLESS_AIRFLOW_PASSWORD`` says otherwise). For local use only.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from driftless.airflow.pools import pools_for, slots
from driftless.spec import default_specs_dir

REPO = Path(__file__).resolve().parent.parent
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_env(home: Path, port: int, user: str = "admin", password: str = "admin",
                base: dict[str, str] | None = None, metadata_db: str | None = None, executor: str = "local",
                broker_url: str | None = None, broker_prefix: str | None = None) -> dict[str, str]:
    """The environment of every Airflow process of a local stack rooted at ``home``.

    ``metadata_db`` is a SQLAlchemy URL of Airflow's metadata database (default: SQLite in ``home``).
    ``executor`` is ``local`` (LocalExecutor) or ``celery`` (CeleryExecutor: see ``celery_env``).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({user: password}))
    secret_file = home / "driftless-jwt-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32))
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env.update({
        "PATH": f"{bin_dir}:{env.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": env.get("AIRFLOW__CORE__DAGS_FOLDER") or str(REPO / "dags"),
        # plugins/driftless_reports.py: the api-server serves the consistency reports
        "AIRFLOW__CORE__PLUGINS_FOLDER": env.get("AIRFLOW__CORE__PLUGINS_FOLDER") or str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS[executor],
        "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM") or "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        # All components must sign and check task tokens with one secret.
        "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text().strip(),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": env.get("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL") or "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # The triggerer (event-driven runs' watchers) serves its logs on a port of its own: two stacks on one
        # machine (tests, clones) would otherwise both ask for the default 8794.
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": env.get("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")
        or str(free_port()),
        "DRIFTLESS_STAGING_DIR": env.get("DRIFTLESS_STAGING_DIR") or str(home / "staging"),
    })
    if metadata_db:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = metadata_db
        if metadata_db.startswith("postgresql+psycopg://"):  # psycopg 3 is async too; no asyncpg needed
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = metadata_db
    if executor == "celery":
        env.update(celery_env(metadata_db, broker_url or env.get("DRIFTLESS_CELERY_BROKER") or DEFAULT_BROKER,
                              broker_prefix or metadata_db_name().removeprefix("driftless_airflow_")))
    return env


def celery_env(metadata_db: str | None, broker_url: str, prefix: str) -> dict[str, str]:
    """The CeleryExecutor settings shared by the scheduler and every worker (and docker-compose.integration.yml).

    * broker ``broker_url`` (Redis), every key prefixed ``driftless_<prefix>:`` (kombu's ``global_keyprefix``),
      so two checkouts or test stacks sharing one Redis never consume each other's tasks;
    * result backend: the metadata database (``db+postgresql+psycopg://...``); Celery's results are only
      bookkeeping, the task states Airflow acts on live in the metadata database anyway;
    * ``task_acks_late`` and ``worker_prefetch_multiplier = 1`` (the provider's defaults, spelled out): a
      worker takes one task per free process, and a message is acknowledged only when its task ended.
    """
    if not metadata_db or not metadata_db.startswith("postgresql"):
        raise ValueError("the CeleryExecutor needs a PostgreSQL metadata database (its result backend); "
                         "set DRIFTLESS_AIRFLOW_DB or start the local PostgreSQL")
    return {
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"driftless_{prefix}:",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_db}",
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        # A task instance's hostname is its worker's Celery name (worker1@host, ...): see that function.
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "driftless.airflow.workers.task_hostname",
    }


def metadata_db_name() -> str:
    """``driftless_airflow_<8 hex digits of this checkout's path>``: two clones never share one."""
    import hashlib

    return f"driftless_airflow_{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}"


def local_postgres_metadata(name: str | None = None) -> str | None:
    """A metadata database on the local PostgreSQL (created if absent), or None when it is unreachable.

    ``name`` defaults to ``metadata_db_name()``, one per checkout.

    Airflow refuses to create backfills on SQLite while other components use the database ("Backfill
    creation is not supported on SQLite under concurrent access"), so ``make airflow`` prefers PostgreSQL.
    """
    from sqlalchemy import URL, create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    admin = URL.create("postgresql+psycopg", username=os.environ.get("DRIFTLESS_PG_USER", "postgres"),
                       host=os.environ.get("DRIFTLESS_PG_HOST", "127.0.0.1"),
                       port=int(os.environ.get("DRIFTLESS_PG_PORT", "5432")), database="postgres")
    name = name or metadata_db_name()
    engine = create_engine(admin, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(text(f'CREATE DATABASE "{name}"'))  # name: a fixed identifier, not input
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


def run_airflow(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    proc = subprocess.run(["airflow", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def ensure_pools(env: dict[str, str], specs_dir: str | Path) -> dict[str, str]:
    """Create or update one pool per target connection (``airflow pools import``, one CLI call)."""
    pools = pools_for(specs_dir)
    if not pools:
        return pools
    path = Path(env["AIRFLOW_HOME"]) / "driftless-pools.json"
    path.write_text(json.dumps({name: {"slots": slots(env), "description": desc, "include_deferred": False}
                                for name, desc in pools.items()}))
    run_airflow(env, "pools", "import", str(path))
    return pools


def setup(env: dict[str, str], specs_dir: str | Path) -> None:
    """Migrate the metadata database and create the pools."""
    run_airflow(env, "db", "migrate")
    ensure_pools(env, specs_dir)


class LocalAirflow:
    """The api-server, scheduler, dag-processor, triggerer (and Celery workers) of one Airflow home."""

    def __init__(self, env: dict[str, str], port: int, user: str = "admin", password: str = "admin",
                 workers: int = 0, concurrency: int = 2) -> None:
        self.env, self.port, self.user, self.password = env, port, user, password
        self.url = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = Path(env["AIRFLOW_HOME"]) / "component-logs"
        self.workers = [f"worker{i}@{socket.gethostname()}" for i in range(1, workers + 1)]
        self.concurrency = concurrency
        self.starts: dict[str, int] = {}

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for name in COMPONENTS:
            args = ["airflow", name] + (["--port", str(self.port), "--host", "127.0.0.1"] if name == "api-server"
                                        else [])
            self._spawn(name, args, self.env)
        for worker in self.workers:
            self.start_worker(worker)

    def start_worker(self, worker: str, extra_env: dict[str, str] | None = None) -> None:
        """Start (or restart) the Celery worker named ``worker`` (``workerN@host``)."""
        # Each worker serves its task logs on a port of its own (all share this Airflow home's log folder).
        env = {**self.env, "DRIFTLESS_WORKER_NAME": worker,
               "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()), **(extra_env or {})}
        self.starts[worker] = self.starts.get(worker, 0) + 1  # restarts append to the same log
        self._spawn(worker.split("@")[0], ["airflow", "celery", "worker", "--celery-hostname", worker,
                                           "--concurrency", str(self.concurrency)], env)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        # A session of its own: Ctrl-C reaches only this process, which stops the children in order.
        self.procs[name] = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def kill_worker(self, worker: str, graceful: bool = False) -> list[int]:
        """Stop a Celery worker and every process under it; returns their pids. It is no longer watched.

        Default: SIGKILL to all of them at once, as if the worker's machine died (its task runners have
        process groups of their own, so the whole tree is signalled). ``graceful``: SIGTERM to the worker
        first (a warm shutdown), SIGKILL to what is left after 30 s.
        """
        import psutil

        proc = self.procs.pop(worker.split("@")[0])
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        if graceful and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=30)
        proc.wait(timeout=30)
        return [p.pid for p in tree]

    def wait_workers(self, timeout: float = 180) -> None:
        """Wait until every Celery worker has connected to the broker (``ready.`` in its log)."""
        deadline = time.monotonic() + timeout
        pending = list(self.workers)
        while pending:
            self.check_alive()
            pending = [w for w in pending if (self.logs / f"{w.split('@')[0]}.log").read_text(
                errors="replace").count(f"{w} ready.") < self.starts.get(w, 1)]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"Celery workers {', '.join(pending)} not ready after {timeout:.0f}s; "
                                   f"see {self.logs}")
            time.sleep(1)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow api-server not ready at {self.url} after {timeout:.0f}s; see {self.logs}")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{tail}")

    def token(self) -> str:
        """A JWT for the REST API (the simple auth manager's ``POST /auth/token``)."""
        r = requests.post(f"{self.url}/auth/token", json={"username": self.user, "password": self.password},
                          timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        r = requests.request(method, f"{self.url}/api/v2{path}", headers=headers, timeout=60, **kwargs)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: {r.text[:1000]}")
        return r.json() if r.content else None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM every component's process group, then SIGKILL what is left after ``timeout``."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group: task runners the component started
            except ProcessLookupError:
                pass
            proc.wait()

    def unpause(self, dag_ids: set[str]) -> set[str]:
        """Unpause those of ``dag_ids`` the dag-processor has registered; returns the ones still to do."""
        try:
            token = self.token()
            known = {d["dag_id"]: d["is_paused"] for d in self.api("GET", "/dags?limit=1000", token)["dags"]}
            for dag_id in dag_ids & set(known):
                if known[dag_id]:
                    self.api("PATCH", f"/dags/{dag_id}", token, json={"is_paused": False})
        except (requests.RequestException, RuntimeError):
            return dag_ids
        return dag_ids - set(known)


# Unpaused by `make airflow` (also for a metadata database where they were created paused before).
UNPAUSED = {"consistency_report"}


def demo_environment(env: dict[str, str]) -> subprocess.Popen | None:
    """Make every shipped pipeline runnable: point its connections at the demo, unless already defined.

    The file pipeline's CSV drop (``.demo/drops``) is written when absent.

    ``chinook`` and ``warehouse`` are the demo's SQLite files (``.demo/``); ``chinook_api`` is the demo
    REST API (``demo/api_server.py``), started here on a free loopback port with a fresh bearer token.
    Returns the API's process (the caller stops it), or None when ``chinook_api`` was defined already.
    """
    from tools.demo import prepare_file_drop, prepare_source

    demo = REPO / ".demo"
    if not (demo / "drops").is_dir():  # the CSV drop that chinook_tracks_csv reads (location: .demo/drops)
        prepare_file_drop(demo / "drops")
    if "AIRFLOW_CONN_CHINOOK" not in env:
        source = demo / "source.db"
        if not source.exists():
            prepare_source(source)
        env["AIRFLOW_CONN_CHINOOK"] = f"sqlite:///{source}"
    env.setdefault("AIRFLOW_CONN_WAREHOUSE", f"sqlite:///{demo / 'warehouse.db'}")
    # The default connection of a spec's trigger (event-driven runs): the local Redis.
    env.setdefault("AIRFLOW_CONN_REDIS_DEFAULT", "redis://127.0.0.1:6379")
    if "AIRFLOW_CONN_CHINOOK_API" in env:
        return None
    token = secrets.token_urlsafe(24)
    proc = subprocess.Popen([sys.executable, str(REPO / "demo" / "api_server.py")], text=True,
                            env={**env, "DRIFTLESS_DEMO_API_TOKEN": token}, stdout=subprocess.PIPE,
                            start_new_session=True)
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the demo API (demo/api_server.py) did not start: {line or 'no output'}")
    host, port = line.removeprefix("listening on http://").split(":")
    env["AIRFLOW_CONN_CHINOOK_API"] = json.dumps({"conn_type": "http", "host": host, "port": int(port),
                                                  "extra": {"token": token}})
    return proc


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.airflow_local", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "pools"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("DRIFTLESS_AIRFLOW_PORT", "8080")))
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="local",
                        help="local (LocalExecutor, default) or celery (CeleryExecutor with --workers workers)")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers to start (default 2)")
    # The DAGs' rule: $DRIFTLESS_SPECS_DIR, else pipelines/ in the DAGs folder (the one the components get below).
    parser.add_argument("--specs-dir", default=str(default_specs_dir(
        (os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or "").strip() or REPO / "dags")))
    args = parser.parse_args(argv)
    home = Path(os.environ.get("AIRFLOW_HOME") or REPO / ".airflow")
    password = os.environ.get("DRIFTLESS_AIRFLOW_PASSWORD", "admin")
    metadata = os.environ.get("DRIFTLESS_AIRFLOW_DB")
    if args.command == "up" and not metadata:
        metadata = local_postgres_metadata()
    if args.executor == "celery" and not metadata:
        parser.error("--executor celery needs a PostgreSQL metadata database: the local PostgreSQL "
                     "(127.0.0.1:5432) is unreachable and DRIFTLESS_AIRFLOW_DB is not set")
    env = airflow_env(home, args.port, password=password, metadata_db=metadata, executor=args.executor)
    if args.command == "pools":
        print("pools:", ", ".join(ensure_pools(env, args.specs_dir)) or "none")
        return 0
    api = demo_environment(env)
    where = "SQLite (backfills need PostgreSQL: set DRIFTLESS_AIRFLOW_DB)" if not metadata else metadata
    print(f"driftless: preparing Airflow in {home} (metadata DB: {where}) ...", flush=True)
    try:
        setup(env, args.specs_dir)
    except BaseException:
        stop_process(api)
        raise
    stack = LocalAirflow(env, args.port, password=password, workers=args.workers if args.executor == "celery" else 0)

    def _interrupt(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the stack as cleanly as Ctrl-C does
    stack.start()
    try:
        stack.wait_ready()
        stack.wait_workers()
        executor = env["AIRFLOW__CORE__EXECUTOR"] + (f" ({', '.join(stack.workers)}; broker "
                                                     f"{env['AIRFLOW__CELERY__BROKER_URL']})" if stack.workers else "")
        print(f"\n  Airflow UI   {stack.url}\n  login        admin / {password}\n  executor     {executor}\n"
              f"  logs         {stack.logs}\n  pools        {', '.join(pools_for(args.specs_dir))}\n"
              f"  unpaused     {', '.join(sorted(UNPAUSED))} (runs after every load; unpause pipelines in the UI)"
              "\nPress Ctrl-C to stop.", flush=True)
        pending = set(UNPAUSED)
        while True:
            stack.check_alive()
            if pending:
                pending = stack.unpause(pending)
            time.sleep(2)
    except KeyboardInterrupt:
        print("\nstopping Airflow ...", flush=True)
    finally:
        stack.stop()
        stop_process(api)
        print("stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
