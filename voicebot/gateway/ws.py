"""The binary WebSocket leg (`WS /ws`, DESIGN.md section 4): the only code that knows it.

Binary messages are s16le mono PCM at the call's rate (16 kHz unless the client's first
message is `{"type": "start", "sample_rate": R}`, R in 8000/16000/24000/48000), up to 1 s
each, both ways. Text messages are JSON: `start`, `stop` from the client; the events of
DESIGN.md section 2 and `{"type": "clear"}` (drop queued bot audio now) from the server.
Close codes: 1003 unsupported data, 1008 auth, 1009 too big, 1011 server error,
1013 over capacity / shutting down, 1000 call over (with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voicebot.agent.events import Event
from voicebot.agent.session import CallSession
from voicebot.audio.resample import from_canonical, to_canonical
from voicebot.calls.leg import Leg, run_leg
from voicebot.calls.manager import CallManager, CallRefusedError, LegMedia
from voicebot.calls.pacing import PacedFrames, run_paced
from voicebot.gateway.caller_info import caller_info

log = logging.getLogger("voicebot.gateway.ws")

ACCEPTED_RATES = (8000, 16000, 24000, 48000)
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN = 1013


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Outbox:
    """Everything sent to the client, in order, by one writer task.

    Audio waiting here is the transport's queue: `drop_audio` empties it at once, so a
    barge-in never lets queued bot speech through.
    """

    def __init__(self) -> None:
        self._items: deque[bytes | str] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, item: bytes | str) -> None:
        if not self._closed:
            self._items.append(item)
            self._ready.set()

    def drop_audio(self) -> int:
        kept = [item for item in self._items if isinstance(item, str)]
        dropped = len(self._items) - len(kept)
        self._items = deque(kept)
        return dropped

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def run(self, ws: WebSocket) -> None:
        while True:
            while self._items:
                item = self._items.popleft()
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_text(item)
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()


class WebSocketSink:
    """The agent's frames out to the client, at the client's rate."""

    def __init__(self, outbox: Outbox, rate: int, client_buffer_frames: int) -> None:
        self._outbox = outbox
        self._client_buffer_frames = client_buffer_frames
        self._sent_since_clear = 0
        self.set_rate(rate)

    def set_rate(self, rate: int) -> None:
        self._resampler = from_canonical(rate)

    def write(self, frame: np.ndarray) -> None:
        self._outbox.put(self._resampler.process(frame).astype("<i2").tobytes())
        self._sent_since_clear += 1

    def clear(self) -> int:
        dropped = self._outbox.drop_audio()
        self._outbox.put(json.dumps({"type": "clear"}))
        # What the client had buffered is dropped there too: assume its playout buffer.
        heard_not = min(self._sent_since_clear - dropped, self._client_buffer_frames)
        self._sent_since_clear = 0
        return dropped + max(0, heard_not)


def bearer_ok(conn: HTTPConnection, token: str) -> bool:
    """Bearer token in the Authorization header, or `?token=` (browsers cannot set headers
    on a WebSocket). Compared in constant time."""
    header = conn.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    given = given or conn.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


def bearer_required(token: Callable[[], str | None]) -> Callable[[HTTPConnection], None]:
    """A route dependency: 401 with `WWW-Authenticate: Bearer` unless the request carries
    the token `token()` gives (none configured: open)."""

    def authorized(request: HTTPConnection) -> None:
        expected = token()
        if expected and not bearer_ok(request, expected):
            raise HTTPException(401, "unauthorized: bearer token required",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    return authorized


async def _refuse(ws: WebSocket, code: int, reason: str) -> None:
    await ws.accept()
    await ws.close(code, reason)


async def websocket_call(ws: WebSocket, manager: CallManager) -> None:
    """`WS /ws`: authenticate, then one call over this socket."""
    settings = manager.settings
    if settings.api_token and not bearer_ok(ws, settings.api_token):
        manager.refused("ws", "unauthorized")
        await _refuse(ws, CLOSE_POLICY, "unauthorized: bearer token required")
        return
    await run_leg(manager, WebSocketLeg(ws, manager))


class WebSocketLeg(Leg):
    """One call over one WebSocket: binary PCM both ways, JSON events and `clear` out."""

    transport = "ws"

    def __init__(self, ws: WebSocket, manager: CallManager) -> None:
        server = manager.settings.server
        self.ws = ws
        self.idle_s = server.ws_idle_timeout_s
        self.outbox = Outbox()
        self.sink = WebSocketSink(self.outbox, 16000, server.ws_client_buffer_frames)
        frames = manager.metrics.input_frames
        self.paced = PacedFrames(
            underruns=frames.labels("ws", "underrun"), dropped=frames.labels("ws", "dropped")
        )
        self.close_code, self.close_reason = CLOSE_NORMAL, "call ended"
        self._writer: asyncio.Task[None] | None = None
        self._rate = 16000
        self._resampler = to_canonical(16000)
        self._audio_seen = False

    async def refuse(self, refusal: CallRefusedError) -> None:
        await _refuse(self.ws, CLOSE_TRY_AGAIN, f"try again later: {refusal.reason}")

    async def open(self, call_id: str) -> LegMedia:
        await self.ws.accept()
        self._writer = asyncio.create_task(self.outbox.run(self.ws))

        def forward(event: Event) -> None:
            self.outbox.put(event.to_json())

        return LegMedia(self.sink, subscribers=[forward], info=caller_info(self.ws))

    async def run(self, session: CallSession) -> str:
        reason, closing = await run_paced(session, self.paced, self._read())
        if closing is None:
            self.close_reason = f"call ended: {reason}"
        else:
            self.close_code, self.close_reason = closing
        return reason

    async def close(self, reason: str | None) -> None:
        if reason in (None, "error") and self._writer is not None:  # accepted, then failed
            self.close_code, self.close_reason = CLOSE_SERVER_ERROR, "server error"
        self.outbox.close()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        if self.ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(self.close_code, self.close_reason[:120])

    # -- the client's messages ------------------------------------------------------------
    async def _read(self) -> tuple[int, str]:
        """Reads the client's messages into the paced input; returns how to close."""
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), self.idle_s)
                except TimeoutError:
                    return CLOSE_NORMAL, f"idle for {self.idle_s:g} s"
                if message["type"] == "websocket.disconnect":
                    return CLOSE_NORMAL, "client left"
                if message.get("bytes") is not None:
                    self._audio(message["bytes"])
                elif message.get("text") is not None and self._control(message["text"]) == "stop":
                    return CLOSE_NORMAL, "stopped by client"
        except ProtocolError as exc:
            return exc.code, exc.reason
        except WebSocketDisconnect:
            return CLOSE_NORMAL, "client left"

    def _audio(self, data: bytes) -> None:
        limit = self._rate * 2  # one second of s16le
        if len(data) > limit:
            raise ProtocolError(CLOSE_TOO_BIG, f"audio message of {len(data)} bytes > {limit}")
        if len(data) % 2:
            raise ProtocolError(CLOSE_UNSUPPORTED, "audio must be 16-bit samples (even length)")
        self._audio_seen = True
        samples = np.frombuffer(data, "<i2").astype(np.int16)
        self.paced.push(self._resampler.process(samples))

    def _control(self, text: str) -> str:
        if len(text) > 4096:
            raise ProtocolError(CLOSE_TOO_BIG, "control message too long")
        try:
            message: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtocolError(CLOSE_UNSUPPORTED, "text messages must be JSON") from exc
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "stop":
            return "stop"
        if kind == "start":
            if self._audio_seen:
                raise ProtocolError(CLOSE_UNSUPPORTED, "start must come before any audio")
            rate = message.get("sample_rate", 16000)
            if rate not in ACCEPTED_RATES:
                raise ProtocolError(CLOSE_UNSUPPORTED, f"sample_rate {rate!r} not supported")
            self._rate = rate
            self._resampler = to_canonical(rate)
            self.sink.set_rate(rate)
            return "start"
        raise ProtocolError(CLOSE_UNSUPPORTED, f"unknown message type {kind!r}")
