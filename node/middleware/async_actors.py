"""Async actors (``async def``) on a node: Dramatiq's event loop thread, and the job context inside it.

Dramatiq runs an ``async def`` actor's coroutine on one event loop thread per worker process (its ``AsyncIO``
middleware) while the worker thread waits. Two things change under the node: the coroutine would run in
the loop thread's context, where ``current_job()`` finds no job, so each async actor's function is wrapped
to run its coroutine with the job context of the worker thread that took the job; and the loop thread is
started only in a worker that declares an async actor, with time to start on a loaded machine (Dramatiq
starts it in every worker and gives it one second).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import dramatiq
from dramatiq.asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from dramatiq.middleware.asyncio import AsyncIO

from ..attempt import running

#: How long a worker waits for its event loop thread to start.
LOOP_START_S = 30.0


class AsyncActors(AsyncIO):
    """Runs ``async def`` actors on the worker's event loop thread, each inside its job's context."""

    def __init__(self) -> None:
        super().__init__()
        self.wanted = False  # an async actor was declared: this worker needs the loop thread

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor) -> None:
        original = getattr(actor.fn, "__wrapped__", None)  # (Dramatiq wraps an async def with functools.wraps)
        if original is None or not inspect.iscoroutinefunction(original):
            return
        self.wanted = True

        @functools.wraps(original)
        def run(*args: Any, **kwargs: Any) -> Any:
            context = running.current()  # the worker thread's job, read where it is set

            async def in_job_context() -> Any:
                running.bind(context)  # (into this coroutine's task only)
                return await original(*args, **kwargs)

            loop_thread = get_event_loop_thread()
            if loop_thread is None:
                raise RuntimeError(f"actor {actor.actor_name!r} is async, and this worker has no event loop")
            return loop_thread.run_coroutine(in_job_context())

        actor.fn = run

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self.wanted and get_event_loop_thread() is None:
            loop_thread = EventLoopThread(self.logger)
            loop_thread.start(timeout=LOOP_START_S)
            set_event_loop_thread(loop_thread)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if get_event_loop_thread() is not None:
            super().after_worker_shutdown(broker, worker)
