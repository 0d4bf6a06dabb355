"""``burrow health`` (the image's HEALTHCHECK) against a real ``burrow node``: healthy only while a supervisor
holds the state directory and one of its workers lives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def health(env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "cloud.cli", "health"]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_health_follows_the_node_and_its_workers(start_node, node_env):
    before = health(node_env)
    assert before.returncode == 1 and "no node has run" in before.stdout
    # A dead worker comes back only after 90 s: the unhealthy moment below lasts, however slow the machine.
    slow_restart = {"BURROW_RESTART_BACKOFF_MIN_S": "90", "BURROW_RESTART_BACKOFF_MAX_S": "90"}
    node = start_node(env={"BURROW_CPU_SLOTS": "1", **slow_restart})
    wait_for(lambda: health(node_env).returncode == 0, 60, "the node to report healthy")
    assert "1 worker(s): cpu-0" in health(node_env).stdout
    # Its only worker dies and (backoff 90 s) is not back yet: unhealthy, the supervisor still up.
    status = Path(node_env["BURROW_STATE_DIR"], "slots", "cpu-0.json")
    worker = json.loads(status.read_text())["pid"]
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: health(node_env).returncode == 1, 60, "unhealthy without a live worker")
    assert "no live worker" in health(node_env).stdout
    node.stop()
    after = health(node_env)
    assert after.returncode == 1 and "no `burrow node` holds" in after.stdout
