"""The submit side: job identity and absolute expiry are fixed when a job is sent."""

from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.stub import StubBroker

from node.contract.job_options import JobOptions, new_job
from node.middleware import JobSubmission


def make_actor(broker, **options):
    return dramatiq.actor(lambda: None, actor_name="job", queue_name="q", broker=broker, **options)


def test_a_job_sent_plainly_gets_its_id_and_the_actors_ttl_as_absolute_expiry():
    broker = StubBroker(middleware=[JobSubmission()])
    actor = make_actor(broker, ttl_s=60.0)
    before = time.time()
    message = actor.send()
    job = JobOptions.from_options(message.options, message_id="unused")
    assert job.job_id == message.message_id
    assert before + 59 <= job.expires_at <= time.time() + 60


def test_explicit_job_options_are_kept():
    broker = StubBroker(middleware=[JobSubmission()])
    actor = make_actor(broker, ttl_s=60.0)
    message = actor.send_with_options(job=new_job(ttl_s=5, now=1000.0, job_id="mine", model="llama-8b"))
    job = JobOptions.from_options(message.options, message_id="unused")
    assert (job.job_id, job.expires_at, job.model) == ("mine", 1005.0, "llama-8b")


def test_an_actor_without_ttl_gets_no_expiry():
    broker = StubBroker(middleware=[JobSubmission()])
    assert JobOptions.from_options(make_actor(broker).send().options, message_id="x").expires_at is None


def test_a_priority_class_given_as_dramatiqs_priority_parameter_routes_the_job():
    # (Dramatiq took it as its integer priority: the job went to "bulk", and a worker compared "urgent" with
    # other actors' integers when ordering its buffered messages)
    import pytest

    from node.errors import MalformedMessage

    broker = StubBroker(middleware=[JobSubmission()])
    actor = make_actor(broker, priority="urgent")
    assert actor.priority == 0 and actor.options["priority"] == "urgent"
    assert JobOptions.from_options(actor.send().options, message_id="x").priority == "urgent"
    assert dramatiq.actor(lambda: None, actor_name="ordered", broker=broker, priority=5).priority == 5
    # and a class that is none is named when a job is sent
    other = dramatiq.actor(lambda: None, actor_name="other", broker=broker, priority="high")
    with pytest.raises(MalformedMessage, match="priority must be one of urgent, bulk, test"):
        other.send()


def test_an_actors_ttl_or_max_age_that_is_not_a_number_fails_the_send():
    # (a TypeError in this hook was only logged by Dramatiq: the job went out without its identity)
    import pytest

    from node.errors import MalformedMessage

    broker = StubBroker(middleware=[JobSubmission()])
    for options in ({"ttl_s": "soon"}, {"max_age": "60000"}):
        actor = dramatiq.actor(
            lambda: None, actor_name=f"a{len(options)}{next(iter(options))}", broker=broker, **options
        )
        with pytest.raises(MalformedMessage, match="ttl_s"):
            actor.send()
