"""``burrow top``: a frame from a live node and queue, and the frame's arithmetic without a broker."""

from __future__ import annotations

import pytest

from cloud.top import render
from node.contract.registry import Heartbeat, fold
from tests.conftest import send, wait_for
from tests.test_cli import burrow, one_line_error


def test_a_frame_shows_each_queue_its_rate_and_each_node_with_its_slots():
    beats = [
        Heartbeat(node="n1", process="gpu-0/1", slot="gpu-0", running=("job-1",), at=100.0),
        Heartbeat(node="n1", process="gpu-1/2", slot="gpu-1", at=100.0),
        Heartbeat(node="n2", process="cpu-0/3", slot="cpu-0", state="draining", at=99.0),
    ]
    rows = [
        {"queue": "public.sync.any.urgent", "ready": 40, "running": 1, "slots": 2, "dead": 0},
        {"queue": "acme.sync.any.bulk", "ready": None, "running": 0, "slots": 0, "dead": None},
    ]
    frame = render(rows, {"public.sync.any.urgent": 50}, 2.0, fold(beats, now=101.0), now=101.0)
    urgent = next(line for line in frame if line.startswith("public.sync.any.urgent"))
    assert urgent.split()[1:3] == ["40", "-5.0"]  # 10 fewer ready in 2 s
    assert "MISSING" in next(line for line in frame if line.startswith("acme"))
    n1 = next(line for line in frame if line.startswith("n1"))
    assert "gpu-0 busy, gpu-1 idle" in n1 and " up " in n1
    assert "cpu-0 draining" in next(line for line in frame if line.startswith("n2"))


def test_the_first_frame_has_no_rate():
    frame = render([{"queue": "q", "ready": 3, "running": 0, "slots": 0, "dead": 0}], None, 0.0, {}, now=0.0)
    assert frame[3].split()[:3] == ["q", "3", "0"]  # ready, then (no rate) running
    assert frame[-1] == "(no node heard from)"


def test_a_bad_interval_is_one_line():
    one_line_error(burrow("top", "--interval", "0", env={}), "--interval", "more than 0")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_burrow_top_once_shows_a_busy_node_and_its_queue(broker, start_node, node_env, tmp_path):
    # Given a node whose only slot runs a job that holds it
    release = tmp_path / "release"
    start_node(env={"BURROW_CPU_SLOTS": "1", "BURROW_NODE_HEARTBEAT_S": "1"})
    send(broker, "tests", "holds_slot", job_key="busy", release_file=str(release))

    # When an operator runs `burrow top --once`
    def frame() -> str | None:
        done = burrow("top", "--once", env=node_env)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        node_up = any(line.startswith("test-node") and " up " in line for line in lines)
        return done.stdout if "cpu-0 busy" in done.stdout and node_up else None

    shown = wait_for(frame, 90, "a frame with the node up and its slot busy")
    release.touch()

    # Then the frame lists the queue (with the job running) and the node
    tests_row = next(line for line in shown.splitlines() if line.split(" ")[0].endswith(".tests"))
    assert tests_row.split()[2] == "1"  # ready 0, no rate in a first frame, running 1
    assert any(line.startswith("test-node") and " up " in line for line in shown.splitlines())
