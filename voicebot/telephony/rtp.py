"""RTP media of a SIP call (RFC 3550): G.711 over UDP, 20 ms packets both ways.

`RtpSession` is one call's socket, jitter buffer, resampler states and RTP header state;
the 20 ms clock that moves audio through it is shared by every SIP call of the process
(`telephony.media_clock`): each tick takes one packet's worth of caller audio from each
jitter buffer and sends one packet of bot audio (or silence) per call, so input, output
and RTP timestamps never drift apart, however long the call. Packets are parsed and built
with aiortc's `RtpPacket`; the jitter buffer is our own: it reorders, drops duplicates and
late packets, and hides losses by fading the last frame. Symmetric RTP: we send to where
the caller's packets actually come from once they arrive (NAT), not only to the SDP address:
latched to the first source, packets from any other are dropped until a re-INVITE.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import numpy as np
from aiortc.rtp import RtpPacket

from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.audio.resample import from_canonical, to_canonical
from voicebot.telephony.dtmf import DtmfDetector
from voicebot.telephony.sdp import PCMA, PCMU

log = logging.getLogger("voicebot.telephony.rtp")

SAMPLES_PER_PACKET = 160  # 20 ms at 8 kHz
PACKET_SECONDS = 0.02


def _seq_newer(a: int, b: int) -> bool:
    """RFC 3550 appendix A.1 style 16-bit serial comparison: a is after b."""
    return 0 < ((a - b) & 0xFFFF) < 0x8000


class JitterBuffer:
    """Orders packets by sequence number; one payload out per tick.

    Not aiortc's `JitterBuffer`: that one is pulled by a decoder task per track, holds at
    least one packet more than it needs (a frame of added delay on every call) and conceals
    nothing (a lost packet is a gap the caller's VAD then sees as a click or silence). This
    one is popped by the shared media clock, once per tick, and a miss is concealed there.
    """

    def __init__(self, depth: int = 3, capacity: int = 50) -> None:
        self.depth = depth  # packets held before playout starts (60 ms)
        self.capacity = capacity
        self._packets: dict[int, bytes] = {}
        self._next: int | None = None
        self._started = False
        self.received = 0
        self.duplicates = 0
        self.late = 0
        self.lost = 0

    def put(self, seq: int, payload: bytes) -> None:
        self.received += 1
        if self._next is not None and not _seq_newer(seq, self._next - 1):
            self.late += 1  # already played or concealed
            return
        if seq in self._packets:
            self.duplicates += 1
            return
        self._packets[seq] = payload
        if self._next is None:
            self._next = seq
        elif _seq_newer(self._next, seq):
            self._next = seq  # an earlier packet arrived before playout started
        if len(self._packets) > self.capacity:  # a burst after a long stall: skip ahead
            oldest = min(self._packets, key=lambda s: (s - self._next) & 0xFFFF)
            self._packets.pop(oldest, None)

    def pop(self) -> bytes | None:
        """The next payload, or None (lost / not yet arrived): the caller conceals."""
        if self._next is None:
            return None
        if not self._started:
            if len(self._packets) < self.depth:
                return None
            self._started = True
        payload = self._packets.pop(self._next, None)
        if payload is None:
            if not self._packets:
                # Nothing buffered at all: the caller paused sending (or a long loss);
                # restart buffering instead of counting every tick as a loss.
                self._started = False
                return None
            self.lost += 1
        self._next = (self._next + 1) & 0xFFFF
        return payload


class RtpSession(asyncio.DatagramProtocol):
    """One call's RTP socket, clock, codec and jitter buffer."""

    def __init__(
        self,
        payload_type: int,
        telephone_event_pt: int | None,
        remote: tuple[str, int],
        on_dtmf: Callable[[str], None],
    ) -> None:
        if payload_type not in (PCMU, PCMA) and payload_type < 96:
            raise ValueError(f"unsupported payload type {payload_type}")
        self.payload_type = payload_type
        self.codec = "PCMU" if payload_type == PCMU else "PCMA"
        self.te_pt = telephone_event_pt
        self.remote = remote
        self.send_enabled = remote[1] != 0
        self._on_dtmf = on_dtmf
        self._dtmf = DtmfDetector()
        self._transport: asyncio.DatagramTransport | None = None
        self._latched = False
        self.jitter = JitterBuffer()
        self.out_frame: np.ndarray | None = None
        self.upsampler = to_canonical(8000)
        self.downsampler = from_canonical(8000)
        self.last_in = np.zeros(SAMPLES_PER_PACKET, np.int16)
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._closed = False
        self.sent = 0
        self.late_ticks = 0
        self.port = 0

    # -- socket --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return  # not RTP version 2 (RFC 3550 section 5.1)
        if self._latched and addr != self.remote:
            return  # someone else's packets: neither heard nor followed
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return
        if packet.payload_type == self.te_pt:
            digit = self._dtmf.packet(packet.timestamp, packet.payload)
            if digit is not None:
                self._on_dtmf(digit)
        elif packet.payload_type == self.payload_type:
            self.jitter.put(packet.sequence_number, packet.payload)
        else:
            return
        if not self._latched:
            # Symmetric RTP: answer where the media really comes from (NAT, SBCs), once.
            # Re-latching to every new source would let anyone who sends one packet take
            # a share of the bot's audio; a new address comes with a re-INVITE (`relatch`).
            self.remote = addr
            self._latched = True

    def set_codec(self, payload_type: int, telephone_event_pt: int | None) -> None:
        """The codec the answer chose (a delayed offer's answer comes after set-up)."""
        if payload_type not in (PCMU, PCMA):
            raise ValueError(f"unsupported payload type {payload_type}")
        self.payload_type = payload_type
        self.codec = "PCMU" if payload_type == PCMU else "PCMA"
        self.te_pt = telephone_event_pt

    def relatch(self, remote: tuple[str, int]) -> None:
        """The caller moved its media (re-INVITE): send there, latch to the next source."""
        self.remote = remote
        self._latched = False

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc)

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    # -- AudioSink ------------------------------------------------------------------------
    def write(self, frame: np.ndarray) -> None:
        """The bot's 16 kHz frame for this tick; the media clock encodes and sends it."""
        if frame.dtype != np.int16 or frame.shape != (FRAME_SAMPLES,):
            # Refused here, in the call's own step, not later in the batch of all calls.
            raise ValueError(
                f"bot frame must be {FRAME_SAMPLES} int16, got {frame.dtype} {frame.shape}"
            )
        self.out_frame = frame

    def clear(self) -> int:
        dropped = 0 if self.out_frame is None else 1
        self.out_frame = None
        return dropped

    # -- the media clock's side ------------------------------------------------------------
    def take_output(self) -> np.ndarray | None:
        frame, self.out_frame = self.out_frame, None
        return frame

    def conceal(self) -> np.ndarray:
        """No packet for this tick: fade the last frame (no clicks, no stale speech)."""
        self.last_in = self.last_in // 2
        return self.last_in

    def send(self, payload: bytes) -> None:
        """One packet of this tick's output (the sequence and timestamp advance even when
        sending is off, e.g. on hold, so they stay tied to the clock)."""
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + SAMPLES_PER_PACKET) & 0xFFFFFFFF
        if not self.send_enabled or self._transport is None or self._closed:
            return
        packet = RtpPacket(
            payload_type=self.payload_type,
            sequence_number=self._seq,
            timestamp=self._ts,
            ssrc=self._ssrc,
            payload=payload,
            marker=1 if self.sent == 0 else 0,
        )
        self._transport.sendto(packet.serialize(), self.remote)
        self.sent += 1


class PortAllocator:
    """Even RTP ports from a range (RFC 3550 section 11: RTP even, RTCP the next odd)."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low + (low % 2), high
        self._next = self.low
        self.in_use: set[int] = set()

    async def open(self, host: str, factory: Callable[[], RtpSession]) -> RtpSession:
        loop = asyncio.get_running_loop()
        span = (self.high - self.low) // 2 + 1
        for _ in range(span):
            port = self._next
            self._next = self._next + 2 if self._next + 2 <= self.high else self.low
            if port in self.in_use:
                continue
            try:
                _, protocol = await loop.create_datagram_endpoint(factory, local_addr=(host, port))
            except OSError:
                continue
            self.in_use.add(port)
            return protocol
        raise OSError(f"no free RTP port in {self.low}-{self.high}")

    def release(self, port: int) -> None:
        self.in_use.discard(port)
