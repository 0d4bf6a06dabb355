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
