"""The agent's behaviour on whole simulated calls: states, barge-in, resume, gating, failures.

Calls run through `simulate_call` (the real CallSession, VAD and espeak-ng TTS, scripted LLM)
in virtual time; the STT is a recording double where a test must know exactly what it heard.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from tests import audiogen
from tests.engines import CountingTTS, FailingLLM, FailingSTT, ScriptedSTT, SlowSTT
from voicebot.agent.config import AgentConfig
from voicebot.agent.simulator import SimulationResult, simulate_call
from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.models.base import ChatMessage, Engines, LlmOutput
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech

SR = 16000
QUIET = AgentConfig(greeting=None, vad_event_interval_ms=0)


@pytest.fixture(scope="module")
def tts() -> EspeakTextToSpeech:
    return EspeakTextToSpeech()


@pytest.fixture(scope="module")
def llm() -> ScriptedLanguageModel:
    return ScriptedLanguageModel.from_file()


def speech(text: str, voice: str = "en-us") -> np.ndarray:
    return audiogen.trimmed_speech(text, voice)


def timeline(*parts: tuple[float, np.ndarray], total: float) -> np.ndarray:
    """Caller audio: each (start second, clip) placed on a silent timeline."""
    out = np.zeros(int(total * SR), np.int32)
    for start, clip in parts:
        i = int(start * SR)
        out[i : i + len(clip)] += clip
    return np.clip(out, -32768, 32767).astype(np.int16)


def run(audio: np.ndarray, engines: Engines, config: AgentConfig = QUIET, **kw) -> SimulationResult:
    return asyncio.run(simulate_call(audio, engines, config=config, **kw))


def types(result: SimulationResult) -> list[str]:
    return [e["type"] for e in result.events if e["type"] != "vad"]


def first(result: SimulationResult, kind: str, **match) -> dict:
    return next(
        e
        for e in result.events
        if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
    )


def bot_active_frames(result: SimulationResult) -> np.ndarray:
    frames = result.bot_audio[: len(result.bot_audio) // FRAME_SAMPLES * FRAME_SAMPLES]
    return np.flatnonzero(np.abs(frames.reshape(-1, FRAME_SAMPLES)).max(axis=1) > 0)


def test_normal_turn_states_and_events(tts, llm) -> None:
    audio = timeline((1.0, speech("What is the balance on my account?")), total=4.0)
    stt = ScriptedSTT(["what is the balance on my account"])
    result = run(audio, Engines(stt, llm, tts))
    states = [e["state"] for e in result.events if e["type"] == "state"]
    assert states == [
        "WAITING_FOR_SPEECH",
        "LISTENING",
        "THINKING",
        "SPEAKING",
        "WAITING_FOR_SPEECH",
    ]
    assert types(result)[:2] == ["call_started", "state"]
    assert types(result)[-1] == "call_ended"
    order = [
        t for t in types(result) if t in ("speech_start", "speech_end", "transcript", "bot_text")
    ]
    assert order[:4] == ["speech_start", "speech_end", "transcript", "bot_text"]
    assert first(result, "transcript")["text"] == "what is the balance on my account"
    assert first(result, "bot_text")["text"].startswith("Your account balance is")
    assert all(e["call_id"] == "sim" and isinstance(e["t"], float) for e in result.events)
    # The bot's audio starts where SPEAKING says it does and is real speech.
    speaking_t = first(result, "state", state="SPEAKING")["t"]
    active = bot_active_frames(result)
    assert len(active) > 100
    assert active[0] == round(speaking_t / 0.02) - 1


class ReadingAheadLLM:
    """The scripted LLM, with a prompt cache: records what the agent had it read ahead,
    and how many replies it had been asked for by then."""

    def __init__(self, llm: ScriptedLanguageModel) -> None:
        self.llm = llm
        self.name = llm.name
        self.asked: list[list[ChatMessage]] = []
        self.read: list[tuple[int, list[ChatMessage]]] = []

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        self.asked.append(list(messages))
        return self.llm.stream(messages)

    def read_ahead(self, messages: Sequence[ChatMessage]) -> None:
        self.read.append((len(self.asked), list(messages)))


@pytest.mark.parametrize("enabled", [True, False])
def test_the_llm_reads_the_next_prompt_ahead_when_the_bot_stops_talking(
    tts, llm, enabled: bool
) -> None:
    audio = timeline((1.0, speech("What is the balance on my account?")),
                     (10.0, speech("Thank you, can I pay my bill?")), total=18.0)  # fmt: skip
    stt = ScriptedSTT(["what is the balance on my account", "thank you can i pay my bill"])
    reading = ReadingAheadLLM(llm)
    config = QUIET.model_copy(update={"llm_read_ahead": enabled})
    result = run(audio, Engines(stt, reading, tts), config)
    second = "thank you can i pay my bill"
    # (A speculative reply at a pause asks the LLM too: several asks per turn.)
    asked_second = [m for m in reading.asked if m[-1].content == second]
    assert asked_second and len({str(m) for m in asked_second}) == 1
    if not enabled:
        assert reading.read == []
        return
    replies = [e["text"] for e in result.events if e["type"] == "bot_text"]
    # After each reply was heard, the model read what its next prompt would start with:
    # everything the second turn was then asked with, but the caller's words.
    (asks_before_first_read, first_read), (asks_before_second_read, _) = reading.read
    assert reading.asked[asks_before_first_read - 1][-1].content != second
    assert reading.asked[asks_before_second_read - 1][-1].content == second
    assert first_read == asked_second[0][:-1]
    assert first_read[-1].role == "assistant" and first_read[-1].content.startswith(replies[0])


def test_barge_in_stops_bot_audio_within_a_frame(tts, llm) -> None:
    audio = timeline(
        (0.5, speech("What is the balance on my account?")),
        (5.0, speech("No wait, I need something else entirely.", "en-gb")),
        total=9.0,
    )
    stt = ScriptedSTT(["what is the balance on my account", "no wait I need something else"])
    result = run(audio, Engines(stt, llm, tts))
    barge = first(result, "interrupted")
    start = [e for e in result.events if e["type"] == "speech_start"][1]
    assert barge["t"] == pytest.approx(start["t"], abs=0.02)
    idx = types(result).index("interrupted")
    assert types(result)[idx : idx + 3] == ["interrupted", "state", "state"]
    states = [e["state"] for e in result.events if e["type"] == "state"]
    assert states[3:6] == ["SPEAKING", "INTERRUPTED", "LISTENING"]
    # No bot frame after the frame in which speech_start was seen, until the next reply.
    stop_frame = int(np.ceil(start["t"] / 0.02))
    next_speaking = [
        e["t"]
        for e in result.events
        if e["type"] == "state" and e["state"] == "SPEAKING" and e["t"] > start["t"]
    ]
    active = bot_active_frames(result)
    cut = active[
        (active >= stop_frame)
        & (active < (round(next_speaking[0] / 0.02) - 1 if next_speaking else 10**9))
    ]
    assert len(cut) == 0
    # Output was flushed within the reported latency of the onset, in audio time.
    assert 0 < barge["latency_ms"] <= 150
    last_before = active[active < stop_frame].max()
    assert (last_before + 1) * 0.02 <= start["onset"] + barge["latency_ms"] / 1000 + 0.021
    # What the caller heard: the reply's words up to where its audio stopped, not all of it.
    said = " ".join(e["text"] for e in result.events
                    if e["type"] == "bot_text" and e["t"] <= barge["t"])  # fmt: skip
    assert barge["heard"] and said.startswith(barge["heard"]) and barge["heard"] != said


def test_false_interruption_resumes_where_it_stopped(tts, llm) -> None:
    audio = timeline(
        (0.5, speech("What is the balance on my account?")),
        (5.0, speech("mm hmm", "en-us+f3")),
        total=14.0,
    )
    counting = CountingTTS(tts)
    stt = ScriptedSTT(["what is the balance on my account", "mm-hm"])
    result = run(audio, Engines(stt, llm, counting))
    assert len([e for e in result.events if e["type"] == "interrupted"]) == 1
    states = [e["state"] for e in result.events if e["type"] == "state"]
    assert states[-4:] == ["LISTENING", "THINKING", "SPEAKING", "WAITING_FOR_SPEECH"]
    # Nothing was synthesized twice: the remainder was kept, not regenerated.
    assert len(counting.texts) == len(set(counting.texts))
    # Every sample of the reply was played exactly once, in order, around the pause.
    full = np.concatenate([asyncio.run(tts.synthesize(t)) for t in counting.texts])
    active = bot_active_frames(result)
    played = result.bot_audio.reshape(-1, FRAME_SAMPLES)[active[0] :].reshape(-1)
    played = played[np.abs(played) > 0]
    expected = full[np.abs(full) > 0]
    np.testing.assert_array_equal(played, expected)


@pytest.mark.parametrize("words", [True, False])
def test_a_barge_in_with_words_gets_a_speculative_reply_and_a_backchannel_none(
    tts, llm, words: bool
) -> None:
    said, heard = ("Actually, can I pay my bill?", "actually can i pay my bill") if words else (
        "mm hmm", "mm-hm")  # fmt: skip
    audio = timeline((0.5, speech("What is the balance on my account?")),
                     (5.0, speech(said, "en-us+f3")), total=14.0)  # fmt: skip
    stt = ScriptedSTT(["what is the balance on my account", heard])
    recording = ReadingAheadLLM(llm)
    result = run(audio, Engines(stt, recording, tts))
    assert types(result).count("interrupted") == 1
    second = [m for m in recording.asked if m[-1].content == heard]
    if not words:
        assert second == []  # nothing asked: the cut-off reply resumes
        return
    # Asked at the pause, before speech_end, with the cut-off reply already in the history
    # as the turn commits it; that reply was adopted.
    assert len({str(m) for m in second}) == 1
    assert second[0][-2].role == "assistant" and second[0][-2].content.endswith(" ...")
    latencies = [e for e in result.events if e["type"] == "turn_latency"]
    assert len(latencies) == 2 and latencies[1]["speculative"]
    assert latencies[1]["llm_start"] < latencies[1]["speech_end"]


def test_after_a_resumed_reply_the_next_speech_is_a_new_turn(tts, llm) -> None:
    audio = timeline(
        (0.5, speech("What is the balance on my account?")),
        (5.0, speech("mm hmm", "en-us+f3")),
        (17.0, speech("Can I speak to a person please?")),
        total=24.0,
    )
    stt = ScriptedSTT(["what is the balance on my account", "mm-hm", "can I speak to a person"])
    result = run(audio, Engines(stt, llm, tts))
    # Only the "mm hmm" interrupted: once the resumed reply has played out, the bot is
    # waiting again and the caller's next words are a turn, not a barge-in.
    assert len([e for e in result.events if e["type"] == "interrupted"]) == 1
    states = [e["state"] for e in result.events if e["type"] == "state"]
    resumed = len(states) - 1 - states[::-1].index("INTERRUPTED")
    assert states[resumed:resumed + 6] == [
        "INTERRUPTED", "LISTENING", "THINKING", "SPEAKING", "WAITING_FOR_SPEECH", "LISTENING",
    ]  # fmt: skip


def test_backchannel_list_is_configurable(tts, llm) -> None:
    audio = timeline(
        (0.5, speech("What is the balance on my account?")),
        (5.0, speech("mm hmm", "en-us+f3")),
        total=12.0,
    )
    config = QUIET.model_copy(update={"backchannels": ["absolutely"]})
    stt = ScriptedSTT(["what is the balance on my account", "mm-hm"])
    result = run(audio, Engines(stt, llm, tts), config)
    # "mm-hm" is no longer a backchannel: it is a new turn, answered by the fallback.
    assert [e["text"] for e in result.events if e["type"] == "transcript"][-1] == "mm-hm"
    after = result.events[types(result).index("interrupted") :]
    assert any(e["type"] == "bot_text" and e["text"].startswith("I can help") for e in after)


@pytest.mark.parametrize("kind", ["white", "pink", "music"])
def test_noise_while_speaking_does_not_interrupt(tts, llm, kind: str) -> None:
    rng = np.random.default_rng(3)
    utt = speech("What is the balance on my account?")
    noise = audiogen.make_noise(kind, 6 * SR, rng)
    noise = np.rint(noise / np.max(np.abs(noise)) * 4000).astype(np.int16)
    audio = timeline((0.5, utt), (3.5, noise), total=10.0)
    result = run(audio, Engines(ScriptedSTT(["balance"]), llm, tts))
    assert "interrupted" not in types(result)
    assert [e["state"] for e in result.events if e["type"] == "state"][-1] == "WAITING_FOR_SPEECH"


def test_stt_only_ever_hears_speech(tts, llm) -> None:
    rng = np.random.default_rng(9)
    a = speech("What is the balance on my account?")
    b = speech("What time does the store open on Saturday morning?", "en-gb")
    noise = audiogen.make_noise("pink", 14 * SR, rng)
    noise = np.rint(noise / np.max(np.abs(noise)) * 300).astype(np.int16)
    audio = timeline((0.0, noise), (1.0, a), (8.0, b), total=14.0)
    truth = [(1.0, 1.0 + len(a) / SR), (8.0, 8.0 + len(b) / SR)]
    stt = ScriptedSTT(["balance", "open saturday"])
    run(audio, Engines(stt, llm, tts))
    assert len(stt.inputs) >= 2
    for clip in stt.inputs:
        # Every STT input is an exact slice of the caller's audio: find where.
        hits = np.flatnonzero(
            np.all(np.lib.stride_tricks.sliding_window_view(audio, 64)[:, :] == clip[:64], axis=1)
        )
        assert len(hits) == 1
        start, end = hits[0] / SR, (hits[0] + len(clip)) / SR
        assert any(s - 0.2 - 0.1 <= start and end <= e + 0.1 for s, e in truth), (start, end)


def test_stt_failure_speaks_fallback_and_call_goes_on(tts, llm) -> None:
    audio = timeline((0.5, speech("What is the balance on my account?")), total=6.0)
    counting = CountingTTS(tts)
    result = run(audio, Engines(FailingSTT(), llm, counting))
    error = first(result, "error")
    assert "STT failing-stt" in error["message"] and "exploded" in error["message"]
    assert counting.texts == ["Sorry, could you repeat that?"]
    assert first(result, "bot_text")["text"] == "Sorry, could you repeat that?"
    assert result.end_reason == "caller_hangup"


def test_stt_timeout_is_an_error_not_a_hang(tts, llm) -> None:
    audio = timeline((0.5, speech("What is the balance on my account?")), total=6.0)
    config = QUIET.model_copy(update={"stt_timeout_s": 0.2})
    result = run(audio, Engines(FailingSTT("timeout"), llm, tts), config)
    assert (
        "timed out" in first(result, "error")["message"]
        or "Timeout" in first(result, "error")["message"]
    )
    assert first(result, "bot_text")["text"] == "Sorry, could you repeat that?"


@pytest.mark.parametrize("mode", ["error", "timeout"])
def test_llm_failure_speaks_fallback(tts, mode: str) -> None:
    audio = timeline((0.5, speech("What is the balance on my account?")), total=8.0)
    config = QUIET.model_copy(update={"llm_timeout_s": 0.3})
    result = run(audio, Engines(ScriptedSTT(["balance"]), FailingLLM(mode), tts), config)
    assert "LLM failing-llm" in first(result, "error")["message"]
    said = [e["text"] for e in result.events if e["type"] == "bot_text"]
    assert said == ["Sorry, could you repeat that?"]
    assert result.end_reason == "caller_hangup"
    # The wait is still attributed: the LLM never wrote a sentence, the fallback was spoken.
    latency = first(result, "turn_latency")
    assert latency["llm_start"] is not None and latency["llm_first_sentence"] is None
    assert latency["first_audio_sent"] == first(result, "bot_text")["t"]


def test_tts_failure_is_reported_and_the_call_survives(llm) -> None:
    audio = timeline((0.5, speech("What is the balance on my account?")), total=5.0)
    failing = CountingTTS(EspeakTextToSpeech(), fail=True)
    result = run(audio, Engines(ScriptedSTT(["balance"]), llm, failing))
    assert "TTS counting-espeak-ng" in first(result, "error")["message"]
    assert [e["state"] for e in result.events if e["type"] == "state"][-1] == "WAITING_FOR_SPEECH"
    assert result.end_reason == "caller_hangup"


def test_barge_in_can_be_disabled(tts, llm) -> None:
    audio = timeline(
        (0.5, speech("What is the balance on my account?")),
        (5.0, speech("No wait, I need something else entirely.", "en-gb")),
        total=10.0,
    )
    config = QUIET.model_copy(update={"barge_in": False})
    stt = ScriptedSTT(["what is the balance on my account", "no wait"])
    result = run(audio, Engines(stt, llm, tts), config)
    assert "interrupted" not in types(result)
    assert len([e for e in result.events if e["type"] == "transcript"]) == 1


def test_hangup_intent_ends_the_call(tts, llm) -> None:
    audio = timeline((0.5, speech("Thanks, goodbye.")), total=12.0)
    result = run(audio, Engines(ScriptedSTT(["thanks goodbye"]), llm, tts))
    assert result.end_reason == "bot_hangup"
    assert first(result, "call_ended")["reason"] == "bot_hangup"
    assert first(result, "bot_text")["text"] == "Thank you for calling."


def test_greeting_is_spoken_first(tts, llm) -> None:
    audio = np.zeros(6 * SR, np.int16)
    result = run(audio, Engines(ScriptedSTT(), llm, tts), AgentConfig(vad_event_interval_ms=0))
    assert first(result, "bot_text")["text"].startswith("Hello, thanks for calling.")
    assert first(result, "state", state="SPEAKING")["t"] < 0.5


def test_engine_cost_is_charged_to_the_call_clock(tts, llm) -> None:
    audio = timeline((0.5, speech("What is the balance on my account?")), total=6.0)
    config = QUIET.model_copy(update={"speculative_stt": False})
    result = run(audio, Engines(SlowSTT(["balance"], cost_s=0.6), llm, tts), config)
    end = first(result, "speech_end")["t"]
    assert first(result, "transcript")["t"] == pytest.approx(end + 0.6, abs=0.06)


def test_turn_latency_attributes_the_wait_to_its_stages(tts, llm) -> None:
    audio = timeline((0.5, speech("What is the balance on my account?")), total=6.0)
    config = QUIET.model_copy(update={"speculative_stt": False})
    result = run(audio, Engines(SlowSTT(["balance"], cost_s=0.6), llm, tts), config)
    end = first(result, "speech_end")["t"]
    latency = first(result, "turn_latency")
    speaking = first(result, "state", state="SPEAKING", t=latency["t"])
    assert latency["first_audio_sent"] == speaking["t"]
    assert latency["speech_end"] == end and not latency["speculative"]
    assert latency["vad_speech_end"] < end  # the silence rule's wait comes first
    assert latency["stt_wait_ms"] == pytest.approx(600, abs=60)
    stamps = [latency[k] for k in ("stt_start", "stt_end", "llm_start", "llm_first_sentence",
                                   "tts_start", "tts_first_audio", "first_audio_sent")]
    assert stamps == sorted(stamps)
    assert latency["total_ms"] == pytest.approx((speaking["t"] - end) * 1000, abs=1)
    assert types(result).count("turn_latency") == 1  # the greeting is not a turn


def test_speculative_turn_latency_has_no_stt_wait(tts, llm) -> None:
    audio = timeline((0.5, speech("What is the balance on my account?")), total=6.0)
    result = run(audio, Engines(SlowSTT(["balance"], cost_s=0.25), llm, tts))
    latency = first(result, "turn_latency")
    assert latency["speculative"] and latency["stt_wait_ms"] == 0
    assert latency["stt_start"] < latency["speech_end"]


def test_speculative_transcript_is_ready_at_speech_end(tts, llm) -> None:
    audio = timeline((0.5, speech("What is the balance on my account?")), total=6.0)
    result = run(audio, Engines(SlowSTT(["balance"], cost_s=0.25), llm, tts))
    end = first(result, "speech_end")["t"]
    assert first(result, "transcript")["t"] == pytest.approx(end, abs=0.03)
    assert first(result, "state", state="SPEAKING")["t"] - end < 0.1


def test_vad_events_are_rate_limited(tts, llm) -> None:
    audio = timeline((0.5, speech("What is the balance on my account?")), total=4.0)
    config = QUIET.model_copy(update={"vad_event_interval_ms": 100})
    result = run(audio, Engines(ScriptedSTT(["balance"]), llm, tts), config)
    vads = [e for e in result.events if e["type"] == "vad"]
    times = np.array([e["t"] for e in vads])
    assert len(vads) >= 30 and np.all(np.diff(times) >= 0.0999)
    assert max(e["probability"] for e in vads) > 0.9
