"""SDP for plain SIP audio (RFC 4566) and the offer/answer rules we apply (RFC 3264).

A SIP trunk offers `m=audio <port> RTP/AVP <pts>` with static payload types 0 (PCMU) and
8 (PCMA) and usually `telephone-event` (RFC 4733) dynamic. We answer with one codec — the
first of the caller's list we support, as RFC 3264 section 6.1 prefers the offerer's order —
plus telephone-event if offered, and mirror the direction (hold: sendonly -> recvonly).
Packetisation (RFC 4566 `a=ptime` / `a=maxptime`, RFC 3264 section 6.1): the offer's ptime
is what the offerer wants to receive; we send that (within maxptime, 10-200 ms; 20 when
absent or unreadable) and state the same in the answer, since we decode any size.

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
DEFAULT_PTIME, MIN_PTIME, MAX_PTIME = 20, 10, 200  # ms
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
class MediaLine:
    """One offered m-line as it must be mirrored in the answer (RFC 3264 section 6)."""

    kind: str
    port: int
    proto: str
    formats: list[str]


@dataclass
class AudioOffer:
    """The offered audio stream we answer, and every m-line of the offer (in order)."""

    address: str
    port: int
    payload_types: list[int]
    rtpmap: dict[int, str] = field(default_factory=dict)  # pt -> "name/rate"
    direction: str = "sendrecv"
    media: list[MediaLine] = field(default_factory=list)
    index: int = 0  # which of `media` this stream is
    ptime: int | None = None  # a=ptime (ms), media level, else session level
    maxptime: int | None = None

    @property
    def send_ptime(self) -> int:
        """The packet time we send (RFC 3264 6.1: the offerer's wish, at most its maxptime),
        kept within what makes sense for G.711 on a 20 ms clock's output buffer."""
        ptime = self.ptime or DEFAULT_PTIME
        if self.maxptime:
            ptime = min(ptime, self.maxptime)
        return max(MIN_PTIME, min(ptime, MAX_PTIME))

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


def _number(text: str, what: str, limit: int) -> int:
    if not re.fullmatch(r"[0-9]{1,10}", text) or int(text) > limit:  # ASCII digits only
        raise SdpError(f"bad {what} {text[:20]!r}")
    return int(text)


def parse_offer(sdp: str) -> AudioOffer:
    """The offer's first usable audio stream (RTP/AVP, a non-zero port), with all its
    m-lines kept for the answer. 400-class `SdpError` for malformed SDP; 488-class
    `SdpNotAcceptableError` when no audio stream can be answered (video only, every audio
    stream disabled or on another transport)."""
    lines = [line.strip() for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must begin with v=0")
    session_address: str | None = None
    session_direction = "sendrecv"
    session_times: dict[str, int] = {}
    media: list[MediaLine] = []
    audio: AudioOffer | None = None
    in_audio = False
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 4:
                raise SdpError(f"bad m= line {value[:60]!r}")
            port = _number(parts[1].split("/")[0], "port", 65535)
            media.append(MediaLine(parts[0], port, parts[2], parts[3:]))
            in_audio = (
                audio is None and parts[0] == "audio" and port != 0
                and parts[2] in ("RTP/AVP", "RTP/AVPF")
            )  # fmt: skip
            if in_audio:
                pts = [_number(p, "payload type", 127) for p in parts[3:]]
                audio = AudioOffer("", port, pts, index=len(media) - 1)
        elif kind == "c":
            address = _connection_address(value)
            if not media:
                session_address = address
            elif in_audio and audio is not None:
                audio.address = address
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if not media:
                    session_direction = name
                elif in_audio and audio is not None:
                    audio.direction = name
            elif in_audio and audio is not None and name == "rtpmap":
                m = re.match(r"([0-9]{1,3})\s+(\S+)", arg)
                if m:
                    audio.rtpmap[int(m.group(1))] = m.group(2)
            elif name in ("ptime", "maxptime") and (ms := _milliseconds(arg)) is not None:
                if not media:
                    session_times[name] = ms
                elif in_audio and audio is not None:
                    setattr(audio, name, ms)
    if audio is None:
        kinds = ", ".join(f"{m.kind} {m.proto} port {m.port}" for m in media) or "none"
        if not media:
            raise SdpError("no m-line in the offer")
        raise SdpNotAcceptableError(f"no audio stream we can answer (offered: {kinds[:80]})")
    audio.media = media
    if not audio.address:
        if session_address is None:
            raise SdpError("no c= connection address")
        audio.address = session_address
    if audio.direction == "sendrecv" and session_direction != "sendrecv":
        audio.direction = session_direction
    audio.ptime = audio.ptime or session_times.get("ptime")
    audio.maxptime = audio.maxptime or session_times.get("maxptime")
    return audio


def _milliseconds(text: str) -> int | None:
    """A ptime value (RFC 4566: a number of ms; "20.0" seen in the wild); None for anything
    else ("²", "abc", 0): the attribute is only a recommendation, so it is ignored."""
    match = re.fullmatch(r"\s*([0-9]{1,4})(?:\.[0-9]{1,3})?\s*", text)
    if match is None or int(match.group(1)) == 0:
        return None
    return int(match.group(1))


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
    name = offer.codec_name(codec_pt) or STATIC_CODECS[codec_pt]
    pts = [codec_pt]
    lines_extra = [f"a=rtpmap:{codec_pt} {name}/8000"]
    te = offer.telephone_event_pt
    if te is not None:
        pts.append(te)
        lines_extra += [f"a=rtpmap:{te} telephone-event/8000", f"a=fmtp:{te} 0-16"]
    lines = _session_lines(address, session_id)
    # RFC 3264 section 6: one m-line per offered m-line, in order; the streams we do not
    # take are rejected with port 0 (their formats echoed: at least one must be present).
    for i, line in enumerate(offer.media or [MediaLine("audio", port, "RTP/AVP", [])]):
        if i != offer.index:
            lines.append(f"m={line.kind} 0 {line.proto} {' '.join(line.formats)}")
            continue
        lines += [
            f"m=audio {port} RTP/AVP {' '.join(str(p) for p in pts)}",
            *lines_extra,
            f"a=ptime:{offer.send_ptime}",
            f"a={_ANSWER_DIRECTION[offer.direction]}",
        ]
    return "\r\n".join(lines) + "\r\n"


OFFER_TELEPHONE_EVENT_PT = 101


def build_offer(address: str, port: int, session_id: int | None = None) -> str:
    """Our offer, for an INVITE that came without one (RFC 3261 section 13.2.1, "delayed
    offer"): both G.711 laws and telephone-event; the caller answers in its ACK."""
    te = OFFER_TELEPHONE_EVENT_PT
    return "\r\n".join([
        *_session_lines(address, session_id),
        f"m=audio {port} RTP/AVP {PCMU} {PCMA} {te}",
        f"a=rtpmap:{PCMU} PCMU/8000", f"a=rtpmap:{PCMA} PCMA/8000",
        f"a=rtpmap:{te} telephone-event/8000", f"a=fmtp:{te} 0-16",
        "a=ptime:20", "a=sendrecv",
    ]) + "\r\n"  # fmt: skip


def _session_lines(address: str, session_id: int | None) -> list[str]:
    sid = session_id if session_id is not None else int(time.time())
    ip_version = "IP6" if ":" in address else "IP4"
    return [
        "v=0",
        f"o=voicebot {sid} {sid} IN {ip_version} {address}",
        "s=voicebot",
        f"c=IN {ip_version} {address}",
        "t=0 0",
    ]
