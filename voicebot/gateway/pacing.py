"""Input clocking for transports whose peers send audio in bursts (WebSocket clients).

The agent's output is clocked by its input (one frame out per frame in), so the input must
arrive at real time. `PacedFrames` turns whatever the peer sends into exactly one frame per
20 ms of wall clock: it buffers early audio (up to a bound, then drops the oldest: a client
running ahead must not build up latency), and fills gaps with silence (a stalled client
must not stall the bot's speech).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import numpy as np

from voicebot.audio.frames import FRAME_MS, FRAME_SAMPLES, FrameAssembler


class PacedFrames:
    def __init__(self, max_buffer_ms: int = 400) -> None:
        self._frames: deque[np.ndarray] = deque()
        self._max_frames = max(1, max_buffer_ms // FRAME_MS)
        self._assembler = FrameAssembler(FRAME_SAMPLES)
        self._closed = False
        self.underruns = 0  # frames of silence inserted
        self.dropped = 0  # frames dropped because the peer ran ahead

    def push(self, samples: np.ndarray) -> None:
        """Canonical 16 kHz int16 samples from the peer, any length."""
        for frame in self._assembler.push(samples):
            self._frames.append(frame)
        while len(self._frames) > self._max_frames:
            self._frames.popleft()
            self.dropped += 1

    def close(self) -> None:
        """The peer is gone: the iterator ends after the next tick."""
        self._closed = True

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        period = FRAME_MS / 1000
        start = time.monotonic()
        k = 0
        silence = np.zeros(FRAME_SAMPLES, np.int16)
        while not self._closed:
            k += 1
            delay = start + k * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                # The loop was blocked for over a second: re-anchor rather than burst.
                start = time.monotonic() - k * period
            if self._closed:
                return
            if self._frames:
                yield self._frames.popleft()
            else:
                self.underruns += 1
                yield silence
