"""espeak-ng TTS: the light, always-available voice (Debian's espeak-ng binary).

Formant synthesis: robotic but intelligible, ~10 ms per sentence, no model files. The
binary's WAV output (22.05 kHz) is resampled to canonical 16 kHz.
"""

from __future__ import annotations

import asyncio
import shutil

import numpy as np

from voicebot.audio.frames import SAMPLE_RATE
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import WavError, read_wav_bytes, to_mono
from voicebot.models.base import EngineError

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

    async def synthesize(self, text: str) -> np.ndarray:
        text = text.strip()[:MAX_TEXT_CHARS]
        if not text:
            return np.zeros(0, np.int16)
        # "--" ends the options: text that starts with "-" is spoken, not parsed.
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "-v",
            self.voice,
            "-s",
            str(self.speed_wpm),
            "--stdout",
            "--",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            raise EngineError(
                f"espeak-ng exited {proc.returncode}: {err.decode(errors='replace')[:200]}"
            )
        try:
            audio = read_wav_bytes(_fix_streamed_wav(out))
        except WavError as exc:
            raise EngineError(f"espeak-ng produced unreadable audio: {exc}") from exc
        return resample_whole(to_mono(audio.samples), audio.sample_rate, SAMPLE_RATE)


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
