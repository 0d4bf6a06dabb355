"""What the autoscaler needs of a node pool: its size now, and a way to change it."""

from __future__ import annotations

from typing import Protocol

from ..errors import CloudError


class ProviderError(CloudError):
    """A provider could not read or change its pool's size (the message names the call and why)."""


class Provider(Protocol):
    name: str

    def current(self) -> int:
        """Replicas the pool has now (starting ones included, stopping ones not)."""
        ...

    def scale_to(self, replicas: int, *, idle: frozenset[str] = frozenset()) -> None:
        """Make the pool ``replicas`` big; ``idle``: node ids running nothing (removed first, where the provider
        can choose)."""
        ...
