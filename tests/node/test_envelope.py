"""Distrust the envelope: every malformed message is dead-lettered once, with its reason; nothing wedges."""

from __future__ import annotations

import collections
import json
import subprocess
import time
import uuid

import pika
import pytest
from dramatiq import Message

from node.contract.envelope import check_fields, decode_fields
from node.contract.queues import death_reason
from node.errors import MalformedMessage
from node.storage.records import RecordStore
from tests.conftest import consumers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def good(prefix: str, job_key: str) -> dict:
    return Message(
        queue_name="tests", actor_name="counted", args=(), kwargs={"job_key": job_key}, options={}
    ).asdict() | {"message_timestamp": int(time.time() * 1000)}


def bad_messages(queue: str) -> list[tuple[str, bytes]]:
    """(the field the dead-letter detail must name, body) for every kind of bad envelope we know."""
    base = good("", "x")

    def body(**changes) -> bytes:
        fields = {**base, "message_id": str(uuid.uuid4()), **changes}
        return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()

    return [
        ("body is not JSON", b"{not json"),
        ("body is not JSON", b"\xff\xfe\x00garbage"),
        ("body must be a JSON object", b"[1, 2, 3]"),
        ("body is not JSON", b"[" * 100_000 + b"]" * 100_000),  # nested past the decoders' depth
        ("queue_name", body(queue_name=...)),
        ("extra", body(extra=1)),
        ("queue_name", body(queue_name="simulation")),  # names another queue than the one it came from
        ("queue_name", body(queue_name=7)),
        ("actor_name", body(actor_name="no_such_actor")),
        ("actor_name", body(actor_name=["counted"])),
        ("args", body(args={"a": 1})),
        ("kwargs", body(kwargs=["job_key"])),
        ("args/kwargs", body(kwargs={"job_key": "x", "surprise": 1})),
        ("args/kwargs", body(kwargs={})),
        ("options", body(options="fast")),
        ("options.job", body(options={"job": "urgent"})),
        ("options.job.job_id", body(options={"job": {"job_id": "j" * 300}})),
        ("options.job.job_id", body(options={"job": {"job_id": "a\x00b"}})),
        ("options.job.job_id", body(options={"job": {"job_id": "\ud800"}})),
        ("options.job", body(options={"job": {"job_id": "ok", "failures": "many"}})),
        ("message_timestamp", body(message_timestamp="yesterday")),
        ("message_timestamp", body(message_timestamp=float("nan"))),
        ("message_id", body(message_id="")),
        ("options.eta", body(options={"eta": "tomorrow"})),
        ("options.max_failures", body(options={"max_failures": "three"})),
        ("options.ttl_s", body(options={"ttl_s": -5})),
    ]


