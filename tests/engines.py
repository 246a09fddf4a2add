"""Test doubles for engines where a test needs exact control (what the STT hears, when an
engine fails); they wrap no mock library, just the same protocols the real engines keep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np

from voicebot.models.base import ChatMessage, EngineError, LlmOutput, TextDelta, Transcript


class ScriptedSTT:
    """Returns the given transcripts in order ("" once they run out) and keeps every input.

    `cost_s` is burnt as real CPU-free wall time, which the virtual clock charges.
    """

    name = "scripted-stt"

    def __init__(self, texts: Sequence[str] = (), cost_s: float = 0.05) -> None:
        self.texts = list(texts)
        self.cost_s = cost_s
        self.inputs: list[np.ndarray] = []
        self.finished: list[np.ndarray] = []

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.inputs.append(np.array(audio))
        await asyncio.sleep(self.cost_s)
        self.finished.append(np.array(audio))
        return Transcript(self._pick(audio))

    def _pick(self, audio: np.ndarray) -> str:
        # Speculative runs transcribe a prefix of the final segment: the same words are meant,
        # so a transcript is consumed only when a longer (new) segment arrives.
        for earlier in self.finished[:-1]:
            if len(earlier) <= len(audio) and np.array_equal(earlier, audio[: len(earlier)]):
                return self._last
        self._last = self.texts.pop(0) if self.texts else ""
        return self._last

    _last = ""


class FailingSTT:
    name = "failing-stt"

    def __init__(self, mode: str = "error") -> None:
        self.mode = mode
        self.calls = 0

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.calls += 1
        if self.mode == "timeout":
            await asyncio.sleep(3600)
        raise EngineError("STT backend exploded")


class FailingLLM:
    """Streams a few words, then fails (or hangs)."""

    name = "failing-llm"

    def __init__(self, mode: str = "error") -> None:
        self.mode = mode

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        yield TextDelta("Let me")
        if self.mode == "timeout":
            await asyncio.sleep(3600)
        raise EngineError("LLM server went away")


class CountingTTS:
    """Wraps a real TTS engine and counts what it was asked to say."""

    def __init__(self, inner, fail: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.name = f"counting-{inner.name}"
        self.texts: list[str] = []
        self.fail = fail

    async def synthesize(self, text: str) -> np.ndarray:
        self.texts.append(text)
        if self.fail:
            raise EngineError("TTS voice missing")
        return await self.inner.synthesize(text)


class SlowSTT(ScriptedSTT):
    """Burns real CPU for `cost_s` (the simulator charges it at measured cost)."""

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.inputs.append(np.array(audio))
        end = time.perf_counter() + self.cost_s
        while time.perf_counter() < end:
            pass
        self.finished.append(np.array(audio))
        return Transcript(self._pick(audio))
