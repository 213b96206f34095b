"""docker-compose.integration.yml is a valid Compose file and runs the same CeleryExecutor settings as
``make airflow EXECUTOR=celery``.

Validity: against the Compose Specification's JSON schema (compose-spec/compose-spec, Apache-2.0), kept in
``tests/data/compose_spec.json`` as docker-compose 1.29.2's wheel ships it (``compose/config/compose_spec.json``);
Docker does not run here. Same settings: every Celery setting ``celery_env`` gives the local stack is in every
Airflow service of the compose file, with the same value (the broker and result-backend hosts differ:
containers, not loopback).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import yaml

from tools.airflow_local import celery_env

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.integration.yml"
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "compose_spec.json"
HOST_SPECIFIC = {"AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND",
                 "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"}


def test_compose_airflow_services_use_the_local_celery_settings():
    local = celery_env("postgresql+psycopg://postgres@127.0.0.1:5432/airflow", "redis://127.0.0.1:6379/0", "x")
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    airflow = {name: svc for name, svc in services.items() if name.startswith("airflow-")}
    assert len(airflow) == 6
    for name, svc in airflow.items():
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert set(local) <= set(env), (name, sorted(set(local) - set(env)))
        assert {k: env[k] for k in local if k not in HOST_SPECIFIC} == {
            k: v for k, v in local.items() if k not in HOST_SPECIFIC}, name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace(
            "+psycopg2", "")
        assert env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"].startswith("driftless_")
    assert airflow["airflow-worker"]["command"].split()[:2] == ["celery", "worker"]


def test_compose_file_is_valid_under_the_compose_specification_schema():
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    doc = yaml.safe_load(COMPOSE.read_text())
    assert [e.message for e in validator.iter_errors(doc)] == []
    broken = copy.deepcopy(doc)  # the schema does reject a mistake: a misspelt service key
    service = next(iter(broken["services"]))
    broken["services"][service]["enviroment"] = {"X": "1"}
    assert any("enviroment" in e.message for e in validator.iter_errors(broken))


def test_compose_airflow_services_install_the_event_providers_pinned_in_constraints():
    """Event-driven runs need common-messaging and redis in every component (the triggerer above all)."""
    pins = dict(line.split("==") for line in (COMPOSE.parent / "constraints.txt").read_text().splitlines()
                if line.startswith("apache-airflow-providers-"))
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["airflow-triggerer"]["command"] == "triggerer"
    for name, svc in services.items():
        if not name.startswith("airflow-"):
            continue
        env = svc["environment"]
        wanted = env["_PIP_ADDITIONAL_REQUIREMENTS"].split()
        for provider in ("apache-airflow-providers-common-messaging", "apache-airflow-providers-redis"):
            assert f"{provider}=={pins[provider]}" in wanted, (name, provider)
        assert env["AIRFLOW_CONN_REDIS_DEFAULT"].startswith("redis://redis:6379"), name
