"""The router's handling of one delivery never lets an exception out: Dramatiq acks a message whose actor
raised (the router has no ``Retries``), which would lose the report. Pure unit tests: a broker that fails
as a lost connection does, local storage."""

from __future__ import annotations

import json
import random

import pika.exceptions
import pytest
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
    """One node (``node-b`` unless told) that served the job's queue and was last heard from 60 s ago (not
    live, not stopped); ``beat``: more of its heartbeat's fields (e.g. the jobs it ran)."""

    def __init__(self, now: float, node: str = "node-b", **beat) -> None:
        from node.contract.registry import Heartbeat, fold

        last = Heartbeat(node=node, process="cpu-0/1", queues=("tests",), at=now - 60, interval_s=10, **beat)
        self.views = fold([last], now=now)

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


class NoNodes:
    def nodes(self):
        return {}


def lenient(tmp_path) -> Router:
    """A router with a working broker and no live node."""
    storage, policy = LocalStorage(tmp_path), DefaultPolicy(RouterConfig())
    return Router(broker=WorkingBroker(), storage=storage, registry=NoNodes(), policy=policy, topology=None)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"kind": "whatever"}, "kind must be one of"),
        ({"node": ["node-a"]}, "node must be a string"),
        ({"reason": {}}, "reason must be a string"),
        ({"to": 1.5}, "to must be a string"),
        ({"holds": "2"}, "holds must be a whole number"),
        ({"attempts": [1]}, "attempts must be a list of objects"),
        ({"id": "\x00"}, "is not a quarantine id"),
        ({"kind": "dead_letter", "queue": None}, "queue must name"),
        ({"kind": "dead_letter", "queue": "tests", "body_b64": "x"}, "body_b64 is not base64"),
        ({"job": "job-1"}, "job must be an object"),
    ],
)
def test_a_report_no_node_could_have_sent_is_quarantined_once_and_its_job_kept(tmp_path, changes, named):
    from cloud.routing.quarantine import Quarantine

    message = delivery()
    message._message.kwargs.update({"kind": "failed", "node": "node-a", **changes})
    lenient(tmp_path).take(message)
    assert outbox_of(message) == [] and not message.failed  # acked, and nothing comes back later
    (entry,) = Quarantine(LocalStorage(tmp_path)).entries()
    assert entry["reason"].startswith("unreadable report: ") and named in entry["reason"]
    if isinstance(message.kwargs["job"], dict):  # the job itself was readable: an operator can requeue it
        assert entry["job_id"] == "job-1" and entry["message"]["kwargs"] == {"job_key": "a"}


def test_no_report_however_malformed_makes_the_router_raise_or_ask_again(tmp_path):
    # 2,000 reports with one to three fields (of the report, its job, or the job's options) replaced by values
    # of every JSON type: each is handled or quarantined, never "comes back in 30 s" forever.
    rng = random.Random(7)
    values = [None, 1, -1, 1.5, True, "x", "", "\x00", [], [1], {}, {"a": 1}, "a" * 300]
    fields = ["kind", "job", "reason", "node", "attempts", "queue", "dead_letter_reason", "detail", "body", "body_b64"]
    fields += ["message_id", "to", "id", "holds", "error", "revived"]
    router = lenient(tmp_path)
    base = job_message("tests", "tracked", "job-1", job_key="a").asdict()
    for n in range(2000):
        job = json.loads(json.dumps(base))
        report = {"kind": rng.choice(["failed", "dead_letter", "requeue", "avoided"]), "job": job, "node": "node-a"}
        for _ in range(rng.randint(1, 3)):
            where = rng.random()
            if where < 0.4:
                report[rng.choice(fields)] = rng.choice(values)
            elif where < 0.7:
                job[rng.choice(list(job))] = rng.choice(values)
            elif isinstance(job.get("options"), dict) and isinstance(job["options"].get("job"), dict):
                options = job["options"]["job"]
                options[rng.choice([*options, "avoid_nodes"])] = rng.choice(values)
        if report["kind"] == "dead_letter" and rng.random() < 0.7:
            report.update(body=json.dumps(job), queue=rng.choice(["tests", FAILED_JOBS_QUEUE, None]))
            report["dead_letter_reason"] = rng.choice(["delivery_limit", "malformed", None])
        message = Delivery(Message(FAILED_JOBS_QUEUE, FAILED_JOBS_ACTOR, (), report, {}, message_id=f"r-{n}"))
        router.take(message)
        again = [o for o in outbox_of(message) if o.routing_key == "p." + FAILED_JOBS_QUEUE]
        assert not message.failed and all("holds" in json.loads(o.body)["kwargs"] for o in again), report


