"""The event-loop stall watch names the callback that held the loop, and times the GC."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from voicebot.calls.loop_watch import LoopWatch


def _metrics() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    stalls = Counter("stalls_total", "", registry=registry)
    gc_seconds = Histogram("gc_seconds", "", ["generation"], registry=registry)
    return registry, stalls, gc_seconds


def hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a blocking call on the loop does to every call's media


def test_a_blocking_callback_is_counted_once_and_named(caplog: pytest.LogCaptureFixture) -> None:
    registry, stalls, gc_seconds = _metrics()

    async def main() -> LoopWatch:
        watch = LoopWatch(stalls, gc_seconds, stall_ms=50)
        watch.start()
        try:
            await asyncio.sleep(0.2)  # a quiet loop: no stall
            quiet = registry.get_sample_value("stalls_total")
            assert quiet == 0.0
            hold_the_loop(0.25)
            await asyncio.sleep(0.2)
        finally:
            watch.close()
        return watch

    with caplog.at_level(logging.WARNING, logger="voicebot.loop"):
        watch = asyncio.run(main())
    assert registry.get_sample_value("stalls_total") == 1.0
    assert 0.2 <= watch.worst_s < 1.0
    lines = [r.getMessage() for r in caplog.records if r.name == "voicebot.loop"]
    assert len(lines) == 1
    assert "hold_the_loop" in lines[0] and "test_loop_watch.py" in lines[0]


def test_full_collections_are_timed() -> None:
    # Not in the stall test: a full collection in a process that has run other tests can
    # itself hold the loop past the threshold (which is what the watch is for).
    registry, stalls, gc_seconds = _metrics()

    async def main() -> None:
        watch = LoopWatch(stalls, gc_seconds, stall_ms=60_000)
        watch.start()
        try:
            gc.collect()
        finally:
            watch.close()

    asyncio.run(main())
    assert registry.get_sample_value("gc_seconds_count", {"generation": "2"}) >= 1.0


def test_short_callbacks_are_not_stalls() -> None:
    registry, stalls, gc_seconds = _metrics()

    async def main() -> None:
        watch = LoopWatch(stalls, gc_seconds, stall_ms=80)
        watch.start()
        try:
            for _ in range(10):
                hold_the_loop(0.01)
                await asyncio.sleep(0.01)
        finally:
            watch.close()

    asyncio.run(main())
    assert registry.get_sample_value("stalls_total") == 0.0
