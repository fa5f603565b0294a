"""How the benchmarks time things: interleaved rounds and paired ratios, and this process's resident memory.

Variants that are compared run side by side: their repetitions alternate (ABC, CBA, ...) and each ratio is
the median of the per-round ratios, so load from other processes falls on both sides of a ratio alike.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

Times = dict[str, list[float]]


def syncer(device: torch.device):
    """What makes a timed call finish on the device before the clock stops."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def interleaved(fns: dict, rounds: int, device: torch.device, warmup: int = 0) -> Times:
    """Seconds per call of each function in `rounds` after `warmup` untimed ones; the order alternates
    (forward, then reversed)."""
    names, sync = list(fns), syncer(device)
    times: Times = {name: [] for name in names}
    for r in range(warmup + rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: Times, num: str, den: str) -> float:
    """Median over rounds of times[num] / times[den] (same round: same background load)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def median_s(times: Times, scale: float = 1.0) -> dict[str, float]:
    return {k: scale * statistics.median(v) for k, v in times.items()}


def median_ms(times: Times) -> dict[str, float]:
    return median_s(times, 1e3)


def raw_ms(times: Times) -> dict[str, list[float]]:
    return {k: [round(1e3 * t, 3) for t in v] for k, v in times.items()}


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (peak resident)."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1])
