"""Asterisk AudioSocket calls against a real `voicebot serve`: a TCP peer written from the
wire format streams generated speech in real time at 8 kHz (0x10) and 16 kHz (0x11, 0x12);
turns, barge-in, DTMF and the UUID in the call record, hang-ups both ways, bad input."""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from tests.pbx_clients import (
    DTMF,
    SLIN8,
    SLIN16_A,
    SLIN16_B,
    UUID,
    audiosocket_call,
    audiosocket_raw,
    frame,
)  # fmt: skip
from tests.servers import free_port
from voicebot.models.tts.piper import PiperTextToSpeech
from voicebot.models.vad import detect_speech_segments

SR = 16000


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    port = free_port()
    with gateway(
        tmp_path_factory.mktemp("audiosocket"),
        VOICEBOT_AUDIOSOCKET_PORT=str(port),
        VOICEBOT_AUDIOSOCKET__IDLE_TIMEOUT_S="1.5",
        VOICEBOT_ENGINES__STT_MODEL="tiny.en",
        VOICEBOT_ENGINES__TTS="espeak",
    ) as server:
        server.audiosocket_port = port  # type: ignore[attr-defined]
        yield server


def port_of(gw: Gateway) -> int:
    return gw.audiosocket_port  # type: ignore[attr-defined,no-any-return]


def record_of(gw: Gateway, call_uuid: uuid.UUID, timeout_s: float = 10.0) -> dict[str, Any]:
    """The ended call record whose info has this UUID."""
    deadline = time.monotonic() + timeout_s
    while True:
        calls = httpx.get(f"{gw.http}/v1/calls", params={"transport": "audiosocket"}).json()
        for summary in calls["calls"]:
            record = httpx.get(f"{gw.http}/v1/calls/{summary['id']}").json()
            if record["info"].get("uuid") == str(call_uuid) and record["ended_at"]:
                return record
        assert time.monotonic() < deadline, f"no ended record for {call_uuid}: {calls}"
        time.sleep(0.3)


def test_a_turn_at_8k_with_dtmf_and_caller_hangup(pbx: Gateway, voice: PiperTextToSpeech) -> None:
    call_uuid = uuid.uuid4()
    audio = place(8.0, (0.5, voice.synthesize_sync("What is the balance on my account?")))
    got = asyncio.run(
        audiosocket_call(port_of(pbx), audio, kind=SLIN8, call_uuid=call_uuid,
                         dtmf=((6.5, "4"), (6.8, "2")))
    )  # fmt: skip
    assert got.tags == {SLIN8}, got.tags  # answered in the kind it was called in
    assert got.frame_bytes == {320}  # 20 ms at 8 kHz
    bot = got.bot_audio_16k(8000)
    assert len(bot) > 1.5 * SR
    assert len(detect_speech_segments(bot)) >= 1
    assert got.closed_at is not None  # our 0x00 ended the call: the gateway closed
    record = record_of(pbx, call_uuid)
    assert record["end_reason"] == "caller_hangup"
    assert record["dtmf"] == "42"
    assert record["info"]["from"].startswith("audiosocket:127.0.0.1:")
    assert record["from"] == record["info"]["from"]
    caller = [t for t in record["turns"] if t["speaker"] == "user"]
    assert caller and "balance" in caller[0]["text"].lower()


def test_barge_in_stops_the_bot_at_16k(pbx: Gateway, voice: PiperTextToSpeech) -> None:
    question = voice.synthesize_sync("What is the balance on my account?")
    interruption = voice.synthesize_sync("I want to speak to somebody else about my order.")
    audio = place(12.0, (0.5, question), (5.5, interruption))
    got = asyncio.run(audiosocket_call(port_of(pbx), audio, kind=SLIN16_B))
    assert got.tags == {SLIN16_B}
    assert got.frame_bytes == {640}  # 20 ms at 16 kHz
    assert got.audio_between(4.5, 5.5) > 0.5 * SR, "the bot was not speaking at the barge-in"
    caller_end = 5.5 + len(interruption) / SR
    # Cut within the VAD's reaction (and the 20 ms pacing): nothing while the caller talks.
    assert got.audio_between(5.9, caller_end) == 0


