"""The shape of the code: no import circle among project modules, engines created in few places, dialect names
compared only in the per-database modules (``driftless.targets``).

Read from the source with ``ast`` (nothing is imported): every ``import``/``from`` statement counts,
also those inside functions, since a circle hidden in a function still ties two modules together.
Importing ``a.b.c`` from outside package ``a.b`` also runs ``a/__init__`` and ``a/b/__init__``, so
those are edges too (the circle ``state -> load -> load.base -> state`` is real at
run time even though no two modules name each other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("driftless", "tools", "dags")

#: The modules allowed to call ``sqlalchemy.create_engine``: the one engine factory.
CREATE_ENGINE_ALLOWED = {
    "driftless.engines",  # every engine of a source or target (session set-up: driftless.targets)
    "tools.airflow_local",  # developer tooling: creates the local Airflow's metadata database
}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _own_packages(module: str, path: Path) -> set[str]:
    """The packages a module belongs to (already being imported when it runs)."""
    parts = module.split(".")
    if path.name != "__init__.py":
        parts = parts[:-1]
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        own = _own_packages(module, path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, *([base] if base else [])])
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target is None:
                    continue
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # the packages on the way run their __init__
                    step = ".".join(parts[:i])
                    if step in modules and step != module and step not in own:
                        deps.add(step)
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_create_engine_only_in_the_engine_factory():
    """Only ``driftless.engines`` (and tooling) takes ``sqlalchemy.create_engine``; others ask it for engines."""
    users = set()
    for module, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            imported = (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy")
                        and any(alias.name == "create_engine" for alias in node.names))
            attribute = (isinstance(node, ast.Attribute) and node.attr == "create_engine"
                         and isinstance(node.value, ast.Name) and node.value.id == "sqlalchemy")
            if imported or attribute:
                users.add(module)
    assert users <= CREATE_ENGINE_ALLOWED, f"sqlalchemy.create_engine used outside driftless.engines: " \
                                           f"{sorted(users - CREATE_ENGINE_ALLOWED)}"
    assert "driftless.engines" in users  # the factory itself is found, so the check can fail


#: Names a module compares when it branches on a database (SQLAlchemy backend names, Airflow's ``postgres``).
DIALECT_NAMES = {"postgresql", "postgres", "mysql", "mariadb", "sqlite"}


def _literals(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [text for element in node.elts for text in _literals(element)]
    return []


def dialect_branches(tree: ast.Module) -> list[str]:
    """Comparisons with a dialect name in ``tree`` (``==``, ``!=``, ``in``; ``startswith``/``endswith``), as source.

    A module constant holding such names counts where it is compared (``backend in TIMEOUT_BACKENDS``).
    """
    def named(node: ast.expr) -> bool:
        return any(text.lower() in DIALECT_NAMES for text in _literals(node))

    constants = {target.id for node in tree.body if isinstance(node, ast.Assign) and named(node.value)
                 for target in node.targets if isinstance(target, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(named(side) or (isinstance(side, ast.Name) and side.id in constants) for side in sides):
                found.append(ast.unparse(node))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith")
              and any(text.lower().startswith(tuple(DIALECT_NAMES)) for arg in node.args for text in _literals(arg))):
            found.append(ast.unparse(node))
    return found


def test_only_the_database_modules_branch_on_a_dialect_name():
    """``driftless.targets`` is the one home of per-database behaviour; elsewhere code asks it (capabilities,
    engines, loaders, hash dialects) instead of comparing dialect or backend names."""
    offenders = {}
    for module, path in project_modules().items():
        if not module.startswith("driftless.") or module.startswith("driftless.targets"):
            continue  # tools/ and dags/ may; tests are not scanned
        found = dialect_branches(ast.parse(path.read_text(), str(path)))
        if found:
            offenders[module] = found
    assert not offenders, f"dialect names compared outside driftless.targets: {offenders}"


def test_the_dialect_branch_finder_finds_branches():
    code = ("BACKENDS = ('mysql', 'mariadb')\n"
            "a = url.get_backend_name() == 'postgresql'\n"
            "b = dialect.name in ('mysql', 'mariadb')\n"
            "c = name.startswith('sqlite')\n"
            "d = backend not in BACKENDS\n"
            "e = kind == 'json'\n"
            "f = Integer().with_variant(BigInteger(), 'postgresql')\n")
    assert dialect_branches(ast.parse(code)) == ["url.get_backend_name() == 'postgresql'",
                                                 "dialect.name in ('mysql', 'mariadb')",
                                                 "name.startswith('sqlite')", "backend not in BACKENDS"]


#: Imported by a load and the checks after it; none of them may bring in pandas or pandera (issue 13: a load's
#: peak memory; pandas alone is ~48 MB of it). The extract imports them where it runs.
LOAD_PATH_MODULES = ("driftless.pipeline", "driftless.load.entry", "driftless.targets.loaders", "driftless.state",
                     "driftless.reconcile.checks", "driftless.quarantine.store", "driftless.extract.staging")

#: In a fresh interpreter: import the load path, load staged windows (made by the test: pyarrow's
#: ``Table.from_pylist`` imports pandas when it is installed) into SQLite with ``load_window`` (a first load,
#: then an upsert of changed rows), once more with ``load_rows``, run the window's checks (a source that
#: counts), and report which of pandas/pandera got imported at each step.
LOAD_WITHOUT_PANDAS = """
import json, sys
import {modules}
from driftless.extract.staging import Manifest
from driftless.load.entry import RunRecord, load_rows
from driftless.pipeline import load_window
from driftless.reconcile.checks import run_window_checks
from driftless.spec import parse_spec
from driftless.status import Run
from driftless.window import Window

