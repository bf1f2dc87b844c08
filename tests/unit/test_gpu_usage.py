"""GPU utilisation through NVML: summed over the replica's processes and devices, divided by the GPUs
it was given; missing (None), never zero, where NVML sees no GPU (as on this machine)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from libs.runtime.gpu import GpuMeter, load_nvml


@dataclass
class Sample:
    pid: int
    smUtil: int
    timeStamp: int


class FakeNvml:
    """NVML's calls as nvidia-ml-py names them, over two devices."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.samples = {0: [Sample(10, 40, 5), Sample(99, 90, 6)], 1: [Sample(11, 30, 7)]}
        self.asked_since: list[int] = []

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetProcessUtilization(self, handle: int, since: int) -> list[Sample]:
        self.asked_since.append(since)
        fresh = [s for s in self.samples[handle] if s.timeStamp > since]
        if not fresh:
            raise self.NVMLError("not found")
        return fresh


def test_utilisation_of_the_replica_processes_over_its_gpus() -> None:
    nvml = FakeNvml()
    meter = GpuMeter(nvml)
    assert meter.percent({10, 11}, gpu_count=2) == 35.0  # (40 + 30) / 2; pid 99 is another replica
    assert meter.percent({10, 11}, gpu_count=2) == 0.0  # no new sample since: idle
    assert nvml.asked_since[-2:] == [6, 7]  # each device is asked only for samples after the last read
    nvml.samples[0].append(Sample(10, 100, 9))
    nvml.samples[1].append(Sample(11, 100, 9))
    assert meter.percent({10, 11}, gpu_count=1) == 100.0  # capped


def test_no_gpu_visible_means_missing_not_zero() -> None:
    if load_nvml() is not None:
        pytest.skip("this machine has a GPU visible through NVML")
    meter = GpuMeter()
    assert not meter.available and meter.percent({1}, gpu_count=1) is None
