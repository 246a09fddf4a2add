"""Gateway concurrency benchmark: N simultaneous WebSocket calls against a real `voicebot serve`.

Each simulated caller connects to `/ws` (calls start staggered over a couple of seconds),
streams 16 kHz PCM in real time (one 20 ms frame per 20 ms, digital silence between its
sentences, as a phone leg does), says "What is the balance on my account?", listens to the
whole reply (scripted LLM: about 6 s of bot speech), says "Please cancel my subscription at
the end of this month.", listens again, and so on for 2 turns (more at small N, so that every
N has enough bot frames to count), then hangs up. The caller is reactive: it speaks again
only once the bot has finished, after a short pause. Caller speech is espeak-ng
(`tests/audiogen.py`, 4 voices), made once; every random choice is seeded.

The server is a real `python -m voicebot serve` process (`tests/gateway_server.py`) with the
scripted LLM, no greeting and no `vad` events. The callers run in separate processes (asyncio
+ uvloop, up to `CALLS_PER_WORKER` calls each), never in the server's event loop. Three
sweeps (`FULL.sweeps`):

1. tiny.en + espeak-ng, server pinned to CPU 1 and callers to CPU 0 (affinity is inherited
   from this process when each is started): the server has one core to itself; the figure
   the capacity is quoted from.
2. The same engines unpinned: server and callers share both cores, as on a real 2-core box
   that also runs its callers. Here the server gets `OPENBLAS_NUM_THREADS=1`: with more than
   one CPU, numpy's OpenBLAS runs a thread pool, and the `fork()` uvloop does for every
   espeak-ng sentence can deadlock a matmul running at that moment on another thread (the
   Whisper feature extractor): STT then hangs for good. A bug of the gateway, not of this
   benchmark; pinned to one CPU, OpenBLAS runs single-threaded and is not affected.
3. Whisper base + Piper (the default engines), unpinned: the cost of the heavy engines.

Late frames are measured on the client. Every bot audio frame is placed on the server's 20 ms
output grid: the server emits `bot_text` (whose `t` is seconds of call audio, i.e. input
ticks x 20 ms) just before the first frame of each sentence and then sends one frame per input
tick, so frame j of a sentence belongs to tick round(t / 20 ms) + j. A reply is the run from
the `SPEAKING` state event to the next state event. A frame's ideal arrival is the arrival of
its reply's first frame + (its tick - that frame's tick) x 20 ms, its lateness the actual
arrival minus that. A frame more than 20 ms late (one frame period: a client that starts
playout when the first frame arrives, with one frame in hand, would run dry) is late; the
share more than 60 ms late (the 3-frame client buffer the server assumes,
`server.ws_client_buffer_frames`) is reported too. Ticks inside a reply where the server had
no audio yet (TTS still busy with the next sentence) are not lateness but mid-reply gaps.

Also per N: end-of-turn latency (client: last frame of the caller's sentence sent -> first
bot frame received; server: `speech_end` -> `SPEAKING` in call-audio time, the figure behind
`voicebot_end_of_turn_latency_seconds`); server CPU from /proc/PID/stat (utime + stime of all
threads, + cutime + cstime of its reaped espeak-ng children) per call; client CPU (getrusage
in every caller process); client send lag (how late the callers' own 20 ms sends were: large
= the client, not the server, is the bottleneck); whole-machine CPU from /proc/stat; the
server's Prometheus figures (`GET /metrics`: VAD batch size and cost per window, errors).

A sweep raises N until the run is clearly over (> 60 ms late >= 1 %, > 20 ms late >= 5 %,
end-of-turn median over 4 s because STT, one Whisper decode at a time per process, is
saturated, or failed calls), then bisects the 1 % boundary of 20 ms-late frames. Capacity =
the largest N with < 1 % late frames (> 20 ms) whose end-of-turn median stayed under 4 s,
every smaller N tried passing too.

The gateway process, the caller processes, CPU sampling and the sweep over N are the load
scripts' shared driver (bench/load_driver.py); this file has the WebSocket caller, its
lateness analysis, verdict and tables.

    .venv/bin/python bench/ws_load.py --wait-load 1.0 --json /tmp/ws.json --results bench/RESULTS.md
    .venv/bin/python bench/ws_load.py --quick
    .venv/bin/python bench/ws_load.py --render /tmp/ws.json --results bench/RESULTS.md  # no runs
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

from bench import common
from bench import load_driver as driver
from bench.common import Log, fmt, md_table
from bench.load_driver import HEAVY, LIGHT

SR = 16_000
FRAME = 320  # samples per 20 ms
FRAME_S = 0.02
SILENCE = bytes(2 * FRAME)
LATE_S = 0.020  # one frame period
LATE_BUFFER_S = 0.060  # the 3-frame client buffer the server assumes
CALLS_PER_WORKER = 20
IDLE_MAX_BUSY_PCT = 15.0  # before each run: wait until the machine is this idle ...
IDLE_MAX_WAIT_S = 90.0  # ... for at most this long
OTHERS_MAX_PCT = 20.0  # a failed run with more CPU (% of a core) used by others is redone
SENTENCES = (
    "What is the balance on my account?",
    "Please cancel my subscription at the end of this month.",
)
EXPECTED_REPLIES = ("Your account balance", "I can cancel that")  # the scripted intents
CALLER_VOICES = ("en-us", "en-gb", "en-us+m4", "en-gb-x-rp+f2")
SEED = 20261125
SECTION = "## Gateway concurrency (WebSocket)"
PACKAGES = ("uvicorn", "websockets", "uvloop", "faster-whisper", "ctranslate2", "onnxruntime",
            "piper-tts", "numpy")  # fmt: skip


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Sweep:
    name: str
    engines: driver.Engines
    pinned: bool  # server on CPU 1, callers on CPU 0
    ns: tuple[int, ...]  # tried in order until a run is clearly over the limit
    until_s: float  # no run of this sweep starts later than this into the benchmark
    bisect_steps: int  # runs spent between the last good and the first bad N
    stop_early: bool = True  # stop at the first N clearly over the limit

    @property
    def layout(self) -> str:
        return "server CPU 1, callers CPU 0" if self.pinned else "shared (both CPUs)"


@dataclass(frozen=True)
class Config:
    sweeps: tuple[Sweep, ...]
    turns: int  # caller sentences per call at large N
    min_turns_total: int  # at small N each call has more turns, up to max_turns ...
    max_turns: int  # ... so that every N has about this many turns in all
    connect_spread_s: float  # calls connect uniformly over this window
    lead_s: tuple[float, float]  # silence before the first sentence, uniform range
    pause_s: tuple[float, float]  # the caller's pause after a reply before speaking again
    reply_timeout_s: float  # a caller waits this long for a reply before going on
    max_eot_p50_s: float  # end-of-turn median beyond this: STT saturated
    idle_wait_s: float = IDLE_MAX_WAIT_S  # before each run, wait this long at most for quiet
    retry_when_busy: bool = True  # run a failed N once more if others used the CPUs meanwhile

    def turns_for(self, n: int) -> int:
        return max(self.turns, min(self.max_turns, math.ceil(self.min_turns_total / n)))


FULL_NS = (1, 5, 10, 15, 20, 30, 40, 60, 80, 100, 130, 160, 200)
FULL = Config(
    sweeps=(
        Sweep("pinned", LIGHT, True, FULL_NS, until_s=5.0 * 60, bisect_steps=2),
        Sweep("shared", LIGHT, False, FULL_NS, until_s=9.0 * 60, bisect_steps=1),
        Sweep("heavy", HEAVY, False, FULL_NS, until_s=12.0 * 60, bisect_steps=0),
    ),
    turns=2,
    min_turns_total=16,
    max_turns=4,
    connect_spread_s=2.0,
    lead_s=(0.2, 3.0),
    pause_s=(0.4, 1.2),
    reply_timeout_s=20.0,
    max_eot_p50_s=4.0,
)
QUICK = dataclasses.replace(
    FULL,
    sweeps=(Sweep("pinned", LIGHT, True, (1, 4), until_s=45, bisect_steps=0, stop_early=False),),
    turns=1, min_turns_total=1, max_turns=1,
    connect_spread_s=0.5, lead_s=(0.2, 0.8), pause_s=(0.4, 0.6), reply_timeout_s=12.0,
    idle_wait_s=0.0, retry_when_busy=False,
)  # fmt: skip


@dataclass(frozen=True)
class CallSpec:
    index: int
    connect_at: float  # s after the common start
    lead: float  # s of silence before the first sentence
    voice: int  # index into the audio bank
    pauses: tuple[float, ...]  # after each reply; one per turn
    reply_timeout_s: float


# --------------------------------------------------------------------------- client side


@dataclass
class CallRecord:
    """What one caller saw, in order: (arrival s since the common start, event or None=audio)."""

    messages: list[tuple[float, dict[str, Any] | None]] = field(default_factory=list)
    speech_end_sent: list[float] = field(default_factory=list)  # last frame of each sentence
    send_lags: list[float] = field(default_factory=list)  # s late, every send
    connect_error: str | None = None
    close_code: int | None = None
    close_reason: str = ""
    started: float = 0.0
    ended: float = 0.0


async def _first_of(*aws: asyncio.Future[Any] | asyncio.Task[Any], timeout: float) -> None:
    await asyncio.wait(aws, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)


async def run_call(url: str, spec: CallSpec, bank: list[list[bytes]], clock0: float) -> CallRecord:
    """One reactive caller; times are seconds since `clock0` (a monotonic instant shared by
    all caller processes: CLOCK_MONOTONIC is system-wide)."""
    import websockets

    rec = CallRecord()
    delay = clock0 + spec.connect_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    rec.started = time.monotonic() - clock0
    pending: deque[bytes] = deque()
    said = asyncio.Event()
    replies_done = 0
    reply_over = asyncio.Event()
    try:
        ws = await websockets.connect(url, max_size=None, open_timeout=30, ping_interval=None)
    except Exception as exc:
        rec.connect_error = f"{type(exc).__name__}: {exc}"
        rec.ended = time.monotonic() - clock0
        return rec

    async def receive() -> None:
        nonlocal replies_done
        speaking = False
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                now = time.monotonic() - clock0
                if isinstance(message, bytes):
                    rec.messages.append((now, None))
                    continue
                event = json.loads(message)
                rec.messages.append((now, event))
                if event.get("type") == "state":
                    if event["state"] == "SPEAKING":
                        speaking = True
                    elif speaking:
                        speaking = False
                        replies_done += 1
                        reply_over.set()

    async def send() -> None:
        t0 = time.monotonic()
        k = 0
        while True:
            k += 1
            target = t0 + k * FRAME_S
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            rec.send_lags.append(time.monotonic() - target)
            frame = SILENCE
            if pending:
                frame = pending.popleft()
                if not pending:
                    rec.speech_end_sent.append(time.monotonic() - clock0)
                    said.set()
            await ws.send(frame)

    receiver = asyncio.create_task(receive())
    sender: asyncio.Task[None] | None = None
    try:
        await ws.send(json.dumps({"type": "start", "sample_rate": SR}))
        sender = asyncio.create_task(send())
        await _first_of(receiver, sender, timeout=spec.lead)
        sentences = bank[spec.voice]
        for turn, pause in enumerate(spec.pauses):
            if receiver.done() or sender.done():
                break
            said.clear()
            pending.extend(sentences[turn % len(sentences)])
            said_wait = asyncio.ensure_future(said.wait())
            await _first_of(said_wait, receiver, sender, timeout=60)
            said_wait.cancel()
            target = replies_done + 1
            deadline = time.monotonic() + spec.reply_timeout_s
            while replies_done < target and not receiver.done() and not sender.done():
                reply_over.clear()
                over_wait = asyncio.ensure_future(reply_over.wait())
                await _first_of(over_wait, receiver, timeout=deadline - time.monotonic())
                over_wait.cancel()
                if time.monotonic() >= deadline:
                    break
            await _first_of(receiver, timeout=pause)
        if sender.done() and sender.exception() is not None:
            exc = sender.exception()
            rec.connect_error = f"send failed: {type(exc).__name__}: {exc}"
    except Exception as exc:  # the connection broke under us: record it, end the call
        rec.connect_error = f"{type(exc).__name__}: {exc}"
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        with contextlib.suppress(Exception):
            await ws.send(json.dumps({"type": "stop"}))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(receiver, 30)
        with contextlib.suppress(Exception):
            await ws.close()
        rec.close_code = ws.close_code
        rec.close_reason = ws.close_reason or ""
        rec.ended = time.monotonic() - clock0
    return rec


def analyse_call(
    rec: CallRecord, spec: CallSpec, stalls: list[tuple[float, float]]
) -> dict[str, Any]:
    """Lateness of every bot frame on its reply's grid, gaps, end-of-turn latency, outcome.

    Lateness is against the grid anchored at the reply's first frame; jitter against the grid
    anchored at the reply's earliest frame (arrival - tick x 20 ms smallest), so a late first
    frame cannot hide the lateness of the rest. A late frame whose deadline (ideal arrival +
    20 ms) fell inside a stall of this caller process's event loop is also counted apart: the
    client may have been what was late."""
    gap_frames = orphan_frames = 0
    replies: list[dict[str, Any]] = []
    reply: dict[str, Any] | None = None
    tick: int | None = None
    eot_server: list[float] = []
    speech_end_t: float | None = None
    counts = {"clear": 0, "interrupted": 0, "error": 0, "transcript": 0}
    errors: list[str] = []
    transcripts: list[str] = []
    end_reason = None
    for arrival, event in rec.messages:
        if event is None:
            if reply is None or tick is None:
                orphan_frames += 1
                continue
            reply["frames"].append((tick, arrival))
            tick += 1
            continue
        kind = event.get("type")
        if kind in counts:
            counts[kind] += 1
        if kind == "error":
            errors.append(str(event.get("message", ""))[:200])
        elif kind == "transcript":
            transcripts.append(event.get("text", ""))
        elif kind == "call_ended":
            end_reason = event.get("reason")
        elif kind == "speech_end":
            speech_end_t = event["t"]
        elif kind == "bot_text" and reply is not None:
            new_tick = round(event["t"] / FRAME_S)
            if tick is not None and reply["frames"]:
                gap_frames += max(0, new_tick - tick)
            tick = new_tick
            reply["texts"].append(event.get("text", ""))
        elif kind == "state":
            state = event["state"]
            reply, tick = None, None
            if state == "SPEAKING":
                reply = {"frames": [], "texts": [], "first_frame": None}
                replies.append(reply)
                if speech_end_t is not None:
                    eot_server.append(event["t"] - speech_end_t)
                    speech_end_t = None
            elif state == "LISTENING":
                speech_end_t = None
    lateness: list[float] = []
    jitter: list[float] = []
    late_in_stall = 0
    for r in replies:
        if not r["frames"]:
            continue
        pairs = np.asarray(r["frames"], dtype=np.float64)
        ticks, arrivals = pairs[:, 0], pairs[:, 1]
        ideal = arrivals[0] + (ticks - ticks[0]) * FRAME_S
        late = arrivals - ideal
        lateness += late.tolist()
        offsets = arrivals - ticks * FRAME_S
        jitter += (offsets - offsets.min()).tolist()
        late_in_stall += int(driver.in_stalls(stalls, ideal[late > LATE_S] + LATE_S).sum())
        r["first_frame"] = float(arrivals[0])
    starts = [r["first_frame"] for r in replies if r["first_frame"] is not None]
    eot_client = []
    for sent in rec.speech_end_sent:
        after = [s for s in starts if s > sent]
        if after:
            eot_client.append(after[0] - sent)
    lags = np.asarray(rec.send_lags or [0.0])
    return {
        "index": spec.index,
        "lateness": lateness,
        "jitter": jitter,
        "frames": len(lateness),
        "late_in_client_stall": late_in_stall,
        "gap_frames": gap_frames,
        "orphan_frames": orphan_frames,
        "replies": len(replies),
        "turns_said": len(rec.speech_end_sent),
        "expected_replies": sum(
            1 for r in replies if r["texts"] and r["texts"][0].startswith(EXPECTED_REPLIES)
        ),
        "eot_client": eot_client,
        "eot_server": eot_server,
        "transcripts": transcripts,
        "errors": errors,
        "counts": counts,
        "end_reason": end_reason,
        "close_code": rec.close_code,
        "close_reason": rec.close_reason,
        "connect_error": rec.connect_error,
        "duration": rec.ended - rec.started,
        "started": rec.started,
        "ended": rec.ended,
        "send_lag_p99": float(np.percentile(lags, 99)),
        "send_lag_max": float(lags.max()),
        "send_lags_over_20ms": int((lags > LATE_S).sum()),
        "sends": len(rec.send_lags),
    }


async def ws_calls(
    bank: list[list[bytes]],
    batch: tuple[str, list[CallSpec]],
    clock0: float,
    stalls: list[tuple[float, float]],
) -> list[dict[str, Any]]:
    """A caller process's share of a run (`CallerPool`): its calls, analysed."""
    url, specs = batch
    records = await asyncio.gather(*(run_call(url, s, bank, clock0) for s in specs))
    return [analyse_call(r, s, stalls) for r, s in zip(records, specs, strict=True)]


