"""Run metrics: real StatsD datagrams (a UDP socket), Prometheus textfiles, Airflow's OpenTelemetry backend
(an OTLP/HTTP receiver), and the Grafana dashboard's names against what the code emits."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from driftless import metrics
from driftless.status import SEVERITY
from tests.conftest import airflow_uri
from tests.helpers import INVOICES
from tests.rest_server import ApiServer, Reply

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "grafana" / "driftless.json"
MAPPING = REPO / "docs" / "grafana" / "statsd_mapping.yml"


class StatsdListener:
    """A StatsD server's receiving end: a UDP socket on 127.0.0.1; gauges applied as StatsD applies them."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []

    def drain(self, quiet_for: float = 0.5) -> dict[str, float]:
        """Read datagrams until none arrives for ``quiet_for`` seconds; the gauges' values."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_for:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.lines += data.decode("ascii").splitlines()
            last = time.monotonic()
        gauges: dict[str, float] = {}
        for line in self.lines:
            name, rest = line.split(":", 1)
            value, kind = rest.split("|", 1)
            assert kind == "g", line
            # StatsD: a leading sign means "change by"; otherwise "set to".
            gauges[name] = gauges.get(name, 0.0) + float(value) if value[0] in "+-" else float(value)
        return gauges

    def sent(self, name: str) -> list[str]:
        return [line for line in self.lines if line.startswith(name + ":")]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def statsd(monkeypatch):
    listener = StatsdListener()
    monkeypatch.setenv("DRIFTLESS_STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("DRIFTLESS_STATSD_PORT", str(listener.port))
    monkeypatch.delenv("DRIFTLESS_STATSD_PREFIX", raising=False)
    metrics.use_sinks(None)
    yield listener
    metrics.use_sinks(None)
    listener.close()


def etl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "etl"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=180)


def worst_severity(checks: list[dict]) -> int:
    from driftless.status import worst

    return SEVERITY[worst(c["status"] for c in checks)]


# --- the CLI path: a real window, real datagrams -----------------------------------------------------

@pytest.mark.integration
def test_etl_run_sends_the_window_metrics_to_statsd_and_a_textfile(statsd, chinook_source, pg_url, tmp_path):
    env = dict(os.environ, AIRFLOW_CONN_CHINOOK=f"sqlite:///{chinook_source}",
               AIRFLOW_CONN_WAREHOUSE=airflow_uri(pg_url), DRIFTLESS_TEXTFILE_DIR=str(tmp_path / "prom"))
    t0 = time.time()
    proc = etl("run", "chinook_invoices", "--start", "2025-01-01", "--end", "2025-07-01", env=env)
    t1 = time.time()
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    got = statsd.drain()
    p = "driftless.chinook_invoices."
    assert summary["extracted"] > 0
    assert got[p + "rows_extracted"] == summary["extracted"]
    assert got[p + "rows_loaded"] == summary["loaded"]
    assert got[p + "rows_written"] == summary["written"]
    assert got[p + "rows_quarantined"] == summary["quarantined"]
    assert got[p + "rows_deduplicated"] == summary["deduplicated"]
    assert got[p + "reject_ratio"] == pytest.approx(summary["quarantined"] / summary["extracted"])
    watermark = datetime(2025, 7, 1, tzinfo=UTC).timestamp()
    assert got[p + "watermark_timestamp_s"] == watermark
    assert t0 - watermark <= got[p + "freshness_lag_s"] <= t1 - watermark
    assert got[p + "run_status"] == 0 and summary["status"] == "success"
    assert got[p + "reconcile_status"] == worst_severity(summary["checks"])
    assert got[p + "checks_failed"] == 0
    for step in ("extract", "load", "reconcile"):
        assert 0 < got[p + f"{step}_duration_s"] < t1 - t0
    assert t0 <= got[p + "last_run_timestamp_s"] <= t1
    assert not any(k.startswith(p + "rest_") for k in got)  # a SQL source makes no HTTP requests
    assert set(k.removeprefix(p) for k in got) <= set(metrics.METRICS)
    # The textfile holds the same latest values, in Prometheus' names.
    text = (tmp_path / "prom" / "driftless_chinook_invoices.prom").read_text()
    assert "# TYPE driftless_rows_loaded gauge" in text
    assert f'driftless_rows_loaded{{pipeline="chinook_invoices"}} {summary["loaded"]}\n' in text
    assert metrics.read_textfile(tmp_path / "prom" / "driftless_chinook_invoices.prom") == {
        "chinook_invoices": {k.removeprefix(p): pytest.approx(v, abs=1e-6) for k, v in got.items()}}


def test_a_failed_window_sends_run_status_failed(statsd, chinook_source):
    env = dict(os.environ, AIRFLOW_CONN_CHINOOK=f"sqlite:///{chinook_source}",
               AIRFLOW_CONN_WAREHOUSE="postgresql://etl@127.0.0.1:1/nowhere")
    proc = etl("run", "chinook_invoices", "--start", "2025-01-01", "--end", "2025-07-01", env=env)
    assert proc.returncode == 1
    got = statsd.drain()
    assert got["driftless.chinook_invoices.run_status"] == SEVERITY["failed"] == 4
    assert got["driftless.chinook_invoices.rows_extracted"] > 0  # the extract worked and said so
    assert "driftless.chinook_invoices.rows_loaded" not in got and "driftless.chinook_invoices.watermark_timestamp_s" \
        not in got


def test_rest_request_metrics_arrive_with_the_loops_numbers(statsd, connections, sqlite_url):
    from driftless.pipeline import run_window
    from driftless.sources.rest.reliability import reset_breakers
    from driftless.window import Window
    from tests.sources.test_rest import RECORDS, cursor_api, rest_spec

    reset_breakers()
    pages = cursor_api()
    replies = [Reply(429, {"error": "slow down"}, {"Retry-After": "0"}), Reply(503, {"error": "busy"})]

    def handler(req):
        return replies.pop(0) if replies else pages(req)

    with ApiServer(handler) as api:
        connections(api=api.url, wh=sqlite_url)
        result = run_window(rest_spec(), Window.parse("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"))
    reset_breakers()
    got = statsd.drain()
    p = "driftless.rest_test."
    m = result.metrics
    assert result.loaded == len(RECORDS)
    assert got[p + "rest_requests"] == m["requests"] == 7  # 5 pages + 2 failed attempts
    assert got[p + "rest_retries"] == m["retries"] == 2
    assert got[p + "rest_responses_429"] == 1 and got[p + "rest_responses_5xx"] == 1
    assert got[p + "rest_breaker_trips"] == m["breaker_trips"] == 0
    assert got[p + "rest_retry_wait_s"] == pytest.approx(m["retry_wait_s"], abs=1e-6)
    for pct in ("p50", "p95", "p99"):
        assert got[p + f"rest_latency_{pct}_ms"] == pytest.approx(m["latency_ms"][pct], abs=1e-6)
    assert got[p + "rows_loaded"] == len(RECORDS)


def test_statsd_names_prefix_and_negative_gauges():
    sink = metrics.StatsdSink("127.0.0.1", 8125, prefix="team.")
    assert sink.lines("orders.eu", {"rows_loaded": 12, "freshness_lag_s": 1.5, "reject_ratio": -0.25}) == [
        "team.driftless.orders_eu.rows_loaded:12|g",  # a dot in the name would add a level
        "team.driftless.orders_eu.freshness_lag_s:1.5|g",
        "team.driftless.orders_eu.reject_ratio:0|g", "team.driftless.orders_eu.reject_ratio:-0.25|g",
    ]
    sink.sock.close()


def test_bad_statsd_port_is_named():
    from driftless.errors import SpecError

    with pytest.raises(SpecError, match="DRIFTLESS_STATSD_PORT: 'eighty' is not a port number"):
        metrics.env_sinks({"DRIFTLESS_STATSD_HOST": "127.0.0.1", "DRIFTLESS_STATSD_PORT": "eighty"})
    assert metrics.env_sinks({}) == []


def test_an_unreachable_statsd_never_fails_the_window(caplog):
    class Broken:
        def send(self, pipeline, values):
            raise OSError("network is unreachable")

    metrics.use_sinks([Broken()])
    try:
        metrics.emit("p", {"rows_loaded": 1})
    finally:
        metrics.use_sinks(None)
    assert "could not send the metrics of p: network is unreachable" in caplog.text


# --- Prometheus text ---------------------------------------------------------------------------------

def test_prometheus_text_format_and_escaping():
    text = metrics.prometheus_text({"b": {"rows_loaded": 3, "reject_ratio": 0.25}, 'a"\\x': {"rows_loaded": 1e6}})
    assert text.splitlines() == [
        f"# HELP driftless_rows_loaded {metrics.METRICS['rows_loaded']}",
        "# TYPE driftless_rows_loaded gauge",
        'driftless_rows_loaded{pipeline="a\\"\\\\x"} 1000000',
        'driftless_rows_loaded{pipeline="b"} 3',
        f"# HELP driftless_reject_ratio {metrics.METRICS['reject_ratio']}",
        "# TYPE driftless_reject_ratio gauge",
        'driftless_reject_ratio{pipeline="b"} 0.25',
    ]
    with pytest.raises(ValueError, match="unknown driftless metric"):
        metrics.prometheus_text({"a": {"rows_lodaed": 1}})
    with pytest.raises(ValueError, match="not a finite number"):
        metrics.prometheus_text({"a": {"rows_loaded": float("nan")}})
    assert metrics.prometheus_text({}) == ""


def test_textfile_merges_the_latest_values_per_pipeline(tmp_path):
    metrics.write_textfile(tmp_path, "orders", {"rows_loaded": 5, "watermark_timestamp_s": 1.7e9})
    metrics.write_textfile(tmp_path, "orders", {"run_status": 4})  # a later failure keeps the last good numbers
    assert metrics.read_textfile(tmp_path / "driftless_orders.prom") == {
        "orders": {"rows_loaded": 5, "watermark_timestamp_s": 1.7e9, "run_status": 4}}
    assert [p.name for p in tmp_path.iterdir()] == ["driftless_orders.prom"]  # no temporary file left


def test_run_values_from_a_run_record():
    now = datetime(2025, 1, 2, 1, tzinfo=UTC)
    run = {"extracted": 10, "loaded": 8, "written": 3, "quarantined": 2, "deduplicated": 0, "status": "checks_failed",
           "duration_s": 1.5, "finished_at": datetime(2025, 1, 2, 0, 30), "watermark": datetime(2025, 1, 2),
           "metrics": json.dumps({"requests": 4, "retries": 1, "status": {"200": 3, "429": 1},
                                  "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": None}})}
    values = metrics.run_values(run, checks=[{"status": "PASS"}, {"status": "FAIL"}], now=now)
    assert values == {
        "rows_extracted": 10, "rows_loaded": 8, "rows_written": 3, "rows_quarantined": 2, "rows_deduplicated": 0,
        "reject_ratio": 0.2, "run_status": 3, "load_duration_s": 1.5,
        "last_run_timestamp_s": datetime(2025, 1, 2, 0, 30, tzinfo=UTC).timestamp(),
        "watermark_timestamp_s": datetime(2025, 1, 2, tzinfo=UTC).timestamp(), "freshness_lag_s": 3600.0,
        "rest_requests": 4, "rest_retries": 1, "rest_retry_wait_s": 0.0, "rest_responses_429": 1,
        "rest_responses_5xx": 0, "rest_throttled_waits": 0, "rest_breaker_trips": 0,
        "rest_latency_p50_ms": 10.0, "rest_latency_p95_ms": 20.0, "checks_failed": 1, "reconcile_status": 4,
    }
    metrics.prometheus_text({"p": values})  # every name it returns is a known metric


# --- the dashboard and the StatsD mapping use exactly the emitted names --------------------------------

def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def test_every_metric_the_dashboard_queries_is_one_the_code_emits():
    exprs = dashboard_exprs()
    names = {n for e in exprs for n in re.findall(r"driftless_([A-Za-z0-9_]+)", e)}
    assert names, "the dashboard queries no driftless metric"
    assert names <= set(metrics.METRICS), names - set(metrics.METRICS)
    # Every query names its metric with the prefix variable and filters on the pipeline label.
    for e in exprs:
        for found in re.finditer(r"(\S*)driftless_[a-z0-9_]+", e):
            assert found.group(1).endswith("${prefix}"), e
    # The panels the issue asks for are there.
    for needed in ("watermark_timestamp_s", "rows_loaded", "reject_ratio", "reconcile_status", "rest_latency_p95_ms"):
        assert needed in names


def test_every_metric_the_docs_name_is_one_the_code_emits():
    section = (REPO / "docs" / "monitoring.md").read_text()  # the README's Monitoring section links here
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    table = {n for cell in first_cells for n in re.findall(r"`([a-z0-9_]+)`", cell)}
    assert table == set(metrics.METRICS)  # the table lists every metric, and nothing else
    assert set(re.findall(r"driftless_([a-z0-9_]+)\b", section)) - {"pipeline"} <= set(metrics.METRICS)


def go_template(template: str) -> str:
    """statsd_exporter's ``${1}`` as Python's ``\\g<1>``."""
    return re.sub(r"\$\{(\d+)\}", r"\\g<\1>", template)


def test_statsd_mapping_turns_statsd_names_into_the_dashboards_names():
    mapping = yaml.safe_load(MAPPING.read_text())["mappings"][0]
    pattern = re.compile(mapping["match"])
    sink = metrics.StatsdSink("127.0.0.1")
    try:
        for prefix in ("", "airflow"):  # the etl CLI (no prefix) and Airflow's statsd_prefix
            sink.prefix = f"{prefix}." if prefix else ""
            for metric in metrics.METRICS:
                (line,) = sink.lines("chinook_invoices", {metric: 1})
                m = pattern.match(line.split(":")[0])
                assert m, line
                assert m.expand(go_template(mapping["name"])) == f"driftless_{metric}"
                assert m.expand(go_template(mapping["labels"]["pipeline"])) == "chinook_invoices"
    finally:
        sink.sock.close()


# --- the Airflow path: dag.test() with Airflow's OpenTelemetry backend, or DRIFTLESS_STATSD_* ----------

def otlp_gauges(requests) -> dict[tuple[str, str], float]:
    """(metric name, pipeline attribute) -> the latest gauge value in the OTLP/HTTP export requests."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    found: dict[tuple[str, str], float] = {}
    for req in requests:
        if req.path != "/v1/metrics":
            continue
        body = ExportMetricsServiceRequest.FromString(req.body)
        for rm in body.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if not metric.HasField("gauge"):
                        continue
                    for point in metric.gauge.data_points:
                        attrs = {a.key: a.value.string_value for a in point.attributes}
                        value = point.as_double if point.HasField("as_double") else point.as_int
                        found[(metric.name, attrs.get("pipeline", ""))] = value
    return found


