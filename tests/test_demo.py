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
