"""Speculator: the reply to a turn started at a pause, before speech_end confirms it.

Place in the flow: after each frame's VAD events the session calls `on_frame`; once the
caller has paused `speculative_pause_ms` mid-turn, the speech so far goes to STT and, when
its text is in, an LLM + TTS reply starts into a private playout, so nothing is heard yet.
If the caller talks on, it is thrown away; at speech_end the session `take`s it, and the
turn either adopts the held reply ready-made (same words) or cancels it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from voicebot.agent.config import AgentConfig
from voicebot.agent.conversation import Conversation
from voicebot.agent.engine_calls import EngineCalls
from voicebot.agent.playout import Playout
from voicebot.agent.reply import ReplyPipeline
from voicebot.agent.turn_timing import Now, StageTimes
from voicebot.models.base import Transcript
from voicebot.models.vad import SpeechSegmenter


@dataclass(eq=False)
class Speculation:
    """Work started at a pause: the transcript of the speech so far and then, held back in
    a private playout, the reply to it."""

    end: float  # where the speech it heard ends (call seconds): speech_end must match it
    task: asyncio.Task[Transcript]
    times: StageTimes  # the turn's stage stamps if it is adopted
    # Both None until the early transcript is in and has words, then the turn's text and
    # the reply started on it (never one without the other).
    user_text: str | None = None
    reply: ReplyPipeline | None = None
    playout: Playout = field(default_factory=Playout)

    def cancel(self) -> None:
        self.task.cancel()
        if self.reply is not None:
            self.reply.cancel()

    def answers(self, user_text: str) -> bool:
        """Its reply is to exactly these words (the final transcript said the same)."""
        return self.reply is not None and self.user_text == user_text

    def hand_over(self, playout: Playout) -> ReplyPipeline:
        """Adopted: its held audio moves to the live `playout` and so do the sentences to
        come; returns the reply, now the live one."""
        assert self.reply is not None
        for utterance in self.playout.take_remainder():
            playout.append(utterance)
        self.reply.retarget(playout)
        return self.reply


@dataclass(eq=False)
class Speculator:
    config: AgentConfig
    segmenter: SpeechSegmenter
    conversation: Conversation
    engine_calls: EngineCalls
    now: Now  # the call's clock (CallSession.t)
    # None except from a pause in a LISTENING turn until the caller talks on (cancelled),
    # speech_end takes it (adopted or cancelled by the turn) or the call ends (`stop`).
    current: Speculation | None = field(default=None, init=False)

    def on_frame(self, *, listening: bool) -> None:
        """At a pause mid-speech, start on the reply to what was said so far."""
        if not self.config.speculative_stt or not listening:
            return
        speculation = self.current
        silence_ms = self.segmenter.trailing_silence_ms
        if silence_ms < self.config.speculative_pause_ms:
            if speculation is not None and silence_ms == 0:
                # The caller went on talking: what was started no longer answers the turn.
                speculation.cancel()
                self.current = None
            return
        # Audio of the turn never transcribed: its STT must hear that too; wait for the end.
        # In a pause the open segment ends where the pause began: `pause_start`.
        end = self.segmenter.pause_start
        if end is None or self.conversation.unanswered.audio:
            return
        if speculation is not None and abs(speculation.end - end) < 1e-6:
            return  # still the same pause (checked before copying the segment's audio)
        segment = self.segmenter.open_segment()
        assert segment is not None
        _, end, audio = segment
        if speculation is not None:
            speculation.cancel()
        times = StageTimes(self.now, speculative=True, vad_speech_end=end)
        # Wanted when the pause would end the turn, a little later than a final transcript.
        slack_s = max(0, self.config.turn_min_silence_ms - self.config.speculative_pause_ms) / 1e3
        task = asyncio.create_task(self.engine_calls.transcribe(audio, times, slack_s=slack_s))
        self.current = Speculation(end, task, times)
        task.add_done_callback(lambda done, spec=self.current: self._start_reply(spec))

    def early_text(self, end: float) -> str | None:
        """The early transcript of the speech that ends at `end` (a pause's start), once it
        is in; None if there is none (yet)."""
        speculation = self.current
        if speculation is None or abs(speculation.end - end) >= 1e-6:
            return None
        task = speculation.task
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result().text

    def take(self, end: float) -> Speculation | None:
        """speech_end at `end`: the speculation on exactly this speech, if any; any other is
        cancelled. Either way none is current any more."""
        speculation, self.current = self.current, None
        reuse = speculation if speculation and abs(speculation.end - end) < 1e-6 else None
        if speculation is not None and reuse is None:
            speculation.cancel()
        return reuse

    async def stop(self) -> asyncio.Task[Transcript] | None:
        """The call ends: cancel the speculation and wait for its reply to stop; returns its
        STT task (cancelled) for the session to await with its own tasks."""
        if self.current is not None:
            self.current.cancel()
            if self.current.reply is not None:
                await self.current.reply.wait()
        return self.current.task if self.current else None

    def _start_reply(self, speculation: Speculation) -> None:
        """The early transcript is in: start the LLM and TTS on it, output held back."""
        if speculation.task.cancelled():
            return
        # Retrieved on every path: a speculation superseded while its STT failed (a timeout
        # under overload) would otherwise be logged by asyncio as "never retrieved".
        failed = speculation.task.exception() is not None
        if failed or speculation is not self.current:
            return
        conversation, transcript = self.conversation, speculation.task.result()
        if (
            conversation.suspended is not None
            and self.config.false_interruption_resume
            and conversation.is_false_interruption(transcript)
        ):
            return  # the turn will resume the reply the caller cut off, not answer
        user_text = conversation.user_text(transcript)
        if not user_text:
            return
        speculation.user_text = user_text
        speculation.reply = self.engine_calls.new_reply(speculation.playout, speculation.times)
        # After a barge-in the turn commits the cut-off reply before it asks the LLM: the
        # same prompt, so that the reply can be adopted (answered as fast as any other).
        speculation.reply.start_llm(conversation.messages_after_barge_in(user_text))