# --------------------------------------------------------------------------- server side


def scrape_metrics(http: str) -> dict[str, Any]:
    """The gateway's Prometheus figures this benchmark reports."""
    m = common.Metrics.scrape(http)
    return {
        "vad_batch_size": m.hist("voicebot_vad_batch_size"),
        "vad_window_seconds": m.hist("voicebot_vad_window_seconds"),
        "end_of_turn_latency_seconds": m.hist("voicebot_end_of_turn_latency_seconds"),
        "calls_total": m.by("voicebot_calls_total", "reason"),
        "rejected_total": m.total("voicebot_calls_rejected_total"),
        "engine_errors": m.by("voicebot_engine_errors_total", "engine"),
    }


# --------------------------------------------------------------------------- one run


def caller_bank(log: Log) -> list[list[bytes]]:
    """Per caller voice: the sentences as lists of 20 ms frames (the last one zero-padded)."""
    from tests.audiogen import trimmed_speech

    bank = []
    for voice in CALLER_VOICES:
        sentences = []
        for text in SENTENCES:
            pcm = trimmed_speech(text, voice)
            raw = np.concatenate([pcm, np.zeros(-len(pcm) % FRAME, np.int16)]).astype("<i2")
            data = raw.tobytes()
            sentences.append([data[i : i + 2 * FRAME] for i in range(0, len(data), 2 * FRAME)])
        bank.append(sentences)
    secs = [len(s) * FRAME_S for v in bank for s in v]
    log(f"caller audio: {len(bank)} voices x {len(SENTENCES)} sentences, "
        f"{min(secs):.1f}-{max(secs):.1f} s each")  # fmt: skip
    return bank


