"""OpenAI-compatible `/v1/audio/transcriptions` client (remote STT).

The speech segment goes up as a 16 kHz PCM16 WAV in a multipart form, `model` named by
config; the JSON answer's `text` is the transcript.
"""

from __future__ import annotations

import httpx
import numpy as np

from voicebot.audio.wav import encode_wav
from voicebot.models.base import EngineError, Transcript
from voicebot.models.http import HttpEngine, describe, raise_for_status


class OpenAITranscriptionSpeechToText(HttpEngine):
    def __init__(
        self,
        base_url: str,
        model: str = "whisper-1",
        *,
        api_key: str | None = None,
        language: str | None = "en",
        timeout_s: float = 15.0,
    ) -> None:
        super().__init__("stt", base_url, model, api_key, timeout_s)
        self.language = language

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        wav = encode_wav(np.asarray(audio, dtype=np.int16))
        data = {"model": self.model, "response_format": "json"}
        if self.language:
            data["language"] = self.language
        try:
            response = await self._client.post(
                "/audio/transcriptions",
                data=data,
                files={"file": ("speech.wav", wav, "audio/wav")},
            )
        except httpx.HTTPError as exc:
            raise describe(exc, self.name) from exc
        raise_for_status(response, self.name)
        try:
            text = response.json()["text"]
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"{self.name}: answer has no 'text': {response.text[:200]}") from exc
        return Transcript(str(text).strip(), self.language)
