"""Where CPU-heavy engine calls run: off the event loop, one worker thread per model.

ONNX Runtime, CTranslate2 and llama.cpp release the GIL while they compute, so threads
give real parallelism without pickling audio. Each model instance gets its own single
worker: calls to one model queue there (a model does one thing at a time anyway) and a
queue for the LLM never holds up the STT or TTS of another call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def model_worker(name: str) -> ThreadPoolExecutor:
    """A single-thread executor for one model instance."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)


async def run_blocking(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
    """Run `fn(*args)` on `executor` and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, fn, *args)
