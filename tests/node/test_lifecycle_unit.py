"""JobLifecycle paths that need no real broker: a job that cannot start is offered again, never lost."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage

from node.contract.record import JobStatus, set_status
from node.errors import StorageError
from node.middleware import JobLifecycle, JobSubmission
from node.storage import LocalStorage
from node.storage.records import RecordStore


class BrokenStorage(LocalStorage):
    def get(self, key):
        raise StorageError("endpoint unreachable")

    get_if_exists = get


class RecordingBroker(StubBroker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_aside: list[tuple[str, str]] = []
        self.published: list[tuple[Message, int | None]] = []

    def dead_letter(self, queue_name, body, *, reason, detail=""):
        self.set_aside.append((reason, detail))

    def enqueue(self, message, *, delay=None):
        self.published.append((message, delay))
        return message


def make(storage) -> tuple[JobLifecycle, RecordingBroker]:
    lifecycle = JobLifecycle(storage=storage, node_id="n")
    broker = RecordingBroker(middleware=[JobSubmission(), lifecycle])
    broker.declare_actor(
        dramatiq.Actor(lambda: None, broker=broker, actor_name="job", queue_name="q", priority=0, options={})
    )
    return lifecycle, broker


def test_a_job_that_cannot_start_because_storage_is_down_is_offered_again_later(tmp_path):
    # Given a node whose storage is down
    lifecycle, broker = make(BrokenStorage(tmp_path))
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={})

    # When a job arrives
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(broker, message)

    # Then it is put back with a delay, not acked away, and nothing was counted against it
    (copy, delay), *_ = broker.published
    assert copy.message_id == message.message_id and delay == 30_000
    assert copy.options["job"]["failures"] == 0


def test_a_stale_copy_of_a_job_whose_record_is_final_is_dead_lettered_not_looped(tmp_path):
    # Given a job whose record says it expired
    storage = LocalStorage(tmp_path)
    RecordStore(storage).update("j", lambda r: set_status(r, JobStatus.EXPIRED))
    lifecycle, broker = make(storage)

    # When a copy of its message turns up
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={"job": {"job_id": "j"}})
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(broker, message)

    # Then it is set aside with a reason, not re-offered forever
    assert [reason for reason, _ in broker.set_aside] == ["stale"]
    assert "already expired" in broker.set_aside[0][1]
    assert broker.published == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"job": "x"}, "options.job"),
        ({"job": {"job_id": "a" * 300}}, "options.job.job_id"),
        ({"job": {"job_id": "a\x00b"}}, "options.job.job_id"),
        ({"job": {"job_id": "\ud800"}}, "options.job.job_id"),
        ({"max_failures": "three"}, "options.max_failures"),
        ({"eta": "tomorrow"}, "options.eta"),
    ],
)
def test_malformed_options_are_dead_lettered_naming_the_field(tmp_path, options, field):
    lifecycle, broker = make(LocalStorage(tmp_path))
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options=options)
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(broker, message)
    assert [reason for reason, _ in broker.set_aside] == ["malformed"]
    assert broker.set_aside[0][1].startswith(field)


def test_an_unexpected_error_before_the_run_never_lets_the_actor_run_unaccounted(tmp_path, monkeypatch):
    # Given a node where starting an attempt breaks in an unforeseen way
    lifecycle, broker = make(LocalStorage(tmp_path))
    monkeypatch.setattr(lifecycle.runner, "_start", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={})

    # When a job arrives, Dramatiq is told to skip it (it would otherwise log the error and run the actor)
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(broker, message)

    # and the job is offered again later, not lost
    assert [(m.message_id, delay) for m, delay in broker.published] == [(message.message_id, 30_000)]


def test_a_message_for_an_unknown_actor_is_malformed_not_retried(tmp_path):
    lifecycle, broker = make(LocalStorage(tmp_path))
    message = Message(queue_name="q", actor_name="ghost", args=(), kwargs={}, options={})
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(broker, message)
    assert broker.set_aside[0][0] == "malformed" and broker.set_aside[0][1].startswith("actor_name")


def test_a_lease_copy_that_guards_no_known_attempt_is_dead_lettered_not_dropped(tmp_path):
    # Given a message that claims to be the lease copy of an attempt no record knows (forged, or its record lost)
    lifecycle, broker = make(LocalStorage(tmp_path))
    job = {"job_id": "leased", "lease_of": "0" * 32, "lease_seen": 3}
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={"job": job})

    # When it arrives, it is not run, and it is set aside with a reason rather than acked away
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(broker, message)
    assert broker.set_aside == [("stale", "a lease copy that guards nothing: the job has no record")]
    assert broker.published == []


@pytest.mark.parametrize("appears", [False, True])
def test_a_short_jobs_record_is_created_at_its_end_or_merged_with_one_that_appeared(tmp_path, appears):
    # Given a job with no record when it arrives
    storage = LocalStorage(tmp_path)
    lifecycle, broker = make(storage)
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={})
    lifecycle.before_process_message(broker, message)
    job_id = message.message_id  # (a message without job options: its id is the job id)
    if appears:  # ... and a record that appears while it runs (here: a cancel request, too late to matter)
        RecordStore(storage).update(job_id, lambda r: r.update(cancel={"at": 1.0, "by": "test"}))

    # When it succeeds
    lifecycle.after_process_message(broker, message, result=None)

    # Then its record is closed as succeeded with one attempt, keeping what the other writer wrote
    record = RecordStore(storage).get(job_id)
    assert record["status"] == "succeeded" and [a["outcome"] for a in record["attempts"]] == ["succeeded"]
    assert ("cancel" in record) is appears


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"tokens": "x" * 20_000}, "could not be stored"),  # over the inline limit: stored as result.json
        (nested(5_000), "not JSON"),  # past json's depth
        ({1, 2}, "not JSON"),
    ],
)
def test_a_return_value_that_cannot_be_kept_fails_the_attempt_and_loses_nothing(tmp_path, monkeypatch, result, problem):
    # Given a job whose return value cannot be kept: not JSON, or too big for the record while storage is down
    from node.attempt.context import Artifacts

    def refuse(self, name, data):
        raise StorageError("endpoint unreachable")

    monkeypatch.setattr(Artifacts, "put", refuse)
    storage = LocalStorage(tmp_path)
    lifecycle, broker = make(storage)
    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={})
    lifecycle.before_process_message(broker, message)

    # When the actor returns it, nothing escapes the hook (Dramatiq would log it and ack the message away)
    lifecycle.after_process_message(broker, message, result=result)

    # Then the attempt failed, saying why, and the job is offered again after its cooldown
    record = RecordStore(storage).get(message.message_id)
    (attempt,) = record["attempts"]
    assert attempt["outcome"] == "failed" and problem in attempt["error"]
    (copy, delay), *_ = broker.published
    assert copy.message_id == message.message_id and copy.options["job"]["failures"] == 1 and delay


class Redelivered:
    """A delivery as the broker marks one it gave out before (Dramatiq's message proxy stands in)."""

    def __init__(self, message: Message, count: int) -> None:
        self._message, self.redelivered, self.delivery_count = message, count > 0, count

    def __getattr__(self, name):
        return getattr(self._message, name)

    def fail(self) -> None:
        pass


def test_no_readable_record_however_edited_makes_a_job_be_offered_again_forever(tmp_path):
    # 300 readable records edited at random (a record is storage an operator or a foreign tool may write),
    # each met by a first or a repeated delivery of its job: the lifecycle decides (runs it, settles it,
    # dead-letters it) and never falls back to "could not start; offering it again later", which would loop.
    import copy
    import json
    import random

    from node.contract.record import record_key, record_problem

    rng = random.Random(5)
    values = [None, 0, -1, 1.5, True, "", "x", [], [1], {}, {"a": 1}, "running", "succeeded", "failed", "lost"]
    attempt = {"number": 1, "attempt_id": "a1", "node": "n", "started_at": 1.0, "ended_at": None, "outcome": None}
    fields = ["status", "checkpoint", "progress", "reason", "cancel", "result", "routing", "attempts", "artifacts"]
    tried = 0
    for n in range(300):
        record = {"job_id": f"j{n}", "status": "running", "attempts": [dict(attempt)], "artifacts": {}}
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.4:
                record[rng.choice(fields)] = rng.choice(values)
            elif (
                isinstance(record.get("attempts"), list)
                and record["attempts"]
                and isinstance(record["attempts"][0], dict)
            ):
                record["attempts"][0][rng.choice([*attempt, "killed", "released_at", "renewals"])] = rng.choice(values)
        if record_problem(copy.deepcopy(record), f"j{n}") is not None:
            continue  # (unreadable: dead-lettered as malformed, covered in test_faults.py)
        tried += 1
        storage = LocalStorage(tmp_path / str(n))
        storage.put(record_key(f"j{n}"), json.dumps(record).encode())
        lifecycle, broker = make(storage)
        message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={"job": {"job_id": f"j{n}"}})
        delivery = Redelivered(message, rng.choice([0, 1, 2]))
        try:
            lifecycle.before_process_message(broker, delivery)
        except SkipMessage as skipped:
            assert not str(skipped).startswith("could not start"), (record, str(skipped))
        else:
            lifecycle.after_process_message(broker, delivery, result=None)
    assert tried > 80


