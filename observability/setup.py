"""Telemetry set-up for one process (a node worker, the supervisor, the router, a submitter) from ``OTEL_*``.

The standard OpenTelemetry variables choose what is exported; with none set nothing is (the API stays a no-op,
which costs a method call per instrument use):

- ``OTEL_TRACES_EXPORTER``: ``otlp`` (default when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set), ``console`` or ``none``. OTLP over HTTP/protobuf to an
  OpenTelemetry Collector; the exporter itself reads the endpoint, headers, timeout and TLS variables.
- ``OTEL_METRICS_EXPORTER``: ``otlp`` (default with an OTLP endpoint), ``prometheus`` or ``none``.
  ``prometheus`` serves a pull endpoint on ``OTEL_EXPORTER_PROMETHEUS_HOST`` (default ``127.0.0.1``) and
  ``OTEL_EXPORTER_PROMETHEUS_PORT`` (default ``0``: a free port; a fixed port suits one process per machine).
  Each process announces its endpoint in ``<BURROW_STATE_DIR>/metrics/<name>.json``, a Prometheus file-based
  service-discovery file: a restarted worker rewrites its slot's file (its old series end), so Prometheus
  never scrapes a dead process beside its successor or counts both.
- ``OTEL_SDK_DISABLED=true`` turns everything off; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` are
  honoured by the SDK's resource detection.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("burrow.telemetry")

EXPORTERS = ("otlp", "prometheus", "console", "none")


@dataclass
class Telemetry:
    """What ``configure`` set up in this process."""

    traces: str = "none"
    metrics: str = "none"
    metrics_url: str | None = None  # the Prometheus pull endpoint, if any
    discovery_file: Path | None = None
    _shutdown: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        """Flush and stop the exporters (also registered with ``atexit``)."""
        for provider in self._shutdown:
            try:
                provider.shutdown()
            except Exception:  # noqa: BLE001 - telemetry must never break a shutdown
                logger.debug("telemetry shutdown failed", exc_info=True)
        self._shutdown.clear()
        if self.discovery_file is not None:
            self.discovery_file.unlink(missing_ok=True)
            self.discovery_file.with_name(f".{self.discovery_file.stem}.pid").unlink(missing_ok=True)


def _choice(environ: Mapping[str, str], name: str, default: str) -> str:
    value = (environ.get(name) or default).strip().lower()
    if value not in EXPORTERS:
        raise ValueError(f"{name}={value!r}: use one of {', '.join(EXPORTERS)}")
    return value


#: Where OTLP goes (the SDK reads them itself): checked at start, as the SDK only logs a bad one at every export.
OTLP_ENDPOINTS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


def _check_endpoint(variable: str, value: str | None) -> None:
    if not value:
        return
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = re.sub(r"//[^/@]*@", "//***@", value)  # (credentials, if any, masked without parsing the URL)
        raise ValueError(f"{variable}={shown!r}: not an http(s) URL, e.g. http://collector:4318")


def configure(
    service_name: str,
    *,
    attributes: Mapping[str, str] | None = None,
    state_dir: Path | None = None,
    discovery_name: str | None = None,
    discovery_labels: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Install the OpenTelemetry SDK for this process as the ``OTEL_*`` variables say (see the module docstring).

    Parameters:
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` says otherwise (``burrow-node``, …).
        attributes: Resource attributes (node id, subcloud, slot) added to every span and series.
        state_dir: Where the Prometheus discovery file goes (``<state_dir>/metrics/``).
        discovery_name: The discovery file's name (a worker's slot id: its successor overwrites it).
        discovery_labels: Labels Prometheus puts on every series of this process (``node``, ``slot``, …).
        environ: The environment (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    telemetry = Telemetry()
    if (environ.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        return telemetry
    for variable in OTLP_ENDPOINTS:
        _check_endpoint(variable, environ.get(variable))
    otlp = any(environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    otlp_metrics = any(environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
    telemetry.traces = _choice(environ, "OTEL_TRACES_EXPORTER", "otlp" if otlp else "none")
    telemetry.metrics = _choice(environ, "OTEL_METRICS_EXPORTER", "otlp" if otlp_metrics else "none")
    if telemetry.traces == "none" and telemetry.metrics == "none":
        return telemetry

    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or service_name, **(attributes or {})})
    if telemetry.traces != "none":
        _set_up_traces(telemetry, resource)
    if telemetry.metrics != "none":
        _set_up_metrics(telemetry, resource, environ, state_dir, discovery_name, discovery_labels or {})
    atexit.register(telemetry.shutdown)
    return telemetry


def _set_up_traces(telemetry: Telemetry, resource: Any) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if telemetry.traces == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif telemetry.traces == "console":
        exporter = ConsoleSpanExporter()
    else:
        raise ValueError(f"OTEL_TRACES_EXPORTER={telemetry.traces!r} is not a trace exporter")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    telemetry._shutdown.append(provider)


def _set_up_metrics(
    telemetry: Telemetry,
    resource: Any,
    environ: Mapping[str, str],
    state_dir: Path | None,
    discovery_name: str | None,
    attributes: Mapping[str, str],
) -> None:
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader

    reader: MetricReader
    if telemetry.metrics == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    elif telemetry.metrics == "console":
        reader = PeriodicExportingMetricReader(ConsoleMetricExporter())
    else:
        reader = _prometheus_reader(telemetry, environ, state_dir, discovery_name, attributes)
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(provider)
    telemetry._shutdown.append(provider)


def _prometheus_reader(
    telemetry: Telemetry,
    environ: Mapping[str, str],
    state_dir: Path | None,
    discovery_name: str | None,
    attributes: Mapping[str, str],
) -> Any:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    host = environ.get("OTEL_EXPORTER_PROMETHEUS_HOST") or "127.0.0.1"
    raw_port = environ.get("OTEL_EXPORTER_PROMETHEUS_PORT") or "0"
    if not raw_port.strip().isdigit() or int(raw_port) > 65535:
        raise ValueError(f"OTEL_EXPORTER_PROMETHEUS_PORT={raw_port!r}: not a port number (0 picks a free one)")
    port = int(raw_port)
    reader = PrometheusMetricReader()
    server, _ = start_http_server(port, addr=host)
    bound = server.server_address[1]
    telemetry.metrics_url = f"http://{host}:{bound}/metrics"
    telemetry._shutdown.append(server)  # has shutdown() too
    if state_dir is not None and discovery_name:
        folder = Path(state_dir) / "metrics"
        folder.mkdir(parents=True, exist_ok=True)
        _forget_dead(folder)
        target = folder / f"{discovery_name}.json"
        labels = {k: str(v) for k, v in attributes.items()}
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([{"targets": [f"{host}:{bound}"], "labels": labels}]))
        os.replace(tmp, target)  # Prometheus must never read half a file
        (folder / f".{discovery_name}.pid").write_text(str(os.getpid()))
        telemetry.discovery_file = target
    logger.info("Metrics for Prometheus at %s", telemetry.metrics_url)
    return reader


def _forget_dead(folder: Path) -> None:
    """Remove the discovery files of processes that died without cleaning up (SIGKILL), so Prometheus stops
    scraping them. A slot's successor overwrites its file anyway; this catches names that are not reused."""
    for pid_file in folder.glob(".*.pid"):
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except (ValueError, OSError):
            continue  # unreadable, or alive under another user: leave it
        (folder / f"{pid_file.name[1:-4]}.json").unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
