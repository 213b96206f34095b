"""Run metrics where monitoring already looks: Airflow's metrics layer, StatsD, Prometheus textfiles.

Every step of a window reports its numbers as gauges (the value of the latest window), named
``driftless.<pipeline>.<metric>``; ``METRICS`` below is the complete list, with what each means.
Where they go, chosen once per process:

* **Inside an Airflow task** (the DAGs call ``use_airflow()``): through Airflow's own metrics layer,
  ``airflow.sdk.observability.stats``, to whatever the ``[metrics]`` section configures: StatsD
  (``statsd_on``), Datadog (``statsd_datadog_enabled``) or OpenTelemetry (``otel_on``), under
  Airflow's prefix (``statsd_prefix`` / ``otel_prefix``, default ``airflow``). Backends that carry
  tags (OpenTelemetry, Datadog, StatsD with ``statsd_influxdb_enabled``) get the name
  ``driftless.<metric>`` and the tag ``pipeline=<pipeline>`` instead, so one metric covers every
  pipeline. When Airflow has no metrics backend configured, the ``DRIFTLESS_STATSD_*`` settings apply.
* **Everywhere else** (the ``etl`` CLI), and in Airflow tasks without a ``[metrics]`` backend: plain
  StatsD over UDP to ``DRIFTLESS_STATSD_HOST`` (port ``DRIFTLESS_STATSD_PORT``, default 8125; names
  prefixed with ``DRIFTLESS_STATSD_PREFIX``, default none). Unset: nothing is sent.
* **A Prometheus textfile** (node_exporter's textfile collector), in addition, when
  ``DRIFTLESS_TEXTFILE_DIR`` is set: ``<dir>/driftless_<pipeline>.prom``, rewritten atomically
  after each step with the pipeline's latest values, named ``driftless_<metric>{pipeline="..."}``.

Statuses are numbers (``driftless.status.SEVERITY``): 0 PASS/REPAIRED/success, 1 SKIP, 2 WARN,
3 ERROR/checks_failed, 4 FAIL/failed. Sending metrics never fails a window: a send error is logged.
The slices of a partitioned window report nothing but failures; its ``finish`` step reports the window.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from driftless.errors import SpecError
from driftless.settings import Settings, settings
from driftless.status import SEVERITY, Run, worst

log = logging.getLogger(__name__)

#: every metric driftless emits: name -> what it means (the Prometheus HELP text)
METRICS: dict[str, str] = {
    "rows_extracted": "Records read from the source in the latest window.",
    "rows_loaded": "Records merged into the target in the latest window.",
    "rows_written": "Target rows inserted or changed (unchanged rows are not rewritten) in the latest window.",
    "rows_quarantined": "Records quarantined (failed conversion or validation) in the latest window.",
    "rows_deduplicated": "Records dropped as duplicates of a key within the latest window.",
    "reject_ratio": "rows_quarantined / rows_extracted of the latest window (0 when nothing was extracted).",
    "extract_duration_s": "Seconds the latest extract step took (source to staging files).",
    "load_duration_s": "Seconds the latest load step took (staging to target, one transaction).",
    "reconcile_duration_s": "Seconds the latest reconcile step took (the window's checks).",
    "watermark_timestamp_s": "The pipeline's watermark (end of the latest window loaded), Unix seconds.",
    "freshness_lag_s": "Seconds between the watermark and the moment the window was loaded.",
    "last_run_timestamp_s": "When the latest step of a window finished, Unix seconds.",
    "run_status": "Latest window: 0 success, 3 checks_failed (loaded, a check failed), 4 failed (nothing loaded).",
    "reconcile_status": "Worst check of the latest window: 0 PASS, 1 SKIP, 2 WARN, 3 ERROR, 4 FAIL.",
    "checks_failed": "Checks of the latest window that FAILed or could not run (ERROR).",
    "rest_requests": "HTTP requests a REST source made in the latest window (retries included).",
    "rest_retries": "Retried requests of a REST source in the latest window.",
    "rest_retry_wait_s": "Seconds a REST source waited before retries in the latest window.",
    "rest_responses_429": "HTTP 429 (Too Many Requests) responses a REST source got in the latest window.",
    "rest_responses_5xx": "HTTP 5xx responses a REST source got in the latest window.",
    "rest_throttled_waits": "Requests a REST source delayed by its own rate limit in the latest window.",
    "rest_breaker_trips": "Times a REST source's circuit breaker opened in the latest window.",
    "rest_latency_p50_ms": "Median HTTP response time of a REST source in the latest window, ms.",
    "rest_latency_p95_ms": "95th percentile HTTP response time of a REST source in the latest window, ms.",
    "rest_latency_p99_ms": "99th percentile HTTP response time of a REST source in the latest window, ms.",
}

Values = dict[str, float]
P = ParamSpec("P")
R = TypeVar("R")


# --- what each step reports ---------------------------------------------------------------------

def _timestamp(value: datetime | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def rest_values(metrics: Mapping[str, Any] | None) -> Values:
    """The REST request loop's metrics (``driftless.sources.rest.reliability.Metrics.as_dict``) as metric values."""
    if not metrics or "requests" not in metrics:
        return {}
    status = {str(k): int(v) for k, v in (metrics.get("status") or {}).items()}
    values: Values = {
        "rest_requests": metrics["requests"],
        "rest_retries": metrics.get("retries", 0),
        "rest_retry_wait_s": metrics.get("retry_wait_s", 0.0),
        "rest_responses_429": status.get("429", 0),
        "rest_responses_5xx": sum(v for k, v in status.items() if k.isdigit() and k.startswith("5")),
        "rest_throttled_waits": metrics.get("throttled_waits", 0),
        "rest_breaker_trips": metrics.get("breaker_trips", 0),
    }
    for pct, ms in (metrics.get("latency_ms") or {}).items():
        if ms is not None:  # no response, no latency
            values[f"rest_latency_{pct}_ms"] = ms
    return values


