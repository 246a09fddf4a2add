"""FreeSWITCH mod_audio_stream calls (`WS /v1/streams/freeswitch`), each one `calls.leg.Leg`.

`uuid_audio_stream <uuid> start ws://HOST:8000/v1/streams/freeswitch mono 16k {...}` makes
FreeSWITCH open one WebSocket per call: its first message is the metadata text (a JSON
object is kept in the call record's `info.variables`; its `from` / `to`, if any, become the
record's), then binary messages of L16 (s16le mono) caller audio at the rate given there,
20 ms each by default (`STREAM_BUFFER_SIZE`). The rate is not in the stream: it is 16 kHz
unless the URL says `?rate=8000` (or `8k`) or the metadata has `"sample_rate": 8000`.

The bot's audio goes back as the module's JSON text messages, one per 20 ms frame in real
time: `{"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": R,
"audioData": "<base64 s16le>"}}` (the bidirectional edition also takes raw binary frames;
the JSON form is the one every edition plays). There is no "clear" on this wire: at a
barge-in the frames not yet sent are dropped and the bot stops sending. Our hang-up is a
close (1000); a wrong bearer token closes with 1008, a refusal with 1013, bad input with
1003 / 1009, all with a bounded reason. Self-contained (not on `gateway/streams/`'s base).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voicebot.agent.session import CallSession
from voicebot.audio.resample import from_canonical, to_canonical
from voicebot.calls.leg import Leg, LegSetupError, run_leg
from voicebot.calls.manager import CallManager, CallRefusedError, LegMedia
from voicebot.calls.pacing import PacedFrames, run_paced
from voicebot.calls.variables import call_variables
from voicebot.gateway.caller_info import caller_info
from voicebot.gateway.ws import bearer_ok

log = logging.getLogger("voicebot.gateway.freeswitch")

PATH = "/v1/streams/freeswitch"
RATES = {"8000": 8000, "8k": 8000, "16000": 16000, "16k": 16000}
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN = 1013
MAX_METADATA = 16 * 1024


class StreamError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _rate_of(value: object) -> int | None:
    return RATES.get(str(value).strip().lower()) if value is not None else None


class FreeSwitchSink:
    """The bot's frames out as `streamAudio` messages, sent in order by one writer task;
    frames not yet sent are dropped at a barge-in."""

    def __init__(self, rate: int) -> None:
        self._items: deque[str] = deque()
        self._ready = asyncio.Event()
        self.closed = False
        self.set_rate(rate)

    def set_rate(self, rate: int) -> None:
        self.rate = rate
        self._resampler = from_canonical(rate)

    def write(self, frame: np.ndarray) -> None:
        pcm = self._resampler.process(frame).astype("<i2").tobytes()
        if self.closed:
            return
        self._items.append(json.dumps({"type": "streamAudio", "data": {
            "audioDataType": "raw", "sampleRate": self.rate,
            "audioData": base64.b64encode(pcm).decode("ascii"),
        }}))  # fmt: skip
        self._ready.set()

    def clear(self) -> int:
        dropped = len(self._items)
        self._items.clear()
        return dropped

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def run(self, ws: WebSocket) -> None:
        while True:
            while self._items:
                await ws.send_text(self._items.popleft())
            if self.closed:
                return
            self._ready.clear()
            await self._ready.wait()


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    await ws.accept()
    await ws.close(code, reason)


async def freeswitch_call(ws: WebSocket, manager: CallManager | None) -> None:
    """`WS /v1/streams/freeswitch`: authenticate, then one call over this socket."""
    if manager is None:
        await _close(ws, CLOSE_TRY_AGAIN, "try again later: starting")
        return
    token = manager.settings.api_token
    if token and not bearer_ok(ws, token):
        manager.refused(FreeSwitchLeg.transport, "unauthorized")
        await _close(ws, CLOSE_POLICY, "unauthorized: bearer token required")
        return
    await run_leg(manager, FreeSwitchLeg(ws, manager))


def freeswitch_router(manager: Callable[[], CallManager | None]) -> APIRouter:
    """The `WS /v1/streams/freeswitch` route over the gateway's call manager (once built)."""
    router = APIRouter()

    async def endpoint(ws: WebSocket) -> None:
        await freeswitch_call(ws, manager())

    router.add_api_websocket_route(PATH, endpoint, "stream_freeswitch")
    return router


