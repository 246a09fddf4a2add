"""Said before, said again: a bounded cache of synthesized sentences in front of any TTS.

Place in the flow: `build_tts` wraps the configured engine in it, so every call's reply
pipeline asks it first. A call centre's bot says the same sentences all day (the greeting,
the front desk's answers, its fallback line, a script's replies); rendering each once
saves the TTS's CPU for the sentences that are new and takes the voice's time out of the
caller's wait for them (measured on 10 live calls: most replies were fixed lines, and the
TTS queue was a third of the wait). Concurrent requests for a sentence not yet cached
share one synthesis. Bounded by seconds of audio held (least recently used out first);
a voice's own slight variation from one rendition to the next is given up for these.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np

from voicebot.audio.frames import SAMPLE_RATE
from voicebot.models.base import TextToSpeech

MAX_KEY_CHARS = 400  # longer texts are one-offs: not worth their memory


class CachedTextToSpeech:
    """`TextToSpeech`: `inner`, with up to `max_seconds` of its audio kept by text."""

    def __init__(self, inner: TextToSpeech, max_seconds: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self._audio: OrderedDict[str, np.ndarray] = OrderedDict()
        self._held = 0  # samples in `_audio`
        self._pending: dict[str, asyncio.Task[np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def held_seconds(self) -> float:
        return self._held / SAMPLE_RATE

    async def synthesize(self, text: str) -> np.ndarray:
        key = text.strip()
        if not key or len(key) > MAX_KEY_CHARS:
            return await self.inner.synthesize(text)
        cached = self._audio.get(key)
        if cached is not None:
            self._audio.move_to_end(key)
            self.hits += 1
            return cached
        rendering = self._pending.get(key)
        if rendering is None:
            self.misses += 1
            # Its own task (with this caller's ENGINE_DUE): a caller cut off by barge-in
            # stops waiting, and neither the others waiting for it nor the cache lose it.
            rendering = asyncio.ensure_future(self._render(key, text))
            rendering.add_done_callback(_retrieve)
            self._pending[key] = rendering
        else:
            self.hits += 1
        return await asyncio.shield(rendering)

    async def _render(self, key: str, text: str) -> np.ndarray:
        try:
            audio = np.asarray(await self.inner.synthesize(text), dtype=np.int16)
        finally:
            self._pending.pop(key, None)
        audio.flags.writeable = False  # shared by every call that says it
        self._keep(key, audio)
        return audio

    def _keep(self, key: str, audio: np.ndarray) -> None:
        if len(audio) > self.max_samples:
            return
        self._audio[key] = audio
        self._held += len(audio)
        while self._held > self.max_samples:
            _, dropped = self._audio.popitem(last=False)
            self._held -= len(dropped)


def _retrieve(task: asyncio.Task[np.ndarray]) -> None:
    # Every waiter may have gone (barge-in): a failure is then nobody's to log as unretrieved.
    if not task.cancelled():
        task.exception()
