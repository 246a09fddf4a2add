"""OpenAI-compatible `/v1/audio/speech` client (remote TTS).

Asks for `response_format: wav` and reads any WAV the server sends (rate, width, channels)
into canonical 16 kHz; a bare PCM answer is taken as 24 kHz s16le, OpenAI's `pcm` format.
"""

from __future__ import annotations

import httpx
import numpy as np

from voicebot.audio.frames import SAMPLE_RATE
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import WavError, read_wav_bytes, to_mono
from voicebot.models.base import EngineError
from voicebot.models.http import HttpEngine, describe, raise_for_status

OPENAI_PCM_RATE = 24_000


class OpenAISpeechTextToSpeech(HttpEngine):
    def __init__(
        self,
        base_url: str,
        model: str = "tts-1",
        voice: str = "alloy",
        *,
        api_key: str | None = None,
        timeout_s: float = 15.0,
    ) -> None:
        super().__init__("tts", base_url, model, api_key, timeout_s)
        self.voice = voice

    async def synthesize(self, text: str) -> np.ndarray:
        body = {"model": self.model, "voice": self.voice, "input": text, "response_format": "wav"}
        try:
            response = await self._client.post("/audio/speech", json=body)
        except httpx.HTTPError as exc:
            raise describe(exc, self.name) from exc
        raise_for_status(response, self.name)
        raw = response.content
        if raw[:4] == b"RIFF":
            try:
                wav = read_wav_bytes(raw)
            except WavError as exc:
                raise EngineError(f"{self.name}: unreadable WAV: {exc}") from exc
            return resample_whole(to_mono(wav.samples), wav.sample_rate, SAMPLE_RATE)
        if len(raw) % 2:
            raise EngineError(f"{self.name}: answer is neither WAV nor 16-bit PCM")
        pcm = np.frombuffer(raw, "<i2").astype(np.int16)
        return resample_whole(pcm, OPENAI_PCM_RATE, SAMPLE_RATE)
