"""Provider-side media-stream clients for tests: each plays the provider's part of its public
protocol (Twilio Media Streams, Telnyx media streaming, Vonage Voice WebSockets) against
the gateway, streaming a caller's audio in real time and keeping what comes back.

Written from the providers' protocol descriptions, not from the gateway's code:
- Twilio: `connected`, `start` (streamSid, callSid, customParameters, mediaFormat
  audio/x-mulaw 8000 1), `media` every 20 ms (base64 µ-law, track, chunk, timestamp),
  `dtmf`, `stop`; it plays our `media` at real time, echoes each `mark` when the audio
  before it has played, and on `clear` drops what it has not played and echoes the
  pending marks at once.
- Telnyx: `connected`, `start` (stream_id, call_control_id, from, to, custom_parameters,
  media_format), `media` (base64 payload, chunk, timestamp; frames may be sent out of
  order), `dtmf`, `stop`; takes `media`, `mark`, `clear` back.
- Vonage: text `websocket:connected` with content-type and headers, binary L16 frames of
  20 ms, `websocket:dtmf`; takes binary L16 back and `{"action": "clear"}`, which it
  answers with `websocket:cleared`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

from voicebot.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode


@dataclass
class StreamResult:
    rate: int
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival s, pcm)
    clears: list[float] = field(default_factory=list)
    # (arrival s, name, bot frames received before it)
    marks: list[tuple[float, str, int]] = field(default_factory=list)
    echoed: list[tuple[float, str]] = field(default_factory=list)  # marks we echoed
    texts: list[dict[str, Any]] = field(default_factory=list)  # other text messages
    close_code: int | None = None
    close_reason: str = ""
    call_ref: str = ""  # the provider's id of the call (Twilio callSid, Telnyx call_control_id)

    def audio_between(self, start: float, end: float) -> int:
        return sum(len(a) for t, a in self.audio if start <= t < end)

    def pcm(self, until: float = float("inf")) -> np.ndarray:
        parts = [a for t, a in self.audio if t < until]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


async def _stream(
    url: str,
    frames: list[bytes | str],
    result: StreamResult,
    *,
    opening: list[str],
    on_text: Callable[[websockets.ClientConnection, dict[str, Any], float], Awaitable[None]],
    on_bytes: Callable[[bytes, float], None] | None = None,
    extra: dict[int, list[str]] | None = None,
    order: list[int] | None = None,
    closing: list[str] = (),  # type: ignore[assignment]
    linger_s: float = 0.0,
    headers: dict[str, str] | None = None,
) -> StreamResult:
    """The common real-time loop: opening messages, then one frame per 20 ms (in `order`
    if given), `extra` messages after frame k, then closing messages."""
    t0 = time.monotonic()
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:

        async def receive() -> None:
            try:
                async for message in ws:
                    now = time.monotonic() - t0
                    if isinstance(message, bytes):
                        if on_bytes is not None:
                            on_bytes(message, now)
                    else:
                        await on_text(ws, json.loads(message), now)
            except websockets.ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        try:
            for message in opening:
                await ws.send(message)
            for k, index in enumerate(order or range(len(frames))):
                delay = t0 + k * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(frames[index])
                for message in (extra or {}).get(k, []):
                    await ws.send(message)
            if linger_s:
                await asyncio.sleep(linger_s)
            for message in closing:
                await ws.send(message)
            if not closing:  # the provider hangs up by closing the socket
                await ws.close()
        except websockets.ConnectionClosed:
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver, 20)
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    return result


def _chunks(audio: np.ndarray, rate: int) -> list[np.ndarray]:
    step = rate // 50
    return [audio[i : i + step] for i in range(0, len(audio) - step + 1, step)]


# -- Twilio ---------------------------------------------------------------------------------
async def twilio_call(
    url: str,
    audio8k: np.ndarray,
    *,
    params: dict[str, str] | None = None,
    dtmf: dict[float, str] | None = None,
    headers: dict[str, str] | None = None,
) -> StreamResult:
    """A Twilio bidirectional stream for one call: µ-law 8 kHz both ways."""
    stream_sid = "MZ" + uuid.uuid4().hex
    call_sid = "CA" + uuid.uuid4().hex
    result = StreamResult(8000, call_ref=call_sid)
    playout = {"until": 0.0, "frames": 0}  # when what we were sent has played
    pending: dict[str, asyncio.TimerHandle] = {}

    def echo(ws: websockets.ClientConnection, name: str) -> None:
        pending.pop(name, None)
        result.echoed.append((time.monotonic(), name))
        message = {"event": "mark", "sequenceNumber": "0", "streamSid": stream_sid,
                   "mark": {"name": name}}  # fmt: skip
        asyncio.get_running_loop().create_task(_send_quietly(ws, json.dumps(message)))

    async def on_text(ws: websockets.ClientConnection, msg: dict[str, Any], now: float) -> None:
        event = msg.get("event")
        assert msg.get("streamSid") == stream_sid, msg
        if event == "media":
            pcm = ulaw_decode(base64.b64decode(msg["media"]["payload"]))
            result.audio.append((now, pcm))
            playout["until"] = max(playout["until"], time.monotonic()) + len(pcm) / 8000
            playout["frames"] += 1
        elif event == "mark":
            name = msg["mark"]["name"]
            result.marks.append((now, name, playout["frames"]))
            delay = max(0.0, playout["until"] - time.monotonic())
            pending[name] = asyncio.get_running_loop().call_later(delay, echo, ws, name)
        elif event == "clear":
            result.clears.append(now)
            playout["until"] = time.monotonic()
            for name, handle in list(pending.items()):
                handle.cancel()
                echo(ws, name)
        else:
            result.texts.append(msg)

    start = {
        "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
        "start": {
            "accountSid": "AC" + uuid.uuid4().hex, "streamSid": stream_sid, "callSid": call_sid,
            "tracks": ["inbound"], "customParameters": params or {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }  # fmt: skip
    frames: list[bytes | str] = []
    for k, chunk in enumerate(_chunks(audio8k, 8000)):
        frames.append(json.dumps({
            "event": "media", "sequenceNumber": str(k + 2), "streamSid": stream_sid,
            "media": {"track": "inbound", "chunk": str(k + 1), "timestamp": str(k * 20),
                      "payload": base64.b64encode(ulaw_encode(chunk).tobytes()).decode()},
        }))  # fmt: skip
    extra: dict[int, list[str]] = {}
    for t, digit in (dtmf or {}).items():
        key = {"track": "inbound_track", "digit": digit}
        extra[int(t * 50)] = [json.dumps({"event": "dtmf", "streamSid": stream_sid, "dtmf": key})]
    stop = json.dumps({"event": "stop", "streamSid": stream_sid,
                       "stop": {"accountSid": "AC", "callSid": call_sid}})  # fmt: skip
    connected = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    return await _stream(url, frames, result, opening=[connected, json.dumps(start)],
                         on_text=on_text, extra=extra, closing=[stop], headers=headers)  # fmt: skip


async def _send_quietly(ws: websockets.ClientConnection, message: str) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.send(message)


# -- Telnyx ---------------------------------------------------------------------------------
async def telnyx_call(
    url: str,
    audio: np.ndarray,
    *,
    encoding: str = "PCMA",
    rate: int = 8000,
    shuffle: bool = True,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> StreamResult:
    """A Telnyx bidirectional RTP stream for one call; with `shuffle`, every third pair of
    media frames is sent swapped (Telnyx does not guarantee order)."""
    codec = (alaw_encode, alaw_decode) if encoding == "PCMA" else (ulaw_encode, ulaw_decode)
    encode, decode = codec
    result = StreamResult(rate)

    async def on_text(ws: websockets.ClientConnection, msg: dict[str, Any], now: float) -> None:
        event = msg.get("event")
        if event == "media":
            result.audio.append((now, decode(base64.b64decode(msg["media"]["payload"]))))
        elif event == "clear":
            result.clears.append(now)
        elif event == "mark":
            result.marks.append((now, msg["mark"]["name"], len(result.audio)))
        else:
            result.texts.append(msg)

    stream_id = str(uuid.uuid4())
    result.call_ref = "v3:" + uuid.uuid4().hex
    start = {
        "event": "start", "sequence_number": "1", "stream_id": stream_id,
        "start": {
            "user_id": str(uuid.uuid4()), "call_control_id": result.call_ref,
            "call_session_id": str(uuid.uuid4()), "from": "+13122010094", "to": "+13122123456",
            "custom_parameters": params or {},
            "media_format": {"encoding": encoding, "sample_rate": rate, "channels": 1},
        },
    }  # fmt: skip
    frames: list[bytes | str] = []
    for k, chunk in enumerate(_chunks(audio, rate)):
        frames.append(json.dumps({
            "event": "media", "sequence_number": str(k + 2), "stream_id": stream_id,
            "media": {"track": "inbound", "chunk": str(k + 1), "timestamp": str(k * 20),
                      "payload": base64.b64encode(encode(chunk).tobytes()).decode()},
        }))  # fmt: skip
    order = list(range(len(frames)))
    if shuffle:
        for i in range(0, len(order) - 1, 6):
            order[i], order[i + 1] = order[i + 1], order[i]
    connected = json.dumps({"event": "connected", "version": "1.0.0"})
    stop = json.dumps({"event": "stop", "stream_id": stream_id, "stop": {}})
    return await _stream(url, frames, result, opening=[connected, json.dumps(start)],
                         on_text=on_text, order=order, closing=[stop], headers=headers)  # fmt: skip


# -- Vonage ---------------------------------------------------------------------------------
async def vonage_call(
    url: str,
    audio: np.ndarray,
    *,
    rate: int = 16000,
    call_headers: dict[str, str] | None = None,
    dtmf: dict[float, str] | None = None,
    headers: dict[str, str] | None = None,
) -> StreamResult:
    """A Vonage WebSocket endpoint for one call: L16 at `rate` both ways."""
    result = StreamResult(rate)

    def on_bytes(data: bytes, now: float) -> None:
        result.audio.append((now, np.frombuffer(data, "<i2").copy()))

    async def on_text(ws: websockets.ClientConnection, msg: dict[str, Any], now: float) -> None:
        if msg.get("action") == "clear":
            result.clears.append(now)
            await ws.send(json.dumps({"event": "websocket:cleared"}))
        else:
            result.texts.append(msg)

    connected = {"event": "websocket:connected", "content-type": f"audio/l16;rate={rate}",
                 **(call_headers or {})}  # fmt: skip
    frames: list[bytes | str] = [c.astype("<i2").tobytes() for c in _chunks(audio, rate)]
    extra = {
        int(t * 50): [json.dumps({"event": "websocket:dtmf", "digit": d, "duration": 250})]
        for t, d in (dtmf or {}).items()
    }
    return await _stream(url, frames, result, opening=[json.dumps(connected)],
                         on_text=on_text, on_bytes=on_bytes, extra=extra,
                         headers=headers)  # fmt: skip


async def expect_close(
    url: str, *messages: bytes | str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """Send messages; return the server's close code and reason."""
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        try:
            for m in messages:
                await ws.send(m)
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass
        return ws.close_code or 0, ws.close_reason or ""
