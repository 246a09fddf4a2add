"""Samplers that run beside a load bench's calls, in the driver process.

Place in the flow: bench/sip_load.py (and bench/cluster_load.py through it) starts them
around a run: `WallClockSampler` while tcpdump captures, so the capture's wall-clock
timestamps can be put back on the monotonic clock the server paces by (`steady_times`);
`SpeedProbe` while SIPp runs, to tell a slower machine from a heavier server.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np


class _PeriodicSampler(threading.Thread):
    """`sample()` every `period` seconds into `samples`, from start() to stop()."""

    def __init__(self, period: float, sample: Callable[[], tuple[float, float]]) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.sample = sample
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append(self.sample())
            self._done.wait(self.period)

    def _finish(self) -> None:
        self._done.set()
        self.join()


class WallClockSampler(_PeriodicSampler):
    """(wall clock, monotonic clock) pairs every 10 ms while a capture runs.

    pcap timestamps are wall-clock (CLOCK_REALTIME) time, but the server paces its packets by
    the monotonic clock. Where something steps the wall clock while calls run (seen on a
    Firecracker VM: +0.5 ms every 100 ms, the wall clock gaining 0.5 % on the monotonic one),
    every bot stream would read as drifting late by 5 ms a second though no tick was late.
    With these samples the capture's times are put back on the monotonic clock.
    """

    def __init__(self) -> None:
        super().__init__(0.010, lambda: (time.time(), time.monotonic()))

    def stop(self) -> tuple[np.ndarray, np.ndarray]:
        self._finish()
        walls, monos = zip(*self.samples, strict=True) if self.samples else ((), ())
        return np.asarray(walls, dtype=np.float64), np.asarray(monos, dtype=np.float64)


_PROBE_SIGNAL = np.random.default_rng(0).standard_normal(1 << 16)
_PROBE_MATRIX = np.random.default_rng(1).standard_normal((192, 192))


def _probe_work() -> float:
    """CPU seconds of one fixed piece of work like the server's: a Python loop, FFTs over
    512 KB and a matrix product (about 2.5 ms on this AMD EPYC when idle)."""
    began = time.thread_time()
    total = 0
    for i in range(10_000):
        total += i * i
    np.fft.rfft(_PROBE_SIGNAL)
    _PROBE_MATRIX @ _PROBE_MATRIX
    return time.thread_time() - began if total >= 0 else 0.0


class SpeedProbe(_PeriodicSampler):
    """How fast this machine runs the same work while calls run: the CPU time of a fixed
    piece of work every 250 ms (CPU time, so waiting for a core does not count, but a
    slower core does: a busy hyperthread sibling or a throttled clock on the host).

    Runs of one command on one VM were seen to cost twice the CPU per call of the run
    before; this tells a slower machine from a heavier server."""

    def __init__(self) -> None:
        super().__init__(0.25, lambda: (time.time(), 1000 * _probe_work()))
        self.baseline_ms = 1000 * float(np.median([_probe_work() for _ in range(20)]))

    def stop(self, t0: float) -> dict[str, Any]:
        self._finish()
        ms = np.asarray([m for _, m in self.samples] or [self.baseline_ms])
        slow = Counter(int(t - t0) for t, m in self.samples if m > 1.5 * self.baseline_ms)
        return {
            "baseline_ms": self.baseline_ms,
            "p50_x": float(np.median(ms)) / self.baseline_ms,
            "p90_x": float(np.percentile(ms, 90)) / self.baseline_ms,
            "max_x": float(ms.max()) / self.baseline_ms,
            "slow_seconds": dict(sorted(slow.items())),
        }


def steady_times(t: np.ndarray, clock: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Wall-clock capture times moved onto the monotonic clock (kept in wall-clock units)."""
    if clock is None or len(clock[0]) < 2 or not t.size:
        return t
    walls, monos = clock
    offsets = walls - monos
    return t - (np.interp(t, walls, offsets) - offsets[0])


def wall_clock_drift_ms(clock: tuple[np.ndarray, np.ndarray] | None) -> float:
    """How far the wall clock moved against the monotonic one over the capture, ms."""
    if clock is None or len(clock[0]) < 2:
        return 0.0
    walls, monos = clock
    return 1000 * float((walls[-1] - monos[-1]) - (walls[0] - monos[0]))