def make_specs(n: int, cfg: Config) -> list[CallSpec]:
    rng = np.random.default_rng([SEED, n])
    connect = np.sort(rng.uniform(0, cfg.connect_spread_s, n)) if n > 1 else np.zeros(1)
    turns = cfg.turns_for(n)
    return [
        CallSpec(
            index=i,
            connect_at=float(connect[i]),
            lead=float(rng.uniform(*cfg.lead_s)),
            voice=i % len(CALLER_VOICES),
            pauses=tuple(float(x) for x in rng.uniform(*cfg.pause_s, turns)),
            reply_timeout_s=cfg.reply_timeout_s,
        )
        for i in range(n)
    ]


def run_load(
    n: int, cfg: Config, sweep: Sweep, bank: list[list[bytes]], log: Log
) -> dict[str, Any]:
    """Start a gateway, run N calls against it, and return every figure of the run."""
    server_cpus = {1} if sweep.pinned else None
    client_cpus = {0} if sweep.pinned else None
    # OPENBLAS_NUM_THREADS=1 unpinned: works around the fork deadlock (module docstring).
    env = driver.server_env(sweep.engines, not sweep.pinned and sweep.engines.tts == "espeak")
    load_start = common.loadavg()
    specs = make_specs(n, cfg)
    workers = max(1, math.ceil(n / CALLS_PER_WORKER))
    t_run = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, driver.serve(Path(tmp), env, server_cpus) as gw:
        startup_s = time.perf_counter() - t_run
        with driver.CallerPool(ws_calls, bank, client_cpus) as pool:
            pool.ensure(workers, timeout_s=60)
            cpu0, (busy0, total0) = sum(common.proc_cpu(gw.proc.pid)), common.system_cpu()
            clock0 = time.monotonic() + 0.3
            max_wait = len(specs[0].pauses) * (cfg.reply_timeout_s + 20) + 120
            batches = [(gw.ws, specs[w::workers]) for w in range(workers)]
            worker_results = pool.run(batches, clock0, max_wait)
            wall = time.monotonic() - clock0
            cpu1, (busy1, total1) = sum(common.proc_cpu(gw.proc.pid)), common.system_cpu()
        metrics = scrape_metrics(gw.http)
        peak_rss = common.proc_peak_rss_mb(gw.proc.pid)
        log_text = gw.log()
    calls = sorted((c for w in worker_results for c in w["calls"]), key=lambda c: c["index"])
    lateness = np.asarray([x for c in calls for x in c["lateness"]], dtype=np.float64)
    jitter = np.asarray([x for c in calls for x in c["jitter"]], dtype=np.float64)
    frames = int(lateness.size)
    server_cpu = cpu1 - cpu0
    client_cpu = sum(w["cpu_s"] for w in worker_results)
    problems = driver.log_problems(log_text)
    end_reasons: dict[str, int] = {}
    close_codes: dict[str, int] = {}
    for c in calls:
        end_reasons[str(c["end_reason"])] = end_reasons.get(str(c["end_reason"]), 0) + 1
        close_codes[str(c["close_code"])] = close_codes.get(str(c["close_code"]), 0) + 1

    def share(threshold: float) -> float | None:
        return 100 * float((lateness > threshold).mean()) if frames else None

    def ms(q: float) -> float | None:
        return 1000 * float(np.percentile(lateness, q)) if frames else None

    res = {
        "n": n,
        "sweep": sweep.name,
        "engines": sweep.engines.label,
        "pinned": sweep.pinned,
        "layout": sweep.layout,
        "server_env": env,
        "turns_per_call": len(specs[0].pauses),
        "workers": workers,
        "loadavg_at_start": load_start,
        "server_startup_s": startup_s,
        "wall_s": wall,
        "run_s": time.perf_counter() - t_run,
        "mean_call_s": float(np.mean([c["duration"] for c in calls])),
        "calls_completed": sum(1 for c in calls if c["connect_error"] is None),
        "connect_errors": [c["connect_error"] for c in calls if c["connect_error"]],
        "end_reasons": end_reasons,
        "close_codes": close_codes,
        "turns_said": sum(c["turns_said"] for c in calls),
        "replies": sum(c["replies"] for c in calls),
        "expected_replies": sum(c["expected_replies"] for c in calls),
        "frames": frames,
        "late_frames": int((lateness > LATE_S).sum()),
        "late_in_client_stall": sum(c["late_in_client_stall"] for c in calls),
        "client_stalls": driver.stall_summary(worker_results),
        "late_pct": share(LATE_S),
        "late_buffer_frames": int((lateness > LATE_BUFFER_S).sum()),
        "late_buffer_pct": share(LATE_BUFFER_S),
        "lateness_ms": {"p50": ms(50), "p99": ms(99), "p99.9": ms(99.9), "max": ms(100)},
        "jitter_ms": {
            "p50": 1000 * float(np.percentile(jitter, 50)) if frames else None,
            "p99": 1000 * float(np.percentile(jitter, 99)) if frames else None,
            "max": 1000 * float(jitter.max()) if frames else None,
            "over_20ms_pct": 100 * float((jitter > LATE_S).mean()) if frames else None,
        },
        "calls_with_late_frames": sum(1 for c in calls if any(x > LATE_S for x in c["lateness"])),
        "gap_frames": sum(c["gap_frames"] for c in calls),
        "orphan_frames": sum(c["orphan_frames"] for c in calls),
        "clears": sum(c["counts"]["clear"] for c in calls),
        "interruptions": sum(c["counts"]["interrupted"] for c in calls),
        "error_events": [e for c in calls for e in c["errors"]],
        "eot_client_s": common.dist([x for c in calls for x in c["eot_client"]]),
        "eot_server_s": common.dist([x for c in calls for x in c["eot_server"]]),
        "server_cpu_s": server_cpu,
        "server_cpu_pct": 100 * server_cpu / wall,
        "server_cpu_pct_per_call": 100 * server_cpu / wall / n,
        "server_peak_rss_mb": peak_rss,
        "client_cpu_s": client_cpu,
        "client_cpu_pct": 100 * client_cpu / wall,
        "client_cpu_pct_per_call": 100 * client_cpu / wall / n,
        "client_send_lag_ms": {
            "p99_worst_call": 1000 * max(c["send_lag_p99"] for c in calls),
            "max": 1000 * max(c["send_lag_max"] for c in calls),
            "over_20ms_pct": 100 * sum(c["send_lags_over_20ms"] for c in calls)
            / max(1, sum(c["sends"] for c in calls)),
        },
        "machine_busy_pct": 100 * (busy1 - busy0) / max(1, total1 - total0),
        "others_cpu_pct": 100 * max(0.0, (busy1 - busy0) / common.CLK_TCK - server_cpu - client_cpu)
        / wall,
        "server_metrics": metrics,
        "server_log_problems": problems[:20],
        "server_log_problem_count": len(problems),
        "transcripts_sample": [t for c in calls[:4] for t in c["transcripts"]],
        "per_call": [
            {k: v for k, v in c.items() if k not in ("lateness", "jitter", "transcripts")}
            | {"late": sum(1 for x in c["lateness"] if x > LATE_S)}
            for c in calls
        ],
    }  # fmt: skip
    res["verdict"] = verdict(res, cfg)
    log(
        f"N={n:<4} {sweep.engines.label}, {sweep.layout}: late {fmt(res['late_pct'], 2)} % of "
        f"{frames} frames (> 60 ms {fmt(res['late_buffer_pct'], 2)} %), p99 "
        f"{fmt(res['lateness_ms']['p99'])} ms; end of turn p50 "
        f"{fmt(res['eot_client_s']['p50'], 2)} s; server CPU {res['server_cpu_pct']:.0f} % "
        f"({res['server_cpu_pct_per_call']:.2f} %/call); clients {res['client_cpu_pct']:.0f} "
        f"%; {res['run_s']:.0f} s: {res['verdict']}"
    )
    return res


