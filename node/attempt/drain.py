"""When a draining node may hand its jobs back: once every worker of the node has stopped taking work.

A job handed back during a shutdown goes back into its queue; if a worker of the same node were still
consuming, it would take the job straight back (and be asked to stop at once: another interruption, another
checkpoint reload). Each worker notes when all its consumers have stopped (``slots/<slot>.stopped``, holding
its pid); a hand-back waits until every live worker of the node (``slots/<slot>.json`` names a live pid) has
that note, or until its deadline, and only then is published. Files, because the workers are processes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..supervisor.process import pid_alive

#: How often a waiting hand-back looks at the notes.
POLL_S = 0.02


def note_stopped(slots_dir: Path, slot_id: str) -> None:
    """Note that this worker (slot ``slot_id``) takes no more work."""
    path = slots_dir / f"{slot_id}.stopped"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)


def forget_stopped(slots_dir: Path, slot_id: str) -> None:
    """A new worker on the slot: its predecessor's note no longer says anything."""
    (slots_dir / f"{slot_id}.stopped").unlink(missing_ok=True)


def still_consuming(slots_dir: Path) -> list[str]:
    """The slots whose live worker has not noted that it stopped taking work."""
    waiting = []
    for status in sorted(slots_dir.glob("*.json")):
        try:
            pid = int(json.loads(status.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not pid_alive(pid):
            continue
        try:
            stopped = int((slots_dir / f"{status.stem}.stopped").read_text() or 0)
        except (OSError, ValueError):
            stopped = 0
        if stopped != pid:
            waiting.append(status.stem)
    return waiting


def wait_until_drained(slots_dir: Path, timeout_s: float) -> bool:
    """Wait until no live worker of the node takes work (``True``), or ``timeout_s`` passes (``False``)."""
    deadline = time.monotonic() + timeout_s
    while still_consuming(slots_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True
