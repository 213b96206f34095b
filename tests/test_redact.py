"""driftless.redact: the one redaction module (database URLs, texts, REST URLs), no private Airflow import."""

from __future__ import annotations

import ast

from driftless.connections import connection_fields, resolve_url
from driftless.redact import Redactor, redact_text, redact_url
from tests.test_architecture import project_modules


def test_database_url_keeps_all_but_the_password():
    assert redact_url("postgresql://etl:pw-1234@db:5432/wh") == "postgresql://etl:***@db:5432/wh"
    assert redact_url("not a url") == "<unparseable url>"


def test_text_hides_url_passwords_given_secrets_and_resolved_connections(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_REDACT_DB", "postgresql://etl:db-secret-77@db/wh")
    monkeypatch.setenv("AIRFLOW_CONN_REDACT_API", '{"conn_type": "https", "host": "api.example.com", '
                       '"password": "api-pass-55", "extra": {"client_secret": "cs-9911", "page_size": "1000"}}')
    resolve_url("redact_db")
    connection_fields("redact_api")
    text = ("mysql://root:hunter22@h/db failed; token tok-3141; db-secret-77, api-pass-55 and cs-9911 leaked; "
            "page_size 1000")
    masked = redact_text(text, ["tok-3141", "ab"])
    for secret in ("hunter22", "tok-3141", "db-secret-77", "api-pass-55", "cs-9911"):
        assert secret not in masked
    assert "mysql://root:***@h/db" in masked and "page_size 1000" in masked  # short or harmless values stay


def test_rest_urls_lose_userinfo_and_sensitive_parameters():
    redactor = Redactor(["s3cr3t-token"])
    shown = redactor.url("https://u:p@api.example.com/v1/items?api_key=abc&page=2&q=s3cr3t-token")
    assert shown == "https://api.example.com/v1/items?api_key=***&page=2&q=***"


def test_no_private_airflow_module_is_imported():
    private = set()
    for module, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n.startswith("airflow") and any(p.startswith("_") for p in n.split(".")) for n in names):
                private.add(module)
    assert private == set()
