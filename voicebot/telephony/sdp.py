"""SDP for plain SIP audio (RFC 4566) and the offer/answer rules we apply (RFC 3264).

A SIP trunk offers `m=audio <port> RTP/AVP <pts>` with static payload types 0 (PCMU) and
8 (PCMA) and usually `telephone-event` (RFC 4733) dynamic. We answer with one codec — the
first of the caller's list we support, as RFC 3264 section 6.1 prefers the offerer's order —
plus telephone-event if offered, and mirror the direction (hold: sendonly -> recvonly).

Our own parser rather than aiortc's `SessionDescription.parse` (which the WebRTC leg uses):
that one checks its input with `assert` (gone under `python -O`, and an AssertionError is
no reason to give a peer), expects WebRTC attributes (ICE, DTLS fingerprints) a SIP trunk
never sends, and cannot tell "malformed" (400) from "nothing we can accept" (488).
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field

PCMU, PCMA = 0, 8
STATIC_CODECS = {PCMU: "PCMU", PCMA: "PCMA"}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
    "inactive": "inactive",
}  # fmt: skip


class SdpError(ValueError):
    """An offer we cannot parse: the request is malformed (SIP 400)."""


class SdpNotAcceptableError(SdpError):
    """A well-formed offer with nothing we can accept (SIP 488, RFC 3261 section 13.3.1.3)."""


@dataclass
class AudioOffer:
    address: str
    port: int
    payload_types: list[int]
    rtpmap: dict[int, str] = field(default_factory=dict)  # pt -> "name/rate"
    direction: str = "sendrecv"

    def codec_name(self, pt: int) -> str | None:
        if pt in self.rtpmap:
            return self.rtpmap[pt].split("/")[0].upper()
        return STATIC_CODECS.get(pt)

    @property
    def telephone_event_pt(self) -> int | None:
        for pt in self.payload_types:
            mapping = self.rtpmap.get(pt, "")
            if mapping.lower().startswith("telephone-event/8000"):
                return pt
        return None

    @property
    def on_hold(self) -> bool:
        """RFC 3264 section 8.4: sendonly/inactive, or the old c=0.0.0.0 convention."""
        return self.direction in ("sendonly", "inactive") or self.address == "0.0.0.0"


def parse_offer(sdp: str) -> AudioOffer:
    lines = [line.strip() for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must begin with v=0")
    session_address: str | None = None
    session_direction = "sendrecv"
    audio: AudioOffer | None = None
    in_audio = False
    seen_media = False
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            seen_media = True
            parts = value.split()
            in_audio = len(parts) >= 4 and parts[0] == "audio" and audio is None
            if in_audio:
                if parts[2] not in ("RTP/AVP", "RTP/AVPF"):
                    raise SdpNotAcceptableError(f"unsupported transport {parts[2]} (need RTP/AVP)")
                try:
                    port = int(parts[1].split("/")[0])
                    pts = [int(p) for p in parts[3:]]
                except ValueError as exc:
                    raise SdpError(f"bad m= line {value!r}") from exc
                if not 0 <= port <= 65535:
                    raise SdpError(f"bad port {port}")
                audio = AudioOffer(address="", port=port, payload_types=pts)
        elif kind == "c":
            address = _connection_address(value)
            if not seen_media:
                session_address = address
            elif in_audio and audio is not None:
                audio.address = address
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if not seen_media:
                    session_direction = name
                elif in_audio and audio is not None:
                    audio.direction = name
            elif in_audio and audio is not None and name == "rtpmap":
                m = re.match(r"(\d+)\s+(\S+)", arg)
                if m:
                    audio.rtpmap[int(m.group(1))] = m.group(2)
    if audio is None:
        raise SdpError("no audio m-line in the offer")
    if not audio.address:
        if session_address is None:
            raise SdpError("no c= connection address")
        audio.address = session_address
    if audio.direction == "sendrecv" and session_direction != "sendrecv":
        audio.direction = session_direction
    return audio


def _connection_address(value: str) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line {value!r}")
    address = parts[2].split("/")[0]
    try:
        ipaddress.ip_address(address)
    except ValueError as exc:
        raise SdpError(f"c= address {address!r} is not an IP address") from exc
    return address


def choose_codec(offer: AudioOffer, supported: tuple[int, ...] = (PCMU, PCMA)) -> int:
    for pt in offer.payload_types:
        name = offer.codec_name(pt)
        if name == "PCMU" and PCMU in supported:
            return pt
        if name == "PCMA" and PCMA in supported:
            return pt
    raise SdpNotAcceptableError("no common codec (this gateway speaks PCMU and PCMA)")


def build_answer(
    offer: AudioOffer, codec_pt: int, address: str, port: int, session_id: int | None = None
) -> str:
    """The answer SDP (RFC 3264 section 6): same m-line order, our port, chosen codec."""
    sid = session_id if session_id is not None else int(time.time())
    ip_version = "IP6" if ":" in address else "IP4"
    name = offer.codec_name(codec_pt) or STATIC_CODECS[codec_pt]
    pts = [codec_pt]
    lines_extra = [f"a=rtpmap:{codec_pt} {name}/8000"]
    te = offer.telephone_event_pt
    if te is not None:
        pts.append(te)
        lines_extra += [f"a=rtpmap:{te} telephone-event/8000", f"a=fmtp:{te} 0-16"]
    lines = [
        "v=0",
        f"o=voicebot {sid} {sid} IN {ip_version} {address}",
        "s=voicebot",
        f"c=IN {ip_version} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(str(p) for p in pts)}",
        *lines_extra,
        "a=ptime:20",
        f"a={_ANSWER_DIRECTION[offer.direction]}",
    ]
    return "\r\n".join(lines) + "\r\n"
