"""DTMF from phones: RFC 4733 telephone-events in RTP, and SIP INFO application/dtmf-relay.

RFC 4733 section 2.3: one event is carried by several packets with the same RTP
timestamp (its start); the "E" bit marks the end and end packets are sent three times.
We report a digit once, on its first packet, keyed by timestamp so retransmitted end
packets and updates never repeat it.
"""

from __future__ import annotations

import re
import struct

EVENT_DIGITS = "0123456789*#ABCD"  # event codes 0-15 (RFC 4733 section 3.2)


def decode_telephone_event(payload: bytes) -> tuple[str, bool, int] | None:
    """(digit, end bit, duration) of an RFC 4733 payload, or None for non-DTMF events."""
    if len(payload) < 4:
        return None
    event, flags, duration = struct.unpack("!BBH", payload[:4])
    if event >= len(EVENT_DIGITS):
        return None
    return EVENT_DIGITS[event], bool(flags & 0x80), duration


class DtmfDetector:
    """Turns a stream of telephone-event packets into digits, each once."""

    def __init__(self) -> None:
        self._last_timestamp: int | None = None

    def packet(self, timestamp: int, payload: bytes) -> str | None:
        decoded = decode_telephone_event(payload)
        if decoded is None:
            return None
        if timestamp == self._last_timestamp:
            return None
        self._last_timestamp = timestamp
        return decoded[0]


def parse_dtmf_relay(body: bytes) -> str | None:
    """The digit of a SIP INFO `application/dtmf-relay` body ("Signal=5\\r\\nDuration=160")."""
    match = re.search(rb"Signal\s*=\s*([0-9*#A-Da-d])", body)
    return match.group(1).decode().upper() if match else None
