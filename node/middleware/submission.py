"""The submit side of the job schema, for cloud services and nodes alike."""

from __future__ import annotations

import dramatiq
from dramatiq import Message

from ..contract.envelope import check_arguments
from ..contract.job_options import (
    LIFECYCLE_OPTIONS,
    OPTION_KEY,
    ROUTING_OPTIONS,
    JobOptions,
    check_actor_options,
    lifecycle_option,
)
from ..contract.signing import Signer
from ..errors import MalformedMessage


class JobSubmission(dramatiq.Middleware):
    """Declares the job actor options, checks a job at submission and stamps it with its identity and expiry.

    ``actor.send(...)`` raises ``MalformedMessage`` when the arguments do not fit the actor's signature or a
    lifecycle option is malformed, so a bad call fails in the caller instead of on a node. A message sent
    without job options gets ``job_id`` = its message id and, if the actor (or the message) has ``ttl_s``,
    ``expires_at`` = now + ttl, so expiry is fixed at submission and survives retries and re-dispatch. A
    message that already carries job options (a retry, or ``new_job(...)``) keeps them (they are checked).
    ``subcloud``, ``job_type``, ``model`` and ``priority`` (message options, else actor options) go into the
    job options; with a topology they choose the job's queue. With a ``signer`` (the cloud's
    ``BURROW_SIGNING_KEY``) a job without a signature is signed (``node.contract.signing``); a node, which has
    no signer, republishes jobs with the signature they came with.
    """

    def __init__(self, *, signer: Signer | None = None) -> None:
        self.signer = signer

    @property
    def actor_options(self) -> set[str]:
        return set(LIFECYCLE_OPTIONS) | set(ROUTING_OPTIONS) | {"throws"}

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor) -> None:
        """``@dramatiq.actor(priority="urgent")``: Dramatiq takes ``priority`` as its own parameter (an integer
        that orders a worker's buffered messages), so a priority class given there would route nothing and
        break that ordering (a string compared with other actors' integers). It is moved into the actor's
        options, where the job's priority class is read (and checked when a job is sent); an integer stays
        Dramatiq's."""
        if isinstance(actor.priority, str):
            actor.options.setdefault("priority", actor.priority)
            actor.priority = 0

    def before_enqueue(self, broker: dramatiq.Broker, message: Message, delay: int | None) -> None:
        try:
            actor = broker.get_actor(message.actor_name)
        except dramatiq.errors.ActorNotFound:
            actor = None
        check_actor_options(message.options)
        if OPTION_KEY in message.options:
            JobOptions.from_options(message.options, message_id=message.message_id)
            job = message.options[OPTION_KEY]
            if self.signer is not None and not job.get("signature"):  # e.g. new_job(...) from a cloud service
                job["signature"] = self.signer.sign(message.actor_name, message.args, message.kwargs, job)
            return
        if actor is not None:
            check_arguments(actor.fn, message.args, message.kwargs)
        try:
            ttl_s = lifecycle_option(message.options, "ttl_s")
            if ttl_s is None and actor is not None:
                ttl_s = lifecycle_option(actor.options, "ttl_s")
            expires_at = message.message_timestamp / 1000 + float(ttl_s) if ttl_s is not None else None
        except (TypeError, ValueError) as e:  # (raised as a MiddlewareError: anything else Dramatiq only logs)
            raise MalformedMessage("ttl_s", f"actor {message.actor_name!r}: {e}") from None
        # Where the job goes (subcloud, job type, model, priority): the message's option, else the actor's.
        routing = {}
        for name in ROUTING_OPTIONS:
            value = message.options.pop(name, None)
            if value is None and actor is not None:
                value = actor.options.get(name)
            if value is not None:
                routing[name] = value
        try:
            job = JobOptions(job_id=message.message_id, expires_at=expires_at, **routing)
        except ValueError as e:
            raise MalformedMessage("options.job", str(e)) from None
        options = job.to_options()
        if self.signer is not None:
            options["signature"] = self.signer.sign(message.actor_name, message.args, message.kwargs, options)
        message.options[OPTION_KEY] = options
