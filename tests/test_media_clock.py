"""The shared SIP media clock: every call's audio moved exactly as a clock of its own would
move it, one failing call ended alone, a hung-up call no longer stepped.

Ticks are driven directly (`SipMediaClock.tick`), so nothing here depends on wall time.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.engines import ScriptedSTT
from voicebot.agent.config import AgentConfig
from voicebot.agent.events import Event
from voicebot.agent.session import CallSession, CallSetup
from voicebot.agent.vad_runner import BatchedVad
from voicebot.audio import g711
from voicebot.audio.resample import StreamingResampler
from voicebot.models.base import Engines
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech
from voicebot.models.vad import SileroVad
from voicebot.telephony.media_clock import SipMediaClock
from voicebot.telephony.media_load import MediaLoad
from voicebot.telephony.rtp import RtpSession
from voicebot.telephony.sdp import PCMA, PCMU

QUIET = AgentConfig(greeting=None, vad_event_interval_ms=0)


class _Recorder:
    """The call's events as on the wire."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event.to_dict())


class _BrokenInputStage:
    """An echo canceller that fails on the third frame (a bug in one call's stage)."""

    def __init__(self) -> None:
        self.frames = 0

    def process(self, frame: np.ndarray) -> np.ndarray:
        self.frames += 1
        if self.frames == 3:
            raise RuntimeError("stage exploded")
        return frame

    def reference(self, frame: np.ndarray | None) -> None:
        pass


def _leg(pt: int, vad: BatchedVad, name: str, **kw) -> tuple[RtpSession, CallSession, _Recorder]:  # type: ignore[no-untyped-def]
    rtp = RtpSession(pt, 101, ("127.0.0.1", 0), on_dtmf=lambda digit: None)
    engines = Engines(
        stt=ScriptedSTT(), llm=ScriptedLanguageModel.from_file(), tts=EspeakTextToSpeech()
    )
    session = CallSession(CallSetup(name, engines, rtp, config=QUIET, vad_runner=vad, **kw))
    recorder = _Recorder()
    session.bus.subscribe(recorder)
    return rtp, session, recorder


def _payloads(seed: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(n)]


@pytest.fixture
def vad(vad_model: SileroVad) -> BatchedVad:
    runner = BatchedVad(vad_model)
    yield runner
    runner.close()


def test_each_call_hears_and_sends_exactly_its_own_audio(vad: BatchedVad) -> None:
    async def main() -> None:
        clock = SipMediaClock(vad, self_clocked=False)
        legs = [_leg(PCMU, vad, "mu"), _leg(PCMA, vad, "a")]
        seen: dict[str, list[np.ndarray]] = {"mu": [], "a": []}
        for rtp, session, _ in legs:
            begin = session.begin_frame

            def spy(frame, begin=begin, name=session.call_id):  # type: ignore[no-untyped-def]
                seen[name].append(np.array(frame))
                return begin(frame)

            session.begin_frame = spy  # type: ignore[method-assign]
            clock.add(rtp, session)
        sent = {"mu": _payloads(1, 12), "a": _payloads(2, 12)}
        for i, (rtp, _, _) in enumerate(legs):
            for seq, payload in enumerate(sent["mu" if i == 0 else "a"]):
                rtp.jitter.put(1000 + seq, payload)
        # What a clock of each call's own would produce: decode, then a resampler per call.
        bot = (np.sin(np.arange(320 * 12) / 5) * 8000).astype(np.int16).reshape(12, 320)
        outboxes = []
        for tick in range(12):
            # The bot talks on the µ-law call only on ticks 3..7; silence elsewhere.
            legs[0][0].out_frame = bot[tick] if 3 <= tick < 8 else None
            assert await clock.tick() == 2
            outboxes.append(dict(clock._outbox))
        for name, pt in (("mu", PCMU), ("a", PCMA)):
            decode = g711.ulaw_decode if pt == PCMU else g711.alaw_decode
            up = StreamingResampler(8000, 16000)
            expected = [up.process(decode(p)) for p in sent[name]]
            np.testing.assert_array_equal(np.stack(seen[name]), np.stack(expected))
        # The µ-law call's packets: the bot's frames through a resampler of its own.
        down = StreamingResampler(16000, 8000)
        mu_rtp, a_rtp = legs[0][0], legs[1][0]
        for tick in range(12):
            frame = bot[tick] if 3 <= tick < 8 else np.zeros(320, np.int16)
            want = g711.ulaw_encode(down.process(frame)).tobytes()
            assert outboxes[tick][mu_rtp] == want, tick
            assert outboxes[tick][a_rtp] == g711.alaw_encode(np.zeros(160, np.int16)).tobytes()
        await clock.close()

    asyncio.run(main())


