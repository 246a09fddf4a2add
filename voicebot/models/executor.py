"""Where CPU-heavy engine calls run: off the event loop, one worker thread per model.

ONNX Runtime, CTranslate2 and llama.cpp release the GIL while they compute, so threads
give real parallelism without pickling audio. Each model instance gets its own single
worker: calls to one model queue there (a model does one thing at a time anyway) and a
queue for the LLM never holds up the STT or TTS of another call. The queue is ordered by
when each result is needed (`deadline_executor`), not by arrival.

Engine threads run at a lower priority than the event loop (Linux nice values are per
thread, and threads and processes they start inherit them): a turn's STT or TTS may take
longer when the machine is busy, but it never delays the 20 ms media ticks of the calls.
The price is that an overloaded machine shows up as engine calls waiting for their
thread, not as late audio: `ENGINE_BACKLOG` measures that wait, and call admission
refuses new calls while it is too long.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from voicebot.models.deadline_executor import DeadlineExecutor

T = TypeVar("T")
log = logging.getLogger("voicebot.models")

_engine_nice = 19  # set from `engines.nice` by build_engines


def set_engine_nice(nice: int) -> None:
    """How much lower than the event loop engine threads started from now on run."""
    global _engine_nice
    _engine_nice = nice


def _lower_priority(nice: int) -> None:
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:  # per thread on Linux: who = the thread id
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.warning("cannot lower engine thread priority: %s", exc)


def model_worker(name: str, workers: int = 1) -> DeadlineExecutor:
    """A single-thread executor for one model instance (or a small pool for a subprocess
    engine), its threads at the engines' lower priority, the call needed soonest first
    (`ENGINE_DUE`)."""
    return DeadlineExecutor(workers, name, initializer=_lower_priority, initargs=(_engine_nice,))


class EngineBacklog:
    """How long engine calls wait for their model's thread: the longest wait of a call
    still queued, or of one that started within the last `window_s` seconds."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()  # started() runs on engine threads
        self._queued: dict[int, float] = {}  # ticket -> when it was submitted
        self._recent: deque[tuple[float, float]] = deque()  # (when started, wait)
        self._tickets = itertools.count()

    def submitted(self) -> int:
        ticket = next(self._tickets)
        with self._lock:
            self._queued[ticket] = self._clock()
        return ticket

    def started(self, ticket: int) -> None:
        now = self._clock()
        with self._lock:
            since = self._queued.pop(ticket, None)
            if since is not None:
                self._recent.append((now, now - since))

    def abandoned(self, ticket: int) -> None:
        """The call was cancelled before its thread took it."""
        with self._lock:
            self._queued.pop(ticket, None)

    def wait_s(self) -> float:
        now = self._clock()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()
            waits = [wait for _, wait in self._recent]
            waits += [now - since for since in self._queued.values()]
        return max(waits, default=0.0)


ENGINE_BACKLOG = EngineBacklog()


async def run_blocking(executor: Executor, fn: Callable[..., T], *args: object) -> T:
    """Run `fn(*args)` on `executor` and await its result; its wait for the thread is
    counted in `ENGINE_BACKLOG`."""
    loop = asyncio.get_running_loop()
    ticket = ENGINE_BACKLOG.submitted()

    def timed() -> T:
        ENGINE_BACKLOG.started(ticket)
        return fn(*args)

    try:
        return await loop.run_in_executor(executor, timed)
    finally:
        ENGINE_BACKLOG.abandoned(ticket)