def heavy():
    return sorted(m for m in ("pandas", "pandera") if m in sys.modules)

seen = {{"imports": heavy()}}
spec = parse_spec(json.loads(sys.argv[1]), "test")
window = Window.parse(sys.argv[2], sys.argv[3])
first = load_window(spec, window, Manifest.read(sys.argv[4]), "run_a")
second = load_window(spec, window, Manifest.read(sys.argv[5]), "run_b")
seen["load_window"] = heavy()

class Counts:  # a source that counts the window (CountsWindow), as the SQL source does
    def count(self, window):
        return 60
    def sums(self, window, columns):
        return {{}}

run_window_checks(spec, second, Counts())
seen["checks"] = heavy()
load = load_rows(spec, Manifest.read(sys.argv[6]).tables(), window=window,
                 run=RunRecord("run_c", window, Run.SUCCESS, window.start))
seen["load_rows"] = heavy()
seen["rows"] = [first.loaded, second.loaded, second.written, load.loaded, second.status]
print(json.dumps(seen))
"""


@pytest.mark.parametrize("db", ["sqlite_url", "pg_url", "mariadb_url"])
def test_the_load_path_imports_neither_pandas_nor_pandera(db, request, tmp_path):
    """A load (``load_window``, ``load_rows``, the loaders, state, the checks after it) runs without pandas.

    pyarrow 26 imports pandas the first time it turns a Python value into Arrow (``pa.scalar``, ``pa.array``, a
    Python value given to a ``pyarrow.compute`` function), so each database's loader is run.
    """
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import airflow_uri
    from tests.loadkit import ALL, ORDERS, order, orders_spec, stage_rows

    url = request.getfixturevalue(db)

    spec = orders_spec()
    staged = [stage_rows(tmp_path, spec, ALL, rows, tag=tag).directory for tag, rows in (
        ("a", [order(i) for i in range(50)]),
        ("b", [order(i, version=1) if i % 5 == 0 else order(i) for i in range(60)]),
        ("c", [order(i, version=2) for i in range(3)]))]
    code = LOAD_WITHOUT_PANDAS.format(modules=", ".join(LOAD_PATH_MODULES))
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW_CONN_WH": airflow_uri(url)}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(ORDERS), ALL.start.isoformat(),
                           ALL.end.isoformat(), *map(str, staged)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["rows"] == [50, 60, 20, 3, "success"]  # the loads really ran: 10 new rows + 10 changed ones
    assert seen == {**seen, "imports": [], "load_window": [], "checks": [], "load_rows": []}


def test_the_load_asks_what_the_connectors_declare():
    """``pipeline.TARGET_STATE`` and ``ACKNOWLEDGING`` (read by the load instead of importing the connectors)
    agree with the connectors' capability protocols."""
    from driftless.pipeline import ACKNOWLEDGING, TARGET_STATE, source_classes
    from driftless.sources.base import Acknowledges, KeepsTargetState

    connectors = source_classes()
    assert {name for name, cls in connectors.items() if issubclass(cls, Acknowledges)} == ACKNOWLEDGING
    keeps = {name for name, cls in connectors.items() if issubclass(cls, KeepsTargetState)}
    assert keeps == set(TARGET_STATE) | ACKNOWLEDGING  # queues keep theirs on the consuming instance
    for name, keeper in TARGET_STATE.items():
        assert issubclass(connectors[name], keeper), name  # the connector's target side is the class the load asks
