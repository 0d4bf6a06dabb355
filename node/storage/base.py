"""The storage contract every backend implements (local directory, S3-compatible)."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about a stored object.

    Attributes:
        key: The object's key (``/``-separated, relative to the backend's root).
        etag: An opaque version tag; changes on every write. Pass it back as ``if_match``.
        size: Size in bytes.
    """

    key: str
    etag: str
    size: int


class Storage(ABC):
    """Keys are ``/``-separated relative paths such as ``jobs/<job_id>/record.json``.

    Conditional writes make read-modify-write safe between processes and machines: ``if_none_match=True``
    creates an object only if it does not exist yet; ``if_match=etag`` replaces it only if nobody wrote it
    since that ``etag`` was read. A lost race raises ``PreconditionFailed``; a missing key raises
    ``ObjectNotFound``.
    """

    #: The backend honours ``if_match`` / ``if_none_match`` atomically.
    supports_conditional_writes: ClassVar[bool] = True

    def now(self) -> float:
        """The current time (Unix seconds) by the store's clock: this machine's, corrected where the backend
        learns that it is off (an S3 endpoint's ``Date`` header). Job expiry and record times are judged by it."""
        return time.time()

    @abstractmethod
    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> ObjectInfo:
        """Store ``data`` under ``key``, optionally only if the precondition holds."""

    @abstractmethod
    def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        """Return the object's bytes and its info."""

    def get_if_exists(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        """Return the object's bytes and its info, or ``None`` if it does not exist (a backend that can tell
        without raising overrides this: most record reads at a job's arrival find nothing)."""
        from ..errors import ObjectNotFound

        try:
            return self.get(key)
        except ObjectNotFound:
            return None

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Return the object's info, or ``None`` if it does not exist."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key that starts with ``prefix``, in lexical order."""

    @abstractmethod
    def upload_file(self, key: str, path: str | Path) -> ObjectInfo:
        """Store a local file, streaming it (multipart where the backend has it) rather than reading it whole."""

    @abstractmethod
    def download_file(self, key: str, path: str | Path) -> ObjectInfo:
        """Write the object to a local file, atomically replacing ``path``."""

    @staticmethod
    def check_key(key: str) -> str:
        """Reject keys that could escape the root or are ambiguous."""
        if _PLAIN_KEY.fullmatch(key):  # the keys Burrow makes itself: nothing more to check
            return key
        from ..errors import StorageError

        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid storage key {key!r}: use a relative path like 'jobs/<id>/record.json'")
        if not key.isprintable() or not _encodable(key):
            raise StorageError(f"invalid storage key {key!r}: control characters or a lone surrogate")
        return key


#: Segments of letters, digits and ``._:=@+-`` not starting with a dot, joined by single slashes.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_:=@+-][A-Za-z0-9._:=@+-]*(?:/[A-Za-z0-9_:=@+-][A-Za-z0-9._:=@+-]*)*")


def _encodable(key: str) -> bool:
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True
