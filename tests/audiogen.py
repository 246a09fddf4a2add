"""Test audio, made not downloaded: espeak-ng speech and numpy noise at a known SNR.

Shared by the tests and the benchmarks. Each utterance's true speech boundaries are measured
on the clean signal (espeak-ng pads its output with silence), so mixtures carry exact labels.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.audio.frames import block_dbfs
from voicebot.audio.wav import read_wav_canonical

SR = 16_000
ESPEAK = shutil.which("espeak-ng") or "espeak-ng"

SENTENCES = [
    "Hello, I would like to check the balance on my account please.",
    "My order number is four five seven two, and it has not arrived yet.",
    "Could you transfer me to somebody in the billing department?",
    "Yes, that is correct, the delivery address is twelve Market Street.",
    "I called yesterday and nobody answered the phone.",
    "Please cancel my subscription at the end of this month.",
    "What time does the store open on Saturday morning?",
    "I need to change the appointment to next Tuesday afternoon.",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-us+m4", "en-gb-x-rp+f2"]


@functools.lru_cache(maxsize=256)
def _espeak_cached(text: str, voice: str, speed: int, pitch: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run(
            [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text],
            check=True,
            capture_output=True,
        )
        return read_wav_canonical(out).tobytes()


def espeak(text: str, voice: str = "en-us", speed: int = 165, pitch: int = 50) -> np.ndarray:
    """espeak-ng speech as 16 kHz int16, with espeak's own leading/trailing silence."""
    return np.frombuffer(_espeak_cached(text, voice, speed, pitch), dtype=np.int16).copy()


def speech_bounds(clean: np.ndarray, floor_db: float = -50.0) -> tuple[int, int]:
    """First and last sample (exclusive) of 10 ms blocks above `floor_db` dBFS on a clean signal."""
    block = SR // 100
    active = np.flatnonzero(block_dbfs(clean, block) > floor_db)
    if not len(active):
        raise ValueError("no speech in signal")
    return int(active[0] * block), int((active[-1] + 1) * block)


def trimmed_speech(
    text: str, voice: str = "en-us", speed: int = 165, pitch: int = 50
) -> np.ndarray:
    """espeak-ng speech cut to its measured boundaries (starts and ends on speech)."""
    x = espeak(text, voice, speed, pitch)
    start, end = speech_bounds(x)
    return x[start:end]


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise by spectral shaping of white noise (float, unit RMS)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    pink = np.fft.irfft(spectrum / np.sqrt(f), n)
    return pink / (np.sqrt(np.mean(pink**2)) + 1e-12)


def tone(n: int, freq: float = 440.0, amplitude: float = 1.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(n) / SR)


def music_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """Chords of harmonic tones with note envelopes: steady pitched sound, not speech."""
    out = np.zeros(n)
    note = SR // 4
    for start in range(0, n, note):
        seg = min(note, n - start)
        t = np.arange(seg) / SR
        env = np.exp(-3 * t)
        for root in rng.choice([220.0, 261.6, 329.6, 392.0, 440.0], size=3, replace=False):
            for h in (1, 2, 3):
                out[start : start + seg] += env * np.sin(2 * np.pi * root * h * t) / h
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def babble(n: int, rng: np.random.Generator, talkers: int = 6) -> np.ndarray:
    """Several espeak voices talking at once, each looped and offset: crowd noise."""
    out = np.zeros(n)
    for i in range(talkers):
        voice = VOICES[i % len(VOICES)]
        text = SENTENCES[(i * 3) % len(SENTENCES)] + " " + SENTENCES[(i * 5 + 1) % len(SENTENCES)]
        x = espeak(text, voice, speed=150 + 10 * i).astype(np.float64)
        reps = -(-(n + len(x)) // len(x))
        looped = np.tile(x, reps)
        offset = int(rng.integers(0, len(x)))
        out += looped[offset : offset + n]
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


NOISES = {"white": white_noise, "pink": pink_noise, "babble": babble, "music": music_like}


def make_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    return NOISES[kind](n, rng)


def active_power(speech: np.ndarray, mask: np.ndarray) -> float:
    x = speech.astype(np.float64)[mask]
    return float(np.mean(x * x)) if len(x) else 0.0


def mix_at_snr(
    speech: np.ndarray, noise: np.ndarray, snr_db: float, mask: np.ndarray
) -> np.ndarray:
    """speech + noise scaled so speech power (over `mask`) / noise power = snr_db; int16."""
    p_speech = active_power(speech, mask)
    p_noise = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-12
    gain = np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    mixed = speech.astype(np.float64) + gain * noise
    peak = np.max(np.abs(mixed))
    if peak > 32000:  # keep the mixture unclipped; the SNR is a ratio so scaling keeps it
        mixed *= 32000 / peak
    return np.rint(mixed).astype(np.int16)


@dataclass(frozen=True)
class Conversation:
    """A caller's audio with its true speech segments (seconds)."""

    audio: np.ndarray
    segments: list[tuple[float, float]]

    @property
    def speech_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.audio), dtype=bool)
        for start, end in self.segments:
            mask[int(start * SR) : int(end * SR)] = True
        return mask


def compose(
    utterances: list[np.ndarray], gaps_s: list[float], lead_s: float = 1.0, tail_s: float = 1.0
) -> Conversation:
    """Trimmed utterances separated by digital silence; `gaps_s[i]` follows utterance i."""
    parts: list[np.ndarray] = [np.zeros(int(lead_s * SR), np.int16)]
    segments: list[tuple[float, float]] = []
    pos = len(parts[0])
    for i, utt in enumerate(utterances):
        segments.append((pos / SR, (pos + len(utt)) / SR))
        parts.append(utt)
        pos += len(utt)
        gap = gaps_s[i] if i < len(gaps_s) else tail_s
        if i == len(utterances) - 1:
            gap = tail_s
        parts.append(np.zeros(int(gap * SR), np.int16))
        pos += int(gap * SR)
    return Conversation(np.concatenate(parts), segments)


def place(total_s: float, *parts: tuple[float, np.ndarray]) -> np.ndarray:
    """A caller's timeline: each (start second, clip) on silence, `total_s` long."""
    out = np.zeros(int(total_s * SR), np.int16)
    for start, clip in parts:
        i = int(start * SR)
        out[i : i + len(clip)] = clip[: max(0, len(out) - i)]
    return out
