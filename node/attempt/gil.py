"""A short GIL switch interval while a background thread does I/O beside a running job.

CPU-bound actors hold the GIL; at Python's default switch interval (5 ms) every blocking call of a background
thread (a checkpoint upload makes dozens) waits that long to get it back, and an upload stalled for seconds
beside a pure-Python training loop. At 0.5 ms it takes ~15 ms (``bench/checkpoint_latency.py``). A short
interval costs CPU whenever threads contend (measured: ~400 µs per no-op job with 8 worker threads), so it is
on only while such I/O is in flight, not for the life of the process.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Switch interval while background I/O runs.
FAST_SWITCH_INTERVAL_S = 0.0005

_lock = threading.Lock()
_active = 0
_default = sys.getswitchinterval()


@contextmanager
def fast_switching() -> Iterator[None]:
    """Within this block (from any number of threads at once), the GIL switches every 0.5 ms."""
    global _active, _default
    with _lock:
        if _active == 0:
            _default = sys.getswitchinterval()
            sys.setswitchinterval(FAST_SWITCH_INTERVAL_S)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                sys.setswitchinterval(_default)
