"""Whisper on human speech: word error rate, repetition loops and cost per utterance.

The engine (`voicebot.models.stt.whisper`) encodes each caller segment plus 2 s of silence
instead of Whisper's 30 s window, and short clips then loop ("ten of clubs" -> "10 of
clubs 10 of clubs 10 of clubs"). This bench runs, for Whisper base and tiny.en, on the
human recordings of `tests/human_speech` (pocketsphinx test data: card names, "go forward
ten meters", LibriVox sentences, a digit string) and the short clips cut and spliced from
them (`tests/short_utterances`):

- trimmed: one decode on the segment + 2 s, as it comes out;
- trimmed + rate guard: the engine before the loop detector (a decode with more than 3 +
  6 words per second, or out of tokens, redone on 30 s); figured from the trimmed and full
  decodes of the same clip (greedy decoding is deterministic), cost = their sum when redone;
- full: one decode on the 30 s window (what faster-whisper does);
- guarded: the engine as it is (trimmed, `loop_reason` -> segment + 10 s -> 30 s).

Each on the recordings as they are (wideband) and through a telephone line (8 kHz G.711
µ-law and back), as SIP callers arrive.

Per model and variant: WER per kind (short / read) and overall, pooled over words after
`tests.wer.normalise` (lower case, punctuation and hyphens off, numbers spelled out,
"Mr." -> "mister"); loops, two ways: decodes the engine's detector flags, and transcripts
that say a phrase back to back more often than the speaker did (`tests.wer.excess_repeat`,
judged against the reference); cost per utterance as process CPU seconds
(`time.process_time`: CTranslate2's threads included; the machine is shared with other
work, so wall time, also given, is noisy). Each clip runs `--reps` times, variants
interleaved clip by clip so that other load falls on all of them alike; CPU is the median
over the repetitions, WER and loops those of the first (the decodes are deterministic).

    .venv/bin/python bench/stt_bench.py --json /tmp/stt.json --results bench/RESULTS.md
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

from bench import common
from bench.common import fmt, md_table
from tests.short_utterances import Utterance, all_utterances
from tests.wer import excess_repeat, word_errors
from voicebot.audio.g711 import ulaw_decode, ulaw_encode
from voicebot.audio.resample import resample_whole
from voicebot.models.stt import whisper
from voicebot.models.stt.whisper import WhisperSpeechToText

SR = whisper.SAMPLE_RATE
MODELS = ("base", "tiny.en")
VARIANTS = ("trimmed", "rate guard", "full", "guarded")
KINDS = ("short", "read")
CHANNELS = ("wideband", "phone")


def phone(pcm: Any) -> Any:
    """A SIP caller's line: 8 kHz G.711 µ-law and back to 16 kHz (what the agent hears)."""
    narrow = resample_whole(pcm, SR, 8000)
    return resample_whole(ulaw_decode(ulaw_encode(narrow)), 8000, SR)


