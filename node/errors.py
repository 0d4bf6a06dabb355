"""Burrow's error tree.

``BurrowError`` is the root of every error Burrow raises on purpose; each package hangs its own subtree
under it (``cloud`` will add ``CloudError``), so callers can catch exactly as much as they mean to.
"""

from __future__ import annotations


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


class SlotError(NodeError):
    """A worker process could not claim a GPU (or CPU) slot."""


class QueueMismatchError(NodeError):
    """A queue already exists on the broker with arguments other than the ones Burrow declares."""


class StorageError(BurrowError):
    """A storage backend failed or was asked for something it does not have."""


class ObjectNotFound(StorageError):
    """The requested key does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object changed (or appeared) since the caller last read it."""
