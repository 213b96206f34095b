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