def queue_counts(prefix: str) -> dict[str, tuple[int, int]]:
    """Ready and unacknowledged messages per queue of this test, as the broker itself reports them."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(prefix):
            counts[parts[0][len(prefix) :]] = (int(parts[1]), int(parts[2]))
    return counts


def test_a_thousand_bad_messages_are_each_dead_lettered_once_and_good_jobs_all_succeed(
    amqp_url, queue_prefix, storage, start_node, tmp_path
):
    # Given a node with two workers
    node = start_node()
    state_dir = tmp_path / "state"
    wait_for(lambda: consumers(amqp_url, queue_prefix + "tests") == 2, 60, "two workers consuming")
    pids_before = {p.name: json.loads(p.read_text())["pid"] for p in (state_dir / "slots").glob("*.json")}

    # When 1,000+ bad messages of every kind are published straight to the work queue, with good jobs between
    kinds = bad_messages(queue_prefix + "tests")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    expected: collections.Counter[str] = collections.Counter()
    good_keys = []
    for n in range(1000):
        field, body = kinds[n % len(kinds)]
        channel.basic_publish("", queue_prefix + "tests", body, mandatory=True)
        expected[field] += 1
        if n % 20 == 0:
            key = f"good-{n}"
            good_keys.append(key)
            message = good(queue_prefix, key)
            message["options"] = {"job": {"job_id": key}}
            channel.basic_publish("", queue_prefix + "tests", json.dumps(message).encode(), mandatory=True)
    connection.close()

    # Then every good job succeeds
    records = RecordStore(storage)
    wait_for(lambda: all((records.get(k) or {}).get("status") == "succeeded" for k in good_keys), 240, "every good job")
    # and every bad one is in the dead-letter queue exactly once, with a reason naming what was wrong
    wait_for(lambda: queue_counts(queue_prefix).get("tests.XQ", (0, 0))[0] >= 1000, 120, "1,000 dead letters")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    seen: collections.Counter[str] = collections.Counter()
    while True:
        method, properties, body = channel.basic_get(queue_prefix + "tests.XQ", auto_ack=True)
        if method is None:
            break
        assert death_reason(properties.headers) == "malformed"
        detail = properties.headers["x-burrow-detail"]
        named = detail.split(": ", 1)[0]
        seen[next((f for f, _ in kinds if f == named or (" " in f and detail.startswith(f))), detail)] += 1
    connection.close()
    assert seen == expected
    # and no worker restarted, no consumer holds a message, nothing is left
    pids_after = {p.name: json.loads(p.read_text())["pid"] for p in (state_dir / "slots").glob("*.json")}
    assert pids_after == pids_before
    assert "restarting in" not in node.output()
    wait_for(lambda: queue_counts(queue_prefix).get("tests") == (0, 0), 60, "nothing ready or unacked")


def test_a_message_with_a_far_eta_waits_in_the_broker_and_does_not_block_the_queue(
    amqp_url, queue_prefix, storage, start_node
):
    # Given a one-worker node
    start_node("--processes", "1")
    wait_for(lambda: consumers(amqp_url, queue_prefix + "tests") == 1, 60, "the worker consuming")

    # When a message asks (Dramatiq's options.eta) to run tomorrow, and a normal job follows it
    later = good(queue_prefix, "tomorrow")
    later["options"] = {"eta": int((time.time() + 86_400) * 1000), "job": {"job_id": "tomorrow"}}
    now = good(queue_prefix, "now")
    now["options"] = {"job": {"job_id": "now"}}
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for message in (later, now):
        channel.basic_publish("", queue_prefix + "tests", json.dumps(message).encode(), mandatory=True)
    connection.close()

    # Then the normal job runs at once, and the later one waits in the broker's 24 h wait queue, not in a worker
    wait_for(lambda: (RecordStore(storage).get("now") or {}).get("status") == "succeeded", 60, "the normal job")
    # (the broker's queue statistics lag a few seconds behind)
    wait_for(lambda: queue_counts(queue_prefix).get("burrow.wait.86400000ms") == (1, 0), 60, "the wait queue")
    wait_for(lambda: queue_counts(queue_prefix).get("tests") == (0, 0), 60, "an empty work queue")
    assert RecordStore(storage).get("tomorrow") is None


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"queue_name": "other"}, "queue_name"),
        ({"kwargs": [1]}, "kwargs"),
        ({"options": []}, "options"),
        ({"message_timestamp": "x"}, "message_timestamp"),
        ({"options": {"job": {"job_id": "a" * 129}}}, "options.job.job_id"),
    ],
)
def test_envelope_checks_name_the_field(fields, named):
    base = json.loads(json.dumps(good("", "x")))
    with pytest.raises(MalformedMessage) as error:
        check_fields(decode_fields(json.dumps({**base, **fields}).encode()), delivered_on="tests")
    assert error.value.field == named


def test_a_body_nested_past_the_decoders_depth_is_malformed_not_a_recursion_error():
    with pytest.raises(MalformedMessage, match="nested too deeply"):
        decode_fields(b'{"args":' * 50_000 + b"1" + b"}" * 50_000)


BIG = {"big": 10**30, "below": -(10**25), "u64": 2**64, "i64": -(2**63) - 1, "float": 1.5e30, "ok": 2**63}


def test_integers_beyond_64_bits_are_read_exactly_from_envelopes_and_records(tmp_path):
    # (orjson reads them as floats: 10**30 became 1e+30, where plain Dramatiq keeps the integer)
    from node.storage import LocalStorage

    base = json.loads(json.dumps(good("", "x")))
    fields = decode_fields(json.dumps({**base, "kwargs": BIG}).encode())
    assert fields["kwargs"] == BIG and [type(v) for v in fields["kwargs"].values()] == [type(v) for v in BIG.values()]
    records = RecordStore(LocalStorage(tmp_path))
    records.update("j", lambda record: record.update(result={"value": BIG}))
    assert records.get("j")["result"]["value"] == BIG and isinstance(records.get("j")["result"]["value"]["big"], int)
    # and a long digit run that is not an integer token changes nothing
    assert decode_fields(json.dumps({**base, "kwargs": {"f": 0.1234567890123456789012, "s": "1" * 30}}).encode())[
        "kwargs"
    ] == {"f": 0.1234567890123456789012, "s": "1" * 30}
