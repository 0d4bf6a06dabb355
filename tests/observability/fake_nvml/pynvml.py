"""A stand-in for ``nvidia-ml-py`` (module ``pynvml``) on machines without a GPU: put this directory on
``PYTHONPATH`` and NVML reports ``FAKE_NVML_COUNT`` (default 2) GPUs with fixed readings. Device 1 has no power
sensor (NVML raises ``NotSupported``), as many consumer cards do."""

from __future__ import annotations

import os
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's own name
    pass


def _count() -> int:
    return int(os.environ.get("FAKE_NVML_COUNT", "2"))


def nvmlInit() -> None:  # noqa: N802 - pynvml's API
    pass


def nvmlShutdown() -> None:  # noqa: N802
    pass


def nvmlDeviceGetCount() -> int:  # noqa: N802
    return _count()


def nvmlDeviceGetHandleByIndex(index: int) -> int:  # noqa: N802
    if not 0 <= index < _count():
        raise NVMLError(f"no device {index}")
    return index


def nvmlDeviceGetName(handle: int) -> str:  # noqa: N802
    return "Fake RTX 4090"


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:  # noqa: N802
    return SimpleNamespace(gpu=40 + 10 * handle, memory=20)


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:  # noqa: N802
    total = 24 * 2**30
    return SimpleNamespace(total=total, used=(handle + 1) * 2**30, free=total - (handle + 1) * 2**30)


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:  # noqa: N802
    return 60 + handle


def nvmlDeviceGetPowerUsage(handle: int) -> int:  # noqa: N802
    if handle == 1:
        raise NVMLError_NotSupported("no power sensor")
    return 250_000  # milliwatts