class Unprintable(Exception):
    """An actor's exception whose ``str()`` itself raises."""

    def __str__(self) -> str:
        raise ValueError("no text")


def test_an_actor_exception_whose_str_raises_still_ends_its_attempt_as_a_failure(tmp_path):
    # Given a running job
    storage = LocalStorage(tmp_path)
    lifecycle, broker = make(storage)
    message = MessageProxy(Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={}))
    lifecycle.before_process_message(broker, message)

    # When its actor raises an exception that cannot be turned into text
    lifecycle.after_process_message(broker, message, exception=Unprintable())

    # Then the attempt is recorded as failed, naming the exception, and the job is retried after its cooldown
    (attempt,) = RecordStore(storage).get(message.message_id)["attempts"]
    assert attempt["outcome"] == "failed" and attempt["error"] == "Unprintable: <str() failed: ValueError>"
    (copy, delay), *_ = broker.published
    assert copy.options["job"]["failures"] == 1 and delay and not message.failed


@pytest.mark.parametrize("breaks", ["_decide", "_notify"])
def test_an_unforeseen_error_while_ending_an_attempt_rejects_a_job_not_yet_sent_on(tmp_path, monkeypatch, breaks):
    # Given a running job, and a node where ending an attempt breaks before (or after) the job is sent on
    lifecycle, broker = make(LocalStorage(tmp_path))
    message = MessageProxy(Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={}))
    lifecycle.before_process_message(broker, message)
    monkeypatch.setattr(lifecycle.runner, breaks, lambda *a, **k: (_ for _ in ()).throw(OSError("a bug")))

    # When its actor fails, nothing escapes the hook (Dramatiq would log it and ack the message away)
    lifecycle.after_process_message(broker, message, exception=RuntimeError("boom"))

    # Then a job with no successor is rejected (the broker dead-letters it); one already sent on is not
    assert message.failed is (breaks == "_decide")
    assert len(broker.published) == (breaks == "_notify")