def extract_values(manifest: Any, seconds: float) -> Values:
    """What an extract step reports: records read, its duration and the source's request metrics."""
    extracted = manifest.records if getattr(manifest, "extracted", None) is None else manifest.extracted
    return {"rows_extracted": extracted, "extract_duration_s": seconds, **rest_values(manifest.metrics)}


def load_values(result: Any, now: datetime | None = None) -> Values:
    """What a load step reports (``result``: ``driftless.pipeline.WindowResult``): rows, duration, watermark."""
    values: Values = {
        "rows_extracted": result.extracted, "rows_loaded": result.loaded, "rows_written": result.written,
        "rows_quarantined": result.quarantined, "rows_deduplicated": result.deduplicated,
        "reject_ratio": result.quarantined / result.extracted if result.extracted else 0.0,
        "load_duration_s": result.duration_s,
    }
    values.update(watermark_values(result.watermark, now))
    return values


def watermark_values(watermark: datetime | str | None, now: datetime | None = None) -> Values:
    """The watermark and the freshness lag at ``now``; nothing when no watermark moved (partition slices)."""
    stamp = _timestamp(watermark)
    if stamp is None:
        return {}
    now_s = (now or datetime.now(UTC)).timestamp()
    return {"watermark_timestamp_s": stamp, "freshness_lag_s": max(0.0, now_s - stamp)}


def reconcile_values(result: Any, seconds: float) -> Values:
    """What a reconcile step reports: the run's status, the worst check, how many checks failed."""
    statuses = [c.get("status") for c in result.checks or []]
    values: Values = {"reconcile_duration_s": seconds, "run_status": SEVERITY.get(result.status, 4),
                      "checks_failed": sum(1 for s in statuses if s in ("FAIL", "ERROR"))}
    checked = worst(s for s in statuses if s)
    if checked is not None:
        values["reconcile_status"] = SEVERITY.get(checked, 4)
    return values


