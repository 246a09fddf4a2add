"""The canonical frame helpers (voicebot/audio/frames.py)."""

from __future__ import annotations

import numpy as np

from voicebot.audio.frames import SAMPLE_RATE, trim_leading_silence


def _tone(ms: int, amplitude: float) -> np.ndarray:
    t = np.arange(SAMPLE_RATE * ms // 1000) / SAMPLE_RATE
    return (amplitude * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def test_a_voices_leading_silence_is_cut_to_ten_ms() -> None:
    rng = np.random.default_rng(0)
    hiss = (rng.normal(0, 3, SAMPLE_RATE * 300 // 1000)).astype(np.int16)  # ~-80 dBFS
    speech = _tone(400, 0.3)
    trimmed = trim_leading_silence(np.concatenate([hiss, speech]))
    lead = len(trimmed) - len(speech)
    assert 0 <= lead <= SAMPLE_RATE * 10 // 1000  # at most 10 ms kept before the onset
    assert np.array_equal(trimmed[lead:], speech)  # the speech itself untouched


def test_a_soft_onset_is_kept_and_silence_alone_is_left_whole() -> None:
    soft = _tone(100, 0.002)  # ~-57 dBFS: a breathy start, above the -60 dBFS floor
    speech = np.concatenate([np.zeros(1600, np.int16), soft, _tone(300, 0.3)])
    trimmed = trim_leading_silence(speech)
    assert len(trimmed) >= len(soft) + SAMPLE_RATE * 300 // 1000
    quiet = np.zeros(8000, np.int16)
    assert len(trim_leading_silence(quiet)) == len(quiet)
    assert len(trim_leading_silence(np.zeros(0, np.int16))) == 0
