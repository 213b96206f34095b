"""Redaction: secrets never reach a log line, an error message or an alert. The one place that hides them.

* ``redact_url(url)``: a database URL with its password hidden (``postgresql+psycopg://etl:***@db/wh``).
* ``redact_text(text, secrets)``: any text with passwords in URLs (``scheme://user:secret@``), the given
  secrets and the secrets of every connection this process resolved (``remember``) replaced by ``***``.
* ``Redactor``: a REST client's masker: the secrets of its auth (which may grow: OAuth2 tokens) anywhere
  in a text, and credentials in URLs (userinfo, sensitive query parameters). While a client lives, its
  secrets are also masked in the DEBUG lines of urllib3 and requests.

``remember`` is called by ``driftless.connections`` for every password it hands out, so an alert built
from an exception's text (``driftless.airflow.alerts``) hides them without Airflow's (private) masker.
Secrets shorter than ``MIN_SECRET`` characters are not masked: ``***`` for every ``a`` would hide the text.
"""

from __future__ import annotations

import logging
import re
import weakref
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import URL, make_url

MASK = "***"
MIN_SECRET = 4
#: query parameters whose value is a credential (``?api_key=...``, ``&sig=...``)
SENSITIVE_PARAM = re.compile(r"key|token|secret|password|passwd|signature|sig|auth|credential", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_remembered: set[str] = set()


def remember(secret: Any) -> None:
    """Mask ``secret`` in every ``redact_text`` of this process from now on (a connection's password)."""
    if secret and len(str(secret)) >= MIN_SECRET:
        _remembered.add(str(secret))


def _mask(text: str, secrets: Any) -> str:
    for secret in sorted({str(s) for s in secrets if s and len(str(s)) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact_url(url: URL | str) -> str:
    """A database URL as text with its password hidden, for logs and errors."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except Exception:  # any text may come in: never echo it when it does not parse
            return "<unparseable url>"
    return url.render_as_string(hide_password=True)


def redact_text(text: str, secrets: Any = ()) -> str:
    """``text`` with URL passwords, ``secrets`` and the remembered secrets replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _mask(text, [*secrets, *_remembered])


class Redactor:
    """Masks secret values anywhere in a text, and sensitive query parameters and userinfo in URLs."""

    def __init__(self, secrets: Any = ()) -> None:
        self.source = secrets  # an object with .secrets (may grow: OAuth2 tokens), or a sequence
        _LIBRARY_LOG_FILTER.redactors.add(self)

    def text(self, text: str) -> str:
        return _mask(text, getattr(self.source, "secrets", self.source) or ())

    def url(self, url: str) -> str:
        try:
            parts = urlsplit(url)
            query = [(k, MASK if SENSITIVE_PARAM.search(k) else v) for k, v in parse_qsl(parts.query, True)]
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            url = urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*:"), ""))
        except ValueError:
            url = "<unparseable url>"
        return self.text(url)


class _SecretFilter(logging.Filter):
    """Masks the secrets of live clients in the records of urllib3 and requests (their DEBUG lines hold URLs)."""

    def __init__(self) -> None:
        super().__init__()
        self.redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        redactors = list(self.redactors)
        if redactors:
            message = record.getMessage()
            for redactor in redactors:
                message = redactor.text(message)
            record.msg, record.args = message, ()
        return True


_LIBRARY_LOG_FILTER = _SecretFilter()
for _name in ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.connection", "requests"):
    logging.getLogger(_name).addFilter(_LIBRARY_LOG_FILTER)
