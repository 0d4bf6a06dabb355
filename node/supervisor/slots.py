"""GPU (or CPU) slots: which devices a node has, and one exclusive claim per worker process.

A slot is claimed with an ``fcntl.flock`` on a file under ``<state_dir>/slots``: the kernel drops the lock
when the process dies, however it dies, so a crashed worker never leaves a slot taken.  The claiming process
then pins itself with ``CUDA_VISIBLE_DEVICES`` before any CUDA library initialises.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlotError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """One place a worker process can run.

    Attributes:
        id: ``gpu-<device>`` or ``cpu-<n>``; stable, used in lock and status file names.
        device: The GPU id for ``CUDA_VISIBLE_DEVICES``, or ``None`` for a CPU slot.
    """

    id: str
    device: str | None = None

    @property
    def is_gpu(self) -> bool:
        return self.device is not None

    @property
    def cuda_visible_devices(self) -> str:
        # An empty value hides every GPU from a CPU slot, so a stray CUDA call cannot grab a GPU another
        # process owns.
        return self.device or ""


def discover_gpus(configured: Sequence[str] | None, environ: Mapping[str, str], nvml_count: int | None) -> list[str]:
    """Return the GPU ids this node may use.

    Order of precedence: an explicit list (``BURROW_GPUS``), then ``CUDA_VISIBLE_DEVICES`` if the
    environment sets it, then the devices NVML counts (``nvml_count``, ``None`` when NVML is unavailable).
    """
    if configured is not None:
        return list(configured)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(nvml_count or 0)]


def nvml_device_count() -> int | None:
    """Count GPUs through NVML (``nvidia-ml-py``); ``None`` when NVML or a driver is not present."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # NVMLError when there is no driver
        logger.debug("NVML unavailable: %s", e)
        return None


def node_slots(gpus: Sequence[str], cpu_slots: int) -> list[Slot]:
    """One slot per GPU, or ``cpu_slots`` CPU slots when the node has no GPU."""
    if gpus:
        return [Slot(id=f"gpu-{device}", device=device) for device in gpus]
    return [Slot(id=f"cpu-{n}") for n in range(cpu_slots)]


def configured_slots(gpus: Sequence[str] | None, cpu_slots: int, environ: Mapping[str, str]) -> list[Slot]:
    """The node's slots from its settings (``BURROW_GPUS``, ``BURROW_CPU_SLOTS``) and environment.

    NVML is asked only when neither ``BURROW_GPUS`` nor ``CUDA_VISIBLE_DEVICES`` says which GPUs to use.
    """
    count = None if gpus is not None or "CUDA_VISIBLE_DEVICES" in environ else nvml_device_count()
    return node_slots(discover_gpus(gpus, environ, count), cpu_slots)


def check_capacity(processes: int, slots: Sequence[Slot]) -> None:
    """Raise ``SlotError`` when more worker processes are asked for than the node has slots."""
    if processes > len(slots):
        kind = "GPU" if slots and slots[0].is_gpu else "CPU"
        raise SlotError(
            f"{processes} worker processes requested but this node has only {len(slots)} {kind} slot(s) "
            f"({', '.join(s.id for s in slots) or 'none'}); each process needs a slot of its own. "
            "Lower --processes, or set BURROW_GPUS / BURROW_CPU_SLOTS."
        )


_held_fds: set[int] = set()


def _close_held_in_child() -> None:
    # A forked grandchild (a DataLoader worker, say) must not inherit the slot lock and keep it after the
    # worker that claimed it has died.
    for fd in list(_held_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class SlotLease:
    """An exclusive claim on one slot, held until ``release()`` or process exit.

    Parameters:
        slot: The slot held.
        fd: The locked file descriptor.
        status_path: Where this process's status (pid, ``CUDA_VISIBLE_DEVICES``) is published.
    """

    def __init__(self, slot: Slot, fd: int, status_path: Path) -> None:
        self.slot = slot
        self.fd = fd
        self.status_path = status_path
        self.claimed_at = time.time()

    @classmethod
    def claim(cls, slots: Sequence[Slot], state_dir: Path, *, preferred: str | None = None) -> SlotLease:
        """Claim ``preferred`` (a slot id) or else the first free slot.

        Raises:
            SlotError: The preferred slot is unknown or taken, or every slot is taken.
        """
        directory = state_dir / "slots"
        directory.mkdir(parents=True, exist_ok=True)
        if preferred is not None:
            candidates = [s for s in slots if s.id == preferred]
            if not candidates:
                raise SlotError(f"slot {preferred!r} (BURROW_SLOT) is not one of {', '.join(s.id for s in slots)}")
        else:
            candidates = list(slots)
        for slot in candidates:
            fd = os.open(directory / f"{slot.id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _held_fds.add(fd)
            return cls(slot, fd, directory / f"{slot.id}.json")
        if preferred is not None:
            raise SlotError(f"slot {preferred!r} is held by another process")
        raise SlotError(
            f"all {len(slots)} slot(s) of this node are taken ({', '.join(s.id for s in slots)}): "
            "more worker processes than slots. Lower --processes or set BURROW_GPUS / BURROW_CPU_SLOTS."
        )

    def pin(self, environ: MutableMapping[str, str]) -> None:
        """Point CUDA at this slot's GPU only (or none for a CPU slot)."""
        environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        environ["CUDA_VISIBLE_DEVICES"] = self.slot.cuda_visible_devices
        environ["BURROW_SLOT"] = self.slot.id

    def publish_status(self, **extra: object) -> None:
        """Write this process's status file (atomically) for operators, the supervisor and tests."""
        status = {
            "slot": self.slot.id,
            "pid": os.getpid(),
            "cuda_visible_devices": self.slot.cuda_visible_devices,
            "claimed_at": self.claimed_at,
            **extra,
        }
        tmp = self.status_path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(status))
            os.replace(tmp, self.status_path)
        except OSError:
            tmp.unlink(missing_ok=True)  # (a full disk): leave no half-written file behind
            raise

    def release(self) -> None:
        if self.fd in _held_fds:
            _held_fds.discard(self.fd)
            try:
                self.status_path.unlink(missing_ok=True)
            finally:
                os.close(self.fd)
