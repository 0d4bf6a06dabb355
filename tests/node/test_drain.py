"""The drain barrier: a hand-back waits until every live worker of the node noted it stopped taking work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from node.attempt.drain import forget_stopped, note_stopped, still_consuming, wait_until_drained

pytestmark = pytest.mark.timeout(60)


def status(slots, slot: str, pid: int) -> None:
    (slots / f"{slot}.json").write_text(json.dumps({"slot": slot, "pid": pid}))


def test_only_live_workers_that_have_not_noted_their_stop_hold_a_hand_back(tmp_path):
    slots = tmp_path / "slots"
    slots.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status(slots, "cpu-0", os.getpid())
    status(slots, "cpu-1", dead.pid)  # a worker that died: nothing to wait for
    assert still_consuming(slots) == ["cpu-0"]
    (slots / "cpu-0.stopped").write_text("1")  # a predecessor's note (another pid) does not count
    assert still_consuming(slots) == ["cpu-0"]
    note_stopped(slots, "cpu-0")
    assert still_consuming(slots) == []
    forget_stopped(slots, "cpu-0")
    assert still_consuming(slots) == ["cpu-0"]


def test_a_waiting_hand_back_goes_once_the_last_worker_notes_its_stop(tmp_path):
    slots = tmp_path / "slots"
    slots.mkdir()
    status(slots, "cpu-0", os.getpid())
    assert wait_until_drained(slots, timeout_s=0) is False  # nobody has stopped: the fallback hold applies
    noted = threading.Event()

    def note_later() -> None:
        noted.wait(30)
        note_stopped(slots, "cpu-0")

    thread = threading.Thread(target=note_later)
    thread.start()
    noted.set()
    assert wait_until_drained(slots, timeout_s=30) is True
    thread.join()
