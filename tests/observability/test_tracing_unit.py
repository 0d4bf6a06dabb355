"""The attempt span of the tracing middleware, with an SDK tracer of its own (no provider installed globally)."""

from __future__ import annotations

from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from node.middleware import tracing


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


def test_an_attempt_span_ends_even_when_the_actors_exception_has_no_text(monkeypatch):
    # Given the tracing middleware with a recording tracer
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    monkeypatch.setattr(tracing, "tracing_on", lambda: True)
    middleware, broker = tracing.Tracing(), StubBroker()
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={"job": {"job_id": "j"}})
    middleware.before_process_message(broker, message)

    # When the attempt ends with an exception whose str() raises
    middleware.after_process_message(broker, message, exception=Unprintable())

    # Then its span ended as an error naming the exception, and the attempt's context is left
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR and "str() failed" in span.status.description
    assert [event.attributes["exception.type"] for event in span.events] == ["Unprintable"]
    assert trace.get_current_span() is trace.INVALID_SPAN
