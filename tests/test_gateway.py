"""The gateway as a user meets it: `voicebot serve` in its own process, WebSocket callers
streaming generated speech in real time, HTTP endpoints, limits and bad input, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import gateway_client
from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from voicebot.audio.resample import resample_whole
from voicebot.models.tts.piper import PiperTextToSpeech
from voicebot.models.vad import detect_speech_segments

SR = 16000


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    with gateway(tmp_path_factory.mktemp("gw")) as server:
        yield server


@pytest.fixture(scope="module")
def strict_gw(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    with gateway(
        tmp_path_factory.mktemp("strict"),
        VOICEBOT_API_TOKEN="s3cret",
        VOICEBOT_SERVER__MAX_CALLS="2",
        VOICEBOT_SERVER__WS_IDLE_TIMEOUT_S="1.5",
        VOICEBOT_ENGINES__TTS="espeak",
        VOICEBOT_ENGINES__STT_MODEL="tiny.en",
    ) as server:
        yield server


def test_a_turn_over_the_websocket(gw: Gateway, voice: PiperTextToSpeech) -> None:
    audio = place(12.0, (0.5, voice.synthesize_sync("Hi, what is the balance on my account?")))
    got = asyncio.run(gateway_client.call(gw.ws, audio))
    kinds = [e["type"] for e in got.events if e["type"] != "vad"]
    assert kinds[:2] == ["call_started", "state"]
    flow = [k for k in kinds if k in ("speech_start", "speech_end", "transcript", "bot_text")]
    assert flow[:4] == ["speech_start", "speech_end", "transcript", "bot_text"]
    states = [e["state"] for e in got.of("state")]
    assert states[:5] == ["WAITING_FOR_SPEECH", "LISTENING", "THINKING", "SPEAKING",
                          "WAITING_FOR_SPEECH"]  # fmt: skip
    assert "balance" in got.of("transcript")[0]["text"].lower()
    assert got.of("bot_text")[0]["text"].startswith("Your account balance is")
    assert got.of("vad") and max(e["probability"] for e in got.of("vad")) > 0.9
    bot = np.concatenate([a for _, a in got.audio])
    assert len(bot) > 2 * SR
    assert len(detect_speech_segments(bot)) >= 1
    assert got.close_code == 1000


def test_barge_in_clears_and_silences_the_bot(gw: Gateway, voice: PiperTextToSpeech) -> None:
    question = voice.synthesize_sync("What is the balance on my account?")
    # One breath (see test_sip): "Stop, stop," alone may rightly end a turn at its pause.
    interruption = voice.synthesize_sync("I want to speak to somebody else about my order.")
    audio = place(14.0, (0.5, question), (5.5, interruption))
    got = asyncio.run(gateway_client.call(gw.ws, audio))
    assert len(got.of("interrupted")) == 1
    assert got.clears, "no clear message"
    barge = got.of("interrupted")[0]
    assert 0 < barge["latency_ms"] <= 150
    clear_at = got.clears[0]
    # After the clear, no bot audio arrives while the caller is still talking.
    caller_end = 5.5 + len(interruption) / SR
    assert got.audio_between(clear_at + 0.05, caller_end) == 0
    # The clear came before the interruption event and right after its speech_start.
    assert clear_at <= barge["_arrival"] + 0.001


def test_other_sample_rates(gw: Gateway, voice: PiperTextToSpeech) -> None:
    audio = place(7.0, (0.5, voice.synthesize_sync("What is the balance on my account?")))
    audio48 = resample_whole(audio, SR, 48000)
    got = asyncio.run(gateway_client.call(gw.ws, audio48, sample_rate=48000))
    assert "balance" in got.of("transcript")[0]["text"].lower()
    sizes = {len(a) for _, a in got.audio}
    assert sizes == {960}  # 20 ms at 48 kHz


def test_http_endpoints(gw: Gateway) -> None:
    health = httpx.get(f"{gw.http}/healthz").json()
    assert health["status"] == "ok" and health["active_calls"] == 0
    # Start-up timed this machine at a call's work and scaled the admission prior by it.
    cpu = health["cpu"]
    assert 0.5 <= cpu["calibration"] <= 4.0
    assert cpu["per_call"] == pytest.approx(0.015 * cpu["calibration"], abs=1e-4)
    page = httpx.get(f"{gw.http}/")
    assert page.status_code == 200 and "<title>voicebot</title>" in page.text
    for asset in ("app.js", "capture-worklet.js", "playback-worklet.js", "style.css"):
        assert httpx.get(f"{gw.http}/static/{asset}").status_code == 200
    metrics = httpx.get(f"{gw.http}/metrics").text
    for name in ("voicebot_active_calls", "voicebot_calls_total", "voicebot_vad_window_seconds",
                 "voicebot_barge_in_latency_seconds", "voicebot_end_of_turn_latency_seconds",
                 "voicebot_engine_errors_total", "voicebot_caller_segment_ends_total"):  # fmt: skip
        assert name in metrics
    assert 'voicebot_calls_total{reason="caller_hangup",transport="ws"}' in metrics


@pytest.mark.parametrize(
    ("messages", "code", "reason"),
    [
        ((b"\x01\x02\x03",), 1003, "16-bit"),
        ((b"\x00" * 40000,), 1009, "40000 bytes"),
        (("this is not json",), 1003, "JSON"),
        ((json.dumps({"type": "dance"}),), 1003, "unknown message type"),
        ((json.dumps({"type": "start", "sample_rate": 44100}),), 1003, "44100"),
        ((b"\x00" * 640, json.dumps({"type": "start", "sample_rate": 8000})), 1003, "before"),
    ],
    ids=["odd-bytes", "oversize", "not-json", "unknown-type", "bad-rate", "late-start"],
)
def test_bad_input_gets_the_right_close_code(gw: Gateway, messages, code: int, reason: str) -> None:
    got_code, got_reason = asyncio.run(gateway_client.expect_close(gw.ws, *messages))
    assert got_code == code and reason in got_reason


def test_bad_callers_do_not_disturb_a_good_one(gw: Gateway, voice: PiperTextToSpeech) -> None:
    audio = place(8.0, (0.5, voice.synthesize_sync("What is the balance on my account?")))

    async def scenario():  # type: ignore[no-untyped-def]
        good = asyncio.create_task(gateway_client.call(gw.ws, audio))
        await asyncio.sleep(1.0)
        bad = [
            gateway_client.expect_close(gw.ws, b"\x01"),
            gateway_client.expect_close(gw.ws, b"\x00" * 100_000),
            gateway_client.expect_close(gw.ws, "{{{"),
        ]
        codes = await asyncio.gather(*bad)
        return await good, codes

    got, codes = asyncio.run(scenario())
    assert [c for c, _ in codes] == [1003, 1009, 1003]
    assert got.close_code == 1000
    assert got.of("bot_text") and "balance" in got.of("transcript")[0]["text"].lower()


def test_auth_capacity_and_idle_limits(strict_gw: Gateway) -> None:
    url = strict_gw.ws
    assert asyncio.run(gateway_client.expect_close(url))[0] == 1008
    wrong = {"Authorization": "Bearer nope"}
    assert asyncio.run(gateway_client.expect_close(url, headers=wrong))[0] == 1008

    async def capacity():  # type: ignore[no-untyped-def]
        silence = np.zeros(3 * SR, np.int16)
        auth = {"Authorization": "Bearer s3cret"}
        first = asyncio.create_task(gateway_client.call(url, silence, headers=auth))
        second = asyncio.create_task(gateway_client.call(f"{url}?token=s3cret", silence))
        await asyncio.sleep(1.0)
        third = await gateway_client.expect_close(url, headers=auth)
        return third, await first, await second

    third, first, second = asyncio.run(capacity())
    assert third[0] == 1013 and "try again later" in third[1]
    assert first.close_code == 1000 and second.close_code == 1000
    assert first.of("call_started") and second.of("call_started")

    async def idle():  # type: ignore[no-untyped-def]
        import websockets

        async with websockets.connect(f"{url}?token=s3cret") as ws:
            t0 = time.monotonic()
            async for _ in ws:
                pass
            return ws.close_code, ws.close_reason, time.monotonic() - t0

    code, reason, waited = asyncio.run(idle())
    assert code == 1000 and "idle" in reason and 1.0 < waited < 5.0


def test_sigterm_drains_calls_then_exits_zero(tmp_path: Path, voice: PiperTextToSpeech) -> None:
    with gateway(tmp_path, VOICEBOT_ENGINES__TTS="espeak",
                 VOICEBOT_ENGINES__STT_MODEL="tiny.en") as server:  # fmt: skip
        audio = place(4.0, (0.3, voice.synthesize_sync("Hello there.")))

        async def scenario():  # type: ignore[no-untyped-def]
            running = asyncio.create_task(gateway_client.call(server.ws, audio))
            await asyncio.sleep(1.0)
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            refused = await gateway_client.expect_close(server.ws)
            health = httpx.get(f"{server.http}/healthz")
            ready = httpx.get(f"{server.http}/readyz")
            return await running, refused, health, ready

        got, refused, health, ready = asyncio.run(scenario())
        assert refused[0] == 1013 and "shutting down" in refused[1]
        # Alive but not taking calls: a load balancer takes it out, nobody restarts it.
        assert health.status_code == 200 and health.json()["status"] == "draining"
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert int(ready.headers["retry-after"]) > 0
        assert got.close_code == 1000 and got.of("call_ended")[0]["reason"] == "caller_hangup"
        assert server.proc.wait(15) == 0
