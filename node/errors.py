"""Burrow's error tree, in one place.

``BurrowError`` is the root of every error Burrow raises on purpose; ``cloud`` hangs ``CloudError`` under it.
Callers catch exactly as much as they mean to; nothing here shadows a built-in name.

    BurrowError
    ├── NodeError            something is wrong on this node
    │   ├── ConfigError      a setting is malformed (names the variable)
    │   ├── SlotError        no GPU/CPU slot for this process
    │   ├── QueueMismatchError  a queue exists with other arguments
    │   ├── NoSuchQueue      a job's subcloud/model/type/priority has no queue (topology, or not applied)
    │   ├── InvalidTransition   a job status change the lifecycle forbids
    │   └── FencedOut        a newer attempt owns the job
    ├── MalformedMessage     a message (or one of its fields) cannot be trusted; dead-lettered as ``malformed``
    │   └── InvalidJob       its job options break the schema
    ├── InvalidInput         an actor says its input is bad (public: ``node.job``); dead-lettered as ``malformed``
    │   └── CorruptCheckpoint  the job's checkpoint cannot be read (public: ``node.job``)
    ├── Preempted            an actor handed its job back (public: ``node.job``)
    └── StorageError         a storage backend failed
        ├── ObjectNotFound
        ├── PreconditionFailed
        └── CorruptRecord    a stored job record is not one (not JSON, or not a record's shape)
"""

from __future__ import annotations

from dramatiq.errors import Retry
from dramatiq.middleware import MiddlewareError


class BurrowError(Exception):
    """Base class for every error Burrow raises on purpose."""


class NodeError(BurrowError):
    """Something is wrong on this node."""


class ConfigError(NodeError):
    """A setting read from the environment is missing or malformed.

    Attributes:
        variable: The name of the offending environment variable.
    """

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class NoSuchQueue(NodeError):
    """A job names a queue (subcloud, job type, model, priority) that the topology or the broker lacks."""


class SlotError(NodeError):
    """A worker process could not claim a GPU (or CPU) slot."""


class QueueMismatchError(NodeError):
    """A queue already exists on the broker with arguments other than the ones Burrow declares."""


class InvalidTransition(NodeError):
    """A status change the job lifecycle does not allow (e.g. anything after *succeeded*)."""


class FencedOut(NodeError):
    """A newer attempt of this job exists: this attempt must stop and may not write the job's state."""


class MalformedMessage(BurrowError, MiddlewareError):
    """A message cannot be trusted: it is dead-lettered once with reason ``malformed`` and this text.

    (A Dramatiq ``MiddlewareError`` too, so that raised at submission it reaches the caller of ``send()``
    instead of being logged and ignored by Dramatiq.)

    Attributes:
        field: The offending field, as a path (``options.job.job_id``, ``kwargs``); empty if the whole body.
    """

    #: The dead-letter reason (``node.contract.queues.DeadLetterReason``) such a message gets.
    reason = "malformed"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field


class InvalidJob(MalformedMessage):
    """A message's job options break the schema."""

    def __init__(self, problem: str, field: str = "options.job") -> None:
        super().__init__(field, problem)


class InvalidInput(BurrowError):
    """Raised by an actor whose arguments are unusable: retrying cannot help, so the job is dead-lettered."""


class CorruptCheckpoint(InvalidInput):
    """The job's newest checkpoint cannot be read: its manifest is not one, or its archive is damaged.

    Retrying elsewhere cannot help (every node reads the same bytes), so, uncaught, the job is dead-lettered
    as ``malformed`` naming it. An actor that can start over instead catches it and saves a fresh checkpoint,
    which replaces the damaged manifest.

    Attributes:
        key: The unreadable object's storage key.
    """

    def __init__(self, key: str, problem: str, *, manifest: str) -> None:
        super().__init__(f"checkpoint {key} {problem}; delete {manifest} to start the job over")
        self.key = key


class Preempted(BurrowError, Retry):
    """Raised by ``hand_back()``: the job stops here and is re-run elsewhere from its checkpoint.

    A subclass of Dramatiq's ``Retry`` only so that Dramatiq does not log a normal hand-back as an error.
    """


class StorageError(BurrowError):
    """A storage backend failed or was asked for something it does not have."""


class StorageUnavailable(StorageError):
    """The store did not do what was asked: down, unreachable, refusing this node, full, read-only.

    Not the job's fault: an attempt that meets it is handed back (an interruption, not a failure) and the
    worker takes no job until its storage answers (``node.broker.intake``)."""


class ObjectNotFound(StorageError):
    """The requested key does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object changed (or appeared) since the caller last read it."""


class CorruptRecord(StorageError):
    """A job record in storage cannot be read as one: not JSON, or not a record's shape.

    Nothing overwrites such a record (it may be an operator's hand edit gone wrong, or a truncated write of a
    foreign tool); a node meeting it dead-letters the job's message as ``malformed`` naming it.

    Attributes:
        key: The record's storage key.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"job record {key} {problem}; repair or delete it")
        self.key = key


def describe(exception: BaseException, limit: int = 2000, *, with_type: bool = True) -> str:
    """``Type: message`` of ``exception`` (``with_type=False``: the message alone), at most ``limit``
    characters, also when its ``str()`` raises.

    An actor's own exception class can do anything in ``__str__``; recording how its attempt ended must not
    fail because of it (the hook that records it would fail, and Dramatiq would ack the job away).
    """
    try:
        text = str(exception)
    except Exception as e:
        text = f"<str() failed: {type(e).__name__}>"
    return (f"{type(exception).__name__}: {text}" if with_type else text)[:limit]
