"""One 20 ms clock for the media of every SIP call: RTP in -> frames -> agent -> RTP out.

A clock per call costs a timer, a task switch and a VAD future per call per tick, and
spreads the calls' work over the whole 20 ms so nothing can be done for several at once.
Here one task wakes every 20 ms (monotonic, no drift) and moves every call one tick:

1. 20 ms of payload per call from its jitter buffer (cut from packets of any ptime; a loss
   is concealed), G.711-decoded for all calls in one table lookup and taken to 16 kHz in
   one `resample_many`;
2. the agent's frame step in two halves (`CallSession.begin_frame` / `finish_frame`) with
   one VAD request for all the windows due, run on the VAD thread while the loop goes on
   receiving packets;
3. each call's bot frame (or silence) down to 8 kHz in one `resample_many` and encoded in
   one lookup, ready to be sent first thing in the next tick (as packets of the call's
   ptime: a 40 ms call sends on every second tick, a 10 ms one twice): they leave right on
   the tick, whatever the tick's work took (that work varies with the VAD thread's wait
   for a core), so the bot's RTP keeps a steady 20 ms pace.

A call whose frame step raises is ended with an `error` (its own log line and event); the
other calls of the tick go on. A tick that starts more than a frame late counts as late
for every call (`voicebot_rtp_late_ticks_total`); more than 1 s behind, the clock
re-anchors instead of bursting (`voicebot_media_ticks_skipped_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from voicebot.agent.clock import FrameTicker
from voicebot.agent.session import CallSession
from voicebot.agent.vad_runner import BatchedVad
from voicebot.audio import g711
from voicebot.audio.frames import FRAME_SAMPLES, silence
from voicebot.audio.resample import resample_many
from voicebot.models.vad import VadStream
from voicebot.telephony.rtp import PACKET_SECONDS, SAMPLES_PER_PACKET, RtpSession
from voicebot.telephony.sdp import PCMU

log = logging.getLogger("voicebot.telephony.media")

_VAD_TIMEOUT_S = 2.0  # a VAD run for every call takes a few ms: this is a stuck model
# The codecs take whole 2-D blocks (one row per call) as well as single frames.
_DECODE = {True: g711.ulaw_decode, False: g711.alaw_decode}
_ENCODE = {True: g711.ulaw_encode, False: g711.alaw_encode}


@dataclass(eq=False)
class MediaLeg:
    rtp: RtpSession
    session: CallSession

    @property
    def ulaw(self) -> bool:
        return self.rtp.payload_type == PCMU


class SipMediaClock:
    """Moves every SIP call's audio one 20 ms tick at a time, all calls together."""

    def __init__(
        self,
        vad: BatchedVad,
        on_tick: Callable[[int, float, bool, int], None] | None = None,
        *,
        on_stop: Callable[[], None] | None = None,
        self_clocked: bool = True,
    ) -> None:
        """`on_tick(calls, seconds, late, skipped)` hears of every completed tick: how many
        calls it moved, how long it took, whether it started late and the ticks skipped
        before it; `on_stop()` that the clock stopped (no calls left).
        `self_clocked=False`: no timer task; whoever owns the clock calls `tick` (tests)."""
        self.vad = vad
        self.on_tick = on_tick
        self.on_stop = on_stop
        self.self_clocked = self_clocked
        self._failures = 0
        self._legs: dict[RtpSession, MediaLeg] = {}
        self._task: asyncio.Task[None] | None = None
        self._outbox: list[tuple[RtpSession, bytes]] = []  # packets of the next tick

    def __len__(self) -> int:
        return len(self._legs)

    def add(self, rtp: RtpSession, session: CallSession) -> None:
        """Start moving a call's media (from the next tick)."""
        self._legs[rtp] = MediaLeg(rtp, session)
        if self._task is None and self.self_clocked:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sip-media")

    def remove(self, rtp: RtpSession) -> None:
        self._legs.pop(rtp, None)

    async def close(self) -> None:
        self._legs.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        ticker = FrameTicker(PACKET_SECONDS)
        await ticker.wait()
        try:
            while self._legs:
                # Behind, the ticker still yields to the loop between catch-up ticks, so
                # packets keep being taken in (a tick with no VAD window never awaits).
                step = await ticker.wait()
                began = time.perf_counter()
                try:
                    moved = await self.tick(step.late)
                    if self.on_tick is not None:
                        self.on_tick(moved, time.perf_counter() - began, step.late, step.skipped)
                except Exception:  # a bug here must not stop the clock of every call
                    self._failures += 1
                    if self._failures == 1 or self._failures % 250 == 0:
                        log.exception("SIP media tick failed (%d so far)", self._failures)
        finally:
            self._task = None
            if self.on_stop is not None:
                self.on_stop()

    async def tick(self, late: bool = False) -> int:
        """Move every call one 20 ms step now (the clock's task does this every 20 ms)."""
        outbox, self._outbox = self._outbox, []
        for rtp, payload in outbox:
            try:
                rtp.send(payload)
            except Exception as exc:  # e.g. an address the socket refuses: this call only
                leg = self._legs.get(rtp)
                if leg is not None and not leg.session.ending:
                    leg.session.fail(exc)
        legs = [leg for leg in self._legs.values() if not leg.session.ending]
        if not legs:
            return 0
        if late:
            for leg in legs:
                leg.rtp.late_ticks += 1
        frames = _caller_frames(legs)
        due = _begin(legs, frames)
        await self._run_vad(legs, due)
        _finish(legs, due)
        self._outbox = _encode_bot_frames(legs)
        return len(legs)

    def _start_vad(self, legs: list[MediaLeg], due: list[_Due | None]) -> _Round | None:
        """A VAD round for the windows due, started on the VAD thread before this returns
        (not a loop turn later, after whatever packets arrived meanwhile). Tried: starting
        the run for half the calls while the loop steps the other half cost more CPU (the
        two threads trading the GIL) than the overlap saved."""
        todo = [i for i, d in enumerate(due) if d is not None and not d.complete]
        if not todo:
            return None
        streams = [legs[i].session.vad_stream for i in todo]
        windows = [due[i].next_window for i in todo]  # type: ignore[union-attr]
        return _Round(todo, streams, windows, self.vad.start(streams, windows))

    async def _run_vad(self, legs: list[MediaLeg], due: list[_Due | None]) -> None:
        # 20 ms frames give at most one 32 ms window per call; a longer backlog (never with
        # 20 ms frames) takes one more round per extra window, in order per stream.
        while True:
            request = self._start_vad(legs, due)  # before this coroutine first awaits
            if request is None:
                return
            todo, streams, windows, running = request
            try:
                probabilities = await asyncio.wait_for(running, _VAD_TIMEOUT_S)
            except TimeoutError:
                for i in todo:  # the model is stuck, not one stream's input: all calls
                    due[i] = None
                    legs[i].session.fail(TimeoutError("VAD gave no answer in time"))
                return
            except Exception:
                # One bad window must not end every call: retry each on its own.
                probabilities = await self._vad_one_by_one(legs, due, todo, streams, windows)
            for i, p in zip(todo, probabilities, strict=True):
                if due[i] is not None:
                    due[i].probabilities.append(float(p))  # type: ignore[union-attr]

    async def _vad_one_by_one(
        self,
        legs: list[MediaLeg],
        due: list[_Due | None],
        todo: list[int],
        streams: list[VadStream],
        windows: list[np.ndarray],
    ) -> list[float]:
        probabilities: list[float] = []
        for i, stream, window in zip(todo, streams, windows, strict=True):
            try:
                result = await asyncio.wait_for(
                    self.vad.probabilities([stream], [window]), _VAD_TIMEOUT_S
                )
                probabilities.append(float(result[0]))
            except Exception as exc:
                due[i] = None
                legs[i].session.fail(exc)
                probabilities.append(0.0)
        return probabilities


