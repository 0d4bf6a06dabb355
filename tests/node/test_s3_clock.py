"""A machine whose clock is off from its S3 endpoint's: it still stores, and judges job expiry by the
endpoint's time (``node/storage/s3_clock.py``)."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.exceptions import ClientError
from dramatiq import Message

from node.contract.job_options import JobOptions
from node.storage import open_storage
from node.storage.records import RecordStore
from node.storage.s3_clock import EndpointClock, describe_offset, offset_from_date
from tests.conftest import wait_for
from tests.s3_proxy import S3Proxy

HOUR = 3600.0


@pytest.fixture
def skewed(s3_endpoint: str, request):
    """A proxy to the S3 endpoint whose clock is off this machine's by the test's ``param`` seconds."""
    proxy = S3Proxy(s3_endpoint, request.param)
    yield proxy
    proxy.close()


def test_offset_from_a_date_header():
    # the middle of the second the Date names, minus when it arrived here
    assert offset_from_date("Tue, 08 Dec 2026 01:00:00 GMT", 1796691600.0 - 3600) == pytest.approx(3600.5)
    assert offset_from_date("Tue, 08 Dec 2026 01:00:00 -0000", 1796691600.0) == pytest.approx(0.5)
    for bad in ("", "yesterday", "Tue, 99 Foo 2026 25:61:00 GMT"):
        assert offset_from_date(bad, 0.0) is None


def test_the_clock_ignores_offsets_under_two_seconds_and_parses_each_date_once():
    clock = EndpointClock()
    received = 1796691600.0
    clock.observe("Tue, 08 Dec 2026 01:00:01 GMT", received)  # 1.5 s: the header's resolution, not skew
    assert clock.offset_s == 0.0
    clock.observe("Tue, 08 Dec 2026 02:00:00 GMT", received)
    assert clock.offset_s == pytest.approx(HOUR + 0.5)
    clock.observe("Tue, 08 Dec 2026 02:00:00 GMT", received + 100)  # the same header: not parsed again
    assert clock.offset_s == pytest.approx(HOUR + 0.5)
    clock.observe("garbage", received)
    assert clock.offset_s == pytest.approx(HOUR + 0.5)
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
    assert storage.now() - time.time() == pytest.approx(skewed.skew_s, abs=1.5)
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
