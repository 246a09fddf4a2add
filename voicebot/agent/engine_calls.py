"""EngineCalls: how one call uses its engines, with its timeouts and its error reports.

Place in the flow: a turn (and a speculation at a pause) transcribes through `transcribe`;
every reply, live or speculative, is built by `new_reply` with the call's TTS, LLM, clock
and timeouts; an engine that fails or overruns is logged and reported through `error`,
which the session turns into an `error` event (the call itself goes on).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voicebot.agent.clock import EngineClock, EngineTimeoutError, with_timeout
from voicebot.agent.config import AgentConfig
from voicebot.agent.playout import Playout
from voicebot.agent.reply import ReplyPipeline
from voicebot.agent.turn_timing import StageTimes
from voicebot.models.base import ChatMessage, Engines, ReadsAhead, Transcript
from voicebot.models.deadline_executor import ENGINE_DUE

log = logging.getLogger("voicebot.agent")

Reporter = Callable[[str, str], None]  # (source, message) -> an `error` event


@dataclass(eq=False)
class EngineCalls:
    call_id: str
    engines: Engines
    config: AgentConfig
    clock: EngineClock
    report: Reporter
    # Fills `{{name}}` placeholders of written replies from the call's variables.
    render: Callable[[str], str] | None = None
    # Every buffer sent to STT, in order (tests, audits).
    stt_inputs: list[np.ndarray] = field(default_factory=list, init=False)

    @property
    def stt_name(self) -> str:
        return self.engines.stt.name

    async def transcribe(
        self, audio: np.ndarray, times: StageTimes | None = None, *, slack_s: float = 0.0
    ) -> Transcript:
        """STT of `audio`; `times`, if given, gets the call's start and end stamped.
        `slack_s`: how long after now the transcript is needed, which orders this call
        among other calls' waiting for the same model (`deadline_executor`)."""
        self.stt_inputs.append(audio)
        stt = self.engines.stt
        if times is not None:
            times.mark("stt_start")
        due_token = ENGINE_DUE.set(time.monotonic() + slack_s)
        try:
            transcript = await self.clock.call(
                with_timeout(stt.transcribe(audio), self.config.stt_timeout_s)
            )
        finally:
            ENGINE_DUE.reset(due_token)
        if times is not None:
            times.mark("stt_end")
        return transcript

    def read_ahead(self, messages: list[ChatMessage]) -> None:
        """The bot has finished speaking: an LLM with a prompt cache may read the next
        reply's prompt up to the caller's turn now (`ReadsAhead`), not after it."""
        llm = self.engines.llm
        if self.config.llm_read_ahead and isinstance(llm, ReadsAhead):
            llm.read_ahead(messages)

    def new_reply(self, playout: Playout, times: StageTimes | None = None) -> ReplyPipeline:
        """A reply not yet started, its sentences going to `playout`; `times`: the turn's
        stage stamps, which the reply completes (LLM and TTS)."""
        return ReplyPipeline(
            tts=self.engines.tts,
            llm=self.engines.llm,
            playout=playout,
            clock=self.clock,
            tts_timeout_s=self.config.tts_timeout_s,
            llm_timeout_s=self.config.llm_timeout_s,
            on_error=self.error,
            times=times,
            render=self.render,
        )

    def error(self, what: str, exc: BaseException) -> None:
        """`what` ("STT whisper", "call control transfer", ...) failed with `exc`."""
        if isinstance(exc, EngineTimeoutError):
            message = f"{what}: {exc}"
        elif str(exc):
            message = f"{what}: {type(exc).__name__}: {exc}"
        else:
            message = f"{what}: {type(exc).__name__}"
        log.warning("call %s: %s", self.call_id, message)
        self.report(what, message)
