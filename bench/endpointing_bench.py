"""End-of-turn benchmark: how often each endpointing rule cuts callers off mid-sentence, and
how long it takes to decide that a finished caller has finished.

Rules, side by side in one run, each through the real agent (`simulate_call`, virtual time,
Silero VAD, the agent's `Endpointer`):

- fixed 500 ms: `agent.endpointing = "fixed"`, `vad.min_silence_ms = 500` (the old default);
- smart-turn: `agent.endpointing = "smart_turn"` with its defaults (model asked at a 200 ms
  pause; a turn judged complete ends there, an unfinished one waits up to 2 s);
- LiveKit default: LiveKit Agents' default endpointing is mode "fixed", min_delay 0.5 s,
  max_delay 3 s, where max_delay only applies when a turn-detector model says "unlikely";
  its default (VAD) turn detection with the Silero plugin's min_silence_duration 0.55 s
  behaves as max(VAD silence, min_delay) = a fixed 550 ms silence rule, run here as that;
- smart-turn 500/3000: the turn model with LiveKit's min/max delays (what LiveKit's timing
  would do with this turn model in its place), for reference.

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

Model cost: CPU time per inference (features + ONNX, `time.thread_time` on the worker
thread) and batch sizes, for the single-call runs and for 8 calls run concurrently on one
shared `BatchedTurnModel`.

    .venv/bin/python bench/endpointing_bench.py --json /tmp/eot.json --results bench/RESULTS.md
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

from bench import common
from bench.common import fmt, md_table
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


@dataclass(frozen=True)
class Rule:
    key: str
    label: str
    endpointing: str
    min_silence_ms: int = 500  # vad.min_silence_ms (the fixed rule)
    turn_min_silence_ms: int = 200
    turn_max_silence_ms: int = 2000


RULES = (
    Rule("fixed500", "fixed 500 ms silence", "fixed"),
    Rule("smart_turn", "smart-turn (200 ms / 2 s)", "smart_turn"),
    Rule("livekit", "LiveKit default (VAD 0.55 s, min 0.5 / max 3 s)", "fixed", 550),
    Rule("smart_lk", "smart-turn with LiveKit's 0.5 / 3 s", "smart_turn", 500, 500, 3000),
)


@dataclass
class Case:
    key: str
    kind: str  # "pause" or "complete"
    source: str  # "human" or "generated"
    audio: np.ndarray  # caller audio, lead-in and tail included
    true_end: float  # call seconds where the (last) speech ends
    pause_s: float = 0.0


class NoSTT:
    """Hears nothing: no turn is answered, so no bot speech changes the caller's timeline."""

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
        turn_max_silence_ms=rule.turn_max_silence_ms,
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


async def _concurrent(cases: list[Case], engines: Engines, vad: SileroVad, calls: int
                      ) -> dict[str, Any]:  # fmt: skip
    """`calls` of the smart-turn runs at a time on one shared runner: batch sizes, CPU."""
    costs: list[tuple[int, float]] = []
    runner = BatchedTurnModel(SmartTurn.shared(), on_batch=lambda n, s: costs.append((n, s)))
    model = CountingTurnModel(runner)
    rule = RULES[1]
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
        res["rules"][rule.key] = {"label": rule.label, "rule": dataclasses.asdict(rule),
                                  **_summary(rows, costs, model.probabilities), "rows": rows}
        s = res["rules"][rule.key]["all"]
        log(f"{rule.key}: {s['cut_offs']}/{s['pause_cases']} cut off, "
            f"latency p50 {fmt(s['latency_ms']['p50'], 0)} ms")  # fmt: skip
    res["concurrent"] = await _concurrent(cases, engines, vad, calls=8)
    log(f"concurrent: {res['concurrent']}")
    return res


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
    fixed, st = rules["fixed500"]["all"], rules["smart_turn"]["all"]
    verdict = (
        f"smart-turn cuts callers off on {st['cut_offs']} of {st['pause_cases']} mid-sentence "
        f"pauses against {fixed['cut_offs']} for the fixed 500 ms rule "
        f"({st['cut_offs'] / max(1, fixed['cut_offs']):.0%} of them; goal: under 50 %), with a "
        f"median end-of-turn decision {fmt(st['latency_ms']['p50'], 0)} ms after the true end "
        f"of speech against {fmt(fixed['latency_ms']['p50'], 0)} ms (mean "
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
