"""The job lifecycle middleware: Dramatiq's hooks, handed to ``node.attempt.runner``."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq import Message
from dramatiq.middleware import SkipMessage

from ..attempt.journal import Journal
from ..attempt.lease import LeaseTiming
from ..attempt.policy import Limits, expiry
from ..attempt.runner import AttemptRunner, JobSettings
from ..contract.envelope import check_fields
from ..contract.job_options import LIFECYCLE_OPTIONS, lifecycle_option
from ..contract.queues import DeadLetterReason
from ..errors import MalformedMessage
from ..storage import Storage

logger = logging.getLogger(__name__)


class JobLifecycle(dramatiq.Middleware):
    """Makes every actor safe on machines that vanish: records, resume, TTL, retries with cooldown, hand-back.

    Before a message runs, ``policy.decide`` says whether it runs here and now; otherwise it is acked after
    being sent on (retried later, handed back, dead-lettered, reported to ``failed-jobs``). After it ran, the
    same function decides its fate, the record is written, and the job is sent on. See
    ``node.attempt.runner`` for the order of things and ``node.attempt.policy`` for the rules.

    Options (message option → actor option → default here): ``ttl_s``, ``max_failures``,
    ``max_interruptions``, ``min_backoff_s``, ``max_backoff_s``, ``max_run_s``, ``checkpoint_every_s``; also
    under Dramatiq's names (``max_retries``, ``min_backoff``, ``max_backoff``, ``time_limit``, ``max_age``),
    and Dramatiq's ``throws`` (exceptions the actor expects: never retried).

    Parameters:
        storage: Where records, checkpoints and artifacts live.
        node_id: This node's id (recorded per attempt).
        instance: This node instance (see ``node.attempt.journal``).
        slot_id: This worker's slot.
        journal: This worker's journal of running attempts, or ``None``.
        slots_dir: The node's slot directory (hand-backs during a drain wait for its workers to stop).
        delivery_limit: The work queues' delivery limit (the broker's last delivery gives the job up).
        grace_s: The SIGTERM grace period.
        end_budget_s: Time an ending attempt may take outside a shutdown (record write and publish).
        hard_stop_s: How long a job past ``max_run_s`` may ignore ``should_stop`` before its process is killed.
        record_after_s: Running time after which an attempt's record entry is written.
        progress_every_s: How often a running job's progress is written to its record.
        cancel_check_s: How often a running job's record is read for a cancel request.
        handback_flush_s: How long an ending attempt waits for its last checkpoint upload.
        lease: When a long job acks its delivery early and renews a lease instead (``node.attempt.lease``;
            ``None``: never).
        clock: Wall clock (Unix seconds).
        rng: Random source for backoff jitter.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        node_id: str,
        instance: str = "",
        slot_id: str = "",
        journal: Journal | None = None,
        slots_dir: Path | None = None,
        delivery_limit: int = 3,
        ttl_s: float | None = None,
        max_failures: int = 3,
        max_interruptions: int = 20,
        min_backoff_s: float = 5.0,
        max_backoff_s: float = 600.0,
        max_run_s: float | None = None,
        checkpoint_every_s: float = 60.0,
        grace_s: float = 25.0,
        end_budget_s: float = 120.0,
        hard_stop_s: float | None = 30.0,
        record_after_s: float = 2.0,
        progress_every_s: float = 10.0,
        cancel_check_s: float = 2.0,
        handback_flush_s: float = 10.0,
        lease: LeaseTiming | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.delivery_limit = delivery_limit
        self.clock = clock
        self._per_actor: dict[str, tuple[dramatiq.Actor, tuple[Limits, Any, float | None, float, tuple]]] = {}
        self.defaults = {
            "ttl_s": ttl_s,
            "max_failures": max_failures,
            "max_interruptions": max_interruptions,
            "min_backoff_s": min_backoff_s,
            "max_backoff_s": max_backoff_s,
            "max_run_s": max_run_s,
            "checkpoint_every_s": checkpoint_every_s,
        }
        self._names = LIFECYCLE_OPTIONS
        self.runner = AttemptRunner(
            storage=storage,
            node_id=node_id,
            instance=instance,
            slot_id=slot_id,
            journal=journal,
            slots_dir=slots_dir,
            grace_s=grace_s,
            end_budget_s=end_budget_s,
            hard_stop_s=hard_stop_s,
            record_after_s=record_after_s,
            progress_every_s=progress_every_s,
            cancel_check_s=cancel_check_s,
            handback_flush_s=handback_flush_s,
            lease=lease,
            clock=clock,
            rng=rng,
        )

    def option(self, actor: dramatiq.Actor, message: Message, name: str) -> Any:
        """An option's value: the message's, else the actor's, else this middleware's default (at each level
        Burrow's name, else Dramatiq's name for it: ``node.contract.job_options.DRAMATIQ_OPTIONS``)."""
        value = lifecycle_option(message.options, name)
        if value is None:
            value = lifecycle_option(actor.options, name)
        return self.defaults[name] if value is None else value

    def settings(self, broker: dramatiq.Broker, message: Message) -> JobSettings:
        """Resolve the job's options; raises ``MalformedMessage`` naming a bad field."""
        job = getattr(message, "checked_job", None)
        if job is None:  # from another consumer (e.g. Dramatiq's StubBroker): check what ours would have
            job = check_fields({**message.asdict(), "args": list(message.args)}, delivered_on=message.queue_name)
        try:
            actor = broker.get_actor(message.actor_name)
        except dramatiq.errors.ActorNotFound:
            raise MalformedMessage("actor_name", f"no actor {message.actor_name!r} on this node") from None
        options = message.options
        try:
            overrides = self._names & options.keys()
            if not overrides or all(options[name] is None for name in overrides):
                # The common case: the actor's options decide, and they are resolved once per actor.
                cached = self._per_actor.get(actor.actor_name)
                if cached is None or cached[0] is not actor:
                    cached = self._per_actor[actor.actor_name] = (actor, self._resolve(actor, message))
                limits, ttl_s, max_run_s, checkpoint_every_s, throws = cached[1]
            else:
                limits, ttl_s, max_run_s, checkpoint_every_s, throws = self._resolve(actor, message)
            expires_at = expiry(job.expires_at, message.message_timestamp / 1000, ttl_s)
        except (TypeError, ValueError) as e:  # an actor declared with a malformed lifecycle option
            raise MalformedMessage("options", f"actor {message.actor_name!r}: {e}") from None
        return JobSettings(
            job=job,
            limits=limits,
            expires_at=expires_at,
            max_run_s=max_run_s,
            checkpoint_every_s=checkpoint_every_s,
            throws=throws,
        )

    def _resolve(self, actor: dramatiq.Actor, message: Message) -> tuple[Limits, Any, float | None, float, tuple]:
        def option(name: str) -> Any:
            return self.option(actor, message, name)

        limits = Limits(
            max_failures=int(option("max_failures")),
            max_interruptions=int(option("max_interruptions")),
            min_backoff_s=float(option("min_backoff_s")),
            max_backoff_s=float(option("max_backoff_s")),
            delivery_limit=self.delivery_limit,
        )
        max_run_s = option("max_run_s")
        max_run_s = None if max_run_s is None else float(max_run_s)
        # Dramatiq's ``throws``: exceptions the actor expects, so a job that raises one is not retried.
        throws = actor.options.get("throws") or ()
        throws = tuple(throws) if isinstance(throws, tuple | list) else (throws,)
        if not all(isinstance(c, type) and issubclass(c, BaseException) for c in throws):
            raise TypeError(f"throws must be exception classes, got {actor.options.get('throws')!r}")
        return limits, option("ttl_s"), max_run_s, float(option("checkpoint_every_s")), throws

    def before_process_message(self, broker: dramatiq.Broker, message: Message) -> None:
        try:
            settings = self.settings(broker, message)
        except MalformedMessage as e:
            logger.error("Dead-lettering message %s: %s", message.message_id, e)
            try:
                broker.dead_letter(
                    message.queue_name, message.encode(), reason=DeadLetterReason.MALFORMED, detail=str(e)
                )
            except Exception:
                logger.exception("Could not dead-letter message %s; rejecting it.", message.message_id)
                message.fail()
            raise SkipMessage(str(e)) from None
        try:
            self.runner.arrive(broker, message, settings)
        except SkipMessage:
            raise
        except Exception as e:
            # Dramatiq would log this and run the actor anyway, with no attempt set up: never let it.
            logger.exception("Job %s could not start; offering it again later.", settings.job.job_id)
            self.runner.not_started(broker, message, settings)
            raise SkipMessage(f"could not start: {e}") from None

    def after_process_message(
        self, broker: dramatiq.Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self.runner.finish(broker, message, exception, result)

    def after_skip_message(self, broker: dramatiq.Broker, message: Message) -> None:
        self.runner.skipped(broker, message)
