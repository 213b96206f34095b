"""driftless.settings: every DRIFTLESS_* variable is a documented field, read once, nowhere else."""

from __future__ import annotations

import os
import re
from dataclasses import fields

from driftless import settings as settings_module
from driftless.settings import Settings, settings
from tests.test_architecture import project_modules

READ = re.compile(r"""(?:environ(?:\.get)?\s*[(\[]|getenv\s*\()\s*["']DRIFTLESS_""")


def test_each_setting_names_its_variable_and_says_what_it_does():
    names = [f.metadata["env"] for f in fields(Settings)]
    assert len(names) == len(set(names)) and all(n.startswith("DRIFTLESS_") for n in names)
    assert all(len(f.metadata["doc"]) > 15 for f in fields(Settings))


def test_read_once_until_reset(monkeypatch):
    monkeypatch.setenv("DRIFTLESS_POOL_SLOTS", "7")
    monkeypatch.setenv("DRIFTLESS_REPORT_KEEP", "  ")
    assert settings().pool_slots == "7" and settings().report_keep is None  # blank counts as unset
    monkeypatch.setitem(os.environ, "DRIFTLESS_POOL_SLOTS", "9")  # not setenv: conftest resets on that
    assert settings().pool_slots == "7"  # cached
    settings_module.use(staging_dir="/elsewhere")
    assert (settings().pool_slots, settings().staging_dir) == ("9", "/elsewhere")
    settings_module.reset()
    assert settings().staging_dir != "/elsewhere"


def test_no_module_reads_driftless_variables_itself():
    """Only driftless.settings reads the environment's DRIFTLESS_* variables (tools/ runs its own processes)."""
    readers = sorted(module for module, path in project_modules().items()
                     if not module.startswith("tools") and module != "driftless.settings"
                     and READ.search(path.read_text()))
    assert readers == []
    assert READ.search('os.environ.get("DRIFTLESS_X")') and READ.search("os.getenv('DRIFTLESS_X')")
