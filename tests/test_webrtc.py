"""The WebRTC leg with aiortc as the browser: a turn, barge-in, bad offers, no leaks."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from tests.webrtc_client import connect_and_leave, rtc_call
from voicebot.models.tts.piper import PiperTextToSpeech
from voicebot.models.vad import detect_speech_segments

SR = 16000


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    with gateway(tmp_path_factory.mktemp("rtc"), VOICEBOT_WEBRTC__LOOPBACK_ONLY="true") as server:
        yield server


def test_a_turn_over_webrtc(gw: Gateway, voice: PiperTextToSpeech) -> None:
    audio = place(12.0, (0.8, voice.synthesize_sync("Hi, what is the balance on my account?")))
    got = asyncio.run(rtc_call(gw.http, audio, seconds=12.0))
    assert got.of("call_started"), got.events[:3]
    assert "balance" in got.of("transcript")[0]["text"].lower()
    assert got.of("bot_text")[0]["text"].startswith("Your account balance is")
    bot = got.audio16k()
    assert len(bot) > 8 * SR  # the track runs the whole call: silence and speech
    segments = detect_speech_segments(bot)
    assert segments and sum(s.end - s.start for s in segments) > 2.0
    # pts advance by exactly one 20 ms frame each time: continuous across silence and speech.
    steps = np.diff(np.array(got.pts))
    assert len(steps) > 400 and np.all(steps == 960)


def test_barge_in_over_webrtc(gw: Gateway, voice: PiperTextToSpeech) -> None:
    question = voice.synthesize_sync("What is the balance on my account?")
    # One breath (see test_sip): "Stop, stop," alone may rightly end a turn at its pause.
    interruption = voice.synthesize_sync("I need to talk to somebody about my order.")
    audio = place(14.0, (0.8, question), (5.8, interruption))
    got = asyncio.run(rtc_call(gw.http, audio, seconds=12.0))
    assert len(got.of("interrupted")) == 1
    barge = got.of("interrupted")[0]
    # Frames received after the interruption was announced: the bot is silent within 100 ms.
    after = [a for t, a in got.audio if barge["_arrival"] + 0.1 <= t < barge["_arrival"] + 1.5]
    assert after, "audio track stopped altogether"
    assert max(np.abs(a).max() for a in after) < 200


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json at all", "JSON"),
        (b'{"sdp": 5, "type": "offer"}', "'sdp' string"),
        (b'{"sdp": "v=0", "type": "answer"}', "type must be 'offer'"),
        (b'{"sdp": "this is not sdp\\r\\nat all", "type": "offer"}', "SDP"),
        (
            b'{"sdp": "v=0\\r\\no=- 1 1 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\n'
            b"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\\r\\nc=IN IP4 0.0.0.0\\r\\n"
            b'a=mid:0\\r\\na=sctp-port:5000\\r\\n", "type": "offer"}',
            "no audio m-line",
        ),
    ],
    ids=["not-json", "sdp-not-string", "wrong-type", "garbage-sdp", "no-audio"],
)
def test_bad_offers_get_400_with_a_reason(gw: Gateway, body: bytes, reason: str) -> None:
    response = httpx.post(f"{gw.http}/webrtc/offer", content=body)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert httpx.get(f"{gw.http}/healthz").json()["status"] == "ok"


def test_fifty_calls_leave_nothing_behind(gw: Gateway) -> None:
    def health() -> dict:
        return httpx.get(f"{gw.http}/healthz").json()

    async def cycles() -> None:
        for _ in range(50):
            await connect_and_leave(gw.http, hold_s=0.2)

    asyncio.run(connect_and_leave(gw.http))  # warm: first-call allocations are not leaks
    time.sleep(1.0)
    baseline = health()["tasks"]
    asyncio.run(cycles())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        h = health()
        if h["webrtc_peers"] == 0 and h["active_calls"] == 0 and h["tasks"] <= baseline:
            break
        time.sleep(0.5)
    h = health()
    assert h["webrtc_peers"] == 0 and h["active_calls"] == 0
    assert h["tasks"] <= baseline, (h["tasks"], baseline)
