"""Running the VAD model for calls: inline (one call, the simulator) or batched across calls.

`BatchedVad` is shared by every live call of the process: windows submitted while a model
run is in progress wait and go together in the next run, one `SileroVad.run_batch` for all
calls (models.batching: no timer, so a lone call is never delayed, and under load each run
serves every call that has a window due). Model runs happen on a dedicated thread so the
event loop keeps moving frames meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from voicebot.models.batching import AdaptiveBatcher, BatchRequest
from voicebot.models.vad.silero import SileroVad, VadStream

Window = tuple[VadStream, np.ndarray]  # one window of one call's stream


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
        # Each request: a group of windows of distinct streams, as (stream, window) items.
        self._batcher: AdaptiveBatcher[Window] = AdaptiveBatcher(
            self._timed_run,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad"),
            "VAD",
            self._select,
        )

    @property
    def windows(self) -> int:
        """Windows run so far."""
        return self._batcher.items_run

    async def probability(self, stream: VadStream, window: np.ndarray) -> float:
        return float((await self.probabilities([stream], [window]))[0])

    async def probabilities(
        self, streams: list[VadStream], windows: list[np.ndarray]
    ) -> np.ndarray:
        """Advance each of `streams` (all different) by its window, in one request: the SIP
        media clock submits every call's window of a tick at once."""
        if not streams:
            return np.zeros(0, np.float32)
        return await self._batcher.submit(list(zip(streams, windows, strict=True)))

    def start(
        self, streams: list[VadStream], windows: list[np.ndarray]
    ) -> asyncio.Future[np.ndarray]:
        """`probabilities` already running when this returns (the worker was idle) or queued
        for its next run: the SIP media clock goes on with other calls meanwhile."""
        return self._batcher.start(list(zip(streams, windows, strict=True)))

    def _select(
        self, waiting: list[BatchRequest[Window]]
    ) -> tuple[list[BatchRequest[Window]], list[BatchRequest[Window]]]:
        # A stream may have one window in a run: its next window needs this one's state.
        batch: list[BatchRequest[Window]] = []
        rest: list[BatchRequest[Window]] = []
        seen: set[int] = set()
        size = 0
        for request in waiting:
            ids = {id(stream) for stream, _ in request.items}
            if (batch and size + len(request.items) > self.max_batch) or ids & seen:
                rest.append(request)
                continue
            seen |= ids
            size += len(request.items)
            batch.append(request)
        return batch, rest

    def _timed_run(self, items: list[Window]) -> np.ndarray:
        began = time.perf_counter()
        probs = self.model.run_batch([s for s, _ in items], [w for _, w in items])
        if self.on_batch is not None:
            self.on_batch(len(items), time.perf_counter() - began)
        return probs

    def close(self) -> None:
        self._batcher.close()
