"""Call events (DESIGN.md section 2) and the bus that carries them to subscribers.

An event is a JSON-ready dict with `type`, `call_id` and `t` (seconds of call audio since
the call started). Publishing is synchronous and never blocks: subscribers are callables
that must only enqueue (transports, the web page, webhooks); one that raises is logged and
the others still get the event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

log = logging.getLogger("voicebot.events")

Event = dict[str, Any]
Subscriber = Callable[[Event], None]


class AgentState(StrEnum):
    """The agent's states (contract)."""

    WAITING_FOR_SPEECH = "WAITING_FOR_SPEECH"
    LISTENING = "LISTENING"
    THINKING = "THINKING"
    SPEAKING = "SPEAKING"
    INTERRUPTED = "INTERRUPTED"


EVENT_TYPES = frozenset(
    {
        "call_started",
        "state",
        "vad",
        "speech_start",
        "speech_end",
        "transcript",
        "bot_text",
        "interrupted",
        "dtmf",
        "error",
        "call_ended",
    }
)


def make_event(event_type: str, call_id: str, t: float, **fields: Any) -> Event:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    return {"type": event_type, "call_id": call_id, "t": round(t, 3), **fields}


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
                log.exception(
                    "event subscriber failed on %s (call %s)", event["type"], event.get("call_id")
                )


class EventLog:
    """A subscriber that keeps every event (simulator, tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of_type(self, event_type: str) -> list[Event]:
        return [e for e in self.events if e["type"] == event_type]

    def states(self) -> list[str]:
        return [e["state"] for e in self.of_type("state")]
