"""The job schema carried in every message's options (``message.options["job"]``), versioned.

One place defines what a job *is* as it travels: its identity (stable across retries and re-dispatch), its
routing (type, model, priority class, subcloud), its absolute expiry, its attempt counters — *failures*
(the job's fault) apart from *interruptions* (preemption, a lost node: not its fault) — the nodes it should
avoid, and the W3C trace context. Everything else about a job lives in its record in storage.
"""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidJob, MalformedMessage

SCHEMA_VERSION = 1
OPTION_KEY = "job"

#: Actor options of the job lifecycle (message option → actor option → node default).
JOB_ACTOR_OPTIONS = frozenset(
    {"ttl_s", "max_failures", "max_interruptions", "min_backoff_s", "max_backoff_s", "max_run_s", "checkpoint_every_s"}
)
#: Dramatiq's own names for what the job lifecycle does in place of its ``Retries``, ``AgeLimit`` and
#: ``TimeLimit`` middleware, read so that an actor (or a ``send_with_options`` call) written for Dramatiq runs
#: unchanged: Burrow's option → (Dramatiq's option, factor from its unit to Burrow's). Dramatiq counts
#: ``max_retries`` as ``max_failures`` counts failures (``max_retries=3``: a fourth failure gives up) and gives
#: times in milliseconds. Burrow's name wins where both are given.
DRAMATIQ_OPTIONS: dict[str, tuple[str, float]] = {
    "max_failures": ("max_retries", 1),
    "min_backoff_s": ("min_backoff", 0.001),
    "max_backoff_s": ("max_backoff", 0.001),
    "max_run_s": ("time_limit", 0.001),
    "ttl_s": ("max_age", 0.001),
}
#: Every actor option the job lifecycle reads, under Burrow's names and Dramatiq's.
LIFECYCLE_OPTIONS = JOB_ACTOR_OPTIONS | {alias for alias, _ in DRAMATIQ_OPTIONS.values()}

#: Options (of an actor or a message) that say where a job goes; they become ``JobOptions`` fields.
ROUTING_OPTIONS = ("subcloud", "job_type", "model", "priority")
#: The subcloud of a job that names none: the shared pool.
DEFAULT_SUBCLOUD = "public"

JOB_TYPES = ("sync", "polling", "batch", "stream")
PRIORITIES = ("urgent", "bulk", "test")

#: A submitter's reply queue (``cloud.replies``): server-named by RabbitMQ, so no job can name another queue.
REPLY_QUEUE = re.compile(r"amq\.gen-[A-Za-z0-9_-]{1,200}")

#: A job id is also a storage key segment and a log field: printable ASCII, no '/', at most 128 characters.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=@+-]{0,127}")

__all__ = [
    "DRAMATIQ_OPTIONS",
    "JOB_ACTOR_OPTIONS",
    "LIFECYCLE_OPTIONS",
    "ROUTING_OPTIONS",
    "JOB_ID_PATTERN",
    "JOB_TYPES",
    "OPTION_KEY",
    "PRIORITIES",
    "SCHEMA_VERSION",
    "InvalidJob",
    "JobOptions",
    "check_actor_options",
    "lifecycle_option",
    "check_job_id",
    "new_job",
]


