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

import datetime
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from voicebot.models.base import (
    CallAction,
    ChatMessage,
    EngineError,
    LanguageModel,
    LlmOutput,
    TextDelta,
)
from voicebot.models.llm.shaping import shape_reply

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_FALLBACK = (
    "I'm sorry, I can't help with that. I can tell you about our opening hours, address, "
    "prices, or appointments."
)
HISTORY_MESSAGES = 4  # of the conversation, for the LLM: a 135M model loses itself in more

# -- matching the caller's words ---------------------------------------------------------


def normalise(text: str) -> str:
    """Lower case words and digits, single spaces: "Check-up?" -> "check up"."""
    text = text.lower().replace("-", " ").replace("’", "'")
    return " ".join(re.findall(r"[a-z0-9']+", text))


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """A keyword or phrase as whole words, plural or not, spaced or joined ("check up",
    "checkup", "check ups"): STT writes the same words in several ways."""
    words = normalise(phrase).split()
    if not words:
        raise EngineError(f"empty keyword {phrase!r}")
    body = r"\s?".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![a-z0-9']){body}(?:s|es|'s)?(?![a-z0-9'])")


def _patterns(phrases: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(phrase_pattern(p) for p in phrases)


def _any(patterns: Sequence[re.Pattern[str]], text: str) -> bool:
    return any(p.search(text) for p in patterns)


_HOURS = _patterns([
    "open", "opening", "close", "closing", "closed", "hours", "what time", "until", "shut",
    "when are you", "when can i come",
])  # fmt: skip
_ADDRESS = _patterns([
    "address", "located", "location", "where are you", "where is", "where's", "directions",
    "find you", "get there", "get to you", "street", "which street", "what street",
])  # fmt: skip
_PHONE = _patterns(["phone", "telephone", "your number", "phone number", "call you", "number"])
_PRICE = _patterns([
    "how much", "price", "pricing", "cost", "charge", "fee", "expensive", "cheap", "rate",
    "dollar", "afford",
])  # fmt: skip
_OFFER = _patterns(["do you do", "do you offer", "do you have", "can you do", "can i get"])
_WEEKEND = _patterns(["weekend"])
_WEEKDAYS = _patterns(["weekday", "during the week", "monday to friday"])
_TODAY = _patterns(["today", "tonight", "now", "this morning", "this afternoon"])
_TOMORROW = _patterns(["tomorrow"])
_DAY_PATTERNS = {day: _patterns([day]) for day in DAYS}

# -- the profile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    name: str
    price: str
    patterns: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class Topic:
    name: str
    reply: str
    patterns: tuple[re.Pattern[str], ...]
    action: CallAction | None = None


def _text(raw: dict[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str | int | float) or not str(value).strip():
        raise EngineError(f"business profile: {key!r} must be a non-empty text")
    return " ".join(str(value).split())


def _phrases(raw: dict[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise EngineError(f"business profile: {where}: {key!r} must be a list of words")
    return [str(v) for v in value]


@dataclass(frozen=True)
class BusinessProfile:
    """What the front desk knows: written by the user, spoken as written."""

    business: str
    kind: str
    greeting: str
    hours: dict[str, str]  # day -> "8 a.m. to 6 p.m." or "closed"
    address: str
    phone: str
    services: tuple[Service, ...]
    topics: tuple[Topic, ...]
    fallback: str = DEFAULT_FALLBACK

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BusinessProfile:
        if not isinstance(raw, dict):
            raise EngineError("business profile is not a YAML mapping")
        hours_raw = raw.get("hours") or {}
        if not isinstance(hours_raw, dict):
            raise EngineError("business profile: 'hours' must map days to times")
        hours: dict[str, str] = {}
        for day, value in hours_raw.items():
            if str(day).lower() not in DAYS:
                raise EngineError(f"business profile: {day!r} is not a day of the week")
            hours[str(day).lower()] = " ".join(str(value).split()) if value else "closed"
        services = []
        for i, item in enumerate(raw.get("prices") or []):
            if not isinstance(item, dict):
                raise EngineError(f"business profile: price #{i} is not a mapping")
            name = _text(item, "service")
            words = [name, *_phrases(item, "words", name)]
            services.append(Service(name, _text(item, "price"), _patterns(words)))
        topics = []
        for i, item in enumerate(raw.get("topics") or []):
            if not isinstance(item, dict):
                raise EngineError(f"business profile: topic #{i} is not a mapping")
            name = str(item.get("name", f"topic{i}"))
            keywords = _phrases(item, "keywords", name)
            if not keywords:
                raise EngineError(f"business profile: topic {name!r} has no keywords")
            action = None
            kind = item.get("action")
            if kind is not None:
                if kind not in ("hangup", "transfer"):
                    raise EngineError(f"topic {name!r}: action must be hangup or transfer")
                target = item.get("target")
                if kind == "transfer" and not target:
                    raise EngineError(f"topic {name!r}: transfer needs a target URI")
                action = CallAction(kind, str(target) if target else None)
            topics.append(Topic(name, _text(item, "reply"), _patterns(keywords), action))
        business = _text(raw, "business")
        return cls(
            business=business,
            kind=_text(raw, "kind", "business"),
            greeting=_text(raw, "greeting", f"Thank you for calling {business}. How can I help?"),
            hours=hours,
            address=_text(raw, "address"),
            phone=_text(raw, "phone"),
            services=tuple(services),
            topics=tuple(topics),
            fallback=_text(raw, "fallback", DEFAULT_FALLBACK),
        )

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> BusinessProfile:
        """Load a profile; without a path, the packaged demo (`front_desk.yaml`)."""
        try:
            if path is None:
                text = (
                    resources.files("voicebot.models.llm")
                    .joinpath("front_desk.yaml")
                    .read_text(encoding="utf-8")
                )
            else:
                text = Path(path).read_text(encoding="utf-8")
            data = yaml.safe_load(text) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise EngineError(f"cannot load business profile {path}: {exc}") from exc
        return cls.from_dict(data)

    def day_hours(self, day: str) -> str:
        return self.hours.get(day, "closed")

    def facts(self) -> str:
        """The facts as short lines, for an LLM's system prompt."""
        lines = [
            "Opening hours: "
            + "; ".join(f"{d.capitalize()} {self.day_hours(d)}" for d in DAYS) + ".",
            f"Address: {self.address}.",
            f"Phone: {self.phone}.",
        ]  # fmt: skip
        if self.services:
            lines.append("Prices: " + "; ".join(f"{s.name} {s.price}" for s in self.services) + ".")
        lines += [f"{t.name.capitalize()}: {t.reply}" for t in self.topics if t.action is None]
        return "\n".join(f"- {line}" for line in lines)

    def system_prompt(self) -> str:
        """What the front desk's LLM is told: who it is, the facts, how to answer."""
        return (
            f"You are the receptionist of {self.business}, a {self.kind}, on the phone. "
            "Answer in one or two short sentences of plain spoken English. Use only these "
            "facts; if the answer is not in them, say you don't know and offer to help with "
            f"something else.\nFacts about {self.business}:\n{self.facts()}"
        )

    def numbers(self) -> set[int]:
        """Every number the profile states (with its greeting and fallback)."""
        texts = [self.facts(), self.greeting, self.fallback, *(t.reply for t in self.topics)]
        return {n for text in texts for n in numbers_in(text)}


# -- numbers, to catch invented facts ----------------------------------------------------------

# "one" is left out: "one of our dentists" is no claim.
_UNITS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}  # fmt: skip


def numbers_in(text: str) -> list[int]:
    """The numbers `text` states, in digits or words: "eighty-five" -> 85, "two hundred and
    fifty" -> 250, "9:30" -> 9, 30, "five five five" -> 5, 5, 5."""
    out: list[int] = []
    total, current, last = 0, 0, ""  # last: "", "unit", "tens", "scale" (in a number)

    def flush() -> None:
        nonlocal total, current, last
        if last:
            out.append(total + current)
        total, current, last = 0, 0, ""

    for w in normalise(text.replace(":", " ")).split():
        if w.isdigit():
            flush()
            out.append(int(w))
        elif w in _TENS or w in _UNITS:
            value, kind = (_TENS[w], "tens") if w in _TENS else (_UNITS[w], "unit")
            if last == "unit" or (last == "tens" and (kind == "tens" or value >= 10)):
                flush()  # "five five", "twenty thirty": a new number
            current += value
            last = kind
        elif w == "hundred":
            current, last = (current or 1) * 100, "scale"
        elif w == "thousand":
            total, current, last = total + (current or 1) * 1000, 0, "scale"
        elif not (w == "and" and last == "scale"):
            flush()
    flush()
    return out


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
    ) -> None:
        self.profile = profile
        self.desk = FrontDesk(profile, weekday)
        self.llm = llm
        self.max_sentences = max_sentences
        self.name = f"frontdesk+{llm.name}" if llm is not None else "frontdesk"
        self._known_numbers = profile.numbers()
        # What answered the last turn, for benches and logs (with calls at once: any one's).
        self.last_topic: str | None = None

    def invents(self, sentence: str) -> bool:
        """A number the profile does not state: a made-up price, time or date."""
        return any(n not in self._known_numbers for n in numbers_in(sentence))

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        answer = self.desk.answer(last_user)
        if answer is not None or self.llm is None:
            self.last_topic = answer.topic if answer else "fallback"
            for piece in _words(answer.reply if answer else self.profile.fallback):
                yield piece
            if answer is not None and answer.action is not None:
                yield answer.action
            return
        self.last_topic = "llm"
        history = [m for m in messages if m.role != "system"][-(HISTORY_MESSAGES + 1) :]
        prompt = [ChatMessage("system", self.profile.system_prompt()), *history]
        said = False
        shaped = shape_reply(self.llm.stream(prompt), self.max_sentences)
        try:
            async for piece in shaped:
                if isinstance(piece, TextDelta) and self.invents(piece.text):
                    if not said:  # nothing true said yet: say what we can do instead
                        self.last_topic = "llm-guarded"
                        for word in _words(self.profile.fallback):
                            yield word
                    return
                said = said or isinstance(piece, TextDelta)
                yield piece
        finally:
            await shaped.aclose()
