"""OpenTelemetry tracing for jobs: one trace from submit through every attempt, retry and re-dispatch.

Ours rather than ``opentelemetry-instrumentor-dramatiq``, which rewrites message options. The W3C trace context
travels in the job options' ``trace`` field, which retries, hand-backs and the router's re-dispatch copy with
the job, so every attempt of a job — on any process, any node — lands in the submit span's trace.

Uses only the OpenTelemetry API: with no SDK configured (``observability.setup`` does that from ``OTEL_*``
variables) every call is a no-op.
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq import Message
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..contract.job_options import OPTION_KEY
from ..errors import describe
from ..telemetry_on import tracing_on

tracer = trace.get_tracer("burrow.node")


def _job(message: Message) -> dict[str, Any] | None:
    job = message.options.get(OPTION_KEY)
    return job if isinstance(job, dict) else None


def messaging_attributes(message: Message, operation: str) -> dict[str, Any]:
    """OpenTelemetry messaging semantic-convention attributes of a job's message."""
    job = _job(message) or {}
    return {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": operation,
        "messaging.destination.name": message.queue_name,
        "messaging.message.id": message.message_id,
        "burrow.job.id": str(job.get("job_id", message.message_id)),
        "burrow.actor": message.actor_name,
    }


class Tracing(dramatiq.Middleware):
    """A producer span when a job is first enqueued (its context goes into the job's ``trace`` field) and a
    consumer span around every attempt, a child of the job's trace.

    Put it after ``JobSubmission`` (which creates the job options) and before ``JobLifecycle`` (so the attempt,
    its checkpoint uploads and the jobs it submits run inside the attempt's span).
    """

    def __init__(self) -> None:
        self._sending: dict[str, trace.Span] = {}
        self._local = threading.local()

    # -- submit -------------------------------------------------------------------------------------------

    def before_enqueue(self, broker: dramatiq.Broker, message: Message, delay: int | None) -> None:
        job = _job(message)
        if job is None or job.get("trace") or not tracing_on():
            return  # not a job, or a job already traced (a retry, a hand-back, a re-dispatch): same trace
        span = tracer.start_span(
            f"send {message.queue_name}", kind=SpanKind.PRODUCER, attributes=messaging_attributes(message, "send")
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        if carrier:
            job["trace"] = carrier
        self._sending[message.message_id] = span

    def after_enqueue(self, broker: dramatiq.Broker, message: Message, delay: int | None) -> None:
        span = self._sending.pop(message.message_id, None)
        if span is not None:
            span.end()

    # -- attempts -----------------------------------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Message) -> None:
        if not tracing_on():
            return
        job = _job(message) or {}
        carrier = job.get("trace") if isinstance(job.get("trace"), dict) else {}
        parent = propagate.extract(carrier)
        span = tracer.start_span(
            f"process {message.queue_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **messaging_attributes(message, "process"),
                "messaging.rabbitmq.message.delivery_count": int(getattr(message, "delivery_count", 0) or 0),
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        self._local.current = (message.message_id, span, token)

    def _end(self, message: Message, exception: BaseException | None = None, skipped: str | None = None) -> None:
        current = getattr(self._local, "current", None)
        if current is None or current[0] != message.message_id:
            return
        self._local.current = None
        _, span, token = current
        if skipped is not None:
            span.set_attribute("burrow.skipped", skipped)
        if exception is not None:
            span.set_attribute("error.type", type(exception).__qualname__)
            text = describe(exception, 200, with_type=False)
            try:
                span.record_exception(exception)
            except Exception:  # its str() raises (an actor's own exception class): recorded without it
                span.add_event("exception", {"exception.type": type(exception).__qualname__, "exception.message": text})
            span.set_status(Status(StatusCode.ERROR, text))
        try:
            otel_context.detach(token)
        finally:
            span.end()

    def after_process_message(
        self, broker: dramatiq.Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._end(message, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: Message) -> None:
        self._end(message, skipped="skipped")


def current_span() -> trace.Span:
    """The span of the attempt running in this thread (a non-recording span when tracing is off)."""
    return trace.get_current_span()
