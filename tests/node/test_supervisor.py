"""The supervisor with simple child processes: restart with backoff, one SIGTERM, kill after grace."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from node.settings import Settings
from node.supervisor import ChildSpec, Supervisor, restart_delay, worker_specs
from node.supervisor.process import EXIT_BOOT_FAILED
from node.supervisor.slots import node_slots
from node.supervisor.supervisor import worker_threads
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)

COUNT_SIGTERMS = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1]); count = 0
def on_term(*_):
    global count
    count += 1
    out.write_text(str(count))
signal.signal(signal.SIGTERM, on_term)
pathlib.Path(sys.argv[1] + ".ready").write_text("")
while count == 0:
    time.sleep(0.02)
time.sleep(float(sys.argv[2]))  # finishing the job; a second SIGTERM would land now
"""


def run_in_thread(supervisor: Supervisor) -> threading.Thread:
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    return thread


def test_restart_delay_grows_and_caps():
    assert [restart_delay(n, 1, 10) for n in range(6)] == [0, 1, 2, 4, 8, 10]


def test_worker_specs_assign_one_slot_each():
    settings = Settings.from_env({"BURROW_GRACE_S": "12"})
    specs = worker_specs(settings, node_slots(["0", "1"], 1), {"PATH": "/bin"})
    assert [s.env["BURROW_SLOT"] for s in specs] == ["gpu-0", "gpu-1"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1"]
    assert all(s.env["BURROW_GPUS"] == "0,1" for s in specs)
    assert specs[0].argv[-6:] == ["--processes", "1", "--threads", "1", "--worker-shutdown-timeout", "12000"]


def test_a_worker_has_a_thread_for_every_job_its_slot_may_hold(tmp_path):
    topology = tmp_path / "topology.toml"
    topology.write_text("[subclouds.a]\n[consumers.sync]\nprefetch = 4\n[consumers.polling]\nprefetch = 2\n")
    assert worker_threads(Settings.from_env({})) == 1
    assert worker_threads(Settings.from_env({"BURROW_PREFETCH": "3"})) == 3
    served = {"BURROW_TOPOLOGY": str(topology), "BURROW_SUBCLOUD": "a"}
    assert worker_threads(Settings.from_env(served)) == 4
    (spec,) = worker_specs(Settings.from_env(served), node_slots(["0"], 1), {}, threads=4)
    assert spec.argv[spec.argv.index("--threads") + 1] == "4"
    # (a topology without job types of higher prefetch: one thread)
    topology.write_text('job_types = ["batch"]\n[subclouds.a]\n')
    assert worker_threads(Settings.from_env(served)) == 1
    # BURROW_THREADS sets them outright, e.g. the short-job settings: prefetch 16, 2 threads
    assert worker_threads(Settings.from_env({"BURROW_PREFETCH": "16", "BURROW_THREADS": "2"})) == 2
    assert worker_threads(Settings.from_env({**served, "BURROW_THREADS": "2"})) == 2


def test_a_fixed_prometheus_port_gives_each_worker_the_next_one():
    settings = Settings.from_env({})
    specs = worker_specs(settings, node_slots(["0", "1"], 1), {"OTEL_EXPORTER_PROMETHEUS_PORT": "9400"})
    assert [s.env["OTEL_EXPORTER_PROMETHEUS_PORT"] for s in specs] == ["9401", "9402"]  # the supervisor has 9400
    assert [s.slot for s in specs] == ["gpu-0", "gpu-1"]
    free = worker_specs(settings, node_slots(["0"], 1), {})
    assert "OTEL_EXPORTER_PROMETHEUS_PORT" not in free[0].env


def test_crashing_child_is_restarted_with_growing_backoff():
    starts: list[float] = []
    spec = ChildSpec("crasher", [sys.executable, "-c", "raise SystemExit(1)"], {})
    supervisor = Supervisor(
        [spec], grace_s=1, backoff_min_s=0.5, backoff_max_s=2, on_start=lambda s, p: starts.append(time.monotonic())
    )
    thread = run_in_thread(supervisor)
    wait_for(lambda: len(starts) >= 4, 30, "four starts")
    supervisor.request_stop()
    thread.join(10)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # Delays of 0.5, 1 and 2 s on top of the child's own run time (the supervisor polls every 0.2 s).
    assert gaps[0] >= 0.5
    assert gaps[2] - gaps[0] >= 1.0


def test_a_child_that_cannot_boot_is_not_restarted_and_the_node_stops_when_none_is_left():
    starts: list[str] = []
    spec = ChildSpec("misconfigured", [sys.executable, "-c", f"raise SystemExit({EXIT_BOOT_FAILED})"], {})
    supervisor = Supervisor(
        [spec], grace_s=1, backoff_min_s=0.1, backoff_max_s=0.2, on_start=lambda s, p: starts.append(s.name)
    )
    # On its own, without a stop request: every restart would fail the same way.
    assert supervisor.run() == EXIT_BOOT_FAILED
    assert starts == ["misconfigured"]


def test_a_slot_that_cannot_boot_leaves_the_others_running(tmp_path: Path):
    out = tmp_path / "sigterms"
    starts: list[str] = []
    failing = ChildSpec("misconfigured", [sys.executable, "-c", f"raise SystemExit({EXIT_BOOT_FAILED})"], {})
    healthy = ChildSpec("worker", [sys.executable, "-c", COUNT_SIGTERMS, str(out), "0"], {})
    supervisor = Supervisor(
        [failing, healthy], grace_s=5, backoff_min_s=0.1, backoff_max_s=0.2, on_start=lambda s, p: starts.append(s.name)
    )
    thread = run_in_thread(supervisor)
    wait_for(lambda: supervisor.children[0].gave_up, 20, "the failed boot to be seen")
    wait_for(lambda: Path(f"{out}.ready").exists(), 20, "the healthy child to be ready")
    assert thread.is_alive()  # the node goes on with the slots that work
    supervisor.request_stop()
    thread.join(15)
    assert out.read_text() == "1"
    assert starts.count("misconfigured") == 1


def test_a_broker_unreachable_at_start_is_restarted():
    # Dramatiq's exit code 3 (the broker could not be reached while booting) is worth retrying.
    starts: list[float] = []
    spec = ChildSpec("no broker yet", [sys.executable, "-c", "raise SystemExit(3)"], {})
    supervisor = Supervisor(
        [spec], grace_s=1, backoff_min_s=0.1, backoff_max_s=0.2, on_start=lambda s, p: starts.append(0)
    )
    thread = run_in_thread(supervisor)
    wait_for(lambda: len(starts) >= 3, 30, "three starts")
    supervisor.request_stop()
    thread.join(10)
    assert not supervisor.children[0].gave_up


def test_one_sigterm_is_forwarded_however_often_the_supervisor_is_asked(tmp_path: Path):
    out = tmp_path / "sigterms"
    spec = ChildSpec("worker", [sys.executable, "-c", COUNT_SIGTERMS, str(out), "1.0"], {})
    supervisor = Supervisor([spec], grace_s=5, backoff_min_s=0.1, backoff_max_s=1)
    thread = run_in_thread(supervisor)
    wait_for(lambda: Path(f"{out}.ready").exists(), 20, "the child to be ready")
    supervisor.request_stop()
    supervisor.request_stop()  # an impatient operator
    thread.join(15)
    assert not thread.is_alive()
    assert out.read_text() == "1"


def test_child_that_outlives_the_grace_period_is_killed(tmp_path: Path):
    out = tmp_path / "sigterms"
    spec = ChildSpec("stuck", [sys.executable, "-c", COUNT_SIGTERMS, str(out), "600"], {})
    supervisor = Supervisor([spec], grace_s=0.5, backoff_min_s=0.1, backoff_max_s=1, kill_margin_s=0.5)
    thread = run_in_thread(supervisor)
    wait_for(lambda: Path(f"{out}.ready").exists(), 20, "the child to be ready")
    started = time.monotonic()
    supervisor.request_stop()
    thread.join(20)
    assert not thread.is_alive()
    assert supervisor.children[0].process is not None and supervisor.children[0].process.returncode == -9
    assert time.monotonic() - started < 15
