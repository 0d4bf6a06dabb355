"""Node settings: one frozen dataclass read from the environment and validated at start.

Every value has a default that works on a laptop with a local RabbitMQ and a local storage directory, so
``dramatiq node.actors`` runs with no configuration at all.  A malformed value raises ``ConfigError`` naming
the variable.  Secrets are read from the environment only and never appear in ``repr`` or logs.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

from .contract.topology import MAX_PREFETCH, PART_PATTERN
from .errors import ConfigError

#: AMQP sends the heartbeat interval as a 16-bit number.
AMQP_SHORT_MAX = 65_535
#: RabbitMQ's default ``max_message_size`` (128 MiB): a larger message is refused by the broker.
MAX_PAYLOAD_BYTES = 128 * 1024 * 1024
#: Worker slots (and processes) of one node: a typo such as 10000 would fork that many workers.
MAX_SLOTS = 1024

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_ACTOR_MODULES = ("actors.simulation", "actors.training", "actors.inference")
#: How CUDA names a GPU or MIG instance besides its index, e.g. ``GPU-8f6b…`` or ``MIG-GPU-…/1/0``.
_GPU_UUID = re.compile(r"(GPU|MIG)-[0-9A-Za-z/-]+")
#: A node id, subcloud or queue prefix: it goes into queue names and storage keys (ASCII, no separators).
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


def _shown(url: str) -> str:
    """``url`` as it may be shown when it does not even parse: anything between ``//`` and ``@`` hidden."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` so it is safe to log or print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class Settings:
    """Everything a node needs to know, with units in the names.

    Attributes:
        amqp_url: RabbitMQ URL (``AMQP_URL``); several may be separated by ``;``.
        storage_url: ``file:///path`` or ``s3://bucket/prefix`` (``BURROW_STORAGE_URL``).
        s3_endpoint_url: S3-compatible endpoint, e.g. R2 or MinIO (``BURROW_S3_ENDPOINT_URL``); empty for AWS.
        s3_region: Region for S3 (``BURROW_S3_REGION``, falls back to ``AWS_REGION``; R2 uses ``auto``).
        s3_access_key_id: Access key (``AWS_ACCESS_KEY_ID``); empty means boto3's own credential chain.
        s3_secret_access_key: Secret key (``AWS_SECRET_ACCESS_KEY``); never printed.
        signing_key: The cloud's job-signing key (``BURROW_SIGNING_KEY``, ``<key id>:<base64 Ed25519 private
            key>``; submitters and the router, never nodes); never printed.
        amqp_ca_file: CA certificates that an ``amqps://`` broker's certificate must chain to
            (``BURROW_AMQP_CA_FILE``, PEM; default: the system's).
        trusted_keys: Public keys whose signatures a node accepts (``BURROW_TRUSTED_KEYS``, comma-separated
            ``<key id>:<base64>``); set, the node runs signed jobs only.
        node_id: This machine's name in job records and logs (``BURROW_NODE_ID``, default the hostname).
        subcloud: The private pool this node serves (``BURROW_SUBCLOUD``).
        gpus: ``None`` to discover (NVML, then ``CUDA_VISIBLE_DEVICES``), ``()`` for none, or an explicit tuple
            of device ids (``BURROW_GPUS``: ``auto``, ``none`` or ``0,1,2``).
        cpu_slots: How many CPU slots exist when there is no GPU (``BURROW_CPU_SLOTS``).
        processes: Worker processes ``burrow node`` starts (``BURROW_PROCESSES``, ``0`` = one per slot).
        heartbeat_s: AMQP heartbeat (``BURROW_HEARTBEAT_S``).
        node_heartbeat_s: How often each worker process announces itself in the node registry
            (``BURROW_NODE_HEARTBEAT_S``; 0 disables it); a node silent for 3 of them counts as gone.
        cancel_check_s: How often a node reads a running job's record for a cancel request
            (``BURROW_CANCEL_CHECK_S``).
        consumer_timeout_s: The broker's ``consumer_timeout`` (``BURROW_CONSUMER_TIMEOUT_S``; RabbitMQ's
            default, 30 min): a job that runs half of it acks its delivery early and renews a lease instead
            (``node.attempt.lease``); 0 if the broker has none.
        max_payload_bytes: Largest message a submitter may publish (``BURROW_MAX_PAYLOAD_BYTES``); bigger
            inputs go to storage and travel by reference (``node.contract.inputs``).
        prefetch: Messages each worker process holds (``BURROW_PREFETCH``); 1 so a crash costs one job.
        threads: Worker threads per process under ``burrow node`` (``BURROW_THREADS``; 0: one per job a slot
            may hold, i.e. the largest prefetch). Fewer than the prefetch suits short CPU-bound jobs: the
            others wait in the worker, already delivered (README, "Short jobs").
        delivery_limit: Quorum-queue delivery limit before dead-lettering (``BURROW_DELIVERY_LIMIT``).
        queue_prefix: Prepended to every RabbitMQ queue name (``BURROW_QUEUE_PREFIX``), to share a vhost.
        state_dir: Machine-local directory for slot locks and process status (``BURROW_STATE_DIR``).
        grace_s: Time a worker gets to finish after SIGTERM (``BURROW_GRACE_S``).
        end_budget_s: Time an ending attempt may spend storing its record and sending the job on, outside a
            shutdown, before it gives up and re-offers the job (``BURROW_END_BUDGET_S``).
        restart_backoff_min_s: First delay before restarting a crashed worker (``BURROW_RESTART_BACKOFF_MIN_S``).
        restart_backoff_max_s: Largest such delay (``BURROW_RESTART_BACKOFF_MAX_S``).
        actor_modules: Modules ``node.actors`` imports (``BURROW_ACTOR_MODULES``, comma-separated).
        topology: The queue topology file (``BURROW_TOPOLOGY``, TOML; see ``node.contract.topology``); empty:
            one queue per actor, as Dramatiq does.
        models: The models this node serves (``BURROW_MODELS``, comma-separated; empty: all of its
            subcloud's). Only with a topology.
    """

    amqp_url: str = DEFAULT_AMQP_URL
    storage_url: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = field(default="", repr=False)
    signing_key: str = field(default="", repr=False)
    trusted_keys: str = ""
    amqp_ca_file: Path | None = None
    node_id: str = field(default_factory=socket.gethostname)
    subcloud: str = "public"
    gpus: tuple[str, ...] | None = None
    cpu_slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    processes: int = 0
    heartbeat_s: int = 30
    node_heartbeat_s: float = 10.0
    cancel_check_s: float = 2.0
    consumer_timeout_s: float = 1800.0
    max_payload_bytes: int = 256 * 1024
    prefetch: int = 1
    threads: int = 0
    delivery_limit: int = 3
    queue_prefix: str = ""
    state_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "burrow")
    grace_s: float = 25.0
    end_budget_s: float = 120.0
    restart_backoff_min_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    actor_modules: tuple[str, ...] = DEFAULT_ACTOR_MODULES
    topology: Path | None = None
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.storage_url:
            object.__setattr__(self, "storage_url", (Path.cwd() / ".burrow" / "storage").as_uri())

    def signer(self):
        """The job signer of ``signing_key`` (``node.contract.signing.Signer``), or ``None``.

        Raises:
            ConfigError: The key is malformed.
        """
        from .contract.signing import load_signer

        return load_signer("BURROW_SIGNING_KEY", self.signing_key)

    def trusted(self) -> dict:
        """The public keys of ``trusted_keys`` by key id (empty: signatures are not required).

        Raises:
            ConfigError: A key is malformed.
        """
        from .contract.signing import load_trusted

        return load_trusted("BURROW_TRUSTED_KEYS", self.trusted_keys)

    def ensure_state_dir(self) -> Path:
        """Create the state directory if needed; ``ConfigError`` (one line) if it cannot be created or written."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            probe = self.state_dir / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            why = "it is a file, not a directory" if isinstance(e, FileExistsError) else e.strerror or e
            raise ConfigError("BURROW_STATE_DIR", f"cannot use {str(self.state_dir)!r}: {why}") from None
        return self.state_dir

    @property
    def masked_amqp_url(self) -> str:
        return ";".join(mask_url(u) for u in self.amqp_url.split(";"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``).

        Raises:
            ConfigError: A variable is malformed; the message names it.
        """
        env = os.environ if environ is None else environ
        r = _Reader(env)
        defaults = cls()
        settings = cls(
            amqp_url=r.url("AMQP_URL", defaults.amqp_url, schemes=("amqp", "amqps")),
            storage_url=r.url("BURROW_STORAGE_URL", defaults.storage_url, schemes=("file", "s3")),
            s3_endpoint_url=r.url("BURROW_S3_ENDPOINT_URL", "", schemes=("http", "https")),
            s3_region=r.text("BURROW_S3_REGION", env.get("AWS_REGION") or defaults.s3_region),
            s3_access_key_id=r.text("AWS_ACCESS_KEY_ID", ""),
            s3_secret_access_key=r.text("AWS_SECRET_ACCESS_KEY", ""),
            node_id=r.name("BURROW_NODE_ID", defaults.node_id),
            subcloud=r.name("BURROW_SUBCLOUD", defaults.subcloud),
            gpus=r.gpus("BURROW_GPUS"),
            cpu_slots=r.integer("BURROW_CPU_SLOTS", defaults.cpu_slots, minimum=1, maximum=MAX_SLOTS),
            processes=r.integer("BURROW_PROCESSES", 0, minimum=0, maximum=MAX_SLOTS),
            heartbeat_s=r.integer("BURROW_HEARTBEAT_S", defaults.heartbeat_s, minimum=0, maximum=AMQP_SHORT_MAX),
            node_heartbeat_s=r.number("BURROW_NODE_HEARTBEAT_S", defaults.node_heartbeat_s, minimum=0),
            cancel_check_s=r.number("BURROW_CANCEL_CHECK_S", defaults.cancel_check_s, minimum=0.1),
            consumer_timeout_s=r.number("BURROW_CONSUMER_TIMEOUT_S", defaults.consumer_timeout_s, minimum=0),
            max_payload_bytes=r.integer(
                "BURROW_MAX_PAYLOAD_BYTES", defaults.max_payload_bytes, minimum=1024, maximum=MAX_PAYLOAD_BYTES
            ),
            prefetch=r.integer("BURROW_PREFETCH", defaults.prefetch, minimum=1, maximum=MAX_PREFETCH),
            threads=r.integer("BURROW_THREADS", defaults.threads, minimum=0, maximum=MAX_PREFETCH),
            delivery_limit=r.integer("BURROW_DELIVERY_LIMIT", defaults.delivery_limit, minimum=0),
            queue_prefix=r.name("BURROW_QUEUE_PREFIX", "", empty=True),
            state_dir=Path(r.text("BURROW_STATE_DIR", str(defaults.state_dir))),
            grace_s=r.number("BURROW_GRACE_S", defaults.grace_s, minimum=0),
            end_budget_s=r.number("BURROW_END_BUDGET_S", defaults.end_budget_s, minimum=0),
            restart_backoff_min_s=r.number("BURROW_RESTART_BACKOFF_MIN_S", 1.0, minimum=0),
            restart_backoff_max_s=r.number("BURROW_RESTART_BACKOFF_MAX_S", 60.0, minimum=0),
            actor_modules=r.modules("BURROW_ACTOR_MODULES", defaults.actor_modules),
            topology=Path(r.text("BURROW_TOPOLOGY", "")) if r.text("BURROW_TOPOLOGY", "") else None,
            models=r.names("BURROW_MODELS"),
            signing_key=r.text("BURROW_SIGNING_KEY", ""),
            trusted_keys=r.text("BURROW_TRUSTED_KEYS", ""),
            amqp_ca_file=r.existing_file("BURROW_AMQP_CA_FILE"),
        )
        settings.signer(), settings.trusted()  # a malformed key stops start-up, naming its variable
        return settings


