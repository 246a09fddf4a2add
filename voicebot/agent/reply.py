"""One spoken reply: LLM text -> sentences -> TTS -> the playout queue, pipelined.

The LLM streams into a sentence splitter; a second task synthesizes sentence after sentence
and appends each to the playout as soon as it is ready, so the first sentence is heard while
the model is still writing the rest. On barge-in the agent cancels both tasks; what was
written but not yet spoken stays readable in `unspoken_texts` for a possible resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from voicebot.agent.clock import EngineClock, with_timeout
from voicebot.agent.playout import Playout, Utterance
from voicebot.agent.sentences import SentenceSplitter
from voicebot.agent.turn_timing import StageTimes
from voicebot.audio.frames import SAMPLE_RATE, trim_leading_silence
from voicebot.models.base import (
    CallAction,
    ChatMessage,
    LanguageModel,
    TextDelta,
    TextToSpeech,
    WrittenReplies,
)
from voicebot.models.deadline_executor import ENGINE_DUE

log = logging.getLogger("voicebot.agent")
T = TypeVar("T")

ErrorHandler = Callable[[str, BaseException], None]


class ReplyPipeline:
    """LLM (optional) and TTS tasks of one reply."""

    def __init__(
        self,
        *,
        tts: TextToSpeech,
        playout: Playout,
        clock: EngineClock,
        tts_timeout_s: float,
        llm: LanguageModel | None = None,
        llm_timeout_s: float = 15.0,
        on_error: ErrorHandler,
        times: StageTimes | None = None,
        render: Callable[[str], str] | None = None,
    ) -> None:
        self._tts = tts
        self._llm: LanguageModel | None = llm
        self._playout = playout
        self._clock = clock
        self._tts_timeout = tts_timeout_s
        self._llm_timeout = llm_timeout_s
        self._on_error = on_error
        # The call's `{{name}}` renderer, for engines whose replies are written text.
        self._render = render
        self._sentences: deque[str] = deque()
        self._sentence_ready = asyncio.Event()
        self._in_synthesis: str | None = None
        self._synthesis_s = 0.0  # the longest a sentence's synthesis took in this reply
        self.llm_done = llm is None
        self._uses_llm = False
        self.action: CallAction | None = None
        self.failed = False
        self._tasks: list[asyncio.Task[None]] = []
        # The answered turn's stage stamps (None for greetings and other fixed texts).
        self.times = times

    @property
    def uses_llm(self) -> bool:
        return self._uses_llm

    @property
    def done(self) -> bool:
        return all(t.done() for t in self._tasks)

    @property
    def unspoken_texts(self) -> list[str]:
        """Sentences written but not yet synthesized (the one in synthesis included)."""
        head = [self._in_synthesis] if self._in_synthesis else []
        return head + list(self._sentences)

    def retarget(self, playout: Playout) -> None:
        """Send sentences synthesized from now on to another playout (speculation adopted)."""
        self._playout = playout

    def start_llm(self, messages: Sequence[ChatMessage]) -> None:
        if self._llm is None:
            raise RuntimeError("this reply has no LLM")
        self._uses_llm = True
        if self.times is not None:
            self.times.mark("llm_start")
        self._tasks.append(asyncio.create_task(self._run_llm(self._llm, list(messages))))
        self._tasks.append(asyncio.create_task(self._run_tts()))

    def start_texts(self, texts: Sequence[str]) -> None:
        """Speak fixed sentences (greeting, fallback, a resumed remainder): no LLM."""
        self._sentences.extend(t for t in texts if t.strip())
        self.llm_done = True
        self._sentence_ready.set()
        self._tasks.append(asyncio.create_task(self._run_tts()))

    def cancel(self) -> None:
        """Stop now (synchronous: the barge-in path must not await)."""
        for task in self._tasks:
            task.cancel()

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _add_sentence(self, sentence: str) -> None:
        if self.times is not None:
            self.times.mark("llm_first_sentence")
        self._sentences.append(sentence)
        self._sentence_ready.set()

    async def _run_llm(self, llm: LanguageModel, messages: list[ChatMessage]) -> None:
        splitter = SentenceSplitter()
        if self._render is not None and isinstance(llm, WrittenReplies):
            stream = llm.stream_rendered(messages, self._render)
        else:
            stream = llm.stream(messages)
        try:
            while True:
                try:
                    piece = await self._clock.call(with_timeout(anext(stream), self._llm_timeout))
                except StopAsyncIteration:
                    break
                if isinstance(piece, TextDelta):
                    for sentence in splitter.push(piece.text, piece.ends_phrase):
                        self._add_sentence(sentence)
                elif isinstance(piece, CallAction):
                    self.action = piece
            for sentence in splitter.flush():
                self._add_sentence(sentence)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed = True
            self._on_error(f"LLM {llm.name}", exc)
        finally:
            self.llm_done = True
            self._sentence_ready.set()
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # the stream was already broken; closing it is best effort
                    log.debug("closing LLM stream failed", exc_info=True)

    async def _run_tts(self) -> None:
        while True:
            if not self._sentences:
                if self.llm_done:
                    return
                self._sentence_ready.clear()
                await self._sentence_ready.wait()
                continue
            sentence = self._sentences.popleft()
            self._in_synthesis = sentence
            if self.times is not None:
                self.times.mark("tts_start")
            # Needed when the audio queued ahead has played, less the time a synthesis took
            # in this reply: a first sentence at once, a later one may wait behind other
            # callers' first sentences (deadline_executor) but start in time to follow on.
            ahead_s = self._playout.queued_samples / SAMPLE_RATE
            started = time.monotonic()
            due_token = ENGINE_DUE.set(started + max(0.0, ahead_s - self._synthesis_s))
            try:
                audio = await self._clock.call(
                    with_timeout(self._tts.synthesize(sentence), self._tts_timeout)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed = True
                self._in_synthesis = None
                self._on_error(f"TTS {self._tts.name}", exc)
                return
            finally:
                ENGINE_DUE.reset(due_token)
            self._synthesis_s = max(self._synthesis_s, time.monotonic() - started)
            self._in_synthesis = None
            if self.times is not None and len(audio):
                self.times.mark("tts_first_audio")
            audio = trim_leading_silence(audio)
            if len(audio):
                self._playout.append(Utterance(sentence, audio))
