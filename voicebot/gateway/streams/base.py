"""What every CPaaS media stream (Twilio, Telnyx, Vonage) shares, written once.

A media stream is a WebSocket the provider opens to us for one phone call: a handshake
(`connected`, `start`: who is calling, in what format), then the caller's audio in 20 ms
messages, DTMF and hang-up, and our audio back. `StreamLeg` is the `calls.leg.Leg` of all
of them: it authenticates and admits, reads the handshake, paces the caller's audio into
the session (`calls.pacing.PacedFrames`), writes the bot's frames out one per tick through
an ordered outbox, answers a barge-in with the provider's `clear` in the same event-loop
turn the sink is cleared (queued bot audio dropped at once), sends a `mark` after each bot
sentence where the wire has them, turns DTMF into `session.dtmf`, and closes with a code.

A provider module only parses its inbound messages (`on_text`, `on_bytes`: raise
`StreamError` on a malformed one, call `started`, `audio`, `dtmf`, `mark_played`) and
serialises its outbound ones (`encode_audio`, `clear_message`, `mark_message`).

Close codes (RFC 6455), each with a reason and one bounded log line with the call id:
1000 call over / peer stopped or left, 1002 no `start` in time, 1003 unsupported data
(a binary message on a JSON wire, an unknown event before `start`, an unsupported media
format), 1007 invalid payload (not JSON, bad base64, wrong payload size, missing fields),
1008 bearer token missing or wrong, 1009 a message over 64 KiB, 1011 server error,
1013 not admitted (over capacity, draining, engines overloaded).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
from collections import deque
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from voicebot.agent.events import AgentState, BotText, Event, StateChanged
from voicebot.agent.session import CallSession
from voicebot.audio.resample import from_canonical, to_canonical
from voicebot.calls.leg import Leg, LegSetupError
from voicebot.calls.manager import CallManager, CallRefusedError, LegMedia
from voicebot.calls.pacing import PacedFrames, run_paced
from voicebot.calls.variables import call_variables
from voicebot.gateway.caller_info import caller_info

log = logging.getLogger("voicebot.gateway.streams")

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN = 1013

MAX_MESSAGE = 64 * 1024
START_TIMEOUT_S = 10.0
DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")
MAX_VARIABLES = 64


class StreamError(Exception):
    """A malformed message: the stream is closed with `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_json(text: str) -> dict[str, Any]:
    """A provider's JSON text message as a dict with a string `event` (or raise)."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StreamError(CLOSE_INVALID, "text messages must be JSON") from exc
    if not isinstance(message, dict):
        raise StreamError(CLOSE_INVALID, "a message must be a JSON object")
    return message


def field(message: dict[str, Any], *path: str) -> Any:
    """message[path[0]][path[1]]...; a missing or mistyped step is a malformed message."""
    value: Any = message
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise StreamError(CLOSE_INVALID, f"missing field {'.'.join(path)}")
        value = value[key]
    return value


def b64decode(payload: Any) -> bytes:
    if not isinstance(payload, str):
        raise StreamError(CLOSE_INVALID, "media payload must be a base64 string")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StreamError(CLOSE_INVALID, "media payload is not valid base64") from exc


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def variables(raw: Any) -> dict[str, str]:
    """Custom parameters / headers as a bounded str -> str map (the record's `variables`)."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, str] = {}
    for key, value in list(raw.items())[:MAX_VARIABLES]:
        if isinstance(value, (str, int, float, bool)):
            out[str(key)[:64]] = str(value)[:512]
    return out


class StreamOutbox:
    """Everything sent to the provider, in order, by one writer task; audio items can be
    dropped at once (a barge-in never lets queued bot speech through)."""

    def __init__(self) -> None:
        self._items: deque[tuple[bool, bytes | str]] = deque()  # (is audio, message)
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, message: bytes | str, *, audio: bool = False) -> None:
        if not self._closed:
            self._items.append((audio, message))
            self._ready.set()

    def drop_audio(self) -> int:
        kept = deque(item for item in self._items if not item[0])
        dropped = len(self._items) - len(kept)
        self._items = kept
        return dropped

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def run(self, ws: WebSocket) -> None:
        while True:
            while self._items:
                _, message = self._items.popleft()
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_text(message)
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()


class StreamSink:
    """The agent's frames out to the provider, one message per 20 ms frame."""

    def __init__(self, leg: StreamLeg) -> None:
        self._leg = leg
        self._resampler = from_canonical(16000)
        self.sent_total = 0  # frames handed to the outbox, ever
        self._sent_since_clear = 0

    def set_rate(self, rate: int) -> None:
        self._resampler = from_canonical(rate)

    def write(self, frame: np.ndarray) -> None:
        pcm = self._resampler.process(frame)
        self._leg.outbox.put(self._leg.encode_audio(pcm), audio=True)
        self.sent_total += 1
        self._sent_since_clear += 1
        self._leg.frames_since_mark += 1

    def clear(self) -> int:
        leg = self._leg
        dropped = leg.outbox.drop_audio()
        leg.outbox.put(leg.clear_message())
        leg.frames_since_mark = 0
        # The provider's playout buffer is dropped too: at most what was sent since the
        # last mark it echoed (played), and at most the buffer we assume.
        in_flight = self._sent_since_clear - dropped
        played = max(0, leg.played_frames - (self.sent_total - self._sent_since_clear))
        heard_not = min(in_flight - played, leg.buffer_frames)
        self._sent_since_clear = 0
        return dropped + max(0, heard_not)


class StreamLeg(Leg):
    """One phone call over one provider media stream; subclasses know the wire."""

    transport = "stream"
    marks = False  # the wire has marks (echoed when the audio before them has played)

    def __init__(
        self, ws: WebSocket, manager: CallManager, pending_token: str | None = None
    ) -> None:
        server = manager.settings.server
        self.ws = ws
        self.manager = manager
        # The bearer token, when the socket came without it: then the provider's start
        # message must carry it as the custom parameter / header `token`.
        self.pending_token = pending_token
        self.idle_s = server.ws_idle_timeout_s
        self.buffer_frames = server.ws_client_buffer_frames
        self.outbox = StreamOutbox()
        self.sink = StreamSink(self)
        frames = manager.metrics.input_frames
        self.paced = PacedFrames(
            underruns=frames.labels(self.transport, "underrun"),
            dropped=frames.labels(self.transport, "dropped"),
        )
        self.close_code, self.close_reason = CLOSE_NORMAL, "call ended"
        self.call: str = ""
        self.info: dict[str, object] | None = None  # set by `started`
        self.session: CallSession | None = None
        self.frames_since_mark = 0
        self.played_frames = 0  # frames (of sent_total) known played: the last echoed mark
        self._marks: dict[str, int] = {}  # mark name -> sent_total when it was sent
        self._mark_seq = 0
        self._speaking = False
        self._resampler = to_canonical(16000)
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    # -- what a provider module writes ------------------------------------------------------
    def on_text(self, text: str) -> str | None:
        """One inbound text message; return "stop" when the provider ends the stream."""
        raise StreamError(CLOSE_UNSUPPORTED, "text messages are not supported")

    def on_bytes(self, data: bytes) -> str | None:
        """One inbound binary message; return "stop" when the provider ends the stream."""
        raise StreamError(CLOSE_UNSUPPORTED, "binary messages are not supported")

    def encode_audio(self, pcm: np.ndarray) -> bytes | str:
        """One 20 ms frame of int16 samples at the wire rate as the outbound message."""
        raise NotImplementedError

    def clear_message(self) -> str:
        raise NotImplementedError

    def mark_message(self, name: str) -> str:
        raise NotImplementedError

    # -- what a provider module calls --------------------------------------------------------
    def started(self, rate: int, info: dict[str, object]) -> None:
        """The handshake is done: audio at `rate` both ways, `info` for the record. A
        `token` among its `variables` is taken out (never recorded) and, when the socket
        came without one (`pending_token`), must be the bearer token."""
        params = info.get("variables")
        given = params.pop("token", "") if isinstance(params, dict) else ""
        if self.pending_token is not None and not hmac.compare_digest(
            str(given).encode(), self.pending_token.encode()
        ):
            self.manager.refused(self.transport, "unauthorized")
            raise StreamError(CLOSE_POLICY, "unauthorized: bearer token required")
        self._resampler = to_canonical(rate)
        self.sink.set_rate(rate)
        self.info = {**caller_info(self.ws), **{k: v for k, v in info.items() if v is not None}}

    def audio(self, pcm: np.ndarray) -> None:
        """The caller's int16 samples at the wire rate, in order."""
        self.paced.push(self._resampler.process(pcm))

    def dtmf(self, digit: object) -> None:
        if isinstance(digit, str) and len(digit) == 1 and digit in DTMF_DIGITS:
            if self.session is not None:
                self.session.dtmf(digit.upper())
        else:
            log.info("call %s (%s): ignored DTMF %r", self.call, self.transport, str(digit)[:16])

    def mark_played(self, name: object) -> None:
        """The provider played our audio up to the mark `name` (or dropped it on a clear)."""
        sent = self._marks.pop(name, None) if isinstance(name, str) else None
        if sent is not None:
            self.played_frames = max(self.played_frames, sent)

    # -- the Leg ----------------------------------------------------------------------------
    async def refuse(self, refusal: CallRefusedError) -> None:
        await self.ws.accept()
        await self.ws.close(CLOSE_TRY_AGAIN, f"try again later: {refusal.reason}"[:120])
        self._closed = True

    async def open(self, call_id: str) -> LegMedia:
        self.call = call_id
        await self.ws.accept()
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while self.info is None:
                    outcome = await self._receive_one()
                    if outcome is not None:
                        raise StreamError(CLOSE_NORMAL, outcome)
        except TimeoutError:
            await self._fail(CLOSE_PROTOCOL, f"no start message in {START_TIMEOUT_S:g} s")
        except StreamError as exc:
            await self._fail(exc.code, exc.reason)
        self._writer = asyncio.create_task(self.outbox.run(self.ws))
        info = dict(self.info or {})
        # The custom parameters / headers (`token` taken out) are the call's variables.
        params = info.get("variables")
        return LegMedia(self.sink, subscribers=[self._on_event], info=info,
                        variables=call_variables(params if isinstance(params, dict) else None))

    async def run(self, session: CallSession) -> str:
        self.session = session
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
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self.ws.close(self.close_code, self.close_reason[:120])

    # -- internals --------------------------------------------------------------------------
    async def _fail(self, code: int, reason: str) -> None:
        """Close during the handshake and give the call up (run_leg logs it once)."""
        self._closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason[:120])
        raise LegSetupError(f"closed {code}: {reason}")

    async def _receive_one(self) -> str | None:
        """Read and handle one message; a non-None return ends the stream (why)."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return "peer left"
        data = message.get("bytes")
        text = message.get("text") or ""
        size = len(data) if data is not None else len(text)
        if size > MAX_MESSAGE:
            raise StreamError(CLOSE_TOO_BIG, f"message of {size} bytes > {MAX_MESSAGE}")
        try:
            outcome = self.on_bytes(data) if data is not None else self.on_text(text)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # A shape the provider module did not expect: still the peer's malformed message.
            raise StreamError(CLOSE_INVALID, f"malformed message ({type(exc).__name__})") from exc
        return "stopped by peer" if outcome == "stop" else None

    async def _read(self) -> tuple[int, str]:
        """Reads the provider's messages until the stream ends; returns how to close."""
        try:
            while True:
                try:
                    outcome = await asyncio.wait_for(self._receive_one(), self.idle_s)
                except TimeoutError:
                    return CLOSE_NORMAL, f"idle for {self.idle_s:g} s"
                if outcome is not None:
                    return CLOSE_NORMAL, outcome
        except StreamError as exc:
            log.warning("call %s (%s): closing %d: %s", self.call, self.transport, exc.code,
                        exc.reason[:200])  # fmt: skip
            return exc.code, exc.reason
        except WebSocketDisconnect:
            return CLOSE_NORMAL, "peer left"

    def _on_event(self, event: Event) -> None:
        """A mark after each bot sentence: before the next one's first frame, and when the
        bot stops speaking (its last frame is already in the outbox)."""
        if not self.marks:
            return
        if isinstance(event, BotText):
            self._put_mark()
        elif isinstance(event, StateChanged):
            if event.state == AgentState.SPEAKING:
                self._speaking = True
            elif self._speaking:
                self._speaking = False
                self._put_mark()

    def _put_mark(self) -> None:
        if self.frames_since_mark <= 0:
            return
        self._mark_seq += 1
        name = f"bot-{self._mark_seq}"
        self._marks[name] = self.sink.sent_total
        if len(self._marks) > 256:  # a peer that never echoes: forget the oldest
            self._marks.pop(next(iter(self._marks)))
        self.frames_since_mark = 0
        self.outbox.put(self.mark_message(name))
