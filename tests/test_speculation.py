"""The speculator's done-callback on a failed early transcript: whatever the speculation's
fate (superseded, taken, still current), its STT error is retrieved there, so an overloaded
gateway (STT timeouts) logs no "Task exception was never retrieved" tracebacks."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from voicebot.agent.clock import EngineTimeoutError
from voicebot.agent.speculation import Speculation, Speculator
from voicebot.agent.turn_timing import StageTimes


@pytest.mark.parametrize("current", [False, True])
def test_failed_speculation_is_retrieved(caplog: pytest.LogCaptureFixture, current: bool) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")

    async def go() -> None:
        async def stt() -> None:
            raise EngineTimeoutError("timed out after 10 s")

        task = asyncio.create_task(stt())
        await asyncio.sleep(0)
        times = StageTimes(lambda: 1.0, speculative=True, vad_speech_end=1.0)
        speculation = Speculation(1.0, task, times)  # type: ignore[arg-type]
        speculator = Speculator(
            config=None, segmenter=None, conversation=None, engine_calls=None,  # type: ignore[arg-type]
            now=lambda: 1.0,
        )  # fmt: skip
        if current:  # else superseded: a later pause or speech_end replaced it
            speculator.current = speculation
        speculator._start_reply(speculation)
        assert speculation.reply is None

    asyncio.run(go())
    gc.collect()
    assert "never retrieved" not in caplog.text
