"""A small local JSON API over the shipped Chinook customers, for ``make demo``'s REST pipeline.

    DRIFTLESS_DEMO_API_TOKEN=secret python demo/api_server.py [--port 0] [--db demo/chinook/Chinook_Sqlite.sqlite]

``GET /v1/customers?updated_since=ISO&updated_before=ISO&limit=N&starting_after=ID`` answers
Stripe style: ``{"object": "list", "data": [...], "has_more": bool}``, customers ordered by id.
Requests need ``Authorization: Bearer <DRIFTLESS_DEMO_API_TOKEN>``. Customers have no timestamp
in Chinook, so each gets a deterministic ``updated_at``: its first invoice's date plus a few hours
(derived from the id). Prints ``listening on http://127.0.0.1:PORT`` once it accepts requests.
Standard library only.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sqlite3
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parent.parent
CHINOOK = REPO / "demo" / "chinook" / "Chinook_Sqlite.sqlite"
MAX_LIMIT = 100

QUERY = """
SELECT c.CustomerId, c.FirstName, c.LastName, c.Company, c.City, c.Country, c.Email, c.SupportRepId,
       strftime('%Y-%m-%dT%H:%M:%SZ', MIN(i.InvoiceDate), '+' || ((c.CustomerId * 3571) % 43200) || ' seconds')
FROM Customer c JOIN Invoice i ON i.CustomerId = c.CustomerId
GROUP BY c.CustomerId ORDER BY c.CustomerId
"""
FIELDS = ["id", "first_name", "last_name", "company", "city", "country", "email", "support_rep_id", "updated_at"]


def load_customers(db: Path) -> list[dict]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [dict(zip(FIELDS, row, strict=True)) for row in conn.execute(QUERY)]


def normalize(ts: str) -> str:
    """ISO-8601 in UTC as the API stores it (``YYYY-MM-DDTHH:MM:SSZ``), for comparisons as text."""
    from datetime import UTC, datetime

    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    customers: list[dict] = []
    token = ""

    def log_message(self, format, *args):  # noqa: A002 - keep the demo's output readable
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return self.reply(401, {"error": {"type": "invalid_request_error", "message": "invalid bearer token"}})
        if parts.path != "/v1/customers":
            return self.reply(404, {"error": {"message": f"no such endpoint {parts.path}"}})
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            limit = min(int(q.get("limit", 10)), MAX_LIMIT)
            since = normalize(q["updated_since"]) if "updated_since" in q else ""
            before = normalize(q["updated_before"]) if "updated_before" in q else "9999"
            after = int(q.get("starting_after", 0))
        except ValueError as exc:
            return self.reply(400, {"error": {"message": f"bad parameter: {exc}"}})
        matching = [c for c in self.customers if since <= c["updated_at"] < before and c["id"] > after]
        self.reply(200, {"object": "list", "data": matching[:limit], "has_more": len(matching) > limit})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--db", default=str(CHINOOK))
    args = parser.parse_args()
    token = os.environ.get("DRIFTLESS_DEMO_API_TOKEN")
    if not token:
        sys.exit("set DRIFTLESS_DEMO_API_TOKEN to the bearer token clients must send")
    Handler.customers, Handler.token = load_customers(Path(args.db)), token
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