def test_a_failing_call_ends_alone_and_a_hung_up_call_is_not_stepped(vad: BatchedVad) -> None:
    async def main() -> None:
        clock = SipMediaClock(vad, self_clocked=False)
        broken_rtp, broken, broken_events = _leg(
            PCMU, vad, "broken", echo_canceller=_BrokenInputStage()
        )
        fine_rtp, fine, _ = _leg(PCMU, vad, "fine")
        leaving_rtp, leaving, _ = _leg(PCMA, vad, "leaving")
        runs = [asyncio.create_task(s.run_driven()) for s in (broken, fine, leaving)]
        await asyncio.sleep(0)
        for rtp, session in ((broken_rtp, broken), (fine_rtp, fine), (leaving_rtp, leaving)):
            clock.add(rtp, session)
        for _ in range(2):
            await clock.tick()
        leaving.end("caller_hangup")
        for _ in range(8):
            await clock.tick()
        assert await asyncio.wait_for(runs[0], 5) == "error"
        assert await asyncio.wait_for(runs[2], 5) == "caller_hangup"
        assert not runs[1].done()
        assert fine.t == pytest.approx(10 * 0.02)  # every tick, before and after the failure
        assert leaving.t == pytest.approx(2 * 0.02)  # none after its hang-up
        errors = [e for e in broken_events.events if e["type"] == "error"]
        assert errors and "stage exploded" in errors[0]["message"]
        assert errors[0]["call_id"] == "broken"
        fine.end("caller_hangup")
        assert await asyncio.wait_for(runs[1], 5) == "caller_hangup"
        await clock.close()

    asyncio.run(main())


def test_media_load_judges_the_last_five_seconds_of_ticks() -> None:
    load = MediaLoad(max_late_ratio=0.02, window_ticks=250)
    for _ in range(40):
        load.tick(late=True)
    assert not load.overloaded  # 40 ticks (0.8 s) are too few to judge
    load.idle()
    for i in range(250):
        load.tick(late=i % 50 == 0)  # 5 of 250 late: 2 %, not over
    assert load.late_ratio == pytest.approx(0.02)
    assert not load.overloaded
    load.tick(late=True)  # the oldest (late) tick slides out, a late one comes in: still 5
    assert not load.overloaded
    load.tick(late=True)
    assert load.overloaded  # 6 of 250
    for _ in range(250):
        load.tick(late=False)
    assert not load.overloaded and load.late_ratio == 0.0
    load.tick(late=True, skipped=10)  # a stall: the skipped ticks count as late too
    assert load.late_ratio == pytest.approx(11 / 250)
    assert load.overloaded
    assert not MediaLoad(max_late_ratio=0.0).overloaded


class _VadWrapper:
    """The real batched VAD, with something happening while a tick waits for it."""

    def __init__(self, vad: BatchedVad, before=None, fail_stream=None) -> None:  # type: ignore[no-untyped-def]
        self.vad = vad
        self.before = before
        self.fail_stream = fail_stream
        self.requests: list[int] = []

    async def probabilities(self, streams, windows):  # type: ignore[no-untyped-def]
        self.requests.append(len(streams))
        if self.before is not None:
            self.before()
        if self.fail_stream is not None and any(s is self.fail_stream for s in streams):
            raise RuntimeError("bad window")
        return await self.vad.probabilities(streams, windows)

    def start(self, streams, windows):  # type: ignore[no-untyped-def]
        return asyncio.ensure_future(self.probabilities(streams, windows))


def _spy_finish(session: CallSession) -> list[int]:
    calls: list[int] = []
    finish = session.finish_frame

    def spy(windows, probabilities):  # type: ignore[no-untyped-def]
        calls.append(len(windows))
        return finish(windows, probabilities)

    session.finish_frame = spy  # type: ignore[method-assign]
    return calls


def _ticks_until_a_vad_request(clock: SipMediaClock, wrapper: _VadWrapper):  # type: ignore[no-untyped-def]
    async def run() -> None:
        for _ in range(5):  # a 32 ms window is due within two 20 ms frames
            await clock.tick()
            if wrapper.requests:
                return
        raise AssertionError("no VAD window in 5 ticks")

    return run()


def test_a_call_hung_up_while_the_vad_runs_is_not_finished(vad: BatchedVad) -> None:
    async def main() -> None:
        stay_rtp, stay, _ = _leg(PCMU, vad, "stay")
        gone_rtp, gone, _ = _leg(PCMU, vad, "gone")
        wrapper = _VadWrapper(vad, before=lambda: gone.end("caller_hangup"))
        clock = SipMediaClock(wrapper, self_clocked=False)  # type: ignore[arg-type]
        stay_finished, gone_finished = _spy_finish(stay), _spy_finish(gone)
        clock.add(stay_rtp, stay)
        clock.add(gone_rtp, gone)
        await _ticks_until_a_vad_request(clock, wrapper)
        assert gone.ending
        # Both began the tick; only the call still up was finished after the VAD.
        assert len(stay_finished) == len(gone_finished) + 1
        assert stay_finished[-1] == 1  # and it got its window's probability
        await clock.close()

    asyncio.run(main())


