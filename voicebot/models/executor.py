"""Where CPU-heavy engine calls run: off the event loop, one worker thread per model.

ONNX Runtime, CTranslate2 and llama.cpp release the GIL while they compute, so threads
give real parallelism without pickling audio. Each model instance gets its own single
worker: calls to one model queue there (a model does one thing at a time anyway) and a
queue for the LLM never holds up the STT or TTS of another call.

Engine threads run at a lower priority than the event loop (Linux nice values are per
thread, and threads and processes they start inherit them): a turn's STT or TTS may take
longer when the machine is busy, but it never delays the 20 ms media ticks of the calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("voicebot.models")

_engine_nice = 19  # set from `engines.nice` by build_engines


def set_engine_nice(nice: int) -> None:
    """How much lower than the event loop engine threads started from now on run."""
    global _engine_nice
    _engine_nice = nice


def _lower_priority(nice: int) -> None:
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:  # per thread on Linux: who = the thread id
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.warning("cannot lower engine thread priority: %s", exc)


def model_worker(name: str, workers: int = 1) -> ThreadPoolExecutor:
    """A single-thread executor for one model instance (or a small pool for a subprocess
    engine), its threads at the engines' lower priority."""
    return ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix=name,
        initializer=_lower_priority,
        initargs=(_engine_nice,),
    )


async def run_blocking(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
    """Run `fn(*args)` on `executor` and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, fn, *args)
