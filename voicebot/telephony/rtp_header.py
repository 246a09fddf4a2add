"""The RTP fixed header (RFC 3550 section 5.1), read and written with `struct`.

Place in the flow: `rtp.RtpSession` parses every packet a caller sends and builds every
packet the bot sends with these, 50 times a second per call on the event loop. aiortc's
`RtpPacket` did the same through an object per packet (header extensions, CSRC lists and
padding kept as attributes): at 100 calls a few microseconds per packet the loop spent on
fields a G.711 call never uses. Here a packet is a tuple in and bytes out; what we do not
use (CSRCs, a header extension, padding) is skipped by length, as section 5.1 and 5.3.1 say
a receiver may.
"""

from __future__ import annotations

import struct

VERSION = 2
HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence number, timestamp, SSRC
HEADER_SIZE = HEADER.size  # 12
_EXTENSION = struct.Struct("!HH")  # profile-defined, length in 32-bit words (5.3.1)


def parse(data: bytes) -> tuple[int, int, int, int, bytes] | None:
    """(payload type, sequence number, timestamp, SSRC, payload) of an RTP packet, or None
    if it is not a well-formed version 2 packet (too short for what its header declares)."""
    if len(data) < HEADER_SIZE:
        return None
    first, second, seq, timestamp, ssrc = HEADER.unpack_from(data)
    if first >> 6 != VERSION:
        return None
    start = HEADER_SIZE + 4 * (first & 0x0F)  # after the CSRC list
    end = len(data)
    if first & 0x10:  # header extension: skipped whole
        if end < start + 4:
            return None
        _, words = _EXTENSION.unpack_from(data, start)
        start += 4 + 4 * words
    if first & 0x20:  # padding: its last octet counts the octets to drop, itself included
        pad = data[-1]
        if pad == 0:
            return None
        end -= pad
    if end < start:
        return None
    return second & 0x7F, seq, timestamp, ssrc, data[start:end]


def build(payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes,
          marker: bool = False) -> bytes:  # fmt: skip
    """A version 2 packet with no padding, extension or CSRCs."""
    second = (0x80 if marker else 0) | (payload_type & 0x7F)
    return HEADER.pack(VERSION << 6, second, seq, timestamp, ssrc) + payload
