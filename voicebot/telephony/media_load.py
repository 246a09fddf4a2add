"""Whether the SIP media clock can take one more call: admission by load, not by a count.

What a machine carries depends on its CPU (one with AVX-512 carried twice the calls of one
without), the engines and whatever else it runs, and one call too many makes every call's
audio late. Two rules, both fed by the media clock's ticks:

- prediction: each tick's duration per call it moved (median over the last 5 s, kept while
  idle so the next call starts from what this machine measured) times the calls there
  would be with one more (the running ones and those still setting up) must stay within
  `tick_budget` of the 20 ms period. A ramp of INVITEs is refused as it arrives, before
  any tick runs late.
- evidence: more than `max_late_ratio` of the last 5 s of ticks started late.
"""

from __future__ import annotations

import statistics
from collections import deque

PERIOD_S = 0.02
# Before any measurement: a tick's cost per call on a 2-core machine without AVX-512, with
# the echo canceller on (bench/RESULTS.md "SIP load"), rounded up.
PRIOR_PER_CALL_S = 0.0002


class MediaLoad:
    def __init__(
        self, max_late_ratio: float, window_ticks: int = 250, tick_budget: float = 0.6
    ) -> None:
        self.max_late_ratio = max_late_ratio
        self.tick_budget = tick_budget
        self._late: deque[bool] = deque(maxlen=window_ticks)
        self._late_count = 0
        self._per_call: deque[float] = deque(maxlen=window_ticks)
        self._per_call_s = PRIOR_PER_CALL_S
        self._samples = 0  # per-call samples taken, to refresh the median every 25th

    def tick(self, late: bool, skipped: int = 0, calls: int = 0, seconds: float = 0.0) -> None:
        for was_late in [True] * min(skipped, self._late.maxlen or 0) + [late]:
            if len(self._late) == self._late.maxlen:
                self._late_count -= self._late[0]
            self._late.append(was_late)
            self._late_count += was_late
        if calls:
            self._per_call.append(seconds / calls)
            self._samples += 1
            if self._samples % 25 == 0:  # a median twice a second is plenty (not every tick)
                self._per_call_s = statistics.median(self._per_call)

    def idle(self) -> None:
        """No calls: the clock stopped, old ticks say nothing of the next call's lateness
        (what a call costs is kept)."""
        self._late.clear()
        self._late_count = 0

    @property
    def late_ratio(self) -> float:
        return self._late_count / len(self._late) if self._late else 0.0

    @property
    def per_call_s(self) -> float:
        """A tick's measured cost per call."""
        return self._per_call_s

    def predicted_tick_s(self, calls: int) -> float:
        return calls * self._per_call_s

    def admits(self, calls: int) -> bool:
        """Whether a tick with `calls` calls is predicted to stay within its budget."""
        if self.tick_budget <= 0:
            return True
        return self.predicted_tick_s(calls) <= self.tick_budget * PERIOD_S

    @property
    def overloaded(self) -> bool:
        # A few ticks are too few to judge: one slow tick at a call's start is not overload.
        enough = len(self._late) >= (self._late.maxlen or 0) // 5
        return self.max_late_ratio > 0 and enough and self.late_ratio > self.max_late_ratio
