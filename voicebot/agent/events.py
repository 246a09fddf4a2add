"""Call events (DESIGN.md section 2) and the bus that carries them to subscribers.

Every event is a frozen dataclass, one class per event type of the contract; consumers
(metrics, call records, transports) match on the class and read its fields. `to_dict()` is
the JSON object of the contract (`type`, `call_id`, `t` rounded to the millisecond, then the
type's own fields, in that order) and `to_json()` its text: the only wire form there is.
Publishing is synchronous and never blocks: subscribers are callables that must only
enqueue; one that raises is logged and the others still get the event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

log = logging.getLogger("voicebot.events")


class AgentState(StrEnum):
    """The agent's states (contract)."""

    WAITING_FOR_SPEECH = "WAITING_FOR_SPEECH"
    LISTENING = "LISTENING"
    THINKING = "THINKING"
    SPEAKING = "SPEAKING"
    INTERRUPTED = "INTERRUPTED"


_COMMON = ("call_id", "t")


def _rounded(digits: int) -> Any:
    """A required float field sent rounded to `digits` decimals."""
    return field(metadata={"digits": digits})


def _maybe_rounded(digits: int) -> Any:
    """An optional float field (None when that stage did not happen), sent rounded."""
    return field(default=None, metadata={"digits": digits})


def _off_wire() -> Any:
    """A required field for consumers in the process, not sent on the wire."""
    return field(metadata={"off_wire": True})


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event has: the call and when, in seconds of call audio."""

    type: ClassVar[str] = ""
    call_id: str
    t: float

    def payload(self) -> dict[str, Any]:
        """The type's own JSON fields in declaration order: floats rounded where declared
        with `_rounded`, states as their names, fields declared `_off_wire` left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in _COMMON or f.metadata.get("off_wire"):
                continue
            value = getattr(self, f.name)
            if "digits" in f.metadata and value is not None:
                value = round(value, f.metadata["digits"])
            out[f.name] = value.value if isinstance(value, AgentState) else value
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "call_id": self.call_id, "t": round(self.t, 3),
                **self.payload()}  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class CallStarted(Event):
    """`info`: what the transport knows of the call (SIP From/To/Call-ID), as given."""

    type: ClassVar[str] = "call_started"
    info: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return dict(self.info)


@dataclass(frozen=True, kw_only=True)
class StateChanged(Event):
    type: ClassVar[str] = "state"
    state: AgentState


@dataclass(frozen=True, kw_only=True)
class VadLevel(Event):
    """Peak speech probability since the last one (rate-limited)."""

    type: ClassVar[str] = "vad"
    probability: float = _rounded(3)


@dataclass(frozen=True, kw_only=True)
class SpeechStarted(Event):
    """`t`: when the segmenter confirmed speech; `onset`: where the speech began."""

    type: ClassVar[str] = "speech_start"
    onset: float = _rounded(3)


@dataclass(frozen=True, kw_only=True)
class SpeechEnded(Event):
    """The caller's segment is over. `ended_by`: what ended it: "turn_model" (judged
    complete at a pause), "transcript" (judged unfinished, but the early transcript's words
    read as a finished sentence), "longest_wait" (judged unfinished, nobody spoke on),
    "silence" (the fixed rule), "no_words" (background talk cut by the floor guard);
    `turn_probability`: the turn model's P(complete) at the last pause, when it was asked."""

    type: ClassVar[str] = "speech_end"
    duration: float = _rounded(3)
    ended_by: str = "silence"
    turn_probability: float | None = _maybe_rounded(3)


@dataclass(frozen=True, kw_only=True)
class TranscriptReady(Event):
    type: ClassVar[str] = "transcript"
    text: str
    final: bool = True


@dataclass(frozen=True, kw_only=True)
class BotText(Event):
    """A sentence of the bot's reply starts playing."""

    type: ClassVar[str] = "bot_text"
    text: str


@dataclass(frozen=True, kw_only=True)
class Interrupted(Event):
    """A barge-in: `latency_ms` from speech onset in the audio to output flushed; `heard`:
    the words of the cut reply the caller heard (the cut sentence up to the word its audio
    reached), "" if none."""

    type: ClassVar[str] = "interrupted"
    latency_ms: float = _rounded(1)
    heard: str = ""


@dataclass(frozen=True, kw_only=True)
class DtmfPressed(Event):
    type: ClassVar[str] = "dtmf"
    digit: str


@dataclass(frozen=True, kw_only=True)
class CallTransferred(Event):
    """The bot handed the call to `target`. `status` / `reason`: the transfer's final report
    (SIP: the NOTIFY sipfrag's status line, RFC 3515 section 2.4.5, or 202 when the REFER
    was accepted with no final report in time); None / "announced ..." where the transport
    cannot transfer (the webhook announces it); `confirmed`: the target's side reported
    success."""

    type: ClassVar[str] = "transferred"
    target: str
    status: int | None = None
    reason: str = ""
    confirmed: bool = False


@dataclass(frozen=True, kw_only=True)
class TransferFailed(Event):
    """A transfer to `target` did not happen and the call goes on: `status` / `reason` the
    refusal (SIP: the REFER's 4xx-6xx, 408 for no answer, or the NOTIFY sipfrag's final
    failure), None if the transport gave no status."""

    type: ClassVar[str] = "transfer_failed"
    target: str
    status: int | None = None
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class ErrorRaised(Event):
    """`source`: what failed, e.g. "STT whisper", "LLM llama", "agent", "call control
    transfer" (the first part of the message, and the metrics label); not on the wire
    beyond the message itself."""

    type: ClassVar[str] = "error"
    source: str = _off_wire()
    message: str


@dataclass(frozen=True, kw_only=True)
class TurnLatency(Event):
    """Published with the first frame of the bot's answer to a turn (at `t`, =
    `first_audio_sent`): when each stage happened, in call seconds, and how long after
    speech_end the answer waited for each (see voicebot.agent.turn_timing)."""

    type: ClassVar[str] = "turn_latency"
    speculative: bool
    vad_speech_end: float | None = _maybe_rounded(3)
    speech_end: float | None = _maybe_rounded(3)
    stt_start: float | None = _maybe_rounded(3)
    stt_end: float | None = _maybe_rounded(3)
    llm_start: float | None = _maybe_rounded(3)
    llm_first_sentence: float | None = _maybe_rounded(3)
    tts_start: float | None = _maybe_rounded(3)
    tts_first_audio: float | None = _maybe_rounded(3)
    first_audio_sent: float | None = _maybe_rounded(3)
    stt_wait_ms: float | None = _maybe_rounded(1)
    llm_wait_ms: float | None = _maybe_rounded(1)
    tts_wait_ms: float | None = _maybe_rounded(1)
    total_ms: float | None = _maybe_rounded(1)


@dataclass(frozen=True, kw_only=True)
class CallEnded(Event):
    type: ClassVar[str] = "call_ended"
    reason: str


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events to subscribers, in publish order."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber failed on %s (call %s)", event.type, event.call_id)


class EventLog:
    """A subscriber that keeps every event (simulator, tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def as_dicts(self) -> list[dict[str, Any]]:
        """The events as their JSON objects (what a transport sends)."""
        return [event.to_dict() for event in self.events]
