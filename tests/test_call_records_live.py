"""A call over each leg leaves its record: `voicebot serve` with records on, real callers
(our WebSocket client, an aiortc WebRTC peer, SIPp with RTP), the API read back.

Per call: the record and its turns with their latency; the recording's left channel is the
caller's audio and its right channel what the caller received, both by cross-correlation.
The whole module runs on a SQLite file and on a real PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import numpy as np
import pytest

from tests import gateway_client, siptools
from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from tests.servers import free_port
from tests.webrtc_client import rtc_call
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import read_wav_bytes, write_wav

SR = 16000
TOKEN = "records-token"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def records_gw(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp(f"records-{request.param}")
    # No API token: the callers' legs would need it too (tests/test_calls_api.py has it).
    env = {"VOICEBOT_ENGINES__STT_MODEL": "tiny.en",
           "VOICEBOT_ENGINES__TTS": "espeak", "VOICEBOT_SIP__RTP_PORT_MIN": "22000",
           "VOICEBOT_SIP__RTP_PORT_MAX": "22099",
           "VOICEBOT_SIP_PORT": str(free_port())}  # fmt: skip
    if request.param == "postgresql":
        from tests.postgres import fresh_database

        env["VOICEBOT_DATABASE_URL"] = fresh_database(request.getfixturevalue("postgres_url"))
    with gateway(workdir, **env) as gw:
        yield gw, int(env["VOICEBOT_SIP_PORT"]), workdir


@pytest.fixture(scope="module")
def question(voice) -> np.ndarray:  # type: ignore[no-untyped-def]
    return place(7.0, (0.5, voice.synthesize_sync("Hi, what is the balance on my account?")))


def api(gw: Gateway, path: str) -> httpx.Response:
    return httpx.get(f"{gw.http}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)


def the_call(gw: Gateway, transport: str, known: set[str]) -> dict:
    """The one new ended call of `transport` (records are written just after the call)."""
    deadline = time.monotonic() + 20
    while True:
        calls = api(gw, f"/v1/calls?transport={transport}&status=ended").json()["calls"]
        new = [c for c in calls if c["id"] not in known and c["recording"]]
        if new:
            assert len(new) == 1, new
            return api(gw, f"/v1/calls/{new[0]['id']}").json()
        assert time.monotonic() < deadline, f"no {transport} record: {calls}"
        time.sleep(0.3)


def ids(gw: Gateway) -> set[str]:
    return {c["id"] for c in api(gw, "/v1/calls?limit=500").json()["calls"]}


def best_match(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Highest normalised correlation of `a` with `b` shifted by up to `max_lag` samples
    either way, and that shift (`a[i + lag]` ~ `b[i]`)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    best, where = 0.0, 0
    for lag in range(-max_lag, max_lag + 1, 1):
        x = a[max(0, lag) : len(a) + min(0, lag)]
        y = b[max(0, -lag) : len(b) + min(0, -lag)]
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
        denominator = np.sqrt((x * x).sum() * (y * y).sum())
        if denominator > 0 and (score := float((x * y).sum() / denominator)) > best:
            best, where = score, lag
    return best, where


def coarse_lag(a: np.ndarray, b: np.ndarray) -> int:
    """Where `b` sits in `a` (samples), from the cross-correlation's peak (FFT)."""
    from scipy.signal import correlate

    cc = correlate(a.astype(np.float64), b.astype(np.float64), mode="full", method="fft")
    return int(np.argmax(cc)) - (len(b) - 1)


def recording(gw: Gateway, record: dict) -> np.ndarray:
    response = api(gw, record["recording"])
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    wav = read_wav_bytes(response.content)
    assert wav.sample_rate == SR and wav.samples.shape[1] == 2
    return wav.samples