# --------------------------------------------------------------------------- the sweep


def verdict(res: dict[str, Any], cfg: Config) -> str:
    """'ok', or every reason this N is over the limit."""
    if res["calls_completed"] < res["n"]:
        return "calls failed"
    if not res["frames"]:
        return "no bot audio"
    reasons = []
    if res["late_pct"] >= 1.0:
        reasons.append("late >= 1 %")
    if res["late_buffer_pct"] >= 1.0:
        reasons.append("> 60 ms late >= 1 %")
    p50 = res["eot_client_s"]["p50"]
    if p50 is None or p50 > cfg.max_eot_p50_s:
        reasons.append("STT saturated")
    return ", ".join(reasons) or "ok"


def clearly_over(res: dict[str, Any]) -> bool:
    """Past the point where a larger N can tell anything new."""
    v = res["verdict"]
    return (
        v in ("calls failed", "no bot audio")
        or "60 ms" in v
        or "STT" in v
        or (res["late_pct"] is not None and res["late_pct"] >= 5.0)
    )


def sweep_runs(
    sweep: Sweep,
    cfg: Config,
    ns: Sequence[int],
    bank: list[list[bytes]],
    budget: driver.Budget,
    log: Log,
) -> list[dict[str, Any]]:
    """The runs of one sweep by N, then the discarded ones (`discarded: True`)."""
    discarded: list[dict[str, Any]] = []

    def gate() -> dict[str, float]:
        waited = common.idle_gate(cfg.idle_wait_s, log, IDLE_MAX_BUSY_PCT, 3.0, 10.0)
        budget.waited += waited["waited_s"]
        return waited

    def run(n: int) -> dict[str, Any]:
        """One run, after waiting for the machine to be quiet; a failed run during which
        other processes used over OTHERS_MAX_PCT of a core is run once more."""
        return driver.retried(
            lambda: run_load(n, cfg, sweep, bank, log), gate,
            lambda r: r["others_cpu_pct"] > OTHERS_MAX_PCT and cfg.retry_when_busy,
            discarded, log,
        )  # fmt: skip

    def time_left() -> bool:
        return budget.left(sweep.until_s, sweep.name, log)

    rows = driver.run_sweep(
        run, ns, time_left=time_left, stop=lambda rows: sweep.stop_early and clearly_over(rows[-1]),
        bisect_steps=sweep.bisect_steps, next_n=lambda rows: driver.halfway(rows, time_left),
    )  # fmt: skip
    for r in discarded:
        r["discarded"] = True
    return rows + discarded


