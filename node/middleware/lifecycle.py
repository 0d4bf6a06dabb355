"""The job lifecycle middleware: records, resume, idempotent completion, TTL, cooldown retries, hand-back."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq import Message
from dramatiq.middleware import SkipMessage

from .. import _running, job_messages, policy
from .. import job as job_api
from ..job_options import InvalidJob, JobOptions
from ..job_record import (
    InvalidTransition,
    JobStatus,
    RecordStore,
    begin_attempt,
    end_attempt,
    mark_killed,
    set_status,
    status_of,
)
from ..policy import Action, Outcome
from ..progress import ProgressReporter
from ..reservation import Reservation
from ..storage import Storage

logger = logging.getLogger(__name__)

#: Exit code of a worker process killed because its job overran its reservation and ignored the stop.
EXIT_KILLED_OVERRUN = 4
#: Delay before a job that could not even start (storage or broker trouble) is offered again.
INFRA_RETRY_S = 30.0

_STATUS_AFTER = {
    Action.RETRY: JobStatus.QUEUED,
    Action.HAND_BACK: JobStatus.QUEUED,
    Action.GIVE_UP: JobStatus.FAILED,
    Action.EXPIRE: JobStatus.EXPIRED,
    Action.DROP: None,  # a fenced attempt: the newer attempt owns the status
}


@dataclass
class _Attempt:
    options: JobOptions
    number: int
    context: job_api.JobContext
    token: Any
    expires_at: float | None
    timer: Reservation | None
    progress: ProgressReporter


class JobLifecycle(dramatiq.Middleware):
    """Makes every actor safe on machines that vanish.

    Before a message runs: malformed job options → dead-lettered (``malformed``); past its expiry →
    dead-lettered (``expired``), never started; record already *succeeded* → acked without running; otherwise
    a new attempt is recorded and the actor gets its job context (``node.job.current_job()``), whose
    ``checkpoint.load()`` resumes from the newest checkpoint.

    After it runs: success is recorded before the ack. A failure is re-published after an exponential
    cooldown with jitter (broker wait queues); once ``max_failures`` is spent the job goes, with its
    history, to ``failed-jobs``. A hand-back (preemption) flushes the final checkpoint and re-publishes at
    once, counted as an interruption. ``max_run_s`` asks the job to stop and counts as a failure.

    Options (message option → actor option → default here): ``ttl_s``, ``max_failures``,
    ``max_interruptions``, ``min_backoff_s``, ``max_backoff_s``, ``max_run_s``, ``checkpoint_every_s``.

    Parameters:
        storage: Where records, checkpoints and artifacts live.
        node_id: This node's id (recorded per attempt; crash vs lost).
        slot_id: This worker's slot (recorded per attempt).
        handback_flush_s: How long an ending attempt waits for its last checkpoint upload.
        progress_every_s: How often a running job's progress is written to its record.
        hard_stop_s: How long a job past ``max_run_s`` may ignore ``should_stop`` before its process is killed
            (``None``: never). Only a process exit frees a GPU held by a hung C/CUDA call.
        clock: Wall clock (Unix seconds).
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
        progress_every_s: float = 10.0,
        hard_stop_s: float | None = 30.0,
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
        self.progress_every_s = progress_every_s
        self.hard_stop_s = hard_stop_s
        self.clock = clock
        self.rng = rng or random.Random()
        self._attempts: dict[str, _Attempt] = {}

    def option(self, broker: dramatiq.Broker, message: Message, name: str) -> Any:
        """An option's value: the message's, else the actor's, else this middleware's default."""
        if message.options.get(name) is not None:
            return message.options[name]
        value = broker.get_actor(message.actor_name).options.get(name)
        return self.defaults[name] if value is None else value

    # -- before -------------------------------------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Message) -> None:
        try:
            self._start(broker, message)
        except SkipMessage:
            raise
        except Exception as e:
            # Storage or broker trouble before the job could start. Dramatiq acks a message whose middleware
            # raised, which would lose the job: offer it again later (not the job's fault, not counted).
            logger.exception("Job %s could not start; offering it again in %.0fs.", message.message_id, INFRA_RETRY_S)
            try:
                job_messages.retry_later(broker, message, None, INFRA_RETRY_S)
            except Exception:
                logger.exception(
                    "Could not re-offer job %s; rejecting it to the dead-letter queue.", message.message_id
                )
                message.fail()
            raise SkipMessage(f"could not start: {e}") from None

    def _start(self, broker: dramatiq.Broker, message: Message) -> None:
        try:
            options = JobOptions.from_options(message.options, message_id=message.message_id)
        except InvalidJob as e:
            logger.error("Dead-lettering message %s: malformed job options: %s", message.message_id, e)
            broker.dead_letter(message.queue_name, message.encode(), reason="malformed", detail=str(e))
            raise SkipMessage(str(e)) from None

        now = self.clock()
        ttl_s = self.option(broker, message, "ttl_s")
        expires_at = policy.expiry(options.expires_at, message.message_timestamp / 1000, ttl_s)
        if policy.is_expired(expires_at, now):
            self._expire(broker, message, options)
            raise SkipMessage("expired")

        try:
            started = self._begin(message, options, now)
        except InvalidTransition as e:
            # The record is final (expired, quarantined): this message is a stale copy; keep it, but aside.
            logger.error("Dead-lettering a stale message for job %s: %s", options.job_id, e)
            job_messages.dead_letter(broker, message, options, reason="stale", detail=str(e))
            raise SkipMessage(str(e)) from None
        if started is None:
            logger.info("Job %s already succeeded; acking the redelivered message without running it.", options.job_id)
            raise SkipMessage("already succeeded")
        number, closed = started
        if closed is not None:  # an earlier attempt died without a word: count it, maybe give up now
            options = _counted(options, closed)
            decision = self._decide(broker, message, options, closed, expires_at)
            if decision.action is Action.GIVE_UP:
                self._finish(broker, message, options, number, Outcome.FAILED, decision, decision.reason, None)
                raise SkipMessage("gave up")
        self._run_attempt(broker, message, options, number, expires_at)

    def _begin(self, message: Message, options: JobOptions, now: float) -> tuple[int, Outcome | None] | None:
        _, started = self.records.update(
            options.job_id,
            lambda record: begin_attempt(
                record,
                node=self.node_id,
                slot=self.slot_id,
                pid=os.getpid(),
                message_id=message.message_id,
                delivery_count=getattr(message, "delivery_count", 0),
                now=now,
            ),
            actor=message.actor_name,
            queue=message.queue_name,
        )
        return started

    def _run_attempt(
        self, broker: dramatiq.Broker, message: Message, options: JobOptions, number: int, expires_at: float | None
    ) -> None:
        context = job_api.JobContext(
            options=options,
            attempt=number,
            checkpoint=job_api.JobCheckpoint(
                self.storage, options.job_id, number, every_s=float(self.option(broker, message, "checkpoint_every_s"))
            ),
            artifacts=job_api.Artifacts(self.storage, options.job_id),
        )
        context.checkpoint.on_fenced = lambda: context.request_stop("fenced")
        timer = None
        max_run_s = self.option(broker, message, "max_run_s")
        if max_run_s is not None:
            timer = Reservation(float(max_run_s), self.hard_stop_s, context, on_overrun=self._kill_overrun)
            timer.start()
        progress = ProgressReporter(self.records, context, every_s=self.progress_every_s)
        progress.start()
        token = _running.enter(context)
        self._attempts[message.message_id] = _Attempt(options, number, context, token, expires_at, timer, progress)
        logger.info("Job %s attempt %d started (%s).", options.job_id, number, message.actor_name)

    # -- after --------------------------------------------------------------------------------------------

    def after_process_message(
        self, broker: dramatiq.Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        attempt = self._attempts.pop(message.message_id, None)
        if attempt is None:
            return
        context = attempt.context
        _running.leave(context, attempt.token)
        attempt.progress.stop()
        if attempt.timer is not None:
            attempt.timer.cancel()
        try:
            if exception is None:
                self._record_end(
                    attempt.options.job_id, attempt.number, Outcome.SUCCEEDED, None, JobStatus.SUCCEEDED, None, context
                )
                logger.info("Job %s attempt %d succeeded.", attempt.options.job_id, attempt.number)
            else:
                self._after_unsuccessful(broker, message, attempt, exception)
        finally:
            context.checkpoint.close()

    def after_skip_message(self, broker: dramatiq.Broker, message: Message) -> None:
        attempt = self._attempts.pop(message.message_id, None)
        if attempt is not None:  # a later middleware skipped it after the attempt began
            _running.leave(attempt.context, attempt.token)
            attempt.progress.stop()
            attempt.context.checkpoint.close()
            self._record_end(
                attempt.options.job_id, attempt.number, Outcome.LOST, "skipped", JobStatus.QUEUED, None, None
            )

    def _after_unsuccessful(
        self, broker: dramatiq.Broker, message: Message, attempt: _Attempt, exception: BaseException
    ) -> None:
        context = attempt.context
        error = f"{type(exception).__name__}: {exception}"[:2000]
        if isinstance(exception, InvalidJob):
            # The actor says its input is malformed: retrying cannot help, and the message must not vanish.
            decision = policy.Decision(Action.GIVE_UP, reason=f"malformed input: {exception}")
            self._finish(
                broker,
                message,
                attempt.options,
                attempt.number,
                Outcome.FAILED,
                decision,
                error,
                context,
                malformed=True,
            )
            return
        outcome = _outcome(context, exception)
        if outcome is not Outcome.FENCED and not context.checkpoint.flush(self.handback_flush_s):
            logger.warning(
                "Job %s: last checkpoint not stored within %.0fs.", attempt.options.job_id, self.handback_flush_s
            )
        options = _counted(attempt.options, outcome)
        decision = self._decide(broker, message, options, outcome, attempt.expires_at)
        self._finish(broker, message, options, attempt.number, outcome, decision, error, context)

    def _decide(
        self, broker: dramatiq.Broker, message: Message, options: JobOptions, outcome: Outcome, expires_at: float | None
    ) -> policy.Decision:
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
            now=self.clock(),
            cooldown_s=cooldown,
        )

    def _finish(
        self,
        broker: dramatiq.Broker,
        message: Message,
        options: JobOptions,
        number: int,
        outcome: Outcome,
        decision: policy.Decision,
        error: str | None,
        context: job_api.JobContext | None,
        *,
        malformed: bool = False,
    ) -> None:
        """Record how the attempt ended, then send the job where the decision says (record first: a hand-back
        is picked up within milliseconds, and the next attempt must find this one closed)."""
        try:
            record = self._record_end(
                options.job_id, number, outcome, error, _STATUS_AFTER[decision.action], decision.reason, context
            )
        except Exception:
            logger.exception("Could not record the end of job %s attempt %d.", options.job_id, number)
            record = None
        logger.info(
            "Job %s attempt %d %s: %s (%s).",
            options.job_id,
            number,
            outcome.value,
            decision.action.value,
            decision.reason,
        )
        try:
            if malformed:
                job_messages.dead_letter(broker, message, options, reason="malformed", detail=decision.reason)
            elif decision.action is Action.RETRY:
                job_messages.retry_later(broker, message, options, decision.delay_s)
            elif decision.action is Action.HAND_BACK:
                job_messages.hand_back(broker, message, options, self.node_id)
            elif decision.action is Action.EXPIRE:
                job_messages.dead_letter(broker, message, options, reason="expired", detail=decision.reason)
            elif decision.action is Action.GIVE_UP:
                attempts = (record or {}).get("attempts", [])
                job_messages.report_failed(
                    broker,
                    message,
                    options,
                    reason=decision.reason,
                    error=error,
                    node_id=self.node_id,
                    attempts=attempts,
                )
                logger.warning(
                    "Job %s gave up (%s); sent to %r.", options.job_id, decision.reason, job_messages.FAILED_JOBS_QUEUE
                )
        except Exception:
            # Never ack a job without a successor: reject the message so the broker dead-letters it.
            logger.exception("Could not re-publish job %s; dead-lettering the message instead.", options.job_id)
            message.fail()

    def _kill_overrun(self, context: job_api.JobContext) -> None:
        """The job ignored ``should_stop`` past its reservation: record it and end the process.

        The broker then redelivers the job (spending one delivery, so a job that always hangs ends in the
        dead-letter queue); the supervisor restarts the worker.
        """
        logger.error(
            "Job %s attempt %d ignored its reservation stop for %ss; killing its worker process.",
            context.job_id,
            context.attempt,
            self.hard_stop_s,
        )

        def killed(record: dict[str, Any]) -> None:
            end_attempt(
                record,
                context.attempt,
                outcome=Outcome.TIMED_OUT.value,
                error=f"killed: still running {self.hard_stop_s}s after its max_run_s",
                now=self.clock(),
                checkpoint=context.checkpoint.uploaded,
                progress=context.progress_value,
            )
            mark_killed(record, context.attempt)

        try:
            self.records.update_patiently(context.job_id, killed, patience_s=5)
        except Exception:
            logger.exception("Could not record the kill of job %s.", context.job_id)
        finally:
            logging.shutdown()
            os._exit(EXIT_KILLED_OVERRUN)

    # -- records ------------------------------------------------------------------------------------------

    def _record_end(
        self,
        job_id: str,
        number: int,
        outcome: Outcome,
        error: str | None,
        status: JobStatus | None,
        reason: str | None,
        context: job_api.JobContext | None,
    ) -> dict[str, Any]:
        def end(record: dict[str, Any]) -> None:
            end_attempt(
                record,
                number,
                outcome=outcome.value,
                error=error,
                now=self.clock(),
                checkpoint=context.checkpoint.uploaded if context else None,
                progress=context.progress_value if context else None,
                artifacts=context.artifacts.keys if context else None,
            )
            if status is not None:
                set_status(record, status, reason=reason)

        return self.records.update_patiently(job_id, end)[0]

    def _expire(self, broker: dramatiq.Broker, message: Message, options: JobOptions) -> None:
        logger.warning("Job %s expired before it started; dead-lettering it.", options.job_id)
        job_messages.dead_letter(broker, message, options, reason="expired", detail="expired before it started")

        def expire(record: dict[str, Any]) -> None:
            if status_of(record) is not JobStatus.SUCCEEDED:
                set_status(record, JobStatus.EXPIRED, reason="expired before it started")

        try:
            self.records.update_patiently(options.job_id, expire, patience_s=30)
        except Exception:
            logger.exception("Could not mark job %s expired in its record.", options.job_id)


def _outcome(context: job_api.JobContext, exception: BaseException) -> Outcome:
    """How an attempt that raised ended, judged by why it was asked to stop (if it was)."""
    if context.stop_reason == "fenced" or context.checkpoint.fenced:
        return Outcome.FENCED
    if context.stop_reason == "timeout":
        return Outcome.TIMED_OUT
    if isinstance(exception, job_api.Preempted) or context.stop_reason == "preempted":
        return Outcome.INTERRUPTED
    return Outcome.FAILED


def _counted(options: JobOptions, outcome: Outcome) -> JobOptions:
    if outcome in policy.FAILURE_OUTCOMES:
        return options.replace(failures=options.failures + 1)
    if outcome in policy.INTERRUPTION_OUTCOMES:
        return options.replace(interruptions=options.interruptions + 1)
    return options
