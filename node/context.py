"""What a running actor can reach: this process's storage, its slot and the current job's id.

Set up once per worker process by ``node.boot``. (The full job context — checkpoints, progress, artifacts,
``should_stop`` — grows here with the job-lifecycle middleware.)
"""

from __future__ import annotations

from dataclasses import dataclass

from dramatiq.middleware import CurrentMessage

from .settings import Settings
from .slots import Slot
from .storage import Storage


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


def current_job_id() -> str:
    """The running job's id: its ``job_id`` option if the submitter set one, else the message id."""
    message = CurrentMessage.get_current_message()
    if message is None:
        raise RuntimeError("current_job_id() is only available while an actor runs")
    return str(message.options.get("job_id") or message.message_id)