# --------------------------------------------------------------------------- report


def timing_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        lat, jit = r["lateness_ms"], r["jitter_ms"]
        late = fmt(r["late_pct"], 2)
        body.append([
            r["n"], r["engines"], r["layout"], f"{r['calls_completed']}/{r['n']}",
            r["turns_per_call"], r["frames"], f"**{late}**" if r["verdict"] == "ok" else late,
            fmt(r["late_buffer_pct"], 2), r["late_in_client_stall"], r["calls_with_late_frames"],
            fmt(lat["p50"]), fmt(lat["p99"]), fmt(lat["max"], 0), fmt(jit["p99"]),
            fmt(jit["over_20ms_pct"], 2), r["gap_frames"], r["verdict"],
        ])  # fmt: skip
    return md_table(
        ["N", "engines", "CPUs", "calls ok", "turns / call", "bot frames", "late (> 20 ms) %",
         "> 60 ms %", "late frames due in a client stall", "calls with a late frame",
         "lateness p50 ms", "p99 ms", "max ms", "jitter p99 ms", "jitter > 20 ms %",
         "mid-reply gap frames", "verdict"],
        body,
    )  # fmt: skip


def turn_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        hist = r["server_metrics"]["end_of_turn_latency_seconds"]
        c, s = r["eot_client_s"], r["eot_server_s"]
        body.append([
            r["n"], r["engines"], r["layout"], r["turns_said"],
            f"{r['expected_replies']}/{r['turns_said']}", fmt(c["p50"], 2), fmt(c["p95"], 2),
            fmt(c["max"], 2), fmt(s["p50"], 2), fmt(s["p95"], 2),
            fmt(hist["mean"], 2), fmt(hist["p95_bucket"], 2),
        ])  # fmt: skip
    return md_table(
        ["N", "engines", "CPUs", "turns", "scripted reply", "client p50 s", "p95 s", "max s",
         "server p50 s", "p95 s", "gateway histogram mean s", "p95 bucket <= s"],
        body,
    )  # fmt: skip


