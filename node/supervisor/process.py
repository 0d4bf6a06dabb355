"""Process plumbing shared by the supervisor and the worker boot (Linux ``prctl``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

#: Exit code of a worker that cannot boot for a reason an operator must fix (a setting, a queue declared with
#: other arguments, an actor module that does not import): ``EX_CONFIG`` of sysexits.h. Its
#: supervisor does not restart it, since every restart would fail the same way. Dramatiq's own codes keep
#: their meaning: 3 (the broker could not be reached at start) is worth restarting for.
EXIT_BOOT_FAILED = 78
#: Exit code of a worker that cannot boot *yet*: its slot is still held (the worker it replaces drains its
#: job after its parent was killed) or its store is not writable now (a full disk). ``EX_TEMPFAIL``: restarted.
EXIT_BOOT_RETRY = 75


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies, so no worker is orphaned."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except OSError as e:  # not Linux
        logger.debug("prctl unavailable: %s", e)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
