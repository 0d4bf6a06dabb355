"""The job schema: defaults, validation with clear errors, versioning."""

from __future__ import annotations

import pytest

from node.contract.job_options import SCHEMA_VERSION, InvalidJob, JobOptions, new_job


def test_a_message_without_job_options_is_a_job_with_its_own_id():
    options = JobOptions.from_options({}, message_id="m-1")
    assert options.job_id == "m-1" and options.failures == 0 and options.version == SCHEMA_VERSION


def test_round_trip_keeps_every_field():
    options = JobOptions(
        job_id="j",
        job_type="sync",
        model="llama",
        priority="urgent",
        subcloud="acme",
        expires_at=123.5,
        failures=1,
        interruptions=2,
        avoid_nodes=("n1",),
        trace={"traceparent": "00-abc-def-01"},
        reply_to="amq.gen-JzTY20BRgKO-HjmUJj0wLg",
    )
    assert JobOptions.from_options({"job": options.to_options()}, message_id="other") == options


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("not a dict", "must be an object"),
        ({"job_id": ""}, "options.job.job_id: '' (0 characters) is not a usable job id"),
        ({"job_id": "a/b"}, "'a/b' (3 characters) is not a usable job id"),
        ({"job_id": "x" * 300}, "(300 characters) is not a usable job id"),
        ({"job_id": "a\x00b"}, "is not a usable job id"),
        ({"job_id": "\ud800"}, "is not a usable job id"),
        ({"job_type": "weekly"}, "job_type must be one of sync, polling, batch, stream"),
        ({"priority": "high"}, "priority must be one of urgent, bulk, test"),
        ({"failures": -1}, "failures must be a non-negative integer"),
        ({"interruptions": "2"}, "interruptions must be"),
        ({"expires_at": "tomorrow"}, "expires_at must be Unix seconds"),
        ({"version": 99}, "unsupported job schema version 99"),
        ({"colour": "blue"}, "unknown job option(s): colour"),
        # a reply goes to the submitter's own queue only, never into a queue a job names (a work queue)
        ({"reply_to": "tests"}, "reply_to must be a submitter's server-named reply queue (amq.gen-…), got 'tests'"),
        ({"reply_to": "failed-jobs"}, "reply_to must be"),
        ({"reply_to": "amq.rabbitmq.reply-to"}, "reply_to must be"),
    ],
)
def test_malformed_options_name_what_is_wrong(raw, problem):
    with pytest.raises(InvalidJob) as error:
        JobOptions.from_options({"job": raw}, message_id="m")
    assert problem in str(error.value)


def test_new_job_sets_identity_and_absolute_expiry():
    options = new_job(ttl_s=60, now=1000.0, job_type="sync", model="m")
    assert options["expires_at"] == 1060.0 and options["job_type"] == "sync" and options["job_id"]
    assert new_job(now=1000.0, job_id="fixed")["job_id"] == "fixed"
    assert new_job(now=1000.0)["expires_at"] is None
