"""Vonage Voice API WebSockets (an NCCO `connect` to an endpoint of type `websocket`).

From Vonage's "WebSockets in the Vonage Voice API": the first message is text JSON
`{"event": "websocket:connected", "content-type": "audio/l16;rate=16000", ...}` carrying
the endpoint's custom `headers` as top-level keys; then binary messages of 16-bit
little-endian linear PCM mono at 8 or 16 kHz, 20 ms each (320 or 640 bytes; we take any
whole number of 20 ms frames up to 1 s); text `{"event": "websocket:dtmf", "digit": "5"}`
for keys. We send binary L16 frames of 20 ms at the same rate, and on barge-in the text
`{"action": "clear"}` (Vonage empties its playout buffer and answers
`{"event": "websocket:cleared"}`). No marks on this wire.

The call record's `info`: `from` / `to` from the headers `from` (or `caller`) and `to`
when given, and every header under `variables`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from voicebot.gateway.streams.base import (
    CLOSE_INVALID,
    CLOSE_UNSUPPORTED,
    StreamError,
    StreamLeg,
    parse_json,
    variables,
)

RATES = (8000, 16000)
_CONTENT_TYPE = re.compile(r"^\s*audio/l16\s*;\s*rate\s*=\s*(\d+)\s*$", re.IGNORECASE)


class VonageLeg(StreamLeg):
    transport = "vonage"
    marks = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._frame_bytes = 640

    def on_text(self, text: str) -> str | None:
        message = parse_json(text)
        event = message.get("event")
        if self.info is None:
            if event != "websocket:connected":
                raise StreamError(CLOSE_UNSUPPORTED, f"event {str(event)[:40]!r} before connected")
            self._connected(message)
        elif event == "websocket:dtmf":
            digit = message.get("digit")
            if digit is None and isinstance(message.get("dtmf"), dict):
                digit = message["dtmf"].get("digit")
            self.dtmf(digit)
        # websocket:cleared, websocket:notify and events Vonage may add later: ignored
        return None

    def on_bytes(self, data: bytes) -> str | None:
        if self.info is None:
            raise StreamError(CLOSE_UNSUPPORTED, "audio before websocket:connected")
        size = self._frame_bytes
        if not data or len(data) % size or len(data) > 50 * size:
            reason = f"audio message of {len(data)} bytes: not 20 ms frames of {size}"
            raise StreamError(CLOSE_INVALID, reason)
        self.audio(np.frombuffer(data, "<i2").astype(np.int16))
        return None

    def _connected(self, message: dict[str, Any]) -> None:
        content_type = str(message.get("content-type", ""))
        match = _CONTENT_TYPE.match(content_type)
        rate = int(match.group(1)) if match else None
        if rate not in RATES:
            raise StreamError(CLOSE_UNSUPPORTED, f"content-type {content_type[:60]!r}")
        assert rate is not None
        self._frame_bytes = rate // 50 * 2
        headers = variables({k: v for k, v in message.items()
                             if k not in ("event", "content-type")})  # fmt: skip
        self.started(rate, {
            "from": headers.get("from") or headers.get("caller"), "to": headers.get("to"),
            "uuid": headers.get("uuid"), "sample_rate": rate, "variables": headers,
        })  # fmt: skip

    def encode_audio(self, pcm: np.ndarray) -> bytes:
        return pcm.astype("<i2").tobytes()

    def clear_message(self) -> str:
        return json.dumps({"action": "clear"})

    def mark_message(self, name: str) -> str:  # never called: no marks on this wire
        raise NotImplementedError