def test_no_record_however_edited_makes_the_router_raise_or_ask_again(tmp_path):
    # 400 readable records of one job, their attempts and saved routing decisions edited at random (a record
    # is storage an operator or a foreign tool may have written): each report about the job is handled or
    # quarantined, never "comes back in 30 s" forever.
    from node.contract.record import record_key, record_problem

    rng = random.Random(11)
    values = [None, 0, -1, 1.5, True, "", "x", [], [1], {}, {"a": 1}, "dispatch", "requeue", "hold", "failed", "lost"]
    attempt = {"number": 1, "attempt_id": "a1", "node": "node-a", "started_at": 1.0, "outcome": "failed"}
    route = {"action": "dispatch", "queue": "tests", "delay_s": 0.0, "avoid_nodes": ["node-a"], "reason": "x"}
    decision = {"report": "r-0", "kind": "failed", "action": "dispatch", "queue": "tests", "route": route}
    handled = 0
    for n in range(400):
        record = {"job_id": "job-1", "status": rng.choice(["failed", "running", "queued", "quarantined"])}
        record.update(attempts=[dict(attempt)], artifacts={}, routing=[{**decision, "route": dict(route)}])
        for _ in range(rng.randint(1, 3)):
            parts = [record["attempts"][0], record["routing"][0], record["routing"][0]["route"]]
            part = rng.choice([p for p in parts if isinstance(p, dict)])
            part[rng.choice([*part, "extra"])] = rng.choice(values)
        if record_problem(record, "job-1") is not None:
            continue  # (an unreadable record: covered above)
        handled += 1
        storage = LocalStorage(tmp_path / str(n))
        storage.put(record_key("job-1"), json.dumps(record).encode())
        report = {"kind": rng.choice(["failed", "requeue", "avoided"]), "node": "node-a", "reason": "r", "id": "job-1"}
        report["job"] = job_message("tests", "tracked", "job-1", job_key="a").asdict()
        report_id = rng.choice(["r-0", "r-1"])
        message = Delivery(Message(FAILED_JOBS_QUEUE, FAILED_JOBS_ACTOR, (), report, {}, message_id=report_id))
        policy = DefaultPolicy(RouterConfig())
        Router(broker=WorkingBroker(), storage=storage, registry=NoNodes(), policy=policy, topology=None).take(message)
        again = [o for o in outbox_of(message) if o.routing_key == "p." + FAILED_JOBS_QUEUE]
        assert not message.failed and all("holds" in json.loads(o.body)["kwargs"] for o in again), record
    assert handled > 200


def test_two_requeues_of_one_quarantined_job_handled_at_once_dispatch_it_once(tmp_path):
    from cloud.routing.quarantine import Quarantine
    from node.contract.record import JobStatus, set_status
    from node.storage.records import RecordStore

    # Given a quarantined job, and two operators' requeue requests for it
    storage = LocalStorage(tmp_path)
    job = job_message("tests", "tracked", "job-1", job_key="a")
    RecordStore(storage).update("job-1", lambda r: set_status(r, JobStatus.QUARANTINED, reason="test"))
    Quarantine(storage).put(
        {"id": "e1", "job_id": "job-1", "reason": "test", "queue": "tests", "message": job.asdict()}
    )
    requests = [
        Delivery(
            Message(FAILED_JOBS_QUEUE, FAILED_JOBS_ACTOR, (), {"kind": "requeue", "id": "e1", "job": job.asdict()}, {})
        )
        for _ in range(2)
    ]
    first, second = lenient(tmp_path), lenient(tmp_path)
    seen_quarantined = first.records.get("job-1")
    second.records.get = lambda job_id: seen_quarantined  # it read the record before the first one wrote it

    # When both are handled, the second having read the job as quarantined
    first.take(requests[0])
    second.take(requests[1])

    # Then the job is dispatched once
    assert [out.routing_key for out in outbox_of(requests[0])] == ["p.tests"]
    assert outbox_of(requests[1]) == [] and not requests[1].failed
    routing = RecordStore(storage).get("job-1")["routing"]
    assert [r["action"] for r in routing] == ["dispatch"]
