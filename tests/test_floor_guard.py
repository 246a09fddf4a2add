"""Background talk must not hold the floor (agent/floor_guard.py), on simulated calls with
the real Silero VAD: babble that the VAD takes for speech is cut once STT finds no words in
it, the bot answers / goes on, and a caller speaking over the same babble still gets in."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests import audiogen
from voicebot.agent.config import AgentConfig
from voicebot.agent.simulator import SimulationResult, simulate_call
from voicebot.models.base import Engines, Transcript
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech

SR = 16000
CONFIG = AgentConfig(greeting=None, vad_event_interval_ms=0)
BABBLE_DBFS = -30.0


class LevelOracleSTT:
    """Words only where the audio has a block as loud as the caller's own speech (the test's
    clean utterances); babble is far quieter and gets no words, as Whisper mostly gives."""

    name = "oracle-stt"

    def __init__(self, words: list[str]) -> None:
        self.words = list(words)
        self.inputs: list[np.ndarray] = []

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.inputs.append(audio)
        await asyncio.sleep(0.05)
        n = len(audio) // 320
        x = audio[: n * 320].astype(np.float64).reshape(n, 320) / 32768.0
        loud = n and 10 * np.log10(np.mean(x * x, axis=1).max() + 1e-12) > BABBLE_DBFS + 12
        return Transcript(self.words[0] if loud and self.words else "")


@pytest.fixture(scope="module")
def babble_line() -> np.ndarray:
    noise = audiogen.babble(40 * SR, np.random.default_rng(5))
    return noise * (32768.0 * 10 ** (BABBLE_DBFS / 20))


def caller_audio(babble: np.ndarray, babble_from: float, total: float, *speech: tuple[float, str]):
    out = np.zeros(int(total * SR))
    i = int(babble_from * SR)
    out[i:] += babble[: len(out) - i]
    for start, text in speech:
        clip = audiogen.trimmed_speech(text).astype(np.float64)
        j = int(start * SR)
        out[j : j + len(clip)] += clip
    return np.clip(out, -32768, 32767).astype(np.int16)


def run(audio: np.ndarray, stt: LevelOracleSTT, config: AgentConfig = CONFIG) -> SimulationResult:
    engines = Engines(stt, ScriptedLanguageModel.from_file(), EspeakTextToSpeech())
    return asyncio.run(simulate_call(audio, engines, config=config, tail_seconds=2.0))


def segments(result: SimulationResult) -> list[tuple[float, float]]:
    """(speech_start t, speech_end t or the call's end) of every caller segment."""
    out, start = [], None
    for event in result.events:
        if event["type"] == "speech_start":
            start = event["t"]
        elif event["type"] == "speech_end" and start is not None:
            out.append((start, event["t"]))
            start = None
    if start is not None:
        out.append((start, result.events[-1]["t"]))
    return out


def test_babble_alone_does_not_hold_the_floor(babble_line) -> None:
    audio = caller_audio(babble_line, 0.5, 30.0)
    result = run(audio, LevelOracleSTT([]))
    spans = segments(result)
    assert spans, "the VAD should take this babble for speech (else the test shows nothing)"
    longest = max(end - start for start, end in spans)
    assert longest < CONFIG.max_wordless_segment_ms / 1000 + 1.0
    # Cut once, then the floor keeps the same babble from reopening a segment every time.
    assert len(spans) <= 3
    cuts = [e for e in result.events if e["type"] == "speech_end" and e["duration"] > 3.0]
    assert cuts and all(e["ended_by"] == "no_words" for e in cuts)


def test_without_the_guard_babble_holds_the_floor(babble_line) -> None:
    audio = caller_audio(babble_line, 0.5, 30.0)
    unguarded = CONFIG.model_copy(update={"max_wordless_segment_ms": 0})
    result = run(audio, LevelOracleSTT([]), unguarded)
    assert max(end - start for start, end in segments(result)) > 20.0


def test_the_bot_answers_a_caller_over_babble(babble_line) -> None:
    audio = caller_audio(babble_line, 0.5, 30.0, (12.0, "What is the balance on my account?"))
    result = run(audio, LevelOracleSTT(["what is the balance on my account"]))
    transcripts = [e for e in result.events if e["type"] == "transcript" and e["text"]]
    assert [e["text"] for e in transcripts] == ["what is the balance on my account"]
    assert 12.0 < transcripts[0]["t"] < 16.0
    speaking = [e["t"] for e in result.events if e.get("state") == "SPEAKING"]
    assert any(transcripts[0]["t"] <= t < transcripts[0]["t"] + 3.0 for t in speaking)


def test_babble_over_the_bot_lets_its_reply_go_on(babble_line) -> None:
    # The caller asks, the bot answers at length; babble starts under the reply.
    audio = caller_audio(babble_line, 4.0, 30.0, (0.5, "What is the balance on my account?"))
    result = run(audio, LevelOracleSTT(["what is the balance on my account"]))
    spans = [s for s in segments(result) if s[0] > 4.0]
    assert all(end - start < CONFIG.max_wordless_segment_ms / 1000 + 1.0 for start, end in spans)
    # After any interruption the noise caused, the bot speaks again.
    states = [(e["t"], e["state"]) for e in result.events if e["type"] == "state"]
    last_interrupt = max((t for t, s in states if s == "INTERRUPTED"), default=0.0)
    assert any(s == "SPEAKING" and t > last_interrupt for t, s in states)
