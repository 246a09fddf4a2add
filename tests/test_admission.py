"""Call admission by load: engine requests waiting for their model refuse new calls.

The engine backlog is measured with an injected clock, so nothing here depends on how
fast this machine is.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.engines import ScriptedSTT
from voicebot.calls.manager import CallManager, CallRefusedError
from voicebot.calls.metrics import GatewayMetrics
from voicebot.config import Settings
from voicebot.models import executor
from voicebot.models.base import Engines
from voicebot.models.executor import EngineBacklog, run_blocking
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backlog_counts_queued_and_recently_started_requests() -> None:
    clock = _Clock()
    backlog = EngineBacklog(window_s=10.0, clock=clock)
    assert backlog.wait_s() == 0.0
    first, second = backlog.submitted(), backlog.submitted()
    clock.now += 0.5
    backlog.started(first)  # waited 0.5 s for the thread
    clock.now += 3.0
    assert backlog.wait_s() == pytest.approx(3.5)  # the second is still queued
    backlog.abandoned(second)  # cancelled while queued: no longer waiting
    assert backlog.wait_s() == pytest.approx(0.5)
    clock.now += 10.0  # the started one's wait ages out of the window
    assert backlog.wait_s() == 0.0


def test_run_blocking_reports_the_wait_for_a_busy_thread(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    clock = _Clock()
    backlog = EngineBacklog(clock=clock)
    monkeypatch.setattr(executor, "ENGINE_BACKLOG", backlog)

    async def main() -> None:
        pool = ThreadPoolExecutor(max_workers=1)
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()

        def blocked() -> str:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
            return "first"

        first = asyncio.create_task(run_blocking(pool, blocked))
        second = asyncio.create_task(run_blocking(pool, lambda: "second"))
        await asyncio.sleep(0.05)
        clock.now += 4.0  # the second has now waited 4 s behind the first
        assert backlog.wait_s() == pytest.approx(4.0)
        gate.set()
        assert await first == "first" and await second == "second"
        assert backlog.wait_s() == pytest.approx(4.0)  # recent, within the window
        pool.shutdown()

    asyncio.run(main())


def test_new_calls_are_refused_while_engines_lag() -> None:
    clock = _Clock()
    settings = Settings(server={"max_engine_wait_s": 2.0})
    engines = Engines(
        stt=ScriptedSTT(), llm=ScriptedLanguageModel.from_file(), tts=EspeakTextToSpeech()
    )
    metrics = GatewayMetrics()
    manager = CallManager(settings, engines, metrics)
    manager.engine_backlog = EngineBacklog(clock=clock)
    try:
        manager.admit("sip")  # nothing waiting
        ticket = manager.engine_backlog.submitted()
        clock.now += 2.5
        with pytest.raises(CallRefusedError, match="engines overloaded"):
            manager.admit("ws")
        refused = metrics.rejected_total.labels("ws", "engine_backlog")._value.get()
        assert refused == 1
        manager.engine_backlog.started(ticket)
        clock.now += 11.0
        manager.admit("ws")  # the backlog cleared: calls are welcome again
        off = CallManager(Settings(server={"max_engine_wait_s": 0}), engines, GatewayMetrics())
        off.engine_backlog = manager.engine_backlog
        ticket = off.engine_backlog.submitted()
        clock.now += 60.0
        off.admit("ws")  # 0 = never refuse on the backlog
    finally:
        manager.close()