def test_dramatiqs_names_for_retries_backoff_time_and_age_limits_are_read_in_burrows_units(tmp_path):
    # Given actors written for Dramatiq (its Retries, TimeLimit and AgeLimit options, times in milliseconds)
    lifecycle, broker = make(LocalStorage(tmp_path))
    options = {"max_retries": 1, "min_backoff": 2_000, "max_backoff": 4_000, "time_limit": 30_000, "max_age": 60_000}
    for name, extra in (("ported", {}), ("both", {"max_failures": 5, "max_run_s": 7})):
        actor = dramatiq.Actor(lambda: None, broker=broker, actor_name=name, queue_name="q", priority=0, options={})
        actor.options.update(options, **extra)  # (as the decorator would, once the node declares them)
    now = 1_700_000_000.0

    def settings(actor_name: str, **message_options):
        message = Message(
            queue_name="q",
            actor_name=actor_name,
            args=(),
            kwargs={},
            options=message_options,
            message_timestamp=now * 1000,
        )
        return lifecycle.settings(broker, message)

    # Then the lifecycle applies them as its own options
    ported = settings("ported")
    assert (ported.limits.max_failures, ported.limits.min_backoff_s, ported.limits.max_backoff_s) == (1, 2.0, 4.0)
    assert ported.max_run_s == 30.0 and ported.expires_at == now + 60
    # Burrow's name wins beside Dramatiq's, and a message's option (send_with_options) beside the actor's
    both = settings("both")
    assert (both.limits.max_failures, both.max_run_s) == (5, 7.0)
    assert settings("ported", max_retries=0).limits.max_failures == 0
    # and a malformed one is named as given
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(
            broker,
            MessageProxy(
                Message(queue_name="q", actor_name="ported", args=(), kwargs={}, options={"time_limit": "soon"})
            ),
        )
    assert broker.set_aside[-1][0] == "malformed" and broker.set_aside[-1][1].startswith("options.time_limit")