def check_record(record: dict, transport: str) -> dict:
    """Checks the record; returns the bot's first turn (what the caller received first)."""
    assert record["transport"] == transport and record["ended_at"] and record["end_reason"]
    # The question's turn and the bot's answer to it. The turn model may end a turn at the
    # comma after "Hi" (Piper's pause there is 256 ms; the model's P 0.89-0.92): then "Hi"
    # is a turn of its own, merged with the question if the caller goes on before the
    # bot's answer starts, else answered ("Hello! ...") and cut off by the question.
    user = [t for t in record["turns"] if t["speaker"] == "user"]
    asked = next((t for t in user if "balance" in t["text"].lower()), None)
    assert asked is not None, user
    bot = [t for t in record["turns"] if t["speaker"] == "bot" and t["start_s"] > asked["start_s"]]
    assert bot and bot[0]["text"].startswith("Your account balance is"), bot
    assert bot[0]["start_s"] > asked["end_s"] - 0.05
    latency = bot[0]["latency"]
    assert latency and latency["voice_to_voice_ms"] > 0 and latency["first_audio_sent"]
    kinds = [e["type"] for e in record["events"]]
    assert kinds[0] == "call_started" and kinds[-1] == "call_ended" and "turn_latency" in kinds
    return next(t for t in record["turns"] if t["speaker"] == "bot")


def check_left(left: np.ndarray, caller: np.ndarray, threshold: float) -> int:
    """The caller's audio is in the left channel (lossy legs: `threshold`); returns where."""
    lag = coarse_lag(left, caller)
    score, fine = best_match(left, np.concatenate([np.zeros(max(0, lag), np.int16), caller]), 40)
    assert score > threshold, f"left channel vs caller: {score:.3f} at {lag + fine}"
    return lag + fine


def check_left_windows(left: np.ndarray, caller: np.ndarray, threshold: float,
                       window_s: float = 0.5, share: float = 0.8) -> None:  # fmt: skip
    """The caller's speech is in the left channel, window by window: over a jittered,
    lossy leg (WebRTC under load) the server's timeline can slip by a packet or two inside
    an utterance, which one whole-signal alignment would score as different audio. Each
    voiced `window_s` of the caller must be found near where the whole signal sits, in
    order, at `threshold` or better for `share` of the windows."""
    find_in_windows(left, caller, threshold, window_s, share)


def find_in_windows(channel: np.ndarray, reference: np.ndarray, threshold: float,
                    window_s: float = 0.5, share: float = 0.8) -> None:  # fmt: skip
    """`reference` is in `channel`, window by window (see `check_left_windows`)."""
    left, caller = channel, reference
    lag = coarse_lag(left, caller)
    step, slack = int(window_s * SR), int(0.15 * SR)
    scores, lags = [], []
    for start in range(0, len(caller) - step + 1, step):
        piece = caller[start : start + step]
        if np.abs(piece).max() < 1000:  # silence between words: nothing to find
            continue
        at = max(0, lag + start - slack)
        region = left[at : lag + start + step + slack]
        if len(region) < step:
            scores.append(0.0)
            continue
        fine = coarse_lag(region, piece)
        fine = min(max(fine, 0), len(region) - step)
        score, shift = best_match(region[fine : fine + step], piece, 20)
        scores.append(score)
        lags.append(at + fine + shift - start)
    assert len(scores) >= 3, f"too little speech to compare: {len(scores)} windows"
    good = sum(s > threshold for s in scores)
    assert good >= share * len(scores), f"left channel vs caller, per window: {scores}"
    # The timeline may slip, not jump: consecutive windows within 60 ms of each other.
    assert all(abs(b - a) < 0.06 * SR for a, b in itertools.pairwise(lags)), lags


def check_right(right: np.ndarray, received: np.ndarray, bot_start_s: float, threshold: float,
                max_lag_s: float = 0.12) -> None:  # fmt: skip
    """The first second and a half of the bot's answer in the right channel is what the
    caller received first (same waveform, within `max_lag_s` of the turn's start)."""
    start = int(bot_start_s * SR)
    span = int(1.5 * SR)
    heard = received[np.flatnonzero(np.abs(received) > 200)[0] :][:span]
    window = right[max(0, start - int(max_lag_s * SR)) : start + span + int(max_lag_s * SR)]
    lag = coarse_lag(window, heard)
    part = window[max(0, lag) : max(0, lag) + len(heard)]
    score, _ = best_match(part, heard[: len(part)], 20)
    assert score > threshold, f"right channel vs what the caller got: {score:.3f}"
    # Nothing in the right channel before the bot's first turn: the bot was silent there.
    assert np.abs(right[: max(0, start - int(0.1 * SR))]).max() < 200


