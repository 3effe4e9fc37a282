"""Timing and peak memory shared by the benchmarks (imported as `measure`: scripts here run with
this folder on sys.path)."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: str | torch.device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: str | torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs, the device synchronised around each."""
    samples = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


class PeakMemory:
    """Peak memory (MiB) of a block above what was held when it started: CUDA's allocator
    statistics, or the resident set size sampled every 2 ms on a CPU (Linux /proc)."""

    def __init__(self, device: str | torch.device) -> None:
        self.device, self.mib = str(device), float("nan")
        self._stop = threading.Event()
        self._peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> PeakMemory:
        sync(self.device)
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        elif Path("/proc/self/statm").exists():
            self._base = self._peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        sync(self.device)
        if self.device.startswith("cuda"):
            self.mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.mib = (max(self._peak, self._rss()) - self._base) / 2**20
