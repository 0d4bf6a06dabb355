"""Whether an OpenTelemetry SDK is installed (``observability.setup``), asked cheaply enough for every job.

With no SDK, spans are non-recording and instruments record nothing, yet building their attributes and
labels still costs a short job ~10 %: the node's hot paths ask here first and skip that work.
"""

from __future__ import annotations

import time

from opentelemetry import metrics, trace

#: How long "no SDK tracer provider installed" is believed before looking again.
TRACING_RECHECK_S = 1.0
_tracing_off_until = 0.0


def tracing_on() -> bool:
    """Whether an SDK tracer provider is installed: with none, the middleware skips its work altogether (its
    spans would be non-recording, but building their attributes and contexts costs a short job ~10 % more).

    A "no" is believed for ``TRACING_RECHECK_S``: until a provider is set, asking OpenTelemetry reads the
    environment each time. A provider, once set, stays (OpenTelemetry allows setting it once)."""
    global _tracing_off_until
    if time.monotonic() < _tracing_off_until:
        return False
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        _tracing_off_until = time.monotonic() + TRACING_RECHECK_S
        return False
    return True


#: How long "no SDK meter provider installed" is believed before looking again (asking reads the environment).
METRICS_RECHECK_S = 1.0
_metrics_off_until = 0.0


def metrics_on() -> bool:
    """Whether an SDK meter provider is installed (a "no" is believed for ``METRICS_RECHECK_S``)."""
    global _metrics_off_until
    if time.monotonic() < _metrics_off_until:
        return False
    provider = metrics.get_meter_provider()
    if isinstance(provider, metrics.NoOpMeterProvider) or type(provider).__name__ == "_ProxyMeterProvider":
        _metrics_off_until = time.monotonic() + METRICS_RECHECK_S
        return False
    return True
