"""PBX peers for gateway tests, written from the wire formats (Asterisk and FreeSWITCH are
not installed here): an Asterisk AudioSocket caller (TCP) and a FreeSWITCH mod_audio_stream
caller (WebSocket). Each streams a caller's audio in real time, 20 ms at a time, and keeps
what the gateway sends back with arrival times."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

from voicebot.audio.resample import resample_whole

SLIN8, SLIN16_A, SLIN16_B, HANGUP, UUID, DTMF = 0x10, 0x11, 0x12, 0x00, 0x01, 0x03
KIND_RATES = {SLIN8: 8000, SLIN16_A: 16000, SLIN16_B: 16000}


@dataclass
class PbxReceived:
    # (arrival s, wire kind or sample rate, samples at the wire rate)
    audio: list[tuple[float, int, np.ndarray]] = field(default_factory=list)
    frame_bytes: set[int] = field(default_factory=set)
    hangup_at: float | None = None  # the gateway's 0x00
    closed_at: float | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)  # FreeSWITCH: other JSON

    def audio_between(self, start: float, end: float) -> int:
        return sum(len(a) for t, _, a in self.audio if start <= t < end)

    @property
    def tags(self) -> set[int]:
        return {tag for _, tag, _ in self.audio}

    def bot_audio_16k(self, rate: int) -> np.ndarray:
        if not self.audio:
            return np.zeros(0, np.int16)
        pcm = np.concatenate([a for _, _, a in self.audio])
        return pcm if rate == 16000 else resample_whole(pcm, rate, 16000)


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


async def audiosocket_call(
    port: int,
    audio: np.ndarray,
    *,
    kind: int = SLIN8,
    call_uuid: uuid.UUID | None = None,
    dtmf: tuple[tuple[float, str], ...] = (),
    hang_up: bool = True,
    wait_s: float = 3.0,
) -> PbxReceived:
    """One AudioSocket call: UUID, then `audio` (16 kHz int16, sent at the kind's rate) in
    real time with DTMF digits at their times; then our 0x00 if `hang_up`, and the gateway's
    close awaited up to `wait_s`."""
    rate = KIND_RATES[kind]
    wire = audio if rate == 16000 else resample_whole(audio, 16000, rate)
    step = rate // 50
    got = PbxReceived()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()

    async def receive() -> None:
        try:
            while True:
                head = await reader.readexactly(3)
                got_kind, length = struct.unpack(">BH", head)
                payload = await reader.readexactly(length)
                now = time.monotonic() - t0
                if got_kind == HANGUP:
                    got.hangup_at = now
                elif got_kind in KIND_RATES:
                    got.frame_bytes.add(length)
                    got.audio.append((now, got_kind, np.frombuffer(payload, "<i2").copy()))
        except (asyncio.IncompleteReadError, ConnectionError):
            got.closed_at = time.monotonic() - t0

    receiver = asyncio.create_task(receive())
    writer.write(frame(UUID, (call_uuid or uuid.uuid4()).bytes))
    digits = sorted(dtmf)
    try:
        for k, i in enumerate(range(0, len(wire), step)):
            delay = t0 + k * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            while digits and digits[0][0] <= k * 0.02:
                writer.write(frame(DTMF, digits.pop(0)[1].encode()))
            if receiver.done():
                break
            writer.write(frame(kind, wire[i : i + step].astype("<i2").tobytes()))
        if hang_up and not receiver.done():
            writer.write(frame(HANGUP))
            await writer.drain()
    except ConnectionError:
        pass
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(receiver), wait_s)
    receiver.cancel()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return got


async def audiosocket_raw(port: int, data: bytes, wait_s: float = 5.0) -> float | None:
    """Send `data` as is (and keep the socket open); how long until the gateway closed it
    (None: still open after `wait_s`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(data)
    await writer.drain()
    closed: float | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            while await reader.read(4096):
                pass
            closed = time.monotonic() - t0
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return closed


async def freeswitch_call(
    url: str,
    audio: np.ndarray,
    *,
    rate: int = 16000,
    metadata: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    linger_s: float = 1.0,
) -> PbxReceived:
    """One mod_audio_stream call: the metadata text first, then binary L16 at `rate` in
    real time, 20 ms a message; the gateway's `streamAudio` JSON kept (tag = its rate)."""
    wire = audio if rate == 16000 else resample_whole(audio, 16000, rate)
    step = rate // 50
    got = PbxReceived()
    t0 = time.monotonic()
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:

        async def receive() -> None:
            try:
                async for message in ws:
                    now = time.monotonic() - t0
                    if isinstance(message, bytes):
                        continue
                    data = json.loads(message)
                    if data.get("type") == "streamAudio":
                        body = data["data"]
                        assert body["audioDataType"] == "raw", body
                        pcm = base64.b64decode(body["audioData"])
                        got.frame_bytes.add(len(pcm))
                        got.audio.append(
                            (now, body["sampleRate"], np.frombuffer(pcm, "<i2").copy())
                        )
                    else:
                        got.messages.append(data)
            except websockets.ConnectionClosed:
                pass
            got.closed_at = time.monotonic() - t0

        receiver = asyncio.create_task(receive())
        await ws.send(json.dumps(metadata or {}))
        for k, i in enumerate(range(0, len(wire), step)):
            delay = t0 + k * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await ws.send(wire[i : i + step].astype("<i2").tobytes())
            except websockets.ConnectionClosed:
                break
        await asyncio.sleep(linger_s)
        await ws.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver, 3.0)
    return got
