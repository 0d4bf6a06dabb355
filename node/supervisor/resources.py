"""The node's resources as metrics, from the supervisor only: CPU and memory, each GPU, each slot's state.

One process per node reports them, so a node with eight workers reports its GPUs once, and a restarted worker
changes nothing. Names follow the OpenTelemetry semantic conventions for system and hardware metrics:
``system.cpu.utilization``, ``system.memory.usage``/``limit``, ``hw.gpu.utilization``,
``hw.gpu.memory.usage``/``limit``, ``hw.temperature`` and ``hw.power`` (``hw.id`` is the slot's ``gpu-<n>``).
A machine without NVML (no GPU, no driver, no ``nvidia-ml-py``) reports no GPU series at all rather than zeros,
and a GPU whose reading fails (a fan-less card has no power sensor) skips that one series.

Slot state is ``burrow.slot.state`` — one series per slot and state, 1 for the current one: ``down`` (the
worker is not running: crashed, restarting), ``draining`` (SIGTERM received), ``busy`` (running a job) or
``idle``. Workers write their state into their slot's status file at every heartbeat
(``BURROW_NODE_HEARTBEAT_S``), so busy/idle is as fresh as that; with heartbeats off it is written once, at
boot, and a slot shows only up (idle) or down.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

SLOT_STATES = ("idle", "busy", "draining", "down")


def slot_state(worker_alive: bool, stopping: bool, status: dict[str, Any] | None) -> str:
    """A slot's state from whether its worker runs, whether the node is stopping, and the worker's status file."""
    if not worker_alive or status is None or "state" not in status:
        return "down"  # dead, or not yet through its boot (its first heartbeat writes the state)
    if stopping or status.get("state") == "draining":
        return "draining"
    return "busy" if status.get("running") else "idle"


def read_status(path: Path) -> dict[str, Any] | None:
    """A worker's status file, or ``None`` when it is missing, half-written or names a dead process."""
    try:
        status = json.loads(path.read_text())
        os.kill(int(status["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return status if isinstance(status, dict) else None


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant; a field is ``None`` when the device cannot report it."""

    slot: str  # gpu-<index>: the slot that owns it
    name: str
    utilization: float | None  # 0..1
    memory_used: int | None  # bytes
    memory_total: int | None
    temperature_c: float | None
    power_w: float | None


class Gpus:
    """The GPUs NVML (``nvidia-ml-py``) sees, read at each metrics collection.

    Parameters:
        devices: The GPU indices this node uses (its slots); NVML's index order is PCI bus order, as the
            workers' ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
    """

    def __init__(self, devices: Iterable[str]) -> None:
        self.devices = [d for d in devices if d.isdigit()]
        self.nvml: Any = None
        if not self.devices:
            return
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            self.nvml = pynvml
        except Exception as e:  # ImportError, or NVMLError without a driver: no GPU series
            logger.info("No GPU metrics: NVML unavailable (%s)", e)

    def _read(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception:  # NVMLError_NotSupported and friends: this one series is skipped
            return None

    def readings(self) -> list[GpuReading]:
        if self.nvml is None:
            return []
        nvml, found = self.nvml, []
        for device in self.devices:
            handle = self._read(lambda d=device: nvml.nvmlDeviceGetHandleByIndex(int(d)))
            if handle is None:
                continue
            rates = self._read(lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h))
            memory = self._read(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
            temperature = self._read(lambda h=handle: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
            milliwatts = self._read(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h))
            name = self._read(lambda h=handle: nvml.nvmlDeviceGetName(h)) or ""
            found.append(
                GpuReading(
                    slot=f"gpu-{device}",
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    utilization=rates.gpu / 100 if rates is not None else None,
                    memory_used=int(memory.used) if memory is not None else None,
                    memory_total=int(memory.total) if memory is not None else None,
                    temperature_c=float(temperature) if temperature is not None else None,
                    power_w=milliwatts / 1000 if milliwatts is not None else None,
                )
            )
        return found


def register(
    meter: Any,
    *,
    slots: Callable[[], dict[str, str]],
    gpus: Gpus,
) -> None:
    """Observable instruments for the node's resources on ``meter``; ``slots()`` returns {slot id: state}."""
    from opentelemetry.metrics import Observation

    def cpu(_options: Any) -> Iterable[Observation]:
        # Since the previous call: the scrape interval, which is what a dashboard wants.
        yield Observation(psutil.cpu_percent(interval=None) / 100)

    def memory_usage(_options: Any) -> Iterable[Observation]:
        vm = psutil.virtual_memory()
        yield Observation(vm.total - vm.available, {"system.memory.state": "used"})

    def memory_limit(_options: Any) -> Iterable[Observation]:
        yield Observation(psutil.virtual_memory().total)

    def slot_states(_options: Any) -> Iterable[Observation]:
        for slot, state in slots().items():
            for candidate in SLOT_STATES:
                yield Observation(int(candidate == state), {"slot": slot, "state": candidate})

    def gpu_field(field: str, extra: dict[str, str] | None = None) -> Callable[[Any], Iterable[Observation]]:
        def observe(_options: Any) -> Iterable[Observation]:
            for reading in gpus.readings():
                value = getattr(reading, field)
                if value is not None:
                    attributes = {"hw.id": reading.slot, "hw.name": reading.name, **(extra or {})}
                    yield Observation(value, attributes)

        return observe

    psutil.cpu_percent(interval=None)  # the first call only starts the measurement
    meter.create_observable_gauge("system.cpu.utilization", [cpu], unit="1", description="Node CPU busy, 0..1")
    meter.create_observable_up_down_counter("system.memory.usage", [memory_usage], unit="By", description="Memory")
    meter.create_observable_up_down_counter("system.memory.limit", [memory_limit], unit="By", description="RAM")
    meter.create_observable_gauge(
        "burrow.slot.state", [slot_states], unit="{slot}", description="1 for each slot's state (idle/busy/…)"
    )
    if gpus.nvml is None:
        return
    meter.create_observable_gauge("hw.gpu.utilization", [gpu_field("utilization")], unit="1")
    meter.create_observable_up_down_counter("hw.gpu.memory.usage", [gpu_field("memory_used")], unit="By")
    meter.create_observable_up_down_counter("hw.gpu.memory.limit", [gpu_field("memory_total")], unit="By")
    meter.create_observable_gauge("hw.temperature", [gpu_field("temperature_c", {"hw.type": "gpu"})], unit="Cel")
    meter.create_observable_gauge("hw.power", [gpu_field("power_w", {"hw.type": "gpu"})], unit="W")
