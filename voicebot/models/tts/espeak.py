"""espeak-ng TTS: the light, always-available voice (Debian's espeak-ng binary).

Formant synthesis: robotic but intelligible, ~10 ms per sentence, no model files. The
binary's WAV output (22.05 kHz) is resampled to canonical 16 kHz.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from voicebot.audio.frames import SAMPLE_RATE
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import WavError, read_wav_bytes, to_mono
from voicebot.models.base import EngineError
from voicebot.models.executor import model_worker, run_blocking

MAX_TEXT_CHARS = 2000


class EspeakTextToSpeech:
    name = "espeak-ng"

    def __init__(
        self, voice: str = "en-us", speed_wpm: int = 170, binary: str | None = None
    ) -> None:
        found = binary or shutil.which("espeak-ng")
        if found is None:
            raise EngineError("espeak-ng is not installed (apt-get install espeak-ng)")
        self.binary = found
        self.voice = voice
        self.speed_wpm = speed_wpm
        # Separate processes: two may run at once (one per core) without sharing anything.
        self._worker = model_worker("espeak", workers=2)

    def synthesize_sync(self, text: str) -> np.ndarray:
        text = text.strip()[:MAX_TEXT_CHARS]
        if not text:
            return np.zeros(0, np.int16)
        # "--" ends the options: text that starts with "-" is spoken, not parsed.
        result = subprocess.run(
            [self.binary, "-v", self.voice, "-s", str(self.speed_wpm), "--stdout", "--", text],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace")[:200]
            raise EngineError(f"espeak-ng exited {result.returncode}: {err}")
        try:
            audio = read_wav_bytes(_fix_streamed_wav(result.stdout))
        except WavError as exc:
            raise EngineError(f"espeak-ng produced unreadable audio: {exc}") from exc
        return resample_whole(to_mono(audio.samples), audio.sample_rate, SAMPLE_RATE)

    async def synthesize(self, text: str) -> np.ndarray:
        # Starting a process blocks the caller until the child runs (tens of ms on a busy
        # machine) and the resampling is CPU work: both happen on the worker thread.
        return await run_blocking(self._worker, self.synthesize_sync, text)


def _fix_streamed_wav(raw: bytes) -> bytes:
    # Written to a pipe, espeak-ng cannot seek back to fill in the RIFF/data sizes
    # (they read 0x7ffff000-ish or 0): the data runs to the end of the stream.
    data_at = raw.find(b"data", 12)
    if data_at < 0:
        return raw
    body = len(raw) - data_at - 8
    fixed = bytearray(raw)
    fixed[4:8] = (len(raw) - 8).to_bytes(4, "little")
    fixed[data_at + 4 : data_at + 8] = body.to_bytes(4, "little")
    return bytes(fixed)
