"""The cache of sentences already said (models/tts/cache.py) in front of a TTS engine."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voicebot.models.base import EngineError
from voicebot.models.config import EngineSettings
from voicebot.models.factory import build_tts
from voicebot.models.tts.cache import MAX_KEY_CHARS, CachedTextToSpeech


class CountingVoice:
    """A TTS that takes `delay_s` and says each text as one second of a level of its own."""

    name = "counting-voice"

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.asked: list[str] = []

    async def synthesize(self, text: str) -> np.ndarray:
        self.asked.append(text)
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise EngineError("voice went away")
        return np.full(16_000, len(self.asked), np.int16)


def test_a_sentence_said_again_comes_from_the_cache() -> None:
    voice = CountingVoice()
    tts = CachedTextToSpeech(voice, max_seconds=60)

    async def main() -> list[np.ndarray]:
        return [await tts.synthesize(t) for t in ("Hello.", "Bye.", " Hello. ", "Hello.")]

    hello, bye, again, third = asyncio.run(main())
    assert voice.asked == ["Hello.", "Bye."]
    assert again is hello and third is hello and not np.array_equal(hello, bye)
    assert (tts.hits, tts.misses) == (2, 2)
    assert tts.name == voice.name
    with pytest.raises(ValueError):
        hello[0] = 0  # shared by every call: read-only


def test_calls_asking_at_once_share_one_synthesis_and_a_barge_in_cancels_only_its_own() -> None:
    voice = CountingVoice(delay_s=0.1)
    tts = CachedTextToSpeech(voice, max_seconds=60)

    async def main() -> tuple[list[object], np.ndarray]:
        asks = [asyncio.create_task(tts.synthesize("I'm sorry.")) for _ in range(5)]
        await asyncio.sleep(0.02)
        asks[0].cancel()  # the first asker was talked over
        results = await asyncio.gather(*asks, return_exceptions=True)
        later = await tts.synthesize("I'm sorry.")
        return results, later

    results, later = asyncio.run(main())
    assert voice.asked == ["I'm sorry."]
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(r is later for r in results[1:])  # the others heard it, and it was kept


def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    voice = CountingVoice(delay_s=0.05, fail=True)
    tts = CachedTextToSpeech(voice, max_seconds=60)

    async def main() -> list[object]:
        first = await asyncio.gather(
            tts.synthesize("Hi."), tts.synthesize("Hi."), return_exceptions=True
        )
        voice.fail = False
        return [*first, await tts.synthesize("Hi.")]

    one, two, retried = asyncio.run(main())
    assert isinstance(one, EngineError) and isinstance(two, EngineError)
    assert isinstance(retried, np.ndarray) and voice.asked == ["Hi.", "Hi."]


def test_the_cache_holds_at_most_its_seconds_least_recently_used_out_first() -> None:
    voice = CountingVoice()
    tts = CachedTextToSpeech(voice, max_seconds=2.5)  # two sentences of one second each

    async def main() -> None:
        for text in ("one", "two", "one", "three", "one", "two"):
            await tts.synthesize(text)

    asyncio.run(main())
    # "two" was the least recently used when "three" came, so it was rendered again.
    assert voice.asked == ["one", "two", "three", "two"]
    assert tts.held_seconds <= 2.5


def test_one_off_long_texts_and_empty_ones_go_straight_to_the_voice() -> None:
    voice = CountingVoice()
    tts = CachedTextToSpeech(voice, max_seconds=600)
    long_text = "word " * (MAX_KEY_CHARS // 4)

    async def main() -> None:
        await tts.synthesize(long_text)
        await tts.synthesize(long_text)

    asyncio.run(main())
    assert voice.asked == [long_text, long_text]
    assert tts.held_seconds == 0


def test_the_configured_voice_is_built_behind_the_cache_unless_it_is_off() -> None:
    cached = build_tts(EngineSettings(tts="espeak"))
    assert isinstance(cached, CachedTextToSpeech)
    assert build_tts(EngineSettings(tts="espeak")) is cached  # one cache per process
    bare = build_tts(EngineSettings(tts="espeak", tts_cache_s=0))
    assert not isinstance(bare, CachedTextToSpeech)
    assert cached.inner is bare

    async def main() -> np.ndarray:
        return await cached.synthesize("Thank you for calling.")

    audio = asyncio.run(main())
    assert audio.dtype == np.int16 and len(audio) > 8_000