def check_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is usable as a storage key segment, else raise ``InvalidJob`` saying why."""
    if not isinstance(job_id, str):
        raise InvalidJob(f"must be a string, got {type(job_id).__name__}", "options.job.job_id")
    if not JOB_ID_PATTERN.fullmatch(job_id):
        shown = job_id if len(job_id) <= 40 else job_id[:40] + "…"
        raise InvalidJob(
            f"{shown!r} ({len(job_id)} characters) is not a usable job id: 1-128 of A-Z a-z 0-9 . _ : = @ + -, "
            "starting with a letter or digit",
            "options.job.job_id",
        )
    return job_id


def _number(name: str, value: object, *, integer: bool = False, minimum: float = 0, optional: bool = True) -> None:
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise MalformedMessage(f"options.{name}", f"must be {kind} >= {minimum}, got {value!r}")


def check_actor_options(options: Mapping[str, Any]) -> None:
    """Check the lifecycle options a message may carry itself (``ttl_s`` …, or Dramatiq's names for them);
    raise ``MalformedMessage``."""
    for name in _SECONDS_OR_MS:
        if name in options:
            _number(name, options[name])
    for name in ("max_failures", "max_interruptions", "max_retries"):
        if name in options:
            _number(name, options[name], integer=True)


#: The lifecycle options that are durations: Burrow's (seconds) and Dramatiq's (milliseconds).
_SECONDS_OR_MS = (
    *("ttl_s", "max_run_s", "checkpoint_every_s", "min_backoff_s", "max_backoff_s"),
    *("max_age", "time_limit", "min_backoff", "max_backoff"),
)


def lifecycle_option(options: Mapping[str, Any], name: str) -> Any:
    """Lifecycle option ``name`` (Burrow's name) in an actor's or a message's ``options``: its value, else the
    value of Dramatiq's name for it in Burrow's unit (``DRAMATIQ_OPTIONS``), else ``None``. Raises
    ``TypeError`` for a Dramatiq value that is not a number."""
    value = options.get(name)
    if value is not None or name not in DRAMATIQ_OPTIONS:
        return value
    alias, factor = DRAMATIQ_OPTIONS[name]
    value = options.get(alias)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if factor == 1 else int | float):
        unit = "an integer" if factor == 1 else "a number of milliseconds"
        raise TypeError(f"{alias} must be {unit}, got {value!r}")  # ("1000" would read as 1,000 s)
    return value * factor


@dataclass(frozen=True)
class JobOptions:
    """A job's identity, routing and counters.

    Attributes:
        job_id: Stable id; a retry or re-dispatch keeps it (defaults to the first message's id).
        job_type: One of ``sync``, ``polling``, ``batch``, ``stream``.
        model: The model the job needs (free text, used for queue routing).
        priority: One of ``urgent``, ``bulk``, ``test``.
        subcloud: The private pool the job belongs to.
        expires_at: Absolute expiry (Unix seconds), or ``None`` for none.
        failures: Attempts that failed (exception, timeout, crash) so far.
        interruptions: Attempts interrupted (preemption, lost node) so far.
        avoid_nodes: Node ids that should not run this job again.
        trace: W3C trace context (``traceparent``, ``tracestate``).
        unrecorded_success: The id of an attempt that succeeded (artifacts stored) but whose record could not
            be written; the next delivery records the success without running the job again.
        reply_to: A queue that a waiting submitter reads (sync jobs): the node publishes the job's outcome
            there once the record holds it.
        lease_of: On a lease copy (``node.attempt.lease``): the id of the running attempt whose released
            delivery this copy guards.
        lease_seen: On a lease copy: that attempt's renewal count when the copy was published.
        signature: ``<key id>:<base64 Ed25519 signature>`` by the cloud (``node.contract.signing``); nodes
            with trusted keys run only jobs whose signature matches.
        version: Schema version of this dict.
    """

    job_id: str
    job_type: str = "batch"
    model: str = ""
    priority: str = "bulk"
    subcloud: str = DEFAULT_SUBCLOUD
    expires_at: float | None = None
    failures: int = 0
    interruptions: int = 0
    avoid_nodes: tuple[str, ...] = ()
    trace: dict[str, str] = field(default_factory=dict)
    unrecorded_success: str | None = None
    reply_to: str | None = None
    lease_of: str | None = None
    lease_seen: int = 0
    signature: str | None = None
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        check_job_id(self.job_id)
        problems = []
        if self.job_type not in JOB_TYPES:
            problems.append(f"job_type must be one of {', '.join(JOB_TYPES)}, got {self.job_type!r}")
        if self.priority not in PRIORITIES:
            problems.append(f"priority must be one of {', '.join(PRIORITIES)}, got {self.priority!r}")
        if not isinstance(self.model, str) or not isinstance(self.subcloud, str):
            problems.append("model and subcloud must be strings")
        if self.expires_at is not None and (
            isinstance(self.expires_at, bool)
            or not isinstance(self.expires_at, int | float)
            or not math.isfinite(self.expires_at)
        ):
            problems.append(f"expires_at must be Unix seconds, got {self.expires_at!r}")
        for name in ("failures", "interruptions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.avoid_nodes, tuple) or not all(isinstance(n, str) for n in self.avoid_nodes):
            problems.append("avoid_nodes must be a list of node ids")
        if not isinstance(self.trace, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.trace.items()
        ):
            problems.append("trace must be an object of strings")
        if self.unrecorded_success is not None and not isinstance(self.unrecorded_success, str):
            problems.append("unrecorded_success must be an attempt id")
        if self.lease_of is not None and not (isinstance(self.lease_of, str) and 0 < len(self.lease_of) <= 64):
            problems.append("lease_of must be an attempt id")
        if not isinstance(self.lease_seen, int) or isinstance(self.lease_seen, bool) or self.lease_seen < 0:
            problems.append(f"lease_seen must be a non-negative integer, got {self.lease_seen!r}")
        if self.reply_to is not None and not (isinstance(self.reply_to, str) and REPLY_QUEUE.fullmatch(self.reply_to)):
            # Only a submitter's own reply queue: else a job could make every node that runs it publish into
            # any queue by name (a work queue, failed-jobs).
            shown = repr(self.reply_to)[:60]
            problems.append(f"reply_to must be a submitter's server-named reply queue (amq.gen-…), got {shown}")
        if self.signature is not None and not (isinstance(self.signature, str) and 0 < len(self.signature) <= 256):
            problems.append("signature must be a string of 1-256 characters")
        if isinstance(self.version, bool) or self.version != SCHEMA_VERSION:
            problems.append(f"unsupported job schema version {self.version!r} (this node reads {SCHEMA_VERSION})")
        if problems:
            raise InvalidJob("; ".join(problems))

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, message_id: str) -> JobOptions:
        """Read the job from a message's options; a message without any gets defaults and its own id.

        Raises:
            InvalidJob: The options are malformed (unknown field, wrong type, unsupported version).
        """
        raw = options.get(OPTION_KEY)
        if raw is None:
            return cls(job_id=message_id)
        if not isinstance(raw, Mapping):
            raise InvalidJob(f"must be an object, got {type(raw).__name__}")
        unknown = sorted(str(k) for k in set(raw) - set(_FIELD_NAMES))
        if unknown:
            raise InvalidJob(f"unknown job option(s): {', '.join(unknown)}")
        values = dict(raw)
        values.setdefault("job_id", message_id)
        if isinstance(values.get("avoid_nodes"), list):
            values["avoid_nodes"] = tuple(values["avoid_nodes"])
        try:
            return cls(**values)
        except TypeError as e:
            raise InvalidJob(str(e)) from None

    def to_options(self) -> dict[str, Any]:
        """The dict to put under ``message.options["job"]``."""
        # Field by field rather than ``dataclasses.asdict`` (a deep copy through every value): this runs for
        # every job published, and a batch publishes thousands at once.
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["avoid_nodes"] = list(self.avoid_nodes)
        data["trace"] = dict(self.trace)
        return data

    def replace(self, **changes: Any) -> JobOptions:
        return dataclasses.replace(self, **changes)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(JobOptions))


def new_job(
    *,
    ttl_s: float | None = None,
    now: float,
    job_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Options for submitting a new job: ``actor.send_with_options(kwargs=..., job=new_job(...))``.

    Args:
        ttl_s: Seconds from ``now`` after which the job must not start (``None``: the actor's default).
        now: The submission time (Unix seconds).
        job_id: A caller-chosen id (default: a new UUID).
        **fields: Other ``JobOptions`` fields (job_type, model, priority, subcloud, trace).
    """
    expires_at = now + ttl_s if ttl_s is not None else None
    return JobOptions(job_id=job_id or str(uuid.uuid4()), expires_at=expires_at, **fields).to_options()
