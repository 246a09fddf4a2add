"""How engine work is timed against the call: live, or charged to a virtual call clock.

Live calls await engines directly. The simulator (`voicebot simulate`) runs a call faster
than real time: each engine call still runs for real, its wall-clock cost is measured and
its result is held back until the virtual call clock reaches start + cost. The input
driver advances that clock one frame at a time and, before each step, waits for every
engine call in flight to finish, so results land in the call's timeline exactly where a
live call on this machine would have them, and barge-in over a slow reply really happens.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")

FRAME_PERIOD_S = 0.02  # the canonical 20 ms frame
RESYNC_S = 1.0  # further behind than this, a ticker skips ticks rather than burst


class EngineClock(Protocol):
    async def call(self, work: Awaitable[T]) -> T:
        """Await engine work; its result arrives when the call would have it."""
        ...


class LiveClock:
    """Live calls: results arrive when they arrive."""

    async def call(self, work: Awaitable[T]) -> T:
        return await work


class VirtualClock:
    """A call clock in seconds of call audio, advanced by the input driver."""

    def __init__(self) -> None:
        self.now = 0.0
        self._in_flight: set[asyncio.Future[object]] = set()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.engine_seconds = 0.0  # total wall time charged

    async def call(self, work: Awaitable[T]) -> T:
        start = self.now
        future = asyncio.ensure_future(work)
        self._in_flight.add(future)
        began = time.perf_counter()
        try:
            return await future
        finally:
            cost = time.perf_counter() - began
            self._in_flight.discard(future)
            self.engine_seconds += cost
            await self.sleep_until(start + cost)

    async def sleep_until(self, t: float) -> None:
        if t <= self.now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (t, next(self._seq), future))
        await future

    async def advance_to(self, t: float) -> None:
        """Let all due work finish, releasing held results in time order, then set now = t."""
        while True:
            await _settle()
            if self._in_flight:
                await asyncio.wait(list(self._in_flight))
                continue
            if self._sleepers and self._sleepers[0][0] <= t:
                due, _, future = heapq.heappop(self._sleepers)
                self.now = max(self.now, due)
                if not future.done():
                    future.set_result(None)
                continue
            break
        self.now = max(self.now, t)


async def _settle(max_rounds: int = 200) -> None:
    """Run the event loop until no callback is ready (every task blocked or done)."""
    loop = asyncio.get_running_loop()
    for _ in range(max_rounds):
        await asyncio.sleep(0)
        ready = getattr(loop, "_ready", None)  # CPython's run queue; absent elsewhere
        if ready is not None and not ready:
            return


class EngineTimeoutError(TimeoutError):
    """An engine call overran its configured time."""


async def with_timeout(work: Awaitable[T], seconds: float) -> T:
    """`work`, or EngineTimeoutError("timed out after N s")."""
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError as exc:
        raise EngineTimeoutError(f"timed out after {seconds:g} s") from exc


@dataclass(frozen=True)
class Tick:
    """One deadline of a `FrameTicker`: `late` if it started over one period behind,
    `skipped` ticks given up before it because the loop stalled."""

    index: int
    late: bool = False
    skipped: int = 0


class FrameTicker:
    """Real-time deadlines every `period` seconds (monotonic, so no drift over a call).

    The one stall rule of every 20 ms loop in the process (paced input, the WebRTC track,
    the SIP media clock, the simulator at 1x): ticks that are behind run at once, but
    the loop still gets a turn between them (sleep(0)) so packets keep being taken in;
    more than `resync_s` behind, the ticker re-anchors and reports the ticks it skipped
    instead of bursting them (a burst would only arrive late and all at once).
    The first `wait` returns at once: the ticker is anchored to it.
    """

    def __init__(self, period: float = FRAME_PERIOD_S, resync_s: float = RESYNC_S) -> None:
        self.period = period
        self.resync_s = resync_s
        self._start: float | None = None
        self._k = 0

    async def wait(self) -> Tick:
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return Tick(0)
        self._k += 1
        delay = self._start + self._k * self.period - now
        if delay > 0:
            await asyncio.sleep(delay)
            return Tick(self._k)
        await asyncio.sleep(0)
        skipped = 0
        if delay < -self.resync_s:
            skipped = int(-delay / self.period)
            self._k += skipped
            self._start = time.monotonic() - self._k * self.period
        return Tick(self._k, late=delay < -self.period, skipped=skipped)
