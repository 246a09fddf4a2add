"""The business profile the front desk answers from: a small business's facts, as its
owner wrote them.

Place in the flow: loaded once when the "frontdesk" LLM engine is built (and by the settings,
for the greeting); `voicebot.models.llm.frontdesk` matches a caller's words against it and
speaks its replies. The YAML (`front_desk.yaml`, the packaged demo clinic, or the user's copy
named by `engines.business_profile`) is checked on load: a malformed profile is an
`EngineError` naming the field, never a half-read one. `numbers()` is every number the
profile states, so the front desk can refuse an LLM reply that invents one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicebot.models.base import CallAction, EngineError
from voicebot.models.llm.yaml_files import load_yaml

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_FALLBACK = (
    "I'm sorry, I can't help with that. I can tell you about our opening hours, address, "
    "prices, or appointments."
)

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


def patterns(phrases: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(phrase_pattern(p) for p in phrases)


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
            services.append(Service(name, _text(item, "price"), patterns(words)))
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
            topics.append(Topic(name, _text(item, "reply"), patterns(keywords), action))
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
        return cls.from_dict(load_yaml(path, "front_desk.yaml", "business profile"))

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
