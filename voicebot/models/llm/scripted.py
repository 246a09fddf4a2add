"""Scripted "LLM": YAML intents matched by keywords/regex -> a reply, transfer or hang-up.

For IVR-style flows that must say exactly what they were written to say, and for
deterministic tests. The reply streams word by word like a real model's tokens, so the
agent's sentence splitting and TTS pipelining run exactly as in production. Replies (and
the fallback) may hold `{{name}}` placeholders: the agent streams the engine with its call's
renderer (`stream_rendered`), which fills them from the call's variables before the reply
is split into words.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicebot.models.base import CallAction, ChatMessage, EngineError, LlmOutput, TextDelta
from voicebot.models.llm.yaml_files import load_yaml


@dataclass(frozen=True)
class Intent:
    name: str
    reply: str
    patterns: tuple[re.Pattern[str], ...]
    action: CallAction | None = None

    def matches(self, text: str) -> bool:
        return any(p.search(text) for p in self.patterns)


def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(w) for w in keyword.lower().split())
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


def _parse_intent(raw: dict[str, Any], index: int) -> Intent:
    if not isinstance(raw, dict):
        raise EngineError(f"intent #{index} is not a mapping")
    name = str(raw.get("name", f"intent{index}"))
    reply = raw.get("reply")
    if not isinstance(reply, str) or not reply.strip():
        raise EngineError(f"intent {name!r} has no reply text")
    patterns = [_keyword_pattern(str(k)) for k in raw.get("keywords", []) or []]
    regexes = raw.get("regex", []) or []
    for rx in [regexes] if isinstance(regexes, str) else regexes:
        try:
            patterns.append(re.compile(str(rx), re.IGNORECASE))
        except re.error as exc:
            raise EngineError(f"intent {name!r}: bad regex {rx!r}: {exc}") from exc
    if not patterns:
        raise EngineError(f"intent {name!r} has neither keywords nor regex")
    action = None
    if raw.get("action") is not None:
        kind = raw["action"]
        if kind not in ("hangup", "transfer"):
            raise EngineError(f"intent {name!r}: action must be hangup or transfer, not {kind!r}")
        target = raw.get("target")
        if kind == "transfer" and not target:
            raise EngineError(f"intent {name!r}: transfer needs a target URI")
        action = CallAction(kind, str(target) if target else None)
    return Intent(name, reply.strip(), tuple(patterns), action)


class ScriptedLanguageModel:
    """Replies from a script; `fallback` when no intent matches."""

    name = "scripted"

    def __init__(self, script: dict[str, Any]) -> None:
        intents = script.get("intents") or []
        if not isinstance(intents, list):
            raise EngineError("script 'intents' must be a list")
        self.intents = [_parse_intent(raw, i) for i, raw in enumerate(intents)]
        self.fallback = str(script.get("fallback") or "Sorry, I can't help with that.")

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> ScriptedLanguageModel:
        """Load a YAML script; without a path, the packaged demo script."""
        data = load_yaml(path, "default_script.yaml", "script")
        if not isinstance(data, dict):
            raise EngineError(f"script {path} is not a YAML mapping")
        return cls(data)

    def respond(self, text: str) -> tuple[str, CallAction | None, str]:
        """(reply, action, intent name) for one caller turn."""
        for intent in self.intents:
            if intent.matches(text):
                return intent.reply, intent.action, intent.name
        return self.fallback, None, "fallback"

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        return self.stream_rendered(messages, lambda text: text)

    async def stream_rendered(
        self, messages: Sequence[ChatMessage], render: Callable[[str], str]
    ) -> AsyncIterator[LlmOutput]:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        reply, action, _ = self.respond(last_user)
        reply = render(reply)
        words = reply.split(" ")
        for i, word in enumerate(words):
            yield TextDelta(word if i == 0 else " " + word)
        if action is not None:
            yield action