def cost_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        m = r["server_metrics"]
        vad_us = m["vad_window_seconds"]["mean"]
        body.append([
            r["n"], r["engines"], r["layout"], fmt(r["mean_call_s"]), fmt(r["server_cpu_pct"], 0),
            fmt(r["server_cpu_pct_per_call"], 2), fmt(r["server_peak_rss_mb"], 0),
            fmt(r["client_cpu_pct"], 0), fmt(r["client_cpu_pct_per_call"], 2), r["workers"],
            fmt(r["client_send_lag_ms"]["p99_worst_call"]), fmt(r["client_send_lag_ms"]["max"], 0),
            f"{r['client_stalls']['count']} / {r['client_stalls']['max_ms']:.0f}",
            fmt(r["machine_busy_pct"], 0), fmt(r["others_cpu_pct"], 0),
            fmt(m["vad_batch_size"]["mean"]),
            fmt(None if vad_us is None else 1e6 * vad_us, 0),
            " / ".join(f"{x:.2f}" for x in r["loadavg_at_start"]),
        ])  # fmt: skip
    return md_table(
        ["N", "engines", "CPUs", "mean call s", "server CPU % of a core", "per call %",
         "server peak RSS MB", "client CPU %", "per call %", "client procs",
         "client send lag p99 ms (worst call)", "max ms", "client loop stalls > 5 ms: n / max ms",
         "machine busy % (of 2 CPUs)", "other processes' CPU % of a core",
         "VAD batch mean", "VAD µs / window", "load avg at start"],
        body,
    )  # fmt: skip


