"""Input clocking for legs whose peers send audio in bursts (WebSocket clients, WebRTC).

The agent's output is clocked by its input (one frame out per frame in), so the input must
arrive at real time. `PacedFrames` turns whatever the peer sends into exactly one frame per
20 ms of wall clock (the shared `FrameTicker` and its stall rule): it buffers early audio
(up to a bound, then drops the oldest: a client running ahead must not build up latency),
and fills gaps with silence (a stalled client must not stall the bot's speech). Both are
counted in `/metrics` (`voicebot_input_frames_total{kind="underrun"|"dropped"}`).

A late burst (the network or the peer stalled, then delivered what it held) leaves frames
queued that the one-in-one-out clock would never drain: every later word would reach the
VAD that much late, for the rest of the call, and the bot would hear barge-ins and ends of
turn late by as much (live WebRTC calls kept 8 frames, 160 ms, queued from their set-up
on). So a backlog that stands for a whole second is drained to one frame, but only inside
a pause, as a jitter buffer shrinks in silence: a frame is dropped only once the caller
has been quiet (near the line's noise floor) for `PAUSE_BEFORE_DROP_FRAMES`. Speech is
never dropped, nor the short gaps between words: STT hears every word and the recording's
speech keeps its timing; a backlog that stands through speech waits for the next pause.
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

STANDING_WINDOW_TICKS = 50  # 1 s: a backlog this old is latency, not jitter
STANDING_KEEP_FRAMES = 1  # the frame due now; less would turn jitter into inserted silence
PAUSE_BEFORE_DROP_FRAMES = 15  # 300 ms of quiet: longer than the gaps inside a phrase
FLOOR_WINDOW_FRAMES = 150  # the noise floor is the quietest frame of the last 3 s
QUIET_OVER_FLOOR = 4.0  # 6 dB: within this of the floor a frame is the line, not a voice
SILENT_ENERGY = FRAME_SAMPLES * 10 ** (-60 / 10) * 32768.0**2  # -60 dBFS: quiet on any line
LOUD_ENERGY = FRAME_SAMPLES * 10 ** (-40 / 10) * 32768.0**2  # -40 dBFS: never a pause


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
        self._frames: deque[tuple[np.ndarray, bool]] = deque()  # (frame, in a pause)
        self._energies: deque[float] = deque(maxlen=FLOOR_WINDOW_FRAMES)
        self._quiet_run = 0
        self._drain_debt = 0
        self._max_frames = max(1, max_buffer_ms // FRAME_MS)
        self._assembler = FrameAssembler(FRAME_SAMPLES)
        self._closed = False
        self._underruns = underruns
        self._dropped = dropped
        self._window_ticks = 0
        self._window_min = 0

    def push(self, samples: np.ndarray) -> None:
        """Canonical 16 kHz int16 samples from the peer, any length."""
        for frame in self._assembler.push(samples):
            self._frames.append((frame, self._in_pause(frame)))
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
            self._watch_backlog()
            if self._frames:
                yield self._frames.popleft()[0]
            else:
                if self._underruns is not None:
                    self._underruns.inc()
                yield quiet

    def _in_pause(self, frame: np.ndarray) -> bool:
        """Whether `frame` comes `PAUSE_BEFORE_DROP_FRAMES` into a run of quiet frames."""
        x = frame.astype(np.float32)
        energy = float(np.dot(x, x))
        self._energies.append(energy)
        floor = min(self._energies)
        quiet = energy <= SILENT_ENERGY or (
            energy <= LOUD_ENERGY and energy <= QUIET_OVER_FLOOR * floor
        )
        self._quiet_run = self._quiet_run + 1 if quiet else 0
        return self._quiet_run > PAUSE_BEFORE_DROP_FRAMES

    def _watch_backlog(self) -> None:
        """Track the least queued at any tick of the window; what stood through it is owed,
        and paid off by dropping paused frames as they are queued."""
        depth = len(self._frames)
        self._window_min = depth if self._window_ticks == 0 else min(self._window_min, depth)
        self._window_ticks += 1
        if self._window_ticks >= STANDING_WINDOW_TICKS:
            self._window_ticks = 0
            self._drain_debt = max(self._drain_debt, self._window_min - STANDING_KEEP_FRAMES)
        # A backlog that went on its own (the peer stalled after) is owed no more.
        self._drain_debt = min(self._drain_debt, depth - STANDING_KEEP_FRAMES)
        if self._drain_debt > 0:
            self._drop_paused()

    def _drop_paused(self) -> None:
        left = self._drain_debt
        kept: deque[tuple[np.ndarray, bool]] = deque()
        for item in self._frames:  # the oldest paused frames go first
            if item[1] and left:
                left -= 1
                continue
            kept.append(item)
        count = self._drain_debt - left
        if not count:
            return
        self._frames = kept
        self._drain_debt = left
        if self._dropped is not None:
            self._dropped.inc(count)


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
