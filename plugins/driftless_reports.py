"""The consistency-report plugin for Airflow's plugins folder of a checkout (``make airflow``).

The plugin is ``driftless.report.plugin.DriftlessReports``; an install of driftless registers it through
its ``airflow.plugins`` entry point, and then this file defines nothing (Airflow would otherwise load
it twice and record "already registered" as a plugin import error). An install that predates the entry
point (an older editable install: re-run ``pip install -e .``) gets the plugin from here.
"""

from driftless.report import plugin

if not plugin.registered_by_entry_point():
    DriftlessReports = plugin.DriftlessReports
