"""Admission by CPU: what a call costs in this process, learned, decides whether one more fits.

Clock and CPU counter are injected: nothing here depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.engines import ScriptedSTT
from voicebot.calls.cpu_budget import LEARNED, MIN_CALLS, SPAN_S, CpuBudget
from voicebot.calls.manager import CallManager, CallRefusedError, Refusal
from voicebot.calls.metrics import GatewayMetrics
from voicebot.config import Settings
from voicebot.models.base import Engines
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech


class _Process:
    """A fake clock and CPU counter: `run(seconds, cpus_busy, calls)` advances both."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.cpu = 0.0

    def run(self, budget: CpuBudget, seconds: int, busy: float, calls: int) -> None:
        for _ in range(seconds):
            self.now += 1.0
            self.cpu += busy
            budget.sample(calls)


def _budget(process: _Process, prior: float = 0.02) -> CpuBudget:
    return CpuBudget(0.8, prior, cpus=2, clock=lambda: process.now, cpu_s=lambda: process.cpu)


def test_the_prior_is_a_floor_until_enough_is_measured() -> None:
    process = _Process()
    budget = _budget(process)
    assert budget.capacity == 80  # 0.8 x 2 CPUs / 2 % of a core
    # A ramp of calls that have not spoken yet: cheap, but only a few seconds' worth.
    process.run(budget, 10, busy=0.2, calls=40)
    assert budget.per_call == pytest.approx(0.02)
    assert budget.admits(80) and not budget.admits(81)
    # Long enough at 3 % a call: the measurement decides, above the prior.
    process.run(budget, LEARNED + int(SPAN_S), busy=1.2, calls=40)
    assert budget.per_call == pytest.approx(0.03)
    assert budget.capacity == 53
    status = budget.status()
    assert status["measured"] and status["capacity"] == 53 and status["busy"] == pytest.approx(1.2)


def test_a_cheaper_measured_call_raises_capacity_and_is_kept_while_idle() -> None:
    process = _Process()
    budget = _budget(process)
    process.run(budget, 2 * LEARNED, busy=1.0, calls=100)
    assert budget.per_call == pytest.approx(0.01)
    assert budget.capacity == 160
    process.run(budget, 60, busy=0.0, calls=0)  # quiet hour: nothing learned, nothing lost
    assert budget.per_call == pytest.approx(0.01)


def test_the_idle_process_cost_is_not_charged_to_calls() -> None:
    process = _Process()
    budget = _budget(process)
    process.run(budget, 20, busy=0.3, calls=0)  # loop, watchdogs, pollers: 30 % of a core
    assert budget.idle_rate == pytest.approx(0.3, abs=0.02)
    process.run(budget, 2 * LEARNED, busy=0.3 + 0.02 * 50, calls=50)
    assert budget.per_call == pytest.approx(0.02, rel=0.15)  # spans across the change: p90
    assert budget.capacity == int((1.6 - budget.idle_rate) / budget.per_call)


def test_turn_bursts_count_at_their_busy_moments() -> None:
    process = _Process()
    budget = _budget(process, prior=0.0)
    for _ in range(2 * LEARNED // 10):
        process.run(budget, 8, busy=0.5, calls=50)  # quiet seconds: 1 % a call
        process.run(budget, 2, busy=1.9, calls=50)  # everyone's turn at once
    # The mean is 1.28 % a call; the estimate holds for the busiest spans of 10 s.
    assert budget.per_call > 0.0128


def test_few_calls_teach_nothing() -> None:
    process = _Process()
    budget = _budget(process)
    process.run(budget, 3 * LEARNED, busy=0.4, calls=MIN_CALLS - 1)  # 10 % a call: fixed costs
    assert budget.per_call == pytest.approx(0.02)


def test_the_manager_refuses_past_the_cpu_budget() -> None:
    asyncio.run(_manager_refuses())


async def _manager_refuses() -> None:
    engines = Engines(
        stt=ScriptedSTT(), llm=ScriptedLanguageModel.from_file(), tts=EspeakTextToSpeech()
    )
    metrics = GatewayMetrics()
    # One call is assumed to take a whole CPU: a second one does not fit in 0.8 x 2.
    settings = Settings(server={"cpu_budget": 0.8, "cpu_per_call": 1.0})
    manager = CallManager(settings, engines, metrics)
    try:
        manager.admit("ws")
        manager.reserve("ws-1", "ws")
        assert manager.readiness() == (Refusal.CPU, "CPU at capacity")
        with pytest.raises(CallRefusedError, match="CPU at capacity") as refused:
            manager.admit("sip")
        assert refused.value.kind is Refusal.CPU
        assert metrics.rejected_total.labels("sip", "cpu")._value.get() == 1
        off = CallManager(Settings(server={"cpu_budget": 0, "cpu_per_call": 1.0}), engines,
                          GatewayMetrics())  # fmt: skip
        for k in range(5):
            off.admit("ws")
            off.reserve(f"ws-{k}", "ws")
        off.close()
    finally:
        manager.close()


def test_calibration_scales_the_prior_until_measured() -> None:
    process = _Process()
    budget = _budget(process)
    budget.calibrate(2.0)  # a machine doing a call's work at half the speed
    assert budget.per_call == pytest.approx(0.04) and budget.capacity == 40
    budget.calibrate(0.5)  # re-calibrating replaces the ratio, it does not compound
    assert budget.per_call == pytest.approx(0.01) and budget.capacity == 160
    assert budget.status()["calibration"] == 0.5
    process.run(budget, 2 * LEARNED, busy=1.5, calls=50)  # measured: 3 % a call decides
    assert budget.per_call == pytest.approx(0.03)
    budget.calibrate(1.0)
    assert budget.per_call == pytest.approx(0.03)


def test_calibration_times_the_real_parts() -> None:
    from voicebot.calls import cpu_calibration
    from voicebot.models.turn import load_turn_model
    from voicebot.models.vad.silero import SileroVad

    vad, turn = SileroVad.shared(), load_turn_model()
    assert turn is not None
    result = cpu_calibration.calibrate(vad, turn)
    assert set(result.parts) == {"media", "vad", "turn"}
    assert all(value > 0 for value in result.parts.values())
    assert cpu_calibration.MIN_RATIO <= result.ratio <= cpu_calibration.MAX_RATIO
    assert "media x" in result.describe()
    without_turn = cpu_calibration.calibrate(vad, None)
    assert set(without_turn.parts) == {"media", "vad"}


def test_calibration_is_clamped(monkeypatch: pytest.MonkeyPatch) -> None:
    from voicebot.calls import cpu_calibration
    from voicebot.models.vad.silero import SileroVad

    vad = SileroVad.shared()
    # A reference machine a million times faster: this one is "slower" than any clamp.
    reference = dict(cpu_calibration.REFERENCE_S)
    fast = {name: seconds * 1e-6 for name, seconds in reference.items()}
    monkeypatch.setattr(cpu_calibration, "REFERENCE_S", fast)
    assert cpu_calibration.calibrate(vad, None).ratio == cpu_calibration.MAX_RATIO
    slow = {name: seconds * 1e6 for name, seconds in reference.items()}
    monkeypatch.setattr(cpu_calibration, "REFERENCE_S", slow)
    assert cpu_calibration.calibrate(vad, None).ratio == cpu_calibration.MIN_RATIO