class FreeSwitchLeg(Leg):
    """One mod_audio_stream WebSocket: one call."""

    transport = "freeswitch"

    def __init__(self, ws: WebSocket, manager: CallManager) -> None:
        server = manager.settings.server
        self.ws = ws
        self.idle_s = server.ws_idle_timeout_s
        self.rate = _rate_of(ws.query_params.get("rate")) or 16000
        self.sink = FreeSwitchSink(self.rate)
        frames = manager.metrics.input_frames
        self.paced = PacedFrames(
            underruns=frames.labels(self.transport, "underrun"),
            dropped=frames.labels(self.transport, "dropped"),
        )
        self.call: str | None = None
        self.close_code, self.close_reason = CLOSE_NORMAL, "call ended"
        self._writer: asyncio.Task[None] | None = None
        self._resampler = to_canonical(self.rate)

    async def refuse(self, refusal: CallRefusedError) -> None:
        await _close(self.ws, CLOSE_TRY_AGAIN, f"try again later: {refusal.reason}")

    async def open(self, call_id: str) -> LegMedia:
        self.call = call_id
        await self.ws.accept()
        info: dict[str, Any] = caller_info(self.ws)
        try:
            first = await asyncio.wait_for(self.ws.receive(), self.idle_s)
        except TimeoutError as exc:
            self.close_code, self.close_reason = CLOSE_NORMAL, "no metadata or audio"
            raise LegSetupError(f"nothing received for {self.idle_s:g} s") from exc
        if first["type"] == "websocket.disconnect":
            raise LegSetupError("FreeSWITCH left before the first message")
        audio: bytes | None = first.get("bytes")
        text = first.get("text")
        if text is not None:
            if len(text) > MAX_METADATA:
                self.close_code, self.close_reason = CLOSE_TOO_BIG, "metadata too long"
                raise LegSetupError(f"metadata of {len(text)} characters")
            try:
                metadata: Any = json.loads(text)
            except json.JSONDecodeError:
                metadata = {"metadata": text}  # any UTF-8 text is allowed there
            if not isinstance(metadata, dict):
                metadata = {"metadata": metadata}
            info["variables"] = metadata
            for key in ("from", "to"):
                if isinstance(metadata.get(key), str | int):
                    info[key] = str(metadata[key])
            rate = _rate_of(metadata.get("sample_rate", metadata.get("sampleRate")))
            if rate is not None and "rate" not in self.ws.query_params:
                self.rate = rate
                self.sink.set_rate(rate)
                self._resampler = to_canonical(rate)
        info["sample_rate"] = self.rate
        if audio is not None:
            try:
                self._audio(audio)
            except StreamError as exc:
                self.close_code, self.close_reason = exc.code, exc.reason
                raise LegSetupError(exc.reason) from exc
        self._writer = asyncio.create_task(self.sink.run(self.ws))
        # The metadata's scalar fields are the call's variables (calls/variables.py).
        return LegMedia(self.sink, info=info, variables=call_variables(info.get("variables")))

    async def run(self, session: CallSession) -> str:
        reason, closing = await run_paced(session, self.paced, self._read())
        if closing is None:
            self.close_reason = f"call ended: {reason}"
        else:
            self.close_code, self.close_reason = closing
        return reason

    async def close(self, reason: str | None) -> None:
        if reason == "error" and self._writer is not None:
            self.close_code, self.close_reason = CLOSE_SERVER_ERROR, "server error"
        self.sink.close()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer, 2.0)
        if self.ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(self.close_code, self.close_reason[:120])

    # -- FreeSWITCH's messages ------------------------------------------------------------
    async def _read(self) -> tuple[int, str]:
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), self.idle_s)
                except TimeoutError:
                    return CLOSE_NORMAL, f"idle for {self.idle_s:g} s"
                if message["type"] == "websocket.disconnect":
                    return CLOSE_NORMAL, "FreeSWITCH left"
                if message.get("bytes") is not None:
                    self._audio(message["bytes"])
                elif len(message.get("text") or "") > MAX_METADATA:
                    raise StreamError(CLOSE_TOO_BIG, "text message too long")
                # other text (`uuid_audio_stream ... send_text`) is not for the bot
        except StreamError as exc:
            log.warning("freeswitch call %s: %s", self.call, exc.reason[:200])
            return exc.code, exc.reason
        except WebSocketDisconnect:
            return CLOSE_NORMAL, "FreeSWITCH left"

    def _audio(self, data: bytes) -> None:
        limit = self.rate * 2  # one second of L16
        if len(data) > limit:
            raise StreamError(CLOSE_TOO_BIG, f"audio message of {len(data)} bytes > {limit}")
        if len(data) % 2:
            raise StreamError(CLOSE_UNSUPPORTED, "audio must be 16-bit samples (even length)")
        samples = np.frombuffer(data, "<i2").astype(np.int16)
        self.paced.push(self._resampler.process(samples))