def window_values(slices: Sequence[Mapping[str, Any]], watermark: datetime | None,
                  now: datetime | None = None) -> Values:
    """What the ``finish`` step of a partitioned window reports: the slices' sums, checks and the watermark."""
    def total(key: str) -> float:
        return float(sum(int(s.get(key) or 0) for s in slices))

    extracted, quarantined = total("extracted"), total("quarantined")
    statuses = [str(c["status"]) for s in slices for c in s.get("checks") or []]
    values: Values = {
        "rows_extracted": extracted, "rows_loaded": total("loaded"), "rows_written": total("written"),
        "rows_quarantined": quarantined, "rows_deduplicated": total("deduplicated"),
        "reject_ratio": quarantined / extracted if extracted else 0.0,
        "run_status": SEVERITY[Run.SUCCESS], "checks_failed": sum(1 for s in statuses if s in ("FAIL", "ERROR")),
        **watermark_values(watermark, now),
    }
    checked = worst(statuses)
    if checked is not None:
        values["reconcile_status"] = SEVERITY.get(checked, 4)
    return values


def run_values(run: Mapping[str, Any], watermark: datetime | str | None = None,
               checks: Iterable[Mapping[str, Any]] | None = None, now: datetime | None = None) -> Values:
    """The metric values of a recorded run (a row of ``etl_runs``), for ``etl status`` and textfiles.

    Args:
        run: the run record (``extracted``, ``loaded``, ``written``, ``quarantined``, ``deduplicated``,
            ``status``, ``duration_s``, ``finished_at``, ``metrics``: the JSON of a REST source's loop).
        watermark: the pipeline's current watermark (``etl_state``); default: the run's own.
        checks: the run's checks (``etl_reconciliation`` rows with a ``status``), if known.
        now: the time the freshness lag is measured at (default: now).
    """
    def num(key: str) -> float:
        return float(run.get(key) or 0)

    extracted = num("extracted")
    values: Values = {
        "rows_extracted": extracted, "rows_loaded": num("loaded"), "rows_written": num("written"),
        "rows_quarantined": num("quarantined"), "rows_deduplicated": num("deduplicated"),
        "reject_ratio": num("quarantined") / extracted if extracted else 0.0,
        "run_status": SEVERITY.get(str(run.get("status")), 4),
    }
    if run.get("duration_s") is not None:
        values["load_duration_s"] = float(run["duration_s"])
    finished = _timestamp(run.get("finished_at"))
    if finished is not None:
        values["last_run_timestamp_s"] = finished
    values.update(watermark_values(watermark if watermark is not None else run.get("watermark"), now))
    raw = run.get("metrics")
    values.update(rest_values(json.loads(raw) if isinstance(raw, str) else raw))
    if checks is not None:
        statuses = [str(c["status"]) for c in checks]
        values["checks_failed"] = sum(1 for s in statuses if s in ("FAIL", "ERROR"))
        checked = worst(statuses)
        if checked is not None:
            values["reconcile_status"] = SEVERITY.get(checked, 4)
    return values


# --- Prometheus text format ---------------------------------------------------------------------

def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"metric value {value!r} is not a finite number")
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def prometheus_text(pipelines: Mapping[str, Mapping[str, float]]) -> str:
    """Prometheus exposition text (textfile collector, ``etl status --prometheus``) of pipelines' values.

    Args:
        pipelines: pipeline name -> metric values (names from ``METRICS``, as the ``*_values`` functions
            and ``run_values`` return them). Each becomes ``driftless_<metric>{pipeline="<name>"} value``,
            one ``# HELP``/``# TYPE gauge`` block per metric, in the order of ``METRICS``.

    Raises:
        ValueError: a name not in ``METRICS``, or a value that is not a finite number.
    """
    unknown = sorted({m for values in pipelines.values() for m in values} - set(METRICS))
    if unknown:
        raise ValueError(f"unknown driftless metric(s): {', '.join(unknown)}")
    lines: list[str] = []
    for metric, help_text in METRICS.items():
        rows = [(p, v[metric]) for p, v in sorted(pipelines.items()) if metric in v]
        if not rows:
            continue
        lines += [f"# HELP driftless_{metric} {help_text}", f"# TYPE driftless_{metric} gauge"]
        lines += [f'driftless_{metric}{{pipeline="{_label(p)}"}} {_number(v)}' for p, v in rows]
    return "\n".join(lines) + "\n" if lines else ""


