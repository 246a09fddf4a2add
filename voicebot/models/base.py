"""The small protocols every engine implements; the agent knows engines only through these.

All three are async: local engines run their CPU-heavy work on `voicebot.models.executor`
threads so the event loop never waits on a model, remote engines await the network.
Audio in and out is canonical: 16 kHz mono int16 numpy arrays.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np


class EngineError(RuntimeError):
    """An engine failed in a way the call can survive (bad reply, server down, ...)."""


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None = None

    @property
    def is_empty(self) -> bool:
        return not any(ch.isalnum() for ch in self.text)


# How many old messages a conversation's history loses at a time when it is trimmed (the
# agent's `max_history_messages`, the front desk's window): an LLM's prompt cache reuses a
# prompt's unchanged start, so a history trimmed in steps keeps it between steps.
HISTORY_TRIM_STEP = 4


def trimmed_start(length: int, keep: int) -> int:
    """Where a history of `length` messages starts when trimmed to at most `keep` of them,
    `HISTORY_TRIM_STEP` at a time: the start depends only on `length`, and moves once per
    step."""
    over = length - keep
    return max(0, HISTORY_TRIM_STEP * -(-over // HISTORY_TRIM_STEP))  # over, rounded up


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply text, in order. `ends_phrase`: the piece is known to end where a
    sentence or clause ends (a shaped reply's pieces), so the agent need not wait for the
    next piece's whitespace to see that it ended; not compared (the text is the piece)."""

    text: str
    ends_phrase: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class CallAction:
    """Something the bot decides to do to the call once its words are spoken."""

    kind: Literal["hangup", "transfer"]
    target: str | None = None


LlmOutput = TextDelta | CallAction


@runtime_checkable
class SpeechToText(Protocol):
    name: str

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe one speech segment (16 kHz int16)."""
        ...


@runtime_checkable
class LanguageModel(Protocol):
    name: str

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        """Stream the reply to `messages` (system prompt first, then the conversation)."""
        ...


@runtime_checkable
class WrittenReplies(Protocol):
    """A language model whose replies are written text (the scripted engine, the front
    desk's profile answers): the agent
    streams it with the call's `render`, which fills the `{{name}}` placeholders of a reply
    from the call's variables (agent/templates.py) before it is spoken."""

    def stream_rendered(
        self, messages: Sequence[ChatMessage], render: Callable[[str], str]
    ) -> AsyncIterator[LlmOutput]:
        """`stream`, each written reply passed through `render` first."""
        ...


@runtime_checkable
class ReadsAhead(Protocol):
    """A language model with a prompt cache (llama.cpp's KV cache) that can read the next
    prompt's start before the caller's turn is in: the agent passes the conversation as
    the next `stream` will begin (system prompt and history, without the caller's words)
    when the bot has finished speaking, so the reply then reads only the new turn."""

    def read_ahead(self, messages: Sequence[ChatMessage]) -> None:
        """A hint, not a call to wait for: returns at once; the engine may do it in the
        background, or not at all (busy with other calls)."""
        ...


@runtime_checkable
class TextToSpeech(Protocol):
    name: str

    async def synthesize(self, text: str) -> np.ndarray:
        """Speak `text`; returns 16 kHz int16 audio."""
        ...


@dataclass
class Engines:
    """The three engines a call talks through."""

    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech
