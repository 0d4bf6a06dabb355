"""One retry helper with a deadline, for every call that must outlast a short outage (storage, broker).

Hand-written because the pieces differ from what a retry library offers out of the box: the deadline is
shared by several calls in sequence (the end of an attempt must fit inside the SIGTERM grace as a whole), and
botocore already retries each request, so this loop only spaces out whole operations.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


class Deadline:
    """A point in monotonic time that several steps share.

    Parameters:
        seconds: Time from now until the deadline.
    """

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at


_scope: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("burrow_deadline", default=None)


class deadline_scope:  # noqa: N801 (used as a context manager, like contextlib's)
    """Make ``deadline`` bound every retry loop below it in this thread (e.g. the broker's publish retries).

    A class rather than a ``contextlib.contextmanager`` generator: it is entered once per job.
    """

    __slots__ = ("deadline", "_token")

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __enter__(self) -> Deadline:
        self._token = _scope.set(self.deadline)
        return self.deadline

    def __exit__(self, *exc: object) -> None:
        _scope.reset(self._token)


def current_deadline() -> Deadline | None:
    """The deadline of the enclosing ``deadline_scope``, if any."""
    return _scope.get()


def retry(
    operation: Callable[[], T],
    *,
    deadline: Deadline,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    give_up_on: tuple[type[BaseException], ...] = (),
    first_pause_s: float = 0.2,
    max_pause_s: float = 5.0,
) -> T:
    """Call ``operation`` until it succeeds, pausing with exponential backoff, until ``deadline`` passes.

    Raises:
        The last error once the next pause would cross the deadline, or at once for ``give_up_on`` errors.
    """
    pause = first_pause_s
    while True:
        try:
            return operation()
        except give_up_on:
            raise
        except retry_on as e:
            if deadline.remaining() < pause:
                raise
            logger.warning("%s failed (%s); retrying in %.1fs.", what, e, pause)
            time.sleep(pause)
            pause = min(max_pause_s, pause * 2)
