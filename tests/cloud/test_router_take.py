"""The router's handling of one delivery never lets an exception out: Dramatiq acks a message whose actor
raised (the router has no ``Retries``), which would lose the report. Pure unit tests: a broker that fails
as a lost connection does, local storage."""

from __future__ import annotations

import json

import pika.exceptions
from dramatiq import Message
from dramatiq.errors import ConnectionClosed

from cloud.routing.outbox import outbox_of
from cloud.routing.policy import DefaultPolicy, RouterConfig
from cloud.routing.router import RETRY_LATER_S, Router
from node.contract.queues import FAILED_JOBS_ACTOR, FAILED_JOBS_QUEUE, wait_bucket_ms
from node.storage import LocalStorage
from tests.conftest import job_message


class FailingBroker:
    """Answers like a broker whose server went away; ``delays`` says whether wait queues still work."""

    def __init__(self, *, delays: bool) -> None:
        self.delays = delays

    def physical(self, name: str) -> str:
        return "p." + name

    def wait_queue_name(self, bucket_ms: int) -> str:
        return f"p.burrow.wait.{bucket_ms}ms"

    def inspect_queue(self, queue: str):
        raise ConnectionClosed(pika.exceptions.StreamLostError("Stream connection lost"))

    def declare_wait_bucket(self, bucket_ms: int) -> str:
        if not self.delays:
            raise ConnectionClosed(pika.exceptions.StreamLostError("Stream connection lost"))
        return self.wait_queue_name(bucket_ms)


class Delivery:
    """Stands for Dramatiq's message proxy: the message, and whether the worker will reject it."""

    def __init__(self, message: Message) -> None:
        self._message = message
        self.failed = False

    def __getattr__(self, name: str):
        return getattr(self._message, name)

    def fail(self) -> None:
        self.failed = True


def delivery() -> Delivery:
    job = job_message("tests", "tracked", "job-1", job_key="a")
    report = {"kind": "requeue", "job": job.asdict(), "reason": "an operator's requeue", "node": "", "attempts": []}
    return Delivery(Message(FAILED_JOBS_QUEUE, FAILED_JOBS_ACTOR, (), report, {}))


def router(tmp_path, broker) -> Router:
    policy = DefaultPolicy(RouterConfig())
    return Router(broker=broker, storage=LocalStorage(tmp_path), registry=None, policy=policy, topology=None)


def test_a_report_the_router_cannot_handle_comes_back_later_through_a_wait_queue(tmp_path):
    message = delivery()
    router(tmp_path, FailingBroker(delays=True)).take(message)
    (later,) = outbox_of(message)  # committed with the ack
    assert later.exchange == f"p.burrow.wait.{wait_bucket_ms(int(RETRY_LATER_S * 1000))}ms"
    assert later.routing_key == "p." + FAILED_JOBS_QUEUE
    assert json.loads(later.body)["message_id"] == message.message_id  # the same report: handled once
    assert not message.failed


def test_a_report_that_cannot_even_be_delayed_is_rejected_not_acked(tmp_path):
    message = delivery()
    router(tmp_path, FailingBroker(delays=False)).take(message)  # raises nothing
    assert message.failed  # rejected: the broker dead-letters it and housekeeping brings it back
    assert outbox_of(message) == []


class WorkingBroker(FailingBroker):
    def __init__(self) -> None:
        super().__init__(delays=True)

    def inspect_queue(self, queue: str):
        return object()


class SilentRegistry:
    """One node that served the job's queue and was last heard from 60 s ago (not live, not stopped)."""

    def __init__(self, now: float) -> None:
        from node.contract.registry import Heartbeat, fold

        beat = Heartbeat(node="node-b", process="cpu-0/1", queues=("tests",), at=now - 60, interval_s=10)
        self.views = fold([beat], now=now)

    def nodes(self):
        return self.views


def test_a_held_job_is_asked_about_again_less_and_less_often_and_noted_once(tmp_path):
    from node.storage.records import RecordStore

    now = 1_000_000.0
    storage = LocalStorage(tmp_path)
    held = Router(
        broker=WorkingBroker(),
        storage=storage,
        registry=SilentRegistry(now),
        policy=DefaultPolicy(RouterConfig(cooldown_s=5)),
        topology=None,
        clock=lambda: now,
    )
    job = job_message("tests", "tracked", "job-1", job_key="a")
    report = {"kind": "failed", "job": job.asdict(), "reason": "failed on A", "node": "node-a", "attempts": []}
    message = Delivery(Message(FAILED_JOBS_QUEUE, FAILED_JOBS_ACTOR, (), report, {}))
    delays = []
    for _ in range(4):
        held.take(message)
        (again,) = outbox_of(message)
        body = json.loads(again.body)
        assert body["message_id"] == message.message_id and again.routing_key == "p." + FAILED_JOBS_QUEUE
        delays.append(again.exchange)
        message = Delivery(
            Message(FAILED_JOBS_QUEUE, FAILED_JOBS_ACTOR, (), body["kwargs"], {}, message_id=body["message_id"])
        )
    assert delays == [f"p.burrow.wait.{wait_bucket_ms(ms)}ms" for ms in (5000, 10_000, 20_000, 30_000)]
    routing = RecordStore(storage).get("job-1")["routing"]
    assert [r["action"] for r in routing] == ["hold"] and "node-b (silent 60s)" in routing[0]["reason"]


def test_a_job_whose_record_is_corrupt_is_quarantined_naming_it_not_retried_forever(tmp_path):
    from cloud.routing.quarantine import Quarantine
    from node.contract.record import record_key

    storage = LocalStorage(tmp_path)
    storage.put(record_key("job-1"), b'{"job_id": garbage')
    message = delivery()
    message._message.kwargs["kind"] = "failed"
    message._message.kwargs["node"] = "node-a"
    router(tmp_path, WorkingBroker()).take(message)
    assert outbox_of(message) == [] and not message.failed  # acked: nothing comes back
    (entry,) = Quarantine(storage).entries()
    assert entry["job_id"] == "job-1" and entry["message"]["kwargs"] == {"job_key": "a"}
    assert entry["reason"].startswith(f"record: job record {record_key('job-1')} is not JSON")
    assert storage.get(record_key("job-1"))[0] == b'{"job_id": garbage'  # left for the operator

    # and once the operator deleted the record, requeueing the entry runs the job again
    storage.delete(record_key("job-1"))
    requeue = {"kind": "requeue", "id": entry["id"], "job": entry["message"], "to": None}
    message = Delivery(Message(FAILED_JOBS_QUEUE, FAILED_JOBS_ACTOR, (), requeue, {}))
    router(tmp_path, WorkingBroker()).take(message)
    (dispatched,) = outbox_of(message)
    assert dispatched.routing_key == "p.tests" and json.loads(dispatched.body)["kwargs"] == {"job_key": "a"}
    assert list(Quarantine(storage).entries()) == []
