"""SIP requests a carrier or an attacker may send (RFC 3261 section 8.2, RFC 4475), against
an in-process SIP gateway on loopback: each gets the right response code, with a To tag on
every final response, nothing raises out of the datagram handler, no third party can take
over a dialog or its media, and a normal call still works afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

import pytest

from tests.engines import ScriptedSTT
from voicebot.calls.manager import CallManager
from voicebot.calls.metrics import GatewayMetrics
from voicebot.config import Settings
from voicebot.models.base import Engines
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech
from voicebot.telephony.gateway import SipGateway
from voicebot.telephony.message import SipResponse, parse_message, tag_of
from voicebot.telephony.ratelimit import SourceLimiter, Verdict
from voicebot.telephony.ua import MAX_RETRANSMITTING_REFUSALS

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
)


class Peer(asyncio.DatagramProtocol):
    """A UDP socket on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    async def response(self, timeout: float = 2.0, skip_provisional: bool = True) -> SipResponse:
        while True:
            data, _ = await asyncio.wait_for(self.received.get(), timeout)
            message = parse_message(data)
            assert isinstance(message, SipResponse)
            if not (skip_provisional and message.status < 200):
                return message


async def _peer() -> Peer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    return peer


@contextlib.asynccontextmanager
async def sip_gateway(**sip: object) -> AsyncIterator[SipGateway]:
    """A gateway on a free loopback port; `sip` overrides its `sip.*` settings."""
    settings = Settings(
        server={"warm_up": False}, agent={"greeting": None},
        sip={"answer_delay_ms": 0, "echo_cancellation": False, **sip},
    )  # fmt: skip
    engines = Engines(
        stt=ScriptedSTT(), llm=ScriptedLanguageModel.from_file(), tts=EspeakTextToSpeech()
    )
    manager = CallManager(settings, engines, GatewayMetrics())
    gateway = SipGateway(manager, settings)
    gateway.port = 0  # any free port
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()
        manager.close()


def request(
    method: str, port: int, peer: Peer, *, call_id: str | None = None, cseq: str | None = None,
    to_tag: str | None = None, from_tag: str = "caller1", extra: str = "", body: str = "",
    uri: str | None = None, content_type: str | None = None,
) -> bytes:  # fmt: skip
    to = f"<sip:bot@127.0.0.1:{port}>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} {uri or f'sip:bot@127.0.0.1:{port}'} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag={from_tag}\r\nTo: {to}\r\n"
        f"Call-ID: {call_id or secrets.token_hex(8)}\r\nCSeq: {cseq or '1 ' + method}\r\n"
        f"Contact: <sip:caller@127.0.0.1:{peer.port}>\r\n{extra}"
    )
    if body:
        head += f"Content-Type: {content_type or 'application/sdp'}\r\n"
    return f"{head}Content-Length: {len(body.encode())}\r\n\r\n{body}".encode()


PROBES = [
    # (name, request keyword arguments, status, header that must be in the response)
    ("REGISTER", {"method": "REGISTER"}, 405, "Allow"),
    ("SUBSCRIBE", {"method": "SUBSCRIBE"}, 405, "Allow"),
    ("unknown method", {"method": "FROBNICATE"}, 501, "Allow"),
    ("lower-case invite", {"method": "invite", "body": "SDP"}, 501, "Allow"),
    ("CANCEL of nothing", {"method": "CANCEL"}, 481, None),
    ("NOTIFY, no dialog", {"method": "NOTIFY", "to_tag": "nope"}, 481, None),
    ("BYE, no dialog", {"method": "BYE", "to_tag": "nope"}, 481, None),
    ("Require", {"method": "INVITE", "extra": "Require: 100rel, foo\r\n", "body": "SDP"},
     420, "Unsupported"),
    ("URI scheme", {"method": "INVITE", "uri": "im:bot@127.0.0.1", "body": "SDP"}, 416, None),
    ("Accept", {"method": "INVITE", "extra": "Accept: text/nobodyKnowsThis\r\n", "body": "SDP"},
     406, None),
    ("body type", {"method": "INVITE", "body": "hello", "content_type": "text/plain"},
     415, "Accept"),
    ("video-only offer", {"method": "INVITE", "body": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
     "s=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 30000 RTP/AVP 96\r\n"}, 488, None),
    ("multipart body", {"method": "INVITE", "body": "--b--", "content_type":
                        "multipart/mixed;boundary=b"}, 415, "Accept"),
]  # fmt: skip

