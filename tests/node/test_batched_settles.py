"""Acks and rejects sent in batches (``node.broker.settle``): the rule with a fake channel, then the real broker."""

from __future__ import annotations

import pytest

from node.broker.settle import BatchedSettles
from tests.conftest import send, wait_for


class FakeChannel:
    def __init__(self) -> None:
        self.frames: list[tuple] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.frames.append(("ack", tag, multiple))

    def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.frames.append(("nack", tag, requeue))


class FakeConnection:
    def __init__(self) -> None:
        self.callbacks: list = []
        self.timers: list = []

    def add_callback_threadsafe(self, callback) -> None:
        self.callbacks.append(callback)

    def call_later(self, delay_s: float, callback) -> None:
        self.timers.append(callback)


class Settles(BatchedSettles):
    def __init__(self, held: set[int], *, spare: int = 0) -> None:
        self.known_tags = held
        self.channel = FakeChannel()
        self.connection = FakeConnection()
        self._init_settles(spare=spare)

    def run(self) -> list[tuple]:
        """The consumer thread's turn: its callbacks, then (as if the hold elapsed) its timers."""
        while self.connection.callbacks or self.connection.timers:
            callbacks, self.connection.callbacks = self.connection.callbacks, []
            for callback in callbacks:
                callback()
            timers, self.connection.timers = self.connection.timers, []
            for callback in timers:
                callback()
        return self.channel.frames


def test_acks_below_every_unsettled_delivery_go_as_one_multiple_ack() -> None:
    settles = Settles(held={9})
    for tag in (3, 1, 2, 5):
        settles._queue_settle(tag, ack=True)
    assert len(settles.connection.callbacks) == 1  # one wake-up for the batch
    assert settles.run() == [("ack", 5, True)]


def test_a_multiple_ack_never_covers_an_unsettled_or_rejected_delivery() -> None:
    settles = Settles(held={3})  # delivery 3 still runs
    for tag, ack in ((1, True), (2, True), (4, True), (5, False), (6, True)):
        settles._queue_settle(tag, ack=ack)
    assert settles.run() == [("ack", 2, True), ("ack", 4, False), ("nack", 5, False), ("ack", 6, False)]


def test_a_delivery_the_consumer_thread_is_settling_itself_is_not_covered() -> None:
    settles = Settles(held=set())
    settles._handling = 2
    for tag in (1, 3, 4):
        settles._queue_settle(tag, ack=True)
    assert settles.run() == [("ack", 1, False), ("ack", 3, False), ("ack", 4, False)]


def test_with_spare_prefetch_acks_ending_one_by_one_wait_for_each_other_and_go_as_one_multiple_ack() -> None:
    settles = Settles(held={9}, spare=6)  # e.g. prefetch 8, 2 threads
    settles._queue_settle(1, ack=True)
    settles.connection.callbacks.pop()()  # the hold starts: nothing sent yet
    assert settles.channel.frames == [] and len(settles.connection.timers) == 1
    for tag in (2, 3):
        settles._queue_settle(tag, ack=True)  # joins the held batch: no second wake-up
    assert settles.connection.callbacks == []
    assert settles.run() == [("ack", 3, True)]


def test_held_acks_go_at_once_when_the_spare_deliveries_are_all_acked() -> None:
    settles = Settles(held={9}, spare=2)
    settles._queue_settle(1, ack=True)
    settles._queue_settle(2, ack=True)  # as many held as the broker has spare: the window must refill
    hurry = settles.connection.callbacks[-1]
    hurry()
    assert settles.channel.frames == [("ack", 2, True)]


def test_acks_above_a_running_delivery_wait_for_it_then_go_with_it(monkeypatch) -> None:
    import node.broker.settle as settle

    now = [100.0]
    monkeypatch.setattr(settle.time, "monotonic", lambda: now[0])
    settles = Settles(held={2}, spare=6)  # delivery 2 still runs
    settles._queue_settle(1, ack=True)
    settles._queue_settle(3, ack=True)
    settles.connection.callbacks.pop()()
    settles.connection.timers.pop()()  # the hold elapsed: 1 goes, 3 waits above the running 2
    assert settles.channel.frames == [("ack", 1, False)] and len(settles.connection.timers) == 1
    settles.known_tags.discard(2)
    settles._queue_settle(2, ack=True)  # 2 ends
    assert settles.run() == [("ack", 1, False), ("ack", 3, True)]

    # Behind a long job, a held ack goes alone once it has waited SETTLE_HOLD_MAX_S.
    settles.known_tags.add(5)
    settles._queue_settle(6, ack=True)
    settles.connection.callbacks.pop()()
    settles.connection.timers.pop()()
    assert settles.channel.frames[-1] == ("ack", 3, True) and len(settles.connection.timers) == 1
    now[0] += 2 * settle.SETTLE_HOLD_MAX_S
    settles.connection.timers.pop()()
    assert settles.channel.frames[-1] == ("ack", 6, False)


def test_closing_sends_the_held_acks() -> None:
    class Closing(Settles):
        closed = False

    class Base:
        def close(self) -> None:
            Closing.closed = True

    settles = type("C", (BatchedSettles, Base), {})()
    settles.known_tags, settles.channel, settles.connection = set(), FakeChannel(), FakeConnection()
    settles._init_settles(spare=6)
    settles._queue_settle(1, ack=True)
    settles.close()
    for callback in settles.connection.callbacks:
        callback()
    assert Closing.closed and settles.channel.frames == [("ack", 1, False)]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_against_the_broker_a_batch_settles_exactly_its_own_deliveries(broker) -> None:
    """Four deliveries held at once; the 2nd and 3rd acked and the 4th rejected in one batch while the 1st
    still runs: only the 1st stays unsettled, and the rejected one is dead-lettered, not acked."""
    for n in range(4):
        send(broker, "tests", "tracked", job_key=f"s{n}")
    consumer = broker.consume("tests", prefetch=4, timeout=100)
    held = []
    while len(held) < 4:
        delivered = next(consumer)
        if delivered is not None:
            held.append(delivered)
    first, second, third, fourth = sorted(held, key=lambda m: m._tag)
    consumer.ack(third)
    consumer.ack(second)
    consumer.nack(fourth)
    next(consumer)  # the consumer thread's turn: the batch goes out
    wait_for(lambda: broker.get_queue_message_counts("tests")[2] == 1, 10, "the rejected delivery dead-lettered")
    consumer.close()  # the 1st was never settled: the broker offers it again
    wait_for(lambda: broker.get_queue_message_counts("tests")[0] == 1, 10, "the unsettled delivery back")
    again = broker.consume("tests", prefetch=4, timeout=100)
    redelivered = wait_for(lambda: next(again), 10, "the redelivery", interval_s=0)
    assert redelivered.message_id == first.message_id
    again.ack(redelivered)
    next(again)
    again.close()
    wait_for(lambda: broker.get_queue_message_counts("tests") == (0, 0, 1), 10, "only the dead letter left")
