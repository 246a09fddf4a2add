"""Input clocking for legs whose peers send audio in bursts (WebSocket clients, WebRTC).

The agent's output is clocked by its input (one frame out per frame in), so the input must
arrive at real time. `PacedFrames` turns whatever the peer sends into exactly one frame per
20 ms of wall clock (the shared `FrameTicker` and its stall rule): it buffers early audio
(up to a bound, then drops the oldest: a client running ahead must not build up latency),
and fills gaps with silence (a stalled client must not stall the bot's speech). Both are
counted in `/metrics` (`voicebot_input_frames_total{kind="underrun"|"dropped"}`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol, TypeVar

import numpy as np

from voicebot.agent.clock import FrameTicker
from voicebot.agent.session import CallSession
from voicebot.audio.frames import FRAME_MS, FRAME_SAMPLES, FrameAssembler, silence

T = TypeVar("T")


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class PacedFrames:
    def __init__(
        self,
        max_buffer_ms: int = 400,
        *,
        underruns: Counter | None = None,
        dropped: Counter | None = None,
    ) -> None:
        """`underruns` counts frames of silence inserted, `dropped` frames thrown away
        because the peer ran ahead."""
        self._frames: deque[np.ndarray] = deque()
        self._max_frames = max(1, max_buffer_ms // FRAME_MS)
        self._assembler = FrameAssembler(FRAME_SAMPLES)
        self._closed = False
        self._underruns = underruns
        self._dropped = dropped

    def push(self, samples: np.ndarray) -> None:
        """Canonical 16 kHz int16 samples from the peer, any length."""
        for frame in self._assembler.push(samples):
            self._frames.append(frame)
        while len(self._frames) > self._max_frames:
            self._frames.popleft()
            if self._dropped is not None:
                self._dropped.inc()

    def close(self) -> None:
        """The peer is gone: the iterator ends after the next tick."""
        self._closed = True

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        ticker = FrameTicker()
        quiet = silence()
        await ticker.wait()
        while not self._closed:
            await ticker.wait()
            if self._closed:
                return
            if self._frames:
                yield self._frames.popleft()
            else:
                if self._underruns is not None:
                    self._underruns.inc()
                yield quiet


async def run_paced(
    session: CallSession, paced: PacedFrames, reader: Coroutine[Any, Any, T]
) -> tuple[str, T | None]:
    """Run `session` on `paced` while `reader` (the leg's receive loop) fills it, until
    either ends; returns the session's end reason and what the reader returned (None when
    the session ended first). When the reader ends first the input is closed and the
    session runs out on its own; if this fails or is cancelled, the session is ended too."""
    reading = asyncio.create_task(reader)
    call = asyncio.create_task(session.run(paced))
    try:
        done, _ = await asyncio.wait({reading, call}, return_when=asyncio.FIRST_COMPLETED)
        if reading in done:
            paced.close()
            result = reading.result()
            return await call, result
        return call.result(), None
    except BaseException as exc:
        paced.close()
        session.end("cancelled" if isinstance(exc, asyncio.CancelledError) else "error")
        with contextlib.suppress(Exception):
            await asyncio.shield(call)
        raise
    finally:
        reading.cancel()
