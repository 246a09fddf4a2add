"""SIP media beyond 20 ms packets and one fixed source: packet times other than 20 ms
(RFC 4566 ptime / maxptime, RFC 3264 section 6.1) both ways, and RTP latching that follows
a NAT rebinding of the caller's stream (same SSRC) but never a stranger (another SSRC, or
the same one interleaved with the real stream). RTP on loopback, against an in-process
gateway (`tests/test_sip_torture.sip_gateway`) or a bare `RtpSession`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from tests.test_sip_torture import SDP, Peer, _drain, _peer, request, sip_gateway
from voicebot.telephony.message import tag_of
from voicebot.telephony.rtp import RELATCH_PACKETS, RELATCH_S, RtpSession
from voicebot.telephony.sdp import PCMU, build_answer, choose_codec, parse_offer

HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


def _rtp(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = PCMU) -> bytes:
    return (
        bytes([0x80, pt]) + (seq & 0xFFFF).to_bytes(2, "big") + (ts & 0xFFFFFFFF).to_bytes(4, "big")
        + ssrc.to_bytes(4, "big") + payload
    )  # fmt: skip


def _header(data: bytes) -> tuple[int, int, int]:
    """(sequence, timestamp, ssrc) of an RTP packet."""
    return int.from_bytes(data[2:4], "big"), int.from_bytes(data[4:8], "big"), int.from_bytes(
        data[8:12], "big"
    )


# -- SDP ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attributes", "sent"),
    [
        ("", 20),
        ("a=ptime:10\r\n", 10),
        ("a=ptime:30\r\n", 30),
        ("a=ptime:40\r\n", 40),
        ("a=ptime:60\r\na=maxptime:40\r\n", 40),  # maxptime caps it
        ("a=maxptime:10\r\n", 10),  # 20 would exceed what the offerer takes
        ("a=ptime:20.0\r\n", 20),
        ("a=ptime:\u00b2\r\n", 20),  # unreadable: a recommendation, ignored
        ("a=ptime:0\r\n", 20),
        ("a=ptime:5000\r\n", 200),
    ],
)
def test_the_answer_states_the_ptime_we_send(attributes: str, sent: int) -> None:
    offer = parse_offer(HEAD + "m=audio 4000 RTP/AVP 0\r\n" + attributes)
    assert offer.send_ptime == sent
    answer = build_answer(offer, choose_codec(offer), "127.0.0.1", 20000)
    assert f"a=ptime:{sent}" in answer.split("\r\n")


def test_a_session_level_ptime_applies_to_the_stream() -> None:
    offer = parse_offer(HEAD.replace("t=0 0", "t=0 0\r\na=ptime:40") + "m=audio 4000 RTP/AVP 0\r\n")
    assert offer.send_ptime == 40


# -- RtpSession alone -----------------------------------------------------------------------
class _Wire:
    """Stands in for the RTP socket: keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 20000)


def _session() -> tuple[RtpSession, _Wire]:
    rtp = RtpSession(PCMU, 101, ("127.0.0.1", 4000), lambda digit: None)
    wire = _Wire()
    rtp.connection_made(wire)  # type: ignore[arg-type]
    return rtp, wire


@pytest.mark.parametrize("ptime", [10, 20, 30, 40, 60])
def test_packets_of_any_size_play_out_as_the_same_stream(ptime: int) -> None:
    rtp, _ = _session()
    size = 8 * ptime
    stream = bytes((i * 7) % 251 for i in range(size * 30))  # 30 packets, no repeats inside
    played = bytearray()
    ticks = 0
    for seq, start in enumerate(range(0, len(stream), size)):
        rtp.datagram_received(_rtp(seq, start, 1234, stream[start:start + size]),
                              ("127.0.0.1", 4000))  # fmt: skip
        # Packets arrive at their real pace: one tick per 20 ms of audio sent so far.
        while ticks * 160 < start + size:
            ticks += 1
            out = rtp.read_tick()
            if out is not None:
                assert len(out) == 160
                played += out
    while (out := rtp.read_tick()) is not None:
        played += out
    assert bytes(played) == stream[: len(played)]
    assert len(played) >= len(stream) - 160  # all of it, less at most a partial tick
    assert rtp.jitter.lost == 0