def test_bad_input_ends_only_its_connection(pbx: Gateway, voice: PiperTextToSpeech) -> None:
    port = port_of(pbx)
    first = frame(UUID, uuid.uuid4().bytes)
    bad = [
        first + struct.pack(">BH", 0x42, 0),  # unknown kind
        frame(SLIN8, bytes(320)),  # no UUID first
        first + struct.pack(">BH", SLIN8, 320) + bytes(100),  # truncated (then silence)
        first + struct.pack(">BH", SLIN8, 60000),  # oversized
        first + frame(DTMF, b"5"),  # then silent past the idle timeout
        first + frame(SLIN8, bytes(321)),  # odd audio length
    ]

    async def all_bad() -> list[float | None]:
        return await asyncio.gather(*(audiosocket_raw(port, data) for data in bad))

    closed = asyncio.run(all_bad())
    assert all(t is not None and t < 4.5 for t in closed), closed
    health = httpx.get(f"{pbx.http}/healthz").json()
    assert health["status"] == "ok"
    assert health["audiosocket"]["bad_input"] >= len(bad)
    assert health["audiosocket"]["port"] == port
    # The next call works, at 16 kHz with the other kind value.
    call_uuid = uuid.uuid4()
    audio = place(6.0, (0.5, voice.synthesize_sync("What is the balance on my account?")))
    got = asyncio.run(audiosocket_call(port, audio, kind=SLIN16_A, call_uuid=call_uuid))
    assert got.tags == {SLIN16_A}
    assert got.frame_bytes == {640}
    assert len(detect_speech_segments(got.bot_audio_16k(SR))) >= 1
    record = record_of(pbx, call_uuid)
    assert record["info"]["uuid"] == str(call_uuid)
    assert record["end_reason"] == "caller_hangup"


def test_bot_hangup_sends_0x00_then_closes(pbx: Gateway, voice: PiperTextToSpeech) -> None:
    call_uuid = uuid.uuid4()
    audio = place(8.0, (0.5, voice.synthesize_sync("Thank you, goodbye.")))
    got = asyncio.run(audiosocket_call(port_of(pbx), audio, call_uuid=call_uuid, hang_up=False))
    assert got.audio, "no goodbye"
    assert got.hangup_at is not None and got.closed_at is not None
    assert got.hangup_at <= got.closed_at < 8.0  # before the caller's audio ran out
    assert record_of(pbx, call_uuid)["end_reason"] == "bot_hangup"


def test_a_refused_call_gets_a_hangup(tmp_path: Path) -> None:
    port = free_port()
    with gateway(
        tmp_path,
        VOICEBOT_AUDIOSOCKET_PORT=str(port),
        VOICEBOT_ENGINES__STT_MODEL="tiny.en",
        VOICEBOT_ENGINES__TTS="espeak",
        VOICEBOT_SERVER__MAX_CALLS="1",
        VOICEBOT_SERVER__WARM_UP="false",
    ) as gw:

        async def two_calls() -> tuple[Any, Any]:
            one = asyncio.create_task(audiosocket_call(port, place(3.0)))
            async with httpx.AsyncClient() as http:
                while (await http.get(f"{gw.http}/healthz")).json()["active_calls"] < 1:
                    await asyncio.sleep(0.05)
            two = await audiosocket_call(port, place(1.0), hang_up=False, wait_s=2.0)
            return await one, two

        first, refused = asyncio.run(two_calls())
        assert first.closed_at is not None
        assert refused.hangup_at is not None and refused.closed_at is not None
        assert not refused.audio
        health = httpx.get(f"{gw.http}/healthz").json()
        assert health["audiosocket"]["refused"] == 1
        metrics = httpx.get(f"{gw.http}/metrics").text
        assert 'reason="capacity",transport="audiosocket"' in metrics
