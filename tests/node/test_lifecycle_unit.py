"""JobLifecycle paths that need no real broker: a job that cannot start is offered again, never lost."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage

from node.errors import StorageError
from node.middleware import JobLifecycle, JobSubmission
from node.storage import LocalStorage


class BrokenStorage(LocalStorage):
    def head(self, key):
        raise StorageError("endpoint unreachable")


def test_a_job_that_cannot_start_because_storage_is_down_is_offered_again_later(tmp_path):
    # Given a node whose storage is down
    lifecycle = JobLifecycle(storage=BrokenStorage(tmp_path), node_id="n")
    broker = StubBroker(middleware=[JobSubmission(), lifecycle])
    broker.declare_actor(
        dramatiq.Actor(lambda: None, broker=broker, actor_name="job", queue_name="q", priority=0, options={})
    )
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={})

    # When a job arrives
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(broker, message)

    # Then it is put back with a delay (the stub's delay queue), not acked away
    delayed = broker.queues["q.DQ"].get_nowait()
    assert Message.decode(delayed).message_id == message.message_id


class RecordingBroker(StubBroker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_aside: list[tuple[str, str]] = []

    def dead_letter(self, queue_name, body, *, reason, detail=""):
        self.set_aside.append((reason, detail))


def test_a_stale_copy_of_a_job_whose_record_is_final_is_dead_lettered_not_looped(tmp_path):
    from node.job_record import JobStatus, RecordStore, set_status

    # Given a job whose record says it expired
    storage = LocalStorage(tmp_path)
    RecordStore(storage).update("j", lambda r: set_status(r, JobStatus.EXPIRED))
    lifecycle = JobLifecycle(storage=storage, node_id="n")
    broker = RecordingBroker(middleware=[JobSubmission(), lifecycle])
    broker.declare_actor(
        dramatiq.Actor(lambda: None, broker=broker, actor_name="job", queue_name="q", priority=0, options={})
    )

    # When a copy of its message turns up
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={"job": {"job_id": "j"}})
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(broker, message)

    # Then it is set aside with a reason, not re-offered forever
    assert [reason for reason, _ in broker.set_aside] == ["stale"]
    assert "from expired to running" in broker.set_aside[0][1]
    assert broker.queues.get("q.DQ") is None or broker.queues["q.DQ"].empty()
