"""``burrow node``: one Dramatiq worker process per slot, each restarted alone when it dies.

Dramatiq's own master stops *every* worker process when one dies, and a second SIGTERM makes a worker
abandon its job. So the supervisor starts one ``dramatiq node.actors --processes 1`` per slot, with as many
threads as the jobs its slot may hold at once (``worker_threads``; one by default), each in its own session
(a terminal's Ctrl-C or a process-group signal reaches only the supervisor), with ``PR_SET_PDEATHSIG`` so a
killed supervisor leaves no orphans. On shutdown it forwards exactly one SIGTERM to each child and waits
``grace_s`` before killing what is left.

A child that exits with ``EXIT_BOOT_FAILED`` before it ran ``STABLE_AFTER_S`` could not boot for a reason
an operator must fix (its last log line says which): it is not restarted, since every restart would fail the
same way, and once no child is left the supervisor stops with that code. Any other exit is restarted
(``EXIT_BOOT_RETRY``: a worker that cannot boot *yet*, e.g. its slot is still held).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry import metrics

from ..contract.topology import load_topology
from ..settings import Settings
from .process import EXIT_BOOT_FAILED, die_with_parent
from .resources import read_status, slot_state
from .slots import Slot, check_capacity, configured_slots

logger = logging.getLogger("burrow.supervisor")

#: A child that ran at least this long before dying is considered healthy again: its backoff restarts.
STABLE_AFTER_S = 30.0
#: Extra time, beyond the grace period, before the supervisor SIGKILLs a child that has not exited.
KILL_MARGIN_S = 5.0

restarts = metrics.get_meter("burrow.node").create_counter(
    "burrow.worker.restarts", unit="{restart}", description="Worker processes that died and were restarted"
)


def restart_delay(consecutive_failures: int, min_s: float, max_s: float) -> float:
    """Exponential backoff before restarting a child that has failed ``consecutive_failures`` times in a row."""
    if consecutive_failures <= 0:
        return 0.0
    return min(max_s, min_s * 2 ** (consecutive_failures - 1))


@dataclass
class ChildSpec:
    """A process the supervisor keeps running.

    Attributes:
        name: Shown in logs, e.g. ``worker cpu-0``.
        argv: Command line.
        env: Full environment of the child.
        slot: The slot the child serves (its status file is ``<state_dir>/slots/<slot>.json``).
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    slot: str = ""


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = 0.0
    restarts: int = field(default=0)
    gave_up: bool = False  # it could not boot: not restarted


def worker_threads(settings: Settings) -> int:
    """Threads per worker process: ``BURROW_THREADS`` if set, else enough to run at once every job its slot
    may hold, i.e. the node's prefetch (``BURROW_PREFETCH``) or the largest prefetch the topology gives a
    queue the node serves."""
    if settings.threads:
        return settings.threads
    if not settings.topology:
        return settings.prefetch
    topology = load_topology(settings.topology)
    served = topology.prefetches(topology.node_queues(settings.subcloud, settings.models))
    return max([settings.prefetch, *served.values()])


def worker_specs(
    settings: Settings,
    slots: Sequence[Slot],
    environ: Mapping[str, str],
    *,
    python: str = sys.executable,
    threads: int = 1,
) -> list[ChildSpec]:
    """One ``dramatiq node.actors`` child per slot, each told which slot is its own, with ``threads`` threads.

    With a fixed Prometheus port (``OTEL_EXPORTER_PROMETHEUS_PORT=P``) the supervisor serves P and the worker of
    the n-th slot P+1+n, so a container can publish one port range.
    """
    gpus = ",".join(s.device for s in slots if s.device is not None) or "none"
    try:
        base_port = int(environ.get("OTEL_EXPORTER_PROMETHEUS_PORT") or 0)
    except ValueError:
        base_port = 0  # the supervisor's own telemetry set-up refuses the value, naming it
    specs = []
    for n, slot in enumerate(slots):
        env = dict(environ)
        if base_port:
            env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(base_port + 1 + n)
        env.update(
            BURROW_SLOT=slot.id,
            BURROW_GPUS=gpus,
            BURROW_SUPERVISED="1",
            CUDA_DEVICE_ORDER="PCI_BUS_ID",
            CUDA_VISIBLE_DEVICES=slot.cuda_visible_devices,
        )
        argv = [
            python, "-m", "dramatiq", "node.actors",
            "--processes", "1", "--threads", str(threads),
            "--worker-shutdown-timeout", str(int(settings.grace_s * 1000)),
        ]  # fmt: skip
        specs.append(ChildSpec(name=f"worker {slot.id}", argv=argv, env=env, slot=slot.id))
    return specs


