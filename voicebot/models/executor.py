"""The thread pool CPU-heavy engine calls run on, off the event loop.

One pool per process, sized to the cores: ONNX Runtime, CTranslate2 and llama.cpp release
the GIL while they compute, so threads give real parallelism without pickling audio.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None


def engine_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="engine"
        )
    return _pool


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    """Run `fn(*args)` on the engine pool and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(engine_pool(), fn, *args)