_SAMPLE = re.compile(r'^driftless_([a-z0-9_]+)\{pipeline="((?:[^"\\]|\\.)*)"\} (\S+)$')


def read_textfile(path: Path) -> dict[str, Values]:
    """The values in a textfile ``prometheus_text`` wrote (pipeline -> values); {} if it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    found: dict[str, Values] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) in METRICS:
            pipeline = m.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            found.setdefault(pipeline, {})[m.group(1)] = float(m.group(3))
    return found


def write_textfile(directory: str | Path, pipeline: str, values: Mapping[str, float]) -> Path:
    """Merge ``values`` into ``<directory>/driftless_<pipeline>.prom`` (atomically: a reader never sees half)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"driftless_{re.sub(r'[^A-Za-z0-9_.-]', '_', pipeline)}.prom"
    merged = read_textfile(path).get(pipeline, {})
    merged.update(values)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".driftless-", suffix=".tmp")  # not *.prom: not collected
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(prometheus_text({pipeline: merged}))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


# --- where values go ----------------------------------------------------------------------------

class Sink(Protocol):
    def send(self, pipeline: str, values: Mapping[str, float]) -> None: ...


def _statsd_number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.6f}".rstrip("0").rstrip(".")


class StatsdSink:
    """Plain StatsD over UDP: one gauge per datagram, ``<prefix>driftless.<pipeline>.<metric>:<value>|g``.

    The StatsD line protocol is one line per metric; this client is the few lines it takes (Airflow's
    StatsD backend needs the ``statsd`` package, which the ``etl`` CLI does not).
    """

    def __init__(self, host: str, port: int = 8125, prefix: str = "") -> None:
        self.address = (host, port)
        self.prefix = f"{prefix.rstrip('.')}." if prefix else ""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)

    def lines(self, pipeline: str, values: Mapping[str, float]) -> list[str]:
        name = re.sub(r"[^A-Za-z0-9_-]", "_", pipeline)  # a dot would split the name into more levels
        out = []
        for metric, value in values.items():
            stat = f"{self.prefix}driftless.{name}.{metric}"
            if value < 0:  # "-5|g" would mean "decrease by 5": set 0 first, then the negative delta
                out.append(f"{stat}:0|g")
            out.append(f"{stat}:{_statsd_number(value)}|g")
        return out

    def send(self, pipeline: str, values: Mapping[str, float]) -> None:
        for line in self.lines(pipeline, values):
            self.sock.sendto(line.encode("ascii"), self.address)


class TextfileSink:
    """The pipeline's latest values in ``<directory>/driftless_<pipeline>.prom`` (``write_textfile``)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def send(self, pipeline: str, values: Mapping[str, float]) -> None:
        write_textfile(self.directory, pipeline, values)


def airflow_metrics_backend() -> str | None:
    """The metrics backend Airflow's ``[metrics]`` configures (its own precedence), or None."""
    from airflow.sdk.configuration import conf

    if conf.getboolean("metrics", "statsd_datadog_enabled", fallback=False):
        return "datadog"
    if conf.getboolean("metrics", "statsd_on", fallback=False):
        return "statsd"
    if conf.getboolean("metrics", "otel_on", fallback=False):
        return "otel"
    return None