def test_a_bad_vad_window_ends_only_its_own_call(vad: BatchedVad) -> None:
    async def main() -> None:
        bad_rtp, bad, bad_events = _leg(PCMU, vad, "bad")
        good_rtp, good, _ = _leg(PCMU, vad, "good")
        wrapper = _VadWrapper(vad, fail_stream=bad.vad_stream)
        clock = SipMediaClock(wrapper, self_clocked=False)  # type: ignore[arg-type]
        good_finished = _spy_finish(good)
        clock.add(bad_rtp, bad)
        clock.add(good_rtp, good)
        await _ticks_until_a_vad_request(clock, wrapper)
        assert wrapper.requests == [2, 1, 1]  # the batch, then each window on its own
        assert bad.ending and not good.ending
        assert good_finished[-1] == 1
        assert any("bad window" in e.get("message", "") for e in bad_events.events)
        await clock.close()

    asyncio.run(main())


def test_failures_in_a_calls_own_step_or_send_end_only_that_call(vad: BatchedVad) -> None:
    async def main() -> None:
        clock = SipMediaClock(vad, self_clocked=False)
        legs = {name: _leg(PCMU, vad, name) for name in ("finish", "send", "fine")}
        for rtp, session, _ in legs.values():
            clock.add(rtp, session)

        def broken_finish(windows, probabilities):  # type: ignore[no-untyped-def]
            raise RuntimeError("finish exploded")

        def broken_send(payload: bytes) -> None:
            raise OSError("unreachable address")

        legs["finish"][1].finish_frame = broken_finish  # type: ignore[method-assign]
        legs["send"][0].send = broken_send  # type: ignore[method-assign]
        fine_rtp = legs["fine"][0]
        seq_before = fine_rtp._seq
        for _ in range(3):
            await clock.tick()
        assert legs["finish"][1].ending and legs["send"][1].ending
        assert not legs["fine"][1].ending
        assert (fine_rtp._seq - seq_before) & 0xFFFF == 2  # ticks 2 and 3 sent its packets
        await clock.close()

    asyncio.run(main())


def test_a_bot_frame_of_the_wrong_shape_fails_in_its_own_call() -> None:
    rtp = RtpSession(PCMU, None, ("127.0.0.1", 0), on_dtmf=lambda digit: None)
    with pytest.raises(ValueError, match="320 int16"):
        rtp.write(np.zeros(160, np.int16))
    rtp.write(np.zeros(320, np.int16))
    assert rtp.take_output() is not None and rtp.take_output() is None


def test_the_clock_outlives_a_failing_tick_and_stops_with_its_last_call(vad: BatchedVad) -> None:
    async def main() -> None:
        moved: list[int] = []
        stops: list[int] = []
        clock = SipMediaClock(
            vad, on_tick=lambda n, *_: moved.append(n), on_stop=lambda: stops.append(1)
        )
        real_tick = clock.tick
        failures: list[int] = []

        async def flaky(late: bool = False) -> int:
            if not failures:  # the first tick hits a bug
                failures.append(1)
                raise RuntimeError("tick bug")
            return await real_tick(late)

        clock.tick = flaky  # type: ignore[method-assign]
        rtp, session, _ = _leg(PCMU, vad, "one")
        clock.add(rtp, session)

        async def until(condition) -> None:  # type: ignore[no-untyped-def]
            async with asyncio.timeout(5):
                while not condition():
                    await asyncio.sleep(0.01)

        await until(lambda: len(moved) >= 3)  # ticks go on after the failing one
        assert failures == [1] and set(moved) == {1}
        clock.remove(rtp)
        await until(lambda: stops)  # no calls left: the clock task ends
        assert clock._task is None
        clock.add(rtp, session)  # and starts again with the next call
        before = len(moved)
        await until(lambda: len(moved) > before)
        await clock.close()

    asyncio.run(main())


def test_media_load_predicts_the_tick_with_one_more_call() -> None:
    load = MediaLoad(max_late_ratio=0.02, window_ticks=250, tick_budget=0.5)
    assert load.admits(10) and not load.admits(60)  # the prior: 0.2 ms a call, 10 ms budget
    for _ in range(250):  # measured here: ticks of 20 calls taking 6 ms, 0.3 ms a call
        load.tick(late=False, calls=20, seconds=0.006)
    assert load.per_call_s == pytest.approx(0.0003)
    assert load.admits(33) and not load.admits(34)  # 33 x 0.3 ms <= 10 ms < 34 x 0.3 ms
    load.idle()
    assert load.per_call_s == pytest.approx(0.0003)  # what a call costs outlives the calls
    for _ in range(250):  # a faster tick (the machine got quieter): more calls fit
        load.tick(late=False, calls=40, seconds=0.004)
    assert load.admits(99) and not load.admits(101)
    assert MediaLoad(0.02, tick_budget=0.0).admits(10_000)  # 0 = no prediction