class _Reader:
    """Parses one environment variable at a time, raising ``ConfigError`` that names it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        value = self._raw(name)
        return default if value is None else value

    def name(self, name: str, default: str, *, empty: bool = False) -> str:
        """A name that goes into queue names and storage keys: ASCII letters, digits, ``-``, ``_``, ``.``."""
        value = self.text(name, default)
        if not (_NAME.fullmatch(value) or (empty and value == "")):
            raise ConfigError(name, f"{value!r} may only hold letters, digits, '-', '_' and '.'")
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(name, f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(name, f"must be at most {maximum}, got {number}")
        return number

    def number(self, name: str, default: float, *, minimum: float) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(name, f"expected a number, got {value!r}") from None
        if not math.isfinite(number):  # NaN passes every comparison below, and inf breaks timers
            raise ConfigError(name, f"expected a finite number, got {value!r}")
        if number < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {number}")
        return number

    def url(self, name: str, default: str, *, schemes: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if not value:
            return value
        for one in value.split(";"):
            try:
                parts = urlsplit(one)
                _ = parts.port  # (parsed on use: a bad port or bracket would surface later, as a traceback)
            except ValueError as e:
                raise ConfigError(name, f"{_shown(one)!r} is not a URL: {e}") from None
            scheme = parts.scheme
            if scheme not in schemes:
                raise ConfigError(
                    name, f"{mask_url(one)!r} has scheme {scheme!r}; expected one of {', '.join(schemes)}"
                )
        return value

    def existing_file(self, name: str) -> Path | None:
        value = self.text(name, "")
        if not value:
            return None
        if not Path(value).is_file():
            raise ConfigError(name, f"{value!r} is not a readable file")
        return Path(value)

    def gpus(self, name: str) -> tuple[str, ...] | None:
        value = self.text(name, "auto")
        if value.lower() == "auto":
            return None
        if value.lower() == "none":
            return ()
        ids = tuple(part.strip() for part in value.split(","))
        if any(not part for part in ids):
            raise ConfigError(name, f"{value!r} has an empty entry; expected 'auto', 'none' or e.g. '0,1,2'")
        if len(set(ids)) != len(ids):
            raise ConfigError(name, f"{value!r} lists a GPU twice")
        for part in ids:
            if not (part.isdigit() or _GPU_UUID.fullmatch(part)):
                raise ConfigError(
                    name, f"{part!r} is not a GPU index or UUID; expected 'auto', 'none', '0,1,2' or 'GPU-<uuid>'"
                )
        return ids

    def names(self, name: str) -> tuple[str, ...]:
        value = self._raw(name)
        names = tuple(part.strip() for part in (value or "").split(",") if part.strip())
        for part in names:
            if not PART_PATTERN.fullmatch(part):
                raise ConfigError(name, f"{part!r} is not a name (1-48 of a-z, 0-9, '-', '_')")
        return names

    def modules(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return default
        modules = tuple(part.strip() for part in value.split(",") if part.strip())
        for module in modules:
            if not all(piece.isidentifier() for piece in module.split(".")):
                raise ConfigError(name, f"{module!r} is not a Python module path")
        return modules


def import_actor_modules(modules: tuple[str, ...]) -> list[ModuleType]:
    """Import ``BURROW_ACTOR_MODULES``; a module that does not import (missing, a syntax error, an error it
    raises) is a ``ConfigError`` naming it and the error in one line."""
    imported = []
    for module in modules:
        try:
            imported.append(importlib.import_module(module))
        except Exception as e:
            raise ConfigError("BURROW_ACTOR_MODULES", f"cannot import {module!r}: {_import_problem(e)}") from None
    return imported


def _import_problem(error: Exception) -> str:
    """What went wrong importing an actor module, in one line. Dramatiq's error for an actor option no
    middleware declares ("Did you forget to add a middleware to your Broker?") is put in this node's terms:
    which options it does know (Dramatiq's ``Retries``, ``AgeLimit`` and ``TimeLimit`` are not among its
    middleware; their main options are read under their own names)."""
    text = str(error)
    if isinstance(error, ValueError) and text.startswith("The following actor options are undefined: "):
        unknown = text.removeprefix("The following actor options are undefined: ").split(". Did you forget")[0]
        import dramatiq  # (here: the settings are read before any broker exists)

        known = ", ".join(sorted(dramatiq.get_broker().actor_options))
        return f"an actor uses options this node does not know: {unknown} (it knows: {known})"
    return f"{type(error).__name__}: {text}"
