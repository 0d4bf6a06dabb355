"""When a worker takes jobs: not while its storage fails.

A worker that cannot read or write its storage cannot run a job: the job is offered again later
(``node.attempt.policy.NOT_STARTED_DELAY_S``, uncounted) and the worker is at once free for the next one.
Left at that, a node whose store refuses it (credentials revoked, a bucket deleted, an endpoint that sends
403s) would take a queue's jobs as fast as they arrive and set each one back, and an outage of the shared
store would keep every node churning through every queue.

So the first storage failure closes the worker's intake: its consumers take nothing for a pause, then take
one job, whose arrival read is the test (or, if a write failed, its end record: a full disk still reads).
It works: the intake opens. It fails: the next pause is twice as long (``MIN_PAUSE_S`` doubling up to
``MAX_PAUSE_S``). Jobs wait in their queue meanwhile, for the nodes whose storage works. A circuit
breaker, written out because it is a dozen lines over the consumers' own pause (``QuorumConsumer``,
``PriorityConsumer``) and no well-kept library plugs into those.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: First pause after a storage failure.
MIN_PAUSE_S = 1.0
#: Longest pause while storage keeps failing.
MAX_PAUSE_S = 60.0


class Intake:
    """Whether this worker may take a job now (see the module docstring). Thread-safe.

    Parameters:
        min_pause_s: First pause after a failure.
        max_pause_s: Longest pause.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        *,
        min_pause_s: float = MIN_PAUSE_S,
        max_pause_s: float = MAX_PAUSE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_pause_s, self.max_pause_s, self.clock = min_pause_s, max_pause_s, clock
        self._closed_until: float | None = None  # None: open
        self._pause_s = min_pause_s
        self._failed_writing = False  # a write failed: only a write that works opens the intake again
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True while storage failed and has not worked since (pausing, or a test job in flight)."""
        return self._closed_until is not None

    def may_take(self) -> bool:
        """Whether a consumer may take a job now: always while storage works; after a failure, once the
        pause is over, until a job is taken (``took``), which is the test."""
        closed_until = self._closed_until
        return closed_until is None or self.clock() >= closed_until

    def took(self) -> None:
        """A consumer took a job. While closed, it is the test job: take nothing more until its storage
        worked or failed (or, should it never get that far, for one more pause)."""
        if self._closed_until is None:
            return
        with self._lock:
            if self._closed_until is not None:
                self._closed_until = self.clock() + self._pause_s

    def failed(self, error: BaseException, *, writing: bool = False) -> None:
        """Storage failed a job of this worker (``writing``: a write failed, which a read succeeding does not
        mend: a full disk still reads)."""
        with self._lock:
            if self._closed_until is None:
                self._pause_s = self.min_pause_s
                self._failed_writing = writing
            else:
                self._pause_s = min(self.max_pause_s, self._pause_s * 2)
                self._failed_writing = self._failed_writing or writing
            self._closed_until = self.clock() + self._pause_s
            pause = self._pause_s
        logger.warning("Storage fails (%s): taking no job for %.0f s, then trying one.", error, pause)

    def worked(self, *, writing: bool = False) -> None:
        """Storage answered a job of this worker (``writing``: it stored something)."""
        if self._closed_until is None:
            return
        with self._lock:
            if self._closed_until is None or (self._failed_writing and not writing):
                return
            self._closed_until, self._pause_s = None, self.min_pause_s
        logger.warning("Storage answers again: taking jobs.")
