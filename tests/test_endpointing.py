"""End of turn in the agent: the fixed silence rule against the turn model (agent/endpointing.py).

Whole calls through `simulate_call` in virtual time. Stub turn models (fixed answers at a
fixed cost) test the endpointer's logic exactly; the real Smart Turn model is used on human
speech where the point is what the model hears.
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from tests import audiogen, human_speech
from tests.engines import ScriptedSTT
from voicebot.agent.config import AgentConfig
from voicebot.agent.endpointing import pause_padded
from voicebot.agent.simulator import SimulationResult, simulate_call
from voicebot.models.base import Engines
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech
from voicebot.models.turn import SmartTurn, load_turn_model
from voicebot.models.turn.weights import SMART_TURN_V3
from voicebot.models.vad import SpeechSegmenter, VadParams

SR = 16000
FIXED = AgentConfig(greeting=None, vad_event_interval_ms=0, endpointing="fixed")
SMART = FIXED.model_copy(update={"endpointing": "smart_turn"})
SMART_PREFIX = int(0.2 * SR)  # VadParams().prefix_padding_ms travels with the turn
# Where a verdict may end the turn: the first whole VAD window count (32 ms each) at or over
# turn_min_silence_ms.
DECIDE_S = 0.032 * math.ceil(SMART.turn_min_silence_ms / 32)


class StubTurnModel:
    """Answers `p` after `cost_s` (charged by the virtual clock); keeps what it was given."""

    name = "stub-turn"

    def __init__(self, p: float, cost_s: float = 0.05, fail: bool = False) -> None:
        self.p, self.cost_s, self.fail = p, cost_s, fail
        self.inputs: list[np.ndarray] = []

    async def probability(self, audio: np.ndarray) -> float:
        self.inputs.append(audio)
        await asyncio.sleep(self.cost_s)
        if self.fail:
            raise RuntimeError("turn model exploded")
        return self.p


@pytest.fixture(scope="module")
def engines() -> Engines:
    return Engines(ScriptedSTT(), ScriptedLanguageModel.from_file(), EspeakTextToSpeech())


def _fresh(engines: Engines) -> Engines:
    # Words in every segment: a caller, not background talk to be cut as wordless.
    return Engines(ScriptedSTT(["my number is"] * 8), engines.llm, engines.tts)


def run(audio: np.ndarray, engines: Engines, config: AgentConfig, turn_model=None,
        **kw) -> SimulationResult:  # fmt: skip
    return asyncio.run(
        simulate_call(audio, _fresh(engines), config=config, turn_model=turn_model, **kw)
    )


def ends(result: SimulationResult) -> list[dict]:
    return [e for e in result.events if e["type"] == "speech_end"]


def paused(first: np.ndarray, second: np.ndarray, pause_s: float) -> np.ndarray:
    gap = np.zeros(int(pause_s * SR), np.int16)
    lead, tail = np.zeros(SR // 2, np.int16), np.zeros(4 * SR, np.int16)
    return np.concatenate([lead, first, gap, second, tail])


def generated_paused(pause_s: float = 0.8) -> np.ndarray:
    return paused(audiogen.trimmed_speech("my number is four five"),
                  audiogen.trimmed_speech("seven two"), pause_s)  # fmt: skip


def vad_end(result: SimulationResult) -> float:
    """Where the VAD's first segment stopped (its onset + duration): the turn's speech end
    as the segmenter saw it, before any wait."""
    start = next(e for e in result.events if e["type"] == "speech_start")
    return start["onset"] + ends(result)[0]["duration"]


# -- the segmenter's part ----------------------------------------------------------------


def test_segmenter_ends_at_a_pause_only_when_asked() -> None:
    seg = SpeechSegmenter(VadParams(min_silence_ms=2000))
    window = np.ones(512, np.int16)
    for _ in range(10):
        seg.push(window, 0.9)
    assert seg.pause_start is None and seg.end_at_pause() is None  # speech goes on
    for _ in range(7):
        seg.push(window, 0.1)
    assert seg.pause_start == pytest.approx(10 * 512 / SR)
    assert len(seg.audio_so_far()) == 17 * 512  # the pause so far included
    end = seg.end_at_pause()
    assert end is not None and end.end == pytest.approx(10 * 512 / SR)
    assert end.t == pytest.approx(17 * 512 / SR) and len(end.audio) == 10 * 512
    assert not seg.in_speech and seg.end_at_pause() is None


# -- the endpointer's logic, with stub models ----------------------------------------------


def test_a_pause_judged_unfinished_is_one_turn_and_two_with_the_fixed_rule(engines) -> None:
    audio = generated_paused(0.8)
    assert len(ends(run(audio, engines, FIXED))) == 2
    model = StubTurnModel(0.1)
    result = run(audio, engines, SMART, model)
    assert len(ends(result)) == 1
    # Asked at the mid-sentence pause and again at the end; each time on the turn so far.
    assert len(model.inputs) == 2 and len(model.inputs[1]) > len(model.inputs[0])
    # Judged unfinished at the end too: the longest wait ends it.
    decided = ends(result)[0]["t"] - vad_end(result)
    assert decided == pytest.approx(SMART.turn_max_silence_ms / 1000, abs=0.07)
    # The speech_end says why it came when it did.
    assert ends(result)[0]["ended_by"] == "longest_wait"
    assert ends(result)[0]["turn_probability"] == 0.1
    assert {e["ended_by"] for e in ends(run(audio, engines, FIXED))} == {"silence"}


def test_a_turn_judged_complete_ends_after_min_silence_plus_model_time(engines) -> None:
    audio = paused(audiogen.trimmed_speech("What time do you open on Saturday?"),
                   np.zeros(0, np.int16), 0.0)  # fmt: skip
    smart = run(audio, engines, SMART, StubTurnModel(0.9, cost_s=0.05))
    fixed = run(audio, engines, FIXED)
    wait = ends(smart)[0]["t"] - vad_end(smart)
    # turn_min_silence_ms of VAD silence (whole windows), at most the model's 50 ms, a frame.
    assert SMART.turn_min_silence_ms / 1000 <= wait <= DECIDE_S + 0.05 + 0.02 + 1e-6
    assert ends(fixed)[0]["t"] - vad_end(fixed) >= 0.5
    assert ends(smart)[0]["t"] < ends(fixed)[0]["t"] - 0.2


def test_the_verdict_is_asked_ahead_so_it_is_ready_at_min_silence(engines) -> None:
    # Asked before the pause reaches turn_min_silence_ms (by the time verdicts take), with
    # the pause's audio repeated to its length then: the model's 50 ms are not added.
    audio = paused(audiogen.trimmed_speech("What time do you open on Saturday?"),
                   np.zeros(0, np.int16), 0.0)  # fmt: skip
    model = StubTurnModel(0.95, cost_s=0.05)
    result = run(audio, engines, SMART, model)
    wait = ends(result)[0]["t"] - vad_end(result)
    assert DECIDE_S - 1e-6 <= wait <= DECIDE_S + 0.02 + 1e-6
    assert ends(result)[0]["ended_by"] == "turn_model"
    assert ends(result)[0]["turn_probability"] == 0.95
    heard = model.inputs[-1]  # (a word gap may have been asked about too)
    start = next(e for e in result.events if e["type"] == "speech_start")
    # The model got the turn up to DECIDE_S into the pause: no more, no less.
    expected = round((vad_end(result) + DECIDE_S - start["onset"]) * SR) + SMART_PREFIX
    assert abs(len(heard) - expected) <= 1


def test_a_slow_model_is_asked_earlier_on_the_next_turns(engines) -> None:
    # 300 ms verdicts: the first turn waits for it; the call learns and asks the next ones
    # as early as it may (64 ms into the pause).
    question = audiogen.trimmed_speech("What time do you open on Saturday?")
    audio = np.zeros(14 * SR, np.int16)
    for at in (0.5, 5.0, 9.5):
        audio[int(at * SR) : int(at * SR) + len(question)] = question
    model = StubTurnModel(0.95, cost_s=0.3)
    result = run(audio, engines, SMART, model)
    starts = [e for e in result.events if e["type"] == "speech_start"]
    waits = [
        e["t"] - (s["onset"] + e["duration"]) for s, e in zip(starts, ends(result), strict=True)
    ]
    assert len(waits) == 3
    # The first ask comes 100 ms ahead at the latest (a first guess of 80 ms), then the
    # measured 300 ms move it to the earliest allowed: 2 windows (64 ms) of real pause.
    first_ask = max(0.064, 0.032 * math.ceil((DECIDE_S - 0.1) / 0.032 - 1e-9))
    assert 0.064 + 0.3 - 0.01 <= waits[0] <= first_ask + 0.3 + 0.03
    assert waits[2] == pytest.approx(0.064 + 0.3, abs=0.03)
    assert waits[2] < DECIDE_S + 0.3 - 0.05  # what asking at the decision would have cost


def test_pause_padding_repeats_the_pause_to_its_length_at_the_decision() -> None:
    speech = np.full(1000, 5000, np.int16)
    pause = np.array([1, -1, 2, -2] * 256, np.int16)  # 64 ms of line noise
    padded = pause_padded(np.concatenate([speech, pause]), 64.0, 224.0, SR)
    assert len(padded) == 1000 + int(0.224 * SR)
    assert np.array_equal(padded[:1000], speech)
    assert set(np.unique(padded[1000:])) == {-2, -1, 1, 2}  # noise only, no speech
    assert pause_padded(pause, 224.0, 224.0, SR) is pause


@pytest.mark.parametrize(("p", "turns"), [(0.8, 1), (0.95, 2)])
def test_only_a_verdict_over_the_bar_ends_the_turn_at_a_pause(engines, p, turns) -> None:
    # The default bar is high (0.9): "probably complete" (0.8) at a mid-sentence pause waits.
    assert SMART.turn_threshold == 0.9
    result = run(generated_paused(0.8), engines, SMART, StubTurnModel(p))
    assert len(ends(result)) == turns


def test_the_bar_is_a_setting(engines) -> None:
    low = SMART.model_copy(update={"turn_threshold": 0.5})
    assert len(ends(run(generated_paused(0.8), engines, low, StubTurnModel(0.8)))) == 2


@pytest.mark.parametrize(("pause_s", "turns"), [(1.2, 1), (1.8, 2)])
def test_an_unfinished_turn_waits_up_to_the_longest_pause(engines, pause_s, turns) -> None:
    # Judged unfinished at every pause: a pause shorter than turn_max_silence_ms (1.5 s)
    # continues the turn, a longer one ends it, and the end waits the same 1.5 s.
    assert SMART.turn_max_silence_ms == 1500
    result = run(generated_paused(pause_s), engines, SMART, StubTurnModel(0.1))
    assert len(ends(result)) == turns
    decided = ends(result)[0]["t"] - vad_end(result)
    assert decided == pytest.approx(1.5, abs=0.07)


def test_speech_resuming_before_the_verdict_continues_the_turn(engines) -> None:
    # The model would say "complete", but only after the caller has talked on.
    result = run(generated_paused(0.6), engines, SMART, StubTurnModel(0.99, cost_s=0.9))
    assert len(ends(result)) == 1


class StubTextModel:
    """P(sentence over) = `p` for any words, after `cost_s`; keeps what it was asked."""

    name = "stub-text"

    def __init__(self, p: float, cost_s: float = 0.03, fail: bool = False) -> None:
        self.p, self.cost_s, self.fail = p, cost_s, fail
        self.texts: list[str] = []

    async def end_probability(self, text: str) -> float:
        self.texts.append(text)
        await asyncio.sleep(self.cost_s)
        if self.fail:
            raise RuntimeError("text model exploded")
        return self.p


def complete_question() -> np.ndarray:
    return paused(audiogen.trimmed_speech("I'd like to book a table for two."),
                  np.zeros(0, np.int16), 0.0)  # fmt: skip


def test_words_that_end_a_sentence_end_a_turn_the_audio_model_judged_unfinished(
    engines,
) -> None:
    # Smart Turn says 0.1 (flat speech); the early transcript's words read as finished: the
    # turn ends at turn_text_min_silence_ms (500 ms: 16 windows), not the longest wait.
    text = StubTextModel(0.5)
    result = run(complete_question(), engines, SMART, StubTurnModel(0.1), text_turn_model=text)
    (end,) = ends(result)
    assert end["ended_by"] == "transcript" and end["turn_probability"] == 0.1
    assert end["t"] - vad_end(result) == pytest.approx(0.512, abs=0.021)
    assert text.texts and text.texts[-1] == "my number is"  # the early transcript's words


def test_words_that_do_not_end_a_sentence_wait_the_longest_pause(engines) -> None:
    text = StubTextModel(0.02)
    result = run(complete_question(), engines, SMART, StubTurnModel(0.1), text_turn_model=text)
    (end,) = ends(result)
    assert end["ended_by"] == "longest_wait" and text.texts
    assert end["t"] - vad_end(result) == pytest.approx(1.5, abs=0.07)


def test_the_transcript_rule_is_a_setting_and_needs_an_early_transcript(engines) -> None:
    for config in (SMART.model_copy(update={"turn_text_threshold": 0.0}),
                   SMART.model_copy(update={"speculative_stt": False})):  # fmt: skip
        text = StubTextModel(0.99)
        result = run(complete_question(), engines, config, StubTurnModel(0.1),
                     text_turn_model=text)  # fmt: skip
        assert [e["ended_by"] for e in ends(result)] == ["longest_wait"]
        assert not text.texts


def test_a_failing_text_model_leaves_the_audio_model_alone(engines) -> None:
    text = StubTextModel(0.99, fail=True)
    result = run(complete_question(), engines, SMART, StubTurnModel(0.1), text_turn_model=text)
    assert [e["ended_by"] for e in ends(result)] == ["longest_wait"]
    errors = [e for e in result.events if e["type"] == "error"]
    assert len(errors) == 1 and "text turn model" in errors[0]["message"]
    assert result.end_reason != "error"


def test_failing_turn_model_falls_back_to_the_fixed_rule(engines) -> None:
    result = run(generated_paused(0.8), engines, SMART, StubTurnModel(0.1, fail=True))
    assert len(ends(result)) == 2  # what the fixed 500 ms rule does with a 0.8 s pause
    errors = [e for e in result.events if e["type"] == "error"]
    assert len(errors) == 1 and "turn model" in errors[0]["message"]
    assert [e["ended_by"] for e in ends(result)] == ["silence", "silence"]
    assert result.end_reason != "error"


def test_a_verdict_that_failed_in_a_word_gap_is_reported_and_the_fixed_rule_used(
    engines,
) -> None:
    # Asked ahead in a gap the caller talks on after: the failed verdict is never needed,
    # but it is the model failing all the same (and no "exception never retrieved").
    hi = audiogen.trimmed_speech("Hi")
    question = audiogen.trimmed_speech("what is the balance on my account")
    model = StubTurnModel(0.99, cost_s=0.01, fail=True)
    result = run(paused(hi, question, 0.3), engines, SMART, model)
    assert len(model.inputs) == 1  # asked in the gap only: the fixed rule from then on
    errors = [e for e in result.events if e["type"] == "error"]
    assert len(errors) == 1 and "turn model" in errors[0]["message"]
    question_end = (SR // 2 + len(hi)) / SR + 0.3 + len(question) / SR
    assert errors[0]["t"] < question_end  # reported when the gap closed, not at the end
    assert [e["ended_by"] for e in ends(result)] == ["silence"]


def test_no_turn_model_means_the_fixed_rule(engines, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VOICEBOT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(SmartTurn, "_shared", None)
    model = load_turn_model()
    assert model is None
    assert len(ends(run(generated_paused(0.8), engines, SMART, model))) == 2


def test_barge_in_does_not_wait_for_the_turn_model(engines) -> None:
    question = audiogen.trimmed_speech("What is the balance on my account?")
    again = audiogen.trimmed_speech("No wait, I need something else entirely.", "en-gb")
    audio = np.zeros(9 * SR, np.int16)
    audio[SR // 2 : SR // 2 + len(question)] = question
    audio[5 * SR : 5 * SR + len(again)] = again
    texts = ["what is the balance on my account", "no wait I need something else"]
    latencies = []
    for config, model in ((FIXED, None), (SMART, StubTurnModel(0.9, cost_s=0.3))):
        result = asyncio.run(simulate_call(
            audio, Engines(ScriptedSTT(texts), engines.llm, engines.tts), config=config,
            turn_model=model,
        ))  # fmt: skip
        latencies.append(next(e for e in result.events if e["type"] == "interrupted"))
    assert latencies[0]["t"] == latencies[1]["t"]
    assert latencies[0]["latency_ms"] == latencies[1]["latency_ms"]


# -- the real model on human speech ----------------------------------------------------------


def _human_or_skip() -> tuple[dict[str, np.ndarray], object]:
    if not human_speech.available() or not SMART_TURN_V3.cached().is_file():
        pytest.skip("human speech or smart-turn model not fetched: run `make setup`")
    model = load_turn_model()
    assert model is not None
    return {r.key: r.samples() for r in human_speech.recordings()}, model


def test_human_mid_sentence_pause_is_one_turn_with_smart_turn(engines) -> None:
    speech, model = _human_or_skip()
    sentence = speech["librivox-0920"]
    at = int(3.84 * SR)  # "... he might have been made | still more respectable than he was"
    audio = paused(sentence[:at], sentence[at:], 0.8)
    try:
        assert len(ends(run(audio, engines, SMART, model))) == 1
    finally:
        model.close()
    assert len(ends(run(audio, engines, FIXED))) == 2


def test_human_digit_string_pause_judged_probably_complete_waits(engines) -> None:
    # "five five | seven of clubs": "five five" could be a whole answer; the model's P at
    # the pause swings with its length (0.56 at 224 ms, 0.40 at 288, 0.90 at 320). Under
    # the default bar of 0.9 it is one turn; a low bar (0.3) cuts the caller off.
    speech, model = _human_or_skip()
    audio = paused(speech["cards-004"], speech["cards-003"], 0.8)
    low = SMART.model_copy(update={"turn_threshold": 0.3})
    try:
        assert len(ends(run(audio, engines, SMART, model))) == 1
        assert len(ends(run(audio, engines, low, model))) == 2
    finally:
        model.close()


class TimedTurnModel:
    """The real runner, with the time each verdict took (what the virtual clock charges)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.name, self.seconds = inner, inner.name, []

    async def probability(self, audio: np.ndarray) -> float:
        began = time.perf_counter()
        try:
            return await self.inner.probability(audio)
        finally:
            self.seconds.append(time.perf_counter() - began)


