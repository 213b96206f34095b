"""REST source benchmarks against local HTTP servers on 127.0.0.1.

(a) Sustained request rate: the server allows R requests/s (its own token bucket, 5 requests of
    slack, 429 beyond); the client's spec says ``rate_limit: {requests_per_second: R, burst: 2}``
    (``--burst``; with 1, every oversleep of ``time.sleep`` is lost to the rate).
    Goal: >= 95% of R, zero 429s.
(b) Parse + validate throughput: an instant server (pages pre-serialized, 1,000 records each) read
    through ``RestSource`` (HTTP, JSON parse, records selector, dedup) and the pipeline's ``Validator``
    (type conversion, checks, the typed Arrow chunk that is staged). Goal: >= 50,000 records/s.

    python benchmarks/bench_rest.py [--rate 50] [--seconds 8] [--records 100000]

Prints a table and, last, one JSON line with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from driftless.extract.validate import Validator  # noqa: E402
from driftless.sources.rest.reliability import reset_breakers  # noqa: E402
from driftless.sources.rest.source import RestSource  # noqa: E402
from driftless.spec import parse_spec  # noqa: E402
from driftless.window import Window  # noqa: E402
from tests.rest_server import ApiServer, Reply  # noqa: E402

WINDOW = Window.parse("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z")
COLUMNS = [
    {"name": "id", "type": "bigint", "nullable": False},
    {"name": "email", "type": "varchar(80)"},
    {"name": "country", "type": "varchar(40)"},
    {"name": "amount", "type": "numeric(12,2)"},
    {"name": "active", "type": "boolean"},
    {"name": "updated_at", "type": "timestamp", "nullable": False},
]


def spec(page_size: int, rate: float | None = None, max_pages: int = 100_000, burst: int = 2):
    source = {"type": "rest", "connection": "bench_api", "endpoint": "/items", "records": "data",
              "paginator": "cursor", "params": {"limit": page_size, "since": "{start}"},
              "primary_key": ["id"], "cursor": "updated_at", "max_pages": max_pages,
              "retries": {"max_attempts": 3, "backoff": 0.05}}
    if rate:
        source["rate_limit"] = {"requests_per_second": rate, "burst": burst}
    return parse_spec({"name": "bench_rest", "chunk_size": 50_000, "source": source,
                       "target": {"connection": "wh", "table": "t"}, "columns": COLUMNS}, "bench")


def record(i: int) -> dict:
    return {"id": i, "email": f"user{i}@example.com", "country": ("Brazil", "Germany", "Canada")[i % 3],
            "amount": f"{(i * 7919) % 100000 / 100:.2f}", "active": i % 2 == 0,
            "updated_at": f"2025-01-01T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}Z"}


def bench_rate(rate: float, seconds: float, burst: int = 2) -> dict:
    """(a): the client against a server that enforces ``rate`` requests/s."""
    lock = threading.Lock()
    bucket = {"tokens": 5.0, "at": time.monotonic()}
    accepted: list[float] = []
    rejected = [0]
    pages = int(rate * seconds)

    def handle(req) -> Reply:
        with lock:  # the provider's limit: a token bucket of `rate`/s with 5 requests of slack
            now = time.monotonic()
            bucket["tokens"] = min(5.0, bucket["tokens"] + (now - bucket["at"]) * rate)
            bucket["at"] = now
            if bucket["tokens"] < 1:
                rejected[0] += 1
                return Reply(429, {"error": "rate limited"}, {"Retry-After": "1"})
            bucket["tokens"] -= 1
            accepted.append(now)
        n = int(req.query.get("starting_after", 0))
        return Reply(body={"data": [record(n + 1)], "has_more": n + 1 < pages})

    with ApiServer(handle) as server:
        os.environ["AIRFLOW_CONN_BENCH_API"] = server.url
        source = RestSource(spec(1, rate=rate, max_pages=pages + 1, burst=burst))
        t0 = time.monotonic()
        rows = sum(len(f) for f in source.read(WINDOW))
        elapsed = time.monotonic() - t0
    achieved = (len(accepted) - 1) / (accepted[-1] - accepted[0])
    return {"limit_rps": rate, "client_burst": burst, "requests": source.metrics["requests"], "records": rows,
            "elapsed_s": round(elapsed, 2), "achieved_rps": round(achieved, 2),
            "ratio": round(achieved / rate, 4), "http_429": rejected[0],
            "throttled_waits": source.metrics["throttled_waits"],
            "goal_met": achieved >= 0.95 * rate and rejected[0] == 0}


def bench_throughput(records: int, page_size: int = 1000) -> dict:
    """(b): parse + validate records/s against an instant server."""
    pages = {}
    for start in range(0, records, page_size):
        chunk = [record(i) for i in range(start + 1, min(records, start + page_size) + 1)]
        pages[start] = json.dumps({"data": chunk, "has_more": start + page_size < records}).encode()

    def handle(req) -> Reply:
        return Reply(body=pages[int(req.query.get("starting_after", 0))])

    with ApiServer(handle) as server:
        os.environ["AIRFLOW_CONN_BENCH_API"] = server.url
        source = RestSource(spec(page_size))
        validator = Validator(source.spec)
        t0 = time.monotonic()
        rows = 0
        for frame in source.read(WINDOW):
            rows += validator.validate(frame).good.num_rows
        elapsed = time.monotonic() - t0
    rate = rows / elapsed
    return {"records": rows, "pages": source.metrics["pages"], "bytes": source.metrics["bytes"],
            "elapsed_s": round(elapsed, 3), "records_per_s": round(rate), "latency_ms": source.metrics["latency_ms"],
            "goal_met": rate >= 50_000}


def run(n: int) -> dict:
    """For ``benchmarks/run.py``: rate against a 50 r/s limit, throughput over min(n, 200,000) records."""
    reset_breakers()
    rate = bench_rate(50.0, 8.0)
    throughput = bench_throughput(min(n, 200_000))
    print(f"rest: {rate['achieved_rps']:.2f} r/s of 50 ({rate['ratio']:.1%}), 429s={rate['http_429']}; "
          f"parse+validate {throughput['records_per_s']:,} records/s")
    return {"rest_rate_ratio": rate["ratio"], "rest_http_429": rate["http_429"],
            "rest_records_per_s": throughput["records_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description="REST source benchmarks")
    parser.add_argument("--rate", type=float, default=50.0, help="the server's limit R, requests/s")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to sustain it")
    parser.add_argument("--records", type=int, default=100_000, help="records for the throughput run")
    parser.add_argument("--burst", type=int, default=2, help="the client's rate_limit.burst (1: no slack for "
                        "sleep overshoot, which then lowers the achieved rate)")
    args = parser.parse_args()
    reset_breakers()
    rate = bench_rate(args.rate, args.seconds, args.burst)
    throughput = bench_throughput(args.records)
    print(f"{'benchmark':<34}{'result':>14}  {'goal':<22}{'met':>5}")
    print(f"{'(a) sustained request rate':<34}{rate['achieved_rps']:>10.2f} r/s  "
          f"{'>= 95% of ' + format(args.rate, 'g') + ' r/s, 0 x 429':<22}{'yes' if rate['goal_met'] else 'NO':>5}")
    print(f"{'    ratio / 429s / requests':<34}{rate['ratio']:>10.1%}      "
          f"429s={rate['http_429']} requests={rate['requests']} in {rate['elapsed_s']} s")
    print(f"{'(b) parse + validate throughput':<34}{throughput['records_per_s']:>10,} r/s  "
          f"{'>= 50,000 records/s':<22}{'yes' if throughput['goal_met'] else 'NO':>5}")
    print(f"{'    records / pages / MB':<34}{throughput['records']:>10,}      pages={throughput['pages']} "
          f"MB={throughput['bytes'] / 1e6:.1f} in {throughput['elapsed_s']} s, latency {throughput['latency_ms']}")
    print(json.dumps({"bench": "rest", "rate": rate, "throughput": throughput}))


if __name__ == "__main__":
    main()
