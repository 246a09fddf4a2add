"""End-of-turn benchmark: how often each endpointing rule cuts callers off mid-sentence, and
how long it takes to decide that a finished caller has finished.

Rules, side by side in one run, each through the real agent (`simulate_call`, virtual time,
Silero VAD, the agent's `Endpointer`):

- fixed 500 ms: `agent.endpointing = "fixed"`, `vad.min_silence_ms = 500` (the old default);
- smart-turn with the defaults (`agent.endpointing = "smart_turn"`: the model asked at a
  200 ms pause; P >= `turn_threshold` 0.9 ends the turn there, otherwise it waits up to
  `turn_max_silence_ms` 1.5 s), with its first defaults (0.5 / 2 s), and 0.9 / 2 s;
- LiveKit default: LiveKit Agents' default endpointing is mode "fixed", min_delay 0.5 s,
  max_delay 3 s, where max_delay only applies when a turn-detector model says "unlikely";
  its default (VAD) turn detection with the Silero plugin's min_silence_duration 0.55 s
  behaves as max(VAD silence, min_delay) = a fixed 550 ms silence rule, run here as that.

Variants, replayed (`probe_pauses`, `replay`): every pause of every case is probed once,
through the segmenter the agent runs on the same VAD probabilities, with the model asked at
200, 400, 500, 600, 800, 1000, 1200 and 1400 ms of silence on the turn's audio so far (its
measured time charged as the virtual clock does); rules are then replayed over those
verdicts: a threshold x longest-wait sweep, second looks, a bar that falls as the pause
grows, a wait that depends on the first P, and the model with LiveKit's 0.5 / 3 s timing.
The rules also run through the agent are replayed too, to show how far the replay agrees.
What follows a cut-off is not re-probed (the agent would start a new segment there).

Caller audio (no bot speech in the way: the STT stub hears nothing, so no turn is answered):

- mid-sentence pauses of 0.5, 0.8, 1.2 and 1.5 s (digital silence) spliced into real human
  speech (tests/human_speech.py, the pocketsphinx sdist): each LibriVox sentence cut at its
  word boundaries (Whisper base word timestamps, snapped to the energy minimum within
  100 ms) that have an energy dip >= 25 dB and lie >= 0.8 s from either end of the speech
  (18 cuts, fixed below, not chosen by what the model says of them); card lists cut between
  cards ("eight of spades | four of clubs ..."), "go | forward ten meters", and the two
  recordings "five five" + pause + "seven of clubs"; and into generated speech (espeak-ng:
  digit strings, "I'd like to, um, | book a table for two", ...). A cut-off is a caller
  utterance that the agent ended more than once (two turns or more).
- complete utterances: the 11 human recordings whole and 6 generated sentences. End-of-turn
  latency = the `speech_end` event (the moment the agent decides) minus the true end of
  speech (the last 10 ms block within 35 dB of the recording's peak). Virtual time: engine
  work (the turn model) is charged at its measured cost on this machine with one call at a
  time, so these are lower bounds of a live call; voice-to-voice adds STT/LLM/TTS and the
  transport.

The transcript rule (a pause judged unfinished ends early when the early transcript's words
read as a finished sentence) needs words the STT stub does not give: it is probed with
Whisper base and the text model and replayed (bench/endpointing_words.py).

Model cost: CPU time per inference (features + ONNX, `time.thread_time` on the worker
thread) and batch sizes, for the single-call runs and for 8 calls run concurrently on one
shared `BatchedTurnModel`.

    .venv/bin/python bench/endpointing_bench.py --json /tmp/eot.json --results bench/RESULTS.md
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

from bench import common
from bench.common import fmt, md_table
from bench.endpointing_words import (
    probe_words,
    replay_row,
    walk_pauses,
    words_summary,
    words_tables,
)
from tests import audiogen, human_speech
from voicebot.agent.config import AgentConfig
from voicebot.agent.simulator import simulate_call
from voicebot.models.base import Engines, Transcript
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.models.tts.espeak import EspeakTextToSpeech
from voicebot.models.turn import BatchedTurnModel, SmartTurn
from voicebot.models.vad import SileroVad, VadParams

SECTION = "## End of turn"
SR = 16_000
PACKAGES = ("onnxruntime", "numpy")
PAUSES_S = (0.5, 0.8, 1.2, 1.5)
QUICK_PAUSES_S = (0.8,)

# Word-boundary cuts (seconds into the recording), derived as the module docstring says.
LIBRIVOX_CUTS: dict[str, tuple[float, ...]] = {
    "librivox-0870": (2.22, 2.74, 2.94, 4.18, 4.77, 4.96, 5.76),
    "librivox-0880": (0.89,),
    "librivox-0890": (1.31, 2.17, 3.35, 3.88),
    "librivox-0920": (2.55, 3.22, 3.70, 3.84, 4.51),
    "librivox-0930": (1.09,),
}
CARD_CUTS: dict[str, tuple[float, ...]] = {"cards-005": (1.19, 2.16), "goforward": (1.16,)}
GENERATED_PAUSED = (
    ("my number is four five", "seven two"),
    ("I'd like to, um,", "book a table for two"),
    ("the code is one two three", "four five six"),
    ("I want to speak to", "someone in billing"),
    ("can you tell me", "your opening hours"),
    ("my account number is", "three eight one"),
)
GENERATED_COMPLETE = (
    "My number is four five seven two.",
    "I'd like to book a table for two.",
    "What time do you open on Saturday?",
    "Can you tell me your opening hours?",
    "Yes, please.",
    "No, thank you.",
)


_DEFAULTS = AgentConfig()


@dataclass(frozen=True)
class Rule:
    key: str
    label: str
    endpointing: str
    min_silence_ms: int = 500  # vad.min_silence_ms (the fixed rule)
    turn_min_silence_ms: int = _DEFAULTS.turn_min_silence_ms
    turn_max_silence_ms: int = _DEFAULTS.turn_max_silence_ms
    turn_threshold: float = _DEFAULTS.turn_threshold


DEFAULT_LABEL = (
    f"smart-turn, defaults (P >= {_DEFAULTS.turn_threshold} at "
    f"{_DEFAULTS.turn_min_silence_ms} ms, max {_DEFAULTS.turn_max_silence_ms / 1000:g} s)"
)
RULES = (
    Rule("fixed500", "fixed 500 ms silence", "fixed"),
    Rule("livekit", "LiveKit default (VAD 0.55 s, min 0.5 / max 3 s)", "fixed", 550),
    Rule("smart_turn", DEFAULT_LABEL, "smart_turn"),
    Rule("smart_v1", f"smart-turn, P >= 0.5 at {_DEFAULTS.turn_min_silence_ms} ms, max 2 s "
         "(the first defaults' bar and wait)", "smart_turn",
         turn_max_silence_ms=2000, turn_threshold=0.5),
    Rule("smart_2s", f"smart-turn, P >= 0.9 at {_DEFAULTS.turn_min_silence_ms} ms, max 2 s",
         "smart_turn", turn_max_silence_ms=2000, turn_threshold=0.9),
)  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """An endpointing rule replayed from the probed probabilities (`probe_pauses`).

    `looks`: (silence ms, threshold) pairs: the model is asked when the pause reaches each
    silence and the turn ends if P >= that threshold; `max_ms`: the longest wait. `grey`:
    (P, ms): a first verdict of at least P (but under the bar) waits only ms instead."""

    key: str
    label: str
    looks: tuple[tuple[int, float], ...]
    max_ms: int
    grey: tuple[float, int] | None = None


SWEEP_THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
SWEEP_MAX_MS = (800, 1000, 1200, 1500, 2000)
VARIANTS = (
    Variant("second_same", "P >= 0.9 at 200 ms, asked again at 600 ms (P >= 0.9), max 1.5 s",
            ((200, 0.9), (600, 0.9)), 1500),
    Variant("second_low", "P >= 0.9 at 200 ms, asked again at 600 ms with a lower bar (0.5), "
            "max 1.5 s", ((200, 0.9), (600, 0.5)), 1500),
    Variant("falling", "bar falling with the pause: 0.9 at 200 ms, 0.7 at 500, 0.5 at 800, "
            "0.3 at 1200, max 1.5 s", ((200, 0.9), (500, 0.7), (800, 0.5), (1200, 0.3)), 1500),
    Variant("every_200", "P >= 0.9 at 200 ms and every 200 ms after, max 1.5 s",
            tuple((ms, 0.9) for ms in range(200, 1500, 200)), 1500),
    Variant("grey_1s", "P >= 0.9 at 200 ms; P 0.3-0.9 waits 1 s, P < 0.3 waits 2 s",
            ((200, 0.9),), 2000, (0.3, 1000)),
    Variant("grey_800", "P >= 0.9 at 200 ms; P 0.1-0.9 waits 0.8 s, P < 0.1 waits 1.5 s",
            ((200, 0.9),), 1500, (0.1, 800)),
    Variant("smart_lk", "smart-turn with LiveKit's timing: P >= 0.5 at 500 ms, max 3 s",
            ((500, 0.5),), 3000),
    Variant("early_160", "P >= 0.9 at 160 ms (5 VAD windows), max 1.5 s",
            ((160, 0.9),), 1500),
    Variant("early_128", "P >= 0.9 at 128 ms (4 VAD windows), max 1.5 s",
            ((128, 0.9),), 1500),
)  # fmt: skip
# Silences (ms) at which every pause is probed: every look above, and the sweep's 200 ms.
PROBE_MS = tuple(sorted({200, *(ms for v in VARIANTS for ms, _ in v.looks)}))
PROBE_MAX_MS = 3200  # the probe's segmenter: longer than any wait replayed


@dataclass
class Case:
    key: str
    kind: str  # "pause" or "complete"
    source: str  # "human" or "generated"
    audio: np.ndarray  # caller audio, lead-in and tail included
    true_end: float  # call seconds where the (last) speech ends
    pause_s: float = 0.0


class NoSTT:
    """Hears nothing: no turn is answered, so no bot speech changes the caller's timeline
    (the floor guard, which would take such wordless segments for background talk, is off)."""

    name = "none"

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        return Transcript("")


class CountingTurnModel:
    """The shared runner, with every probability it returned kept (per rule)."""

    def __init__(self, inner: BatchedTurnModel) -> None:
        self.inner = inner
        self.name = inner.name
        self.probabilities: list[float] = []

    async def probability(self, audio: np.ndarray) -> float:
        p = await self.inner.probability(audio)
        self.probabilities.append(p)
        return p


def _speech_end_sample(audio: np.ndarray) -> int:
    block = SR // 100
    n = len(audio) // block
    x = audio[: n * block].astype(np.float64).reshape(n, block) / 32768.0
    db = 10 * np.log10(np.mean(x * x, axis=1) + 1e-12)
    return int((np.flatnonzero(db > db.max() - 35.0)[-1] + 1) * block)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SR), np.int16)


LEAD_S, TAIL_S = 0.5, 3.5


def _case(key: str, kind: str, source: str, parts: list[np.ndarray], pause_s: float) -> Case:
    speech = parts[0] if len(parts) == 1 else np.concatenate([parts[0], _silence(pause_s),
                                                               parts[1]])  # fmt: skip
    audio = np.concatenate([_silence(LEAD_S), speech, _silence(TAIL_S)])
    return Case(key, kind, source, audio, (len(_silence(LEAD_S)) + _speech_end_sample(speech)) / SR,
                pause_s)  # fmt: skip


def build_cases(quick: bool) -> list[Case]:
    pauses = QUICK_PAUSES_S if quick else PAUSES_S
    rec = {r.key: r.samples() for r in human_speech.recordings()}
    cases: list[Case] = []
    cuts = {**LIBRIVOX_CUTS, **CARD_CUTS}
    if quick:
        cuts = {k: v[:1] for k, v in list(cuts.items())[:3]}
    for key, times in cuts.items():
        for cut in times:
            at = int(cut * SR)
            for pause in pauses:
                parts = [rec[key][:at], rec[key][at:]]
                cases.append(_case(f"{key}@{cut:.2f}+{pause}", "pause", "human", parts, pause))
    for pause in pauses:
        parts = [rec["cards-004"], rec["cards-003"]]
        cases.append(_case(f"five five+{pause}+seven of clubs", "pause", "human", parts, pause))
    generated = GENERATED_PAUSED[:2] if quick else GENERATED_PAUSED
    for first, second in generated:
        for pause in pauses:
            parts = [audiogen.trimmed_speech(first), audiogen.trimmed_speech(second)]
            cases.append(_case(f"{first} | {second} +{pause}", "pause", "generated", parts, pause))
    for key, audio in rec.items():
        cases.append(_case(key, "complete", "human", [audio], 0.0))
    for text in GENERATED_COMPLETE[:2] if quick else GENERATED_COMPLETE:
        cases.append(_case(text, "complete", "generated", [audiogen.trimmed_speech(text)], 0.0))
    return cases


def _config(rule: Rule) -> tuple[AgentConfig, VadParams]:
    config = AgentConfig(
        greeting=None, vad_event_interval_ms=0, speculative_stt=False,
        endpointing=rule.endpointing,  # type: ignore[arg-type]
        turn_min_silence_ms=rule.turn_min_silence_ms,
        turn_max_silence_ms=rule.turn_max_silence_ms, turn_threshold=rule.turn_threshold,
        # The STT stub hears no words: the floor guard would cut every segment voiced 4 s as
        # background talk. Off: this measures the end-of-turn rule alone.
        max_wordless_segment_ms=0,
    )  # fmt: skip
    return config, VadParams(min_silence_ms=rule.min_silence_ms)


async def _run_case(
    case: Case, rule: Rule, engines: Engines, vad: SileroVad, model: CountingTurnModel
) -> dict[str, Any]:
    config, params = _config(rule)
    asked = len(model.probabilities)
    result = await simulate_call(
        case.audio, engines, config=config, vad_params=params, vad_model=vad, tail_seconds=0.0,
        turn_model=model if rule.endpointing == "smart_turn" else None,
    )  # fmt: skip
    ends = [e["t"] for e in result.events if e["type"] == "speech_end"]
    return {
        "case": case.key, "kind": case.kind, "source": case.source, "pause_s": case.pause_s,
        "turns": len(ends), "cut_off": len(ends) > 1,
        "latency_ms": (ends[-1] - case.true_end) * 1000 if ends else None,
        "p_complete": [round(p, 3) for p in model.probabilities[asked:]],
    }  # fmt: skip


def _summary(rows: list[dict[str, Any]], costs: list[tuple[int, float]], probs: list[float]
             ) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}
    for source in ("human", "generated", "all"):
        pauses = [r for r in rows if r["kind"] == "pause" and source in ("all", r["source"])]
        done = [r for r in rows if r["kind"] == "complete" and source in ("all", r["source"])]
        lat = [r["latency_ms"] for r in done if r["latency_ms"] is not None]
        out[source] = {
            "pause_cases": len(pauses),
            "cut_offs": sum(r["cut_off"] for r in pauses),
            "cut_off_rate": sum(r["cut_off"] for r in pauses) / max(1, len(pauses)),
            "complete_cases": len(done),
            "complete_split": sum(r["turns"] != 1 for r in done),
            "latency_ms": {"mean": float(np.mean(lat)) if lat else None,
                           "p50": common.pct(lat, 50), "p90": common.pct(lat, 90),
                           "max": max(lat, default=None)},
        }  # fmt: skip
    by_pause: dict[str, Any] = {}
    for pause in sorted({r["pause_s"] for r in rows if r["kind"] == "pause"}):
        sel = [r for r in rows if r["kind"] == "pause" and r["pause_s"] == pause]
        by_pause[str(pause)] = {"cases": len(sel), "cut_offs": sum(r["cut_off"] for r in sel)}
    out["by_pause"] = by_pause
    cpu = [seconds * 1000 / n for n, seconds in costs for _ in range(n)]
    out["model"] = {
        "inferences": sum(n for n, _ in costs), "runs": len(costs),
        "cpu_ms_per_inference": {"p50": common.pct(cpu, 50), "p90": common.pct(cpu, 90)},
        "batch_sizes": sorted({n for n, _ in costs}),
        "p_complete": probs,
    }  # fmt: skip
    return out


WINDOW_S = 512 / SR  # one VAD window: the segmenter's time step
FRAME_S = 0.02  # the agent polls the endpointer once a frame


def probe_pauses(cases: list[Case], vad: SileroVad, model: SmartTurn) -> list[dict[str, Any]]:
    """Every pause of every case with P(complete) at each of `PROBE_MS` silences.

    The segmenter the agent runs, on the same VAD probabilities (bit for bit), held open up
    to `PROBE_MAX_MS`; the model asked synchronously on the turn's audio so far, as the
    endpointer would at that silence, and its wall time kept (what the virtual clock
    charges). One segment per case: what follows a cut is not re-probed."""
    out = []
    for case in cases:
        pauses: list[dict[str, Any]] = []
        for k, segmenter, pause in walk_pauses(case.audio, vad, PROBE_MAX_MS, pauses):
            silence = pause["silence_ms"]
            looks = pause.setdefault("looks", [])
            asked = {look[0] for look in looks}
            due = [ms for ms in PROBE_MS if ms <= silence and ms not in asked]
            if due:
                began = time.perf_counter()
                prob = model.probability(segmenter.audio_so_far())  # type: ignore[arg-type]
                cost = time.perf_counter() - began
                t = (k + 1) * WINDOW_S
                pause["looks"] += [(ms, t, round(prob, 4), round(cost, 4)) for ms in due]
        out.append({
            "case": case.key, "kind": case.kind, "source": case.source,
            "pause_s": case.pause_s, "true_end": case.true_end, "pauses": pauses,
        })  # fmt: skip
    return out


def _event_time(t: float) -> float:
    """A decision at call time t: acted on at the next frame, stamped with the segmenter's
    last window time (what `speech_end.t` says)."""
    frame = math.ceil(t / FRAME_S - 1e-9) * FRAME_S
    return math.floor(frame / WINDOW_S + 1e-9) * WINDOW_S


def replay(probe: list[dict[str, Any]], variant: Variant) -> list[dict[str, Any]]:
    """The rows `_run_case` would give for `variant`, from the probed probabilities."""
    bars = dict(variant.looks)
    rows = []
    for case in probe:
        ends = []
        for i, pause in enumerate(case["pauses"]):
            last = i == len(case["pauses"]) - 1
            resumed = math.inf if last else pause["start"] + pause["silence_ms"] / 1000
            wait, end, first = variant.max_ms, None, True
            for ms, t, p, cost in pause["looks"]:
                if ms not in bars or ms >= wait:
                    continue
                decided = _event_time(math.ceil(t / FRAME_S - 1e-9) * FRAME_S + cost)
                if decided >= resumed:
                    break  # the caller spoke on before the verdict: it is dropped
                if p >= bars[ms]:
                    end = decided
                    break
                if first and variant.grey is not None and p >= variant.grey[0]:
                    wait = variant.grey[1]
                    if pause["silence_ms"] >= wait:
                        end = max(decided, pause["start"] + math.ceil(wait / 32) * WINDOW_S)
                        break
                first = False
            if end is None and pause["silence_ms"] >= wait:
                end = pause["start"] + math.ceil(wait / 32) * WINDOW_S
            if end is not None:
                ends.append((end, last))
        rows.append(replay_row(case, ends))
    return rows


def _replay_all(probe: list[dict[str, Any]]) -> dict[str, Any]:
    sweep = {}
    for threshold in SWEEP_THRESHOLDS:
        for max_ms in SWEEP_MAX_MS:
            v = Variant(f"{threshold}/{max_ms}", "", ((200, threshold),), max_ms)
            s = _summary(replay(probe, v), [], [])
            sweep[v.key] = {"threshold": threshold, "max_ms": max_ms, **_brief(s)}
    variants = {}
    for v in VARIANTS:
        s = _summary(replay(probe, v), [], [])
        variants[v.key] = {"label": v.label, "variant": dataclasses.asdict(v), **_brief(s)}
    return {"probe_ms": PROBE_MS, "sweep": sweep, "variants": variants, "pauses": probe}


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    a = summary["all"]
    return {"cut_offs": a["cut_offs"], "pause_cases": a["pause_cases"],
            "complete_split": a["complete_split"], "latency_ms": a["latency_ms"],
            "by_pause": summary["by_pause"]}  # fmt: skip


async def _concurrent(cases: list[Case], engines: Engines, vad: SileroVad, calls: int
                      ) -> dict[str, Any]:  # fmt: skip
    """`calls` of the smart-turn runs at a time on one shared runner: batch sizes, CPU."""
    costs: list[tuple[int, float]] = []
    runner = BatchedTurnModel(SmartTurn.shared(), on_batch=lambda n, s: costs.append((n, s)))
    model = CountingTurnModel(runner)
    rule = next(r for r in RULES if r.key == "smart_turn")
    began = time.perf_counter()
    for k in range(0, len(cases), calls):
        await asyncio.gather(*(_run_case(c, rule, engines, vad, model)
                               for c in cases[k : k + calls]))  # fmt: skip
    runner.close()
    cpu = [seconds * 1000 / n for n, seconds in costs for _ in range(n)]
    sizes = [n for n, _ in costs]
    return {
        "calls": calls, "inferences": sum(sizes), "runs": len(costs),
        "batch_size": {"mean": float(np.mean(sizes)) if sizes else None,
                       "max": max(sizes, default=None)},
        "cpu_ms_per_inference": {"p50": common.pct(cpu, 50), "p90": common.pct(cpu, 90)},
        "wall_s": time.perf_counter() - began,
    }  # fmt: skip


async def run(quick: bool, log: common.StderrLog) -> dict[str, Any]:
    cases = build_cases(quick)
    log(f"{len(cases)} cases ({sum(c.kind == 'pause' for c in cases)} with a mid-sentence pause)")
    engines = Engines(NoSTT(), ScriptedLanguageModel.from_file(), EspeakTextToSpeech())
    vad = SileroVad.shared()
    res: dict[str, Any] = {"rules": {}, "cases": len(cases)}
    for rule in RULES:
        costs: list[tuple[int, float]] = []
        runner = BatchedTurnModel(
            SmartTurn.shared(), on_batch=lambda n, s, c=costs: c.append((n, s))
        )
        model = CountingTurnModel(runner)
        rows = [await _run_case(case, rule, engines, vad, model) for case in cases]
        runner.close()
        res["rules"][rule.key] = {
            "label": rule.label,
            "rule": dataclasses.asdict(rule),
            **_summary(rows, costs, model.probabilities),
            "rows": rows,
        }
        s = res["rules"][rule.key]["all"]
        log(f"{rule.key}: {s['cut_offs']}/{s['pause_cases']} cut off, "
            f"latency p50 {fmt(s['latency_ms']['p50'], 0)} ms")  # fmt: skip
    began = time.perf_counter()
    res["replay"] = _replay_all(probe_pauses(cases, vad, SmartTurn.shared()))
    log(f"probe and replay: {time.perf_counter() - began:.0f} s")
    for key, v in res["replay"]["variants"].items():
        log(
            f"replay {key}: {v['cut_offs']}/{v['pause_cases']} cut off, "
            f"latency p50 {fmt(v['latency_ms']['p50'], 0)} p90 {fmt(v['latency_ms']['p90'], 0)}"
        )
    began = time.perf_counter()
    probe = probe_words(cases, vad, SmartTurn.shared())
    res["words"] = words_summary(probe, lambda rows: _brief(_summary(rows, [], [])))
    w = res["words"]["rules"]
    log(f"words: {time.perf_counter() - began:.0f} s; audio alone {w['audio']['cut_offs']} "
        f"cut off, default {res['words']['default']}: "
        f"{w.get(res['words']['default'], {}).get('cut_offs')}")  # fmt: skip
    res["concurrent"] = await _concurrent(cases, engines, vad, calls=8)
    log(f"concurrent: {res['concurrent']}")
    return res


def _replay_tables(rep: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    """The replayed variants: the threshold x longest-wait sweep, the other rules, and the
    replay of the rules also run through the agent (how far to trust the replay)."""

    def cell(v: dict[str, Any]) -> str:
        lat = v["latency_ms"]
        return f"{v['cut_offs']} · {fmt(lat['p50'], 0)} / {fmt(lat['p90'], 0)}"

    sweep = rep["sweep"]
    grid = [[f"P >= {t}", *(cell(sweep[f"{t}/{m}"]) for m in SWEEP_MAX_MS)]
            for t in SWEEP_THRESHOLDS]  # fmt: skip
    pauses = list(next(iter(rep["variants"].values()))["by_pause"])
    others = []
    for v in rep["variants"].values():
        lat = v["latency_ms"]
        others.append([v["label"], f"{v['cut_offs']}/{v['pause_cases']}",
                       *(str(v["by_pause"][p]["cut_offs"]) for p in pauses),
                       fmt(lat["p50"], 0), fmt(lat["p90"], 0), fmt(lat["mean"], 0),
                       fmt(lat["max"], 0)])  # fmt: skip
    check = []
    for r in rules.values():
        rule = r["rule"]
        if rule["endpointing"] != "smart_turn" or rule["turn_min_silence_ms"] != 200:
            continue
        key = f"{rule['turn_threshold']}/{rule['turn_max_silence_ms']}"
        if key not in sweep:
            continue
        a = r["all"]
        check.append([r["label"], f"{a['cut_offs']} · {fmt(a['latency_ms']['p50'], 0)} / "
                      f"{fmt(a['latency_ms']['p90'], 0)}", cell(sweep[key])])  # fmt: skip
    return [
        "### Variants, replayed from the probed probabilities", "",
        "Every pause of every case, probed once: the segmenter the agent runs, on the same "
        f"VAD probabilities, held open {PROBE_MAX_MS} ms, with the model asked on the turn's "
        f"audio so far at {', '.join(map(str, rep['probe_ms']))} ms of silence (its measured "
        "time charged as the agent's virtual clock does); each variant is then replayed over "
        "those verdicts (`replay` in the script; what follows a cut-off is not re-probed).", "",
        "Threshold at the 200 ms look x longest wait (`turn_threshold` x "
        "`turn_max_silence_ms`); each cell: cut-offs of "
        f"{next(iter(sweep.values()))['pause_cases']} · latency p50 / p90 ms:", "",
        md_table(["bar", *(f"max {m / 1000:g} s" for m in SWEEP_MAX_MS)], grid),
        "", "Second looks, a bar that falls as the pause grows, a wait that depends on P:", "",
        md_table(["variant", "cut-offs", *(f"{p} s" for p in pauses), "latency p50 ms", "p90",
                  "mean", "max"], others),
        *(["", "Replay against the agent (same rule, cut-offs · p50 / p90 ms):", "",
           md_table(["rule", "through the agent", "replayed"], check)] if check else []),
    ]  # fmt: skip


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    rules = res["rules"]
    rows = []
    for r in rules.values():
        a, h, g = r["all"], r["human"], r["generated"]
        lat = a["latency_ms"]
        rows.append([
            r["label"],
            f"{a['cut_offs']}/{a['pause_cases']} ({a['cut_off_rate']:.0%})",
            f"{h['cut_offs']}/{h['pause_cases']}", f"{g['cut_offs']}/{g['pause_cases']}",
            fmt(lat["p50"], 0), fmt(lat["p90"], 0), fmt(lat["mean"], 0), fmt(lat["max"], 0),
            f"{a['complete_split']}/{a['complete_cases']}",
        ])  # fmt: skip
    pauses = list(next(iter(rules.values()))["by_pause"])
    by_pause = [[r["label"], *(f"{r['by_pause'][p]['cut_offs']}/{r['by_pause'][p]['cases']}"
                               for p in pauses)] for r in rules.values()]  # fmt: skip
    lat_rows = []
    for r in rules.values():
        for source in ("human", "generated"):
            lat = r[source]["latency_ms"]
            lat_rows.append([r["label"], source, r[source]["complete_cases"], fmt(lat["p50"], 0),
                             fmt(lat["p90"], 0), fmt(lat["max"], 0)])  # fmt: skip
    smart = rules["smart_turn"]["model"]
    conc = res["concurrent"]
    cost_rows = [
        ["one call at a time (smart-turn rule)", smart["inferences"], smart["runs"],
         ", ".join(map(str, smart["batch_sizes"])), fmt(smart["cpu_ms_per_inference"]["p50"]),
         fmt(smart["cpu_ms_per_inference"]["p90"])],
        [f"{conc['calls']} calls at once, one shared runner", conc["inferences"], conc["runs"],
         f"mean {fmt(conc['batch_size']['mean'], 2)}, max {conc['batch_size']['max']}",
         fmt(conc["cpu_ms_per_inference"]["p50"]), fmt(conc["cpu_ms_per_inference"]["p90"])],
    ]  # fmt: skip
    replayed = _replay_tables(res["replay"], rules)
    fixed, st = rules["fixed500"]["all"], rules["smart_turn"]["all"]
    verdict = (
        f"smart-turn cuts callers off on {st['cut_offs']} of {st['pause_cases']} mid-sentence "
        f"pauses against {fixed['cut_offs']} for the fixed 500 ms rule "
        f"({st['cut_offs'] / max(1, fixed['cut_offs']):.0%} of them; goal: under 50 %), with a "
        f"median end-of-turn decision {fmt(st['latency_ms']['p50'], 0)} ms after the true end "
        f"of speech against {fmt(fixed['latency_ms']['p50'], 0)} ms, p90 "
        f"{fmt(st['latency_ms']['p90'], 0)} vs {fmt(fixed['latency_ms']['p90'], 0)} ms (mean "
        f"{fmt(st['latency_ms']['mean'], 0)} vs {fmt(fixed['latency_ms']['mean'], 0)} ms)."
    )
    return "\n".join([
        SECTION, "",
        f"Run {m['date_utc']} by `bench/endpointing_bench.py`{' (--quick)' if res['quick'] else ''}"
        f" on {m['nproc']} CPUs, {m['cpu_model']} (shared with other work; load average "
        f"{' / '.join(map(str, m['loadavg_at_start']))} at start), onnxruntime "
        f"{m['packages']['onnxruntime']}. {res['cases']} caller utterances through the real "
        "agent in virtual time (method: the script's docstring). Latencies are from the "
        "caller's true end of speech to the agent's `speech_end` decision, with the turn "
        "model charged at its measured cost: **lower bounds** of a live call (voice-to-voice "
        "adds STT, LLM, TTS and the transport).", "",
        verdict, "",
        "### Cut-offs and end-of-turn latency", "",
        md_table(["rule", "cut-offs on mid-sentence pauses", "human", "generated",
                  "latency p50 ms", "p90", "mean", "max", "complete utterances split"], rows),
        "", "### Cut-offs by pause length", "",
        md_table(["rule", *(f"{p} s" for p in pauses)], by_pause),
        "", "### End-of-turn latency by speaker (complete utterances, ms)", "",
        md_table(["rule", "speech", "n", "p50", "p90", "max"], lat_rows),
        "", *replayed,
        "", *(words_tables(res["words"]) if "words" in res else []),
        "", "### Turn model cost", "",
        md_table(["load", "inferences", "model runs", "batch sizes", "CPU ms / inference p50",
                  "p90"], cost_rows),
        "", "CPU time is features (numpy) plus ONNX on the runner's worker thread "
        "(`time.thread_time`); the model's cost grows linearly with the batch, so batching "
        "saves queueing, not CPU.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__, f"write the '{SECTION}' section into this file")
    args = parser.parse_args(argv)
    if not human_speech.available():
        print("human speech missing: run `make setup`", file=sys.stderr)
        return 2
    log = common.StderrLog()
    machine = common.machine_info(PACKAGES, loadavg_at_start=common.loadavg())
    res: dict[str, Any] = {"quick": args.quick, "machine": machine}
    res |= asyncio.run(run(args.quick, log))
    return common.finish(res, render, args, log)


if __name__ == "__main__":
    raise SystemExit(main())
