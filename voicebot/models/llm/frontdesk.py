"""Scripted front desk: a small business's facts answered exactly, the rest by an LLM.

Place in the flow: the default LLM engine ("frontdesk"), behind the `LanguageModel`
protocol like any other, so the agent needs no change. A caller's turn is matched against
the business profile (`front_desk.yaml`, or the user's copy named by
`engines.business_profile`): opening hours (per day, "today", "the weekend"), address,
phone, prices of the services, and the profile's own topics (parking, booking, ...) are
answered with the profile's words, never a model's. Everything else goes to the wrapped
LLM with the facts in its system prompt, shaped (`shaping.py`: two sentences, no loops)
and checked: a reply with a number the facts do not contain is replaced by the profile's
fallback line, so a 135M model cannot invent a price or an opening time.

Why: the embedded SmolLM2-135M gets under half of these questions right even with the facts
in its prompt (bench/RESULTS.md, "First call: grounded answers"), and no small GGUF in the
registries does much better within the latency budget.
"""

from __future__ import annotations

import asyncio
import datetime
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from voicebot.models.base import (
    CallAction,
    ChatMessage,
    LanguageModel,
    LlmOutput,
    ReadsAhead,
    TextDelta,
    trimmed_start,
)
from voicebot.models.llm.business_profile import (
    DAYS,
    BusinessProfile,
    Service,
    normalise,
    numbers_in,
    patterns,
)
from voicebot.models.llm.shaping import shape_reply

# Of the conversation, the LLM sees at most this many messages before the caller's turn:
# a 135M model loses itself in more, and each costs its reading time on every LLM turn
# (~3 ms a token on 2 cores in a live call; a front desk answer is ~40 tokens). The
# window's start moves HISTORY_TRIM_STEP messages (two exchanges) at a time, not one per
# turn: llama.cpp reuses the KV cache of a prompt's unchanged start, so two LLM turns in a
# row share it (windows of 3 and 1 messages, alternately).
HISTORY_MESSAGES = 3