def test_human_complete_utterance_ends_within_min_silence_plus_model_time(engines) -> None:
    speech, model = _human_or_skip()
    audio = paused(speech["cards-003"], np.zeros(0, np.int16), 0.0)  # "seven of clubs"
    timed = TimedTurnModel(model)
    try:
        smart = run(audio, engines, SMART, timed)
    finally:
        model.close()
    fixed = run(audio, engines, FIXED)
    # One turn; the model asked at its end (and maybe at a word gap it was asked ahead on).
    assert len(ends(smart)) == 1 and len(timed.seconds) >= 1
    wait = ends(smart)[0]["t"] - vad_end(smart)
    # turn_min_silence_ms of VAD silence (whole windows), at most the model's own time (it
    # is asked ahead), up to a frame to act on it.
    assert wait <= DECIDE_S + timed.seconds[-1] + 0.02 + 1e-6
    assert ends(fixed)[0]["t"] - vad_end(fixed) >= 0.5


@pytest.mark.parametrize("stt_cost_s", [0.01, 0.1])
def test_a_greeting_then_a_question_after_a_comma_is_one_answer_never_talked_over(
    engines, stt_cost_s
) -> None:
    # "Hi, what is the balance on my account?": the model rightly calls "Hi" complete. The
    # default decision point (288 ms) is past this comma's pause; at 224 ms (below) the
    # turn ends there and its answer is ready (virtual time: 20-60 ms) just as the caller
    # goes on. The bot must not start it over the caller's resumed voice (a candidate onset
    # holds the reply's start); the greeting and the question are then one turn, answered
    # once. (Going on later, after the bot has started, is a barge-in like any other.)
    early = SMART.model_copy(update={"turn_min_silence_ms": 200})
    hi = audiogen.trimmed_speech("Hi")
    question = audiogen.trimmed_speech("what is the balance on my account")
    gap_s = 0.3
    stt = ScriptedSTT(["hi", "what is the balance on my account"], cost_s=stt_cost_s)
    audio = paused(hi, question, gap_s)
    call = simulate_call(audio, Engines(stt, engines.llm, engines.tts), config=early,
                         turn_model=StubTurnModel(0.99, cost_s=0.01))  # fmt: skip
    result = asyncio.run(call)
    first_end = ends(result)[0]
    resumed = (SR // 2 + len(hi)) / SR + gap_s
    assert first_end["ended_by"] == "turn_model" and first_end["t"] > resumed  # "Hi" ended
    question_end = resumed + len(question) / SR
    heard = np.flatnonzero(np.abs(result.bot_audio) > 0)
    assert len(heard) and heard[0] / SR > question_end
    said = [e["text"] for e in result.events if e["type"] == "bot_text"]
    assert said and said[0].startswith("Your account balance is"), said


def test_a_commas_pause_does_not_end_the_turn_at_the_default_decision_point(engines) -> None:
    hi = audiogen.trimmed_speech("Hi")
    question = audiogen.trimmed_speech("what is the balance on my account")
    audio = paused(hi, question, 0.3)
    result = run(audio, engines, SMART, StubTurnModel(0.99, cost_s=0.01))
    assert len(ends(result)) == 1
    early = SMART.model_copy(update={"turn_min_silence_ms": 200})
    assert len(ends(run(audio, engines, early, StubTurnModel(0.99, cost_s=0.01)))) == 2
