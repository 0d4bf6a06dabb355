"""The job lifecycle: records, resume, idempotent completion, TTL, retries with cooldown, hand-back."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq import Message
from dramatiq.middleware import SkipMessage

from .. import job as job_api
from .. import policy
from ..job_options import OPTION_KEY, InvalidJob, JobOptions
from ..job_record import JobStatus, RecordStore, set_status, status_of
from ..policy import Action, Decision, Outcome
from ..storage import Storage

logger = logging.getLogger(__name__)

FAILED_JOBS_QUEUE = "failed-jobs"
FAILED_JOBS_ACTOR = "route_failed_job"
#: Delay before a job that could not even start (storage or broker trouble) is offered again.
INFRA_RETRY_S = 30.0


@dataclass
class _Attempt:
    options: JobOptions
    number: int
    context: job_api.JobContext
    token: Any
    expires_at: float | None
    timer: threading.Timer | None


class JobLifecycle(dramatiq.Middleware):
    """Makes every actor safe on machines that vanish.

    Before a message runs: its job options are validated (malformed → dead-lettered, reason ``malformed``);
    an expired job is dead-lettered with reason ``expired`` and never started; a job whose record already
    says *succeeded* is acked without running again; an earlier attempt that never ended is closed as
    *crashed* (same node) or *lost* (another node); the attempt is recorded and the actor gets its job
    context, resuming from the latest checkpoint.

    After it runs: success is recorded (artifacts were stored by the actor) before the ack. A failure is
    retried after an exponential cooldown with jitter, through the broker's wait queues; once
    ``max_failures`` is spent the job goes, with its history, to the ``failed-jobs`` queue. A hand-back
    (preemption) flushes the checkpoint and re-publishes the job at once, counted as an interruption.

    Options (message option → actor option → this default): ``ttl_s``, ``max_failures``,
    ``max_interruptions``, ``min_backoff_s``, ``max_backoff_s``, ``max_run_s``, ``checkpoint_every_s``.

    Parameters:
        storage: Where records, checkpoints and artifacts live.
        node_id: This node's id (recorded per attempt).
        slot_id: This worker's slot (recorded per attempt).
        handback_flush_s: How long a hand-back waits for the final checkpoint upload.
        rng: Random source for backoff jitter.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        node_id: str,
        slot_id: str = "",
        ttl_s: float | None = None,
        max_failures: int = 3,
        max_interruptions: int = 20,
        min_backoff_s: float = 5.0,
        max_backoff_s: float = 600.0,
        max_run_s: float | None = None,
        checkpoint_every_s: float = 60.0,
        handback_flush_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.storage = storage
        self.records = RecordStore(storage)
        self.node_id = node_id
        self.slot_id = slot_id
        self.defaults = {
            "ttl_s": ttl_s,
            "max_failures": max_failures,
            "max_interruptions": max_interruptions,
            "min_backoff_s": min_backoff_s,
            "max_backoff_s": max_backoff_s,
            "max_run_s": max_run_s,
            "checkpoint_every_s": checkpoint_every_s,
        }
        self.handback_flush_s = handback_flush_s
        self.clock = clock
        self.rng = rng or random.Random()
        self._attempts: dict[str, _Attempt] = {}

    def option(self, broker: dramatiq.Broker, message: Message, name: str) -> Any:
        if message.options.get(name) is not None:
            return message.options[name]
        actor = broker.get_actor(message.actor_name)
        if actor.options.get(name) is not None:
            return actor.options[name]
        return self.defaults[name]

    # -- before -------------------------------------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Message) -> None:
        try:
            self._before(broker, message)
        except SkipMessage:
            raise
        except Exception as e:
            # Storage or broker trouble before the job could start. Dramatiq would ack the message after an
            # exception here, losing the job: put it back for later instead (not the job's fault, not counted).
            logger.exception("Job %s could not start; putting it back in %.0fs.", message.message_id, INFRA_RETRY_S)
            try:
                broker.enqueue(self._next_message(message, None), delay=int(INFRA_RETRY_S * 1000))
            except Exception:
                logger.exception(
                    "Could not put job %s back; rejecting it to the dead-letter queue.", message.message_id
                )
                message.fail()
            raise SkipMessage(f"could not start: {e}") from None

    def _before(self, broker: dramatiq.Broker, message: Message) -> None:
        try:
            options = JobOptions.from_options(message.options, message_id=message.message_id)
        except InvalidJob as e:
            logger.error("Dead-lettering message %s: malformed job options: %s", message.message_id, e)
            broker.dead_letter(message.queue_name, message.encode(), reason="malformed", detail=str(e))
            raise SkipMessage(str(e)) from None

        now = self.clock()
        expires_at = policy.expiry(
            options.expires_at, message.message_timestamp / 1000, self.option(broker, message, "ttl_s")
        )
        if policy.is_expired(expires_at, now):
            self._expire(broker, message, options, "expired before it started")
            raise SkipMessage("expired")

        started = self._start_attempt(message, options, now)
        if started is None:
            logger.info("Job %s already succeeded; acking redelivered message without running it.", options.job_id)
            raise SkipMessage("already succeeded")
        number, closed = started
        if closed is not None:
            options = self._count(options, closed)
            if self._give_up_before_start(broker, message, options, closed, expires_at, now):
                raise SkipMessage("gave up")

        context = job_api.JobContext(
            options=options,
            attempt=number,
            checkpoint=job_api.JobCheckpoint(
                self.storage,
                options.job_id,
                number,
                every_s=float(self.option(broker, message, "checkpoint_every_s")),
            ),
            artifacts=job_api.Artifacts(self.storage, options.job_id),
        )
        context.checkpoint.on_fenced = lambda: context.request_stop("fenced")
        timer = None
        max_run_s = self.option(broker, message, "max_run_s")
        if max_run_s is not None:
            timer = threading.Timer(float(max_run_s), context.request_stop, ("timeout",))
            timer.daemon = True
            timer.start()
        token = job_api._enter(context)
        self._attempts[message.message_id] = _Attempt(options, number, context, token, expires_at, timer)
        logger.info("Job %s attempt %d started (%s).", options.job_id, number, message.actor_name)

    def _start_attempt(self, message: Message, options: JobOptions, now: float) -> tuple[int, Outcome | None] | None:
        def start(record: dict[str, Any]) -> tuple[int, Outcome | None] | None:
            if status_of(record) is JobStatus.SUCCEEDED:
                return None
            closed = None
            attempts = record["attempts"]
            if attempts and attempts[-1]["outcome"] is None:
                last = attempts[-1]
                closed = Outcome.CRASHED if last["node"] == self.node_id else Outcome.LOST
                last.update(
                    outcome=closed.value, ended_at=now, error="the attempt ended without a word (process or node died)"
                )
            attempts.append(
                {
                    "number": len(attempts) + 1,
                    "node": self.node_id,
                    "slot": self.slot_id,
                    "pid": os.getpid(),
                    "message_id": message.message_id,
                    "delivery_count": getattr(message, "delivery_count", 0),
                    "started_at": now,
                    "ended_at": None,
                    "outcome": None,
                    "error": None,
                }
            )
            set_status(record, JobStatus.RUNNING)
            return len(attempts), closed

        _, started = self.records.update(options.job_id, start, actor=message.actor_name, queue=message.queue_name)
        return started

    def _count(self, options: JobOptions, outcome: Outcome) -> JobOptions:
        if outcome in policy.FAILURE_OUTCOMES:
            return options.replace(failures=options.failures + 1)
        if outcome in policy.INTERRUPTION_OUTCOMES:
            return options.replace(interruptions=options.interruptions + 1)
        return options

    def _give_up_before_start(
        self,
        broker: dramatiq.Broker,
        message: Message,
        options: JobOptions,
        closed: Outcome,
        expires_at: float | None,
        now: float,
    ) -> bool:
        decision = self._decide(broker, message, options, closed, expires_at, now)
        if decision.action is not Action.GIVE_UP:
            return False
        self._finish_record(options.job_id, "gave_up", decision.reason, JobStatus.FAILED, None)
        self._publish_failed(broker, message, options, decision.reason)
        return True

    # -- after --------------------------------------------------------------------------------------------

    def after_process_message(
        self, broker: dramatiq.Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        attempt = self._attempts.pop(message.message_id, None)
        if attempt is None:
            return
        context = attempt.context
        job_api._leave(context, attempt.token)
        if attempt.timer is not None:
            attempt.timer.cancel()
        try:
            if exception is None:
                self._succeed(attempt)
            else:
                self._end_unsuccessfully(broker, message, attempt, exception)
        finally:
            context.checkpoint.close()

    def after_skip_message(self, broker: dramatiq.Broker, message: Message) -> None:
        attempt = self._attempts.pop(message.message_id, None)
        if attempt is not None:  # a later middleware skipped it after we started the attempt
            job_api._leave(attempt.context, attempt.token)
            attempt.context.checkpoint.close()
            self._finish_record(attempt.options.job_id, "skipped", "skipped by middleware", JobStatus.QUEUED, None)

    def _succeed(self, attempt: _Attempt) -> None:
        context = attempt.context

        def succeed(record: dict[str, Any]) -> None:
            self._close_attempt(record, attempt.number, Outcome.SUCCEEDED.value, None, context)
            record["artifacts"].update(context.artifacts.keys)
            set_status(record, JobStatus.SUCCEEDED, reason=None)

        self._update_with_patience(attempt.options.job_id, succeed)
        logger.info("Job %s attempt %d succeeded.", attempt.options.job_id, attempt.number)

    def _end_unsuccessfully(
        self, broker: dramatiq.Broker, message: Message, attempt: _Attempt, exception: BaseException
    ) -> None:
        context = attempt.context
        if context.stop_reason == "fenced" or context.checkpoint.fenced:
            outcome = Outcome.FENCED
        elif context.stop_reason == "timeout":
            outcome = Outcome.TIMED_OUT
        elif isinstance(exception, job_api.Preempted) or context.stop_reason == "preempted":
            outcome = Outcome.INTERRUPTED
        else:
            outcome = Outcome.FAILED
        if outcome is not Outcome.FENCED and not context.checkpoint.flush(self.handback_flush_s):
            logger.warning(
                "Job %s: last checkpoint not stored in %.0fs.", attempt.options.job_id, self.handback_flush_s
            )
        options = self._count(attempt.options, outcome)
        if isinstance(exception, InvalidJob):
            # The actor says its input is malformed: retrying cannot help, and the message must not vanish.
            self._reject_malformed(broker, message, attempt, exception)
            return
        decision = self._decide(broker, message, options, outcome, attempt.expires_at, self.clock())
        error = f"{type(exception).__name__}: {exception}"[:2000]
        status = {
            Action.RETRY: JobStatus.QUEUED,
            Action.HAND_BACK: JobStatus.QUEUED,
            Action.GIVE_UP: JobStatus.FAILED,
            Action.EXPIRE: JobStatus.EXPIRED,
            Action.DROP: None,
        }[decision.action]

        def close(record: dict[str, Any]) -> None:
            self._close_attempt(record, attempt.number, outcome.value, error, context)
            if status is not None:
                set_status(record, status, reason=decision.reason)

        try:
            self._update_with_patience(attempt.options.job_id, close)
        except Exception:
            logger.exception("Could not record the end of job %s attempt %d.", options.job_id, attempt.number)
        logger.info(
            "Job %s attempt %d %s: %s (%s).",
            options.job_id,
            attempt.number,
            outcome.value,
            decision.action.value,
            decision.reason,
        )

        try:
            if decision.action is Action.RETRY:
                broker.enqueue(self._next_message(message, options), delay=int(decision.delay_s * 1000))
            elif decision.action is Action.HAND_BACK:
                broker.enqueue(
                    self._next_message(
                        message, options.replace(avoid_nodes=tuple(dict.fromkeys((*options.avoid_nodes, self.node_id))))
                    )
                )
            elif decision.action is Action.GIVE_UP:
                self._publish_failed(broker, message, options, decision.reason, error)
            elif decision.action is Action.EXPIRE:
                broker.dead_letter(
                    message.queue_name,
                    self._next_message(message, options).encode(),
                    reason="expired",
                    detail=decision.reason,
                )
        except Exception:
            # The job must not be acked without a successor: reject it so the broker dead-letters it.
            logger.exception("Could not re-publish job %s; dead-lettering the message instead.", options.job_id)
            message.fail()

    def _reject_malformed(
        self, broker: dramatiq.Broker, message: Message, attempt: _Attempt, exception: InvalidJob
    ) -> None:
        detail = str(exception)[:2000]
        logger.error("Job %s has malformed input (%s); dead-lettering it.", attempt.options.job_id, detail)

        def close(record: dict[str, Any]) -> None:
            self._close_attempt(record, attempt.number, Outcome.FAILED.value, f"InvalidJob: {detail}", attempt.context)
            set_status(record, JobStatus.FAILED, reason=f"malformed input: {detail}")

        try:
            self._update_with_patience(attempt.options.job_id, close, patience_s=30)
        except Exception:
            logger.exception("Could not record the rejection of job %s.", attempt.options.job_id)
        try:
            broker.dead_letter(message.queue_name, message.encode(), reason="malformed", detail=detail)
        except Exception:
            logger.exception("Could not dead-letter job %s with a reason; rejecting it.", attempt.options.job_id)
            message.fail()

    def _decide(
        self,
        broker: dramatiq.Broker,
        message: Message,
        options: JobOptions,
        outcome: Outcome,
        expires_at: float | None,
        now: float,
    ) -> Decision:
        cooldown = policy.backoff_s(
            options.failures,
            float(self.option(broker, message, "min_backoff_s")),
            float(self.option(broker, message, "max_backoff_s")),
            self.rng,
        )
        return policy.after_attempt(
            outcome,
            failures=options.failures,
            interruptions=options.interruptions,
            max_failures=int(self.option(broker, message, "max_failures")),
            max_interruptions=int(self.option(broker, message, "max_interruptions")),
            expires_at=expires_at,
            now=now,
            cooldown_s=cooldown,
        )

    # -- helpers ------------------------------------------------------------------------------------------

    def _close_attempt(
        self, record: dict[str, Any], number: int, outcome: str, error: str | None, context: job_api.JobContext | None
    ) -> None:
        for entry in record["attempts"]:
            if entry["number"] == number and entry["outcome"] is None:
                entry.update(outcome=outcome, ended_at=self.clock(), error=error)
                if context is not None:
                    entry["checkpoint"] = context.checkpoint.uploaded  # this attempt's last stored checkpoint
        if context is not None:
            if context.checkpoint.uploaded is not None:
                record["checkpoint"] = context.checkpoint.uploaded
            if context.progress_value is not None:
                record["progress"] = context.progress_value

    def _finish_record(
        self, job_id: str, outcome: str, reason: str, status: JobStatus | None, context: job_api.JobContext | None
    ) -> None:
        def finish(record: dict[str, Any]) -> None:
            if record["attempts"]:
                self._close_attempt(record, record["attempts"][-1]["number"], outcome, reason, context)
            if status is not None:
                set_status(record, status, reason=reason)

        try:
            self._update_with_patience(job_id, finish)
        except Exception:
            logger.exception("Could not update the record of job %s.", job_id)

    def _update_with_patience(self, job_id: str, mutate: Callable[[dict[str, Any]], Any], patience_s: float = 120.0):
        # The job's outcome must reach its record before the ack: wait out a storage outage (bounded).
        deadline = time.monotonic() + patience_s
        pause = 0.5
        while True:
            try:
                return self.records.update(job_id, mutate)
            except Exception as e:
                if time.monotonic() + pause > deadline:
                    raise
                logger.warning("Record of job %s not written (%s); retrying in %.1fs.", job_id, e, pause)
                time.sleep(pause)
                pause = min(10.0, pause * 2)

    def _expire(self, broker: dramatiq.Broker, message: Message, options: JobOptions, reason: str) -> None:
        logger.warning("Job %s expired: %s; dead-lettering it.", options.job_id, reason)
        broker.dead_letter(message.queue_name, message.encode(), reason="expired", detail=reason)

        def expire(record: dict[str, Any]) -> None:
            if status_of(record) is not JobStatus.SUCCEEDED:
                set_status(record, JobStatus.EXPIRED, reason=reason)

        try:
            self._update_with_patience(options.job_id, expire, patience_s=30)
        except Exception:
            logger.exception("Could not mark job %s expired in its record.", options.job_id)

    @staticmethod
    def _next_message(message: Message, options: JobOptions | None) -> Message:
        # Same message id and body, updated counters; Dramatiq's own retry bookkeeping is dropped.
        original = message._message if hasattr(message, "_message") else message
        kept = {k: v for k, v in original.options.items() if k not in ("retries", "traceback", "eta")}
        if options is not None:
            kept[OPTION_KEY] = options.to_options()
        return dataclasses.replace(original, options=kept)

    def _publish_failed(
        self, broker: dramatiq.Broker, message: Message, options: JobOptions, reason: str, error: str | None = None
    ) -> None:
        """Publish the job, with its history, to the durable failed-jobs queue for the cloud-side router."""
        record = None
        try:
            record = self.records.get(options.job_id)
        except Exception:
            logger.exception("Could not read the record of job %s for its failure report.", options.job_id)
        job_message = self._next_message(message, options)
        report = Message(
            queue_name=FAILED_JOBS_QUEUE,
            actor_name=FAILED_JOBS_ACTOR,
            args=(),
            kwargs={
                "job": job_message.asdict(),
                "reason": reason,
                "error": error,
                "node": self.node_id,
                "attempts": (record or {}).get("attempts", []),
            },
            # No job options: the report is a job of the router's, not another attempt of this job.
            options={},
        )
        broker.send_elsewhere(report)
        logger.warning("Job %s gave up (%s); sent to %r.", options.job_id, reason, FAILED_JOBS_QUEUE)