def recent_history(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The conversation for the LLM: the caller's turn and up to `HISTORY_MESSAGES` messages
    before it, from a start that moves `HISTORY_TRIM_STEP` messages at a time. The start depends
    only on how many messages came before, so consecutive turns share it (the agent trims
    its own history in steps of the same size: `Conversation.messages`)."""
    talk = [m for m in messages if m.role != "system"]
    return talk[trimmed_start(len(talk) - 1, HISTORY_MESSAGES) :]


# -- matching the caller's words ---------------------------------------------------------


def _any(patterns: Sequence[re.Pattern[str]], text: str) -> bool:
    return any(p.search(text) for p in patterns)


_HOURS = patterns([
    "open", "opening", "close", "closing", "closed", "hours", "what time", "until", "shut",
    "when are you", "when can i come",
])  # fmt: skip
_ADDRESS = patterns([
    "address", "located", "location", "where are you", "where is", "where's", "directions",
    "find you", "get there", "get to you", "street", "which street", "what street",
])  # fmt: skip
_PHONE = patterns(["phone", "telephone", "your number", "phone number", "call you", "number"])
_PRICE = patterns([
    "how much", "price", "pricing", "cost", "charge", "fee", "expensive", "cheap", "rate",
    "dollar", "afford",
])  # fmt: skip
_OFFER = patterns(["do you do", "do you offer", "do you have", "can you do", "can i get"])
_WEEKEND = patterns(["weekend"])
_WEEKDAYS = patterns(["weekday", "during the week", "monday to friday"])
_TODAY = patterns(["today", "tonight", "now", "this morning", "this afternoon"])
_TOMORROW = patterns(["tomorrow"])
_DAY_PATTERNS = {day: patterns([day]) for day in DAYS}

# -- answering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    topic: str
    reply: str
    action: CallAction | None = None


def _article(name: str) -> str:
    """The name with its article: "a cleaning", "an exam", "teeth whitening"."""
    first = name.split()[0].lower()
    if first.endswith("s") or first in ("teeth", "the"):
        return name
    return ("an " if first[0] in "aeiou" else "a ") + name


def _end(text: str) -> str:
    """One full stop at the end ("... 1 p.m." already has one)."""
    return text if text.endswith((".", "!", "?")) else text + "."


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class FrontDesk:
    """The caller's words -> the profile's answer, or None (not one of its topics).
    `weekday`: today's day (0 = Monday), for "are you open today"."""

    def __init__(self, profile: BusinessProfile, weekday: Callable[[], int] | None = None) -> None:
        self.profile = profile
        self._weekday = weekday or (lambda: datetime.date.today().weekday())

    def answer(self, text: str) -> Answer | None:
        said = normalise(text)
        if not said:
            return None
        p = self.profile
        named = [s for s in p.services if _any(s.patterns, said)]
        days = self._days(said)
        price_asked = _any(_PRICE, said)
        if price_asked and named:
            return Answer("prices", self._prices(named))
        if _any(_HOURS, said) and not (named and _any(_OFFER, said)):
            return Answer("hours", self._hours(days, said))
        if _any(_ADDRESS, said):
            return Answer("address", _end(f"We are at {p.address}"))
        if _any(_PHONE, said):
            return Answer("phone", _end(f"Our phone number is {p.phone}"))
        for topic in p.topics:
            if _any(topic.patterns, said):
                return Answer(topic.name, topic.reply, topic.action)
        if price_asked and p.services:
            return Answer("prices", _end("Our prices are: " + self._price_list(p.services)))
        if named:
            offered = _join([s.name for s in named])
            return Answer("services", f"Yes, we offer {offered}. {self._prices(named)}")
        if any(":" not in d for d in days):  # a day named ("and on Saturday?"), not "today"
            return Answer("hours", self._hours(days, said))
        return None

    def _days(self, said: str) -> list[str]:
        found = [(m.start(), day) for day, pats in _DAY_PATTERNS.items() for pat in pats
                 for m in [pat.search(said)] if m]  # fmt: skip
        days = [day for _, day in sorted(found)]
        if _any(_WEEKEND, said):
            days += ["saturday", "sunday"]
        if _any(_TOMORROW, said):
            days.append(f"tomorrow:{DAYS[(self._weekday() + 1) % 7]}")
        elif _any(_TODAY, said):
            days.append(f"today:{DAYS[self._weekday() % 7]}")
        return list(dict.fromkeys(days))

    def _hours(self, days: list[str], said: str) -> str:
        if not days:
            if _any(_WEEKDAYS, said):
                return self._summary(DAYS[:5])
            return self._summary(DAYS)
        sentences = []
        for entry in days[:3]:
            label, _, day = entry.partition(":")
            if not day:
                label, day = f"on {entry.capitalize()}", entry
            elif label == "today":
                label = f"today, {day.capitalize()},"
            else:
                label = f"tomorrow, {day.capitalize()},"
            hours = self.profile.day_hours(day)
            if hours.lower() == "closed":
                sentences.append(f"We are closed {label.rstrip(',')}.")
            else:
                sentences.append(_end(f"{label[0].upper()}{label[1:]} we are open from {hours}"))
        return " ".join(sentences)

    def _summary(self, days: Sequence[str]) -> str:
        groups: list[tuple[list[str], str]] = []
        for day in days:
            hours = self.profile.day_hours(day)
            if groups and groups[-1][1] == hours:
                groups[-1][0].append(day)
            else:
                groups.append(([day], hours))
        open_parts, closed = [], []
        for group, hours in groups:
            name = group[0].capitalize() + (f" to {group[-1].capitalize()}" if len(group) > 1
                                            else "")  # fmt: skip
            if hours.lower() == "closed":
                closed.append(name)
            else:
                open_parts.append(f"{name} from {hours}")
        if not open_parts:
            return "We are closed on " + _join(closed) + "."
        text = "We are open " + _join(open_parts)
        if closed:
            text += ", and closed on " + _join(closed)
        return _end(text)

    def _prices(self, services: Sequence[Service]) -> str:
        text = _join([f"{_article(s.name)} costs {s.price}" for s in services])
        return _end(text[0].upper() + text[1:])

    def _price_list(self, services: Sequence[Service]) -> str:
        return _join([f"{s.name} {s.price}" for s in services])


# -- the engine ------------------------------------------------------------------------------


def _words(text: str) -> list[TextDelta]:
    return [TextDelta(w if i == 0 else " " + w) for i, w in enumerate(text.split(" "))]


class FrontDeskLanguageModel:
    """`LanguageModel`: the profile's answers, else `llm` with the facts (None: the
    profile's fallback line). Replies from `llm` are at most `max_sentences` long."""

    def __init__(
        self,
        profile: BusinessProfile,
        llm: LanguageModel | None = None,
        *,
        max_sentences: int = 2,
        weekday: Callable[[], int] | None = None,
        llm_wait_s: float | None = None,
    ) -> None:
        """`llm_wait_s`: longest wait for `llm`'s first sentence (None: no limit); past it the
        fallback line is said and the generation given up."""
        self.profile = profile
        self.llm_wait_s = llm_wait_s
        self.desk = FrontDesk(profile, weekday)
        self.llm = llm
        self.max_sentences = max_sentences
        self.name = f"frontdesk+{llm.name}" if llm is not None else "frontdesk"
        self._known_numbers = profile.numbers()
        # What answered the last turn, for benches and logs (with calls at once: any one's).
        self.last_topic: str | None = None

    def warm_contexts(self) -> bool:
        """Blocking, at start-up: an in-process wrapped LLM ready, with the facts already
        read; False if there is none (a server's LLM, or no LLM)."""
        warm = getattr(self.llm, "warm_contexts", None)
        return bool(callable(warm) and warm(self.profile.system_prompt()))

    def read_ahead(self, messages: Sequence[ChatMessage]) -> None:
        """`ReadsAhead`: the wrapped LLM reads the prompt its next reply would start with
        (the facts and this conversation's window), if it can."""
        if not isinstance(self.llm, ReadsAhead):
            return
        turn = ChatMessage("user", "")  # the window depends only on how many came before
        prompt = [ChatMessage("system", self.profile.system_prompt()),
                  *recent_history([*messages, turn])]  # fmt: skip
        self.llm.read_ahead(prompt[:-1])

    def invents(self, sentence: str) -> bool:
        """A number the profile does not state: a made-up price, time or date."""
        return any(n not in self._known_numbers for n in numbers_in(sentence))

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        return self.stream_rendered(messages, lambda text: text)

    async def stream_rendered(
        self, messages: Sequence[ChatMessage], render: Callable[[str], str]
    ) -> AsyncIterator[LlmOutput]:
        """`WrittenReplies`: the profile's own answers (and its fallback line) go through
        `render` (the call's `{{name}}` placeholders); what the wrapped LLM writes does not."""
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        answer = self.desk.answer(last_user)
        if answer is not None or self.llm is None:
            self.last_topic = answer.topic if answer else "fallback"
            for piece in _words(render(answer.reply if answer else self.profile.fallback)):
                yield piece
            if answer is not None and answer.action is not None:
                yield answer.action
            return
        self.last_topic = "llm"
        prompt = [ChatMessage("system", self.profile.system_prompt()), *recent_history(messages)]
        said = False
        shaped = shape_reply(self.llm.stream(prompt), self.max_sentences)
        try:
            while True:
                try:
                    # Only the first sentence is timed; in this task (wait_for would step
                    # the stream in another).
                    async with asyncio.timeout(None if said else self.llm_wait_s):
                        piece = await anext(shaped)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    # The model is busy with other callers' replies (one generation at a
                    # time): an answer now beats a sensible one after seconds of silence.
                    self.last_topic = "llm-busy"
                    for word in _words(render(self.profile.fallback)):
                        yield word
                    return
                if isinstance(piece, TextDelta) and self.invents(piece.text):
                    if not said:  # nothing true said yet: say what we can do instead
                        self.last_topic = "llm-guarded"
                        for word in _words(render(self.profile.fallback)):
                            yield word
                    return
                said = said or isinstance(piece, TextDelta)
                yield piece
        finally:
            await shaped.aclose()
