"""CpuBudget: admit a call only if this process's CPU can carry it as well as the others.

Place in the flow: consulted by `CallManager.admit` for every transport, beside the SIP
media clock's own tick rule (telephony/media_load.py). That rule sees the 20 ms ticks only,
and a fast ramp of INVITEs is all in before the calls' first turns put the engines (STT,
turn model, TTS), records and webhooks to work: at 100 SIP calls on a 2-core box the ticks
ran late seconds after the last call was admitted. What a call costs in the whole process
is the figure that predicts that.

Once a second it takes the process's CPU time (all threads, children reaped) and the calls
up. The cost of a call is the CPU rate over the last `SPAN_S` seconds, less what the process
uses with no call at all (measured while idle), over the mean calls up then: a turn's burst
is averaged over the calls that were quiet meanwhile. The estimate is the 90th percentile of
the last `WINDOW` of those figures taken with at least `MIN_CALLS` calls (it must hold at the
busy moments), kept while idle so the next ramp starts from what this machine measured.
Until `LEARNED` such figures exist the prior (`server.cpu_per_call`, scaled by the start-up
calibration of calls/cpu_calibration.py to this machine's speed) is a floor: a fresh
process's first ramp is judged by it, not by calls that have not spoken yet. One more call
is admitted while idle use + calls x estimate stays within `server.cpu_budget` of the CPUs
this process may run on.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable

WINDOW = 120  # figures (one a second) the estimate looks back over
SPAN_S = 10.0  # each figure's CPU rate is over this long
LEARNED = 30  # figures after which the measurement alone decides
MIN_CALLS = 5  # fewer calls say more about fixed costs than about a call's
PERIOD_S = 1.0


def process_cpu_s() -> float:
    """CPU seconds of this process: all its threads, and children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CpuBudget:
    def __init__(
        self,
        budget: float,
        prior_per_call: float,
        cpus: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_s: Callable[[], float] = process_cpu_s,
    ) -> None:
        self.budget = budget
        self.prior_per_call = prior_per_call
        self.calibration = 1.0  # this machine's speed at a call's work (calls/cpu_calibration.py)
        self.cpus = float(cpus if cpus is not None else usable_cpus())
        self._clock = clock
        self._cpu_s = cpu_s
        self._figures: deque[float] = deque(maxlen=WINDOW)
        self._taken = 0
        self._estimate = prior_per_call
        self._history: deque[tuple[float, float, int]] = deque()  # (time, CPU s, calls)
        self.idle_rate = 0.0  # CPUs the process uses with no call
        self.rate = 0.0  # CPUs busy over the last span

    def sample(self, calls: int) -> None:
        """One measurement: call about once a second with the calls up now."""
        now, cpu = self._clock(), self._cpu_s()
        history = self._history
        history.append((now, cpu, calls))
        while len(history) > 2 and now - history[1][0] >= SPAN_S:
            history.popleft()
        t0, cpu0, _ = history[0]
        if now - t0 < SPAN_S / 2:
            return
        self.rate = max(0.0, (cpu - cpu0) / (now - t0))
        mean_calls = sum(c for _, _, c in history) / len(history)
        if max(c for _, _, c in history) == 0:
            self.idle_rate = 0.8 * self.idle_rate + 0.2 * self.rate
            return
        if mean_calls < MIN_CALLS:
            return
        self._figures.append(max(0.0, self.rate - self.idle_rate) / mean_calls)
        self._taken += 1
        ordered = sorted(self._figures)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        self._estimate = p90 if self._taken >= LEARNED else max(p90, self.prior_per_call)

    def calibrate(self, ratio: float) -> None:
        """Scale the prior by how much more CPU a call's work takes here than on the machine
        it was measured on (`cpu_calibration.calibrate`); measured figures still decide."""
        self.prior_per_call = self.prior_per_call / self.calibration * ratio
        self.calibration = ratio
        if self._taken < LEARNED:
            ordered = sorted(self._figures)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else 0.0
            self._estimate = max(p90, self.prior_per_call)

    @property
    def per_call(self) -> float:
        """CPUs one call is expected to use (the estimate of the module docstring)."""
        return self._estimate

    @property
    def capacity(self) -> int:
        """Calls the budget carries at the current estimate."""
        if self._estimate <= 0:
            return 1 << 30
        return max(0, int((self.budget * self.cpus - self.idle_rate) / self._estimate))

    def status(self) -> dict[str, float | int | bool]:
        """For /healthz: the estimate, the calls it allows, what the process uses now."""
        return {
            "per_call": round(self._estimate, 4), "capacity": self.capacity,
            "calibration": self.calibration,
            "measured": self._taken >= LEARNED, "busy": round(self.rate, 3),
            "idle": round(self.idle_rate, 3), "cpus": self.cpus, "budget": self.budget,
        }  # fmt: skip

    def admits(self, calls: int) -> bool:
        """Whether `calls` calls (this new one included) fit in the budget."""
        return self.budget <= 0 or calls <= self.capacity

    async def run(self, calls: Callable[[], int]) -> None:
        """Sample forever (a task of the call manager)."""
        while True:
            self.sample(calls())
            await asyncio.sleep(PERIOD_S)
