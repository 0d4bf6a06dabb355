"""The node's local journal of running attempts: evidence of *how* an attempt ended without a word.

When the broker redelivers a message, the job's last attempt ended without an ack. Was it the job's fault
(its process died — OOM, a CUDA fault, ``os._exit``) or not (the node vanished, or restarted)? From another
machine the two look alike. On this machine they do not: each worker thread notes the attempt it runs in a
file of its own (``<state_dir>/journal/<slot>-<thread>.json``, overwritten in place through a shared memory
map, no fsync: it must survive a process death, not a power cut — after a power cut the node restarted, which
is an interruption anyway).

An entry whose process is dead, written by the same node instance (the same ``burrow node`` supervisor, or the
same ``dramatiq`` master), proves a crash on this node; an entry whose process is alive and still on the job
proves a duplicate delivery (a connection loss), not an ended attempt. A killed-for-overrun attempt says so.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson

logger = logging.getLogger(__name__)

#: Bytes of a journal file that are mapped (an entry is ~300).
JOURNAL_PAGE = 4096


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid apart; ``None`` if the
    process is gone — or dead and not yet reaped by its parent (a zombie still has its ``/proc`` entry)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X", "x"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class JournalEntry:
    job_id: str
    attempt_id: str
    instance: str
    pid: int
    pid_start: int | None
    killed: str | None = None
    started_at: float | None = None

    def process_alive(self) -> bool:
        return process_start_time(self.pid) == self.pid_start and self.pid_start is not None


@dataclass(frozen=True)
class Evidence:
    """What this node knows about earlier attempts of one job."""

    crashed: frozenset[str] = frozenset()  # attempt ids whose process died here
    killed: frozenset[str] = frozenset()  # attempt ids killed here for overrunning max_run_s
    running: frozenset[str] = frozenset()  # attempt ids still running in a live process here
    entries: tuple[JournalEntry, ...] = ()  # the entries of the crashed and killed attempts


class Journal:
    """This worker's journal files (one per worker thread), and reading every slot's.

    Parameters:
        directory: ``<state_dir>/journal``.
        slot_id: This worker's slot.
        instance: This node instance's id (``node.boot.node_instance``).
    """

    def __init__(self, directory: Path, slot_id: str, instance: str) -> None:
        self.directory = directory
        self.instance = instance
        self.slot_id = slot_id
        directory.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._pid = os.getpid()
        self._pid_start = process_start_time(self._pid)

    def _write(self, data: bytes) -> None:
        local = self._local
        view = getattr(local, "view", None)
        if view is None:
            view = local.view = self._open()
            local.size = 0
        # One copy into the file's page-cache page, padded with spaces (JSON ignores them) over what a longer
        # entry left: no system call, so noting an attempt does not give up the interpreter lock either.
        if max(len(data), local.size) <= len(view):
            view[: max(len(data), local.size)] = data.ljust(local.size)
        else:  # an entry longer than the mapped page (a long kill note): written as before
            os.pwrite(local.fd, data.ljust(local.size), 0)
        local.size = max(local.size, len(data))

    def _open(self) -> mmap.mmap:
        """This thread's journal file, mapped shared: what is copied into it is in the page cache at once,
        which other processes read and which outlives this process (not a power cut: see above)."""
        path = self.directory / f"{self.slot_id}-{threading.get_native_id()}.json"
        fd = self._local.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.pwrite(fd, b" " * JOURNAL_PAGE, 0)
        return mmap.mmap(fd, JOURNAL_PAGE)

    def started(self, job_id: str, attempt_id: str, *, started_at: float, killed: str | None = None) -> None:
        """Note that this process now runs ``attempt_id`` (or is about to kill itself over it)."""
        # orjson: the journal is written once per job, ~3x cheaper than formatting it with ``json``.
        entry = orjson.dumps(
            {
                "job_id": job_id,
                "attempt_id": attempt_id,
                "instance": self.instance,
                "pid": self._pid,
                "pid_start": self._pid_start,
                "killed": killed,
                "started_at": float(started_at),
            }
        )
        try:
            self._write(entry)
        except OSError as e:  # evidence is a nicety: never fail a job over it
            logger.warning("Journal of slot %s not written: %s", self.slot_id, e)

    def finished(self) -> None:
        try:
            self._write(b"{}")
        except OSError as e:
            logger.warning("Journal of slot %s not cleared: %s", self.slot_id, e)

    def _entries(self, job_id: str) -> list[tuple[Path, JournalEntry]]:
        found = []
        for path in self.directory.glob("*.json"):
            try:
                raw = json.loads(path.read_bytes() or b"{}")
                if raw.get("job_id") == job_id:
                    found.append((path, JournalEntry(**raw)))
            except (OSError, ValueError, TypeError):
                continue
        return found

    def evidence(self, job_id: str) -> Evidence:
        """What every slot's journal says about ``job_id``.

        A kill note counts whichever instance wrote it; a dead process counts only if this node instance
        ran it (after a restart, the earlier instance's attempts were interrupted, not crashed).
        """
        crashed, killed, running, entries = set(), set(), set(), []
        for _, entry in self._entries(job_id):
            if entry.killed:
                killed.add(entry.attempt_id)
                entries.append(entry)
            elif entry.process_alive():
                running.add(entry.attempt_id)
            elif entry.instance == self.instance:
                crashed.add(entry.attempt_id)
                entries.append(entry)
        return Evidence(frozenset(crashed), frozenset(killed - running), frozenset(running), tuple(entries))

    def forget(self, job_id: str) -> None:
        """Drop the entries of dead processes about ``job_id`` (their evidence has been recorded)."""
        for path, entry in self._entries(job_id):
            if not entry.process_alive():
                path.unlink(missing_ok=True)
