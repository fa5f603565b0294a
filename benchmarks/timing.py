"""How the benchmarks time things: interleaved rounds and paired ratios, a device sync, this process's
resident memory, and GPU utilisation sampling.

Variants that are compared run side by side: their repetitions alternate (ABC, CBA, ...) and each ratio is
the median of the per-round ratios, so load from other processes falls on both sides of a ratio alike.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

Fns = dict[str, Callable[[], object]]


def syncer(device: torch.device) -> Callable[[], None]:
    """What makes a timed call finish on the device before the clock stops."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def warm(fns: Fns, n: int) -> None:
    for _ in range(n):
        for fn in fns.values():
            fn()


def interleaved(fns: Fns, rounds: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds per call of each function; rounds alternate the order (forward, then reversed)."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of times[num] / times[den] (same round: same background load)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def median_s(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}


def median_ms(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: 1e3 * v for k, v in median_s(times).items()}


def raw_ms(times: dict[str, list[float]]) -> dict[str, list[float]]:
    return {k: [round(1e3 * t, 3) for t in v] for k, v in times.items()}


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def gpu_utilisation_now(index: int) -> float | None:
    """The GPU's busy percentage over the last sample period: torch.cuda.utilization (NVML through
    pynvml) where it works, else one `nvidia-smi` query; None if neither does."""
    try:
        return float(torch.cuda.utilization(index))
    except Exception:  # pynvml missing or NVML refusing: fall back to the command-line tool
        pass
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    )
    try:
        return float(out.stdout.strip().splitlines()[0])
    except (IndexError, ValueError):
        return None


class GpuSampler:
    """Samples GPU utilisation every `period` seconds in a thread while a block runs (CUDA only):
    `with GpuSampler(device) as s: ...`, then `s.summary()` -> {mean, max, samples} or None."""

    def __init__(self, device: torch.device, period: float = 0.2):
        self.index = (device.index or 0) if device.type == "cuda" else None
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            value = gpu_utilisation_now(self.index)
            if value is None:
                return
            self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        if self.index is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {
            "mean_pct": statistics.fmean(self.samples),
            "max_pct": max(self.samples),
            "samples": len(self.samples),
        }
