"""The queue topology: one naming function for every work queue, and the file that says which exist.

A job's queue follows from four of its options: ``{subcloud}.{job_type}.{model}.{priority}`` (a job with no
model goes to model ``any``), e.g. ``acme.sync.llama3-8b.urgent``. ``queue_name`` builds it and
``parse_queue_name`` reads it back; nothing else in Burrow spells a work-queue name.

The topology file (TOML) says which queues exist::

    priorities = ["urgent", "bulk", "test"]   # the order a node takes work in
    job_types = ["sync", "batch"]

    [subclouds.public]
    models = ["any", "llama3-8b"]

    [subclouds.acme]                          # a private pool
    models = ["llama3-8b"]
    fallback = ["public"]                     # where its jobs go when no node of acme can run them

    [consumers.sync]                          # short jobs: a slot holds up to 4 at once, on 4 threads
    prefetch = 4

Every (subcloud, job type, model, priority) combination of the file is one quorum queue. A node serves one
subcloud and some of its models (``BURROW_SUBCLOUD``, ``BURROW_MODELS``) and takes work from its queues in
priority order (``Topology.node_queues``).

A job type's ``prefetch`` (default: the node's ``BURROW_PREFETCH``, 1) is the most jobs a slot holds at once
when it takes one of that type (``node.broker.priority``): 1 keeps a slot to one job (GPU work, long jobs,
whose crash costs much); above 1 a slot runs that many short jobs side by side, and a crash redoes them all.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .job_options import JOB_TYPES, PRIORITIES, JobOptions

#: The model of jobs that do not name one.
ANY_MODEL = "any"

#: A name part: no dots (they separate the parts), nothing a queue name or a shell would trip on.
PART_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")


@dataclass(frozen=True, order=True)
class QueueAddress:
    """Where a job waits: its subcloud, job type, model and priority class."""

    subcloud: str
    job_type: str
    model: str
    priority: str

    @property
    def name(self) -> str:
        return queue_name(self.subcloud, self.job_type, self.model, self.priority)


def queue_name(subcloud: str, job_type: str, model: str, priority: str) -> str:
    """The work queue of jobs with these options (raises ``ValueError`` naming a part that cannot be one)."""
    parts = {"subcloud": subcloud, "job_type": job_type, "model": model or ANY_MODEL, "priority": priority}
    for part, value in parts.items():
        if not isinstance(value, str) or not PART_PATTERN.fullmatch(value):
            raise ValueError(f"{part} {value!r} cannot name a queue: use 1-48 of a-z, 0-9, '-', '_'")
    return ".".join(parts.values())


def parse_queue_name(name: str) -> QueueAddress | None:
    """The address a work-queue name stands for, or ``None`` if it is not one (e.g. ``failed-jobs``)."""
    parts = name.split(".")
    if len(parts) != 4 or not all(PART_PATTERN.fullmatch(p) for p in parts):
        return None
    if parts[1] not in JOB_TYPES or parts[3] not in PRIORITIES:
        return None
    return QueueAddress(*parts)


@dataclass(frozen=True)
class Subcloud:
    name: str
    models: tuple[str, ...]
    fallback: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    """The queues that exist (see the module docstring). Build with ``Topology.from_dict`` or ``load_topology``."""

    subclouds: dict[str, Subcloud]
    job_types: tuple[str, ...] = JOB_TYPES
    priorities: tuple[str, ...] = PRIORITIES
    prefetch: dict[str, int] = field(default_factory=dict)  # by job type; a type not named: the node's
    source: str = field(default="", compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "topology") -> Topology:
        """Check and build a topology; raises ``ConfigError`` naming the first bad entry."""

        def names(key: str, value: Any, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: {key}", "must be a non-empty list of names")
            for v in value:
                if not PART_PATTERN.fullmatch(v):
                    raise ConfigError(f"{source}: {key}", f"{v!r} is not a name (1-48 of a-z, 0-9, '-', '_')")
                if allowed is not None and v not in allowed:
                    raise ConfigError(f"{source}: {key}", f"{v!r} is not one of {', '.join(allowed)}")
            if len(set(value)) != len(value):
                raise ConfigError(f"{source}: {key}", "lists a name twice")
            return tuple(value)

        unknown = set(data) - {"priorities", "job_types", "subclouds", "consumers"}
        if unknown:
            raise ConfigError(
                f"{source}: {sorted(unknown)[0]}", "unknown key (priorities, job_types, subclouds, consumers)"
            )
        priorities = names("priorities", data.get("priorities", list(PRIORITIES)), PRIORITIES)
        job_types = names("job_types", data.get("job_types", list(JOB_TYPES)), JOB_TYPES)
        raw = data.get("subclouds")
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{source}: subclouds", "must define at least one subcloud ([subclouds.NAME])")
        subclouds = {}
        for name, entry in raw.items():
            where = f"subclouds.{name}"
            if not PART_PATTERN.fullmatch(name):
                raise ConfigError(f"{source}: {where}", "is not a name (1-48 of a-z, 0-9, '-', '_')")
            if not isinstance(entry, dict) or set(entry) - {"models", "fallback"}:
                raise ConfigError(f"{source}: {where}", "may only hold models = [...] and fallback = [...]")
            models = names(f"{where}.models", entry.get("models", [ANY_MODEL]))
            fallback = tuple(entry.get("fallback", []))
            if fallback:
                names(f"{where}.fallback", list(fallback))
            subclouds[name] = Subcloud(name, models, fallback)
        for sub in subclouds.values():
            for target in sub.fallback:
                if target not in subclouds or target == sub.name:
                    raise ConfigError(f"{source}: subclouds.{sub.name}.fallback", f"{target!r} is not another subcloud")
        prefetch = _consumers(data.get("consumers", {}), job_types, source)
        return cls(subclouds=subclouds, job_types=job_types, priorities=priorities, prefetch=prefetch, source=source)

    def addresses(self) -> list[QueueAddress]:
        """Every work queue of the topology."""
        return sorted(
            QueueAddress(s.name, t, m, p)
            for s in self.subclouds.values()
            for t in self.job_types
            for m in s.models
            for p in self.priorities
        )

    def prefetch_of(self, name: str) -> int | None:
        """The prefetch the topology sets for work queue ``name`` (by its job type), or ``None``."""
        address = parse_queue_name(name)
        return self.prefetch.get(address.job_type) if address is not None else None

    def prefetches(self, names: list[str]) -> dict[str, int]:
        """The queues of ``names`` that have a prefetch of their own, with it."""
        return {name: n for name in names if (n := self.prefetch_of(name)) is not None}

    def queue_names(self) -> list[str]:
        return [a.name for a in self.addresses()]

    def has(self, name: str) -> bool:
        address = parse_queue_name(name)
        if address is None or address.subcloud not in self.subclouds:
            return False
        sub = self.subclouds[address.subcloud]
        return (
            address.model in sub.models and address.job_type in self.job_types and address.priority in self.priorities
        )

    def route(self, job: JobOptions) -> str:
        """The queue for ``job``; raises ``ValueError`` saying why none exists."""
        name = queue_name(job.subcloud, job.job_type, job.model, job.priority)
        if not self.has(name):
            sub = self.subclouds.get(job.subcloud)
            if sub is None:
                why = f"no subcloud {job.subcloud!r} (there are: {', '.join(sorted(self.subclouds))})"
            elif (job.model or ANY_MODEL) not in sub.models:
                why = f"subcloud {job.subcloud!r} serves no model {job.model or ANY_MODEL!r} ({', '.join(sub.models)})"
            elif job.job_type not in self.job_types:
                why = f"no job type {job.job_type!r} in this topology ({', '.join(self.job_types)})"
            else:
                why = f"no priority class {job.priority!r} in this topology ({', '.join(self.priorities)})"
            raise ValueError(f"no queue for this job: {why}")
        return name

    def node_queues(self, subcloud: str, models: tuple[str, ...] = ()) -> list[str]:
        """The queues a node of ``subcloud`` serving ``models`` (all of the subcloud's if empty) takes work
        from, in the order it takes it: every urgent queue before any bulk one, and so on."""
        sub = self.subclouds.get(subcloud)
        if sub is None:
            raise ConfigError("BURROW_SUBCLOUD", f"{subcloud!r} is not in {self.source} ({', '.join(self.subclouds)})")
        missing = [m for m in models if m not in sub.models]
        if missing:
            raise ConfigError("BURROW_MODELS", f"subcloud {subcloud!r} has no model {missing[0]!r} in {self.source}")
        served = models or sub.models
        return [queue_name(subcloud, t, m, p) for p in self.priorities for t in self.job_types for m in served]

    def fallback_chain(self, subcloud: str) -> list[str]:
        """The subclouds a job of ``subcloud`` may fall back to, nearest first (no repeats, no cycles)."""
        chain: list[str] = []
        todo = list(self.subclouds[subcloud].fallback) if subcloud in self.subclouds else []
        while todo:
            name = todo.pop(0)
            if name != subcloud and name not in chain:
                chain.append(name)
                todo.extend(self.subclouds[name].fallback)
        return chain


#: The most jobs one slot may hold at once (a typo such as 4000 would hold a queue's backlog unacked).
MAX_PREFETCH = 64


def _consumers(raw: Any, job_types: tuple[str, ...], source: str) -> dict[str, int]:
    """``[consumers.<job type>] prefetch = N`` of a topology file, checked."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: consumers", "must be a table of job types ([consumers.sync])")
    prefetch = {}
    for job_type, entry in raw.items():
        where = f"{source}: consumers.{job_type}"
        if job_type not in job_types:
            raise ConfigError(where, f"{job_type!r} is not a job type of this topology ({', '.join(job_types)})")
        if not isinstance(entry, dict) or set(entry) != {"prefetch"}:
            raise ConfigError(where, "must hold exactly prefetch = N")
        value = entry["prefetch"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PREFETCH:
            raise ConfigError(f"{where}.prefetch", f"must be an integer from 1 to {MAX_PREFETCH}, got {value!r}")
        prefetch[job_type] = value
    return prefetch


def load_topology(path: str | Path) -> Topology:
    """Read a topology file; raises ``ConfigError`` naming the file and what is wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError("BURROW_TOPOLOGY", f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError("BURROW_TOPOLOGY", f"{path} is not UTF-8 text (a TOML file is expected)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("BURROW_TOPOLOGY", f"{path} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError("BURROW_TOPOLOGY", f"{path} is not TOML this reads: nested too deeply") from None
    return Topology.from_dict(data, source=str(path))
