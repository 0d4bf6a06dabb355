"""The quorum-queue broker against the real RabbitMQ."""

from __future__ import annotations

import fcntl
import os
import sys
import time

import pika
import pytest
from dramatiq import Message

from node.broker import QuorumRabbitmqBroker
from node.contract.queues import death_reason, wait_bucket_ms
from node.errors import QueueMismatchError
from node.supervisor.process import EXIT_BOOT_FAILED
from tests.conftest import consumers, send, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def raw_channel(url: str):
    return pika.BlockingConnection(pika.URLParameters(url)).channel()


def next_message(consumer, timeout_s: float = 10):
    return wait_for(lambda: next(consumer), timeout_s, "a delivery", interval_s=0)


def test_work_queues_are_quorum_queues(amqp_url, broker, queue_prefix):
    broker.declare_queue("tests", ensure=True)
    channel = raw_channel(amqp_url)
    # Redeclaring with the same arguments but as classic is refused: the queue exists as a quorum queue.
    arguments = {**broker._build_queue_arguments("tests"), "x-queue-type": "classic"}
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.queue_declare(queue_prefix + "tests", durable=True, arguments=arguments)
    assert refused.value.reply_code == 406
    assert "x-queue-type" in refused.value.reply_text and "quorum" in refused.value.reply_text


def test_delivery_count_is_visible_and_limit_dead_letters_with_reason(amqp_url, broker, queue_prefix):
    message = send(broker, "tests", "tracked", job_key="limit")
    seen = []
    for _ in range(broker.delivery_limit + 1):
        consumer = broker.consume("tests", prefetch=1, timeout=200)
        delivered = next_message(consumer)
        seen.append((delivered.delivery_count, delivered.redelivered))
        consumer.close()  # no ack: as if the process died
    assert seen == [(0, False), (1, True), (2, True), (3, True)]

    wait_for(lambda: broker.get_queue_message_counts("tests") == (0, 0, 1), 10, "the dead letter")
    method, properties, body = raw_channel(amqp_url).basic_get(queue_prefix + "tests.XQ")
    assert death_reason(properties.headers) == "delivery_limit"
    assert Message.decode(body).message_id == message.message_id


def test_delay_goes_through_a_wait_queue_and_is_never_held_by_a_worker(broker):
    consumer = broker.consume("tests", prefetch=1, timeout=50)
    sent_at = time.monotonic()
    broker.enqueue(Message(queue_name="tests", actor_name="tracked", args=(), kwargs={}, options={}), delay=300)
    # While it waits, the work queue holds nothing a worker could take.
    assert next(consumer) is None
    delivered = next_message(consumer)
    waited = time.monotonic() - sent_at
    consumer.ack(delivered)
    consumer.close()
    assert waited >= 0.29  # (its own 300 ms TTL now, which the broker counts in whole milliseconds)
    assert "eta" not in delivered.options
    assert delivered.delivery_count == 0


def test_a_delay_leaves_its_bucket_by_its_own_ttl_and_one_past_the_longest_bucket_waits_on(broker, amqp_url):
    # A 300 ms delay waits in the 500 ms bucket, but expires by its own TTL: the broker says so in x-death
    consumer = broker.consume("tests", prefetch=1, timeout=50)
    broker.enqueue(Message(queue_name="tests", actor_name="tracked", args=(), kwargs={}, options={}), delay=300)
    delivered = next_message(consumer)
    consumer.ack(delivered)
    consumer.close()
    (death,) = delivered.headers["x-death"]
    assert death["reason"] == "expired" and death["original-expiration"] == "300"
    assert death["queue"].endswith("burrow.wait.500ms")
    # A delay of two days goes to the longest bucket (one day) carrying its eta, so that, back from there, it
    # waits out the rest instead of running a day early
    before_ms = int(time.time() * 1000)
    message = Message(queue_name="tests", actor_name="tracked", args=(), kwargs={}, options={})
    broker.enqueue(message, delay=2 * 86_400_000)
    channel = raw_channel(amqp_url)
    wait_queue = broker.wait_queue_name(86_400_000)
    got = wait_for(lambda: (r := channel.basic_get(wait_queue, auto_ack=True))[0] and r, 10, "the wait queue")
    _, properties, body = got
    channel.connection.close()
    eta = Message.decode(body).options["eta"]
    assert before_ms + 2 * 86_400_000 <= eta <= int(time.time() * 1000) + 2 * 86_400_000
    assert properties.expiration is None  # (the bucket's own TTL is the shorter)