def test_a_lost_40_ms_packet_is_concealed_for_two_ticks() -> None:
    rtp, _ = _session()
    addr = ("127.0.0.1", 4000)
    outs: list[bytes | None] = []
    for seq in range(12):
        if seq != 5:  # lost on the way
            rtp.datagram_received(_rtp(seq, seq * 320, 1234, bytes([seq]) * 320), addr)
        outs += [rtp.read_tick(), rtp.read_tick()]
    started = next(i for i, o in enumerate(outs) if o is not None)
    played = outs[started:]
    firsts = [o[0] if o is not None else None for o in played]
    # Two ticks per packet, two concealed ticks where packet 5 was.
    assert firsts[:14] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, None, None, 6, 6]
    assert rtp.jitter.lost == 1


@pytest.mark.parametrize(("ptime", "packets", "left"), [(10, 20, 0), (30, 6, 160), (40, 5, 0)])
def test_we_send_packets_of_the_negotiated_ptime(ptime: int, packets: int, left: int) -> None:
    rtp, wire = _session()
    rtp.set_ptime(ptime)
    for tick in range(10):  # 200 ms of output
        rtp.send(bytes([tick]) * 160)
    assert len(wire.sent) == packets
    headers = [_header(p) for p in wire.sent]
    assert {len(p) - 12 for p in wire.sent} == {8 * ptime}
    assert all((b[0] - a[0]) & 0xFFFF == 1 for a, b in itertools.pairwise(headers))
    assert all(b[1] - a[1] == 8 * ptime for a, b in itertools.pairwise(headers))
    payload = b"".join(p[12:] for p in wire.sent)
    assert payload == b"".join(bytes([t]) * 160 for t in range(10))[: 1600 - left]


# -- on loopback through the gateway ----------------------------------------------------------
async def _call(gateway_port: int, caller: Peer, media: Peer, call_id: str,
                sdp: str) -> tuple[str, int]:  # fmt: skip
    """Set up a call (INVITE, 200, ACK): our To tag and the bot's RTP port."""
    caller.send(request("INVITE", gateway_port, caller, call_id=call_id, body=sdp), gateway_port)
    ok = await caller.response()
    assert ok.status == 200, ok
    our_tag = tag_of(ok.get("To") or "") or ""
    m_line = next(x for x in ok.body.decode().splitlines() if x.startswith("m=audio"))
    caller.send(request("ACK", gateway_port, caller, call_id=call_id, to_tag=our_tag,
                        cseq="1 ACK"), gateway_port)  # fmt: skip
    return our_tag, int(m_line.split()[1])


async def _bye(gateway_port: int, caller: Peer, call_id: str, our_tag: str) -> None:
    caller.send(request("BYE", gateway_port, caller, call_id=call_id, to_tag=our_tag,
                        cseq="2 BYE"), gateway_port)  # fmt: skip
    assert (await caller.response()).status == 200


def _from_bot(peer: Peer, rtp_port: int) -> list[bytes]:
    return [data for data, addr in _drain(peer.received) if addr[1] == rtp_port]