@pytest.mark.airflow
@pytest.mark.slow
def test_airflow_tasks_report_through_airflows_opentelemetry_backend(
        airflow_db, tmp_path, monkeypatch, connections, chinook_source, sqlite_url):
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    connections(src=chinook_source, wh=sqlite_url)
    collector = ApiServer(lambda req: Reply(200, b"", {"Content-Type": "application/x-protobuf"})).start()
    host, port = collector.httpd.server_address[:2]
    for key, value in {"OTEL_ON": "True", "OTEL_HOST": host, "OTEL_PORT": str(port), "STATSD_ON": "False",
                       "OTEL_INTERVAL_MILLISECONDS": "600000"}.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{key}", value)
    monkeypatch.delenv("DRIFTLESS_STATSD_HOST", raising=False)
    # What Airflow's task runner does when a worker starts a task (dag.test() runs tasks in-process).
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    specs_dir = tmp_path / "pipelines"
    specs_dir.mkdir()
    (specs_dir / "invoices_test.yaml").write_text(yaml.safe_dump(INVOICES))
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
    try:
        from driftless.airflow.dags import build_dag

        dag = build_dag(specs_dir / "invoices_test.yaml")
        run = dag.test(logical_date=datetime(2025, 12, 1, tzinfo=UTC), run_conf={
            "start": "2025-01-01T00:00:00+00:00", "end": "2025-07-01T00:00:00+00:00"})
        assert run.state == "success"
        result = run.get_task_instance("reconcile").xcom_pull(task_ids="reconcile")
        from airflow.sdk._shared.observability.metrics.otel_logger import flush_otel_metrics

        flush_otel_metrics()
    finally:
        stats.initialize(factory=stats_utils.NoStatsLogger, export_legacy_names=False)
        metrics.use_sinks(None)
    # The collector keeps running (a daemon thread): Airflow flushes its OpenTelemetry meters again at exit.
    with collector.lock:
        got = otlp_gauges(list(collector.requests))
    pipeline = "invoices_test"
    assert result["loaded"] > 0
    assert got[("airflow.driftless.rows_extracted", pipeline)] == result["extracted"]
    assert got[("airflow.driftless.rows_loaded", pipeline)] == result["loaded"]
    assert got[("airflow.driftless.rows_written", pipeline)] == result["written"]
    assert got[("airflow.driftless.watermark_timestamp_s", pipeline)] == datetime(2025, 7, 1, tzinfo=UTC).timestamp()
    assert got[("airflow.driftless.run_status", pipeline)] == 0
    assert got[("airflow.driftless.reconcile_status", pipeline)] == worst_severity(result["checks"])
    for step in ("extract", "load", "reconcile"):
        assert got[(f"airflow.driftless.{step}_duration_s", pipeline)] > 0


