"""The RTP fixed header (RFC 3550 5.1): our struct parser and builder against aiortc's
`RtpPacket` (an independent implementation), and every malformed shape refused."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtp import RtpPacket

from voicebot.telephony import rtp_header


def test_build_matches_aiortc_and_parses_back() -> None:
    payload = bytes(range(160))
    for marker in (False, True):
        ours = rtp_header.build(0, 65535, 0xFFFFFFFF, 0x12345678, payload, marker=marker)
        theirs = RtpPacket(
            payload_type=0, sequence_number=65535, timestamp=0xFFFFFFFF, ssrc=0x12345678,
            payload=payload, marker=int(marker),
        ).serialize()  # fmt: skip
        assert ours == theirs
        assert rtp_header.parse(ours) == (0, 65535, 0xFFFFFFFF, 0x12345678, payload)


def test_csrcs_extension_and_padding_are_skipped() -> None:
    packet = RtpPacket(payload_type=8, sequence_number=7, timestamp=160, ssrc=99,
                       payload=b"\xd5" * 160)  # fmt: skip
    packet.csrc = [1, 2, 3]
    with_csrcs = packet.serialize()
    assert with_csrcs[0] & 0x0F == 3
    assert rtp_header.parse(with_csrcs) == (8, 7, 160, 99, b"\xd5" * 160)
    # A one-byte header extension (RFC 8285: profile 0xBEDE, 1 word) after the CSRCs.
    extended = bytearray(with_csrcs[:24]) + struct.pack("!HH", 0xBEDE, 1) + b"\x10\x30\x00\x00"
    extended[0] |= 0x10
    extended += b"\xd5" * 160
    assert rtp_header.parse(bytes(extended)) == (8, 7, 160, 99, b"\xd5" * 160)
    padded = bytearray(rtp_header.build(8, 8, 320, 99, b"\xd5" * 160))
    padded[0] |= 0x20
    padded += b"\x00\x00\x00\x04"  # 4 octets of padding, the last one counting them
    assert rtp_header.parse(bytes(padded)) == (8, 8, 320, 99, b"\xd5" * 160)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x00\x00",  # shorter than the fixed header
        b"\x40" + bytes(11) + b"x",  # version 1
        b"\x00" + bytes(11) + b"x",  # version 0
        b"\x8f" + bytes(11) + b"x" * 20,  # 15 CSRCs declared, 21 octets there
        b"\x90" + bytes(11) + b"\x00\x00",  # extension header cut short
        b"\x90" + bytes(11) + struct.pack("!HH", 0xBEDE, 9) + b"x" * 8,  # extension too long
        b"\xa0" + bytes(11) + b"xy\x00",  # padding count 0
        b"\xa0" + bytes(11) + b"xy\x09",  # more padding than the packet holds
    ],
)
def test_malformed_packets_are_refused(data: bytes) -> None:
    assert rtp_header.parse(data) is None
