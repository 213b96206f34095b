"""driftless installed from its wheel into a fresh Airflow, as a team with its own deployment would.

Builds the wheel from a copy of the checkout (its files tracked or not ignored), makes a fresh venv,
installs the Airflow pinned in constraints.txt into it, checks that nothing installed there already
provides a top-level ``driftless``, installs the wheel (``-c constraints.txt``), then drops the README's
DAG file into a scratch DAGs folder with a spec directory beside it (``DRIFTLESS_SPECS_DIR``) and parses
them with a DagBag in that venv. It needs the package index (or uv's cache); unreachable, it skips
(fails under CI=true). The venv is removed afterwards. About a minute on 2 cores: installing Airflow with
uv takes about 15 s (pip took 1-4 minutes), the rest is building the wheel and starting Airflow to parse.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]
SQLITE_SPEC = REPO / "dags" / "pipelines" / "chinook_invoices.yaml"  # source and target are SQLite connections
NETWORK = re.compile(r"(Failed to establish a new connection|Failed to fetch|dns error|error sending request|"
                     r"Temporary failure in name resolution|"
                     r"No matching distribution found|Could not find a version that satisfies)")

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def readme_dag_file() -> str:
    """The DAG file the README tells a user to add (between its dagfile markers)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- dagfile:begin.*?-->\s*```python\n(.*?)```\s*<!-- dagfile:end -->", text, re.S)
    assert block, "README.md: no python block between <!-- dagfile:begin --> and <!-- dagfile:end -->"
    return block.group(1)


