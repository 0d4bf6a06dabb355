"""Signed jobs: the cloud signs what a job *is*; nodes, which are not trusted, verify before running it.

Ed25519 (``cryptography``) rather than HMAC: a node verifying an HMAC holds the secret and could sign jobs
of its own; with Ed25519 nodes hold public keys only (``BURROW_TRUSTED_KEYS``), and only the cloud's
submitters and router hold a private key (``BURROW_SIGNING_KEY``). Keys are ``<key id>:<base64 raw key>``; a
node trusts a list of them, so a new key is rolled out by adding its public half to the nodes, then signing
with it, then dropping the old one.

The signature covers what the job does and where it may run — its actor, arguments, job id, type, model,
priority, subcloud, expiry and reply queue — not the network's bookkeeping that nodes and the router update as
the job travels (failure and interruption counters, nodes to avoid, the trace context): a retry or hand-back
by a node keeps the signature valid, and a node that alters anything covered is caught by the next one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError, MalformedMessage
from .queues import DeadLetterReason

#: The job fields a signature covers (the rest is bookkeeping that changes in flight).
SIGNED_JOB_FIELDS = ("job_id", "job_type", "model", "priority", "subcloud", "expires_at", "reply_to")


class BadSignature(MalformedMessage):
    """A job that must be signed is not, or its signature does not match (dead-lettered ``bad-signature``)."""

    reason = DeadLetterReason.BAD_SIGNATURE

    def __init__(self, problem: str) -> None:
        super().__init__("options.job.signature", problem)


def signed_bytes(actor_name: str, args: Sequence[Any], kwargs: Mapping[str, Any], job: Mapping[str, Any]) -> bytes:
    """The canonical bytes a job's signature is made over."""
    covered = {name: job.get(name) for name in SIGNED_JOB_FIELDS}
    document = {"v": 1, "actor": actor_name, "args": list(args), "kwargs": dict(kwargs), "job": covered}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Signer:
    """Signs jobs with one private key (the cloud side)."""

    key_id: str
    key: Ed25519PrivateKey

    def __repr__(self) -> str:  # never show the key
        return f"Signer(key_id={self.key_id!r})"

    def sign(self, actor_name: str, args: Sequence[Any], kwargs: Mapping[str, Any], job: Mapping[str, Any]) -> str:
        """``<key id>:<base64 signature>`` for the job options ``job`` (a ``JobOptions.to_options()`` dict)."""
        signature = self.key.sign(signed_bytes(actor_name, args, kwargs, job))
        return f"{self.key_id}:{base64.b64encode(signature).decode()}"

    def public(self) -> dict[str, Ed25519PublicKey]:
        return {self.key_id: self.key.public_key()}


def verify(
    trusted: Mapping[str, Ed25519PublicKey],
    actor_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    job: Mapping[str, Any],
) -> None:
    """Raise ``BadSignature`` unless ``job`` carries a valid signature by one of the ``trusted`` keys."""
    signature = job.get("signature")
    if not signature:
        raise BadSignature("unsigned, and this node runs signed jobs only")
    key_id, _, encoded = str(signature).partition(":")
    key = trusted.get(key_id)
    if key is None:
        raise BadSignature(f"signed with key {key_id[:40]!r}, which this node does not trust")
    try:
        key.verify(base64.b64decode(encoded, validate=True), signed_bytes(actor_name, args, kwargs, job))
    except (InvalidSignature, binascii.Error, ValueError):
        raise BadSignature(f"signature by key {key_id!r} does not match the job (altered in flight?)") from None


def load_signer(variable: str, text: str) -> Signer | None:
    """``BURROW_SIGNING_KEY`` (``<key id>:<base64 32-byte Ed25519 private key>``), or ``None`` if empty."""
    if not text:
        return None
    key_id, raw = _split(variable, text)
    try:
        return Signer(key_id, Ed25519PrivateKey.from_private_bytes(raw))
    except ValueError:
        raise ConfigError(variable, "not a 32-byte Ed25519 private key (`burrow keygen` makes one)") from None


def load_trusted(variable: str, text: str) -> dict[str, Ed25519PublicKey]:
    """``BURROW_TRUSTED_KEYS`` (comma-separated ``<key id>:<base64 32-byte Ed25519 public key>``)."""
    trusted = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, raw = _split(variable, item)
        try:
            trusted[key_id] = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ConfigError(variable, f"key {key_id!r} is not a 32-byte Ed25519 public key") from None
    return trusted


def _split(variable: str, text: str) -> tuple[str, bytes]:
    key_id, sep, encoded = text.partition(":")
    if not sep or not key_id or not key_id.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(variable, "expected <key id>:<base64 key> (the key id: letters, digits, - and _)")
    try:
        return key_id, base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(variable, f"key {key_id!r} is not base64") from None


def new_key_pair(key_id: str) -> tuple[str, str]:
    """A fresh (``BURROW_SIGNING_KEY``, ``BURROW_TRUSTED_KEYS`` entry) pair for ``key_id``."""
    _split("key id", f"{key_id}:")  # the same rule as when the keys are read
    private = Ed25519PrivateKey.generate()
    private_raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public_raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return (
        f"{key_id}:{base64.b64encode(private_raw).decode()}",
        f"{key_id}:{base64.b64encode(public_raw).decode()}",
    )
