"""Event-loop stall watch: what held the media clock when every call's packets came late.

Place in the flow: beside the media path, not on it. Every call's media ticks run on the
one event loop, so a callback that holds it for 100 ms makes every call's bot audio 100 ms
late at once; the late-tick counter says that it happened, this says where. A loop
callback stamps the time every `_BEAT_S`; a watcher thread wakes as often, and when the
stamp is older than `stall_ms` it takes the loop thread's Python stack once (the frame that
is running now is the culprit, or its caller), counts the stall and logs one line per stall
(at most one a second) naming the innermost project frames. Python's garbage collector is
timed too (`gc.callbacks`): a full collection runs on whichever thread allocated last,
mostly the loop, and walks every tracked object.

Costs: 50 loop callbacks and 50 thread wake-ups a second (microseconds each).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import traceback
from typing import Any

from prometheus_client import Counter, Histogram

log = logging.getLogger("voicebot.loop")

_BEAT_S = 0.02
_LOG_EVERY_S = 1.0
_FRAMES_SHOWN = 4


class LoopWatch:
    """Watches one running event loop (see the module docstring)."""

    def __init__(self, stalls: Counter, gc_seconds: Histogram, stall_ms: float = 60.0) -> None:
        self._stalls = stalls
        self._gc_seconds = gc_seconds
        self._stall_s = stall_ms / 1000
        self._beat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop_thread = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gc_started = 0.0
        self._last_log = 0.0
        self.worst_s = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._handle = self._loop.call_later(_BEAT_S, self._tick)
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
        self._thread.start()
        gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    # -- the loop side ----------------------------------------------------------------------
    def _tick(self) -> None:
        self._beat = time.monotonic()
        assert self._loop is not None
        self._handle = self._loop.call_later(_BEAT_S, self._tick)

    # -- the watcher thread ---------------------------------------------------------------------
    def _watch(self) -> None:
        stalled_since = 0.0  # the beat of the stall being reported (one report per stall)
        while not self._stop.wait(_BEAT_S):
            beat = self._beat
            held = time.monotonic() - beat
            if held < self._stall_s + _BEAT_S or beat == stalled_since:
                continue
            stalled_since = beat
            where = self._where()
            while not self._stop.wait(0.005) and self._beat == beat:
                pass
            held = max(held, time.monotonic() - beat - _BEAT_S)
            self.worst_s = max(self.worst_s, held)
            self._stalls.inc()
            now = time.monotonic()
            if now - self._last_log >= _LOG_EVERY_S:
                self._last_log = now
                log.warning("event loop held %.0f ms in %s", held * 1000, where)

    def _where(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "?"
        stack = traceback.extract_stack(frame)
        ours = [f for f in stack if "/voicebot/" in f.filename] or stack
        shown = ours[-_FRAMES_SHOWN:]
        if stack and stack[-1] is not shown[-1]:
            shown = [*shown, stack[-1]]
        return " < ".join(
            f"{f.name} ({f.filename.rsplit('/', 2)[-1]}:{f.lineno})" for f in reversed(shown)
        )[:600]

    # -- the garbage collector ------------------------------------------------------------------
    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self._gc_seconds.labels(generation=str(info.get("generation", "?"))).observe(
                time.perf_counter() - self._gc_started
            )
            self._gc_started = 0.0
