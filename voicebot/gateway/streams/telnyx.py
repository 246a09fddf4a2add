"""Telnyx media streaming over WebSocket, bidirectional (`stream_bidirectional_mode` "rtp").

From Telnyx's AsyncAPI description ("Stream call media over WebSocket"): JSON text messages
with an `event`. From Telnyx: `connected`; `start` (`stream_id`, `start.call_control_id`,
`start.call_session_id`, `start.from`, `start.to`, `start.custom_parameters`,
`start.media_format` {`encoding` PCMU | PCMA | L16, `sample_rate` 8000 | 16000,
`channels` 1}); `media` (`media.payload` base64 RTP payload, `media.track`, `media.chunk`,
`media.timestamp`, and a `sequence_number`); `dtmf` (`dtmf.digit`); `mark` (`mark.name`);
`error`; `stop`. Media frame order is not guaranteed: frames are put back in order by
`media.chunk` (else `sequence_number`) in a small buffer (`Reorder`: a gap is waited for
at most 3 frames, a late frame is dropped). To Telnyx: `{"event": "media", "media":
{"payload"}}` in the stream's own codec and rate (set `stream_bidirectional_codec` to the
same codec), `{"event": "clear"}` on barge-in, and `{"event": "mark", "mark": {"name"}}`
after each bot sentence.

Where Telnyx's description is silent we follow Twilio's shape: the outbound `mark` body,
marks echoed when the audio before them has played, and L16 payloads in network (big-endian)
byte order as RTP carries them. The call record's `info`: `from`, `to`, `call_control_id`,
`call_session_id`, `stream_id`, and the custom parameters under `variables`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from voicebot.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
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

RATES = (8000, 16000)
ENCODINGS = ("PCMU", "PCMA", "L16")


class Reorder:
    """Media frames back in sequence order: an in-order frame passes at once; after a gap
    the frames behind it wait (at most `depth`) for the missing one, then it is given up."""

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth
        self.next: int | None = None
        self._held: dict[int, Any] = {}
        self.late = 0  # frames dropped as late or repeated

    def push(self, seq: int, item: Any) -> list[Any]:
        if self.next is None or abs(seq - self.next) > 1000:  # first, or a restart
            self.next = seq
            self._held.clear()
        if seq < self.next or seq in self._held:
            self.late += 1
            return []
        self._held[seq] = item
        out = self._flush()
        if len(self._held) > self.depth:  # waited long enough: skip the gap
            self.next = min(self._held)
            out += self._flush()
        return out

    def _flush(self) -> list[Any]:
        out = []
        assert self.next is not None
        while self.next in self._held:
            out.append(self._held.pop(self.next))
            self.next += 1
        return out


def _seq(message: dict[str, Any]) -> int:
    raw = message["media"].get("chunk", message.get("sequence_number"))
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise StreamError(CLOSE_INVALID, "media.chunk must be a number") from exc


class TelnyxLeg(StreamLeg):
    transport = "telnyx"
    marks = True
    encoding = "PCMU"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reorder = Reorder()
        self._max_payload = 8000

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
                return None  # the outbound track (what the caller hears) is not the caller
            data = b64decode(payload)
            if not 0 < len(data) <= self._max_payload or (self.encoding == "L16" and len(data) % 2):
                raise StreamError(CLOSE_INVALID, f"media payload of {len(data)} bytes")
            for pcm in self.reorder.push(_seq(message), self._decode(data)):
                self.audio(pcm)
        elif event == "dtmf":
            self.dtmf(field(message, "dtmf", "digit"))
        elif event == "mark":
            self.mark_played(field(message, "mark", "name"))
        elif event == "stop":
            return "stop"
        return None  # `error` and events Telnyx may add later are ignored

    def _start(self, message: dict[str, Any]) -> None:
        start = field(message, "start")
        if not isinstance(start, dict):
            raise StreamError(CLOSE_INVALID, "start must be an object")
        fmt = start.get("media_format") or {}
        if not isinstance(fmt, dict):
            raise StreamError(CLOSE_INVALID, "start.media_format must be an object")
        encoding = str(fmt.get("encoding", "PCMU")).upper()
        rate = fmt.get("sample_rate", 8000)
        rate = int(rate) if isinstance(rate, str) and rate.isdigit() else rate
        if encoding not in ENCODINGS or rate not in RATES or fmt.get("channels", 1) != 1:
            raise StreamError(CLOSE_UNSUPPORTED, f"media format {encoding!r} at {rate!r} Hz")
        self.encoding = encoding
        self._max_payload = rate * (2 if encoding == "L16" else 1)  # one second
        params = variables(start.get("custom_parameters"))
        self.started(rate, {
            "from": start.get("from") or params.get("from") or params.get("caller"),
            "to": start.get("to") or params.get("to"),
            "call_control_id": start.get("call_control_id"),
            "call_session_id": start.get("call_session_id"),
            "stream_id": message.get("stream_id"), "encoding": encoding, "sample_rate": rate,
            "variables": params,
        })  # fmt: skip

    def _decode(self, data: bytes) -> np.ndarray:
        if self.encoding == "PCMU":
            return ulaw_decode(data)
        if self.encoding == "PCMA":
            return alaw_decode(data)
        return np.frombuffer(data, ">i2").astype(np.int16)

    def encode_audio(self, pcm: np.ndarray) -> str:
        if self.encoding == "PCMU":
            data = ulaw_encode(pcm).tobytes()
        elif self.encoding == "PCMA":
            data = alaw_encode(pcm).tobytes()
        else:
            data = pcm.astype(">i2").tobytes()
        return json.dumps({"event": "media", "media": {"payload": b64encode(data)}})

    def clear_message(self) -> str:
        return json.dumps({"event": "clear"})

    def mark_message(self, name: str) -> str:
        return json.dumps({"event": "mark", "mark": {"name": name}})
