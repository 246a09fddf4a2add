"""Noise suppression and line echo cancellation on SIP legs: cost, latency and effect.

SIP callers arrive narrowband and unprocessed: phone noise, and the bot's own voice echoed
back by the line. This bench measures the two input stages the agent has for such legs
(`voicebot.audio.denoise`, `voicebot.audio.echo`) on generated audio (espeak-ng speech,
numpy noise; `tests/audiogen.py`) passed through a telephone channel: 16 kHz -> 8 kHz
G.711 µ-law -> 16 kHz, delay-compensated so labels stay aligned.

Noise suppression, per method (none, our streaming `SpectralGate`, WebRTC NS at several
levels, and `noisereduce.reduce_noise(stationary=True)` offline on the whole signal as an
anchor):
1. CPU per 20 ms frame for one call (median, p99; real-time share);
2. latency added: delay of a click through it, and the lag of the in/out cross-correlation
   on noisy speech;
3. VAD false triggers on noise alone (white, pink, babble, music, street; -35 and -25 dBFS):
   speech segments per minute, as the session's denoise -> VAD chain produces them;
4. VAD frame F1 against the true speech on noisy conversations at 10/5/0 dB SNR;
5. Whisper (tiny.en) word error rate on noisy sentences at 10/5/0 dB SNR.

Line echo (the bot's speech fed back at -6/-10/-20 dB after 30/120/250 ms, plus line noise):
1. ERLE of `EchoCanceller` by time since the bot started talking, delay estimate vs truth,
   on the simulator's echo path and on a G.711 line with a dispersive hybrid;
2. self-interruptions per 10 minutes of bot speech, with and without the canceller
   (`simulate_call`: one question, a long reply, then only line noise);
3. barge-in by a real caller over the bot with the canceller on: detection rate and latency;
4. CPU per 20 ms frame of the canceller.

Markdown goes to stdout; `--json PATH` writes every figure; `--results PATH` writes (or
replaces) the "## Noise suppression (SIP legs)" and "## Line echo (SIP legs)" sections of a
Markdown file and keeps the rest; `--quick` is a smoke run of well under a minute.

    .venv/bin/python bench/denoise_bench.py --json /tmp/denoise.json --results bench/RESULTS.md
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import butter, lfilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

import noisereduce

from bench import common
from bench.common import md_table, pct, percentile_us
from tests import audiogen
from tests.audiogen import SR, mix_at_snr, trimmed_speech
from tests.engines import ScriptedSTT
from voicebot.agent.config import AgentConfig
from voicebot.agent.simulator import EchoPath, SimulationResult, simulate_call
from voicebot.audio.denoise import NoiseSuppressor, SpectralGate, WebRtcSuppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.audio.g711 import ulaw_decode, ulaw_encode
from voicebot.audio.resample import StreamingResampler, resample_whole
from voicebot.models.base import ChatMessage, Engines, LlmOutput, TextDelta
from voicebot.models.tts.espeak import EspeakTextToSpeech
from voicebot.models.vad import SileroVad, VoiceActivityDetector
from voicebot.models.vad.segmenter import SpeechEnd, SpeechStart

SEED = 20261125
FRAME_S = FRAME_SAMPLES / SR
GRID = SR // 100  # 10 ms scoring grid
NOISE_KINDS = ("white", "pink", "babble", "music", "street")
QUIET = AgentConfig(greeting=None, vad_event_interval_ms=0)
QUESTION = "what is the balance on my account"
TALK_OVERS = (
    "No, stop, I want to talk to somebody.",
    "Wait, that is not what I asked for.",
    "Sorry, can I change the delivery address?",
)
LONG_REPLY = (
    "Sure, let me go through the details of your account for you. "
    "Your current balance is forty two dollars and ten cents, and the last payment arrived "
    "on the third of this month. "
    "There is one open order, number four five seven two, which left our warehouse on "
    "Monday morning. "
    "The courier expects to deliver it by Thursday afternoon, between two and five o'clock. "
    "If nobody is at home, the parcel will be left at the post office on Market Street. "
    "You can also change the delivery address online, or ask me to do it for you now. "
    "Your subscription renews at the end of the month, and the price stays the same. "
    "Is there anything else I can help you with today?"
)
# A telephone hybrid's echo impulse response at 16 kHz: a main tap and ~1 ms of ringing.
HYBRID = np.array([0.0, 0.15, 0.8, 0.35, -0.2, -0.15, 0.08, 0.05, -0.03])
HYBRID = HYBRID / np.sqrt(np.sum(HYBRID**2))  # unit energy: gain_db is the echo return


@dataclass(frozen=True)
class Config:
    methods: tuple[str, ...]
    cost_seconds: float  # noisy speech timed per frame
    cost_passes: int
    fp_kinds: tuple[str, ...]
    fp_levels: tuple[float, ...]  # dBFS of the noise
    fp_seconds: float  # noise-only audio per kind and level
    f1_conversations: int  # of 3 utterances each
    f1_kinds: tuple[str, ...]
    snrs: tuple[float, ...]
    wer_sentences: int
    wer_kinds: tuple[str, ...]
    stt_model: str
    echo_gains: tuple[float, ...]
    echo_delays: tuple[float, ...]
    line_noise_dbfs: float
    erle_sentences: int  # bot sentences in the ERLE run
    reply: str  # the bot's long reply in the self-interruption calls
    calls_on: int  # self-interruption calls per echo condition, canceller on
    calls_off: int  # ... canceller off
    barge_on: int  # barge-in trials per echo condition, canceller on
    barge_off: int  # ... canceller off


FULL = Config(
    methods=("none", "spectral", "webrtc-1", "webrtc-2", "webrtc-3", "noisereduce"),
    cost_seconds=30.0,
    cost_passes=3,
    fp_kinds=NOISE_KINDS,
    fp_levels=(-35.0, -25.0),
    fp_seconds=90.0,
    f1_conversations=4,
    f1_kinds=NOISE_KINDS,
    snrs=(10.0, 5.0, 0.0),
    wer_sentences=8,
    wer_kinds=NOISE_KINDS,
    stt_model="base",
    echo_gains=(-6.0, -10.0, -20.0),
    echo_delays=(30.0, 120.0, 250.0),
    line_noise_dbfs=-55.0,
    erle_sentences=4,
    reply=LONG_REPLY,
    calls_on=2,
    calls_off=1,
    barge_on=3,
    barge_off=1,
)
QUICK = Config(
    methods=("none", "spectral", "webrtc-2", "noisereduce"),
    cost_seconds=4.0,
    cost_passes=1,
    fp_kinds=("pink", "street"),
    fp_levels=(-25.0,),
    fp_seconds=10.0,
    f1_conversations=1,
    f1_kinds=("pink",),
    snrs=(5.0,),
    wer_sentences=2,
    wer_kinds=("pink",),
    stt_model="tiny.en",
    echo_gains=(-6.0,),
    echo_delays=(120.0,),
    line_noise_dbfs=-55.0,
    erle_sentences=2,
    reply=" ".join(re.split(r"(?<=[.?!])\s+", LONG_REPLY)[:2]),
    calls_on=1,
    calls_off=1,
    barge_on=2,
    barge_off=0,
)


# --------------------------------------------------------------------------- audio


def phone_delay() -> int:
    """Group delay (16 kHz samples) of the 16 k -> 8 k -> 16 k resampler pair."""
    down = StreamingResampler(SR, 8000).delay_out * 2
    return down + StreamingResampler(8000, SR).delay_out


def phone(pcm: np.ndarray) -> np.ndarray:
    """A telephone channel: 8 kHz G.711 µ-law and back, time-aligned with the input."""
    delay = phone_delay()
    padded = np.concatenate([np.asarray(pcm, np.int16), np.zeros(delay + 8, np.int16)])
    narrow = resample_whole(padded, SR, 8000)
    back = resample_whole(ulaw_decode(ulaw_encode(narrow)), 8000, SR)
    return back[delay : delay + len(pcm)]


def street_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Street-ish: traffic rumble swelling as cars pass, horns, and the odd door slam."""
    b, a = butter(2, [40 / (SR / 2), 1200 / (SR / 2)], btype="band")
    rumble = lfilter(b, a, lfilter([1.0], [1.0, -0.98], rng.standard_normal(n)))
    rumble /= np.sqrt(np.mean(rumble**2)) + 1e-12
    t = np.arange(n) / SR
    env = np.full(n, 0.5)
    for centre in np.cumsum(rng.uniform(3.0, 8.0, size=int(n / SR / 3) + 2)):
        env += 1.5 * np.exp(-0.5 * ((t - centre) / rng.uniform(0.8, 1.6)) ** 2)
    out = rumble * env
    hiss = lfilter(*butter(2, 2000 / (SR / 2), btype="high"), rng.standard_normal(n))
    out += 0.3 * hiss / (np.sqrt(np.mean(hiss**2)) + 1e-12) * env
    for start in rng.uniform(0, max(n / SR - 1, 0.1), size=max(1, int(n / SR / 12))):
        i, length = int(start * SR), int(rng.uniform(0.25, 0.7) * SR)
        seg = np.arange(min(length, n - i)) / SR
        f0 = rng.uniform(380, 480)
        horn = sum(np.sin(2 * np.pi * f0 * h * seg) / h for h in (1, 2, 3, 4))
        out[i : i + len(seg)] += 2.5 * horn * np.minimum(1, np.minimum(seg, seg[::-1]) * 40)
    for start in rng.uniform(0, n / SR, size=max(1, int(n / SR / 6))):
        i = int(start * SR)
        seg = np.arange(min(int(0.08 * SR), n - i)) / SR
        out[i : i + len(seg)] += 5 * rng.standard_normal(len(seg)) * np.exp(-seg / 0.015)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise of `kind` (audiogen's four, plus street)."""
    return street_noise(n, rng) if kind == "street" else audiogen.make_noise(kind, n, rng)


def at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Unit-RMS float signal -> int16 at `dbfs` RMS (clipped)."""
    return np.clip(np.rint(x * 32768 * 10 ** (dbfs / 20)), -32768, 32767).astype(np.int16)


def seed_of(*parts: object) -> int:
    """A deterministic seed per condition (independent of iteration order)."""
    text = "/".join(str(p) for p in parts)
    return SEED + sum((i + 1) * ord(c) for i, c in enumerate(text)) % 1_000_003


def utterance(index: int) -> np.ndarray:
    """A caller sentence with varied voice, speed and pitch."""
    return trimmed_speech(
        audiogen.SENTENCES[index % len(audiogen.SENTENCES)],
        audiogen.VOICES[index % len(audiogen.VOICES)],
        speed=(150, 165, 180)[index % 3],
        pitch=(40, 50, 60)[index % 3],
    )


def frames_of(pcm: np.ndarray) -> np.ndarray:
    n = len(pcm) // FRAME_SAMPLES
    return np.asarray(pcm[: n * FRAME_SAMPLES], np.int16).reshape(n, FRAME_SAMPLES)


# --------------------------------------------------------------------------- suppressors


def make_method(method: str) -> NoiseSuppressor | None:
    """A fresh streaming suppressor (None for 'none' and the offline anchor)."""
    if method == "spectral":
        return SpectralGate()
    if method.startswith("webrtc-"):
        return WebRtcSuppressor(int(method.split("-")[1]))
    return None


def reduce_offline(pcm: np.ndarray) -> np.ndarray:
    """noisereduce's stationary gating over the whole signal (the profile from all of it)."""
    x = np.asarray(pcm, np.float32) / 32768.0
    y = noisereduce.reduce_noise(y=x, sr=SR, stationary=True)
    return np.clip(np.rint(np.asarray(y) * 32768.0), -32768, 32767).astype(np.int16)


@dataclass
class ChainOutput:
    audio: np.ndarray  # what the VAD heard
    onsets: list[float]  # speech_start onsets (s)
    segments: list[tuple[float, float]]  # closed speech segments (s)


def run_chain(pcm: np.ndarray, method: str, model: SileroVad) -> ChainOutput:
    """The session's input chain: suppressor (noise-only = the VAD is not in or entering
    speech, as `CallSession.process_frame` decides) then the streaming VAD."""
    frames = frames_of(pcm if method != "noisereduce" else reduce_offline(pcm))
    detector = VoiceActivityDetector(model)
    suppressor = make_method(method)
    out = np.empty_like(frames)
    onsets: list[float] = []
    segments: list[tuple[float, float]] = []

    def take(events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, SpeechStart):
                onsets.append(event.onset)
            elif isinstance(event, SpeechEnd):
                segments.append((event.start, event.end))

    for k, frame in enumerate(frames):
        if suppressor is not None:
            seg = detector.segmenter
            frame = suppressor.process(frame, noise_only=not (seg.in_speech or seg.speech_pending))
        out[k] = frame
        take(detector.push(frame))
    take(detector.finish())
    return ChainOutput(out.reshape(-1), onsets, segments)


# --------------------------------------------------------------------------- noise: cost


def suppressor_cost(signal: np.ndarray, methods: Sequence[str], passes: int) -> dict[str, Any]:
    """Per-frame wall and thread-CPU time of each streaming method; noisereduce per 20 ms
    of audio, whole-signal calls. One call, one core."""
    frames = frames_of(signal)
    flags = np.zeros(len(frames), bool)
    flags[:50] = True  # the first second is noise: the gate learns its profile there
    out: dict[str, Any] = {}
    for method in methods:
        if method == "none":
            continue
        wall: list[int] = []
        cpu: list[int] = []
        if method == "noisereduce":
            for _ in range(passes):
                c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                reduce_offline(signal)
                wall.append((time.perf_counter_ns() - w0) // len(frames))
                cpu.append((time.thread_time_ns() - c0) // len(frames))
            out[method] = {
                "offline": True,
                "mean_us": float(np.mean(wall)) / 1e3,
                "cpu_mean_us": float(np.mean(cpu)) / 1e3,
            }
            continue
        for _ in range(passes):
            sup = make_method(method)
            assert sup is not None
            for frame, flag in zip(frames, flags, strict=True):
                c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                sup.process(frame, noise_only=bool(flag))
                w1, c1 = time.perf_counter_ns(), time.thread_time_ns()
                wall.append(w1 - w0)
                cpu.append(c1 - c0)
        out[method] = {
            "offline": False,
            "frames": len(wall),
            "median_us": percentile_us(wall, 50),
            "p99_us": percentile_us(wall, 99),
            "mean_us": float(np.mean(wall)) / 1e3,
            "cpu_median_us": percentile_us(cpu, 50),
            "cpu_mean_us": float(np.mean(cpu)) / 1e3,
        }
    for r in out.values():
        r["rt_share"] = r["cpu_mean_us"] / (FRAME_S * 1e6)
    return out


# --------------------------------------------------------------------------- noise: latency


def streamed(pcm: np.ndarray, method: str, noise_frames: int) -> np.ndarray:
    """`pcm` through a method, the first `noise_frames` flagged noise-only."""
    if method == "noisereduce":
        return reduce_offline(pcm)
    frames = frames_of(pcm)
    sup = make_method(method)
    if sup is None:
        return frames.reshape(-1).copy()
    return np.concatenate(
        [sup.process(f, noise_only=k < noise_frames) for k, f in enumerate(frames)]
    )


def xcorr_lag(a: np.ndarray, b: np.ndarray, max_lag: int) -> int:
    """Lag L (samples) maximising sum a[t] b[t + L], |L| <= max_lag."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(x) + len(y))))
    c = np.fft.irfft(np.conj(np.fft.rfft(x, size)) * np.fft.rfft(y, size), size)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    return int(lags[int(np.argmax(c[lags]))])


def latencies(methods: Sequence[str], speech: np.ndarray) -> dict[str, Any]:
    """Delay of a click (after 1 s of faint noise to learn from) and the cross-correlation
    lag on noisy speech, per method."""
    rng = np.random.default_rng(seed_of("latency"))
    n = 2 * SR
    bed = at_dbfs(rng.standard_normal(n), -55.0).astype(np.int32)
    click_at = SR + 137  # not on a frame boundary
    bed[click_at] += 20000
    bed[click_at + 1] -= 8000
    clicked = np.clip(bed, -32768, 32767).astype(np.int16)
    out: dict[str, Any] = {}
    for method in methods:
        y = streamed(clicked, method, noise_frames=50)
        region = np.abs(y[SR - 160 : SR + 2000].astype(np.float64))
        click_delay = int(np.argmax(region)) + SR - 160 - click_at
        z = streamed(speech, method, noise_frames=50)
        lag = xcorr_lag(speech[: len(z)], z, 1600)
        declared = getattr(make_method(method), "latency_ms", 0.0)
        out[method] = {
            "declared_ms": None if method == "noisereduce" else declared,
            "click_samples": click_delay,
            "click_ms": click_delay * 1000 / SR,
            "xcorr_samples": lag,
            "xcorr_ms": lag * 1000 / SR,
        }
    return out


# --------------------------------------------------------------------------- noise: VAD


def false_triggers(cfg: Config, model: SileroVad, log: Callable[[str], None]) -> dict[str, Any]:
    """Speech segments the VAD opens on noise alone, per minute, through each method."""
    rows: dict[str, Any] = {}
    n = int(cfg.fp_seconds * SR)
    for kind in cfg.fp_kinds:
        base = noise(kind, n, np.random.default_rng(seed_of("fp", kind)))
        for level in cfg.fp_levels:
            line = phone(at_dbfs(base, level))
            for method in cfg.methods:
                chain = run_chain(line, method, model)
                speech_s = sum(e - s for s, e in chain.segments)
                rows[f"{kind}|{level:g}|{method}"] = {
                    "kind": kind,
                    "level_dbfs": level,
                    "method": method,
                    "segments": len(chain.onsets),
                    "per_minute": len(chain.onsets) / (cfg.fp_seconds / 60),
                    "speech_share": speech_s / cfg.fp_seconds,
                }
        log(f"  false triggers: {kind} done")
    return rows


def grid_mask(segments: Sequence[tuple[float, float]], n_grid: int, shift_s: float) -> np.ndarray:
    mask = np.zeros(n_grid, bool)
    for start, end in segments:
        a = max(0, round((start - shift_s) * 100))
        b = min(n_grid, round((end - shift_s) * 100))
        mask[a:b] = True
    return mask


def f1_counts(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return np.array(
        [np.sum(truth & pred), np.sum(~truth & pred), np.sum(truth & ~pred)], dtype=np.int64
    )


def f1_from(counts: np.ndarray) -> dict[str, float]:
    tp, fp, fn = (int(c) for c in counts)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def f1_of_sums(sums: np.ndarray) -> np.ndarray:
    """F1 from summed (tp, fp, fn) in the last axis."""
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def wer_of_sums(sums: np.ndarray) -> np.ndarray:
    """WER from summed (errors, words) in the last axis."""
    return sums[..., 0] / np.maximum(sums[..., 1], 1)


def paired_ci(
    units: np.ndarray,
    methods: Sequence[str],
    metric: Callable[[np.ndarray], np.ndarray],
    resamples: int = 2000,
) -> dict[str, dict[str, float]]:
    """Each method's metric minus none's, pooled over units (clips or conversations x
    conditions, shape units x methods x counts), with a 95% paired bootstrap interval
    (the same resampled units for every method)."""
    rng = np.random.default_rng(seed_of("bootstrap", units.shape))
    base = methods.index("none")
    point = metric(units.sum(axis=0))
    picks = rng.integers(0, len(units), size=(resamples, len(units)))
    boot = metric(units[picks].sum(axis=1))  # resamples x methods
    out = {}
    for mi, method in enumerate(methods):
        diff = boot[:, mi] - boot[:, base]
        out[method] = {
            "delta": float(point[mi] - point[base]),
            "lo": float(np.percentile(diff, 2.5)),
            "hi": float(np.percentile(diff, 97.5)),
        }
    return out


def vad_accuracy(
    cfg: Config, model: SileroVad, shifts: dict[str, float], log: Callable[[str], None]
) -> dict[str, Any]:
    """Frame F1 (10 ms grid) of the VAD's speech segments against the truth, per method, SNR
    and noise kind. Each method's segments are shifted back by its measured latency."""
    rng = np.random.default_rng(seed_of("f1"))
    convs = []
    for j in range(cfg.f1_conversations):
        utts = [utterance(3 * j + u + 1) for u in range(3)]
        convs.append(
            audiogen.compose(utts, list(rng.uniform(0.8, 2.5, size=2)), lead_s=1.0, tail_s=1.0)
        )
    counts: dict[tuple[str, str, float], np.ndarray] = {}
    units: list[np.ndarray] = []  # per (kind, snr, conversation): methods x (tp, fp, fn)
    for kind in cfg.f1_kinds:
        for snr in cfg.snrs:
            for j, conv in enumerate(convs):
                unit = np.zeros((len(cfg.methods), 3), np.int64)
                mask = conv.speech_mask
                bed = noise(kind, len(conv.audio), np.random.default_rng(seed_of("f1", kind, j)))
                line = phone(mix_at_snr(conv.audio, bed, snr, mask))
                n_grid = len(line) // FRAME_SAMPLES * FRAME_SAMPLES // GRID
                truth = mask[: n_grid * GRID].reshape(n_grid, GRID).mean(axis=1) >= 0.5
                for mi, method in enumerate(cfg.methods):
                    chain = run_chain(line, method, model)
                    pred = grid_mask(chain.segments, n_grid, shifts.get(method, 0.0))
                    key = (method, kind, snr)
                    unit[mi] = f1_counts(truth, pred)
                    counts[key] = counts.get(key, 0) + unit[mi]
                units.append(unit)
        log(f"  VAD F1: {kind} done")
    out: dict[str, Any] = {"by_condition": {}, "by_snr": {}, "by_kind": {}, "overall": {}}
    for (method, kind, snr), c in counts.items():
        out["by_condition"][f"{method}|{kind}|{snr:g}"] = f1_from(c)
    for method in cfg.methods:
        for snr in cfg.snrs:
            total = sum(c for (m, _, s), c in counts.items() if m == method and s == snr)
            out["by_snr"][f"{method}|{snr:g}"] = f1_from(np.asarray(total))
        for kind in cfg.f1_kinds:
            total = sum(c for (m, k, _), c in counts.items() if m == method and k == kind)
            out["by_kind"][f"{method}|{kind}"] = f1_from(np.asarray(total))
        total = sum(c for (m, _, _), c in counts.items() if m == method)
        out["overall"][method] = f1_from(np.asarray(total))
    out["delta_ci"] = paired_ci(np.stack(units), cfg.methods, f1_of_sums)
    out["units"] = len(units)
    out["conversations"] = cfg.f1_conversations
    out["audio_seconds_per_method"] = (
        sum(len(c.audio) for c in convs) / SR * len(cfg.f1_kinds) * len(cfg.snrs)
    )
    return out


# --------------------------------------------------------------------------- noise: STT

_ONES = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "twenty": "20",
    "forty": "40",
}


def words(text: str) -> list[str]:
    """Lower-case words; number words -> digits, digit runs of 3+ split into digits."""
    text = text.lower().replace(",", "").replace("-", " ")
    out: list[str] = []
    for w in re.findall(r"[a-z0-9']+", text):
        w = _ONES.get(w, w)
        if w.isdigit() and len(w) >= 3:
            out.extend(w)
        else:
            out.append(w)
    return out


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def stt_wer(
    cfg: Config, model: SileroVad, shifts: dict[str, int], log: Callable[[str], None]
) -> dict[str, Any]:
    """Whisper WER on single sentences in noise (1 s of noise before, 0.6 s after), each
    through the method in the session's chain; STT hears the sentence plus 200 ms before
    (the VAD's prefix padding), cut out of the processed audio at its delay."""
    from voicebot.models.stt.whisper import WhisperSpeechToText

    stt = WhisperSpeechToText(cfg.stt_model)
    lead, tail = SR, int(0.6 * SR)
    errors: dict[tuple[str, str, float], list[int]] = {}
    units: list[np.ndarray] = []  # per noisy clip: methods x (word errors, words)
    examples: dict[str, str] = {}
    clips = []
    for i in range(cfg.wer_sentences):
        speech = utterance(i)
        padded = np.concatenate([np.zeros(lead, np.int16), speech, np.zeros(tail, np.int16)])
        mask = np.zeros(len(padded), bool)
        mask[lead : lead + len(speech)] = True
        clips.append((audiogen.SENTENCES[i % len(audiogen.SENTENCES)], padded, mask, len(speech)))
    conditions: list[tuple[str, float | None]] = [("clean", None)]
    conditions += [(k, s) for k in cfg.wer_kinds for s in cfg.snrs]
    for kind, snr in conditions:
        for i, (ref_text, padded, mask, n_speech) in enumerate(clips):
            if snr is None:
                line = phone(padded)
            else:
                bed = noise(kind, len(padded), np.random.default_rng(seed_of("wer", kind, i)))
                line = phone(mix_at_snr(padded, bed, snr, mask))
            unit = np.zeros((len(cfg.methods), 2), np.int64)
            for mi, method in enumerate(cfg.methods if snr is not None else ("none",)):
                chain = run_chain(line, method, model)
                start = lead - SR // 5 + shifts.get(method, 0)
                heard = chain.audio[max(0, start) : start + SR // 5 + n_speech + SR // 5]
                hyp = stt.transcribe_sync(heard).text
                ref = words(ref_text)
                key = (method, kind, snr if snr is not None else -1.0)
                e = errors.setdefault(key, [0, 0])
                unit[mi] = edit_distance(ref, words(hyp)), len(ref)
                e[0] += int(unit[mi, 0])
                e[1] += len(ref)
                if i == 0 and snr == min(cfg.snrs):
                    examples[f"{method}|{kind}"] = hyp
            if snr is not None:
                units.append(unit)
        log(f"  WER: {kind} {snr} done")
    out: dict[str, Any] = {
        "model": cfg.stt_model,
        "by_condition": {},
        "by_snr": {},
        "by_kind": {},
        "overall": {},
        "examples": examples,
    }
    clean = errors[("none", "clean", -1.0)]
    out["clean"] = clean[0] / clean[1]
    for (method, kind, snr), (err, n) in errors.items():
        out["by_condition"][f"{method}|{kind}|{snr:g}"] = err / n
    for method in cfg.methods:
        for snr in cfg.snrs:
            e = [v for (m, k, s), v in errors.items() if m == method and s == snr and k != "clean"]
            out["by_snr"][f"{method}|{snr:g}"] = sum(x[0] for x in e) / sum(x[1] for x in e)
        for kind in cfg.wer_kinds:
            e = [v for (m, k, _), v in errors.items() if m == method and k == kind]
            out["by_kind"][f"{method}|{kind}"] = sum(x[0] for x in e) / sum(x[1] for x in e)
        e = [v for (m, k, _), v in errors.items() if m == method and k != "clean"]
        out["overall"][method] = sum(x[0] for x in e) / sum(x[1] for x in e)
    out["delta_ci"] = paired_ci(np.stack(units), cfg.methods, wer_of_sums)
    out["clips_per_method"] = len(clips) * len(cfg.wer_kinds) * len(cfg.snrs)
    return out


# --------------------------------------------------------------------------- echo: ERLE


def synthesize(texts: Sequence[str]) -> np.ndarray:
    """The bot's voice (espeak-ng via the real TTS engine), sentences back to back."""
    tts = EspeakTextToSpeech()

    async def run() -> list[np.ndarray]:
        return [await tts.synthesize(t) for t in texts]

    return np.concatenate(asyncio.run(run()))


def sentences_of(text: str) -> list[str]:
    parts = re.split(r"(?<=[.?!])\s+", text.strip())
    return [p for p in parts if p]


def echo_line(
    bot: np.ndarray, total: int, bot_at: int, path: EchoPath, line: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """(input the canceller gets, its echo component, expected delay in samples).

    The bot's tick-k frame is sent at the end of input frame k and comes back `delay_ms`
    later, as in `simulate_call`, so the true lag is the path delay plus one frame. 'sim':
    the simulator's path (gain, delay, white line noise). 'g711': the bot's audio crosses
    G.711 to the far end, a dispersive hybrid reflects it, and the return (echo plus line
    noise) crosses G.711 again."""
    ref = np.zeros(total)
    ref[bot_at : bot_at + len(bot)] = bot
    lag = FRAME_SAMPLES + int(path.delay_ms * 16)
    gain = 10 ** (path.gain_db / 20)
    if line == "sim":
        reflected, peak = ref * gain, 0
    else:
        far = phone(np.clip(np.rint(ref), -32768, 32767).astype(np.int16)).astype(np.float64)
        reflected = np.convolve(far, HYBRID * gain)[:total]
        peak = int(np.argmax(np.abs(HYBRID)))
    echo = np.zeros(total)
    echo[lag:] = reflected[: total - lag]
    line_noise = rng.standard_normal(total) * 32768 * 10 ** (path.noise_dbfs / 20)
    mixed = np.clip(np.rint(echo + line_noise), -32768, 32767).astype(np.int16)
    if line == "g711":
        mixed = phone(mixed)
    return mixed, echo, lag + peak


def erle_runs(cfg: Config, bot: np.ndarray, log: Callable[[str], None]) -> dict[str, Any]:
    """The canceller over each echo condition and line: ERLE by time since the bot began,
    the delay estimate, and the per-frame cost."""
    bot_at = SR  # 1 s of line noise first
    total = (bot_at + len(bot) + SR) // FRAME_SAMPLES * FRAME_SAMPLES
    ref_frames = frames_of(
        np.concatenate([np.zeros(bot_at, np.int16), bot, np.zeros(SR, np.int16)])
    )
    bins = ((0.0, 0.5), (0.5, 2.0), (2.0, 1e9))
    rows: dict[str, Any] = {}
    for line in ("sim", "g711"):
        for gain in cfg.echo_gains:
            for delay in cfg.echo_delays:
                path = EchoPath(gain, delay, cfg.line_noise_dbfs)
                rng = np.random.default_rng(seed_of("erle", line, gain, delay))
                mixed, echo, expected = echo_line(bot, total, bot_at, path, line, rng)
                ec = EchoCanceller()
                inp = frames_of(mixed)
                res = np.empty_like(inp)
                delays: list[int | None] = []
                for k in range(len(inp)):
                    res[k] = ec.process(inp[k])
                    ec.reference(ref_frames[k] if ref_frames[k].any() else None)
                    delays.append(ec.delay)
                d = inp.astype(np.float64)
                e = res.astype(np.float64)
                ep = (echo[: len(inp) * FRAME_SAMPLES].reshape(len(inp), -1) ** 2).mean(axis=1)
                noise_p = (32768 * 10 ** (path.noise_dbfs / 20)) ** 2
                present = ep > 4 * noise_p  # echo at least 6 dB over the line noise
                t_rel = (np.arange(len(inp)) * FRAME_SAMPLES - bot_at) / SR
                erle: dict[str, float | None] = {}
                for lo, hi in bins:
                    sel = present & (t_rel >= lo) & (t_rel < hi)
                    if not sel.any():
                        erle[f"{lo:g}-{hi:g}"] = None
                        continue
                    num = float(np.sum(d[sel] ** 2))
                    den = float(np.sum(e[sel] ** 2)) + 1e-9
                    erle[f"{lo:g}-{hi:g}"] = 10 * np.log10(num / den)
                found = next((k for k, v in enumerate(delays) if v is not None), None)
                estimates = sorted({v for v in delays if v is not None})
                final = delays[-1]
                rows[f"{line}|{gain:g}|{delay:g}"] = {
                    "line": line,
                    "gain_db": gain,
                    "delay_ms": delay,
                    "erle_db": erle,
                    "expected_delay": expected,
                    "final_delay": final,
                    "delay_error": None if final is None else final - expected,
                    "delays_seen": estimates,
                    "found_after_s": None if found is None else (found + 1) * FRAME_S - bot_at / SR,
                    "gated_frames": ec.gated,
                    "echo_frames": int(present.sum()),
                    "echo_to_noise_db": 10 * np.log10(float(ep[present].mean()) / noise_p)
                    if present.any()
                    else None,
                }
        log(f"  ERLE: {line} line done")
    return {"rows": rows, "bot_seconds": len(bot) / SR}


def canceller_cost(cfg: Config, bot: np.ndarray, passes: int) -> dict[str, Any]:
    """CPU and wall time of every `process` + `reference` pair over the 'sim' line at each
    echo gain (120 ms, or the first delay), with OpenBLAS as numpy sets it up (one thread
    per core: what the gateway runs with) and limited to one thread; the delay searches
    (`_estimate_delay`, wrapped on the instance) are timed on their own too."""
    from threadpoolctl import threadpool_limits

    bot_at = SR
    total = (bot_at + len(bot) + SR) // FRAME_SAMPLES * FRAME_SAMPLES
    ref_frames = frames_of(
        np.concatenate([np.zeros(bot_at, np.int16), bot, np.zeros(SR, np.int16)])
    )
    delay = 120.0 if 120.0 in cfg.echo_delays else cfg.echo_delays[0]
    out: dict[str, Any] = {}
    for mode in ("default", "1 thread"):
        walls: list[int] = []
        cpus: list[int] = []
        idle: list[int] = []
        searches: list[int] = []
        for _ in range(passes):
            for gain in cfg.echo_gains:
                path = EchoPath(gain, delay, cfg.line_noise_dbfs)
                rng = np.random.default_rng(seed_of("cost", gain))
                inp = frames_of(echo_line(bot, total, bot_at, path, "sim", rng)[0])
                ec = EchoCanceller()
                search = ec._estimate_delay

                def timed_search(
                    search: Callable[[], None] = search, log: list[int] = searches
                ) -> None:
                    c0 = time.thread_time_ns()
                    search()
                    log.append(time.thread_time_ns() - c0)

                ec._estimate_delay = timed_search  # type: ignore[method-assign]
                with threadpool_limits(1 if mode == "1 thread" else None, user_api="blas"):
                    for k in range(len(inp)):
                        ref = ref_frames[k] if ref_frames[k].any() else None
                        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                        ec.process(inp[k])
                        ec.reference(ref)
                        w1, c1 = time.perf_counter_ns(), time.thread_time_ns()
                        talking = (
                            bot_at <= (k + 1) * FRAME_SAMPLES and k * FRAME_SAMPLES < total - SR
                        )
                        if talking:
                            walls.append(w1 - w0)
                            cpus.append(c1 - c0)
                        else:
                            idle.append(c1 - c0)
        out[mode] = {
            "frames": len(cpus),
            "cpu_median_us": percentile_us(cpus, 50),
            "cpu_p99_us": percentile_us(cpus, 99),
            "cpu_max_us": float(np.max(cpus)) / 1e3,
            "cpu_mean_us": float(np.mean(cpus)) / 1e3,
            "wall_median_us": percentile_us(walls, 50),
            "wall_p99_us": percentile_us(walls, 99),
            "idle_cpu_median_us": percentile_us(idle, 50),
            "searches": len(searches),
            "search_cpu_median_us": percentile_us(searches, 50),
            "search_cpu_max_us": float(np.max(searches)) / 1e3,
            "rt_share": float(np.mean(cpus)) / 1e3 / (FRAME_S * 1e6),
        }
    return out


# --------------------------------------------------------------------------- echo: calls


class LongReplyLLM:
    """Bench-only LLM: whatever is asked, one long reply, streamed word by word."""

    name = "bench-long-reply"

    def __init__(self, text: str) -> None:
        self.text = text

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmOutput]:
        for i, word in enumerate(self.text.split(" ")):
            yield TextDelta(word if i == 0 else " " + word)


def place(total_s: float, *parts: tuple[float, np.ndarray]) -> np.ndarray:
    out = np.zeros(int(total_s * SR), np.int16)
    for start, clip in parts:
        i = int(start * SR)
        out[i : i + len(clip)] = clip[: len(out) - i]
    return out


def bot_speech_seconds(result: SimulationResult) -> float:
    return float(np.count_nonzero(frames_of(result.bot_audio).any(axis=1))) * FRAME_S


def first_bot_time(result: SimulationResult) -> float | None:
    sounding = np.flatnonzero(frames_of(result.bot_audio).any(axis=1))
    return float(sounding[0]) * FRAME_S if len(sounding) else None


def echo_call(
    audio: np.ndarray,
    stt: ScriptedSTT,
    tts: EspeakTextToSpeech,
    cfg: Config,
    path: EchoPath,
    ec_on: bool,
    tail_s: float,
    call_id: str,
) -> SimulationResult:
    """One simulated call over the echo `path` (the canceller on or off): the caller's
    `audio`, the bot's long reply (`cfg.reply`)."""
    return asyncio.run(
        simulate_call(
            audio,
            Engines(stt, LongReplyLLM(cfg.reply), tts),
            config=QUIET,
            echo_path=path,
            echo_cancellation=ec_on,
            tail_seconds=tail_s,
            call_id=call_id,
        )
    )


def self_interruptions(
    cfg: Config, question: list[np.ndarray], log: Callable[[str], None]
) -> dict[str, Any]:
    """Calls with one question, a long reply and then only line noise; every `interrupted`
    is the bot cutting itself off on its own echo."""
    reply_s = len(sentences_of(cfg.reply)) * 5.0 + 5.0
    rows: dict[str, Any] = {}
    tts = EspeakTextToSpeech()
    for gain in cfg.echo_gains:
        for delay in cfg.echo_delays:
            path = EchoPath(gain, delay, cfg.line_noise_dbfs)
            for ec_on, calls in ((True, cfg.calls_on), (False, cfg.calls_off)):
                agg = {
                    "interruptions": 0,
                    "bot_seconds": 0.0,
                    "calls": 0,
                    "stt_turns": 0,
                    "wall_s": 0.0,
                }
                for c in range(calls):
                    q = question[c % len(question)]
                    audio = place(0.5 + len(q) / SR + reply_s, (0.5, q))
                    stt = ScriptedSTT([QUESTION])
                    call_id = f"self-{gain:g}-{delay:g}-{ec_on}-{c}"
                    result = echo_call(audio, stt, tts, cfg, path, ec_on, 1.0, call_id)
                    agg["interruptions"] += sum(e["type"] == "interrupted" for e in result.events)
                    agg["bot_seconds"] += bot_speech_seconds(result)
                    agg["stt_turns"] += len(stt.inputs)
                    agg["calls"] += 1
                    agg["wall_s"] += result.wall_seconds
                agg["per_10min"] = (
                    agg["interruptions"] / agg["bot_seconds"] * 600 if agg["bot_seconds"] else None
                )
                rows[f"{gain:g}|{delay:g}|{'on' if ec_on else 'off'}"] = {
                    "gain_db": gain,
                    "delay_ms": delay,
                    "ec": ec_on,
                    **agg,
                }
        log(f"  self-interruptions: {gain:g} dB done")
    return rows


def barge_ins(
    cfg: Config, question: list[np.ndarray], talk: list[np.ndarray], log: Callable[[str], None]
) -> dict[str, Any]:
    """A caller talking over the bot's long reply at 2-6 s into it: is the barge-in seen,
    how fast does the bot stop, and does it stop before (on its own echo)?"""
    trials: list[dict[str, Any]] = []
    tts = EspeakTextToSpeech()
    offsets = (2.0, 3.5, 5.0, 6.0)
    n = 0
    for gain in cfg.echo_gains:
        for delay in cfg.echo_delays:
            path = EchoPath(gain, delay, cfg.line_noise_dbfs)
            for ec_on, count in ((True, cfg.barge_on), (False, cfg.barge_off)):
                for _ in range(count):
                    q = question[n % len(question)]
                    over = talk[n % len(talk)]
                    q_end = 0.5 + len(q) / SR
                    # The reply starts ~0.6 s after the question ends (silence + STT + TTS).
                    at = round(q_end + 0.6 + offsets[n % len(offsets)], 2)
                    n += 1
                    audio = place(at + len(over) / SR + 1.0, (0.5, q), (at, over))
                    stt = ScriptedSTT([QUESTION, "no stop"])
                    result = echo_call(audio, stt, tts, cfg, path, ec_on, 0.2, f"barge-{n}")
                    trials.append(score_barge_in(result, at, gain, delay, ec_on))
        log(f"  barge-in: {gain:g} dB done")
    out: dict[str, Any] = {"trials": trials}
    for ec_on in (True, False):
        ts = [t for t in trials if t["ec"] == ec_on]
        valid = [t for t in ts if t["bot_speaking"]]
        hits = [t for t in valid if t["detected"]]
        out["on" if ec_on else "off"] = {
            "trials": len(ts),
            "valid": len(valid),
            "detected": len(hits),
            "rate": len(hits) / len(valid) if valid else None,
            "latency_ms_median": pct([t["latency_ms"] for t in hits], 50),
            "latency_ms_max": max(t["latency_ms"] for t in hits) if hits else None,
            "stop_ms_median": pct([t["stop_after_ms"] for t in hits], 50),
            "stop_ms_max": max(t["stop_after_ms"] for t in hits) if hits else None,
            "early": sum(t["early_interruptions"] for t in ts),
        }
    return out


def score_barge_in(
    result: SimulationResult, at: float, gain: float, delay: float, ec_on: bool
) -> dict[str, Any]:
    """`latency_ms` is the agent's own (VAD onset -> output stopped); `stop_after_ms` is from
    the true start of the caller's speech to the output stopping."""
    events = result.events
    bot = frames_of(result.bot_audio).any(axis=1)
    k = int(at / FRAME_S)
    speaking = bool(bot[max(0, k - 10) : k].any())  # the bot was sounding just before
    onset: float | None = None
    hit: dict[str, Any] | None = None
    early = 0
    last_onset = None
    for e in events:
        if e["type"] == "speech_start":
            last_onset = e["onset"]
        elif e["type"] == "interrupted":
            if e["t"] < at:
                early += 1
            elif e["t"] <= at + 1.5 and hit is None:
                hit, onset = e, last_onset
    detected = hit is not None and onset is not None
    return {
        "gain_db": gain,
        "delay_ms": delay,
        "ec": ec_on,
        "at": at,
        "bot_speaking": speaking,
        "detected": detected,
        "latency_ms": hit["latency_ms"] if detected and hit else None,
        "stop_after_ms": (onset + hit["latency_ms"] / 1000 - at) * 1000
        if detected and hit and onset is not None
        else None,
        "early_interruptions": early,
    }


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    return common.machine_info(
        loadavg_at_start=common.loadavg(None),
        numpy=np.__version__,
        noisereduce=common.package_version("noisereduce"),
        webrtc_noise_gain=common.package_version("webrtc-noise-gain"),
        faster_whisper=common.package_version("faster-whisper"),
    )


def label(method: str) -> str:
    return {
        "none": "none",
        "spectral": "spectral gate (ours)",
        "noisereduce": "noisereduce, offline (anchor)",
    }.get(method, f"WebRTC NS level {method.split('-')[-1]}" if "-" in method else method)


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


@dataclass
class Verdict:
    best: str
    lines: list[str] = field(default_factory=list)
    worth_default: bool = False  # the best method's gain is large enough to matter
    gains: list[str] = field(default_factory=list)  # what makes it worth it


def noise_verdict(res: dict[str, Any], cfg: Config) -> Verdict:
    """Which streaming method measures best against none (noisereduce is an offline anchor).

    Worse on a count: false triggers 0.5/min more, or a VAD F1 or WER difference whose 95%
    interval lies wholly on the wrong side of zero. Better: the same the other way. A method
    qualifies when it is better on one count and worse on none; among those the best point
    score wins, weighing 1 false trigger/min ~ 0.01 F1 ~ 1 WER point."""
    fp = res["false_triggers"]
    f1_ci, wer_ci = res["vad_f1"]["delta_ci"], res["wer"]["delta_ci"]

    def fp_rate(method: str) -> float:
        rs = [r for r in fp.values() if r["method"] == method]
        return sum(r["segments"] for r in rs) / (len(rs) * cfg.fp_seconds / 60)

    base_fp = fp_rate("none")
    lines = []
    scores: dict[str, float] = {}
    for m in cfg.methods:
        if m in ("none", "noisereduce"):
            continue
        d_fp = fp_rate(m) - base_fp
        f1, wer = f1_ci[m], wer_ci[m]
        counts = {
            "false triggers": (d_fp >= 0.5, d_fp <= -0.5),
            "VAD F1": (f1["hi"] < 0, f1["lo"] > 0),
            "WER": (wer["lo"] > 0, wer["hi"] < 0),
        }
        worse = [name for name, (bad, _) in counts.items() if bad]
        better = [name for name, (_, good) in counts.items() if good]
        qualifies = bool(better) and not worse
        lines.append(
            f"{label(m)}: false triggers {fp_rate(m):.2f}/min (none {base_fp:.2f}); VAD F1 "
            f"{f1['delta']:+.3f} [{f1['lo']:+.3f}, {f1['hi']:+.3f}]; WER "
            f"{100 * wer['delta']:+.1f} [{100 * wer['lo']:+.1f}, {100 * wer['hi']:+.1f}] "
            f"points. Better on: {', '.join(better) or 'nothing'}; worse on: "
            f"{', '.join(worse) or 'nothing'}."
        )
        if qualifies:
            scores[m] = d_fp - 100 * f1["delta"] + 100 * wer["delta"]
    best = min(scores, key=lambda k: scores[k]) if scores else "none"
    # Worth turning on by default: a gain a caller would notice, not just a significant one.
    gains: list[str] = []
    if best != "none":
        if fp_rate(best) - base_fp <= -0.5:
            gains.append("at least 0.5 fewer false triggers per minute")
        if wer_ci[best]["hi"] < 0 and wer_ci[best]["delta"] <= -0.02:
            gains.append("a WER at least 2 points lower, significantly")
        if f1_ci[best]["lo"] > 0 and f1_ci[best]["delta"] >= 0.01:
            gains.append("a VAD F1 at least 0.01 higher, significantly")
    return Verdict(best, lines, bool(gains), gains)


def methods_table(
    cfg: Config,
    kinds: Sequence[str],
    last: tuple[str, str],
    cell: Callable[[str, str], str],
    overall: Callable[[str], str],
    delta: Callable[[dict[str, float]], str],
    delta_ci: dict[str, dict[str, float]],
) -> str:
    """A row per method: `cell(part, key)` per SNR ("by_snr", "method|snr") and noise kind
    ("by_kind", "method|kind"), `overall(method)`, then `delta` of its interval vs none."""
    header = ["method", *[f"{s:g} dB" for s in cfg.snrs], *kinds, *last]
    rows = []
    for method in cfg.methods:
        cells = [cell("by_snr", f"{method}|{s:g}") for s in cfg.snrs]
        cells += [cell("by_kind", f"{method}|{k}") for k in kinds]
        cells.append(overall(method))
        cells.append("" if method == "none" else delta(delta_ci[method]))
        rows.append([label(method), *cells])
    return md_table(header, rows)


def render_noise(res: dict[str, Any], cfg: Config, quick: bool) -> str:
    m = res["machine"]
    out = [
        "## Noise suppression (SIP legs)",
        "",
        f"Run {m['date_utc']} by `bench/denoise_bench.py`{' --quick' if quick else ''} "
        f"(whole script {res['total_seconds']:.0f} s, this section {res['noise_seconds']:.0f} s). "
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}; shared with other jobs, load average "
        f"at start {' / '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in res['loadavg_at_end'])}"
        f"{' (' + res['load_note'] + ')' if res.get('load_note') else ''}. "
        f"Python {m['python']}, numpy {m['numpy']}, noisereduce {m['noisereduce']}, "
        f"webrtc-noise-gain {m['webrtc_noise_gain']}, faster-whisper {m['faster_whisper']}.",
        "",
        "Audio: espeak-ng speech (varied voices, speeds, pitches) and generated noise (white, "
        "pink, 6-talker babble, chords, and 'street': band-passed traffic rumble swelling as "
        "cars pass, horns, door slams), mixed at the caller's microphone, then a telephone "
        "channel: 16 kHz -> 8 kHz G.711 µ-law -> 16 kHz (delay-compensated). Each method "
        "runs where the session runs it: per 20 ms frame before the VAD, told `noise_only` "
        "when the VAD is neither in nor entering speech (the spectral gate learns only then). "
        "WebRTC NS levels (webrtc-noise-gain): 1 = low (6 dB), 2 = moderate (12 dB; what "
        "`make_suppressor('webrtc')` uses), 3 = high (18 dB). "
        "noisereduce `reduce_noise(stationary=True)` "
        "runs offline over each whole signal (profile from all of it, not streamable): an "
        "anchor, not a candidate. Seeds fixed.",
        "",
        "### Cost and latency",
        "",
        f"One call, {cfg.cost_seconds:g} s of pink-noise speech at 5 dB SNR x "
        f"{cfg.cost_passes} passes; every frame timed alone. RT share = mean thread CPU time "
        "per frame / 20 ms. Latency: the delay of a click (after 1 s of faint noise) through "
        "each method, and the lag of the input/output cross-correlation on noisy speech.",
        "",
    ]
    rows = []
    for method in cfg.methods:
        c = res["cost"].get(method)
        lat = res["latency"][method]
        if c is None:
            cost_cells = ["0", "0", "0"]
        elif c["offline"]:
            cost_cells = [f"{c['mean_us']:.1f} (mean, offline)", "–", f"{100 * c['rt_share']:.2f}%"]
        else:
            cost_cells = [
                f"{c['median_us']:.1f}",
                f"{c['p99_us']:.1f}",
                f"{100 * c['rt_share']:.2f}%",
            ]
        declared = "offline" if lat["declared_ms"] is None else f"{lat['declared_ms']:g}"
        rows.append(
            [
                label(method),
                *cost_cells,
                declared,
                f"{lat['click_ms']:.2f}",
                f"{lat['xcorr_ms']:.2f}",
            ]
        )
    out.append(
        md_table(
            [
                "method",
                "µs / frame median",
                "p99",
                "RT share (1 core)",
                "declared latency ms",
                "click delay ms",
                "xcorr lag ms",
            ],
            rows,
        )
    )
    mismatch = [
        f"{label(k)} declares {v['declared_ms']:g} ms, measures {v['click_ms']:.2f} ms"
        for k, v in res["latency"].items()
        if v["declared_ms"] is not None and abs(v["click_ms"] - v["declared_ms"]) > 1.0
    ]
    out += [
        "",
        "Declared latency (`latency_ms`) vs measured: "
        + ("; ".join(mismatch) if mismatch else "all agree within 1 ms")
        + ".",
    ]

    fp = res["false_triggers"]
    out += [
        "",
        "### VAD false triggers on noise alone",
        "",
        f"{cfg.fp_seconds:g} s of each noise per level, no speech; speech segments the VAD "
        "opened (each one a `speech_start`: a false turn or barge-in) per minute; in "
        "brackets the share of the time marked speech.",
        "",
    ]
    header = ["noise", "level dBFS", *[label(x) for x in cfg.methods]]
    rows = []
    for kind in cfg.fp_kinds:
        for level in cfg.fp_levels:
            cells = []
            for method in cfg.methods:
                r = fp[f"{kind}|{level:g}|{method}"]
                cells.append(f"{r['per_minute']:.1f} ({100 * r['speech_share']:.0f}%)")
            rows.append([kind, f"{level:g}", *cells])
    totals = []
    for method in cfg.methods:
        rs = [r for r in fp.values() if r["method"] == method]
        totals.append(f"**{sum(r['segments'] for r in rs) / (len(rs) * cfg.fp_seconds / 60):.2f}**")
    rows.append(["all", "", *totals])
    out.append(md_table(header, rows))

    f1 = res["vad_f1"]
    out += [
        "",
        "### VAD frame F1 on noisy speech",
        "",
        f"{f1['conversations']} conversations of 3 utterances (0.8-2.5 s gaps, 1 s of noise "
        f"first) per noise kind and SNR ({f1['audio_seconds_per_method']:.0f} s of audio per "
        "method); the VAD's speech segments (what the agent acts on) scored on a 10 ms grid, "
        "shifted back by the method's measured delay. Precision / recall pooled in brackets; "
        f"the interval is a paired bootstrap over the {f1['units']} conversation x noise x "
        "SNR runs.",
        "",
    ]

    def f1_overall(method: str) -> str:
        o = f1["overall"][method]
        return f"**{o['f1']:.3f}** ({o['precision']:.2f} / {o['recall']:.2f})"

    out.append(
        methods_table(
            cfg, cfg.f1_kinds, ("all (P / R)", "Δ vs none [95% CI]"),
            lambda part, key: f"{f1[part][key]['f1']:.3f}", f1_overall,
            lambda d: f"{d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]", f1["delta_ci"],
        )
    )  # fmt: skip

    wer = res["wer"]
    out += [
        "",
        "### Speech recognition in noise",
        "",
        f"Whisper {wer['model']} (int8, as `WhisperSpeechToText`), {cfg.wer_sentences} "
        f"sentences x {len(cfg.wer_kinds)} noises x {len(cfg.snrs)} SNRs "
        f"({wer['clips_per_method']} clips per method), each with 1 s of noise before (the "
        "gate learns there) and 0.6 s after; STT hears the sentence plus 200 ms either side "
        "of the processed audio. WER in % (words normalised, numbers as digits); "
        f"without noise, through the phone channel: {100 * wer['clean']:.1f}%. The interval "
        "is a paired bootstrap over clips. The speech is synthetic (espeak-ng, several "
        "voices and speeds), which Whisper finds hard: the absolute WERs are high; the "
        "differences between methods are the result.",
        "",
    ]
    out.append(
        methods_table(
            cfg, cfg.wer_kinds, ("all", "Δ vs none, points [95% CI]"),
            lambda part, key: f"{100 * wer[part][key]:.1f}",
            lambda method: f"**{100 * wer['overall'][method]:.1f}**",
            lambda d: f"{100 * d['delta']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]",
            wer["delta_ci"],
        )
    )  # fmt: skip

    verdict = res["verdict"]
    out += ["", "### Verdict", ""]
    out += [f"- {line}" for line in verdict["lines"]]
    best = verdict["best"]
    none_fp = [r for r in fp.values() if r["method"] == "none"]
    stationary = [r for r in none_fp if r["kind"] != "babble"]
    if stationary and not any(r["segments"] for r in stationary):
        fp_note = (
            "no false triggers to remove (without suppression the VAD opened no segment on "
            f"any noise but babble, at {' and '.join(f'{x:g}' for x in cfg.fp_levels)} dBFS)"
        )
    else:
        fp_note = "false triggers not down by 0.5 per minute"
    option = (
        "`webrtc` (WebRTC NS; `make_suppressor` wires level 2)"
        if best.startswith("webrtc")
        else f"`{best}`"
    )
    if best == "none":
        out += [
            "",
            "No streaming suppressor measures better than none (rule in `noise_verdict`): "
            "noise suppression stays **off** by default for SIP.",
        ]
    elif verdict.get("worth_default"):
        out += [
            "",
            f"Best overall: **{label(best)}**, with {' and '.join(verdict['gains'])}, at the "
            "cost and delay in the first table: worth turning **on** by default for SIP.",
        ]
    else:
        out += [
            "",
            f"Best overall: **{label(best)}** (better than none on at least one count, worse "
            f"on none; rule in `noise_verdict`), but by little: {fp_note}, a VAD F1 gain "
            "under 0.01 or not significant, and no WER gain that is both significant and 2 "
            "points or more. Noise suppression stays **off** by default for SIP; for lines "
            f"known to be noisy the option to use is {option}.",
        ]
    return "\n".join(out) + "\n"


def render_echo(res: dict[str, Any], cfg: Config, quick: bool) -> str:
    m = res["machine"]
    erle = res["erle"]
    out = [
        "## Line echo (SIP legs)",
        "",
        f"Run {m['date_utc']} by `bench/denoise_bench.py`{' --quick' if quick else ''} "
        f"(this section {res['echo_seconds']:.0f} s; "
        + (
            "machine and load as in the noise section"
            if "noise_seconds" in res
            else f"machine: {m['nproc']} CPUs, {m['cpu_model']}, load average at start "
            + " / ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
        )
        + "). The bot's voice is the real espeak-ng TTS engine; its echo returns "
        f"`gain` dB down after `delay` ms over white line noise at {cfg.line_noise_dbfs:g} "
        "dBFS. 'sim' line: `simulate_call`'s `EchoPath` (the bot's frame is sent at the end of "
        "its tick, so the true lag is the path delay + 20 ms). 'g711' line: the bot's audio "
        "crosses G.711 to the far end, a dispersive hybrid (9 taps, peak at tap 2) reflects "
        "it, and echo plus line noise cross G.711 back.",
        "",
        "### ERLE and delay estimate",
        "",
        f"{erle['bot_seconds']:.1f} s of bot speech ({cfg.erle_sentences} sentences) after 1 s "
        "of line noise, fed to `EchoCanceller` frame by frame (process, then reference). ERLE "
        "= input power / output power over frames where the echo is >= 6 dB above the line "
        "noise, by time since the bot began talking (so it includes the residual gate). "
        "Delay: the canceller's final estimate minus the true lag (samples at 16 kHz); "
        "'found' = when it first had one.",
        "",
    ]
    header = [
        "line",
        "gain dB",
        "delay ms",
        "echo/noise dB",
        "ERLE 0-0.5 s",
        "0.5-2 s",
        "after 2 s",
        "delay error (samples)",
        "found after s",
        "gated frames",
    ]
    rows = []
    for r in erle["rows"].values():
        e = r["erle_db"]
        seen = r["delays_seen"]
        err = "not found" if r["delay_error"] is None else f"{r['delay_error']:+d}"
        if len(seen) > 1:
            err += f" (estimates {', '.join(str(s) for s in seen)})"
        rows.append(
            [
                r["line"],
                f"{r['gain_db']:g}",
                f"{r['delay_ms']:g}",
                fmt(r["echo_to_noise_db"]),
                fmt(e["0-0.5"]),
                fmt(e["0.5-2"]),
                fmt(e["2-1e+09"]),
                err,
                fmt(r["found_after_s"], 2),
                f"{r['gated_frames']}",
            ]
        )
    out.append(md_table(header, rows))
    correct = sum(
        r["delay_error"] is not None and abs(r["delay_error"]) <= 8 for r in erle["rows"].values()
    )
    out += [
        "",
        f"Delay estimate within ±8 samples (0.5 ms) of the truth: {correct} of "
        f"{len(erle['rows'])} runs.",
    ]

    cost = res["echo_cost"]
    d = cost["default"]
    out += [
        "",
        "### Canceller cost",
        "",
        f"Every `process` + `reference` pair timed alone while the bot talks ({d['frames']} "
        "frames: the 'sim' line at each gain, "
        f"{cfg.cost_passes} pass(es)), process not pinned. The delay search "
        "(`_estimate_delay`: every 100 ms until found, then every 500 ms while the bot talks, "
        "every 2 s once three searches agreed; the filter refits every block for its first "
        "30, then every 4th) is "
        "timed on its own as well. 'default' is numpy's OpenBLAS as the gateway gets it "
        "(one thread per core); '1 thread' is the same under "
        "`threadpoolctl.threadpool_limits(1, 'blas')`.",
        "",
    ]
    rows = []
    for mode, c in cost.items():
        rows.append(
            [
                mode,
                f"{c['cpu_median_us']:.0f}",
                f"{c['cpu_p99_us']:.0f}",
                f"{c['cpu_max_us']:.0f}",
                f"{c['cpu_mean_us']:.0f}",
                f"{100 * c['rt_share']:.2f}%",
                f"{c['wall_median_us']:.0f}",
                f"{c['wall_p99_us']:.0f}",
                f"{c['searches']}",
                f"{c['search_cpu_median_us']:.0f}",
                f"{c['search_cpu_max_us']:.0f}",
                f"{c['idle_cpu_median_us']:.0f}",
            ]
        )
    out.append(
        md_table(
            [
                "BLAS threads",
                "CPU µs median",
                "p99",
                "max",
                "mean",
                "RT share (1 core)",
                "wall µs median",
                "wall p99",
                "delay searches",
                "search CPU µs median",
                "max",
                "bot silent: CPU µs median",
            ],
            rows,
        )
    )

    one = cost.get("1 thread")
    if one and d["search_cpu_max_us"] > 5 * one["search_cpu_max_us"]:
        out += [
            "",
            f"With numpy's default OpenBLAS threads the worst delay search took "
            f"{d['search_cpu_max_us'] / 1000:.1f} ms of CPU (one BLAS thread: "
            f"{one['search_cpu_max_us'] / 1000:.1f} ms) and the mean per frame was "
            f"{d['cpu_mean_us'] / one['cpu_mean_us']:.1f}x higher: the search's "
            "16 000-sample `np.dot` calls are handed to OpenBLAS worker threads, and with the "
            "cores busy the caller spins waiting for them. The search runs on the call's "
            "event-loop thread.",
        ]

    si = res["self_interruptions"]
    out += [
        "",
        "### Self-interruptions",
        "",
        "`simulate_call` (real VAD, state machine, espeak-ng TTS, virtual time): the caller "
        "asks one question; a bench LLM answers with a long reply "
        f"({len(sentences_of(cfg.reply))} sentences); then the caller is silent, the line "
        "carries only the echo and line noise. Every `interrupted` event is the bot cutting "
        "itself off. Scripted STT: the question, then empty transcripts (so each echo "
        "interruption is judged false and the reply resumes).",
        "",
    ]
    header = [
        "gain dB",
        "delay ms",
        "canceller",
        "calls",
        "bot speech s",
        "interruptions",
        "per 10 min",
        "STT turns",
    ]
    rows = []
    for r in si.values():
        rows.append(
            [
                f"{r['gain_db']:g}",
                f"{r['delay_ms']:g}",
                "on" if r["ec"] else "off",
                r["calls"],
                f"{r['bot_seconds']:.0f}",
                r["interruptions"],
                fmt(r["per_10min"]),
                r["stt_turns"],
            ]
        )
    for ec_on in (True, False):
        rs = [r for r in si.values() if r["ec"] == ec_on]
        secs = sum(r["bot_seconds"] for r in rs)
        n = sum(r["interruptions"] for r in rs)
        rows.append(
            [
                "**all**",
                "",
                "on" if ec_on else "off",
                sum(r["calls"] for r in rs),
                f"{secs:.0f}",
                n,
                f"**{fmt(n / secs * 600 if secs else None)}**",
                sum(r["stt_turns"] for r in rs),
            ]
        )
    out.append(md_table(header, rows))

    on = [r for r in si.values() if r["ec"]]
    on_s = sum(r["bot_seconds"] for r in on)
    if on_s and not sum(r["interruptions"] for r in on):
        out += [
            "",
            f"None in {on_s / 60:.1f} min of bot speech with the canceller on: at 95% "
            f"confidence fewer than {3 / on_s * 600:.1f} per 10 min (rule of three).",
        ]

    b = res["barge_in"]
    out += [
        "",
        "### Barge-in over the echo",
        "",
        "Same calls, but the caller talks over the bot (another voice, through the phone "
        "channel) 2-6 s into its reply. Detected: an `interrupted` within 1.5 s of the "
        "caller's first word. Agent latency: its own `latency_ms` (VAD onset -> output "
        "stopped); stop after: caller's first word -> output stopped. Valid: the bot was "
        "sounding in the 200 ms before. Early: the bot had cut itself off before the caller "
        "spoke.",
        "",
    ]
    rows = []
    for key in ("on", "off"):
        s = b[key]
        if not s["trials"]:
            continue
        rows.append(
            [
                key,
                s["trials"],
                s["valid"],
                f"{s['detected']} ({fmt(None if s['rate'] is None else 100 * s['rate'], 0)}%)",
                fmt(s["latency_ms_median"], 0),
                fmt(s["latency_ms_max"], 0),
                fmt(s["stop_ms_median"], 0),
                fmt(s["stop_ms_max"], 0),
                s["early"],
            ]
        )
    out.append(
        md_table(
            [
                "canceller",
                "trials",
                "valid",
                "detected",
                "agent latency ms median",
                "max",
                "stop after ms median",
                "max",
                "early interruptions",
            ],
            rows,
        )
    )
    missed = [t for t in b["trials"] if t["ec"] and t["bot_speaking"] and not t["detected"]]
    if missed:
        out += [
            "",
            "Missed with the canceller on: "
            + ", ".join(
                f"{t['gain_db']:g} dB / {t['delay_ms']:g} ms at {t['at']:.2f} s" for t in missed
            )
            + ".",
        ]
    return "\n".join(out) + "\n"


def render_saved(path: Path, results: Path | None) -> int:
    """Print (and optionally write) the sections of a saved `--json` run."""
    res = json.loads(path.read_text())
    raw = {k: tuple(v) if isinstance(v, list) else v for k, v in res["config"].items()}
    cfg = Config(**raw)
    sections = []
    if "wer" in res:
        res["verdict"] = asdict(noise_verdict(res, cfg))
        sections.append(render_noise(res, cfg, res["quick"]))
    if "erle" in res:
        sections.append(render_echo(res, cfg, res["quick"]))
    common.publish(sections, results_path=results)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__, "write the two sections into this file")
    parser.add_argument("--load-note", default="", help="a note on machine load for the report")
    parser.add_argument("--stt-model", help="Whisper model for the WER table (tiny.en, base)")
    parser.add_argument("--from-json", type=Path, help="only render a saved --json run")
    parser.add_argument("--skip-noise", action="store_true", help="echo sections only")
    parser.add_argument("--skip-echo", action="store_true", help="noise sections only")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.stt_model:
        cfg = replace(cfg, stt_model=args.stt_model)
    if args.from_json:
        return render_saved(args.from_json, args.results)
    log = common.StderrLog()
    res: dict[str, Any] = {"config": asdict(cfg), "quick": args.quick, "machine": machine_info()}
    res["load_note"] = args.load_note
    model = SileroVad.shared()
    if not args.skip_noise:
        t0 = time.perf_counter()
        log("noise: cost and latency (pinned to one core)")
        speech = np.concatenate([utterance(i) for i in range(8)])
        speech = np.concatenate([np.zeros(SR, np.int16), speech])
        mask = np.zeros(len(speech), bool)
        mask[SR:] = True
        bed = noise("pink", len(speech), np.random.default_rng(seed_of("cost")))
        noisy = phone(mix_at_snr(speech, bed, 5.0, mask))
        cost_signal = noisy[: int(cfg.cost_seconds * SR)]
        with common.affinity({common.first_core()}):
            res["cost"] = suppressor_cost(cost_signal, cfg.methods, cfg.cost_passes)
        res["latency"] = latencies(cfg.methods, noisy[: 8 * SR])
        shifts_s = {k: v["xcorr_ms"] / 1000 for k, v in res["latency"].items()}
        shifts = {k: int(v["xcorr_samples"]) for k, v in res["latency"].items()}
        log("noise: VAD false triggers")
        res["false_triggers"] = false_triggers(cfg, model, log)
        log("noise: VAD F1")
        res["vad_f1"] = vad_accuracy(cfg, model, shifts_s, log)
        log("noise: STT WER")
        res["wer"] = stt_wer(cfg, model, shifts, log)
        res["verdict"] = asdict(noise_verdict(res, cfg))
        res["noise_seconds"] = time.perf_counter() - t0
    if not args.skip_echo:
        t0 = time.perf_counter()
        log("echo: ERLE")
        bot = synthesize(sentences_of(LONG_REPLY)[: cfg.erle_sentences])
        res["erle"] = erle_runs(cfg, bot, log)
        log("echo: canceller cost")
        res["echo_cost"] = canceller_cost(cfg, bot, cfg.cost_passes)
        question = [
            phone(trimmed_speech("What is the balance on my account?", v))
            for v in ("en-us", "en-gb", "en-us+f3")
        ]
        talk = [
            phone(trimmed_speech(t, v))
            for t, v in zip(TALK_OVERS, audiogen.VOICES[3:], strict=False)
        ]
        log("echo: self-interruptions")
        res["self_interruptions"] = self_interruptions(cfg, question, log)
        log("echo: barge-in")
        res["barge_in"] = barge_ins(cfg, question, talk, log)
        res["echo_seconds"] = time.perf_counter() - t0

    def render(res: dict[str, Any]) -> list[str]:
        out = [] if args.skip_noise else [render_noise(res, cfg, args.quick)]
        return out + ([] if args.skip_echo else [render_echo(res, cfg, args.quick)])

    return common.finish(res, render, args, log, json_default=float, loadavg_digits=None)


if __name__ == "__main__":
    raise SystemExit(main())
