"""The submit side of the job schema, for cloud services and nodes alike."""

from __future__ import annotations

import dramatiq
from dramatiq import Message

from ..job_options import JOB_ACTOR_OPTIONS, OPTION_KEY, JobOptions


class JobSubmission(dramatiq.Middleware):
    """Declares the job actor options and stamps every new job with its identity and absolute expiry.

    A message sent without job options gets ``job_id`` = its message id and, if the actor (or the message)
    has ``ttl_s``, ``expires_at`` = now + ttl, so expiry is fixed at submission and survives retries and
    re-dispatch. A message that already carries job options (a retry, or ``new_job(...)``) is left alone.
    """

    @property
    def actor_options(self) -> set[str]:
        return set(JOB_ACTOR_OPTIONS)

    def before_enqueue(self, broker: dramatiq.Broker, message: Message, delay: int | None) -> None:
        if OPTION_KEY in message.options:
            return
        ttl_s = message.options.get("ttl_s")
        if ttl_s is None:
            try:
                ttl_s = broker.get_actor(message.actor_name).options.get("ttl_s")
            except dramatiq.errors.ActorNotFound:
                ttl_s = None
        expires_at = message.message_timestamp / 1000 + float(ttl_s) if ttl_s is not None else None
        message.options[OPTION_KEY] = JobOptions(job_id=message.message_id, expires_at=expires_at).to_options()
