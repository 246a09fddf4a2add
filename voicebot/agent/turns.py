"""Turns: one caller turn, from speech_end to the start of the bot's answer.

Place in the flow: at speech_end the session `start`s a turn. Its task transcribes the
speech (or takes the speculation's transcript, already in or nearly), publishes it, and
decides what the turn is: nothing said (back to waiting), a false interruption (the cut-off
reply resumes), or words to answer, with the speculative reply if it heard the same words
or else a new LLM reply. A barge-in `cancel`s it synchronously; what the caller had said is
kept unanswered, to be answered together with what follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

import numpy as np

from voicebot.agent.config import AgentConfig
from voicebot.agent.conversation import Conversation, SuspendedReply
from voicebot.agent.engine_calls import EngineCalls
from voicebot.agent.events import AgentState, TranscriptReady
from voicebot.agent.replies import Replies
from voicebot.agent.speculation import Speculation
from voicebot.agent.turn_timing import StageTimes

Publish = Callable[..., None]  # the session's publish(EventClass, **fields)


@dataclass(eq=False)
class Turns:
    config: AgentConfig
    conversation: Conversation
    engine_calls: EngineCalls
    replies: Replies
    _: KW_ONLY
    publish: Publish
    set_state: Callable[[AgentState], None]
    # The turn being answered, from speech_end until its transcript is handled; None
    # otherwise and after a barge-in.
    task: asyncio.Task[None] | None = field(default=None, init=False)
    # That turn's audio while STT has not answered (a barge-in then keeps it as unanswered
    # audio); None once the transcript is in, or with no turn in progress.
    audio: np.ndarray | None = field(default=None, init=False)

    def start(self, audio: np.ndarray, speculation: Speculation | None, times: StageTimes) -> None:
        """speech_end: answer this speech (after any audio of the turn never transcribed);
        `speculation`, if any, heard exactly this speech; `times` has the speech_end stamps
        (the speculation's own stamps are used if its reply is adopted)."""
        audio = self.conversation.turn_audio(audio)
        self.audio = audio
        self.task = asyncio.create_task(self._answer(audio, speculation, times))

    def cancel(self) -> None:
        """Barge-in (no await): drop the turn; if STT had not finished, keep what was said."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
            if self.audio is not None:
                self.conversation.unanswered.audio = [self.audio]
        self.audio = None

    async def _answer(
        self, audio: np.ndarray, speculation: Speculation | None, times: StageTimes
    ) -> None:
        conversation = self.conversation
        try:
            if speculation is not None:
                # Shielded: a barge-in cancels this turn, not the speculation's STT task.
                transcript = await asyncio.shield(speculation.task)
            else:
                transcript = await self.engine_calls.transcribe(audio, times)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.engine_calls.error(f"STT {self.engine_calls.stt_name}", exc)
            self.task = None
            self.audio = None
            conversation.forget_turn()
            self.replies.start(texts=[self.config.fallback_text], times=times)
            return
        self.audio = None
        conversation.unanswered.audio = []
        self.publish(TranscriptReady, text=transcript.text, final=True)

        suspended, conversation.suspended = conversation.suspended, None
        if suspended is not None:
            resume = self.config.false_interruption_resume
            if resume and conversation.is_false_interruption(transcript):
                if speculation is not None:
                    speculation.cancel()  # it started no reply on a false interruption
                self.task = None  # handled: the resumed reply is what goes on now
                self._resume(suspended)
                return
            conversation.commit_assistant(suspended.spoken_texts, interrupted=True)

        user_text = conversation.user_text(transcript)
        if not user_text:
            self.task = None
            self.set_state(AgentState.WAITING_FOR_SPEECH)
            return
        # Kept until the reply starts playing: more speech before then extends this turn.
        conversation.unanswered.texts = [user_text]
        self.task = None
        if speculation is not None and speculation.answers(user_text):
            speculation.times.vad_speech_end = times.vad_speech_end
            speculation.times.speech_end = times.speech_end
            self.replies.adopt(speculation)
            return
        if speculation is not None:
            # Its transcript was used: the STT wait was the speculation's.
            times.stt_start, times.stt_end = speculation.times.stt_start, speculation.times.stt_end
            speculation.cancel()
        self.replies.start(messages=conversation.messages(user_text), times=times)

    def _resume(self, suspended: SuspendedReply) -> None:
        """The barge-in was no turn: go on with the cut-off reply where the caller left it."""
        self.replies.restore(suspended)
        self.set_state(AgentState.THINKING)
        self.replies.start(
            texts=suspended.unspoken_texts, action=suspended.action, keep_spoken=True
        )
