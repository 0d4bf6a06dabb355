"""The submit API for cloud services: ``Client.submit`` returns a ``JobHandle`` to follow the job.

    from cloud.submit import Client

    client = Client()                                   # settings from the environment, as nodes read them
    job = client.submit("infer", prompt="hello", job_type="sync")
    print(job.result(timeout=30))                       # the actor's return value
    for token in client.submit("generate", prompt="hi", job_type="stream").stream():
        print(token)

Plain ``actor.send()`` keeps working beside it. What each job type promises:

- ``sync``: the caller blocks in ``result()``; the node replies on the client's reply queue once the record
  holds the outcome (``cloud.replies``). A caller that timed out fetches the result later by job id.
- ``polling``: ``submit`` writes the job's record (*queued*) before publishing, so ``status()`` walks queued →
  running (with progress) → succeeded / failed / expired / cancelled from the first instant.
- ``stream``: ``stream()`` yields the actor's ``emit``-ted chunks in order, each once (``cloud.chunks``).
- ``batch``: many items in one call, ``Client.submit_batch`` (``cloud.batch``).

``idempotency_key``: the job id is derived from it and the record is created with a conditional write, so a
second submission with the same key returns the first job and publishes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq import Message

from node.contract.envelope import check_arguments
from node.contract.inputs import input_key
from node.contract.job_options import DEFAULT_SUBCLOUD, JOB_TYPES, JobOptions, check_job_id, lifecycle_option
from node.contract.record import (
    SETTLED_STATUSES,
    JobStatus,
    new_record,
    record_key,
    request_cancel,
    set_status,
)
from node.errors import MalformedMessage, ObjectNotFound
from node.settings import Settings
from node.storage import Storage, storage_from_settings
from node.storage.records import RecordStore

from .arguments import check_argument_types
from .chunks import read_chunks
from .client import connect
from .errors import CloudError
from .replies import ReplyListener

#: A job type's record is written at submit (``polling``, ``stream``) so its status exists from the start; a
#: ``sync`` job skips that write (its caller waits for the reply) unless it has an idempotency key.
RECORDED_AT_SUBMIT = frozenset({"polling", "stream", "batch"})
#: Longest pause between two reads of a record while waiting for a job to settle.
POLL_MAX_S = 1.0

logger = logging.getLogger(__name__)


class UnknownActor(CloudError):
    """No actor of that name (the message lists the known ones and their parameters)."""


class PayloadTooLarge(CloudError):
    """A job's message is over ``BURROW_MAX_PAYLOAD_BYTES``: pass big inputs by storage reference."""


class JobFailed(CloudError):
    """The job settled without succeeding.

    Attributes:
        job_id: The job.
        status: ``failed``, ``expired``, ``quarantined`` or ``cancelled``.
        reason: Why, as its record says.
    """

    def __init__(self, job_id: str, status: str, reason: str) -> None:
        super().__init__(f"job {job_id} {status}" + (f": {reason}" if reason else ""))
        self.job_id = job_id
        self.status = status
        self.reason = reason


def idempotent_job_id(key: str) -> str:
    """The job id a caller's idempotency key stands for (any string: hashed to a valid id)."""
    if not isinstance(key, str) or not key:
        raise MalformedMessage("idempotency_key", f"must be a non-empty string, got {key!r}")
    return "k-" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def describe_actor(actor: dramatiq.Actor, *, annotated: bool = True) -> str:
    """``name(param: type = default, …)  [queue, job type]`` for help texts; ``annotated=False``: the short
    ``name(param, param=default)`` an error message lists."""
    import inspect

    try:
        signature = inspect.signature(actor.fn, eval_str=True)
    except Exception:  # unresolvable annotations
        try:
            signature = inspect.signature(actor.fn)
        except (TypeError, ValueError):
            return f"{actor.actor_name}(…)"
    if not annotated:
        params = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
        return f"{actor.actor_name}{signature.replace(parameters=params, return_annotation=inspect.Signature.empty)}"
    job_type = actor.options.get("job_type", "")
    return f"{actor.actor_name}{signature}  [queue {actor.queue_name}{', ' + job_type if job_type else ''}]"


