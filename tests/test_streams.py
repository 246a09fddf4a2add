"""CPaaS media streams (`WS /v1/streams/{twilio,telnyx,vonage}`) as the providers meet them:
a real `voicebot serve`, provider clients (tests/stream_clients.py) streaming generated
speech in real time; a turn, a barge-in, marks, DTMF and custom parameters in the call
record, bad frames and bad tokens closed with the right code while the server goes on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any

import httpx
import numpy as np
import pytest

from tests import stream_clients
from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from voicebot.audio.resample import resample_whole
from voicebot.gateway.streams.telnyx import Reorder
from voicebot.models.tts.piper import PiperTextToSpeech
from voicebot.models.vad import detect_speech_segments

SR = 16000
TOKEN = "str3ams"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = "What is the balance on my account?"
INTERRUPTION = "Actually I would like to hear about my order instead."


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    with gateway(
        tmp_path_factory.mktemp("streams"),
        VOICEBOT_API_TOKEN=TOKEN,
        VOICEBOT_ENGINES__STT_MODEL="tiny.en",
        VOICEBOT_ENGINES__TTS="espeak",
        VOICEBOT_SERVER__MAX_CALLS="2",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def speech(voice: PiperTextToSpeech) -> dict[str, np.ndarray]:
    return {"question": voice.synthesize_sync(QUESTION),
            "interruption": voice.synthesize_sync(INTERRUPTION)}  # fmt: skip


def url(gw: Gateway, provider: str, query: str = "") -> str:
    return f"ws://127.0.0.1:{gw.port}/v1/streams/{provider}{query}"


def record(gw: Gateway, transport: str, match: Any) -> dict[str, Any]:
    """The ended call record of `transport` whose info matches, with turns."""
    deadline = time.monotonic() + 10
    while True:
        query = {"transport": transport, "status": "ended"}
        listed = httpx.get(f"{gw.http}/v1/calls", params=query, headers=AUTH).json()["calls"]
        for summary in listed:
            full = httpx.get(f"{gw.http}/v1/calls/{summary['id']}", headers=AUTH).json()
            if match(full["info"]):
                return full
        assert time.monotonic() < deadline, f"no ended {transport} record: {listed}"
        time.sleep(0.3)


def is_speech(pcm: np.ndarray, rate: int) -> bool:
    wide = resample_whole(pcm, rate, SR) if rate != SR else pcm
    return len(wide) > SR and len(detect_speech_segments(wide)) >= 1


def check_barge_in(got: stream_clients.StreamResult, barge_at: float, talk_s: float) -> None:
    """Bot speech came back before the barge-in; then `clear`, and no bot media while the
    caller talks on."""
    assert got.clears, "no clear"
    clear_at = next(t for t in got.clears if t > barge_at)
    assert clear_at < barge_at + 1.0  # VAD onset + min speech, well within a second
    assert is_speech(got.pcm(until=clear_at), got.rate)
    assert got.audio_between(clear_at + 0.03, barge_at + talk_s) == 0


# -- bad input, bad tokens: first, so the calls below show the server kept serving -----------
START_TWILIO = json.dumps({"event": "start", "streamSid": "MZ1", "start": {
    "streamSid": "MZ1", "callSid": "CA1", "customParameters": {},
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})  # fmt: skip
START_TELNYX = json.dumps({"event": "start", "stream_id": "s1", "start": {
    "call_control_id": "v3:x", "media_format": {"encoding": "PCMU", "sample_rate": 8000,
                                                "channels": 1}}})  # fmt: skip
VONAGE_HELLO = json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"})


def _media(payload: str, **extra: object) -> str:
    return json.dumps({"event": "media", "media": {"payload": payload, "chunk": "1", **extra}})


@pytest.mark.parametrize(
    ("provider", "messages", "code", "reason"),
    [
        ("twilio", (b"\x00" * 160,), 1003, "binary"),
        ("twilio", ("{not json",), 1007, "JSON"),
        ("twilio", (_media("AAAA"),), 1003, "before start"),
        ("twilio", (START_TWILIO, _media("%%%notbase64")), 1007, "base64"),
        ("twilio", (START_TWILIO, _media("")), 1007, "0 bytes"),
        ("twilio", (START_TWILIO, "x" * 70000), 1009, "> 65536"),
        ("twilio", (START_TWILIO.replace("x-mulaw", "x-alaw"),), 1003, "media format"),
        ("telnyx", (START_TELNYX.replace("PCMU", "OPUS"),), 1003, "media format"),
        ("telnyx", (START_TELNYX, _media(base64.b64encode(b"\xff" * 9000).decode())), 1007,
         "9000 bytes"),
        ("telnyx", (json.dumps({"event": "dtmf"}),), 1003, "before start"),
        ("telnyx", (json.dumps({"event": "start", "start": "x"}),), 1007, "start"),
        ("telnyx", (START_TELNYX, json.dumps({"event": "media", "media": []})), 1007, "media"),
        ("vonage", (b"\x00" * 640,), 1003, "before websocket:connected"),
        ("vonage", (VONAGE_HELLO, b"\x00" * 333), 1007, "333 bytes"),
        ("vonage", (VONAGE_HELLO.replace("16000", "44100"),), 1003, "content-type"),
        ("vonage", (VONAGE_HELLO, b"\x00" * 70000), 1009, "> 65536"),
    ],
    ids=["tw-binary", "tw-json", "tw-early-media", "tw-base64", "tw-empty", "tw-oversize",
         "tw-format", "tx-codec", "tx-size", "tx-early", "tx-start", "tx-media", "vg-early",
         "vg-size", "vg-rate", "vg-oversize"],
)  # fmt: skip
def test_malformed_frames_close_with_the_right_code(
    gw: Gateway, provider: str, messages: tuple[bytes | str, ...], code: int, reason: str
) -> None:
    got_code, got_reason = asyncio.run(
        stream_clients.expect_close(url(gw, provider), *messages, headers=AUTH)
    )
    assert (got_code, reason in got_reason) == (code, True), got_reason


def test_what_a_provider_may_add_is_ignored(gw: Gateway) -> None:
    outbound = json.dumps({"event": "media", "media": {"track": "outbound", "payload": "AAAA"}})
    later = json.dumps({"event": "some_future_event", "streamSid": "MZ1"})
    stop = json.dumps({"event": "stop", "streamSid": "MZ1"})
    code, reason = asyncio.run(stream_clients.expect_close(
        url(gw, "twilio"), START_TWILIO, outbound, later, _media("AAAA"), stop, headers=AUTH,
    ))  # fmt: skip
    assert code == 1000 and "stopped" in reason

    async def vonage() -> int | None:
        import websockets

        async with websockets.connect(url(gw, "vonage"), additional_headers=AUTH) as ws:
            for message in (VONAGE_HELLO, json.dumps({"event": "websocket:cleared"}),
                            json.dumps({"event": "websocket:dtmf", "digit": "x"}),
                            b"\x00" * 640):  # fmt: skip
                await ws.send(message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.recv(), 1.0)  # nothing comes, nor a close
            return ws.close_code

    assert asyncio.run(vonage()) is None  # still up after 1 s


def test_bad_frames_are_logged_once_with_the_call_id(gw: Gateway) -> None:
    asyncio.run(stream_clients.expect_close(url(gw, "twilio"), START_TWILIO, _media("!!"),
                                            headers=AUTH))  # fmt: skip
    lines = [line for line in gw.log().splitlines() if "twilio-" in line and "1007" in line]
    assert lines and all(len(line) < 400 for line in lines)


@pytest.mark.parametrize(
    ("provider", "start"),
    [("twilio", START_TWILIO), ("telnyx", START_TELNYX), ("vonage", VONAGE_HELLO)],
)
def test_the_bearer_token_guards_the_streams(gw: Gateway, provider: str, start: str) -> None:
    wrong = {"Authorization": "Bearer nope"}
    assert asyncio.run(stream_clients.expect_close(url(gw, provider), headers=wrong))[0] == 1008
    code, _ = asyncio.run(stream_clients.expect_close(url(gw, provider, "?token=nope")))
    assert code == 1008
    # Neither: the start message must carry it (a custom parameter / header `token`).
    code, reason = asyncio.run(stream_clients.expect_close(url(gw, provider), start))
    assert code == 1008 and "unauthorized" in reason


def test_admission_refusals_close_with_1013(gw: Gateway) -> None:
    async def scenario() -> tuple[int, str]:
        import websockets

        held = [await websockets.connect(url(gw, "vonage"), additional_headers=AUTH)
                for _ in range(2)]  # fmt: skip
        try:
            for ws in held:
                await ws.send(VONAGE_HELLO)
            await asyncio.sleep(0.5)
            return await stream_clients.expect_close(url(gw, "twilio"), headers=AUTH)
        finally:
            for ws in held:
                await ws.close()

    code, reason = asyncio.run(scenario())
    assert code == 1013 and "try again later" in reason


def test_reorder_puts_frames_back_in_order() -> None:
    buf = Reorder(depth=3)
    out = [x for seq in (1, 3, 2, 4, 6, 5, 2, 7) for x in buf.push(seq, seq)]
    assert out == [1, 2, 3, 4, 5, 6, 7] and buf.late == 1
    # A lost frame is waited for at most `depth` frames, then given up.
    lost = Reorder(depth=2)
    got = [x for seq in (1, 3, 4, 5, 6) for x in lost.push(seq, seq)]
    assert got == [1, 3, 4, 5, 6]


# -- calls ---------------------------------------------------------------------------------
def test_twilio_turn_marks_barge_in_dtmf_and_parameters(
    gw: Gateway, speech: dict[str, np.ndarray]
) -> None:
    q, intr = speech["question"], speech["interruption"]
    barge_at = 15.5  # the first answer (about 5.8 s of espeak from ~3.3 s) has ended by 11
    audio = place(barge_at + 3.5, (0.5, q), (11.0, q), (barge_at, intr))
    params = {"customer_id": "c-42", "from": "+15550001111", "to": "+15550002222"}
    got = asyncio.run(stream_clients.twilio_call(  # the token as a <Parameter>, as Twilio can
        url(gw, "twilio"), resample_whole(audio, SR, 8000),
        params={**params, "token": TOKEN}, dtmf={1.0: "5", 1.2: "#"},
    ))  # fmt: skip
    # The first answer, played whole: speech, 20 ms of µ-law per message.
    assert {len(a) for _, a in got.audio} == {160}
    assert is_speech(got.pcm(until=11.0), 8000)
    # A mark after each sentence, once its audio was sent; all echoed as they played.
    first = [(t, name, n) for t, name, n in got.marks if t < 11.0]
    assert len(first) >= 2, got.marks
    counts = [n for *_, n in first]
    assert all(n > 0 for n in counts) and counts == sorted(counts)
    assert {name for _, name, _ in first} <= {name for _, name in got.echoed}
    check_barge_in(got, barge_at, len(intr) / SR)
    rec = record(gw, "twilio", lambda info: info.get("callSid") == got.call_ref)
    assert rec["dtmf"] == "5#"
    assert rec["from"] == "+15550001111" and rec["to"] == "+15550002222"
    assert rec["info"]["variables"] == params and rec["info"]["streamSid"].startswith("MZ")
    assert rec["id"].startswith("twilio-")
    assert "balance" in rec["turns"][0]["text"].lower()
    assert any(t["interrupted"] for t in rec["turns"] if t["speaker"] == "bot")


def test_telnyx_out_of_order_frames_turn_and_barge_in(
    gw: Gateway, speech: dict[str, np.ndarray]
) -> None:
    q, intr = speech["question"], speech["interruption"]
    barge_at = 6.5
    audio = place(barge_at + 3.5, (0.5, q), (barge_at, intr))
    got = asyncio.run(stream_clients.telnyx_call(
        url(gw, "telnyx", f"?token={TOKEN}"), resample_whole(audio, SR, 8000), encoding="PCMA",
        params={"customer_id": "t-9"},
    ))  # fmt: skip
    assert {len(a) for _, a in got.audio} == {160}
    check_barge_in(got, barge_at, len(intr) / SR)
    rec = record(gw, "telnyx", lambda info: info.get("call_control_id") == got.call_ref)
    assert rec["from"] == "+13122010094" and rec["info"]["variables"] == {"customer_id": "t-9"}
    assert rec["variables"] == {"customer_id": "t-9"}  # the call's variables (normalised)
    assert rec["info"]["encoding"] == "PCMA"
    assert "balance" in rec["turns"][0]["text"].lower()  # heard in order


def test_vonage_turn_barge_in_and_dtmf(gw: Gateway, speech: dict[str, np.ndarray]) -> None:
    q, intr = speech["question"], speech["interruption"]
    barge_at = 6.5
    audio = place(barge_at + 3.5, (0.5, q), (barge_at, intr))
    ref = f"vonage-{time.monotonic_ns()}"
    got = asyncio.run(stream_clients.vonage_call(
        url(gw, "vonage"), audio, call_headers={"customer_id": ref, "from": "447700900000"},
        dtmf={1.0: "7"}, headers=AUTH,
    ))  # fmt: skip
    assert {len(a) for _, a in got.audio} == {320}  # 20 ms of L16 at 16 kHz
    check_barge_in(got, barge_at, len(intr) / SR)
    rec = record(gw, "vonage", lambda info: info.get("variables", {}).get("customer_id") == ref)
    assert rec["dtmf"] == "7" and rec["from"] == "447700900000"
    assert rec["variables"]["customer_id"] == ref and rec["variables"]["from"] == "447700900000"
    assert "balance" in rec["turns"][0]["text"].lower()
