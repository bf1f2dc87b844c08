"""GPU utilisation of a replica's processes, through NVML (NVIDIA's own binding, `nvidia-ml-py`,
installed with the `gpu` extra). Where NVML cannot be loaded or sees no GPU the utilisation is
missing (None), never zero: the autoscaler then treats the metric as the HPA treats a missing one.

Per-process samples (`nvmlDeviceGetProcessUtilization`, SM %) of the replica's process tree are summed
over every device and divided by the GPUs the replica was given (at least one), capped at 100.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from types import ModuleType
from typing import Any


def load_nvml() -> ModuleType | None:
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
        if nvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception:  # not installed, no driver, no device: all mean "no GPU to measure"
        return None
    return nvml


class GpuMeter:
    def __init__(self, nvml: Any = None, load: bool = True) -> None:
        self._nvml = nvml if nvml is not None or not load else load_nvml()
        self._seen: dict[int, int] = {}  # device index -> newest sample timestamp read (µs)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def percent(self, pids: Collection[int], gpu_count: int) -> float | None:
        nvml = self._nvml
        if nvml is None:
            return None
        wanted = set(pids)
        used = 0.0
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                samples = nvml.nvmlDeviceGetProcessUtilization(handle, self._seen.get(index, 0))
            except nvml.NVMLError:  # NotFound: no sample since the last read (idle)
                continue
            for sample in samples:
                self._seen[index] = max(self._seen.get(index, 0), sample.timeStamp)
                if sample.pid in wanted:
                    used += sample.smUtil
        return min(100.0, used / max(1, gpu_count))
