"""The README's first command: a node processes demo jobs on embedded defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def test_demo_runs_a_node_and_every_demo_job_completes(node_env, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "demo", "--jobs", "3", "--samples", "50000", "--processes", "2"],
        env=node_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.count(" done on cpu-") == 3
    assert "all demo jobs completed" in completed.stdout

    # and an operator can read any of those jobs' records
    job_id = next(line.split()[1] for line in completed.stdout.splitlines() if " done on cpu-" in line)
    shown = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "job", job_id], env=node_env, cwd=ROOT, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id}  actor simulate  queue simulation  status succeeded" in shown.stdout
    assert "#1 succeeded" in shown.stdout and "artifact result.json" in shown.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "job", "no-such-job"],
        env=node_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "no record for job 'no-such-job'" in missing.stderr

    # and see the queues, the failed-jobs queue included
    queues = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "queues"], env=node_env, cwd=ROOT, capture_output=True, text=True
    )
    assert queues.returncode == 0, queues.stderr
    prefix = node_env["BURROW_QUEUE_PREFIX"]
    lines = {line.split()[0]: line.split()[1:] for line in queues.stdout.splitlines()[1:]}
    # ready, running, slots serving it, subscribers, dead letters: all quiet once the node has stopped
    assert lines[f"{prefix}simulation"] == ["0", "0", "0", "0", "0"] and f"{prefix}failed-jobs" in lines
