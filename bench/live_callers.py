"""The caller's side of a live call, over each real transport, for bench/live_bench.py.

A `CallerLink` sends 20 ms frames of 16 kHz caller audio when the bench's real-time ticker
says so and notes, for every piece of bot audio that arrives, its arrival time and level:
what a caller's ear would get. One link per wire format, written from the contract
(DESIGN.md section 4), not from the server's code:

- `WsLink`: the binary WebSocket (`/ws`), events in its text messages.
- `SipLink`: a minimal UAC on UDP (INVITE with a PCMU offer, ACK, BYE; RFC 3261 section
  17.1.1 for the ACK to a 2xx) and RTP (RFC 3550) from its own socket, G.711 u-law both ways.
- `RtcLink`: an aiortc peer (offer over `POST /webrtc/offer`, the `events` data channel).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import random
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from voicebot.audio.g711 import ulaw_decode, ulaw_encode
from voicebot.audio.resample import StreamingResampler

FRAME_16K = 320


class CallEndedByBotError(Exception):
    """The bot ended the call (WebSocket closed, a BYE from the bot)."""


def level(pcm: np.ndarray) -> float:
    """RMS of int16 samples (in int16 units)."""
    if not len(pcm):
        return 0.0
    x = pcm.astype(np.float64)
    return float(np.sqrt(np.mean(x * x)))


@dataclass
class Heard:
    """Bot audio as it arrived at the caller: (monotonic arrival, samples at 16 kHz, RMS)."""

    pieces: list[tuple[float, int, float]] = field(default_factory=list)

    def add(self, arrival: float, pcm16k: np.ndarray) -> None:
        self.pieces.append((arrival, len(pcm16k), level(pcm16k)))


class CallerLink(Protocol):
    heard: Heard
    events: list[dict[str, Any]]  # events the transport carries to the caller (may be none)
    sip_call_id: str | None

    async def open(self) -> None: ...
    async def send(self, frame16k: np.ndarray) -> None: ...
    async def close(self) -> None: ...


# -- WebSocket -------------------------------------------------------------------------------
class WsLink:
    def __init__(self, base_url: str) -> None:
        self._url = base_url.replace("http://", "ws://") + "/ws"
        self.heard = Heard()
        self.events: list[dict[str, Any]] = []
        self.sip_call_id = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        import websockets

        self._ws = await websockets.connect(self._url, max_size=None)
        await self._ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        import websockets

        try:
            async for message in self._ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    self.heard.add(now, np.frombuffer(message, "<i2"))
                else:
                    event = json.loads(message)
                    event["_arrival"] = now
                    self.events.append(event)
        except websockets.ConnectionClosed:
            pass

    async def send(self, frame16k: np.ndarray) -> None:
        import websockets

        try:
            await self._ws.send(frame16k.astype("<i2").tobytes())
        except websockets.ConnectionClosed as exc:
            raise CallEndedByBotError from exc

    async def close(self) -> None:
        import contextlib

        import websockets

        with contextlib.suppress(websockets.ConnectionClosed):
            await self._ws.send(json.dumps({"type": "stop"}))
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._reader), 5)  # type: ignore[arg-type]
        await self._ws.close()


# -- SIP + RTP --------------------------------------------------------------------------------
class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self._on = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on(data, addr)


def _header(message: str, name: str) -> str:
    for line in message.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return ""


class SipLink:
    """One call from a UAC on loopback: PCMU only, answered with a 200 we ACK."""

    def __init__(self, host: str, sip_port: int) -> None:
        self._server = (host, sip_port)
        self.heard = Heard()
        self.events: list[dict[str, Any]] = []
        self.sip_call_id = f"live-{uuid.uuid4().hex[:16]}@bench"
        self._tag = uuid.uuid4().hex[:10]
        self._to_tag = ""
        self._sip: asyncio.DatagramTransport | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self._responses: asyncio.Queue[str] = asyncio.Queue()
        self._remote_rtp: tuple[str, int] | None = None
        self._seq = random.randrange(1 << 16)
        self._ts = random.randrange(1 << 32)
        self._ssrc = random.randrange(1 << 32)
        self._down = StreamingResampler(16000, 8000)
        self._up = StreamingResampler(8000, 16000)
        self._cseq = 1
        self._invite = ""
        self._hung_up = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._sip, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_sip), local_addr=("127.0.0.1", 0)
        )
        self._rtp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_rtp), local_addr=("127.0.0.1", 0)
        )
        sip_port = self._sip.get_extra_info("sockname")[1]
        rtp_port = self._rtp.get_extra_info("sockname")[1]
        sdp = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
            "a=sendrecv\r\n"
        )
        self._local = f"127.0.0.1:{sip_port}"
        self._invite = self._request("INVITE", body=sdp, content_type="application/sdp")
        self._send_sip(self._invite)
        deadline = time.monotonic() + 10
        while True:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("no final response to INVITE")
            try:
                response = await asyncio.wait_for(self._responses.get(), min(timeout, 0.5))
            except TimeoutError:
                self._send_sip(self._invite)  # Timer A, kept simple: resend every 0.5 s
                continue
            code = int(response.split(" ", 2)[1])
            if code < 200:
                continue
            if code >= 300:
                raise RuntimeError(f"INVITE answered {code}")
            break
        to = _header(response, "To")
        self._to_tag = to.split("tag=", 1)[1].split(";")[0] if "tag=" in to else ""
        body = response.split("\r\n\r\n", 1)[1]
        host = next(ln[9:].strip() for ln in body.split("\r\n") if ln.startswith("c=IN IP4"))
        port = next(int(ln.split()[1]) for ln in body.split("\r\n") if ln.startswith("m=audio"))
        self._remote_rtp = (host, port)
        self._send_sip(self._request("ACK", cseq=1))

    def _request(
        self, method: str, *, cseq: int | None = None, body: str = "", content_type: str = ""
    ) -> str:
        if cseq is None:
            cseq = self._cseq
        branch = f"z9hG4bK{uuid.uuid4().hex[:12]}"
        to = f"<sip:bot@{self._server[0]}>" + (f";tag={self._to_tag}" if self._to_tag else "")
        lines = [
            f"{method} sip:bot@{self._server[0]}:{self._server[1]} SIP/2.0",
            f"Via: SIP/2.0/UDP {self._local};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:caller@127.0.0.1>;tag={self._tag}",
            f"To: {to}",
            f"Call-ID: {self.sip_call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:caller@{self._local}>",
        ]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def _send_sip(self, message: str) -> None:
        assert self._sip is not None
        self._sip.sendto(message.encode(), self._server)

    def _on_sip(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        if text.startswith("SIP/2.0"):
            if (
                self._to_tag
                and " 200 " in text.split("\r\n", 1)[0]
                and "INVITE" in _header(text, "CSeq")
            ):
                self._send_sip(self._request("ACK", cseq=1))  # a retransmitted 2xx: ACK again
            self._responses.put_nowait(text)
        elif text.startswith("BYE "):
            # The bot hung up: 200 OK to its BYE (RFC 3261 section 15.1.2).
            self._hung_up = True
            head = text.split("\r\n\r\n", 1)[0].split("\r\n")
            keep = [
                ln
                for ln in head[1:]
                if ln.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")
            ]
            self._sip.sendto(  # type: ignore[union-attr]
                (
                    "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                addr,
            )

    def _on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        payload_type = data[1] & 0x7F
        if payload_type != 0:
            return
        csrc = data[0] & 0x0F
        pcm8 = ulaw_decode(data[12 + 4 * csrc :])
        self.heard.add(time.monotonic(), self._up.process(pcm8))

    async def send(self, frame16k: np.ndarray) -> None:
        if self._hung_up:
            raise CallEndedByBotError
        if self._rtp is None or self._remote_rtp is None:
            return
        codes = ulaw_encode(self._down.process(frame16k))
        header = struct.pack(
            "!BBHII", 0x80, 0, self._seq & 0xFFFF, self._ts & 0xFFFFFFFF, self._ssrc
        )
        self._rtp.sendto(header + codes.tobytes(), self._remote_rtp)
        self._seq += 1
        self._ts += len(codes)

    async def close(self) -> None:
        self._cseq += 1
        bye = self._request("BYE")
        for _ in range(0 if self._hung_up else 4):
            self._send_sip(bye)
            try:
                response = await asyncio.wait_for(self._responses.get(), 0.5)
            except TimeoutError:
                continue
            if "BYE" in _header(response, "CSeq"):
                break
        if self._rtp is not None:
            self._rtp.close()
        if self._sip is not None:
            self._sip.close()


# -- WebRTC (aiortc) --------------------------------------------------------------------------
class RtcLink:
    """An aiortc peer whose microphone is fed by `send` (48 kHz frames of 20 ms)."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self.heard = Heard()
        self.events: list[dict[str, Any]] = []
        self.sip_call_id = None
        self._mic: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._up = StreamingResampler(16000, 48000)
        self._down = StreamingResampler(48000, 16000)
        self._pc: Any = None
        self._readers: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        from aiortc import RTCPeerConnection
        from aiortc.mediastreams import MediaStreamError

        from tests.webrtc_client import negotiate
        from voicebot.gateway.webrtc.media import frame_to_mono
        from voicebot.gateway.webrtc.receive_buffer import release_on_arrival
        from voicebot.gateway.webrtc.signalling import use_loopback_only

        use_loopback_only()
        self._pc = pc = RTCPeerConnection()
        channel = pc.createDataChannel("events")

        @channel.on("message")
        def on_message(message: str) -> None:
            event = json.loads(message)
            event["_arrival"] = time.monotonic()
            self.events.append(event)

        @pc.on("track")
        def on_track(track: Any) -> None:
            async def read() -> None:
                try:
                    while True:
                        frame = await track.recv()
                        mono, _ = frame_to_mono(frame)
                        self.heard.add(time.monotonic(), self._down.process(mono))
                except MediaStreamError:
                    pass

            self._readers.append(asyncio.create_task(read()))

        pc.addTrack(_QueueTrack(self._mic))
        # The bot's packets are heard as they arrive, as the SIP and WebSocket callers hear
        # theirs: aiortc's own buffer would add 80 ms of this client's playout to each turn.
        for transceiver in pc.getTransceivers():
            release_on_arrival(transceiver.receiver)
        await negotiate(pc, self._base_url)

    async def send(self, frame16k: np.ndarray) -> None:
        self._mic.put_nowait(self._up.process(frame16k))

    async def close(self) -> None:
        await self._pc.close()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def _queue_track_class() -> type:
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class QueueTrack(MediaStreamTrack):
        """A microphone track: each `recv` is the next 20 ms the bench's ticker queued
        (aiortc paces the sending by awaiting it)."""

        kind = "audio"

        def __init__(self, queue: asyncio.Queue[np.ndarray]) -> None:
            super().__init__()
            self._queue = queue
            self._pts = 0

        async def recv(self) -> Any:
            import av

            if self.readyState != "live":
                raise MediaStreamError
            chunk = await self._queue.get()
            frame = av.AudioFrame.from_ndarray(
                chunk.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = 48000
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, 48000)
            self._pts += len(chunk)
            return frame

    return QueueTrack


def _QueueTrack(queue: asyncio.Queue[np.ndarray]) -> Any:  # noqa: N802 - reads as a class
    return _queue_track_class()(queue)
