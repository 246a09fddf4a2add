"""Running the VAD model for calls: inline (one call, the simulator) or batched across calls.

`BatchedVad` is shared by every live call of the process: windows submitted while a model
run is in progress wait and go together in the next run, one `SileroVad.run_batch` for all
calls (adaptive batching: no timer, so a lone call is never delayed, and under load each run
serves every call that has a window due). Model runs happen on a dedicated thread so the
event loop keeps moving frames meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from voicebot.models.vad.silero import SileroVad, VadStream


class VadRunner(Protocol):
    async def probability(self, stream: VadStream, window: np.ndarray) -> float:
        """Advance `stream` by one window; its speech probability."""
        ...


class InlineVad:
    """Run the model right here (about 0.1 ms a window): for one call or virtual time."""

    async def probability(self, stream: VadStream, window: np.ndarray) -> float:
        return stream.probability(window)


class BatchedVad:
    """One model run for the due windows of all calls."""

    def __init__(
        self,
        model: SileroVad | None = None,
        max_batch: int = 512,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_batch(windows, seconds)` is told the size and model time of every run."""
        self.model = model or SileroVad.shared()
        self.on_batch = on_batch
        self.max_batch = max_batch
        # Requests waiting for the next run: a group of windows (distinct streams) each.
        self._pending: list[_Request] = []
        self._running = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self.windows = 0

    async def probability(self, stream: VadStream, window: np.ndarray) -> float:
        return float((await self.probabilities([stream], [window]))[0])

    async def probabilities(
        self, streams: list[VadStream], windows: list[np.ndarray]
    ) -> np.ndarray:
        """Advance each of `streams` (all different) by its window, in one request: the SIP
        media clock submits every call's window of a tick at once."""
        if not streams:
            return np.zeros(0, np.float32)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append(_Request(streams, windows, future))
        if not self._running:
            self._running = True
            loop.call_soon(self._start_batch)
        return await future

    def _start_batch(self) -> None:
        # A stream may have one window in a run: its next window needs this one's state.
        batch: list[_Request] = []
        rest: list[_Request] = []
        seen: set[int] = set()
        size = 0
        for request in self._pending:
            if request.future.cancelled():
                continue
            ids = {id(stream) for stream in request.streams}
            if (batch and size + len(request.streams) > self.max_batch) or ids & seen:
                rest.append(request)
                continue
            seen |= ids
            size += len(request.streams)
            batch.append(request)
        self._pending = rest
        if not batch:
            self._running = False
            return
        loop = asyncio.get_running_loop()
        streams = [stream for request in batch for stream in request.streams]
        windows = [window for request in batch for window in request.windows]
        try:
            run = loop.run_in_executor(self._executor, self._timed_run, streams, windows)
        except RuntimeError as exc:  # the executor is shut down: nobody may wait forever
            self._running = False
            for request in batch + self._pending:
                if not request.future.done():
                    request.future.set_exception(exc)
            self._pending = []
            return
        run.add_done_callback(lambda done: self._finish_batch(done, batch))

    def _timed_run(self, streams: list[VadStream], windows: list[np.ndarray]) -> np.ndarray:
        began = time.perf_counter()
        probs = self.model.run_batch(streams, windows)
        if self.on_batch is not None:
            self.on_batch(len(streams), time.perf_counter() - began)
        return probs

    def _finish_batch(self, done: asyncio.Future[np.ndarray], batch: list[_Request]) -> None:
        exc: BaseException | None = (
            RuntimeError("VAD run cancelled") if done.cancelled() else done.exception()
        )
        at = 0
        for request in batch:
            n = len(request.streams)
            self.windows += n
            if not request.future.done():
                if exc is not None:
                    request.future.set_exception(exc)
                else:
                    request.future.set_result(done.result()[at : at + n])
            at += n
        self._start_batch()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Request:
    streams: list[VadStream]
    windows: list[np.ndarray]
    future: asyncio.Future[np.ndarray]
