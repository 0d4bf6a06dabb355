"""The job schema carried in every message's options (``message.options["job"]``), versioned.

One place defines what a job *is* as it travels: its identity (stable across retries and re-dispatch), its
routing (type, model, priority class, subcloud), its absolute expiry, its attempt counters — *failures*
(the job's fault) apart from *interruptions* (preemption, a lost node: not its fault) — the nodes it should
avoid, and the W3C trace context. Everything else about a job lives in its record in storage.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import NodeError

SCHEMA_VERSION = 1
OPTION_KEY = "job"

#: Actor options of the job lifecycle (message option → actor option → node default).
JOB_ACTOR_OPTIONS = frozenset(
    {"ttl_s", "max_failures", "max_interruptions", "min_backoff_s", "max_backoff_s", "max_run_s", "checkpoint_every_s"}
)

JOB_TYPES = ("sync", "polling", "batch", "stream")
PRIORITIES = ("urgent", "bulk", "test")


class InvalidJob(NodeError):
    """A message's job options are malformed; the message is dead-lettered with this text as the reason."""


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
        version: Schema version of this dict.
    """

    job_id: str
    job_type: str = "batch"
    model: str = ""
    priority: str = "bulk"
    subcloud: str = "public"
    expires_at: float | None = None
    failures: int = 0
    interruptions: int = 0
    avoid_nodes: tuple[str, ...] = ()
    trace: dict[str, str] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.job_id, str) or not self.job_id or "/" in self.job_id or self.job_id in (".", ".."):
            problems.append(f"job_id must be a non-empty string without '/', got {self.job_id!r}")
        if self.job_type not in JOB_TYPES:
            problems.append(f"job_type must be one of {', '.join(JOB_TYPES)}, got {self.job_type!r}")
        if self.priority not in PRIORITIES:
            problems.append(f"priority must be one of {', '.join(PRIORITIES)}, got {self.priority!r}")
        if not isinstance(self.model, str) or not isinstance(self.subcloud, str):
            problems.append("model and subcloud must be strings")
        if self.expires_at is not None and not isinstance(self.expires_at, int | float):
            problems.append(f"expires_at must be Unix seconds, got {self.expires_at!r}")
        for name in ("failures", "interruptions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be a non-negative integer, got {value!r}")
        if not all(isinstance(n, str) for n in self.avoid_nodes):
            problems.append("avoid_nodes must be a list of node ids")
        if not isinstance(self.trace, dict):
            problems.append("trace must be an object")
        if self.version != SCHEMA_VERSION:
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
            raise InvalidJob(f"options.{OPTION_KEY} must be an object, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
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
        data = dataclasses.asdict(self)
        data["avoid_nodes"] = list(self.avoid_nodes)
        return data

    def replace(self, **changes: Any) -> JobOptions:
        return dataclasses.replace(self, **changes)


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
