"""``burrow health``: is this machine's ``burrow node`` up? For a container's HEALTHCHECK or a liveness probe.

Healthy means: a supervisor holds the state directory's ``node.lock`` (its pid is written there) and at least
one of its worker processes is alive and has claimed its slot (its status file names a live pid). It reads
files only, so it answers in milliseconds and never touches the broker: a broker outage is the workers'
business (they reconnect), not a reason to restart the container.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .process import pid_alive


def check(state_dir: Path) -> tuple[bool, str]:
    """(healthy, one line saying why) for the node whose state directory is ``state_dir``."""
    lock = Path(state_dir) / "node.lock"
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, f"no node has run on {state_dir} (no node.lock)"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a supervisor runs
        else:
            return False, f"no `burrow node` holds {lock}"
        try:
            supervisor = int(os.pread(fd, 32, 0) or b"0")
        except ValueError:
            supervisor = 0
    finally:
        os.close(fd)
    workers = []
    for status in sorted((Path(state_dir) / "slots").glob("*.json")):
        try:
            entry = json.loads(status.read_text())
            if pid_alive(int(entry["pid"])):
                workers.append(str(entry.get("slot", status.stem)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not workers:
        return False, f"`burrow node` (pid {supervisor}) has no live worker"
    return True, f"`burrow node` (pid {supervisor}) up, {len(workers)} worker(s): {', '.join(workers)}"