@pytest.mark.parametrize("ptime", [10, 40])
def test_a_call_at_another_ptime_goes_both_ways(
    ptime: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with sip_gateway(overload_late_ratio=0, tick_budget=0) as gateway:
            caller, media = await _peer(), await _peer()
            call_id = f"ptime-{ptime}"
            sdp = SDP.format(port=media.port).replace("a=ptime:20", f"a=ptime:{ptime}")
            our_tag, rtp_port = await _call(gateway.port, caller, media, call_id, sdp)
            size = 8 * ptime
            loop = asyncio.get_running_loop()
            start = loop.time()
            for seq in range(1000 // ptime):  # one second of caller audio at its ptime
                media.send(_rtp(seq, seq * size, 99, b"\xff" * size), rtp_port)
                await asyncio.sleep(max(0.0, start + (seq + 1) * ptime / 1000 - loop.time()))
            bot = _from_bot(media, rtp_port)
            assert {len(p) - 12 for p in bot} == {size}, "bot packets of another size"
            stamps = [_header(p)[1] for p in bot]
            assert all(b - a == size for a, b in itertools.pairwise(stamps))
            assert 0.7 * 1000 / ptime <= len(bot) <= 1.2 * 1000 / ptime  # at the ptime's pace
            rtp = gateway.calls[call_id].rtp
            assert rtp is not None and rtp.jitter.received >= 0.9 * 1000 / ptime
            assert rtp.jitter.lost == 0 and rtp.jitter.late == 0
            await _bye(gateway.port, caller, call_id, our_tag)
            for p in (caller, media):
                p.transport.close()  # type: ignore[union-attr]

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.exc_info]


def test_rtp_follows_a_rebinding_but_not_a_stranger(caplog: pytest.LogCaptureFixture) -> None:
    """The caller's stream (SSRC 99) with a stranger's packets (SSRC 666) between them: the
    stranger gets nothing and is logged once. Then the caller's NAT rebinds (same SSRC,
    new port): the bot's media follows once the new source has lasted RELATCH_PACKETS
    packets over RELATCH_S; a stranger streaming alone after that still gets nothing."""

    async def main() -> None:
        async with sip_gateway(overload_late_ratio=0, tick_budget=0) as gateway:
            caller, media, rebound, stranger = (
                await _peer(), await _peer(), await _peer(), await _peer()
            )  # fmt: skip
            call_id = "relatch"
            our_tag, rtp_port = await _call(gateway.port, caller, media, call_id,
                                            SDP.format(port=media.port))  # fmt: skip
            payload = b"\xff" * 160
            seq = 0
            for _ in range(25):  # 0.5 s: the stranger sends every fifth packet
                media.send(_rtp(seq, seq * 160, 99, payload), rtp_port)
                if seq % 5 == 4:
                    stranger.send(_rtp(seq, seq * 160, 666, payload), rtp_port)
                seq += 1
                await asyncio.sleep(0.02)
            assert len(_from_bot(media, rtp_port)) > 15
            assert not _from_bot(stranger, rtp_port)
            rtp = gateway.calls[call_id].rtp
            assert rtp is not None and rtp.foreign_dropped == 5
            # The NAT rebinds: the same stream now comes from another port.
            moved_at = asyncio.get_running_loop().time()
            for _ in range(25):
                rebound.send(_rtp(seq, seq * 160, 99, payload), rtp_port)
                seq += 1
                await asyncio.sleep(0.02)
            at_new = _from_bot(rebound, rtp_port)
            streamed = asyncio.get_running_loop().time() - moved_at  # 0.5 s, more under load
            assert len(at_new) > 10, "the bot's media did not follow the rebinding"
            # Not before RELATCH_PACKETS packets over RELATCH_S (at 20 ms, the latter).
            assert RELATCH_PACKETS * 0.02 <= RELATCH_S
            assert len(at_new) <= (streamed - RELATCH_S) / 0.02 + 2, "followed before the threshold"
            _drain(media.received)
            # The caller is gone from the old port; a stranger streaming now gets nothing.
            for _ in range(25):
                stranger.send(_rtp(seq, seq * 160, 666, payload), rtp_port)
                rebound.send(_rtp(seq, seq * 160, 99, payload), rtp_port)
                seq += 1
                await asyncio.sleep(0.02)
            assert not _from_bot(stranger, rtp_port) and not _from_bot(media, rtp_port)
            assert len(_from_bot(rebound, rtp_port)) > 15
            assert asyncio.get_running_loop().time() - moved_at > 0.5
            await _bye(gateway.port, caller, call_id, our_tag)
            for p in (caller, media, rebound, stranger):
                p.transport.close()  # type: ignore[union-attr]

    with caplog.at_level(logging.INFO, logger="voicebot.telephony.rtp"):
        asyncio.run(main())
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1, [r.getMessage() for r in dropped]  # one line per stranger
    assert len([r for r in caplog.records if "moved" in r.getMessage()]) == 1