MALFORMED = {
    "stray separators in Via": lambda r: r.replace(b";branch=", b";;,;branch="),
    "two Call-IDs": lambda r: r.replace(b"CSeq:", b"Call-ID: second\r\nCSeq:"),
    "two Content-Lengths": lambda r: r.replace(b"CSeq:", b"Content-Length: 0\r\nCSeq:"),
    "CSeq of 2**32": lambda r: r.replace(b"CSeq: 1 ", b"CSeq: 4294967296 "),
    "superscript digit in CSeq": lambda r: r.replace(b"CSeq: 1 ", "CSeq: ² ".encode()),
    "superscript digit in Content-Length": lambda r: r.replace(
        b"Content-Length: 0", "Content-Length: ²".encode()
    ),
    "NUL in Call-ID": lambda r: r.replace(b"Call-ID: ", b"Call-ID: a\x00b"),
    "bare CR in a header": lambda r: r.replace(b"Max-Forwards: 70", b"Max-Forwards: 70\rX: 1"),
}


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_every_probe_gets_its_code_and_a_to_tag(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with sip_gateway() as gateway:
            peer = await _peer()
            for name, kwargs, status, header in PROBES:
                kw = dict(kwargs)
                if kw.get("body") == "SDP":
                    kw["body"] = SDP.format(port=peer.port + 2)
                peer.send(request(port=gateway.port, peer=peer, **kw), gateway.port)
                response = await peer.response()
                assert response.status == status, (name, response.status, response.reason)
                assert tag_of(response.get("To") or ""), f"{name}: final response without To tag"
                if header is not None:
                    assert response.get(header), f"{name}: no {header}"
            for name, mangle in MALFORMED.items():
                good = request("OPTIONS", gateway.port, peer)
                peer.send(mangle(good), gateway.port)
                # The 400 echoes the bad headers, so it is read as text, not parsed.
                data, _ = await asyncio.wait_for(peer.received.get(), 2.0)
                assert data.startswith(b"SIP/2.0 400 "), (name, data[:60])
                to = next(line for line in data.split(b"\r\n") if line.startswith(b"To:"))
                assert b";tag=" in to, f"{name}: 400 without To tag"
            peer.send(request("OPTIONS", gateway.port, peer), gateway.port)
            assert (await peer.response()).status == 200
            assert not gateway.calls
            peer.transport.close()  # type: ignore[union-attr]

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    _no_tracebacks(caplog)


def test_only_the_dialogs_own_tags_reach_the_call(caplog: pytest.LogCaptureFixture) -> None:
    """Right Call-ID, wrong tags: 481, and the call goes on; its media stays with the
    caller's first source, whoever else sends RTP to the bot's port."""

    async def main() -> None:
        async with sip_gateway() as gateway:
            caller, media, intruder = await _peer(), await _peer(), await _peer()
            call_id = "torture-dialog"
            invite = request("INVITE", gateway.port, caller, call_id=call_id,
                             body=SDP.format(port=media.port))  # fmt: skip
            caller.send(invite, gateway.port)
            ok = await caller.response()
            assert ok.status == 200
            our_tag = tag_of(ok.get("To") or "")
            rtp_port = int(next(line for line in ok.body.decode().splitlines()
                                if line.startswith("m=audio")).split()[1])  # fmt: skip
            caller.send(request("ACK", gateway.port, caller, call_id=call_id, to_tag=our_tag,
                                cseq="1 ACK"), gateway.port)  # fmt: skip
            # A stranger with the Call-ID but the wrong From tag, then the wrong To tag.
            for kw in ({"from_tag": "intruder", "to_tag": our_tag}, {"to_tag": "wrong"}):
                for method, cseq in (("BYE", "2 BYE"),
                                     ("INVITE", "3 INVITE")):  # fmt: skip
                    body = SDP.format(port=intruder.port) if method == "INVITE" else ""
                    intruder.send(request(method, gateway.port, intruder, call_id=call_id,
                                          cseq=cseq, body=body, **kw), gateway.port)  # fmt: skip
                    assert (await intruder.response()).status == 481, (method, kw)
            assert call_id in gateway.calls
            # RTP: the caller's media socket first, then an intruder's packets in between.
            header = bytes([0x80, 0x00])
            for seq in range(50):
                packet = header + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
                packet += (1234).to_bytes(4, "big") + b"\xff" * 160
                media.send(packet, rtp_port)
                if seq % 5 == 4:
                    intruder.send(packet, rtp_port)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            from_bot = [addr for data, addr in _drain(media.received) if addr[1] == rtp_port]
            stolen = [d for d, addr in _drain(intruder.received) if addr[1] == rtp_port]
            assert len(from_bot) > 20 and not stolen
            # The real caller's BYE still works.
            caller.send(request("BYE", gateway.port, caller, call_id=call_id, to_tag=our_tag,
                                cseq="2 BYE"), gateway.port)  # fmt: skip
            assert (await caller.response()).status == 200
            for _ in range(100):
                if call_id not in gateway.calls:
                    break
                await asyncio.sleep(0.02)
            assert call_id not in gateway.calls
            for peer in (caller, media, intruder):
                peer.transport.close()  # type: ignore[union-attr]

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    _no_tracebacks(caplog)


Datagrams = asyncio.Queue[tuple[bytes, tuple[str, int]]]


def _drain(queue: Datagrams) -> list[tuple[bytes, tuple[str, int]]]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def test_a_flood_of_bad_datagrams_is_one_log_line_per_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with sip_gateway() as gateway:
            peer = await _peer()
            bad = request("OPTIONS", gateway.port, peer).replace(b"CSeq: 1 ", b"CSeq: x ")
            for _ in range(100):
                peer.send(bad, gateway.port)
                await asyncio.sleep(0)
            replies = 0
            with contextlib.suppress(TimeoutError):
                while replies < 100:
                    await asyncio.wait_for(peer.received.get(), 1.0)
                    replies += 1
            assert replies >= 90  # each still gets its 400 (loopback UDP may drop a few)
            peer.transport.close()  # type: ignore[union-attr]

    with caplog.at_level(logging.INFO, logger="voicebot.telephony.sip"):
        asyncio.run(main())
    assert len([r for r in caplog.records if "malformed SIP" in r.getMessage()]) == 1


def test_delayed_offer_the_answer_comes_in_the_ack(caplog: pytest.LogCaptureFixture) -> None:
    """INVITE without SDP (RFC 3261 13.2.1): our offer in the 200 OK, the caller's answer in
    the ACK picks PCMA, and the bot's RTP then goes there in PCMA."""

    async def main() -> None:
        async with sip_gateway() as gateway:
            caller, media = await _peer(), await _peer()
            call_id = "torture-delayed"
            caller.send(request("INVITE", gateway.port, caller, call_id=call_id), gateway.port)
            ok = await caller.response()
            assert ok.status == 200 and ok.get("Content-Type") == "application/sdp"
            offer = ok.body.decode()
            m_line = next(line for line in offer.splitlines() if line.startswith("m=audio"))
            assert m_line.split()[3:] == ["0", "8", "101"]
            rtp_port = int(m_line.split()[1])
            answer = SDP.format(port=media.port).replace("RTP/AVP 0 101", "RTP/AVP 8 101")
            answer = answer.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000")
            ack = request("ACK", gateway.port, caller, call_id=call_id, cseq="1 ACK",
                          to_tag=tag_of(ok.get("To") or ""), body=answer)  # fmt: skip
            caller.send(ack, gateway.port)
            for seq in range(25):  # the caller's media, so the call runs its course
                header = bytes([0x80, 0x08]) + seq.to_bytes(2, "big")
                header += (seq * 160).to_bytes(4, "big") + (99).to_bytes(4, "big")
                media.send(header + b"\xd5" * 160, rtp_port)
                await asyncio.sleep(0.02)
            bot = [data for data, addr in _drain(media.received) if addr[1] == rtp_port]
            assert len(bot) > 10 and {data[1] & 0x7F for data in bot} == {8}
            assert gateway.calls[call_id].state.value == "confirmed"
            for peer in (caller, media):
                peer.transport.close()  # type: ignore[union-attr]

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    _no_tracebacks(caplog)


def test_refusals_to_one_source_are_not_an_amplifier() -> None:
    """Spoofed INVITEs that are refused and never ACKed: each is answered, but only a
    bounded number of refusals per source are retransmitted (timer G)."""

    async def main() -> None:
        async with sip_gateway() as gateway:
            peer = await _peer()
            g729 = SDP.format(port=4000).replace("RTP/AVP 0 101", "RTP/AVP 18")
            n = 40
            for i in range(n):
                peer.send(request("INVITE", gateway.port, peer, call_id=f"spoof-{i}",
                                  body=g729), gateway.port)  # fmt: skip
            await asyncio.sleep(1.8)  # the first two retransmissions are due at 0.5 s, 1.5 s
            got = [parse_message(d) for d, _ in _drain(peer.received)]
            finals = [m for m in got if isinstance(m, SipResponse) and m.status == 488]
            assert len({m.call_id for m in finals}) == n  # every INVITE got its answer
            limit = MAX_RETRANSMITTING_REFUSALS
            assert n < len(finals) <= n + 2 * limit  # without the bound: 3 * n
            peer.transport.close()  # type: ignore[union-attr]

    asyncio.run(main())


def test_source_limiter_buckets() -> None:
    """Burst, then 503s at the sustained rate, then silence; refilled with time."""
    limiter = SourceLimiter(rate=10, burst=20)
    verdicts = [limiter.check("192.0.2.1", 100.0) for _ in range(50)]
    assert verdicts.count(Verdict.ACCEPT) == 20
    assert verdicts.count(Verdict.REFUSE) == 10  # one second's worth of 503s
    assert verdicts[30:] == [Verdict.DROP] * 20
    assert limiter.check("192.0.2.2", 100.0) is Verdict.ACCEPT  # others are not affected
    assert limiter.check("192.0.2.1", 100.5) is Verdict.ACCEPT  # 5 tokens back after 0.5 s
    assert limiter.retry_after == 1
    assert SourceLimiter(rate=0, burst=1).check("192.0.2.1", 0.0) is Verdict.ACCEPT
    small = SourceLimiter(rate=1, burst=1, max_sources=2)
    for ip in ("a", "b", "c"):
        small.check(ip, 0.0)
    assert small.check("a", 0.0) is Verdict.ACCEPT  # forgotten (oldest): bounded memory
    defaults = Settings().sip
    assert defaults.source_burst >= 100 and defaults.source_rate >= 10  # a trunk's burst


def test_a_flooding_source_is_refused_and_others_still_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OPTIONS flood from 127.0.0.2: its burst answered, then 503 + Retry-After at the
    source rate, then nothing; meanwhile a call from 127.0.0.1 is set up and ended."""

    async def main() -> None:
        async with sip_gateway(source_rate=10, source_burst=20) as gateway:
            loop = asyncio.get_running_loop()
            _, flooder = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.2", 0))
            caller, media = await _peer(), await _peer()
            for i in range(200):  # in bursts the socket buffer holds (the kernel drops more)
                flooder.send(request("OPTIONS", gateway.port, flooder), gateway.port)
                if i % 20 == 19:
                    await asyncio.sleep(0.002)
            call_id = "flood-neighbour"
            caller.send(request("INVITE", gateway.port, caller, call_id=call_id,
                                body=SDP.format(port=media.port)), gateway.port)  # fmt: skip
            ok = await caller.response()
            assert ok.status == 200
            to_tag = tag_of(ok.get("To") or "")
            caller.send(request("ACK", gateway.port, caller, call_id=call_id, to_tag=to_tag,
                                cseq="1 ACK"), gateway.port)  # fmt: skip
            await asyncio.sleep(0.5)
            answers = [parse_message(d) for d, _ in _drain(flooder.received)]
            codes = [m.status for m in answers if isinstance(m, SipResponse)]
            assert 20 <= codes.count(200) <= 25, codes.count(200)
            assert 10 <= codes.count(503) <= 15, codes.count(503)
            assert len(codes) < 50  # the other ~150 were dropped unanswered
            refusal = next(m for m in answers if isinstance(m, SipResponse) and m.status == 503)
            assert refusal.get("Retry-After") and tag_of(refusal.get("To") or "")
            caller.send(request("BYE", gateway.port, caller, call_id=call_id, to_tag=to_tag,
                                cseq="2 BYE"), gateway.port)  # fmt: skip
            assert (await caller.response()).status == 200
            discarded = gateway.manager.metrics.sip_discarded
            assert discarded.labels("dropped")._value.get() >= 140
            for peer in (flooder, caller, media):
                peer.transport.close()  # type: ignore[union-attr]

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    _no_tracebacks(caplog)
    assert len([r for r in caplog.records if "rate limit" in r.getMessage()]) == 1
