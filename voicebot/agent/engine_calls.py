"""EngineCalls: how one call uses its engines, with its timeouts and its error reports.

Place in the flow: a turn (and a speculation at a pause) transcribes through `transcribe`;
every reply, live or speculative, is built by `new_reply` with the call's TTS, LLM, clock
and timeouts; an engine that fails or overruns is logged and reported through `error`,
which the session turns into an `error` event (the call itself goes on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from voicebot.agent.clock import EngineClock, EngineTimeoutError, with_timeout
from voicebot.agent.config import AgentConfig
from voicebot.agent.playout import Playout
from voicebot.agent.reply import ReplyPipeline
from voicebot.models.base import Engines, Transcript

log = logging.getLogger("voicebot.agent")

Reporter = Callable[[str, str], None]  # (source, message) -> an `error` event


class EngineCalls:
    def __init__(
        self,
        call_id: str,
        engines: Engines,
        config: AgentConfig,
        clock: EngineClock,
        report: Reporter,
    ) -> None:
        self._call_id = call_id
        self._engines = engines
        self._config = config
        self._clock = clock
        self._report = report
        self.stt_inputs: list[np.ndarray] = []  # every buffer sent to STT (tests, audits)

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.stt_inputs.append(audio)
        stt = self._engines.stt
        return await self._clock.call(
            with_timeout(stt.transcribe(audio), self._config.stt_timeout_s)
        )

    def new_reply(self, playout: Playout) -> ReplyPipeline:
        """A reply not yet started, its sentences going to `playout`."""
        return ReplyPipeline(
            tts=self._engines.tts,
            llm=self._engines.llm,
            playout=playout,
            clock=self._clock,
            tts_timeout_s=self._config.tts_timeout_s,
            llm_timeout_s=self._config.llm_timeout_s,
            on_error=self.error,
        )

    def error(self, what: str, exc: BaseException) -> None:
        """`what` ("STT whisper", "call control transfer", ...) failed with `exc`."""
        if isinstance(exc, EngineTimeoutError):
            message = f"{what}: {exc}"
        elif str(exc):
            message = f"{what}: {type(exc).__name__}: {exc}"
        else:
            message = f"{what}: {type(exc).__name__}"
        log.warning("call %s: %s", self._call_id, message)
        self._report(what, message)
