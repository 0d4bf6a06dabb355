"""The reservation (``max_run_s``): ask a job to stop when its time is up, and act if it does not."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .job import JobContext


class Reservation:
    """Asks a job to stop at ``max_run_s``; if it is still running ``hard_stop_s`` later, calls ``on_overrun``."""

    def __init__(
        self,
        max_run_s: float,
        hard_stop_s: float | None,
        context: JobContext,
        *,
        on_overrun: Callable[[JobContext], None],
    ) -> None:
        self.context = context
        self.hard_stop_s = hard_stop_s
        self.on_overrun = on_overrun
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(max_run_s,), name="reservation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()

    def _run(self, max_run_s: float) -> None:
        if self._cancelled.wait(max_run_s):
            return
        self.context.request_stop("timeout")
        if self.hard_stop_s is None or self._cancelled.wait(self.hard_stop_s):
            return
        self.on_overrun(self.context)