class _Round(NamedTuple):
    """One VAD request of a tick: which calls, their streams and windows, its future."""

    todo: list[int]
    streams: list[VadStream]
    windows: list[np.ndarray]
    running: asyncio.Future[np.ndarray]


@dataclass
class _Due:
    """A call's VAD windows of this tick and, as they come, their probabilities."""

    windows: list[np.ndarray]
    probabilities: list[float] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.probabilities) == len(self.windows)

    @property
    def next_window(self) -> np.ndarray:
        return self.windows[len(self.probabilities)]


def _caller_frames(legs: list[MediaLeg]) -> np.ndarray:
    """This tick's caller audio of every leg at 16 kHz, one row each."""
    pcm8 = np.empty((len(legs), SAMPLES_PER_PACKET), np.int16)
    rows: dict[bool, tuple[list[int], list[bytes]]] = {True: ([], []), False: ([], [])}
    for i, leg in enumerate(legs):
        payload = leg.rtp.read_tick()  # 20 ms, whatever the caller's packet size
        if payload is None:
            pcm8[i] = leg.rtp.conceal()
            continue
        index, payloads = rows[leg.ulaw]
        index.append(i)
        payloads.append(payload)
    for ulaw, (index, payloads) in rows.items():
        if index:
            codes = np.frombuffer(b"".join(payloads), np.uint8).reshape(len(index), -1)
            pcm8[index] = _DECODE[ulaw](codes)
    for i, leg in enumerate(legs):
        leg.rtp.last_in = pcm8[i]
    return resample_many([leg.rtp.upsampler for leg in legs], pcm8)


def _begin(legs: list[MediaLeg], frames: np.ndarray) -> list[_Due | None]:
    due: list[_Due | None] = []
    for leg, frame in zip(legs, frames, strict=True):
        try:
            due.append(_Due(leg.session.begin_frame(frame)))
        except Exception as exc:
            leg.session.fail(exc)
            due.append(None)
    return due


def _finish(legs: list[MediaLeg], due: list[_Due | None]) -> None:
    for leg, step in zip(legs, due, strict=True):
        if step is None or leg.session.ending:  # failed, or hung up during the VAD run
            continue
        try:
            leg.session.finish_frame(step.windows, step.probabilities)
        except Exception as exc:
            leg.session.fail(exc)


def _encode_bot_frames(legs: list[MediaLeg]) -> list[tuple[RtpSession, bytes]]:
    """Each leg's bot frame of this tick (silence if none) as its next RTP payload."""
    talking: list[int] = []
    frames: list[np.ndarray] = []
    for i, leg in enumerate(legs):
        frame = leg.rtp.take_output()
        if frame is None and leg.rtp.downsampler.skip_silence(FRAME_SAMPLES):
            continue  # silence in, filter state silent: silence out, no arithmetic
        talking.append(i)
        frames.append(silence() if frame is None else frame)
    payloads = [_SILENCE[leg.ulaw] for leg in legs]
    if talking:
        pcm8 = resample_many([legs[i].rtp.downsampler for i in talking], np.stack(frames))
        for ulaw in (True, False):
            picked = [j for j, i in enumerate(talking) if legs[i].ulaw is ulaw]
            if picked:
                codes = _ENCODE[ulaw](pcm8[picked])
                for j, row in zip(picked, codes, strict=True):
                    payloads[talking[j]] = row.tobytes()
    return [(leg.rtp, payload) for leg, payload in zip(legs, payloads, strict=True)]


_SILENCE = {
    ulaw: encode(np.zeros(SAMPLES_PER_PACKET, np.int16)).tobytes()
    for ulaw, encode in _ENCODE.items()
}
