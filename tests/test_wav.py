"""WAV reading and writing: PCM16, float, G.711, stereo, any rate; bad files refused clearly."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from voicebot.audio import g711
from voicebot.audio.frames import FRAME_SAMPLES, FrameAssembler, split_frames
from voicebot.audio.wav import (
    WavError,
    encode_wav,
    read_wav,
    read_wav_bytes,
    read_wav_canonical,
    write_wav,
)


def _float_wav(samples: np.ndarray, rate: int = 16000, bits: int = 32) -> bytes:
    payload = samples.astype("<f4" if bits == 32 else "<f8").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * bits // 8, bits // 8, bits)
    body = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload))
    body += payload
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


def test_pcm16_roundtrip_and_stdlib_agrees(tmp_path: Path) -> None:
    x = (np.arange(1000, dtype=np.int16) * 37).astype(np.int16)
    path = tmp_path / "a.wav"
    write_wav(path, x, 16000)
    with wave.open(str(path)) as w:  # the stdlib reader sees a valid file
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        np.testing.assert_array_equal(np.frombuffer(w.readframes(1000), "<i2"), x)
    audio = read_wav(path)
    assert audio.sample_rate == 16000 and audio.channels == 1
    np.testing.assert_array_equal(audio.samples[:, 0], x)


@pytest.mark.parametrize("encoding", ["ulaw", "alaw"])
def test_g711_wav_decodes_with_the_codec(tmp_path: Path, encoding: str) -> None:
    x = np.rint(8000 * np.sin(np.arange(800) / 5)).astype(np.int16)
    path = tmp_path / f"{encoding}.wav"
    write_wav(path, x, 8000, encoding=encoding)
    audio = read_wav(path)
    expected = (
        g711.ulaw_decode(g711.ulaw_encode(x))
        if encoding == "ulaw"
        else g711.alaw_decode(g711.alaw_encode(x))
    )
    assert audio.sample_rate == 8000
    np.testing.assert_array_equal(audio.samples[:, 0], expected)
    canonical = read_wav_canonical(path)
    assert len(canonical) == 1600  # 8 kHz -> 16 kHz


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left = np.full(480, 1000, np.int16)
    right = np.full(480, 3000, np.int16)
    path = tmp_path / "st.wav"
    write_wav(path, np.stack([left, right], axis=1), 48000)
    mono = read_wav_canonical(path)
    assert len(mono) == 160
    assert np.all(np.abs(mono[40:-40].astype(int) - 2000) <= 2)


def test_float_wav_is_read(tmp_path: Path) -> None:
    x = np.linspace(-0.5, 0.5, 320, dtype=np.float32)
    audio = read_wav_bytes(_float_wav(x))
    np.testing.assert_array_equal(audio.samples[:, 0], np.rint(x * 32768).astype(np.int16))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"hello world, not a wav file at all", "not a WAV"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no fmt chunk"),
        (_float_wav(np.array([0.1, np.nan, 0.2], dtype=np.float32)), "NaN"),
        (_float_wav(np.array([0.1, np.inf], dtype=np.float32)), "NaN/infinite"),
    ],
)
def test_bad_files_raise_wav_error(raw: bytes, message: str) -> None:
    with pytest.raises(WavError, match=message):
        read_wav_bytes(raw)


def test_wrong_sample_width_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w24.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(16000)
        w.writeframes(b"\x00" * 300)
    with pytest.raises(WavError, match="24-bit"):
        read_wav(path)


def test_too_many_channels_refused() -> None:
    raw = encode_wav(np.zeros((10, 2), np.int16))
    raw = raw.replace(struct.pack("<HH", 1, 2), struct.pack("<HH", 1, 6), 1)
    with pytest.raises(WavError, match="6 channels"):
        read_wav_bytes(raw)


def test_truncated_data_chunk_reads_what_is_there() -> None:
    raw = encode_wav(np.arange(100, dtype=np.int16))[:-51]  # cut mid-sample
    audio = read_wav_bytes(raw)
    np.testing.assert_array_equal(audio.samples[:, 0], np.arange(74, dtype=np.int16))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(WavError, match="no such file"):
        read_wav(tmp_path / "nope.wav")
    with pytest.raises(WavError, match="directory"):
        read_wav(tmp_path)


def test_frame_assembler_never_loses_a_sample() -> None:
    x = np.arange(5000, dtype=np.int16)
    assembler = FrameAssembler()
    frames = []
    for size in [1, 319, 321, 700, 0, 1000, 2659]:
        chunk, x = x[:size], x[size:]
        frames.extend(assembler.push(chunk))
    assert all(len(f) == FRAME_SAMPLES for f in frames)
    assert len(frames) == 15 and assembler.pending_samples == 200
    tail = assembler.flush()
    assert tail is not None and np.all(tail[200:] == 0)
    joined = np.concatenate([*frames, tail[:200]])
    np.testing.assert_array_equal(joined, np.arange(5000, dtype=np.int16))
    assert len(split_frames(np.zeros(641, np.int16))) == 3
