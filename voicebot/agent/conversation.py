"""Conversation: what has been said in one call, kept for the LLM and for barge-in.

Place in the flow: the session's turn handling asks it for the text of a turn (the caller's
new words joined to earlier words not yet answered) and the messages to send the LLM; the
output tick commits the caller's words to history when the reply to them starts playing and
the bot's sentences once heard; a barge-in leaves here what it cut off, and the next
transcript decides (`is_false_interruption`) whether that is resumed or history.
Pure state and rules: no tasks, no events, no engines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from voicebot.agent.config import AgentConfig
from voicebot.agent.playout import Utterance
from voicebot.audio.frames import SAMPLE_RATE
from voicebot.models.base import CallAction, ChatMessage, Transcript, trimmed_start

_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _assistant_message(spoken: list[str], interrupted: bool) -> ChatMessage | None:
    if not spoken:
        return None
    return ChatMessage("assistant", " ".join(spoken) + (" ..." if interrupted else ""))


@dataclass
class SuspendedReply:
    """What a barge-in cut off: resumed if the interruption proves to be no words."""

    utterances: list[Utterance]
    unspoken_texts: list[str]
    action: CallAction | None
    spoken_texts: list[str]


@dataclass
class UnansweredTurn:
    """The caller's words not yet answered: a turn cut short by more speech keeps its text
    (or, if STT had not finished, its audio) to be answered together with what follows."""

    texts: list[str] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)


class Conversation:
    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self.history: list[ChatMessage] = []
        self.unanswered = UnansweredTurn()
        # Sentences of the current reply the caller has heard so far: emptied when a new
        # reply starts (a resumed one keeps them) and once they are committed to history.
        self.spoken: list[str] = []
        # None unless a barge-in cut the bot off mid-reply; then what it cut off, until the
        # next transcript takes it (resumed or committed as cut) or an STT failure drops it.
        # While it is set a speculative reply starts only on words that are no false
        # interruption, with the cut-off reply as history (`messages_after_barge_in`).
        self.suspended: SuspendedReply | None = None

    def turn_audio(self, audio: np.ndarray) -> np.ndarray:
        """A segment's audio for STT, after any earlier audio of the turn never transcribed
        (cut off by this speech): heard all together, 100 ms of silence between."""
        if not self.unanswered.audio:
            return audio
        gap = np.zeros(SAMPLE_RATE // 10, np.int16)
        return np.concatenate([x for a in self.unanswered.audio for x in (a, gap)] + [audio])

    def user_text(self, transcript: Transcript) -> str:
        """The turn's text: unanswered words first; "" if nobody said anything."""
        words = [*self.unanswered.texts, transcript.text.strip()]
        return " ".join(w for w in words if w and not Transcript(w).is_empty)

    def messages(self, user_text: str) -> list[ChatMessage]:
        """The LLM's input: system prompt, recent history, then this turn."""
        return self._messages(self.history, user_text)

    def messages_after_barge_in(self, user_text: str) -> list[ChatMessage]:
        """`messages` as they will be once the turn commits the reply the caller cut off
        (`suspended`, if any): for a reply started before the turn is known to be words."""
        cut = self.suspended and _assistant_message(self.suspended.spoken_texts, True)
        return self._messages([*self.history, cut] if cut else self.history, user_text)

    def _messages(self, history: list[ChatMessage], user_text: str) -> list[ChatMessage]:
        messages = [ChatMessage("system", self._config.system_prompt)]
        if self._config.max_history_messages:
            # Trimmed a step of old messages at a time, not one per turn: an LLM's prompt
            # cache (llama.cpp's KV cache, a server's prefix cache) reuses only an unchanged
            # start, which a window sliding every turn never has.
            start = trimmed_start(len(history), self._config.max_history_messages)
            messages += history[start:]
        messages.append(ChatMessage("user", user_text))
        return messages

    def messages_before_turn(self) -> list[ChatMessage]:
        """`messages` of the caller's next turn up to their words (history as it stands)."""
        return self.messages("")[:-1]

    def forget_turn(self) -> None:
        """STT failed: what was pending is not answered (the bot asks again instead)."""
        self.unanswered = UnansweredTurn()
        self.suspended = None

    def commit_user(self) -> None:
        """The reply to the unanswered words starts playing: they become history."""
        if self.unanswered.texts:
            self.history.append(ChatMessage("user", " ".join(self.unanswered.texts)))
        self.unanswered = UnansweredTurn()

    def commit_assistant(self, spoken: list[str], *, interrupted: bool) -> None:
        """Sentences the caller heard become history; " ..." marks a reply cut off."""
        message = _assistant_message(spoken, interrupted)
        if message is not None:
            self.history.append(message)

    def is_false_interruption(self, transcript: Transcript) -> bool:
        """Nothing said, or only backchannels ("mm-hm", "yeah"): not a turn of its own."""
        text = _normalise(transcript.text)
        if not text:
            return True
        backchannels = {_normalise(b) for b in self._config.backchannels}
        if text in backchannels:
            return True
        return all(word in backchannels for word in text.split())