class Client:
    """Submits jobs and follows them.

    Parameters:
        settings: Broker, storage, prefix and limits (default: from the environment).
        broker: An already connected broker (default: ``cloud.client.connect(settings)``).
        storage: The job storage (default: the one ``settings`` names).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker: Any = None,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.broker = broker or connect(self.settings)
        self.storage = storage or storage_from_settings(self.settings)
        self.records = RecordStore(self.storage)
        self._replies: ReplyListener | None = None

    # -- actors -------------------------------------------------------------------------------------------

    def actor(self, actor: str | dramatiq.Actor) -> dramatiq.Actor:
        if not isinstance(actor, str):
            return actor
        try:
            return self.broker.get_actor(actor)
        except dramatiq.errors.ActorNotFound:
            known = ", ".join(describe_actor(a, annotated=False) for _, a in sorted(self.broker.actors.items()))
            raise UnknownActor(f"no actor {actor!r}; known: {known or 'none'}") from None

    # -- submitting ---------------------------------------------------------------------------------------

    def build(
        self,
        actor: str | dramatiq.Actor,
        args: tuple | list = (),
        kwargs: dict[str, Any] | None = None,
        *,
        job_type: str | None = None,
        model: str | None = None,
        priority: str | None = None,
        subcloud: str | None = None,
        ttl_s: float | None = None,
        idempotency_key: str | None = None,
        job_id: str | None = None,
        reply_to: str | None = None,
        now: float | None = None,
    ) -> Message:
        """The message ``submit`` would publish, checked: arguments, options and size.

        Raises:
            UnknownActor, MalformedMessage, PayloadTooLarge: Nothing was published.
        """
        if idempotency_key is not None:
            job_id = idempotent_job_id(idempotency_key)
        build = self.builder(
            actor,
            job_type=job_type,
            model=model,
            priority=priority,
            subcloud=subcloud,
            ttl_s=ttl_s,
            reply_to=reply_to,
            now=now,
        )
        return build(args, kwargs, job_id or str(uuid.uuid4()))[0]

    def builder(
        self,
        actor: str | dramatiq.Actor,
        *,
        job_type: str | None = None,
        model: str | None = None,
        priority: str | None = None,
        subcloud: str | None = None,
        ttl_s: float | None = None,
        reply_to: str | None = None,
        now: float | None = None,
    ) -> Callable[[tuple | list, dict[str, Any] | None, str], tuple[Message, bytes]]:
        """What ``build`` does for many jobs of one actor with the same options (a batch): the options are
        resolved and checked once; the function returned checks each job's arguments, id and size and returns
        its message and body (encoded once, for the size check and the publish alike).

        Raises:
            UnknownActor, MalformedMessage: The actor or the options are bad (the function raises
                ``MalformedMessage`` or ``PayloadTooLarge`` for a bad job).
        """
        actor = self.actor(actor)
        now = time.time() if now is None else now
        routing = {}
        for name, value in (("job_type", job_type), ("model", model), ("priority", priority), ("subcloud", subcloud)):
            value = value if value is not None else actor.options.get(name)
            if value is not None:
                routing[name] = value
        routing.setdefault("job_type", "polling")
        subcloud = routing.get("subcloud", DEFAULT_SUBCLOUD)
        if subcloud != DEFAULT_SUBCLOUD and getattr(self.broker, "topology", None) is None:
            raise MalformedMessage(
                "subcloud",
                f"{subcloud!r} needs a topology that declares it (BURROW_TOPOLOGY): without one every job goes to "
                "its actor's queue, which the nodes of every subcloud serve",
            )
        try:
            ttl = ttl_s if ttl_s is not None else lifecycle_option(actor.options, "ttl_s")
        except TypeError as e:
            raise MalformedMessage("ttl_s", f"actor {actor.actor_name!r}: {e}") from None
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0
        ):
            raise MalformedMessage("ttl_s", f"must be a number of seconds > 0, got {ttl!r}")
        try:
            expires_at = now + float(ttl) if ttl is not None else None
            template = JobOptions(job_id="template", expires_at=expires_at, reply_to=reply_to, **routing).to_options()
        except (TypeError, ValueError) as e:
            raise MalformedMessage("options.job", str(e)) from None
        limit = self.settings.max_payload_bytes
        timestamp = int(now * 1000)
        signer = self.settings.signer()

        def build(args: tuple | list, kwargs: dict[str, Any] | None, job_id: str) -> tuple[Message, bytes]:
            kwargs = dict(kwargs or {})
            check_arguments(actor.fn, list(args), kwargs)
            check_argument_types(actor.fn, args, kwargs)
            check_job_id(job_id)  # InvalidJob (a MalformedMessage) names what is wrong with it
            job = {**template, "job_id": job_id, "avoid_nodes": [], "trace": {}}
            if signer is not None:
                job["signature"] = signer.sign(actor.actor_name, args, kwargs, job)
            message = Message(
                queue_name=actor.queue_name,
                actor_name=actor.actor_name,
                args=tuple(args),
                kwargs=kwargs,
                options={"job": job},
                message_id=job_id,  # one id for the job and its message: `burrow job <id>` finds either
                message_timestamp=timestamp,
            )
            body = message.encode()
            if len(body) > limit:
                raise PayloadTooLarge(
                    f"job {job_id} ({actor.actor_name}) is {len(body)} bytes, over the {limit}-byte limit "
                    "(BURROW_MAX_PAYLOAD_BYTES): store big inputs with Client.put_input() (or `burrow put`) and pass "
                    "the reference it returns; the actor reads it with current_job().inputs.get(ref)"
                )
            return message, body

        return build

    def submit(
        self,
        actor: str | dramatiq.Actor,
        *args: Any,
        job_type: str | None = None,
        model: str | None = None,
        priority: str | None = None,
        subcloud: str | None = None,
        ttl_s: float | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Submit one job; returns its handle at once (``result()`` waits).

        Raises:
            UnknownActor, MalformedMessage, PayloadTooLarge: Nothing was published.
        """
        if job_type is not None and job_type not in JOB_TYPES:
            raise MalformedMessage("job_type", f"must be one of {', '.join(JOB_TYPES)}, got {job_type!r}")
        resolved = self.actor(actor)
        kind = job_type or resolved.options.get("job_type") or "polling"
        reply_to = self.replies().queue if kind == "sync" else None
        message = self.build(
            resolved,
            args,
            kwargs,
            job_type=kind,
            model=model,
            priority=priority,
            subcloud=subcloud,
            ttl_s=ttl_s,
            idempotency_key=idempotency_key,
            reply_to=reply_to,
        )
        job = JobOptions.from_options(message.options, message_id=message.message_id)
        handle = JobHandle(self, job.job_id, job_type=kind, submitted_at=message.message_timestamp / 1000)
        if kind in RECORDED_AT_SUBMIT or idempotency_key is not None:
            record = new_record(job.job_id, actor=message.actor_name, queue=message.queue_name)
            set_status(record, JobStatus.QUEUED)
            record["submitted_at"] = handle.submitted_at
            record["job_type"] = kind
            if not self.records.create(record):
                existing = self.records.get(job.job_id) or {}
                return JobHandle(self, job.job_id, job_type=existing.get("job_type", kind), submitted_at=None)
        if reply_to is not None:
            self.replies().expect(job.job_id)
        try:
            self.broker.enqueue(message)
        except BaseException:
            if kind in RECORDED_AT_SUBMIT or idempotency_key is not None:
                self._forget(job.job_id)  # so the same key can be submitted again
            raise
        return handle

    def _forget(self, job_id: str) -> None:
        try:
            self.storage.delete(record_key(job_id))
        except Exception:  # the record says queued; a resubmission with the key finds it
            pass

    def put_input(self, data: bytes | str | os.PathLike[str]) -> str:
        """Store an input too big for a message; returns the reference to pass as an argument."""
        body = data if isinstance(data, bytes) else Path(data).read_bytes()
        key = input_key(body)
        if self.storage.head(key) is None:
            self.storage.put(key, body)
        return key

    def job(self, job_id: str) -> JobHandle:
        """The handle of a job submitted earlier (by anyone); ``MalformedMessage`` for an id no job can have."""
        check_job_id(job_id)
        record = self.records.get(job_id) or {}
        return JobHandle(self, job_id, job_type=record.get("job_type", ""), submitted_at=record.get("submitted_at"))

    def submit_batch(self, actor: str | dramatiq.Actor, items: Iterable[Any], **options: Any) -> Any:
        """Submit many jobs of one actor at once (``cloud.batch.submit_batch``); returns the ``Batch``."""
        from .batch import submit_batch

        if isinstance(items, str | bytes | dict) or not isinstance(items, Iterable):
            raise TypeError(f"items must be a list of argument sets (dicts or lists), got {type(items).__name__}")
        return submit_batch(self, actor, [(n + 1, item) for n, item in enumerate(items)], **options)

    def replies(self) -> ReplyListener:
        if self._replies is None:
            parameters = self.broker.parameters
            self._replies = ReplyListener(parameters[0] if isinstance(parameters, list) else parameters)
        return self._replies

    def close(self) -> None:
        if self._replies is not None:
            self._replies.close()
        self.broker.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class JobHandle:
    """A submitted job, followed through its record (and, for sync jobs, the reply).

    Attributes:
        job_id: The job's id (``burrow job ID``, ``burrow result ID``).
        job_type: Its type.
    """

    def __init__(self, client: Client, job_id: str, *, job_type: str, submitted_at: float | None) -> None:
        self.client = client
        self.job_id = job_id
        self.job_type = job_type
        self.submitted_at = submitted_at

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r}, {self.job_type})"

    def record(self) -> dict[str, Any] | None:
        return self.client.records.get(self.job_id)

    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed``, ``expired``, ``quarantined`` or ``cancelled``
        (``queued`` too for a job no node has recorded yet)."""
        record = self.record()
        return (record or {}).get("status") or "queued"

    def progress(self) -> dict[str, Any] | None:
        """The job's last reported progress (``fraction``, ``note``, ``at``), if any."""
        return (self.record() or {}).get("progress")

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job settles; returns its record (or the reply of a sync job).

        Raises:
            TimeoutError: Not settled in ``timeout`` seconds (the job goes on; ask again later).
        """
        _check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        event = None
        replies = self.client._replies
        if self.job_type == "sync" and replies is not None:
            event = replies.expect(self.job_id)
        pause = 0.05
        while True:
            if event is not None and event.is_set():
                reply = replies.take(self.job_id)
                if reply is not None:
                    return reply
            record = self.record()
            if record is not None and record.get("status") in {s.value for s in SETTLED_STATUSES}:
                if replies is not None:
                    replies.take(self.job_id)
                return record
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                if replies is not None:
                    replies.take(self.job_id)
                status = (record or {}).get("status") or "queued"
                raise TimeoutError(
                    f"job {self.job_id} still {status} after {timeout}s; it goes on: "
                    f"fetch it later with client.job({self.job_id!r}).result() or `burrow result {self.job_id}`"
                )
            wait_s = pause if left is None else min(pause, left)
            if event is not None:
                event.wait(wait_s)
            else:
                time.sleep(wait_s)
            pause = min(POLL_MAX_S, pause * 2)

    def result(self, timeout: float | None = None) -> Any:
        """The actor's return value, once the job succeeded (waits up to ``timeout`` seconds).

        Raises:
            JobFailed: The job settled failed, expired, quarantined or cancelled.
            TimeoutError: Not settled yet.
        """
        outcome = self.wait(timeout)
        status = outcome.get("status")
        if status != "succeeded":
            raise JobFailed(self.job_id, str(status), str(outcome.get("reason") or ""))
        kept = outcome.get("result")
        if kept is None:
            return None
        if "artifact" in kept:
            name = kept["artifact"]
            key = (outcome.get("artifacts") or {}).get(name)
            if key is None:  # a reply carries the map; a record read now always has it
                key = (self.record() or {}).get("artifacts", {}).get(name)
            if key is None:
                raise CloudError(f"job {self.job_id}: its result artifact {name!r} is not among its artifacts")
            try:
                data = self.client.storage.get(key)[0]
            except ObjectNotFound:
                raise CloudError(f"job {self.job_id}: its result {key} is missing from storage") from None
            try:
                return json.loads(data)
            except (ValueError, RecursionError) as e:
                raise CloudError(f"job {self.job_id}: its result {key} is not JSON ({str(e)[:200]})") from None
        return kept.get("value")

    def artifacts(self) -> dict[str, str]:
        """The job's artifacts: name → storage key."""
        return dict((self.record() or {}).get("artifacts") or {})

    def artifact(self, name: str) -> bytes:
        key = self.artifacts().get(name)
        if key is None:
            raise CloudError(f"job {self.job_id} has no artifact {name!r} (it has: {sorted(self.artifacts())})")
        try:
            return self.client.storage.get(key)[0]
        except ObjectNotFound:
            raise CloudError(f"artifact {name!r} of job {self.job_id} is missing from storage ({key})") from None

    def cancel(self) -> str:
        """Cancel the job: a queued job never starts; a running one is asked to stop and ends *cancelled*.
        Returns the status it is left in (``running`` while it stops)."""

        def mutate(record: dict[str, Any]) -> JobStatus | None:
            if record.get("status") is None:
                set_status(record, JobStatus.QUEUED)  # a job no node has seen yet: cancelled before it starts
            return request_cancel(record, now=time.time(), by="submitter")

        _, left = self.client.records.update(self.job_id, mutate)
        if left is None:
            try:  # the node running it stops it now, rather than at its next record read
                self.client.broker.broadcast_cancel(self.job_id)
            except Exception as e:
                logger.warning(
                    "Cancel of job %s not broadcast (%s); its node reads it from the record.", self.job_id, e
                )
        return left.value if left is not None else "running"

    def stream(self, from_seq: int = 0, *, timeout: float | None = None) -> Iterator[Any]:
        """The job's chunks from number ``from_seq``, in order, each once; ends when the job succeeds.

        Raises:
            cloud.chunks.JobStreamEnded: The job ended failed, expired or cancelled.
            TimeoutError: Nothing arrived for ``timeout`` seconds.
        """
        _check_timeout(timeout)
        if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 0:
            raise ValueError(f"from_seq must be a chunk number (an int >= 0), got {from_seq!r}")
        since = self.submitted_at
        if since is None:
            since = (self.record() or {}).get("submitted_at")
        parameters = self.client.broker.parameters
        settled_values = {s.value for s in SETTLED_STATUSES}

        def settled() -> str | None:
            status = (self.record() or {}).get("status")
            return status if status in settled_values else None

        return read_chunks(
            parameters[0] if isinstance(parameters, list) else parameters,
            self.client.settings.queue_prefix,
            self.job_id,
            since=since,
            from_seq=from_seq,
            settled=settled,
            timeout_s=timeout,
        )


def _check_timeout(timeout: float | None) -> None:
    """``ValueError`` unless ``timeout`` is ``None`` (no limit) or a number of seconds >= 0 (NaN never ends)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
