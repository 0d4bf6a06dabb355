"""The autoscaler's groups, from a TOML file (``burrow autoscale --config F`` or ``BURROW_AUTOSCALE_CONFIG``)::

    interval_s = 30                 # between rounds of the loop (``--once`` runs one round: a cron trigger)

    [groups.llama]                  # one node pool, fed by these queues (logical names, no prefix)
    queues = ["public.sync.llama3-8b.urgent", "public.batch.llama3-8b.bulk"]
    jobs_per_replica = 2            # jobs one replica is sized for (its slots)
    min_replicas = 0
    max_replicas = 250
    scale_down_delay_s = 300
    hysteresis = 0.1
    provider = "salad"              # a SaladCloud container group (the API key: SALAD_API_KEY)
    organization = "acme"
    project = "burrow"
    container_group = "llama-nodes"

    [groups.cpu]
    queues = ["simulations"]
    provider = "local"              # ``burrow node`` processes on this machine
    env = { BURROW_GPUS = "none", BURROW_CPU_SLOTS = "1" }   # extra environment of each replica

A bad entry is a ``ConfigError`` naming it (``groups.llama.jobs_per_replica: …``). Secrets never go in the
file: the SaladCloud key comes from the environment.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError

from .policy import ScalePolicy

PROVIDERS = ("local", "salad")
_POLICY_KEYS = ("jobs_per_replica", "min_replicas", "max_replicas", "scale_down_delay_s", "hysteresis")
_PROVIDER_KEYS = {
    "local": ("command", "env", "directory"),
    "salad": ("organization", "project", "container_group", "api_url", "timeout_s"),
}


@dataclass(frozen=True)
class GroupConfig:
    """One node pool: the queues that feed it, its policy, and the provider that sizes it."""

    name: str
    queues: tuple[str, ...]
    policy: ScalePolicy
    provider: str
    options: dict[str, Any] = field(default_factory=dict)  # the provider's own keys


@dataclass(frozen=True)
class AutoscaleConfig:
    groups: tuple[GroupConfig, ...]
    interval_s: float = 30.0


def load_config(path: str | Path) -> AutoscaleConfig:
    """Read and check the autoscaler's file (see the module docstring)."""
    where = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(where, f"cannot read it: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(where, f"not TOML: {e}") from None
    except RecursionError:
        raise ConfigError(where, "not TOML this reads: nested too deeply") from None
    return parse_config(raw, where)


def parse_config(raw: dict[str, Any], where: str = "autoscale config") -> AutoscaleConfig:
    unknown = sorted(set(raw) - {"interval_s", "groups"})
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}", "unknown setting (expected interval_s and [groups.<name>])")
    interval = raw.get("interval_s", 30.0)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval < math.inf:
        raise ConfigError(f"{where}: interval_s", f"must be a number of seconds > 0, got {interval!r}")
    groups = raw.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise ConfigError(f"{where}: groups", "no [groups.<name>] table: nothing to scale")
    return AutoscaleConfig(tuple(_group(name, entry, where) for name, entry in groups.items()), float(interval))


def _group(name: str, entry: Any, where: str) -> GroupConfig:
    label = f"{where}: groups.{name}"
    if not isinstance(entry, dict):
        raise ConfigError(label, "must be a table")
    provider = entry.get("provider")
    if provider not in PROVIDERS:
        raise ConfigError(f"{label}.provider", f"must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    allowed = {"queues", "provider", *_POLICY_KEYS, *_PROVIDER_KEYS[provider]}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ConfigError(f"{label}.{unknown[0]}", f"unknown setting for a {provider} group")
    queues = entry.get("queues")
    if not isinstance(queues, list) or not queues or not all(isinstance(q, str) and q for q in queues):
        raise ConfigError(f"{label}.queues", "must be a non-empty list of queue names")
    try:
        policy = ScalePolicy(**{k: entry[k] for k in _POLICY_KEYS if k in entry})
    except ValueError as e:
        raise ConfigError(label, str(e)) from None
    options = {k: entry[k] for k in _PROVIDER_KEYS[provider] if k in entry}
    if provider == "salad":
        for key in ("organization", "project", "container_group"):
            if not isinstance(options.get(key), str) or not options[key]:
                raise ConfigError(f"{label}.{key}", "required for a salad group (a non-empty name)")
    if provider == "local":
        command = options.get("command", ["burrow", "node"])
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise ConfigError(f"{label}.command", "must be a non-empty list of strings")
        env = options.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(f"{label}.env", "must be a table of strings")
    return GroupConfig(name=name, queues=tuple(queues), policy=policy, provider=provider, options=options)
