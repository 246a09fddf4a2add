"""OpenAI-compatible streaming chat client: Ollama, vLLM, llama.cpp server, OpenAI.

POST {base_url}/chat/completions with stream=true; server-sent events `data: {...}` each
carry a delta, `data: [DONE]` ends. Tool calls named `transfer_call` / `end_call` become
call actions, so an LLM can hang up or hand the caller to a human.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from voicebot.models.base import (
    CallAction,
    ChatMessage,
    EngineError,
    LlmOutput,
    TextDelta,
)
from voicebot.models.http import HttpEngine, describe, raise_for_status

CALL_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "transfer_call",
            "description": "Transfer the caller to a human agent.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "end_call",
            "description": "Hang up once the caller has said goodbye.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]


class OpenAIChatLanguageModel(HttpEngine):
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_tokens: int = 200,
        temperature: float = 0.3,
        tools: bool = False,
        transfer_target: str | None = None,
    ) -> None:
        super().__init__("chat", base_url, model, api_key, timeout_s)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.tools = tools
        self.transfer_target = transfer_target

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.tools:
            body["tools"] = CALL_TOOLS
        tool_names: dict[int, str] = {}
        try:
            async with self._client.stream("POST", "/chat/completions", json=body) as response:
                if not response.is_success:
                    await response.aread()
                raise_for_status(response, self.name)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    for piece in self._parse(data, tool_names):
                        yield piece
        except httpx.HTTPError as exc:
            raise describe(exc, self.name) from exc
        for name in tool_names.values():
            if name == "transfer_call":
                yield CallAction("transfer", self.transfer_target)
            elif name == "end_call":
                yield CallAction("hangup")

    def _parse(self, data: str, tool_names: dict[int, str]) -> list[LlmOutput]:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise EngineError(f"{self.name}: malformed stream chunk {data[:100]!r}") from exc
        if "error" in chunk:
            raise EngineError(f"{self.name}: server error {chunk['error']}")
        out: list[LlmOutput] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(TextDelta(delta["content"]))
            for call in delta.get("tool_calls") or []:
                name = (call.get("function") or {}).get("name")
                if name:
                    tool_names[int(call.get("index", 0))] = name
        return out