def timed(stt: WhisperSpeechToText, pcm: Any) -> tuple[list[whisper.DecodePass], float, float]:
    """(decodes, CPU seconds, wall seconds) of one transcription."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    passes = stt.transcribe_passes(pcm)
    return passes, time.process_time() - cpu0, time.perf_counter() - wall0


def final_text(passes: list[whisper.DecodePass]) -> str:
    """What the engine hands on for these decodes (`transcribe_sync`'s rule)."""
    last = passes[-1]
    return whisper.first_copy(last.text) if last.loop == "length" else last.text


def run_model(
    model: str, utts: list[Utterance], reps: int, log: common.StderrLog, run: str
) -> list[dict]:
    """Every clip through the three measured variants, `reps` times, interleaved."""
    engines = {
        "trimmed": WhisperSpeechToText(model, loop_guard=False),
        "full": WhisperSpeechToText(model, trim_encoder=False, loop_guard=False),
        "guarded": WhisperSpeechToText(model),
    }
    rows = []
    for u in utts:
        row: dict[str, Any] = {"key": u.key, "kind": u.kind, "said": u.transcript,
                               "seconds": len(u.samples) / SR}  # fmt: skip
        for name, stt in engines.items():
            cpu, wall, passes = [], [], []
            for _ in range(reps):
                got, c, w = timed(stt, u.samples)
                passes = passes or got
                cpu.append(c)
                wall.append(w)
            row[name] = {
                "passes": [
                    {"window_s": p.window_s, "text": p.text, "loop": p.loop} for p in passes
                ],
                "text": final_text(passes),
                "cpu_s": statistics.median(cpu),
                "wall_s": statistics.median(wall),
            }
        t, f = row["trimmed"], row["full"]
        redo = t["passes"][-1]["loop"] == "length" or (
            len(t["text"].split()) > 3 + whisper.MAX_WORDS_PER_SECOND * row["seconds"]
        )
        row["rate guard"] = {
            "passes": t["passes"] + (f["passes"] if redo else []),
            "text": f["text"] if redo else t["text"],
            "cpu_s": t["cpu_s"] + (f["cpu_s"] if redo else 0.0),
            "wall_s": t["wall_s"] + (f["wall_s"] if redo else 0.0),
        }
        for name in VARIANTS:
            v = row[name]
            v["errors"], v["ref_words"] = word_errors(u.transcript, v["text"])
            v["excess_repeat"] = excess_repeat(u.transcript, v["text"])
        g = row["guarded"]
        windows = [p["window_s"] for p in g["passes"]]
        log(f"{run} {u.key}: trimmed {row['trimmed']['text']!r} -> guarded {g['text']!r} "
            f"(windows {windows}, {g['cpu_s']:.2f} s CPU)")  # fmt: skip
        rows.append(row)
    return rows


def summary(rows: list[dict], variant: str) -> dict[str, Any]:
    """WER per kind and overall, loops and cost of one variant over `rows`."""
    out: dict[str, Any] = {}
    for kind in (*KINDS, "all"):
        sel = [r[variant] for r in rows if kind == "all" or r["kind"] == kind]
        if not sel:
            continue
        out[kind] = {
            "n": len(sel),
            "wer": sum(v["errors"] for v in sel) / max(1, sum(v["ref_words"] for v in sel)),
            "cpu_s": statistics.mean(v["cpu_s"] for v in sel),
            "wall_s": statistics.mean(v["wall_s"] for v in sel),
            "decodes": statistics.mean(len(v["passes"]) for v in sel),
            "first_flagged": sum(v["passes"][0]["loop"] is not None for v in sel),
            "final_flagged": sum(v["passes"][-1]["loop"] is not None for v in sel),
            "excess_repeat": sum(v["excess_repeat"] is not None for v in sel),
        }
    return out


def pc(x: float) -> str:
    return f"{100 * x:.1f}"


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    load = " / ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    out = ["## STT on human speech", ""]
    if res["quick"]:
        out += ["*Quick smoke run (`--quick`): figures are not representative.*", ""]
    out += [
        f"Run {m['date_utc']} by `bench/stt_bench.py` in {res['total_seconds']:.0f} s. "
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}; **shared with other work** (load "
        f"average at start {load}, at end "
        f"{' / '.join(f'{x:.2f}' for x in res['loadavg_at_end'])}), so cost is given as "
        "process CPU seconds (all threads: with 2 of them, wall can be lower) and wall time "
        f"is only indicative. Python {m['python']}, "
        f"faster-whisper {m['packages']['faster-whisper']}, ctranslate2 "
        f"{m['packages']['ctranslate2']}, numpy {m['packages']['numpy']}; Whisper int8, "
        f"{res['threads']} threads, greedy; {res['reps']} repetitions per clip (CPU: median).",
        "",
        "Speech: the 11 human recordings of `tests/human_speech` (pocketsphinx 5.1.1 test "
        'data: 5 spoken card names, "go forward ten meters", 5 LibriVox sentences), its digit '
        'string `tidigits/dhd.2934z.raw` ("two nine three four zero") and, cut '
        "and spliced from them at their pauses (`tests/short_utterances`), the three cards of "
        'cards-005 and the two words of "five five" one by one, and "five five five" / '
        '"five five five five". Short = 1-3.5 s (cards, command, digits), read = the '
        "LibriVox sentences (3-7 s). Line: wideband = the recordings as they are (16 kHz); "
        "phone = through a SIP caller's line (16 -> 8 kHz, G.711 µ-law, -> 16 kHz). "
        "Variants: **trimmed** = one decode on segment + "
        f"{whisper.PAD_SECONDS:g} s; **rate guard** = the engine before this work (trimmed, "
        "redone on 30 s when over 3 + 6 words/s or out of tokens; cost = the sum when "
        "redone); **full** = the 30 s window; **guarded** = the engine now (trimmed; a decode "
        "`loop_reason` flags is redone on segment + "
        f"{whisper.RETRY_PAD_SECONDS:g} s, then on 30 s). WER in %, pooled over words, after "
        "`tests.wer.normalise` (lower case, punctuation and hyphens off, numbers as words, "
        "Mr. -> mister). **Flagged** = decodes the engine's loop detector flags (first decode "
        "/ the one taken); **loops** = final transcripts that say a phrase back to back more "
        "often than the speaker did (judged against the reference, not by the detector).",
        "",
    ]
    header = ["model (line)", "variant", "WER short", "WER read", "WER all",
              "flagged first / taken", "loops (short + read)", "decodes / utt",
              "CPU s / utt short", "CPU s / utt read", "CPU s / utt all",
              "wall s / utt (shared)"]  # fmt: skip
    table = []
    for run in res["runs"]:
        for variant in VARIANTS:
            s = res["summary"][run][variant]
            a = s["all"]
            loops = " + ".join(str(s[k]["excess_repeat"]) for k in KINDS if k in s)
            table.append([
                run, variant, *(pc(s[k]["wer"]) if k in s else "-" for k in KINDS),
                pc(a["wer"]), f"{a['first_flagged']} / {a['final_flagged']}", loops,
                fmt(a["decodes"], 2), *(fmt(s[k]["cpu_s"], 2) if k in s else "-" for k in KINDS),
                fmt(a["cpu_s"], 2), fmt(a["wall_s"], 2),
            ])  # fmt: skip
    n = {k: sum(r["kind"] == k for r in next(iter(res["rows"].values()))) for k in KINDS}
    out += [f"### WER, loops and cost ({n['short']} short + {n['read']} read clips)", "",
            md_table(header, table), ""]  # fmt: skip
    for run in res["runs"]:
        s = {v: res["summary"][run][v]["all"] for v in VARIANTS}
        loops = {v: s[v]["excess_repeat"] for v in VARIANTS}
        out.append(
            f"- {run}: guarded {loops['guarded']} loops (trimmed {loops['trimmed']}, rate "
            f"guard {loops['rate guard']}), WER {pc(s['guarded']['wer'])} % (full window "
            f"{pc(s['full']['wer'])} %) at {s['guarded']['cpu_s'] / s['full']['cpu_s']:.2f}x "
            f"the full window's CPU per utterance ({s['guarded']['cpu_s']:.2f} vs "
            f"{s['full']['cpu_s']:.2f} s; trimmed alone {s['trimmed']['cpu_s']:.2f} s)."
        )
    out.append("")

    out += ["### Short clips, transcript by transcript (wideband)", "",
            "Windows = the encoder windows (s) the guarded engine decoded.", ""]  # fmt: skip
    header = ["clip", "s", "said"]
    for model in res["models"]:
        header += [f"{model} trimmed", f"{model} guarded", "windows"]
    table = []
    for i, row in enumerate(res["rows"][res["models"][0]]):
        if row["kind"] != "short":
            continue
        cells = [row["key"], f"{row['seconds']:.2f}", row["said"]]
        for model in res["models"]:
            r = res["rows"][model][i]
            windows = "+".join(f"{p['window_s']:g}" for p in r["guarded"]["passes"])
            cells += [f"`{r['trimmed']['text']}`", f"`{r['guarded']['text']}`", windows]
        table.append(cells)
    out += [md_table(header, table), ""]
    loops = [r["trimmed"]["text"] for rows in res["rows"].values() for r in rows
             if r["trimmed"]["excess_repeat"]]  # fmt: skip
    if loops:
        ratios = [whisper.compression_ratio(t) for t in loops]
        worst = loops[ratios.index(max(ratios))]
        out += [
            f"Of the {len(loops)} looping trimmed decodes, gzip compression ratio > "
            f"{whisper.COMPRESSION_RATIO_MAX:g} (faster-whisper's test) flags "
            f"{sum(x > whisper.COMPRESSION_RATIO_MAX for x in ratios)}: the highest is "
            f"{max(ratios):.2f}, `{worst}`; short text does not compress, and the detector's "
            "run-of-words test does the work.",
            "",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__, "write the '## STT on human speech' section here")
    parser.add_argument("--reps", type=int, default=3, help="runs per clip (CPU: median)")
    parser.add_argument("--render", type=Path, help="no runs: render this --json file")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(args.render, render, args.results)
    log = common.StderrLog()
    utts = all_utterances()
    models = MODELS
    if args.quick:
        models, args.reps = ("tiny.en",), 1
        utts = [u for u in utts if u.key in ("cards-001", "cards-004", "librivox-0930")]
    res: dict[str, Any] = {
        "quick": args.quick,
        "reps": args.reps,
        "threads": 2,
        "models": list(models),
        "runs": [],
        "machine": common.machine_info(
            ["faster-whisper", "ctranslate2", "numpy"], loadavg_at_start=common.loadavg()
        ),
        "rows": {},
        "summary": {},
    }
    for model in models:
        for channel in CHANNELS:
            run = model if channel == "wideband" else f"{model} {channel}"
            clips = utts if channel == "wideband" else [
                dataclasses.replace(u, samples=phone(u.samples)) for u in utts
            ]  # fmt: skip
            log(f"{run}: {len(clips)} clips x {len(VARIANTS)} variants x {args.reps}")
            rows = run_model(model, clips, args.reps, log, run)
            res["runs"].append(run)
            res["rows"][run] = rows
            res["summary"][run] = {v: summary(rows, v) for v in VARIANTS}
    return common.finish(res, render, args, log)


if __name__ == "__main__":
    raise SystemExit(main())