def render(res: dict[str, Any]) -> str:
    """The Markdown section, from the figures alone (so `--render` can redo it from JSON)."""
    m, c, quick = res["machine"], res["config"], res["quick"]
    runs = res["runs"]
    out = [
        SECTION,
        "",
        f"Run {m['date_utc']} by `bench/ws_load.py{' --quick' if quick else ''}` in "
        f"{res['total_seconds'] / 60:.1f} min ({res['waited_for_quiet_seconds'] / 60:.1f} min of "
        "it waiting for other work on the machine to pause). "
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, "
        f"shared with other work: load average at start "
        f"{' / '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in res['loadavg_at_end'])}. Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ".",
        "",
        "Setup: a real `voicebot serve` process per run (scripted LLM, no greeting, no `vad` "
        "events) and N WebSocket callers in separate processes (asyncio + uvloop, "
        f"{CALLS_PER_WORKER} calls per process), each streaming 16 kHz PCM in real time in 20 "
        f"ms frames. Calls connect spread over {c['connect_spread_s']:g} s; each caller is "
        f"silent {c['lead_s'][0]:g}-{c['lead_s'][1]:g} s, then says a sentence (espeak-ng, "
        f'{len(CALLER_VOICES)} voices; "{SENTENCES[0]}"'
        + (f', then "{SENTENCES[1]}", alternating' if c["max_turns"] > 1 else "")
        + "), listens to the whole reply (about 6 s of bot speech), pauses "
        f"{c['pause_s'][0]:g}-{c['pause_s'][1]:g} s and goes on; 'turns / call' is more at small "
        "N so that every N has enough bot frames. CPUs: 'server CPU 1, callers CPU 0' = both "
        "pinned (the server has a core to itself); 'shared' = no pinning (server and callers "
        "compete for both CPUs; the server then runs with `OPENBLAS_NUM_THREADS=1`, see the "
        "notes). Seeds fixed. The machine is shared: before each run the benchmark waits (up "
        f"to {IDLE_MAX_WAIT_S:.0f} s) until all CPUs together are < {IDLE_MAX_BUSY_PCT:.0f} % "
        "busy, and a failed run during which other processes used more than "
        f"{OTHERS_MAX_PCT:.0f} % of a core is run once more (the 'other processes' column).",
        "",
        "**Late frame**: every bot frame is placed on the server's 20 ms output grid (frame j of "
        "a sentence belongs to tick `bot_text.t` / 20 ms + j); its ideal arrival is the arrival "
        "of its reply's first frame + (tick difference) x 20 ms. A frame arriving more than "
        "20 ms (one frame) after its ideal time is late; > 60 ms = later than the 3-frame client "
        "buffer the server assumes. Lateness p50/p99/max are over all bot frames (negative: the "
        "reply's first frame was itself late). Jitter: the same against the grid anchored at "
        "the reply's earliest frame (smallest arrival - tick x 20 ms), so a late first frame "
        "cannot hide the lateness of the rest; jitter p99 = the playout buffer a client needs "
        "for 99 % of frames. Ticks inside a reply where the server had no "
        "audio yet (TTS still busy with the next sentence) are not lateness: they are the "
        "mid-reply gap frames. End of turn (client) = last frame of the caller's sentence sent "
        "-> first bot frame received (includes the VAD's 500 ms of silence); (server) = "
        "`speech_end` -> `SPEAKING` in call-audio time. CPU: server from /proc/PID/stat (all "
        "threads + reaped espeak-ng children), callers from getrusage, over the calls' wall "
        "time, in % of one core. Client send lag = how late the callers' own 20 ms sends were "
        "(large = the client side is short of CPU); client loop stalls: a 5 ms timer in every "
        "caller process waking more than 5 ms late; a late frame whose deadline fell in such a "
        "stall is counted apart (the client, not the server, may have been late). Verdict "
        "'ok' = < 1 % late frames and "
        f"end-of-turn median < {c['max_eot_p50_s']:g} s.",
        "",
        "### Bot audio timing",
        "",
        timing_table(runs),
        "",
        "### End of turn",
        "",
        "Client: caller's last speech frame sent -> first bot frame received; server: "
        "`speech_end` -> `SPEAKING` (call-audio time); the gateway's own "
        "`voicebot_end_of_turn_latency_seconds` histogram from `GET /metrics` alongside. "
        "'scripted reply' = turns answered with the intended script line (else STT misheard).",
        "",
        turn_table(runs),
        "",
        "### Cost",
        "",
        cost_table(runs),
        "",
        "### Capacity",
        "",
    ]
    for cap in res["capacity"]:
        over = cap["first_over"]
        rows = [r for r in runs if r["sweep"] == cap["sweep"]]
        buffered, all_passed = None, True
        for r in rows:
            if r["late_buffer_pct"] is None or r["late_buffer_pct"] >= 1.0 or "STT" in r["verdict"]:
                all_passed = False
                break
            buffered = r["n"]
        out.append(
            f"- {cap['engines']}, {cap['layout']}: **{cap['max_n'] if cap['max_n'] else 'none'}"
            "** calls with < 1 % late frames"
            + (f" (N = {over['n']}: {over['verdict']})" if over else " (no N tried was over)")
            + "; with a 3-frame client buffer (< 1 % of frames > 60 ms late, end of turn "
            f"median < {c['max_eot_p50_s']:g} s): "
            + (f"{'at least ' if all_passed else ''}{buffered}" if buffered else "none")
            + (" (the largest N tried)" if all_passed and buffered else "")
            + "."
        )
    out.append(
        f"- Total run time {res['total_seconds'] / 60:.1f} min, of which "
        f"{res['waited_for_quiet_seconds'] / 60:.1f} min waiting for a quiet machine."
    )
    notes = notes_for(res)
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def espeak_vs_piper(runs: Sequence[dict[str, Any]]) -> str | None:
    """If Piper had (far) fewer late frames than espeak-ng at the same N and CPU layout, say so:
    then the late frames come from the espeak-ng path, not from the WebSocket transport."""
    light = {(r["n"], r["pinned"]): r for r in runs if r["engines"] == LIGHT.label}
    pairs = [
        (light[(r["n"], r["pinned"])], r)
        for r in runs
        if r["engines"] == HEAVY.label and (r["n"], r["pinned"]) in light
    ]
    pairs = [(a, b) for a, b in pairs if a["late_pct"] >= 1.0 and b["late_pct"] < a["late_pct"] / 4]
    if not pairs:
        return None
    a, b = max(pairs, key=lambda p: p[0]["n"])
    return (
        f"At N = {a['n']} ({a['layout']}) {fmt(a['late_pct'], 2)} % of frames were late with "
        f"{a['engines']} but {fmt(b['late_pct'], 2)} % with {b['engines']}, although that server "
        f"used {b['server_cpu_pct'] / max(1e-9, a['server_cpu_pct']):.1f}x the CPU: the late "
        "frames come from the espeak-ng path, not from the WebSocket transport. Diagnosed in "
        "development with an instrumented server (N = 15, pinned): every event-loop stall over "
        "20 ms coincided with an espeak-ng spawn (the event loop blocks in `uv_spawn` until the "
        "child has exec'd, which takes tens of ms when a Whisper decode is running on the same "
        "core), and frames were already late when they left the server (server -> client "
        "transit p99 1.7 ms)."
    )