def test_websocket_call_record_and_recording(records_gw, question) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = records_gw
    known = ids(gw)
    got = asyncio.run(gateway_client.call(gw.ws, question))
    record = the_call(gw, "ws", known)
    bot = check_record(record, "ws")
    left, right = recording(gw, record).T
    assert check_left(left, question, 0.99) == 0  # the very samples sent, at call time 0
    received = np.concatenate([a for _, a in got.audio])
    check_right(right, received, bot["start_s"], 0.99)
    assert record["from"].startswith("127.0.0.1:") and record["to"] == "/ws"


def test_webrtc_call_record_and_recording(records_gw, question) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = records_gw
    known = ids(gw)
    got = asyncio.run(rtc_call(gw.http, question, seconds=len(question) / SR + 1.0))
    record = the_call(gw, "webrtc", known)
    bot = check_record(record, "webrtc")
    left, right = recording(gw, record).T
    check_left_windows(left, question, 0.8)  # Opus: the same speech, not the same samples
    # What the caller received, window by window too (the same slips on the way out).
    received = got.audio16k()
    heard = received[np.flatnonzero(np.abs(received) > 200)[0] :][: int(1.5 * SR)]
    start = int(bot["start_s"] * SR)
    find_in_windows(right[max(0, start - int(0.3 * SR)) : start + int(2.1 * SR)], heard, 0.8)
    assert np.abs(right[: max(0, start - int(0.1 * SR))]).max() < 200  # silent before
    assert record["from"].startswith("127.0.0.1:") and record["to"] == "/webrtc/offer"
    assert record["info"]["user_agent"].startswith("python-httpx")


def test_sip_call_record_and_recording(records_gw, question) -> None:  # type: ignore[no-untyped-def]
    gw, sip_port, workdir = records_gw
    known = ids(gw)
    wav = workdir / "sip-caller.wav"
    write_wav(wav, resample_whole(question, SR, 8000), 8000, encoding="ulaw")
    media_port = 17000 + 2 * (free_port() % 400)
    pcap = siptools.write_dtmf_pcap(workdir / "dtmf.pcap", "1")
    with siptools.rtp_capture(media_port, workdir / "sip.pcap") as cap:
        result = siptools.sipp(
            "uac_call.xml", sip_port, media_port=media_port, log_dir=workdir,
            keys={"codec_pt": "0", "codec_name": "PCMU"},
            fill={"WAV": str(wav), "CODEC_PT": "0", "DTMF_PCAP": str(pcap),
                  "DTMF_AFTER_MS": "0", "HOLD_MS": str(int(len(question) / SR * 1000)),
                  "INFO_DIGIT": "5"},
        )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + gw.log()[-2000:]
    record = the_call(gw, "sip", known)
    bot = check_record(record, "sip")
    assert "caller" in record["from"] and "bot" in record["to"] and "5" in record["dtmf"]
    assert record["info"]["sip_call_id"] in record["id"]
    left, right = recording(gw, record).T
    # G.711 at 8 kHz in, resampled: compare the caller's audio as it went on the wire.
    sent = resample_whole(resample_whole(question, SR, 8000), 8000, SR)
    check_left(left, sent, 0.9)
    packets = siptools.read_rtp_pcap(cap)
    bot16k = resample_whole(siptools.decode_g711(packets, 0), 8000, SR)
    check_right(right, bot16k, bot["start_s"], 0.9, max_lag_s=0.2)


def test_recording_supports_ranges_and_transcript(records_gw) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = records_gw
    record = api(gw, "/v1/calls?status=ended&limit=1").json()["calls"][0]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    head = httpx.get(f"{gw.http}{record['recording']}", timeout=10,
                     headers={**auth, "Range": "bytes=0-43"})  # fmt: skip
    assert head.status_code == 206 and len(head.content) == 44 and head.content[:4] == b"RIFF"
    text = api(gw, f"/v1/calls/{record['id']}/transcript?format=text").text
    assert "balance" in text.lower()
