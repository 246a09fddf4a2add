"""RTP media of a SIP call (RFC 3550): G.711 over UDP, packets of the negotiated ptime.

`RtpSession` is one call's socket, jitter buffer, resampler states and RTP header state;
the 20 ms clock that moves audio through it is shared by every SIP call of the process
(`telephony.media_clock`): each tick takes one packet's worth of caller audio from each
jitter buffer and sends one packet of bot audio (or silence) per call, so input, output
and RTP timestamps never drift apart, however long the call. Packets are parsed and built
by `rtp_header` (struct, no object per packet); the jitter buffer is our own: it reorders,
drops duplicates and late packets, and hides losses by fading the last frame.

Packet sizes (RFC 4566 `a=ptime`, RFC 3264 section 6.1): the caller may send any size (10,
20, 30, 40 ms ...); `read_tick` cuts whatever arrives into the clock's 20 ms ticks. What we
send follows the ptime the peer asked for (`set_ptime`): each tick's 20 ms go into an
output buffer and leave as packets of that size, so 40 ms packets go every second tick
and 10 ms ones two a tick, with timestamps counting the samples.

Symmetric RTP (RFC 4961): we send to where the caller's packets actually come from (NAT),
not only to the SDP address: latched to the first source and its SSRC. Packets from any
other address are dropped (one log line per address a minute), except a sustained move of
the latched SSRC to a new address (`RELATCH_PACKETS` in a row over `RELATCH_S`, none from
the old address meanwhile): a NAT rebinding, which re-latches. A re-INVITE's new address
re-latches at once (`relatch`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import numpy as np

from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.audio.resample import from_canonical, to_canonical
from voicebot.telephony import rtp_header
from voicebot.telephony.dtmf import DtmfDetector
from voicebot.telephony.sdp import PCMA, PCMU

log = logging.getLogger("voicebot.telephony.rtp")

SAMPLES_PER_PACKET = 160  # 20 ms at 8 kHz: one tick of the media clock
PACKET_SECONDS = 0.02
SAMPLES_PER_MS = 8  # G.711: one octet per sample at 8 kHz
# A new source address takes over the latched stream only after this many consecutive
# packets of its SSRC spanning this long: a rebinding NAT moves for good, while a third
# party replaying a packet now and then is interrupted by the real stream each time.
RELATCH_PACKETS = 5
RELATCH_S = 0.1
_DROP_LOG_S = 60.0  # at most one line per foreign source address per minute


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

    def __init__(self, depth_samples: int = 480, capacity: int = 50) -> None:
        # Held before playout starts: 60 ms whatever the packet size (3 packets of 20 ms,
        # 6 of 10 ms, 2 of 40 ms).
        self.depth_samples = depth_samples
        self.capacity = capacity
        self._packets: dict[int, bytes] = {}
        self._next: int | None = None
        self._started = False
        self.missed = False  # the last pop was a loss inside a running stream
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
        """The next payload, or None: lost (`missed`, the caller conceals its length) or
        not yet arrived."""
        self.missed = False
        if self._next is None:
            return None
        if not self._started:
            if sum(len(p) for p in self._packets.values()) < self.depth_samples:
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
            self.missed = True
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
        self._remote_ssrc: int | None = None  # the latched stream's
        self._moving: tuple[tuple[str, int], int, float] | None = None  # (addr, packets, since)
        self._dropped_log: dict[tuple[str, int], float] = {}
        self.foreign_dropped = 0  # packets from sources other than the latched one
        self.jitter = JitterBuffer()
        self._pending = bytearray()  # caller payload not yet played (packets over 20 ms)
        self._gap = 0  # samples of lost packets still to conceal
        self._last_size = SAMPLES_PER_PACKET
        self.packet_samples = SAMPLES_PER_PACKET  # what we send per packet (the ptime)
        self._out = bytearray()  # bot payload not yet sent (packets over 20 ms)
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
        packet = rtp_header.parse(data)
        if packet is None:
            return  # not RTP version 2, or shorter than its header says (RFC 3550 5.1)
        payload_type, seq, timestamp, ssrc, payload = packet
        if self._latched and addr != self.remote:
            if not self._follows(ssrc, addr):
                if ssrc != self._remote_ssrc:  # the latched stream moving is no news
                    self._drop_foreign(addr)
                return
        elif self._latched:
            self._moving = None  # the latched source is alive: no rebinding under way
            if payload_type == self.payload_type:
                # The audio's SSRC is the stream's (an SBC may restart it, e.g. after a
                # transfer); telephone-events may come with an SSRC of their own.
                self._remote_ssrc = ssrc
        if payload_type == self.te_pt:
            digit = self._dtmf.packet(timestamp, payload)
            if digit is not None:
                self._on_dtmf(digit)
        elif payload_type == self.payload_type:
            self.jitter.put(seq, payload)
        else:
            return
        if not self._latched:
            # Symmetric RTP: answer where the media really comes from (NAT, SBCs), once.
            # Re-latching to every new source would let anyone who sends one packet take
            # a share of the bot's audio; a new address comes with a re-INVITE (`relatch`)
            # or as a sustained move of the same stream (`_follows`).
            self.remote = addr
            self._remote_ssrc = ssrc
            self._latched = True

    def _follows(self, ssrc: int, addr: tuple[str, int]) -> bool:
        """A packet from a new address: True once the latched stream (its SSRC) has come
        from there alone for `RELATCH_PACKETS` packets over `RELATCH_S` (a NAT rebinding:
        re-latch there); every other packet from a stranger is dropped."""
        if ssrc != self._remote_ssrc:
            return False
        now = time.monotonic()
        moving = self._moving
        if moving is None or moving[0] != addr:
            self._moving = (addr, 1, now)
            return False
        count, since = moving[1] + 1, moving[2]
        if count < RELATCH_PACKETS or now - since < RELATCH_S:
            self._moving = (addr, count, since)
            return False
        log.info("RTP stream %08x moved from %s:%d to %s:%d: following it", ssrc,
                 self.remote[0], self.remote[1], addr[0], addr[1])  # fmt: skip
        self.remote = addr
        self._moving = None
        return True

    def _drop_foreign(self, addr: tuple[str, int]) -> None:
        self.foreign_dropped += 1
        now = time.monotonic()
        if now - self._dropped_log.get(addr, -_DROP_LOG_S) < _DROP_LOG_S:
            return
        if len(self._dropped_log) >= 64:  # bounded under a spoofed flood
            self._dropped_log.clear()
        self._dropped_log[addr] = now
        log.info("RTP from %s:%d dropped: the call's media is latched to %s:%d "
                 "(%d foreign packets so far)", addr[0], addr[1], self.remote[0],
                 self.remote[1], self.foreign_dropped)  # fmt: skip

    def set_codec(self, payload_type: int, telephone_event_pt: int | None) -> None:
        """The codec the answer chose (a delayed offer's answer comes after set-up)."""
        if payload_type not in (PCMU, PCMA):
            raise ValueError(f"unsupported payload type {payload_type}")
        self.payload_type = payload_type
        self.codec = "PCMU" if payload_type == PCMU else "PCMA"
        self.te_pt = telephone_event_pt

    def set_ptime(self, ptime_ms: int) -> None:
        """Send packets of `ptime_ms` (what the peer's SDP asked for, RFC 3264 6.1)."""
        self.packet_samples = ptime_ms * SAMPLES_PER_MS

    def relatch(self, remote: tuple[str, int]) -> None:
        """The caller moved its media (re-INVITE): send there, latch to the next source."""
        self.remote = remote
        self._latched = False
        self._remote_ssrc = None
        self._moving = None

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
    def read_tick(self) -> bytes | None:
        """This tick's 160 samples of caller payload, cut from packets of any size (RFC 4566:
        ptime is a recommendation, the caller may send 10, 30 or 40 ms); None when there
        is nothing to play (the clock conceals). A lost packet is concealed for its own
        length, taken as the last packet's: whole ticks of it by the clock's fade, a part
        of a tick as silence."""
        if not self._pending and not self._gap:  # the usual case: one 20 ms packet
            payload = self.jitter.pop()
            if payload is not None and len(payload) == SAMPLES_PER_PACKET:
                return payload
            if payload is not None:
                self._last_size = len(payload) or SAMPLES_PER_PACKET
                self._pending += payload
            elif self.jitter.missed:
                self._gap += self._last_size
            else:
                return None
        silence = _SILENCE_CODE[self.payload_type == PCMU]
        out = bytearray()
        while len(out) < SAMPLES_PER_PACKET:
            need = SAMPLES_PER_PACKET - len(out)
            if self._pending:
                out += self._pending[:need]
                del self._pending[:need]
                continue
            if self._gap:
                if not out and self._gap >= SAMPLES_PER_PACKET:
                    self._gap -= SAMPLES_PER_PACKET
                    return None
                take = min(need, self._gap)
                out += silence * take
                self._gap -= take
                continue
            payload = self.jitter.pop()
            if payload is not None:
                self._last_size = len(payload) or SAMPLES_PER_PACKET
                self._pending += payload
            elif self.jitter.missed:
                self._gap += self._last_size
            elif not out:
                return None  # nothing arrived yet (or the caller paused)
            else:
                out += silence * need  # the stream paused inside this tick
        return bytes(out)

    def take_output(self) -> np.ndarray | None:
        frame, self.out_frame = self.out_frame, None
        return frame

    def conceal(self) -> np.ndarray:
        """No packet for this tick: fade the last frame (no clicks, no stale speech)."""
        self.last_in = self.last_in // 2
        return self.last_in

    def send(self, payload: bytes) -> None:
        """This tick's output: sent as the packets of our ptime it completes (none, one or
        more). The sequence and timestamp advance even when sending is off, e.g. on hold,
        so they stay tied to the clock."""
        self._out += payload
        size = self.packet_samples
        while len(self._out) >= size:
            chunk = bytes(self._out[:size])
            del self._out[:size]
            self._seq = (self._seq + 1) & 0xFFFF
            self._ts = (self._ts + size) & 0xFFFFFFFF
            if not self.send_enabled or self._transport is None or self._closed:
                continue
            packet = rtp_header.build(
                self.payload_type, self._seq, self._ts, self._ssrc, chunk, marker=self.sent == 0
            )
            self._transport.sendto(packet, self.remote)
            self.sent += 1


# G.711 code of a zero sample: mu-law 0xFF, A-law 0xD5 (ITU-T G.711 tables).
_SILENCE_CODE = {True: b"\xff", False: b"\xd5"}


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
