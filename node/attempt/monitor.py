"""One thread per worker process that watches the running attempts: progress, lazy records, reservations.

Per attempt it would cost a thread start per job; here one thread ticks a few times a second and, for each
running attempt: writes its record entry once the job has run ``record_after_s`` (a short job never pays for
a record write at start), writes its progress every ``progress_every_s`` while it changes, asks it to stop
at ``max_run_s`` and, if it ignores that for ``hard_stop_s``, calls ``on_overrun`` (which kills the process:
the only way to free a GPU held by a hung C/CUDA call), and every ``cancel_check_s`` reads the job's record
for a cancel request (the job then sees ``should_stop`` with reason ``cancelled``). With a ``lease`` timing,
an attempt that runs ``release_after_s`` acks its delivery early and then renews its lease every
``renew_every_s`` (``node.attempt.lease``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .gil import fast_switching
from .lease import LeaseTiming

logger = logging.getLogger(__name__)

TICK_S = 0.1


class Watched(Protocol):
    """What the monitor needs of an attempt (``node.attempt.runner.Attempt``)."""

    started_monotonic: float
    max_run_s: float | None
    recorded: bool
    releasable: bool
    released: bool
    lock: threading.Lock

    def request_stop(self, reason: str) -> None: ...
    def write_record(self) -> None: ...
    def write_progress(self) -> None: ...
    def check_cancel(self) -> None: ...
    def release(self) -> None: ...
    def renew(self) -> None: ...


class Monitor:
    """Watches attempts registered with ``watch`` until ``forget``.

    Parameters:
        record_after_s: Running time after which an attempt's record entry is written.
        progress_every_s: Interval between progress writes.
        cancel_check_s: Interval between looks at a running job's record for a cancel request.
        hard_stop_s: How long past ``max_run_s`` a job may ignore ``should_stop`` (``None``: forever).
        on_overrun: Called with an attempt that did (from the monitor thread).
        lease: When attempts release their delivery and renew their lease (``None``: never).
    """

    def __init__(
        self,
        *,
        record_after_s: float,
        progress_every_s: float,
        hard_stop_s: float | None,
        on_overrun: Callable[[Watched], None],
        cancel_check_s: float = 2.0,
        lease: LeaseTiming | None = None,
    ) -> None:
        self.record_after_s = record_after_s
        self.progress_every_s = progress_every_s
        self.cancel_check_s = cancel_check_s
        self.hard_stop_s = hard_stop_s
        self.on_overrun = on_overrun
        self.lease = lease
        self._watched: dict[int, tuple[Watched, list[float]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, attempt: Watched) -> None:
        with self._lock:
            # [last progress write, last cancel check, last lease renewal]
            start = attempt.started_monotonic
            self._watched[id(attempt)] = (attempt, [start, start, start])
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="burrow-monitor", daemon=True)
                self._thread.start()

    def forget(self, attempt: Watched) -> None:
        """Stop watching ``attempt``; returns once no write for it is in flight."""
        with self._lock:
            self._watched.pop(id(attempt), None)
        with attempt.lock:
            pass

    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)
            with self._lock:
                watched = list(self._watched.values())
            now = time.monotonic()
            for attempt, last in watched:
                try:
                    self._tick(attempt, last, now)
                except Exception:  # an observer never breaks the observed
                    logger.exception("Monitor tick failed")

    def _tick(self, attempt: Watched, last: list[float], now: float) -> None:
        ran_s = now - attempt.started_monotonic
        if attempt.max_run_s is not None and ran_s >= attempt.max_run_s:
            attempt.request_stop("timeout")
            if self.hard_stop_s is not None and ran_s >= attempt.max_run_s + self.hard_stop_s:
                with self._lock:
                    if id(attempt) not in self._watched:
                        return  # it finished meanwhile
                self.on_overrun(attempt)
                return
        if self.lease is not None and attempt.releasable:
            if not attempt.released and ran_s >= self.lease.release_after_s:
                self._write(attempt, attempt.release)
                last[2] = now
            elif attempt.released and now - last[2] >= self.lease.renew_every_s:
                last[2] = now
                self._write(attempt, attempt.renew)
        if not attempt.recorded and ran_s >= self.record_after_s:
            self._write(attempt, attempt.write_record)
        elif attempt.recorded and now - last[0] >= self.progress_every_s:
            last[0] = now
            self._write(attempt, attempt.write_progress)
        if now - last[1] >= self.cancel_check_s:
            last[1] = now
            self._write(attempt, attempt.check_cancel)

    def _write(self, attempt: Watched, write: Callable[[], None]) -> None:
        if not attempt.lock.acquire(blocking=False):
            return
        try:
            with self._lock:
                if id(attempt) not in self._watched:
                    return
            with fast_switching():  # beside a CPU-bound job, or the write waits 5 ms per blocking call
                write()
        except Exception as e:  # storage trouble: the next tick tries again
            logger.debug("Record write for a running attempt failed: %s", e)
        finally:
            attempt.lock.release()