class AirflowSink:
    """Airflow's metrics layer (``airflow.sdk.observability.stats``): StatsD, Datadog or OpenTelemetry.

    Args:
        tags: send ``driftless.<metric>`` tagged ``pipeline=<name>`` (backends that keep tags) instead
            of ``driftless.<pipeline>.<metric>``.
    """

    def __init__(self, tags: bool) -> None:
        self.tags = tags

    def send(self, pipeline: str, values: Mapping[str, float]) -> None:
        from airflow.sdk.observability import stats

        for metric, value in values.items():
            if self.tags:
                stats.gauge(f"driftless.{metric}", value, tags={"pipeline": pipeline})
            else:
                stats.gauge(f"driftless.{re.sub(r'[^A-Za-z0-9_-]', '_', pipeline)}.{metric}", value)


def env_sinks(environ: Mapping[str, str] | None = None) -> list[Sink]:
    """The sinks the environment asks for.

    ``DRIFTLESS_STATSD_HOST`` (with ``_PORT``, ``_PREFIX``): StatsD; ``DRIFTLESS_TEXTFILE_DIR``: a Prometheus textfile.
    """
    env = settings() if environ is None else Settings.from_env(environ)
    sinks: list[Sink] = []
    host = env.statsd_host
    if host:
        port = env.statsd_port or "8125"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SpecError(f"DRIFTLESS_STATSD_PORT: {port!r} is not a port number (expected 1-65535)")
        sinks.append(StatsdSink(host, int(port), env.statsd_prefix or ""))
    directory = env.textfile_dir
    if directory:
        sinks.append(TextfileSink(directory))
    return sinks


_sinks: list[Sink] | None = None  # None: not chosen yet (from the environment on first use)
_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("driftless_metrics_quiet", default=False)


def use_sinks(sinks: list[Sink] | None) -> None:
    """Send to ``sinks`` from now on (None: choose from the environment again on the next send)."""
    global _sinks
    _sinks = sinks


def use_airflow() -> None:
    """Inside an Airflow task: Airflow's configured metrics backend, else the ``DRIFTLESS_*`` settings.

    A ``DRIFTLESS_TEXTFILE_DIR`` textfile is written either way.
    """
    backend = airflow_metrics_backend()
    sinks = env_sinks()
    if backend is not None:
        tags = backend in ("datadog", "otel") or (backend == "statsd" and _airflow_influx_tags())
        sinks = [AirflowSink(tags)] + [s for s in sinks if isinstance(s, TextfileSink)]
    use_sinks(sinks)


def _airflow_influx_tags() -> bool:
    from airflow.sdk.configuration import conf

    return conf.getboolean("metrics", "statsd_influxdb_enabled", fallback=False)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Report only failures inside the block (the slices of a partitioned window: ``finish`` reports it)."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


def quietly(func: Callable[P, R]) -> Callable[P, R]:
    """``func`` runs ``quiet()``: it reports only failures."""
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with quiet():
            return func(*args, **kwargs)
    return wrapper


def emit(pipeline: str, values: Mapping[str, float], *, failure: bool = False) -> None:
    """Send ``values`` (names from ``METRICS``) of ``pipeline`` to the chosen sinks.

    A sink that fails is logged, never raised: monitoring does not fail the window it reports on.
    """
    global _sinks
    if _quiet.get() and not failure:
        return
    unknown = set(values) - set(METRICS)
    if unknown:  # a programming error, not a run's: say so loudly in tests, never fail a window for it
        raise ValueError(f"unknown driftless metric(s): {', '.join(sorted(unknown))}")
    try:
        if _sinks is None:
            _sinks = env_sinks()
        stamped = {**values, "last_run_timestamp_s": time.time()}
        for sink in _sinks:
            sink.send(pipeline, stamped)
    except Exception as exc:  # monitoring must not fail the window it reports on
        log.warning("could not send the metrics of %s: %s", pipeline, exc)


def emit_failure(pipeline: str) -> None:
    """A window failed: nothing was committed (``run_status`` 4)."""
    emit(pipeline, {"run_status": SEVERITY[Run.FAILED]}, failure=True)