def test_wait_buckets_round_up():
    assert wait_bucket_ms(1) == 100
    assert wait_bucket_ms(1_000) == 1_000
    assert wait_bucket_ms(1_001) == 2_000
    assert wait_bucket_ms(10**12) == 86_400_000


def test_malformed_message_is_dead_lettered_with_a_reason(amqp_url, broker, queue_prefix):
    broker.declare_queue("tests", ensure=True)
    raw_channel(amqp_url).basic_publish("", queue_prefix + "tests", b"{not json")
    consumer = broker.consume("tests", prefetch=1, timeout=100)
    for _ in range(10):
        assert next(consumer) is None  # never handed to an actor
    consumer.close()
    wait_for(lambda: broker.get_queue_message_counts("tests") == (0, 0, 1), 10, "the dead letter")
    method, properties, body = raw_channel(amqp_url).basic_get(queue_prefix + "tests.XQ")
    assert death_reason(properties.headers) == "malformed"
    assert body == b"{not json"


@pytest.mark.timeout(180)  # two node starts
def test_existing_classic_queue_fails_with_a_clear_message(amqp_url, queue_prefix, start_node):
    raw_channel(amqp_url).queue_declare(queue_prefix + "classic", durable=True)
    broker = QuorumRabbitmqBroker(url=amqp_url, queue_prefix=queue_prefix)
    with pytest.raises(QueueMismatchError, match=rf"queue '{queue_prefix}classic' already exists"):
        broker.declare_queue("classic", ensure=True)
    broker.close()

    # A node whose queue exists as a classic queue stops with that message, not a stack trace.
    raw_channel(amqp_url).queue_declare(queue_prefix + "tests", durable=True)
    node = start_node(argv=[sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1"])
    assert node.process.wait(timeout=30) == EXIT_BOOT_FAILED  # not Dramatiq's 3, "broker unreachable": retried
    output = node.output()
    assert f"Cannot start worker: queue '{queue_prefix}tests' already exists with other arguments" in output
    assert "Traceback" not in output

    # Under `burrow node` the worker is not restarted (every restart would fail alike): the node stops, saying so.
    node = start_node("--processes", "2")
    assert node.process.wait(timeout=60) == EXIT_BOOT_FAILED
    output = node.output()
    assert output.count("Cannot start worker: queue") == 2  # each slot's worker booted once
    assert "not restarting it" in output and "No worker could boot" in output


@pytest.mark.timeout(180)  # several worker boots
def test_a_worker_whose_slot_is_still_held_is_restarted_until_it_is_free(amqp_url, queue_prefix, start_node, tmp_path):
    # Given slot cpu-0 held by another process (the worker being replaced still drains its job)
    slots = tmp_path / "state" / "slots"
    slots.mkdir(parents=True)
    holder = os.open(slots / "cpu-0.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)
    node = start_node("--processes", "1", env={"BURROW_CPU_SLOTS": "1"})
    # Then its worker cannot start yet, and is tried again (it is not given up as misconfigured)
    wait_for(lambda: node.output().count("Cannot start worker yet") >= 2, 60, "two tries at the held slot")
    assert "not restarting it" not in node.output()
    # and once the slot is free the node serves its queues
    os.close(holder)
    wait_for(lambda: consumers(amqp_url, queue_prefix + "tests") == 1, 60, "the worker consuming")
    assert node.process.poll() is None


def test_publisher_confirms_are_on_by_default(amqp_url):
    assert QuorumRabbitmqBroker(url=amqp_url).confirm_delivery is True


def test_a_lost_connection_is_replaced_for_inspecting_queues_and_declaring_wait_queues(broker, queue_prefix):
    # Given a broker whose connection was lost since its last use (a cluster node gone, say): a router's
    # worker thread keeps its connection between reports
    broker.declare_queue("tests", ensure=True)
    assert broker.inspect_queue("tests") == (0, 0)
    broker.connection.close()

    # Then it still inspects queues and declares wait queues, over a new connection
    assert broker.inspect_queue("tests") == (0, 0)
    assert broker.inspect_queue("no-such-queue") is None
    exchange = broker.declare_wait_bucket(wait_bucket_ms(100))
    assert exchange == broker.wait_queue_name(wait_bucket_ms(100))
    assert broker.inspect_queue(exchange.removeprefix(queue_prefix)) == (0, 0)
