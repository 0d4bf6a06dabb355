"""The node's ``Callbacks`` and ``Pipelines`` (run only for messages that use them) behave as Dramatiq's."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

from node.middleware import Callbacks, Pipelines


def _broker() -> StubBroker:
    broker = StubBroker(middleware=[Callbacks(), Pipelines(), CurrentMessage()])
    broker.emit_after("process_boot")
    return broker


def test_on_success_and_on_failure_callbacks_still_run():
    broker = _broker()
    seen: list[tuple[str, object]] = []

    @dramatiq.actor(broker=broker)
    def succeeded(message, result):
        seen.append(("success", result))

    @dramatiq.actor(broker=broker)
    def failed(message, error):
        seen.append(("failure", error["type"]))

    @dramatiq.actor(broker=broker, on_success="succeeded")
    def works():
        return 42

    @dramatiq.actor(broker=broker)
    def breaks():
        raise ValueError("no")

    @dramatiq.actor(broker=broker)
    def plain():
        seen.append(("plain", None))

    works.send()
    breaks.send_with_options(on_failure="failed")
    plain.send()
    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        broker.join(works.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    assert sorted(seen) == [("failure", "ValueError"), ("plain", None), ("success", 42)]


def test_a_pipeline_still_feeds_the_next_actor():
    broker = _broker()
    results: list[int] = []

    @dramatiq.actor(broker=broker)
    def double(n):
        return 2 * n

    @dramatiq.actor(broker=broker)
    def keep(n):
        results.append(n)

    dramatiq.pipeline([double.message(21), keep.message()], broker=broker).run()
    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        broker.join(double.queue_name)
        worker.join()
    finally:
        worker.stop()
    assert results == [42]
