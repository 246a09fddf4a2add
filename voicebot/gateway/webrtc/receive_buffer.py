"""The caller's RTP packets handed to aiortc's Opus decoder as they arrive, with no hold.

Place in the flow: aiortc's `RTCRtpReceiver` puts each packet of the caller's track through
a jitter buffer before its decoder thread; `feed_remote_track` then takes the decoded frames
into the call's `PacedFrames`. For audio aiortc's buffer is `JitterBuffer(16, prefetch=4)`:
it passes a packet on only once four later ones are in (80 ms of 20 ms packets), and behind
a lost packet it holds everything until 16 have piled up (320 ms of the caller's voice,
then a burst). The caller's audio feeds a VAD and STT, not an ear, and `PacedFrames`
already evens out arrival jitter after the decoder, so that hold was pure delay: every
barge-in and end of turn on a WebRTC call was heard 80 ms late, more after a loss.

`ArrivalOrderBuffer` passes each packet on when it arrives, drops one that arrives after a
later one or twice (a 20 ms gap the VAD does not notice; the RTP sequence number says so,
RFC 3550 section 5.1), and starts over after a jump no reordering explains.
`release_on_arrival` puts one in place of a receiver's own buffer.
"""

from __future__ import annotations

import logging

from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

log = logging.getLogger("voicebot.gateway.webrtc")

SEQUENCE_SPAN = 1 << 16
# Packets further behind the newest than this are a new stream (the sender restarted or
# jumped), not a late packet: aiortc's own buffer draws the line at the same 100.
MAX_MISORDER = 100

# aiortc keeps the buffer in a name-mangled private attribute; if a release renames it, the
# receiver keeps its own buffer and calls still work, only with aiortc's 80 ms hold.
_RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


class ArrivalOrderBuffer:
    """aiortc's `JitterBuffer.add` contract for single-packet audio frames (Opus, G.711)."""

    capacity = 1

    def __init__(self) -> None:
        self._newest: int | None = None
        self.late = 0  # packets dropped because a later one had been passed on

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """(no picture loss to report, the packet's frame or None when it is dropped)."""
        sequence = packet.sequence_number
        if self._newest is not None:
            ahead = (sequence - self._newest) % SEQUENCE_SPAN
            behind = SEQUENCE_SPAN - ahead
            if ahead == 0 or (ahead >= SEQUENCE_SPAN // 2 and behind < MAX_MISORDER):
                self.late += 1
                return False, None
        self._newest = sequence
        data: bytes = getattr(packet, "_data", packet.payload)  # set by aiortc's depayloader
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def release_on_arrival(receiver: RTCRtpReceiver) -> bool:
    """Give an audio receiver an `ArrivalOrderBuffer`; False (and a log line) if this aiortc
    keeps its buffer elsewhere."""
    if not hasattr(receiver, _RECEIVER_BUFFER):
        log.warning("aiortc's receiver has no %s: it keeps its 80 ms hold", _RECEIVER_BUFFER)
        return False
    setattr(receiver, _RECEIVER_BUFFER, ArrivalOrderBuffer())
    return True
