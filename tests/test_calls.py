"""The transport-neutral call lifecycle (`voicebot.calls`): `run_leg` with a recording leg.

The leg here is a transport with no wire: it logs every step `run_leg` asks of it, feeds a
few frames of silence and can be told to fail at any step, so the order (admit -> open ->
start -> run -> teardown -> record), refusals, and the teardown-exactly-once rule are
checked against a real CallManager, CallSession and Silero VAD.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tests.engines import ScriptedSTT
from voicebot.agent.clock import FrameTicker
from voicebot.agent.events import CallEnded, CallStarted, Event
from voicebot.agent.session import CallSession
from voicebot.audio.frames import silence
from voicebot.calls.leg import Leg, LegSetupError, run_leg
from voicebot.calls.manager import CallManager, CallRefusedError, LegMedia, Refusal
from voicebot.calls.metrics import GatewayMetrics
from voicebot.config import Settings
from voicebot.models.base import Engines
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech


class _Sink:
    def __init__(self) -> None:
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self.frames += 1

    def clear(self) -> int:
        return 0


class RecordingLeg(Leg):
    transport = "test"

    def __init__(self, manager: CallManager, *, fail_at: str | None = None,
                 frames: int = 10, hold: asyncio.Event | None = None) -> None:  # fmt: skip
        self.manager = manager
        self.fail_at = fail_at
        self.n_frames = frames
        self.hold = hold
        self.steps: list[str] = []
        self.events: list[Event] = []
        self.active_during_open = -1
        self.refusal: CallRefusedError | None = None
        self.closed_with: list[str | None] = []

    def admit(self) -> None:
        self.steps.append("admit")
        if self.fail_at == "admit":
            raise CallRefusedError(Refusal.MEDIA_OVERLOAD, "leg says no")

    async def refuse(self, refusal: CallRefusedError) -> None:
        self.steps.append("refuse")
        self.refusal = refusal

    async def open(self, call_id: str) -> LegMedia:
        self.steps.append("open")
        self.active_during_open = self.manager.active
        if self.fail_at == "open":
            raise LegSetupError("the wire said no")
        if self.fail_at == "open-crash":
            raise RuntimeError("bug in set-up")
        if self.hold is not None:
            await self.hold.wait()
        return LegMedia(_Sink(), info={"peer": "test"}, subscribers=[self.events.append])

    async def run(self, session: CallSession) -> str:
        self.steps.append("run")
        if self.fail_at == "run":
            raise RuntimeError("bug in the media loop")
        return await session.run(self._frames())

    async def _frames(self) -> AsyncIterator[np.ndarray]:
        for _ in range(self.n_frames):
            await asyncio.sleep(0)
            yield silence()
        if self.fail_at == "forever":
            while True:
                await asyncio.sleep(0.02)
                yield silence()

    async def close(self, reason: str | None) -> None:
        self.steps.append("close")
        self.closed_with.append(reason)


def _manager(**server: object) -> CallManager:
    settings = Settings(server={"warm_up": False, **server}, agent={"greeting": None})
    engines = Engines(
        stt=ScriptedSTT(), llm=ScriptedLanguageModel.from_file(), tts=EspeakTextToSpeech()
    )
    return CallManager(settings, engines, GatewayMetrics())


def _rejected(manager: CallManager, kind: str) -> float:
    return manager.metrics.rejected_total.labels("test", kind)._value.get()


def test_a_call_goes_admit_open_start_run_close_in_that_order() -> None:
    async def main() -> None:
        manager = _manager()
        leg = RecordingLeg(manager)
        try:
            reason = await run_leg(manager, leg)
        finally:
            manager.close()
        assert reason == "caller_hangup"
        assert leg.steps == ["admit", "open", "run", "close"]
        assert leg.closed_with == ["caller_hangup"]
        assert leg.active_during_open == 1  # its place is held while it sets up
        assert manager.active == 0 and not manager.calls
        assert isinstance(leg.events[0], CallStarted) and leg.events[0].info == {"peer": "test"}
        assert isinstance(leg.events[-1], CallEnded)
        assert leg.events[0].call_id.startswith("test-")

    asyncio.run(main())


def test_refused_calls_never_open_and_are_counted() -> None:
    async def main() -> None:
        manager = _manager(max_calls=1)
        hold = asyncio.Event()
        first = RecordingLeg(manager, hold=hold)
        running = asyncio.create_task(run_leg(manager, first))
        await asyncio.sleep(0.01)  # the first is setting up: it holds the only place
        second = RecordingLeg(manager)
        assert await run_leg(manager, second) is None
        assert second.steps == ["refuse"]
        assert second.refusal is not None and second.refusal.kind is Refusal.CAPACITY
        assert _rejected(manager, "capacity") == 1
        hold.set()
        assert await running == "caller_hangup"
        third = RecordingLeg(manager, fail_at="admit")
        assert await run_leg(manager, third) is None
        assert third.steps == ["admit", "refuse"]  # the leg's own rule, after the manager's
        assert third.refusal is not None and third.refusal.kind is Refusal.MEDIA_OVERLOAD
        assert _rejected(manager, "overload") == 1  # a leg's own refusals are counted too
        manager.draining = True
        fourth = RecordingLeg(manager)
        assert await run_leg(manager, fourth) is None
        assert fourth.refusal is not None and fourth.refusal.kind is Refusal.SHUTTING_DOWN
        assert manager.active == 0
        manager.close()

    asyncio.run(main())


@pytest.mark.parametrize("fail_at", ["open", "open-crash", "run"])
def test_a_failing_leg_is_torn_down_once_and_frees_its_place(fail_at: str) -> None:
    async def main() -> None:
        manager = _manager()
        leg = RecordingLeg(manager, fail_at=fail_at)
        try:
            reason = await run_leg(manager, leg)
        finally:
            manager.close()
        assert leg.steps.count("close") == 1
        expected = "error" if fail_at == "run" else None  # never started: no end reason
        assert reason == expected and leg.closed_with == [expected]
        assert manager.active == 0 and manager._idle.is_set()
        if fail_at != "run":
            assert leg.events == []  # no session was started: no call_started

    asyncio.run(main())


def test_a_leg_cancelled_while_setting_up_is_torn_down() -> None:
    async def main() -> None:
        manager = _manager()
        leg = RecordingLeg(manager, hold=asyncio.Event())
        task = asyncio.create_task(run_leg(manager, leg))
        await asyncio.sleep(0.01)
        assert manager.active == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert leg.closed_with == [None] and manager.active == 0
        manager.close()

    asyncio.run(main())


def test_drain_ends_calls_still_running_at_the_deadline() -> None:
    async def main() -> None:
        manager = _manager()
        leg = RecordingLeg(manager, fail_at="forever")
        task = asyncio.create_task(run_leg(manager, leg))
        while not manager.calls:
            await asyncio.sleep(0.01)
        await manager.drain(0.1)
        assert await asyncio.wait_for(task, 5) == "shutdown"
        assert leg.closed_with == ["shutdown"] and manager.active == 0
        refused = RecordingLeg(manager)
        assert await run_leg(manager, refused) is None and refused.steps == ["refuse"]
        manager.close()

    asyncio.run(main())


def test_drain_deadline_also_ends_calls_still_setting_up() -> None:
    async def main() -> None:
        manager = _manager()
        leg = RecordingLeg(manager, hold=asyncio.Event())  # its set-up never finishes
        task = asyncio.create_task(run_leg(manager, leg))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(manager.drain(0.1), 5)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert leg.closed_with == [None] and manager.active == 0
        manager.close()

    asyncio.run(main())


def test_a_transports_own_limit_is_busy_before_the_process_limit() -> None:
    async def main() -> None:
        manager = _manager(max_calls=5)
        manager.limits["test"] = 1
        hold = asyncio.Event()
        first = asyncio.create_task(run_leg(manager, RecordingLeg(manager, hold=hold)))
        await asyncio.sleep(0.01)
        second = RecordingLeg(manager)
        assert await run_leg(manager, second) is None
        assert second.refusal is not None and second.refusal.kind is Refusal.BUSY
        hold.set()
        assert await first == "caller_hangup"
        assert await run_leg(manager, RecordingLeg(manager)) == "caller_hangup"
        manager.close()

    asyncio.run(main())


def test_frame_ticker_stall_rule() -> None:
    """Behind by over a frame: late. Behind by over a second: re-anchored, ticks skipped."""

    async def main() -> None:
        ticker = FrameTicker(0.02, resync_s=1.0)
        first = await ticker.wait()
        assert first.index == 0 and not first.late
        time.sleep(0.1)  # the loop is blocked for five frames
        behind = await ticker.wait()
        assert behind.late and behind.skipped == 0
        time.sleep(1.3)  # blocked for over the resync limit
        stalled = await ticker.wait()
        assert stalled.late and stalled.skipped >= 50  # ~60 frames given up, not burst
        began = time.monotonic()
        after = await ticker.wait()
        # Re-anchored at the stall: the next tick is a frame later, not a burst of catch-ups.
        assert after.index == stalled.index + 1 and time.monotonic() - began > 0.01

    asyncio.run(main())


def test_turn_latency_feeds_the_stage_histograms() -> None:
    from prometheus_client import generate_latest

    from voicebot.agent.events import TurnLatency

    metrics = GatewayMetrics()
    on_event = metrics.for_call("ws")
    on_event(TurnLatency(call_id="c", t=3.0, speculative=True, speech_end=2.5,
                         stt_wait_ms=0.0, llm_wait_ms=120.0, tts_wait_ms=400.0, total_ms=500.0))
    on_event(TurnLatency(call_id="c", t=9.0, speculative=False, speech_end=8.0, total_ms=1000.0))
    text = generate_latest(metrics.registry).decode()
    assert 'voicebot_turn_stage_wait_seconds_count{stage="total"} 2.0' in text
    assert 'voicebot_turn_stage_wait_seconds_count{stage="tts"} 1.0' in text
    assert 'voicebot_turn_stage_wait_seconds_sum{stage="total"} 1.5' in text
    assert 'voicebot_turns_answered_total{speculative="true"} 1.0' in text
    assert 'voicebot_turns_answered_total{speculative="false"} 1.0' in text
