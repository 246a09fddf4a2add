"""The endpointing bench's transcript rule: a pause the turn model judges unfinished ends
once the early transcript's words read as a finished sentence (agent/endpointing.py,
models/turn/text.py).

Place in the flow: bench/endpointing_bench.py runs its agent with an STT that hears nothing
(no turn answered, no bot speech in the caller's timeline), so this rule, which needs the
words, is measured here instead, replayed like the bench's other variants: every pause of
every case is probed once with the segmenter the agent runs, the turn model asked at the
agent's decision point (`DECIDE_MS`: 9 VAD windows, 288 ms), and at `speculative_pause_ms`
(160 ms) the speech before the pause transcribed by the default STT (Whisper base) and scored by the
text model, as speculation and the endpointer would. Each rule is then replayed: P_audio >=
`turn_threshold` ends the turn at `DECIDE_MS` (its verdict asked ahead, so ready then); else
P_text >= the bar ends it at the later of `turn_text_min_silence_ms` and when the words
were scored (160 ms + STT + text model, as measured); else the longest wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from bench import common
from voicebot.agent.config import AgentConfig
from voicebot.models.config import EngineSettings
from voicebot.models.stt.whisper import WhisperSpeechToText
from voicebot.models.turn import SmartTurn
from voicebot.models.turn.text import LlamaTextTurn
from voicebot.models.vad import SileroVad, SpeechSegmenter, VadParams

_DEFAULTS = AgentConfig()
WINDOW_S = 512 / 16_000
# The first whole VAD window count at or over turn_min_silence_ms (280 ms: 9 windows, 288).
DECIDE_MS = 1000 * WINDOW_S * math.ceil(_DEFAULTS.turn_min_silence_ms / (1000 * WINDOW_S))
TEXT_BARS = (0.05, 0.1, 0.2)
TEXT_MIN_MS = (300, 500, 800)


def walk_pauses(
    audio: np.ndarray, vad: SileroVad, hold_ms: int, pauses: list[dict[str, Any]]
) -> Iterator[tuple[int, SpeechSegmenter, dict[str, Any]]]:
    """The segmenter the agent runs over `audio` (held open `hold_ms`), window by window:
    at each window inside a pause, (window index, segmenter, that pause's entry in
    `pauses`: its "start" and "silence_ms" so far; a new pause gets a new entry)."""
    segmenter = SpeechSegmenter(VadParams(min_silence_ms=hold_ms))
    w = segmenter.window_samples
    for k, p in enumerate(vad.probabilities(audio)):
        segmenter.push(audio[k * w : (k + 1) * w], float(p))
        start = segmenter.pause_start
        if start is None:
            continue
        if not pauses or pauses[-1]["start"] != start:
            pauses.append({"start": start, "silence_ms": 0.0})
        pauses[-1]["silence_ms"] = segmenter.trailing_silence_ms
        yield k, segmenter, pauses[-1]


def probe_words(cases: list[Any], vad: SileroVad, model: SmartTurn) -> list[dict[str, Any]]:
    """Every pause of every case with P_audio at `DECIDE_MS`, the early transcript and
    P_text."""
    stt = WhisperSpeechToText(EngineSettings().stt_model)
    text = LlamaTextTurn()
    out = []
    try:
        for case in cases:
            pauses: list[dict[str, Any]] = []
            for _, segmenter, pause in walk_pauses(case.audio, vad, 3200, pauses):
                silence = pause["silence_ms"]
                if silence >= _DEFAULTS.speculative_pause_ms and "text" not in pause:
                    segment = segmenter.open_segment()
                    assert segment is not None
                    began = time.perf_counter()
                    words = stt.transcribe_sync(segment[2]).text
                    scored = time.perf_counter()
                    p_text = text.end_probability_sync(words)
                    pause.update(text=words, p_text=round(p_text, 4),
                                 words_s=round(time.perf_counter() - began, 3),
                                 stt_s=round(scored - began, 3))  # fmt: skip
                if silence >= DECIDE_MS and "p_audio" not in pause:
                    audio = segmenter.audio_so_far()
                    pause["p_audio"] = round(float(model.probability(audio)), 4)  # type: ignore[arg-type]
            out.append({
                "case": case.key, "kind": case.kind, "source": case.source,
                "pause_s": case.pause_s, "true_end": case.true_end, "pauses": pauses,
            })  # fmt: skip
    finally:
        stt._worker.shutdown(wait=True)  # (the engine has no close: one per process)
        text.close()
    return out


def replay_words(probe: list[dict[str, Any]], text_bar: float | None, text_min_ms: int,
                 bar: float = _DEFAULTS.turn_threshold,
                 max_ms: int = _DEFAULTS.turn_max_silence_ms) -> list[dict[str, Any]]:  # fmt: skip
    """Rows as the bench's `replay` gives them, for the rule above (`text_bar` None: the
    audio model alone)."""
    rows = []
    for case in probe:
        ends = []
        for i, pause in enumerate(case["pauses"]):
            last = i == len(case["pauses"]) - 1
            resumed = math.inf if last else pause["start"] + pause["silence_ms"] / 1000
            end = None
            if pause.get("p_audio") is not None and pause["p_audio"] >= bar:
                end = pause["start"] + DECIDE_MS / 1000
            elif text_bar is not None and pause.get("p_text", 0.0) >= text_bar:
                ready = _DEFAULTS.speculative_pause_ms / 1000 + pause["words_s"]
                at_ms = max(text_min_ms, ready * 1000)
                end = pause["start"] + math.ceil(at_ms / 32) * WINDOW_S
            if end is not None and end >= resumed:
                end = None  # the caller spoke on first
            if end is None and pause["silence_ms"] >= max_ms:
                end = pause["start"] + math.ceil(max_ms / 32) * WINDOW_S
            if end is not None:
                ends.append((end, last))
        rows.append(replay_row(case, ends))
    return rows


def replay_row(case: dict[str, Any], ends: list[tuple[float, bool]]) -> dict[str, Any]:
    """A probed case's row as the bench's agent runs give it, from the segment ends a rule
    made there ((call time, at the case's last pause))."""
    return {
        "case": case["case"], "kind": case["kind"], "source": case["source"],
        "pause_s": case["pause_s"], "turns": len(ends),
        "cut_off": any(not last for _, last in ends),
        "latency_ms": (ends[-1][0] - case["true_end"]) * 1000 if ends else None,
    }  # fmt: skip


def words_summary(probe: list[dict[str, Any]], summarise: Any) -> dict[str, Any]:
    """The rules replayed (`summarise`: the bench's `_summary` + `_brief`), and what the
    early transcripts cost."""
    rules = {"audio": summarise(replay_words(probe, None, 0))}
    for text_bar in TEXT_BARS:
        for text_min in TEXT_MIN_MS:
            rules[f"{text_bar}/{text_min}"] = summarise(replay_words(probe, text_bar, text_min))
    scored = [p for c in probe for p in c["pauses"] if "words_s" in p]
    return {
        "rules": rules,
        "words_ms": {"p50": common.pct([p["words_s"] * 1000 for p in scored], 50),
                     "p90": common.pct([p["words_s"] * 1000 for p in scored], 90)},
        "stt_ms_p50": common.pct([p["stt_s"] * 1000 for p in scored], 50),
        "default": f"{_DEFAULTS.turn_text_threshold}/{_DEFAULTS.turn_text_min_silence_ms}",
        "complete": [
            {"case": c["case"], "text": c["pauses"][-1].get("text"),
             "p_audio": c["pauses"][-1].get("p_audio"), "p_text": c["pauses"][-1].get("p_text")}
            for c in probe if c["kind"] == "complete" and c["pauses"]
        ],
        "pauses": probe,
    }  # fmt: skip


def words_tables(res: dict[str, Any]) -> list[str]:
    def cell(s: dict[str, Any]) -> str:
        lat = s["latency_ms"]
        return f"{s['cut_offs']} · {common.fmt(lat['p50'], 0)} / {common.fmt(lat['p90'], 0)}"

    rules = res["rules"]
    audio = rules["audio"]
    grid = [[f"P_text >= {b}", *(cell(rules[f"{b}/{m}"]) for m in TEXT_MIN_MS)]
            for b in TEXT_BARS]  # fmt: skip
    complete = [[c["case"][:48], c["text"] or "", common.fmt(c["p_audio"], 3),
                 common.fmt(c["p_text"], 3)] for c in res["complete"]]  # fmt: skip
    default = rules.get(res["default"])
    return [
        "### The transcript rule (words at a pause judged unfinished), replayed",
        "",
        f"The turn model at its decision point ({DECIDE_MS:.0f} ms) and, for pauses it judges "
        "unfinished, "
        "the early transcript (Whisper base on the speech before the pause, at 160 ms) scored "
        "by the text model (`models/turn/text.py`; words ending in a number score 0); method: "
        "bench/endpointing_words.py. Each cell: cut-offs of "
        f"{audio['pause_cases']} mid-sentence pauses · end-of-turn latency p50 / p90 ms on the "
        f"complete utterances. The audio model alone: {cell(audio)}. The words were scored "
        f"{common.fmt(res['words_ms']['p50'], 0)} ms (p50; p90 "
        f"{common.fmt(res['words_ms']['p90'], 0)}) after speculation asked for them "
        f"(STT {common.fmt(res['stt_ms_p50'], 0)} ms of it).",
        "",
        common.md_table(["bar", *(f"from {m} ms" for m in TEXT_MIN_MS)], grid),
        "",
        f"Defaults ({res['default'].replace('/', ' from ')} ms): "
        + (cell(default) if default else "not in the grid")
        + ".",
        "",
        "Complete utterances, what the turn model and the words said at their end:",
        "",
        common.md_table(["utterance", "early transcript", "P_audio", "P_text"], complete),
    ]
