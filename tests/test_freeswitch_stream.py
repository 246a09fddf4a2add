"""FreeSWITCH mod_audio_stream calls against a real `voicebot serve`: a WebSocket peer
written from the module's wire format (metadata text first, binary L16 in, `streamAudio`
JSON out) streams generated speech in real time at 8 and 16 kHz; turns, barge-in, the
metadata in the call record, the bearer token."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
import websockets

from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from tests.pbx_clients import freeswitch_call
from voicebot.models.tts.piper import PiperTextToSpeech
from voicebot.models.vad import detect_speech_segments

SR = 16000
TOKEN = "fs-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    with gateway(
        tmp_path_factory.mktemp("freeswitch"),
        VOICEBOT_API_TOKEN=TOKEN,
        VOICEBOT_ENGINES__STT_MODEL="tiny.en",
        VOICEBOT_ENGINES__TTS="espeak",
    ) as server:
        yield server


def url(gw: Gateway, query: str = "") -> str:
    return f"ws://127.0.0.1:{gw.port}/v1/streams/freeswitch{query}"


def record_of(gw: Gateway, call_uuid: str, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        calls = httpx.get(
            f"{gw.http}/v1/calls", params={"transport": "freeswitch"}, headers=AUTH
        ).json()
        for summary in calls["calls"]:
            record = httpx.get(f"{gw.http}/v1/calls/{summary['id']}", headers=AUTH).json()
            variables = record["info"].get("variables") or {}
            if variables.get("call_uuid") == call_uuid and record["ended_at"]:
                return record
        assert time.monotonic() < deadline, f"no ended record for {call_uuid}: {calls}"
        time.sleep(0.3)


def test_a_turn_at_8k_keeps_the_metadata(fs: Gateway, voice: PiperTextToSpeech) -> None:
    call_uuid = str(uuid.uuid4())
    metadata = {"call_uuid": call_uuid, "from": "+15551230000", "to": "100", "lang": "en"}
    audio = place(8.0, (0.5, voice.synthesize_sync("What is the balance on my account?")))
    got = asyncio.run(
        freeswitch_call(url(fs, "?rate=8k"), audio, rate=8000, metadata=metadata, headers=AUTH)
    )
    assert got.tags == {8000}, got.tags  # streamAudio sampleRate: the stream's rate
    assert got.frame_bytes == {320}  # 20 ms at 8 kHz a message, in real time
    bot = got.bot_audio_16k(8000)
    assert len(bot) > 1.5 * SR
    assert len(detect_speech_segments(bot)) >= 1
    record = record_of(fs, call_uuid)
    assert record["info"]["variables"] == metadata
    assert record["variables"] == metadata  # its scalars are the call's variables
    assert (record["from"], record["to"]) == ("+15551230000", "100")
    assert record["info"]["sample_rate"] == 8000
    assert record["end_reason"] == "caller_hangup"
    caller = [t for t in record["turns"] if t["speaker"] == "user"]
    assert caller and "balance" in caller[0]["text"].lower()


def test_barge_in_stops_the_bot_at_16k(fs: Gateway, voice: PiperTextToSpeech) -> None:
    question = voice.synthesize_sync("What is the balance on my account?")
    interruption = voice.synthesize_sync("I want to speak to somebody else about my order.")
    audio = place(12.0, (0.5, question), (5.5, interruption))
    got = asyncio.run(
        freeswitch_call(url(fs), audio, metadata={"call_uuid": "b"}, headers=AUTH, linger_s=0)
    )
    assert got.tags == {16000}
    assert got.frame_bytes == {640}
    assert got.audio_between(4.5, 5.5) > 0.5 * SR, "the bot was not speaking at the barge-in"
    caller_end = 5.5 + len(interruption) / SR
    assert got.audio_between(5.9, caller_end) == 0


def test_the_bearer_token_is_required(fs: Gateway) -> None:
    async def attempt(headers: dict[str, str] | None) -> int | None:
        async with websockets.connect(url(fs), additional_headers=headers) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code

    assert asyncio.run(attempt(None)) == 1008
    assert asyncio.run(attempt({"Authorization": "Bearer wrong"})) == 1008


def test_bad_audio_closes_only_that_stream(fs: Gateway) -> None:
    async def bad(message: bytes) -> int | None:
        async with websockets.connect(url(fs), additional_headers=AUTH) as ws:
            await ws.send('{"call_uuid": "bad"}')
            await ws.send(message)
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code

    assert asyncio.run(bad(bytes(321))) == 1003  # not 16-bit samples
    assert asyncio.run(bad(bytes(40000))) == 1009  # over a second of 16 kHz L16
    assert httpx.get(f"{fs.http}/healthz").json()["status"] == "ok"
