"""Start-up CPU calibration: how much slower (or faster) this machine does a call's work than
the machine `server.cpu_per_call` was measured on, so a fresh gateway's first ramp of calls
is judged by a prior that holds here.

Place in the flow: run once by the gateway's start-up, after the engines are warm, before
the first call; its ratio scales the prior of `CpuBudget` (calls/cpu_budget.py). The prior
alone was measured on one 2-core Xeon with AVX-512 VNNI (1.5 % of a core per call); a 2-core
AMD EPYC without AVX-512 was measured at 2.6-3 % for the same calls, so the same prior there
let a ramp admit ~90 calls that ran late until the tick rule reacted (issue 12). The
measurement after `LEARNED` seconds of calls replaces the prior either way; this only makes
the first minute right.

The workload is a call's own, in the proportions a SIP call spends it on the reference
machine (bench/sip_load.py at 90 calls, per-thread CPU): the media path of the event loop
(G.711, resampling, the echo canceller while the bot talks, about 35 %), Silero VAD windows
in a batch (15 %) and the end-of-turn model (30 %); speech recognition (the other 20 %)
depends on the engine chosen and is taken to scale like the ONNX models. Each part is timed
in CPU time of the calibrating thread (what the work costs, not how long it waited for a
core), the least of `_ROUNDS` rounds; the ratio is clamped to `[MIN_RATIO, MAX_RATIO]`.
Contention still inflates CPU time (a cache shared with a busy neighbour: the media part
measured x2.2 with three busy loops on the two cores), which errs on the safe side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voicebot.audio import g711
from voicebot.audio.echo import EchoCanceller
from voicebot.audio.frames import FRAME_SAMPLES
from voicebot.audio.resample import from_canonical, to_canonical
from voicebot.models.turn import BatchedTurnModel
from voicebot.models.vad.silero import SileroVad

log = logging.getLogger("voicebot.calls.cpu")

# CPU seconds of each part on the reference machine (2-core Intel Xeon, Sapphire Rapids
# class: avx512f avx512_vnni avx512_bf16 amx_tile; Python 3.11, numpy 2.4, onnxruntime
# 1.32), the least of the rounds, and its share of a SIP call's cost there.
REFERENCE_S = {"media": 0.0063, "vad": 0.0016, "turn": 0.0355}
SHARE = {"media": 0.35, "vad": 0.15, "turn": 0.30, "stt": 0.20}
MIN_RATIO = 0.5
MAX_RATIO = 4.0
_ROUNDS = 5
_MEDIA_TICKS = 50  # one second of a talking call
_VAD_STREAMS = 32


@dataclass(frozen=True)
class CpuCalibration:
    """This machine's CPU time for each part over the reference's, and their blend."""

    ratio: float
    parts: dict[str, float]

    def describe(self) -> str:
        parts = ", ".join(f"{name} x{value:.2f}" for name, value in self.parts.items())
        return f"x{self.ratio:.2f} ({parts})"


def _best_cpu_times(works: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Each part's least CPU time over `_ROUNDS` rounds of all parts in turn. Contention
    (another process on the core, a cold cache) only ever adds time, so the least is the
    machine's own speed; rounds rather than repeats of one part, so that a burst of it
    spoils one round of every part instead of every repeat of one."""
    best = dict.fromkeys(works, float("inf"))
    for _ in range(_ROUNDS):
        for name, work in works.items():
            began = time.thread_time()
            work()
            best[name] = min(best[name], time.thread_time() - began)
    return best


def _media_work() -> Callable[[], object]:
    rng = np.random.default_rng(7)
    bot = (rng.standard_normal((_MEDIA_TICKS, FRAME_SAMPLES)) * 3000).astype(np.int16)
    caller = g711.ulaw_encode((rng.standard_normal((_MEDIA_TICKS, 160)) * 300).astype(np.int16))

    def run() -> None:
        # A fresh canceller each repeat: it searches for the echo delay as a new call does.
        echo, up, down = EchoCanceller(), to_canonical(8000), from_canonical(8000)
        for tick in range(_MEDIA_TICKS):
            pcm16 = up.process(g711.ulaw_decode(caller[tick]))
            echo.reference(bot[tick])
            echo.process(pcm16)
            g711.ulaw_encode(down.process(bot[tick]))

    return run


def _vad_work(model: SileroVad) -> Callable[[], object]:
    rng = np.random.default_rng(8)
    streams = [model.new_stream() for _ in range(_VAD_STREAMS)]
    size = streams[0].window_samples
    windows = [(rng.standard_normal(size) * 2000).astype(np.int16) for _ in streams]
    return lambda: model.run_batch(streams, windows)


def _turn_work(turn: BatchedTurnModel) -> Callable[[], object]:
    rng = np.random.default_rng(9)
    audio = (rng.standard_normal(3 * 16000) * 2000).astype(np.int16)
    return lambda: turn.model.probabilities([audio])


def calibrate(vad: SileroVad, turn: BatchedTurnModel | None) -> CpuCalibration:
    """Time the parts (about 0.25 s of CPU; blocking: run it on a worker thread)."""
    works: dict[str, Callable[[], object]] = {"media": _media_work(), "vad": _vad_work(vad)}
    if turn is not None:
        works["turn"] = _turn_work(turn)
    parts = {name: seconds / REFERENCE_S[name] for name, seconds in _best_cpu_times(works).items()}
    models = [parts[name] for name in ("vad", "turn") if name in parts]
    onnx = sum(models) / len(models)
    weights = {name: SHARE[name] for name in parts}
    weighted = sum(weights[name] * value for name, value in parts.items())
    # The shares of parts not timed (STT; the turn model when it is off) go with the ONNX
    # models' ratio: the vector units are what differ most between machines.
    rest = 1.0 - sum(weights.values())
    ratio = min(MAX_RATIO, max(MIN_RATIO, weighted + rest * onnx))
    return CpuCalibration(round(ratio, 3), {k: round(v, 3) for k, v in parts.items()})
