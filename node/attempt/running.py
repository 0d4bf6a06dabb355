"""Runtime internals: which job contexts run in this process, and which one is the current thread's."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import AttemptContext as JobContext

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("burrow_job", default=None)
_running: dict[JobContext, str] = {}  # the running contexts and the queue each job came from
_lock = threading.Lock()
_shutdown_began_at: float | None = None


def shutdown_began() -> None:
    """Note that this process is shutting down (SIGTERM): ending attempts must fit in the grace period."""
    global _shutdown_began_at
    if _shutdown_began_at is None:
        _shutdown_began_at = time.monotonic()


def shutdown_began_at() -> float | None:
    """When (``time.monotonic()``) this process began shutting down, or ``None``."""
    return _shutdown_began_at


def current() -> JobContext | None:
    return _current.get()


def enter(context: JobContext, queue_name: str = "") -> contextvars.Token:
    """Make ``context`` the current thread's job and count it as running (taken from ``queue_name``)."""
    with _lock:
        _running[context] = queue_name
    return _current.set(context)


def bind(context: JobContext | None) -> None:
    """Make ``context`` the job of the current context only (an async actor's task: see
    ``node.middleware.async_actors``), without counting it again."""
    _current.set(context)


def leave(context: JobContext, token: contextvars.Token | None) -> None:
    with _lock:
        _running.pop(context, None)
    if token is not None:
        _current.reset(token)


def stop_all(reason: str) -> int:
    """Ask every running job in this process to stop; returns how many were asked."""
    with _lock:
        running = list(_running)
    for context in running:
        context.request_stop(reason)
    return len(running)


def running_jobs() -> list[tuple[str, str]]:
    """The jobs running in this process now: (job id, queue it came from)."""
    with _lock:
        return sorted((context.job_id, queue) for context, queue in _running.items())


def contexts_of(job_id: str) -> list[JobContext]:
    """The running contexts of job ``job_id`` in this process (usually none or one)."""
    with _lock:
        return [context for context in _running if context.job_id == job_id]
