"""Failure alerts: a Slack-compatible webhook message when a pipeline task fails.

Every pipeline DAG sets ``on_failure_callback=driftless.airflow.alerts.on_failure``. The webhook comes from the
Airflow Connection ``driftless_alerts`` (override the id with ``DRIFTLESS_ALERTS_CONN_ID``), e.g.::

    airflow connections add driftless_alerts --conn-type http --conn-password https://hooks.slack.com/services/T/B/X

or ``AIRFLOW_CONN_DRIFTLESS_ALERTS='{"conn_type": "http", "password": "https://..."}'``. The URL may
sit in the password (keeps it out of the UI's connection list) or in the host; a host without a
scheme is combined with the connection's schema (``https`` by default), port and password as path.
Without such a connection the callback logs that no alert was sent and does nothing else.

The message (``{"text": ..., "blocks": [...]}``, which Slack, Mattermost and Rocket.Chat accept)
names the pipeline, window, task, try number, an error summary and the task's log URL. When the
consistency report finds drift (a deep diff FAILs or cannot run), the message names each such pipeline
with its counts (missing, extra, changed): as a failure under ``on_drift: fail``, as a warning under
``on_drift: warn`` (see ``driftless.report.tasks``). Secrets are masked (``driftless.redact``): passwords
in URLs, the webhook itself, and the passwords and tokens of every connection this process resolved.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests

from driftless.redact import redact_text
from driftless.settings import settings

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "driftless_alerts"
TIMEOUT_S = 10
MAX_ERROR_CHARS = 600


def conn_id() -> str:
    return settings().alerts_conn_id or DEFAULT_CONN_ID


def webhook_url(fields: dict[str, Any]) -> str | None:
    """The webhook URL held by a connection's fields (``host``, ``schema``, ``port``, ``password``)."""
    password, host = (fields.get("password") or "").strip(), (fields.get("host") or "").strip()
    if password.startswith(("http://", "https://")):
        return password
    if host.startswith(("http://", "https://")):
        return host
    if not host:
        return None
    port = f":{fields['port']}" if fields.get("port") else ""
    path = f"/{password.lstrip('/')}" if password else ""
    return f"{fields.get('schema') or 'https'}://{host}{port}{path}"


def _summary(exc: BaseException | None) -> str:
    if exc is None:
        return "(no exception: the task was marked failed or timed out)"
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    rest = len(text.splitlines()) - 1
    summary = first + (f" (+{rest} more line(s) in the log)" if rest > 0 else "")
    return summary[:MAX_ERROR_CHARS]


def _window(context: dict[str, Any]) -> tuple[Any, Any, str]:
    """The window the run meant to sync, as (start, end, text).

    The params' ``start``/``end`` when both are set, else the data interval; when only one of them is
    set the params were rejected and no window ran.
    """
    params = context.get("params") or {}
    start, end = params.get("start"), params.get("end")
    if bool(start) != bool(end):
        return None, None, "(none: the params were rejected before any window ran)"
    if not start:
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
    return start, end, f"[{_iso(start)}, {_iso(end)})"


def _finding_text(finding: dict[str, Any]) -> str:
    from driftless.report.tasks import describe

    return describe(finding)


def build_message(context: dict[str, Any], secrets: tuple[str, ...] = (),
                  findings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Slack-compatible payload for a failed task's Airflow context.

    ``findings`` (or the failing exception's ``findings``, as the consistency report's drift failure
    carries them) are pipelines whose deep diff found drift: the message names each with its counts.
    """
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    map_index = getattr(ti, "map_index", -1)
    if map_index is not None and map_index >= 0:
        task_id = f"{task_id}[{map_index}]"
    run_id = getattr(ti, "run_id", None) or context.get("run_id", "?")
    exc = context.get("exception")
    if findings is None:
        findings = list(getattr(exc, "findings", None) or [])
    start, end, window = _window(context)
    try:
        log_url = getattr(ti, "log_url", None) or ""
    except Exception:  # the log URL needs the API server's base URL configured
        log_url = ""
    error = redact_text(_summary(exc), secrets) if exc is not None or not findings else ""
    pipelines = ", ".join(f["pipeline"] for f in findings)
    fields = {"Pipeline": pipelines or dag_id, "Window": window, "Task": task_id,
              "Try": str(getattr(ti, "try_number", "?")), "Run": run_id}
    if findings:
        drift = "; ".join(_finding_text(f) for f in findings)
        fields = {"Pipeline": pipelines, "DAG": dag_id, "Task": task_id, "Run": run_id}
        icon, verb = (":red_circle:", "failed") if exc is not None else (":warning:", "warns")
        headline = f"{icon} *{dag_id}* {verb}: drift in {pipelines}"
        text = f"{icon} driftless *{dag_id}* found drift: {drift}"
        detail = drift
    else:
        headline = f":red_circle: *{dag_id}* failed"
        text = f":red_circle: driftless pipeline *{dag_id}* failed in task *{task_id}* for window {window}: {error}"
        detail = error
    text += f" <{log_url}|log>" if log_url else ""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields.items()]},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{detail}```"}},
    ]
    if log_url:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open log"}, "url": log_url}]})
    body: dict[str, Any] = {"pipeline": pipelines or dag_id, "dag": dag_id,
                            "window": {"start": _iso(start), "end": _iso(end)} if start else None,
                            "task": task_id, "run_id": run_id, "error": error or detail, "log_url": log_url}
    if findings:
        body["findings"] = [{k: f.get(k) for k in ("pipeline", "status", "missing_in_target", "extra_in_target",
                                                    "changed", "error")} for f in findings]
    payload = {"text": redact_text(text, secrets), "blocks": blocks, "driftless": body}
    return json.loads(redact_text(json.dumps(payload, default=str), secrets))


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _connection_fields(cid: str) -> dict[str, Any] | None:
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(cid)
    except Exception:  # Airflow raises its own not-found type
        return None
    return {"host": conn.host, "schema": conn.schema, "port": conn.port, "password": conn.password}


def send(url: str, payload: dict[str, Any]) -> int:
    """POST the payload; returns the HTTP status. Never raises (an alert must not mask the failure)."""
    try:
        response = requests.post(url, json=payload, timeout=TIMEOUT_S)
        return response.status_code
    except requests.RequestException as exc:
        log.warning("driftless alert: webhook unreachable (%s)",
                    redact_text(f"{type(exc).__name__}: {exc}", (url,)))
        return 0


def _post(context: dict[str, Any], findings: list[dict[str, Any]] | None = None) -> bool:
    cid = conn_id()
    fields = _connection_fields(cid)
    url = webhook_url(fields) if fields else None
    if not url:
        log.info("driftless alert: no Airflow Connection %r with a webhook URL; no alert sent", cid)
        return False
    secrets = tuple(s for s in (url, fields.get("password") if fields else None) if s)
    status = send(url, build_message(context, secrets, findings))
    if status and not 200 <= status < 300:
        log.warning("driftless alert: webhook answered HTTP %s", status)
    elif status:
        log.info("driftless alert sent for %s", getattr(context.get("ti"), "task_id", "?"))
        return True
    return False


def on_failure(context: dict[str, Any]) -> None:
    """Airflow ``on_failure_callback``: post the failure to the alerts webhook, if one is configured."""
    _post(context)


def alert_findings(context: dict[str, Any], findings: list[dict[str, Any]]) -> bool:
    """Post a drift warning (the consistency report under ``on_drift: warn``); True when it was sent."""
    return _post(context, findings)