@pytest.mark.airflow
@pytest.mark.slow
def test_partitioned_window_reports_once_from_finish(airflow_db, statsd, tmp_path, monkeypatch, connections,
                                                      chinook_source, sqlite_url):
    connections(src=chinook_source, wh=sqlite_url)
    data = json.loads(json.dumps(INVOICES))
    data["partition_by"] = "day"
    specs_dir = tmp_path / "pipelines"
    specs_dir.mkdir()
    (specs_dir / "invoices_test.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DRIFTLESS_SPECS_DIR", str(specs_dir))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "False")  # no Airflow backend: DRIFTLESS_STATSD_* applies
    monkeypatch.setenv("AIRFLOW__METRICS__OTEL_ON", "False")
    from driftless.airflow.dags import build_dag

    dag = build_dag(specs_dir / "invoices_test.yaml")
    window = ("2025-11-03T00:00:00+00:00", "2025-11-07T00:00:00+00:00")  # 4 days, 4 invoices
    try:
        run = dag.test(logical_date=datetime(2025, 12, 1, tzinfo=UTC), run_conf={"start": window[0], "end": window[1]})
    finally:
        metrics.use_sinks(None)
    assert run.state == "success"
    got = statsd.drain()
    p = "driftless.invoices_test."
    # 4 slices ran; only finish reported, with the window's totals.
    assert statsd.sent(p + "rows_loaded") == [f"{p}rows_loaded:4|g"]
    assert got[p + "rows_extracted"] == 4 and got[p + "rows_written"] == 4
    assert got[p + "watermark_timestamp_s"] == datetime(2025, 11, 7, tzinfo=UTC).timestamp()
    assert got[p + "run_status"] == 0 and got[p + "reconcile_status"] == 0 and got[p + "checks_failed"] == 0
    assert not statsd.sent(p + "extract_duration_s")  # the slices stayed quiet