def notes_for(res: dict[str, Any]) -> list[str]:
    notes = []
    diagnosis = espeak_vs_piper(res["runs"])
    if diagnosis:
        notes.append(diagnosis)
    if any(not r["pinned"] and "OPENBLAS_NUM_THREADS" in r["server_env"] for r in res["runs"]):
        notes.append(
            "Unpinned runs with espeak-ng set `OPENBLAS_NUM_THREADS=1` for the server: without "
            "it, uvloop's fork() for each espeak-ng sentence can deadlock numpy's OpenBLAS thread "
            "pool while the Whisper feature extractor is in a matmul on an engine thread; that "
            "thread then spins forever holding the Whisper lock, and every later turn ends in "
            "'STT timed out after 10 s' (a gateway bug, seen in development runs)."
        )
    for r in res.get("discarded_runs", []):
        notes.append(f"N={r['n']} ({r['engines']}, {r['layout']}): a first run was discarded "
                     f"({fmt(r['late_pct'], 2)} % late; other processes used "
                     f"{r['others_cpu_pct']:.0f} % of a core meanwhile)")  # fmt: skip
    for r in res["runs"]:
        label = f"N={r['n']} ({r['engines']}, {r['layout']})"
        if r["connect_errors"]:
            notes.append(f"{label}: {len(r['connect_errors'])} calls failed: "
                         f"{r['connect_errors'][0]}")  # fmt: skip
        if r["error_events"]:
            notes.append(f"{label}: {len(r['error_events'])} error events, e.g. "
                         f"`{r['error_events'][0]}`")  # fmt: skip
        if r["interruptions"] or r["clears"]:
            notes.append(f"{label}: {r['interruptions']} barge-ins, {r['clears']} clears (a "
                         "caller gave up waiting for a reply and spoke)")  # fmt: skip
        if r["orphan_frames"]:
            notes.append(f"{label}: {r['orphan_frames']} bot frames outside any reply")
        if r["server_log_problem_count"]:
            notes.append(f"{label}: {r['server_log_problem_count']} warning/error lines in the "
                         f"server log, e.g. `{r['server_log_problems'][0][-160:]}`")  # fmt: skip
        other = {k: v for k, v in r["end_reasons"].items() if k != "caller_hangup"}
        if other:
            notes.append(f"{label}: calls ended by {other}")
        if r["expected_replies"] < r["turns_said"]:
            notes.append(f"{label}: {r['turns_said'] - r['expected_replies']} of "
                         f"{r['turns_said']} turns got another reply than the scripted one "
                         "(STT misheard, or no reply)")  # fmt: skip
    return notes


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = driver.load_parser(__doc__, SECTION)
    parser.add_argument("--ns", help="comma-separated N for the first sweep only (no bisection)")
    parser.add_argument("--no-pin", action="store_true", help="first sweep without pinning")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(args.render, render, args.results)
    cfg = QUICK if args.quick else FULL
    if args.ns or args.no_pin:
        first = cfg.sweeps[0]
        if args.ns:
            ns = tuple(int(x) for x in args.ns.split(","))
            first = dataclasses.replace(first, ns=ns, bisect_steps=0, until_s=1e9)
        if args.no_pin:
            first = dataclasses.replace(first, name="shared", pinned=False)
        cfg = dataclasses.replace(cfg, sweeps=(first,))
    # SIGTERM ends the benchmark like Ctrl-C: the gateway and caller processes are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if {0, 1} - os.sched_getaffinity(0):
        raise SystemExit("needs CPUs 0 and 1")
    log = common.StderrLog()
    if args.wait_load is not None:
        common.wait_for_load(args.wait_load, 20 * 60, log)
        log.restart()
    res: dict[str, Any] = {
        "config": asdict(cfg),
        "quick": args.quick,
        "machine": common.machine_info(PACKAGES, loadavg_at_start=common.loadavg()),
        "definitions": {"late_s": LATE_S, "late_buffer_s": LATE_BUFFER_S, "seed": SEED},
    }
    bank = caller_bank(log)
    budget = driver.Budget(started=log.started)
    runs: list[dict[str, Any]] = []
    res["capacity"] = []
    for sweep in cfg.sweeps:
        all_rows = sweep_runs(sweep, cfg, sweep.ns, bank, budget, log)
        rows = [r for r in all_rows if not r.get("discarded")]
        runs += rows
        res.setdefault("discarded_runs", []).extend(r for r in all_rows if r.get("discarded"))
        first_over = next((r for r in rows if r["verdict"] != "ok"), None)
        res["capacity"].append({
            "sweep": sweep.name, "engines": sweep.engines.label, "layout": sweep.layout,
            "max_n": driver.capacity(rows), "tried": [r["n"] for r in rows],
            "first_over": {"n": first_over["n"], "verdict": first_over["verdict"]}
            if first_over else None,
        })  # fmt: skip
    res["runs"] = runs
    res["waited_for_quiet_seconds"] = budget.waited
    return common.finish(res, render, args, log)


if __name__ == "__main__":
    raise SystemExit(main())
