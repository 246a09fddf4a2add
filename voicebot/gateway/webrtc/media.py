"""WebRTC media at the edge: Opus/48 kHz frames from aiortc <-> canonical 16 kHz frames.

`feed_remote_track` decodes the caller's track (aiortc has already decoded Opus to s16
48 kHz, usually stereo) to mono 16 kHz for the call's paced input. `BotAudioTrack` is the
track aiortc sends: it hands out one 20 ms frame per tick of the shared `FrameTicker`, silence
when the bot has nothing to say, with pts that advance by exactly one frame every time so
the RTP timestamps stay continuous across silence and clears (RFC 3550 section 5.1) and
never drift from the wall clock over a long call.
"""

from __future__ import annotations

import fractions
import logging
from collections import deque

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voicebot.agent.clock import FrameTicker
from voicebot.audio.resample import from_canonical, to_canonical
from voicebot.calls.pacing import PacedFrames

log = logging.getLogger("voicebot.gateway.webrtc")

RTC_RATE = 48_000
RTC_FRAME = 960  # 20 ms at 48 kHz
TIME_BASE = fractions.Fraction(1, RTC_RATE)


def frame_to_mono(frame: av.AudioFrame) -> tuple[np.ndarray, int]:
    """An aiortc/av audio frame as mono int16 samples and its rate."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.name not in ("s16", "s16p"):
        raise ValueError(f"unexpected audio format {frame.format.name}")
    if frame.format.is_planar:
        mono = data.astype(np.int32).mean(axis=0) if channels > 1 else data[0]
    else:
        interleaved = data.reshape(-1, channels)
        mono = interleaved.astype(np.int32).mean(axis=1) if channels > 1 else interleaved[:, 0]
    return np.rint(mono).astype(np.int16), frame.sample_rate


async def feed_remote_track(track: MediaStreamTrack, paced: PacedFrames, call_id: str) -> None:
    """Decode the caller's track into `paced` until it ends; then close `paced`."""
    resampler = to_canonical(RTC_RATE)
    try:
        while True:
            frame = await track.recv()
            mono, frame_rate = frame_to_mono(frame)
            if frame_rate != resampler.in_rate:
                resampler = to_canonical(frame_rate)
            paced.push(resampler.process(mono))
    except MediaStreamError:
        log.info("call %s: caller's track ended", call_id)
    except Exception:
        log.exception("call %s: bad media from the browser", call_id)
    finally:
        paced.close()


class BotAudioTrack(MediaStreamTrack):
    """The bot's voice as an aiortc track; also the call's AudioSink."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._upsample = from_canonical(RTC_RATE)
        self._silence = np.zeros(RTC_FRAME, np.int16)
        # Half a second behind, skip rather than burst: a burst only fills the browser's
        # jitter buffer, and every frame in it is latency the caller hears.
        self._ticker = FrameTicker(resync_s=0.5)
        self._pts = -RTC_FRAME

    # -- AudioSink ---------------------------------------------------------------------
    def write(self, frame: np.ndarray) -> None:
        self._queue.append(self._upsample.process(frame))

    def clear(self) -> int:
        dropped = len(self._queue)
        self._queue.clear()
        return dropped

    # -- MediaStreamTrack --------------------------------------------------------------
    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        tick = await self._ticker.wait()
        # After a stall the skipped ticks are simply silence in RTP terms: timestamps stay
        # continuous and the track does not burst to catch up.
        self._pts += RTC_FRAME * (1 + tick.skipped)
        samples = self._queue.popleft() if self._queue else self._silence
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RTC_RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        return frame
