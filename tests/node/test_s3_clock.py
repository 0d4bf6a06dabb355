"""A machine whose clock is off from its S3 endpoint's: it still stores, and judges job expiry by the
endpoint's time (``node/storage/s3_clock.py``)."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.exceptions import ClientError
from dramatiq import Message

from cloud.registry import NodeRegistry
from node.contract.job_options import JobOptions
from node.contract.registry import describe_offset
from node.storage import open_storage
from node.storage.records import RecordStore
from node.storage.s3_clock import EndpointClock, date_seconds, next_offset, offset_bounds
from tests.conftest import wait_for
from tests.s3_proxy import S3Proxy

HOUR = 3600.0


@pytest.fixture
def skewed(s3_endpoint: str, request):
    """A proxy to the S3 endpoint whose clock is off this machine's by the test's ``param`` seconds."""
    proxy = S3Proxy(s3_endpoint, request.param)
    yield proxy
    proxy.close()


def test_one_exchange_bounds_the_offset_and_a_slow_answer_only_widens_the_bounds():
    date = "Tue, 08 Dec 2026 01:00:00 GMT"
    assert date_seconds(date) == 1796691600.0
    assert date_seconds("Tue, 08 Dec 2026 01:00:00 -0000") == 1796691600.0
    for bad in ("", "yesterday", "Tue, 99 Foo 2026 25:61:00 GMT"):
        assert date_seconds(bad) is None
    stamped = 1796691600.3  # (the endpoint's clock, an hour ahead of this machine's)
    assert offset_bounds(1796691600.0, stamped - HOUR - 0.01, stamped - HOUR + 0.01) == pytest.approx(
        (HOUR - 0.31, HOUR + 0.71)
    )
    low, high = offset_bounds(1796691600.0, stamped - HOUR - 5, stamped - HOUR + 5)  # ten seconds in flight
    assert low < HOUR < high


def test_the_offset_changes_only_when_an_exchange_rules_it_out():
    assert next_offset(0.0, -3.5, 0.5) == 0.0  # in step, a slow answer: no skew
    assert next_offset(0.0, 0.4, 1.3) == 0.0  # under a second or two: none
    assert next_offset(0.0, HOUR - 0.3, HOUR + 0.7) == pytest.approx(HOUR + 0.2)
    assert next_offset(HOUR, HOUR - 4, HOUR + 4) == HOUR  # still fits: kept
    assert next_offset(HOUR, -0.5, 0.5) == 0.0  # set right meanwhile


def test_the_clock_parses_each_date_once_and_ignores_what_is_not_a_date():
    clock = EndpointClock()
    received = 1796691600.2
    clock.observe("Tue, 08 Dec 2026 01:00:00 GMT", received - 0.1, received)
    assert clock.offset_s == 0.0
    clock.observe("Tue, 08 Dec 2026 02:00:00 GMT", received - 0.1, received)
    assert clock.offset_s == pytest.approx(HOUR + 0.35)
    clock.observe("garbage", received, received)
    assert clock.offset_s == pytest.approx(HOUR + 0.35)
    assert describe_offset(3600.4) == "3,600 s behind"
    assert describe_offset(-12.0) == "12 s ahead of"


@pytest.mark.integration
@pytest.mark.parametrize("skewed", [HOUR, -2 * HOUR], indirect=True, ids=["behind", "ahead"])
def test_a_machine_whose_clock_is_off_stores_and_reads_through_an_endpoint_that_refuses_skewed_requests(
    skewed: S3Proxy, s3_bucket: str, tmp_path
):
    # Given an endpoint that refuses requests signed more than 15 minutes off its clock, as S3 and R2 do
    plain = boto3.client("s3", endpoint_url=skewed.endpoint, region_name="us-east-1")
    with pytest.raises(ClientError, match="RequestTimeTooSkewed"):
        plain.put_object(Bucket=s3_bucket, Key="plain", Body=b"x")

    # When a node's storage talks to it: the start probe, then every kind of call
    storage = open_storage(f"s3://{s3_bucket}/skew", endpoint_url=skewed.endpoint)
    assert storage.check_usable() is None
    storage.put("a/one", b"1")
    storage.put("a/one", b"2", if_match=storage.head("a/one").etag)
    assert storage.get("a/one")[0] == b"2"
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    storage.upload_file("a/big", source)
    storage.download_file("a/big", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    assert list(storage.list("a/")) == ["a/big", "a/one"]
    storage.delete("a/one")

    # Then it works, by the endpoint's time: only the probe's first request was refused
    assert skewed.refused == 2  # the plain client's, and the probe's first
    # (within a minute: the offset is the middle of what one exchange bounds, wider on a loaded machine)
    assert storage.now() - time.time() == pytest.approx(skewed.skew_s, abs=60)
    assert RecordStore(storage).create({"job_id": "j", "status": "queued", "attempts": []})
    assert RecordStore(storage).get("j")["updated_at"] == pytest.approx(time.time() + skewed.skew_s, abs=60)


@pytest.mark.integration
@pytest.mark.parametrize("skewed", [0.0], indirect=True, ids=["in-step"])
def test_a_machine_in_step_with_its_endpoint_signs_as_boto3_does(skewed: S3Proxy, s3_bucket: str):
    storage = open_storage(f"s3://{s3_bucket}/step", endpoint_url=skewed.endpoint)
    storage.put("k", b"v")
    assert storage.get("k")[0] == b"v"
    assert storage.clock.offset_s == 0.0 and skewed.refused == 0


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("skewed", [HOUR], indirect=True, ids=["node-behind"])
def test_a_node_whose_clock_is_an_hour_behind_runs_jobs_and_judges_expiry_by_the_endpoint(
    skewed: S3Proxy, s3_bucket: str, s3_endpoint: str, broker, start_node
):
    # Given a node whose clock is an hour behind its S3 endpoint's (and the submitters', which are right)
    node = start_node(
        "--processes",
        "1",
        env={
            "BURROW_STORAGE_URL": f"s3://{s3_bucket}",
            "BURROW_S3_ENDPOINT_URL": skewed.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        },
    )
    storage = open_storage(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)  # (the test reads around the proxy)
    true_now = time.time() + skewed.skew_s

    # When it gets a job that expires in ten minutes, and one that expired a minute ago (by the right time,
    # still 59 minutes ahead by the node's own clock)
    for job_id, expires_at in (("fresh", true_now + 600), ("stale", true_now - 60)):
        options = JobOptions(job_id=job_id, expires_at=expires_at).to_options()
        broker.enqueue(
            Message(
                queue_name="tests", actor_name="counted", args=(), kwargs={"job_key": job_id}, options={"job": options}
            )
        )

    # Then the fresh one runs and is recorded, the stale one is expired without running
    records = RecordStore(storage)
    wait_for(lambda: (r := records.get("fresh")) and r["status"] == "succeeded", 90, "the fresh job to succeed")
    wait_for(lambda: (r := records.get("stale")) and r["status"] == "expired", 90, "the stale job to expire")
    assert list(storage.list("runs/stale/")) == []
    assert "clock is 3,600 s behind the S3 endpoint's" in node.output()
    registry = NodeRegistry(broker.parameters, broker.queue_prefix, refresh_s=0)
    view = wait_for(lambda: registry.nodes().get("test-node"), 60, "the node's heartbeat")
    assert view.clock_offset_s == pytest.approx(HOUR, abs=60)
