"""An aiortc caller for tests and benchmarks: sends a WAV as its microphone track, records
the bot's audio track and the `events` data channel, all over loopback only."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voicebot.audio.resample import resample_whole
from voicebot.gateway.webrtc.media import frame_to_mono
from voicebot.gateway.webrtc.signalling import use_loopback_only


class WavTrack(MediaStreamTrack):
    """16 kHz int16 audio as a live 48 kHz track, paced in real time, then silence."""

    kind = "audio"

    def __init__(self, audio16k: np.ndarray) -> None:
        super().__init__()
        self._audio = resample_whole(audio16k, 16000, 48000)
        self._pos = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pos / 48000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self._audio[self._pos : self._pos + 960]
        if len(chunk) < 960:
            chunk = np.concatenate([chunk, np.zeros(960 - len(chunk), np.int16)])
        frame = audio_frame(chunk, self._pos)
        self._pos += 960
        return frame


def audio_frame(chunk: np.ndarray, pts: int) -> av.AudioFrame:
    """A mono 48 kHz s16 frame of `chunk` at `pts` (in samples), as a mic track yields it."""
    frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 48000
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, 48000)
    return frame


@dataclass
class RtcReceived:
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival, 48k mono)
    pts: list[int] = field(default_factory=list)
    answer_status: int = 0

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def audio16k(self) -> np.ndarray:
        if not self.audio:
            return np.zeros(0, np.int16)
        return resample_whole(np.concatenate([a for _, a in self.audio]), 48000, 16000)


async def negotiate(pc: RTCPeerConnection, base_url: str) -> int:
    """Offer over `POST /webrtc/offer` (non-trickle) and apply the answer; returns the
    answer's HTTP status (an error status raises)."""
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{base_url}/webrtc/offer",
            json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
        )
    response.raise_for_status()
    await pc.setRemoteDescription(RTCSessionDescription(**response.json()))
    return response.status_code


async def rtc_call(base_url: str, audio16k: np.ndarray, *, seconds: float) -> RtcReceived:
    use_loopback_only()
    got = RtcReceived()
    pc = RTCPeerConnection()
    t0 = time.monotonic()
    channel = pc.createDataChannel("events")

    @channel.on("message")
    def on_message(message: str) -> None:
        event = json.loads(message)
        event["_arrival"] = time.monotonic() - t0
        got.events.append(event)

    readers: list[asyncio.Task[None]] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def read() -> None:
            try:
                while True:
                    frame = await track.recv()
                    mono, _ = frame_to_mono(frame)
                    got.audio.append((time.monotonic() - t0, mono))
                    got.pts.append(int(frame.pts))
            except MediaStreamError:
                pass

        readers.append(asyncio.create_task(read()))

    pc.addTrack(WavTrack(audio16k))
    got.answer_status = await negotiate(pc, base_url)
    await asyncio.sleep(seconds)
    await pc.close()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    return got


async def connect_and_leave(base_url: str, hold_s: float = 0.3) -> None:
    """One short call: connect, let media start, hang up."""
    use_loopback_only()
    pc = RTCPeerConnection()
    pc.createDataChannel("events")
    pc.addTrack(WavTrack(np.zeros(16000, np.int16)))
    await negotiate(pc, base_url)
    await asyncio.sleep(hold_s)
    await pc.close()
