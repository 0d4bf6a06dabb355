"""The node's journal: how an attempt that ended without a word ended, as only its own machine can tell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from node.attempt.journal import Journal, process_start_time
from tests.conftest import wait_for


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_entry(directory, name: str, **entry) -> None:
    (directory / f"{name}.json").write_text(json.dumps(entry))


def test_a_dead_process_of_this_instance_crashed_and_of_an_earlier_instance_was_interrupted(tmp_path):
    journal = Journal(tmp_path, "cpu-0", "instance-2")
    pid = dead_pid()
    write_entry(tmp_path, "cpu-1-1", job_id="j", attempt_id="a1", instance="instance-2", pid=pid, pid_start=1)
    write_entry(tmp_path, "cpu-1-2", job_id="j", attempt_id="a0", instance="instance-1", pid=pid, pid_start=1)
    write_entry(tmp_path, "cpu-1-3", job_id="other", attempt_id="b1", instance="instance-2", pid=pid, pid_start=1)

    evidence = journal.evidence("j")

    assert evidence.crashed == {"a1"}  # its process died while this node instance lived on: the job's fault
    assert evidence.killed == set() and evidence.running == set()  # a0: the node restarted since (lost)


def test_a_kill_note_counts_whatever_the_instance_and_a_live_process_is_still_running(tmp_path):
    journal = Journal(tmp_path, "cpu-0", "instance-2")
    me, start = os.getpid(), process_start_time(os.getpid())
    write_entry(tmp_path, "a", job_id="j", attempt_id="k", instance="old", pid=dead_pid(), pid_start=1, killed="x")
    write_entry(tmp_path, "b", job_id="j", attempt_id="r", instance="instance-2", pid=me, pid_start=start)

    evidence = journal.evidence("j")

    assert evidence.killed == {"k"} and evidence.running == {"r"} and evidence.crashed == set()


def test_a_reused_pid_is_not_mistaken_for_the_process_that_wrote_the_entry(tmp_path):
    journal = Journal(tmp_path, "cpu-0", "i")
    me = os.getpid()
    write_entry(tmp_path, "a", job_id="j", attempt_id="a1", instance="i", pid=me, pid_start=process_start_time(me) - 1)
    assert journal.evidence("j").crashed == {"a1"}


def test_own_entries_are_written_started_then_finished_and_forgotten_once_recorded(tmp_path):
    journal = Journal(tmp_path, "cpu-0", "i")
    journal.started("j", "a1", started_at=1.0)
    assert journal.evidence("j").running == {"a1"}
    journal.finished()
    assert journal.evidence("j").running == set()
    write_entry(tmp_path, "dead", job_id="j", attempt_id="a2", instance="i", pid=dead_pid(), pid_start=1)
    journal.forget("j")
    assert not (tmp_path / "dead.json").exists()


def test_a_dead_process_not_yet_reaped_by_its_parent_is_dead(tmp_path):
    # A SIGKILLed worker stays a zombie until its dramatiq master reaps it: it must count as dead at once.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = Path(f"/proc/{child.pid}/stat")
    start = int(stat.read_text().rsplit(")", 1)[1].split()[19])
    wait_for(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", 30, "a zombie")
    journal = Journal(tmp_path, "cpu-0", "i")
    write_entry(tmp_path, "a", job_id="j", attempt_id="a1", instance="i", pid=child.pid, pid_start=start)
    assert journal.evidence("j").crashed == {"a1"}
    child.wait()


def test_entries_of_any_length_read_back_and_a_cleared_entry_says_nothing(tmp_path):
    journal = Journal(tmp_path, "cpu-0", "instance-1")
    journal.started("j1", "a1", started_at=1.0, killed="killed: " + "x" * 5000)  # longer than the mapped page
    assert journal.evidence("j1").killed == {"a1"}
    journal.started("j2", "a2", started_at=2.0)  # shorter: padded over the long one
    assert journal.evidence("j2").running == {"a2"} and journal.evidence("j1").killed == set()
    journal.finished()
    assert journal.evidence("j2").running == set()


def test_what_a_process_noted_is_there_for_others_after_it_is_killed(tmp_path):
    code = (
        f"import os, signal, sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from node.attempt.journal import Journal\n"
        f"journal = Journal(__import__('pathlib').Path({str(tmp_path)!r}), 'cpu-0', 'instance-1')\n"
        "journal.started('j', 'a1', started_at=1.0)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert Journal(tmp_path, "cpu-1", "instance-1").evidence("j").crashed == {"a1"}