def pinned_airflow() -> str:
    match = re.search(r"^apache-airflow==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert match, "constraints.txt pins no apache-airflow"
    return match.group(1)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The process environment without this checkout's path, Airflow and driftless settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith(("AIRFLOW", "DRIFTLESS_"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", **extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def pip_install(venv_python: Path, args: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Install into the venv with uv (a dev dependency): the same resolution as pip under ``-c constraints.txt``,
    but it downloads in parallel, so a fresh Airflow takes about 15 s instead of 1-4 minutes with pip."""
    proc = run([sys.executable, "-m", "uv", "pip", "install", "--python", str(venv_python),
                "-c", str(REPO / "constraints.txt"), *args], cwd, env)
    if proc.returncode != 0:
        if NETWORK.search(proc.stderr):
            unavailable("the package index", RuntimeError(NETWORK.search(proc.stderr).group(0)))
        pytest.fail(f"pip install {' '.join(args)} failed:\n{proc.stderr[-3000:]}", pytrace=False)


def in_venv(venv_python: Path, code: str, cwd: Path, env: dict[str, str]) -> dict:
    """Run ``code`` in the venv; it prints one JSON object as its last line."""
    proc = run([str(venv_python), "-c", code], cwd, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


OWNERS = """
import importlib.metadata as md, importlib.util, json
print(json.dumps({"owners": md.packages_distributions().get("driftless"),
                  "found": importlib.util.find_spec("driftless") is not None}))
"""

INSTALLED = """
import importlib.metadata as md, json
import driftless
dist = md.distribution("driftless")
paths = {f.parts[0] for f in dist.files if f.parts[0] != ".." and not f.parts[0].endswith(".dist-info")}
print(json.dumps({"file": driftless.__file__, "top_level": dist.read_text("top_level.txt").split(),
                  "paths": sorted(paths), "owners": md.packages_distributions().get("driftless"),
                  "plugins": [ep.value for ep in md.entry_points(group="airflow.plugins")
                              if ep.dist.name == "driftless"]}))
"""

PARSE = """
import json
from airflow.dag_processing.dagbag import DagBag
from airflow import plugins_manager
bag = DagBag()  # the DAGs folder of AIRFLOW__CORE__DAGS_FOLDER
report = bag.dags.get("consistency_report")
apps, _ = plugins_manager.get_fastapi_plugins()
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "tasks": {d: [t.task_id for t in bag.dags[d].topological_sort()] for d in bag.dag_ids},
    "fileloc": {d: bag.dags[d].fileloc for d in bag.dag_ids},
    "outlets": [a.uri for a in bag.dags["chinook_invoices"].get_task("load").outlets]
               if "chinook_invoices" in bag.dags else None,
    "report_assets": sorted(a.uri for a in report.timetable.asset_condition.objects) if report else None,
    "links": [l.name for l in report.get_task("diff_and_report").operator_extra_links] if report else None,
    "plugin_prefixes": [app["url_prefix"] for app in apps],
    "plugin_errors": plugins_manager.get_import_errors(),
}))
"""


def test_the_wheel_installs_into_a_fresh_airflow_and_its_documented_dag_file_parses(tmp_path, record_property):
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        timings[name] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()

    # 1. The wheel, built as `pip wheel --no-deps .` in a clone (a copy of the checkout's files: no build/ here).
    src = tmp_path / "src"
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    env = clean_env(tmp_path / "airflow_home")
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w",
                str(tmp_path / "dist"), str(src)], tmp_path, env)
    if proc.returncode != 0 and NETWORK.search(proc.stderr):  # build isolation fetches setuptools
        unavailable("the package index", RuntimeError(NETWORK.search(proc.stderr).group(0)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("driftless-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"driftless"}
    shipped = {p.relative_to(src).as_posix() for p in (src / "driftless").rglob("*") if p.is_file()}
    assert shipped - set(names) == set(), "files of the package missing from the wheel (package data?)"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        ep_text = zf.read(entry_points).decode()
    assert "[airflow.plugins]" in ep_text and "driftless = driftless.cli:main" in ep_text
    assert "etl = driftless.cli:main" in ep_text
    lap("build_wheel")

    venv = tmp_path / "venv"
    try:
        # 2. A fresh venv with the pinned Airflow; nothing in it may own a top-level `driftless` yet.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = venv / "bin" / "python"
        lap("venv")
        pip_install(python, [f"apache-airflow=={pinned_airflow()}"], tmp_path, env)
        lap("install_airflow")
        before = in_venv(python, OWNERS, tmp_path, env)
        assert before == {"owners": None, "found": False}, before
        assert not (venv / "bin" / "driftless").exists() and not (venv / "bin" / "etl").exists()

        # 3. The wheel, pinned like the rest.
        pip_install(python, [str(wheel)], tmp_path, env)
        lap("install_wheel")
        after = in_venv(python, INSTALLED, tmp_path, env)
        assert after["file"].startswith(str(venv)), after["file"]  # the installed copy, not this checkout
        assert after["top_level"] == ["driftless"] and after["paths"] == ["driftless"], after
        assert after["owners"] == ["driftless"], after
        assert after["plugins"] == ["driftless.report.plugin:DriftlessReports"], after

        # 4. The README's DAG file in a scratch DAGs folder, the specs in their own directory, and the
        #    checkout's plugins-folder file too (it must step aside for the entry point: no plugin twice).
        dags, specs, plugins = tmp_path / "dags", tmp_path / "specs", tmp_path / "plugins"
        for folder in (dags, specs, plugins):
            folder.mkdir()
        (dags / "driftless_dags.py").write_text(readme_dag_file())
        shutil.copy(SQLITE_SPEC, specs / SQLITE_SPEC.name)
        shutil.copy(REPO / "plugins" / "driftless_reports.py", plugins / "driftless_reports.py")
        airflow_env = {**env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
                       "DRIFTLESS_SPECS_DIR": str(specs)}
        parsed = in_venv(python, PARSE, tmp_path, airflow_env)
        lap("parse")
        assert parsed["errors"] == {}, parsed["errors"]
        assert parsed["tasks"] == {"chinook_invoices": ["extract", "load", "reconcile"],
                                   "consistency_report": ["diff_and_report"]}, parsed["tasks"]
        assert set(parsed["fileloc"].values()) == {str(dags / "driftless_dags.py")}  # workers re-parse this file
        assert parsed["outlets"] == ["driftless://warehouse/default/invoices"]
        assert parsed["report_assets"] == ["driftless://warehouse/default/invoices"]
        assert parsed["links"] == ["Consistency report"]
        assert parsed["plugin_prefixes"].count("/driftless") == 1 and parsed["plugin_errors"] == {}, parsed

        # 5. The commands, by both names.
        for command in ("driftless", "etl"):
            proc = run([str(venv / "bin" / command), "--help"], tmp_path, airflow_env, timeout=120)
            assert proc.returncode == 0 and "discover" in proc.stdout, proc.stderr[-2000:]
            proc = run([str(venv / "bin" / command), "specs", "check"], tmp_path, airflow_env, timeout=120)
            assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
            assert "chinook_invoices" in proc.stdout + proc.stderr
        lap("commands")
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    total = round(sum(timings.values()), 1)
    for name, seconds in {**timings, "total": total}.items():
        record_property(f"{name}_seconds", seconds)
    print(f"\nwheel install into a fresh Airflow: {timings} total {total}s")
