"""What a worker process holds for its actors: settings, storage and slot (set up once by ``node.boot``).

The per-job context — checkpoints, artifacts, progress, ``should_stop`` — is ``node.job.current_job()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import Settings
from .storage import Storage
from .supervisor.slots import Slot


@dataclass(frozen=True)
class NodeContext:
    settings: Settings
    storage: Storage
    slot: Slot | None


_context: NodeContext | None = None


def install(context: NodeContext) -> None:
    global _context
    _context = context


def node() -> NodeContext:
    """The node context of this worker process.

    Raises:
        RuntimeError: Called outside a booted worker process.
    """
    if _context is None:
        raise RuntimeError("no node context: this code runs only inside a worker started by node.actors")
    return _context
