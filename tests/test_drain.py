"""Taking a gateway out of service: `/readyz` and SIP OPTIONS say whether it takes calls
(what HAProxy and Kamailio's dispatcher probe), and `POST /v1/admin/drain` drains it as
SIGTERM does: no new calls at once, the running call ends on its own, exit 0."""

from __future__ import annotations

import asyncio
import secrets
import socket

import httpx
import pytest

from tests import gateway_client
from tests.audiogen import place
from tests.gateway_server import gateway
from tests.servers import free_port
from voicebot.models.tts.piper import PiperTextToSpeech

TOKEN = "drain-token"


def options(sip_port: int) -> bytes:
    """One out-of-dialog OPTIONS, as a dispatcher's probe; the response's bytes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.sendto((
            f"OPTIONS sip:bot@127.0.0.1:{sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
            f"From: <sip:probe@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:bot@127.0.0.1>\r\nCall-ID: {secrets.token_hex(8)}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode(), ("127.0.0.1", sip_port))  # fmt: skip
        return s.recv(65535)


def test_admin_drain_tells_probes_then_exits(tmp_path, voice: PiperTextToSpeech) -> None:  # type: ignore[no-untyped-def]
    sip_port = free_port()
    with gateway(tmp_path, VOICEBOT_ENGINES__TTS="espeak", VOICEBOT_ENGINES__STT_MODEL="tiny.en",
                 VOICEBOT_SIP_PORT=str(sip_port), VOICEBOT_API_TOKEN=TOKEN) as server:  # fmt: skip
        auth = {"Authorization": f"Bearer {TOKEN}"}
        ready = httpx.get(f"{server.http}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert options(sip_port).startswith(b"SIP/2.0 200 ")
        assert httpx.post(f"{server.http}/v1/admin/drain").status_code == 401
        audio = place(5.0, (0.3, voice.synthesize_sync("Hello there.")))

        async def scenario():  # type: ignore[no-untyped-def]
            running = asyncio.create_task(gateway_client.call(f"{server.ws}?token={TOKEN}", audio))
            await asyncio.sleep(1.0)
            async with httpx.AsyncClient() as client:
                drain = await client.post(f"{server.http}/v1/admin/drain", headers=auth)
                probe = await asyncio.to_thread(options, sip_port)
                readyz = await client.get(f"{server.http}/readyz")
                health = await client.get(f"{server.http}/healthz")
            refused = await gateway_client.expect_close(f"{server.ws}?token={TOKEN}")
            return drain, probe, readyz, health, refused, await running

        drain, probe, readyz, health, refused, got = asyncio.run(scenario())
        assert drain.status_code == 202, drain.text
        assert drain.json()["status"] == "draining" and drain.json()["active_calls"] == 1
        assert probe.startswith(b"SIP/2.0 503 ") and b"\r\nRetry-After: " in probe, probe
        assert readyz.status_code == 503 and readyz.json()["status"] == "draining"
        assert health.status_code == 200
        assert refused[0] == 1013
        # The running call was not cut: it ended when the caller's audio did.
        assert got.of("call_ended")[0]["reason"] == "caller_hangup"
        assert server.proc.wait(20) == 0


@pytest.mark.parametrize("max_calls", ["1"])
def test_readyz_and_options_say_full(tmp_path, voice: PiperTextToSpeech, max_calls: str) -> None:  # type: ignore[no-untyped-def]
    sip_port = free_port()
    with gateway(tmp_path, VOICEBOT_ENGINES__TTS="espeak", VOICEBOT_ENGINES__STT_MODEL="tiny.en",
                 VOICEBOT_SIP_PORT=str(sip_port),
                 VOICEBOT_SERVER__MAX_CALLS=max_calls) as server:  # fmt: skip
        audio = place(4.0, (0.3, voice.synthesize_sync("Hello there.")))

        async def scenario():  # type: ignore[no-untyped-def]
            running = asyncio.create_task(gateway_client.call(server.ws, audio))
            await asyncio.sleep(1.0)
            async with httpx.AsyncClient() as client:
                full = await client.get(f"{server.http}/readyz")
            probe = await asyncio.to_thread(options, sip_port)
            await running
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient() as client:
                again = await client.get(f"{server.http}/readyz")
            return full, probe, again

        full, probe, again = asyncio.run(scenario())
        assert full.status_code == 503 and full.json()["reason"] == "full"
        assert probe.startswith(b"SIP/2.0 503 "), probe
        assert again.status_code == 200
