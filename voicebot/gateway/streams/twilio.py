"""Twilio Media Streams, bidirectional (`<Connect><Stream url="wss://HOST/v1/streams/twilio">`).

Every message is a JSON text message with an `event` (Twilio's "Media Streams - WebSocket
Messages"). From Twilio: `connected`; `start` (`start.streamSid`, `start.callSid`,
`start.accountSid`, `start.customParameters`, `start.mediaFormat` = audio/x-mulaw, 8000 Hz,
1 channel); `media` (`media.payload` base64 µ-law, 20 ms, `media.track`, `media.chunk`,
`media.timestamp`); `dtmf` (`dtmf.digit`); `mark` (`mark.name`: the audio we sent before
that mark has played, or was dropped by a `clear`); `stop`. To Twilio:
`{"event": "media", "streamSid", "media": {"payload"}}` one per 20 ms frame,
`{"event": "mark", "streamSid", "mark": {"name"}}` after each bot sentence, and
`{"event": "clear", "streamSid"}` on barge-in.

The call record's `info`: `from` / `to` from the custom parameters `from` (or `caller`) and
`to` when given, `callSid`, `streamSid`, `accountSid`, and every custom parameter under
`variables`.
"""

from __future__ import annotations

import json

import numpy as np

from voicebot.audio.g711 import ulaw_decode, ulaw_encode
from voicebot.gateway.streams.base import (
    CLOSE_INVALID,
    CLOSE_UNSUPPORTED,
    StreamError,
    StreamLeg,
    b64decode,
    b64encode,
    field,
    parse_json,
    variables,
)

RATE = 8000
MAX_PAYLOAD = RATE  # one second of µ-law


class TwilioLeg(StreamLeg):
    transport = "twilio"
    marks = True
    stream_sid = ""

    def on_text(self, text: str) -> str | None:
        message = parse_json(text)
        event = message.get("event")
        if event == "connected":
            return None
        if self.info is None:
            if event == "start":
                self._start(message)
                return None
            if event == "stop":
                return "stop"
            raise StreamError(CLOSE_UNSUPPORTED, f"event {str(event)[:40]!r} before start")
        if event == "media":
            payload = field(message, "media", "payload")
            if message["media"].get("track", "inbound") not in ("inbound", "inbound_track"):
                return None  # an outbound track (what the caller hears) is not the caller
            data = b64decode(payload)
            if not 0 < len(data) <= MAX_PAYLOAD:
                raise StreamError(CLOSE_INVALID, f"media payload of {len(data)} bytes")
            self.audio(ulaw_decode(data))
        elif event == "dtmf":
            self.dtmf(field(message, "dtmf", "digit"))
        elif event == "mark":
            self.mark_played(field(message, "mark", "name"))
        elif event == "stop":
            return "stop"
        return None  # events Twilio may add later are ignored

    def _start(self, message: dict) -> None:  # type: ignore[type-arg]
        start = field(message, "start")
        sid = field(message, "start", "streamSid")
        if not isinstance(sid, str) or not sid:
            raise StreamError(CLOSE_INVALID, "start.streamSid must be a string")
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict):
            raise StreamError(CLOSE_INVALID, "start.mediaFormat must be an object")
        encoding = fmt.get("encoding", "audio/x-mulaw")
        rate, channels = fmt.get("sampleRate", RATE), fmt.get("channels", 1)
        if (encoding, rate, channels) != ("audio/x-mulaw", RATE, 1):
            raise StreamError(CLOSE_UNSUPPORTED,
                              f"media format {encoding!r} {rate!r} Hz x{channels!r}")  # fmt: skip
        self.stream_sid = sid
        params = variables(start.get("customParameters"))
        self.started(RATE, {
            "from": params.get("from") or params.get("caller"), "to": params.get("to"),
            "callSid": start.get("callSid"), "streamSid": sid,
            "accountSid": start.get("accountSid"), "variables": params,
        })  # fmt: skip

    def encode_audio(self, pcm: np.ndarray) -> str:
        payload = b64encode(ulaw_encode(pcm).tobytes())
        return json.dumps({"event": "media", "streamSid": self.stream_sid,
                           "media": {"payload": payload}})  # fmt: skip

    def clear_message(self) -> str:
        return json.dumps({"event": "clear", "streamSid": self.stream_sid})

    def mark_message(self, name: str) -> str:
        return json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