def test_an_exception_the_actor_declares_in_throws_is_not_retried(tmp_path):
    # Given an actor written for Dramatiq that expects KeyError (its Retries' `throws`)
    storage = LocalStorage(tmp_path)
    lifecycle, broker = make(storage)
    actor = dramatiq.Actor(lambda: None, broker=broker, actor_name="lookup", queue_name="q", priority=0, options={})
    actor.options["throws"] = (KeyError,)

    def run(exception: BaseException) -> MessageProxy:
        message = MessageProxy(Message(queue_name="q", actor_name="lookup", args=(), kwargs={}, options={}))
        lifecycle.before_process_message(broker, message)
        lifecycle.after_process_message(broker, message, exception=exception)
        return message

    # When a job raises it, the job is set aside once, record failed, naming it, and nothing is re-published
    expected = run(KeyError("no such user"))
    record = RecordStore(storage).get(expected.message_id)
    assert record["status"] == "failed" and broker.published == []
    assert broker.set_aside == [("malformed", "KeyError: 'no such user' (in the actor's throws: not retried)")]
    # while any other exception is retried as usual
    run(RuntimeError("flaky"))
    assert [copy.options["job"]["failures"] for copy, _ in broker.published] == [1]
    # and a throws that names no exception class is named as malformed
    actor.options["throws"] = "KeyError"
    lifecycle._per_actor.clear()
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(
            broker, MessageProxy(Message(queue_name="q", actor_name="lookup", args=(), kwargs={}, options={}))
        )
    assert "throws must be exception classes" in broker.set_aside[-1][1]


def test_a_job_whose_storage_fails_under_it_is_handed_back_not_failed_and_the_worker_pauses(tmp_path):
    # Given a running job on a worker with an intake
    from node.broker.intake import Intake
    from node.errors import StorageUnavailable

    storage = LocalStorage(tmp_path)
    lifecycle, broker = make(storage)
    broker.intake = Intake()
    message = MessageProxy(Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={}))
    lifecycle.before_process_message(broker, message)

    # When its store fails under it (an artifact that could not be stored: a full disk, revoked keys)
    lifecycle.after_process_message(broker, message, exception=StorageUnavailable("'k': database or disk is full"))

    # Then the attempt is an interruption, not a failure: handed back, no failure counted
    (attempt,) = RecordStore(storage).get(message.message_id)["attempts"]
    assert attempt["outcome"] == "interrupted"
    (copy, _), *_ = broker.published
    assert copy.options["job"].get("failures", 0) == 0 and copy.options["job"]["interruptions"] == 1
    # and the worker takes no job until a write works again (its end record was written: it did)
    assert not broker.intake.closed


def test_a_failed_write_is_mended_only_by_a_write_that_works():
    from node.broker.intake import Intake

    intake = Intake()
    intake.failed(OSError("disk full"), writing=True)
    intake.worked()  # an arrival read works on a full disk too
    assert intake.closed
    intake.worked(writing=True)
    assert not intake.closed
    intake.failed(OSError("unreachable"))  # a failed read is mended by a read
    intake.worked()
    assert not intake.closed