class Supervisor:
    """Keeps a set of child processes running until told to stop.

    Parameters:
        specs: The children.
        grace_s: How long children get after the one SIGTERM.
        backoff_min_s: First restart delay after a crash.
        backoff_max_s: Largest restart delay.
        on_start: Called with (spec, pid) whenever a child starts (tests and status reporting use it).
        kill_margin_s: Extra time past ``grace_s`` before a child that has not exited is killed.
        status_dir: Where the workers write their slot status files (for ``slot_states``).
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        grace_s: float,
        backoff_min_s: float,
        backoff_max_s: float,
        on_start: Callable[[ChildSpec, int], None] | None = None,
        kill_margin_s: float = KILL_MARGIN_S,
        status_dir: Path | None = None,
    ) -> None:
        self.children = [_Child(spec) for spec in specs]
        self.grace_s = grace_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.on_start = on_start
        self.kill_margin_s = kill_margin_s
        self.stopping = threading.Event()
        self.status_dir = status_dir

    def slot_states(self) -> dict[str, str]:
        """Each slot's state (``node.supervisor.resources.slot_state``); safe from another thread."""
        states = {}
        for child in self.children:
            process = child.process
            alive = process is not None and process.returncode is None  # only the main loop polls
            status = read_status(self.status_dir / f"{child.spec.slot}.json") if self.status_dir else None
            states[child.spec.slot] = slot_state(alive, self.stopping.is_set(), status)
        return states

    def request_stop(self, signum: int | None = None, frame: object = None) -> None:
        if self.stopping.is_set():
            logger.warning("Already stopping; children keep their grace period (%.0fs).", self.grace_s)
            return
        logger.info("Stopping: one SIGTERM to each worker, %.0fs grace.", self.grace_s)
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.request_stop)

    def _start(self, child: _Child) -> None:
        child.process = subprocess.Popen(
            child.spec.argv,
            env=child.spec.env,
            start_new_session=True,  # signals to the supervisor's group never reach the workers directly
            preexec_fn=die_with_parent,
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        logger.info("Started %s (pid %d).", child.spec.name, child.process.pid)
        if self.on_start is not None:
            self.on_start(child.spec, child.process.pid)

    def _reap(self, child: _Child, now: float) -> None:
        assert child.process is not None
        code = child.process.poll()
        if code is None:
            return
        ran_s = now - child.started_at
        if code == EXIT_BOOT_FAILED and ran_s < STABLE_AFTER_S:
            logger.error(
                "%s (pid %d) cannot boot (exit code %d; its last line above says why); not restarting it.",
                child.spec.name,
                child.process.pid,
                code,
            )
            child.process, child.restart_at, child.gave_up = None, None, True
            return
        child.failures = 1 if ran_s >= STABLE_AFTER_S else child.failures + 1
        delay = restart_delay(child.failures, self.backoff_min_s, self.backoff_max_s)
        logger.warning(
            "%s (pid %d) exited with code %s after %.1fs; restarting in %.1fs.",
            child.spec.name,
            child.process.pid,
            code,
            ran_s,
            delay,
        )
        child.process = None
        child.restart_at = now + delay
        child.restarts += 1
        restarts.add(1, {"slot": child.spec.slot, "code": str(code)})

    def run(self) -> int:
        """Run until ``request_stop``; returns the exit code for the supervisor."""
        while not self.stopping.is_set():
            now = time.monotonic()
            for child in self.children:
                if child.process is not None:
                    self._reap(child, now)
                if child.process is None and child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
            if self.children and all(child.gave_up for child in self.children):
                logger.error("No worker could boot; the node stops.")
                return EXIT_BOOT_FAILED
            self.stopping.wait(0.2)
        return self._shutdown()

    def _shutdown(self) -> int:
        alive = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in alive:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)  # exactly one, to the dramatiq master only
        deadline = time.monotonic() + self.grace_s + self.kill_margin_s
        for child in alive:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("%s did not stop within the grace period; killing it.", child.spec.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        logger.info("All workers stopped.")
        return 0


def plan_slots(settings: Settings, environ: Mapping[str, str], processes: int | None = None) -> list[Slot]:
    """The slots ``burrow node`` will fill: all of them, or the first ``processes``.

    Raises:
        SlotError: More processes were asked for than the node has slots.
    """
    slots = configured_slots(settings.gpus, settings.cpu_slots, environ)
    wanted = processes or settings.processes or len(slots)
    check_capacity(wanted, slots)
    return slots[:wanted]
