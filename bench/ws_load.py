"""Gateway concurrency benchmark: N simultaneous WebSocket calls against a real `voicebot serve`.

Each simulated caller connects to `/ws` (calls start staggered over a couple of seconds),
streams 16 kHz PCM in real time (one 20 ms frame per 20 ms, silence between its sentences,
as a phone leg does), says "What is the balance on my account?", listens to the whole reply
(scripted LLM, about 6 s of bot speech), says a second sentence, listens again and hangs up.
The caller is reactive: it speaks again only once the bot has finished (plus a short pause).
Caller speech is espeak-ng (`tests/audiogen.py`), made once; all randomness is seeded.

The server is a real `python -m voicebot serve` process (`tests/gateway_server.py`) with the
scripted LLM and, for the capacity figure, Whisper tiny.en + espeak-ng. The callers run in
separate processes (asyncio + uvloop, up to `CALLS_PER_WORKER` calls each), so the client
never shares an event loop with the server. By default the server is pinned to CPU 1 and the
callers to CPU 0 (affinity is inherited from this process at start), so the server's cost is
measured on one core it has to itself and the client's load is visible apart from it.

Late frames, measured on the client. Every bot audio frame is placed on the server's 20 ms
output grid: the server emits `bot_text` (with `t`, seconds of call audio = input ticks) just
before the first frame of each sentence and then sends one frame per input tick, so frame j
of a sentence belongs to tick round(t / 0.02) + j. A reply is the run from the `SPEAKING`
state event to the next state event. The ideal arrival of a frame is the arrival of the
reply's first frame + (its tick - the first frame's tick) x 20 ms; its lateness is the
actual arrival minus that. A frame more than 20 ms late (one frame period: a client that
starts playout one frame after the first arrives would underrun) is late; > 60 ms (the
3-frame client buffer the server assumes, `server.ws_client_buffer_frames`) is reported too.
Ticks where the server had no audio ready inside a reply (TTS not done with the next
sentence) are not lateness; they are counted apart as mid-reply gaps.

Also per N: end-of-turn latency (client: last speech frame sent -> first bot frame received;
server: `speech_end` -> `SPEAKING` in call-audio time, the figure behind the gateway's
`voicebot_end_of_turn_latency_seconds`), server CPU from /proc/PID/stat (utime + stime, and
cutime + cstime of its reaped espeak-ng children) per call, client CPU (getrusage in every
worker), client send lag (how late the caller's own 20 ms sends were: if this is large, the
client, not the server, is the bottleneck), whole-machine CPU busy from /proc/stat, and
the server's own Prometheus figures (`GET /metrics`: VAD batch size, VAD cost per window,
end-of-turn latency histogram, errors).

The sweep raises N until late frames reach 1 % (or end-of-turn latency explodes because STT,
one Whisper decode at a time per process, is saturated), then bisects once or twice between
the last good and the first bad N. Then: the best N again without pinning (server and
callers share both cores), and a few N with Whisper base + Piper (the default engines).

    .venv/bin/python bench/ws_load.py --json /tmp/ws_load.json --results bench/RESULTS.md
    .venv/bin/python bench/ws_load.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SR = 16_000
FRAME = 320  # samples per 20 ms
FRAME_S = 0.02
SILENCE = bytes(2 * FRAME)
LATE_S = 0.020  # one frame period
LATE_BUFFER_S = 0.060  # the 3-frame client buffer the server assumes
CALLS_PER_WORKER = 20
SENTENCES = (
    "What is the balance on my account?",
    "Please cancel my subscription at the end of this month.",
)
EXPECTED_REPLY = ("Your account balance", "I can cancel that")
CALLER_VOICES = ("en-us", "en-gb", "en-us+m4", "en-gb-x-rp+f2")
SEED = 20261125
CLK_TCK = os.sysconf("SC_CLK_TCK")

Log = Callable[[str], None]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Engines:
    label: str
    stt_model: str
    tts: str

    def env(self) -> dict[str, str]:
        return {"VOICEBOT_ENGINES__STT_MODEL": self.stt_model, "VOICEBOT_ENGINES__TTS": self.tts}


LIGHT = Engines("tiny.en + espeak-ng", "tiny.en", "espeak")
DEFAULT = Engines("base + Piper", "base", "piper")


@dataclass(frozen=True)
class Config:
    sweep: tuple[int, ...]  # N tried in order until the limit is found
    turns: int  # caller sentences per call
    connect_spread_s: float  # calls connect uniformly over this window
    lead_s: tuple[float, float]  # silence before the first sentence, uniform range
    pause_s: tuple[float, float]  # caller's pause after a reply before speaking again
    reply_timeout_s: float  # a caller waits this long for a reply before going on
    bisect_steps: int  # extra N between the last good and first bad
    unpinned_check: bool  # best N again with server and callers on both cores
    heavy_sweep: tuple[int, ...]  # N with Whisper base + Piper (stops at the first failure)
    budget_s: float  # no new run starts after this much time
    max_eot_p50_s: float  # end-of-turn median beyond this: STT saturated, stop the sweep


FULL = Config(
    sweep=(1, 5, 10, 20, 30, 40, 50, 60, 80, 100, 130, 160, 200),
    turns=2,
    connect_spread_s=2.0,
    lead_s=(0.2, 3.0),
    pause_s=(0.4, 1.2),
    reply_timeout_s=20.0,
    bisect_steps=2,
    unpinned_check=True,
    heavy_sweep=(1, 5, 10, 20),
    budget_s=11 * 60,
    max_eot_p50_s=4.0,
)
QUICK = Config(
    sweep=(1, 4),
    turns=1,
    connect_spread_s=0.5,
    lead_s=(0.2, 0.8),
    pause_s=(0.4, 0.6),
    reply_timeout_s=12.0,
    bisect_steps=0,
    unpinned_check=False,
    heavy_sweep=(),
    budget_s=50,
    max_eot_p50_s=4.0,
)


@dataclass(frozen=True)
class CallSpec:
    index: int
    connect_at: float  # s after the common start
    lead: float  # s of silence before the first sentence
    voice: int  # index into the audio bank
    pauses: tuple[float, ...]  # after each reply


# --------------------------------------------------------------------------- client side


@dataclass
class CallRecord:
    """What one caller saw, in order: (arrival s since the common start, event or None=audio)."""

    messages: list[tuple[float, dict[str, Any] | None]] = field(default_factory=list)
    speech_end_sent: list[float] = field(default_factory=list)  # last frame of each sentence
    send_lags: list[float] = field(default_factory=list)  # s late per send (sampled all)
    connect_error: str | None = None
    close_code: int | None = None
    close_reason: str = ""
    started: float = 0.0
    ended: float = 0.0


async def _sleep_until(clock0: float, t: float) -> None:
    delay = clock0 + t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_call(
    url: str, spec: CallSpec, bank: list[list[bytes]], clock0: float, cfg: Config
) -> CallRecord:
    """One reactive caller; times are seconds since `clock0` (a shared monotonic instant)."""
    import websockets

    rec = CallRecord()
    await _sleep_until(clock0, spec.connect_at)
    rec.started = time.monotonic() - clock0
    pending: deque[bytes] = deque()
    said = asyncio.Event()
    replies_done = 0
    reply_changed = asyncio.Event()
    try:
        ws = await websockets.connect(url, max_size=None, open_timeout=30, ping_interval=None)
    except Exception as exc:
        rec.connect_error = f"{type(exc).__name__}: {exc}"
        rec.ended = time.monotonic() - clock0
        return rec

    async def receive() -> None:
        nonlocal replies_done
        speaking = False
        try:
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
                        reply_changed.set()
        except websockets.ConnectionClosed:
            pass
        reply_changed.set()

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
            if pending:
                frame = pending.popleft()
                if not pending:
                    rec.speech_end_sent.append(time.monotonic() - clock0)
                    said.set()
            else:
                frame = SILENCE
            await ws.send(frame)

    receiver = asyncio.create_task(receive())
    await ws.send(json.dumps({"type": "start", "sample_rate": SR}))
    sender = asyncio.create_task(send())
    try:
        await asyncio.sleep(spec.lead)
        sentences = bank[spec.voice]
        for turn in range(cfg.turns):
            if receiver.done():
                break
            said.clear()
            pending.extend(sentences[turn % len(sentences)])
            await said.wait()
            deadline = time.monotonic() + cfg.reply_timeout_s
            while replies_done <= turn and not receiver.done():
                reply_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reply_changed.wait(), deadline - time.monotonic())
                if time.monotonic() >= deadline:
                    break
            await asyncio.sleep(spec.pauses[turn])
    except Exception as exc:  # the connection broke under us: record it, end the call
        rec.connect_error = f"{type(exc).__name__}: {exc}"
    finally:
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


def analyse_call(rec: CallRecord, spec: CallSpec) -> dict[str, Any]:
    """Lateness of every bot frame on the reply grid, gaps, end-of-turn latency, outcome."""
    lateness: list[float] = []
    gap_frames = 0
    orphan_frames = 0
    replies: list[dict[str, Any]] = []
    reply: dict[str, Any] | None = None
    tick: int | None = None
    first: tuple[int, float] | None = None  # (tick, arrival) of the reply's first frame
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
            if first is None:
                first = (tick, arrival)
            lateness.append(arrival - (first[1] + (tick - first[0]) * FRAME_S))
            reply["frames"] += 1
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
            if state == "SPEAKING":
                reply = {"start": arrival, "first_frame": None, "frames": 0, "texts": []}
                replies.append(reply)
                tick, first = None, None
                if speech_end_t is not None:
                    eot_server.append(event["t"] - speech_end_t)
                    speech_end_t = None
            else:
                if reply is not None and first is not None:
                    reply["first_frame"] = first[1]
                reply, tick, first = None, None, None
                if state == "LISTENING":
                    speech_end_t = None
    if reply is not None and first is not None:
        reply["first_frame"] = first[1]
    eot_client = []
    starts = [r["first_frame"] for r in replies if r["first_frame"] is not None]
    for sent in rec.speech_end_sent:
        after = [s for s in starts if s > sent]
        if after:
            eot_client.append(after[0] - sent)
    expected_hits = sum(
        any(r["texts"] and r["texts"][0].startswith(e) for r in replies) for e in EXPECTED_REPLY
    )
    lags = np.asarray(rec.send_lags or [0.0])
    return {
        "index": spec.index,
        "lateness": lateness,
        "frames": len(lateness),
        "gap_frames": gap_frames,
        "orphan_frames": orphan_frames,
        "replies": len(replies),
        "turns_said": len(rec.speech_end_sent),
        "expected_replies": expected_hits,
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


async def _worker_calls(
    url: str, specs: list[CallSpec], bank: list[list[bytes]], clock0: float, cfg: Config
) -> list[dict[str, Any]]:
    records = await asyncio.gather(*(run_call(url, s, bank, clock0, cfg) for s in specs))
    return [analyse_call(r, s) for r, s in zip(records, specs, strict=True)]


def worker_main(
    conn: Connection,
    url: str,
    specs: list[CallSpec],
    bank: list[list[bytes]],
    cfg: Config,
    cpus: set[int] | None,
) -> None:
    """A caller process: handshake, run its calls, send back the analysed results."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    import uvloop

    conn.send("ready")
    clock0: float = conn.recv()
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    results = uvloop.run(_worker_calls(url, specs, bank, clock0, cfg))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    conn.send({"calls": results, "cpu_s": cpu, "wall_s": time.monotonic() - wall0})
    conn.close()


# --------------------------------------------------------------------------- server side


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the process (all threads) + cutime + cstime of reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def proc_peak_rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def scrape_metrics(http: str) -> dict[str, Any]:
    """The gateway's Prometheus figures this benchmark uses."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{http}/metrics", timeout=10, trust_env=False).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))

    def total(name: str) -> float:
        return sum(v for _, v in samples.get(name, []))

    def hist(name: str) -> dict[str, Any]:
        count, sum_ = total(f"{name}_count"), total(f"{name}_sum")
        buckets = sorted(
            (float(lab["le"]), v) for lab, v in samples.get(f"{name}_bucket", []) if "le" in lab
        )

        def quantile(q: float) -> float | None:
            for le, v in buckets:
                if count and v >= q * count:
                    return le
            return None

        return {
            "count": count,
            "mean": sum_ / count if count else None,
            "p50_bucket": quantile(0.5),
            "p95_bucket": quantile(0.95),
            "buckets": buckets,
        }

    return {
        "vad_batch_size": hist("voicebot_vad_batch_size"),
        "vad_window_seconds": hist("voicebot_vad_window_seconds"),
        "end_of_turn_latency_seconds": hist("voicebot_end_of_turn_latency_seconds"),
        "calls_total": {
            lab.get("reason", "?"): v for lab, v in samples.get("voicebot_calls_total", [])
        },
        "rejected_total": total("voicebot_calls_rejected_total"),
        "engine_errors": {
            lab.get("engine", "?"): v for lab, v in samples.get("voicebot_engine_errors_total", [])
        },
    }


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """Run the block with this process (and what it starts) on `cpus`."""
    if not cpus:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


# --------------------------------------------------------------------------- one run


def caller_bank(log: Log) -> list[list[bytes]]:
    """Per caller voice: the sentences as lists of 20 ms frames (last one zero-padded)."""
    from tests.audiogen import trimmed_speech

    bank = []
    for voice in CALLER_VOICES:
        sentences = []
        for text in SENTENCES:
            pcm = trimmed_speech(text, voice)
            pcm = np.concatenate([pcm, np.zeros(-len(pcm) % FRAME, np.int16)]).astype("<i2")
            raw = pcm.tobytes()
            sentences.append([raw[i : i + 2 * FRAME] for i in range(0, len(raw), 2 * FRAME)])
        bank.append(sentences)
    secs = [len(s) * FRAME_S for v in bank for s in v]
    log(f"caller audio: {len(bank)} voices x {len(SENTENCES)} sentences, {min(secs):.1f}-"
        f"{max(secs):.1f} s each")  # fmt: skip
    return bank


def make_specs(n: int, cfg: Config) -> list[CallSpec]:
    rng = np.random.default_rng([SEED, n])
    connect = np.sort(rng.uniform(0, cfg.connect_spread_s, n)) if n > 1 else np.zeros(1)
    return [
        CallSpec(
            index=i,
            connect_at=float(connect[i]),
            lead=float(rng.uniform(*cfg.lead_s)),
            voice=i % len(CALLER_VOICES),
            pauses=tuple(float(x) for x in rng.uniform(*cfg.pause_s, cfg.turns)),
        )
        for i in range(n)
    ]


def pct(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else None


def run_load(
    n: int, cfg: Config, engines: Engines, bank: list[list[bytes]], pinned: bool, log: Log
) -> dict[str, Any]:
    """Start a gateway, run N calls against it, and return every figure of the run."""
    from tests.gateway_server import gateway

    server_cpus = {1} if pinned else None
    client_cpus = {0} if pinned else None
    env = {
        **engines.env(),
        "VOICEBOT_ENGINES__LLM": "scripted",
        "VOICEBOT_SERVER__MAX_CALLS": "1000",
        "VOICEBOT_AGENT__GREETING": "",
        "VOICEBOT_AGENT__VAD_EVENT_INTERVAL_MS": "0",
    }
    if not pinned:
        # Work-around, see the module docstring: with more than one CPU OpenBLAS runs a thread
        # pool, and uvloop's fork() for espeak-ng can deadlock it mid-matmul (Whisper features).
        env["OPENBLAS_NUM_THREADS"] = "1"
    load_start = [round(x, 2) for x in os.getloadavg()]
    specs = make_specs(n, cfg)
    workers = max(1, math.ceil(n / CALLS_PER_WORKER))
    t_run = time.perf_counter()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        with affinity(server_cpus):
            started = time.perf_counter()
            gw_cm = gateway(Path(tmp), **env)
            gw = gw_cm.__enter__()
        try:
            startup_s = time.perf_counter() - started
            pipes: list[Connection] = []
            procs = []
            for w in range(workers):
                parent, child = ctx.Pipe()
                p = ctx.Process(
                    target=worker_main,
                    args=(child, gw.ws, specs[w::workers], bank, cfg, client_cpus),
                    daemon=True,
                )
                p.start()
                procs.append(p)
                pipes.append(parent)
            for c in pipes:
                if not c.poll(60):
                    raise RuntimeError("a caller process did not start")
                c.recv()
            cpu0, (busy0, total0) = proc_cpu_s(gw.proc.pid), system_cpu()
            clock0 = time.monotonic() + 0.3
            for c in pipes:
                c.send(clock0)
            worker_results = []
            for c in pipes:
                if not c.poll(cfg.turns * (cfg.reply_timeout_s + 20) + 120):
                    raise RuntimeError("a caller process did not finish")
                worker_results.append(c.recv())
            wall = time.monotonic() - clock0
            cpu1, (busy1, total1) = proc_cpu_s(gw.proc.pid), system_cpu()
            for p in procs:
                p.join(10)
            metrics = scrape_metrics(gw.http)
            peak_rss = proc_peak_rss_mb(gw.proc.pid)
            log_text = gw.log()
        finally:
            gw_cm.__exit__(None, None, None)
    calls = [c for w in worker_results for c in w["calls"]]
    calls.sort(key=lambda c: c["index"])
    lateness = np.asarray([x for c in calls for x in c["lateness"]], dtype=np.float64)
    frames = int(lateness.size)
    eot_client = [x for c in calls for x in c["eot_client"]]
    eot_server = [x for c in calls for x in c["eot_server"]]
    server_cpu = cpu1 - cpu0
    client_cpu = sum(w["cpu_s"] for w in worker_results)
    problems = [
        line
        for line in log_text.splitlines()
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line)
    ]
    end_reasons: dict[str, int] = {}
    close_codes: dict[str, int] = {}
    for c in calls:
        end_reasons[str(c["end_reason"])] = end_reasons.get(str(c["end_reason"]), 0) + 1
        close_codes[str(c["close_code"])] = close_codes.get(str(c["close_code"]), 0) + 1
    mean_call_s = float(np.mean([c["duration"] for c in calls])) if calls else 0.0
    turns_said = sum(c["turns_said"] for c in calls)
    res = {
        "n": n,
        "engines": engines.label,
        "pinned": pinned,
        "workers": workers,
        "loadavg_at_start": load_start,
        "server_startup_s": startup_s,
        "wall_s": wall,
        "run_s": time.perf_counter() - t_run,
        "mean_call_s": mean_call_s,
        "calls_completed": sum(1 for c in calls if c["connect_error"] is None),
        "connect_errors": [c["connect_error"] for c in calls if c["connect_error"]],
        "end_reasons": end_reasons,
        "close_codes": close_codes,
        "turns_said": turns_said,
        "replies": sum(c["replies"] for c in calls),
        "expected_replies": sum(c["expected_replies"] for c in calls),
        "frames": frames,
        "late_frames": int((lateness > LATE_S).sum()),
        "late_pct": 100 * float((lateness > LATE_S).mean()) if frames else None,
        "late_buffer_frames": int((lateness > LATE_BUFFER_S).sum()),
        "late_buffer_pct": 100 * float((lateness > LATE_BUFFER_S).mean()) if frames else None,
        "lateness_ms": {
            "p50": 1000 * pct(lateness, 50) if frames else None,
            "p99": 1000 * pct(lateness, 99) if frames else None,
            "p999": 1000 * pct(lateness, 99.9) if frames else None,
            "max": 1000 * float(lateness.max()) if frames else None,
        },
        "calls_with_late_frames": sum(
            1 for c in calls if any(x > LATE_S for x in c["lateness"])
        ),
        "gap_frames": sum(c["gap_frames"] for c in calls),
        "orphan_frames": sum(c["orphan_frames"] for c in calls),
        "clears": sum(c["counts"]["clear"] for c in calls),
        "interruptions": sum(c["counts"]["interrupted"] for c in calls),
        "error_events": [e for c in calls for e in c["errors"]],
        "eot_client_s": {"n": len(eot_client), "p50": pct(eot_client, 50),
                         "p95": pct(eot_client, 95), "max": max(eot_client, default=None)},
        "eot_server_s": {"n": len(eot_server), "p50": pct(eot_server, 50),
                         "p95": pct(eot_server, 95), "max": max(eot_server, default=None)},
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
            "over_20ms_pct": 100
            * sum(c["send_lags_over_20ms"] for c in calls)
            / max(1, sum(c["sends"] for c in calls)),
        },
        "machine_busy_pct": 100 * (busy1 - busy0) / max(1, total1 - total0),
        "server_metrics": metrics,
        "server_log_problems": problems[:20],
        "server_log_problem_count": len(problems),
        "transcripts_sample": [t for c in calls[:4] for t in c["transcripts"]],
        "per_call": [
            {k: v for k, v in c.items() if k not in ("lateness", "transcripts")}
            | {"late": sum(1 for x in c["lateness"] if x > LATE_S)}
            for c in calls
        ],
    }  # fmt: skip
    late = res["late_pct"]
    log(
        f"N={n:<4} {engines.label}{'' if pinned else ' (unpinned)'}: "
        f"late {late if late is None else round(late, 3)} % of {frames} frames, "
        f"p99 {res['lateness_ms']['p99'] or 0:.1f} ms, eot p50 "
        f"{res['eot_client_s']['p50'] or 0:.2f} s, server CPU {res['server_cpu_pct']:.0f} % "
        f"({res['server_cpu_pct_per_call']:.2f} %/call), client CPU "
        f"{res['client_cpu_pct']:.0f} %, {res['run_s']:.0f} s"
    )
    return res


# --------------------------------------------------------------------------- the sweep


def verdict(res: dict[str, Any], cfg: Config) -> str:
    """'ok', or why this N is over the limit."""
    if res["calls_completed"] < res["n"]:
        return "calls failed"
    if res["late_pct"] is None or res["frames"] == 0:
        return "no bot audio"
    if res["late_pct"] >= 1.0:
        return "late frames >= 1 %"
    p50 = res["eot_client_s"]["p50"]
    if p50 is None or p50 > cfg.max_eot_p50_s:
        return "STT saturated"
    return "ok"


def sweep(
    cfg: Config,
    ns: Sequence[int],
    engines: Engines,
    bank: list[list[bytes]],
    pinned: bool,
    started: float,
    log: Log,
    bisect_steps: int,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    good, bad = 0, None
    for n in ns:
        if time.perf_counter() - started > cfg.budget_s:
            log(f"time budget spent: N={n} not run")
            break
        res = run_load(n, cfg, engines, bank, pinned, log)
        res["verdict"] = verdict(res, cfg)
        rows.append(res)
        if res["verdict"] == "ok":
            good = n
        else:
            bad = n
            break
    for _ in range(bisect_steps):
        if bad is None or bad - good <= max(2, good // 10):
            break
        if time.perf_counter() - started > cfg.budget_s:
            break
        n = (good + bad) // 2
        res = run_load(n, cfg, engines, bank, pinned, log)
        res["verdict"] = verdict(res, cfg)
        rows.append(res)
        if res["verdict"] == "ok":
            good = n
        else:
            bad = n
    rows.sort(key=lambda r: r["n"])
    return rows


def best_n(rows: Sequence[dict[str, Any]], pred: Callable[[dict[str, Any]], bool]) -> int | None:
    """The largest N meeting `pred` with every smaller N tried meeting it too."""
    best = None
    for r in sorted(rows, key=lambda r: r["n"]):
        if not pred(r):
            break
        best = r["n"]
    return best


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "packages": {
            p: version(p)
            for p in ("uvicorn", "websockets", "uvloop", "faster-whisper", "ctranslate2",
                      "onnxruntime", "piper-tts", "numpy")
        },  # fmt: skip
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- report


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row_label(r: dict[str, Any]) -> str:
    return f"{r['n']}" + ("" if r["pinned"] else " (unpinned)")


def timing_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        lat = r["lateness_ms"]
        late = f(r["late_pct"], 2)
        body.append([
            row_label(r), r["engines"], f"{r['calls_completed']}/{r['n']}", r["frames"],
            f"**{late}**" if r["verdict"] == "ok" else late, f(r["late_buffer_pct"], 2),
            f"{r['calls_with_late_frames']}", f(lat["p50"]), f(lat["p99"]), f(lat["max"], 0),
            r["gap_frames"], f(r["eot_client_s"]["p50"], 2), f(r["eot_client_s"]["p95"], 2),
            f(r["eot_server_s"]["p50"], 2), f(r["eot_server_s"]["p95"], 2), r["verdict"],
        ])  # fmt: skip
    return md_table(
        ["N", "engines", "calls ok", "bot frames", "late > 20 ms %", "late > 60 ms %",
         "calls with a late frame", "lateness p50 ms", "p99 ms", "max ms", "mid-reply gap frames",
         "end of turn p50 s (client)", "p95 s", "p50 s (server)", "p95 s", "verdict"],
        body,
    )  # fmt: skip


def cost_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        m = r["server_metrics"]
        body.append([
            row_label(r), f(r["mean_call_s"]), f(r["server_cpu_pct"], 0),
            f(r["server_cpu_pct_per_call"], 2), f(r["server_peak_rss_mb"], 0),
            f(r["client_cpu_pct"], 0), f(r["client_cpu_pct_per_call"], 2), r["workers"],
            f(r["client_send_lag_ms"]["p99_worst_call"]), f(r["client_send_lag_ms"]["max"], 0),
            f(r["machine_busy_pct"], 0), f(m["vad_batch_size"]["mean"]),
            f(None if m["vad_window_seconds"]["mean"] is None
              else 1e6 * m["vad_window_seconds"]["mean"], 0),
            " / ".join(f"{x:.2f}" for x in r["loadavg_at_start"]),
        ])  # fmt: skip
    return md_table(
        ["N", "mean call s", "server CPU % of a core", "per call %", "server peak RSS MB",
         "client CPU %", "per call %", "client procs", "client send lag p99 ms (worst call)",
         "max ms", "machine busy % (2 cores)", "VAD batch mean", "VAD µs / window",
         "load avg at start"],
        body,
    )  # fmt: skip


def render(res: dict[str, Any], cfg: Config, quick: bool) -> str:
    m = res["machine"]
    pin = "server pinned to CPU 1, callers to CPU 0" if res["pinned"] else "no pinning"
    out = [
        "## Gateway concurrency (WebSocket)",
        "",
        f"Run {m['date_utc']} by `bench/ws_load.py{' --quick' if quick else ''}` in "
        f"{res['total_seconds']:.0f} s. Machine: {m['nproc']} CPUs, {m['cpu_model']}; "
        f"load average at start {' / '.join(str(x) for x in m['loadavg_at_start'])}, at end "
        f"{' / '.join(str(x) for x in res['loadavg_at_end'])} (shared machine). Python "
        f"{m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        "",
        f"Each call: a real `voicebot serve` process ({pin}; scripted LLM, no greeting, no "
        f"`vad` events) and one WebSocket client per call streaming 16 kHz PCM at real time in "
        f"20 ms frames, from {CALLS_PER_WORKER} calls per client process (asyncio + uvloop). "
        f"Calls connect spread over {cfg.connect_spread_s:g} s; each caller waits "
        f"{cfg.lead_s[0]:g}-{cfg.lead_s[1]:g} s, then says {cfg.turns} sentence(s) (espeak-ng, "
        f"{len(CALLER_VOICES)} voices: \"{SENTENCES[0]}\""
        + (f", \"{SENTENCES[1]}\"" if cfg.turns > 1 else "")
        + "), each time listening to the whole reply (about 6 s of bot speech) and pausing "
        f"{cfg.pause_s[0]:g}-{cfg.pause_s[1]:g} s before going on. Seeds fixed.",
        "",
        "**Late frame**: every bot frame is placed on the server's 20 ms output grid (frame j "
        "of a sentence belongs to tick `bot_text.t / 20 ms + j`); its ideal arrival is the "
        "arrival of its reply's first frame + (tick difference) x 20 ms. A frame that arrives "
        "more than 20 ms (one frame) after its ideal time is late; > 60 ms is the 3-frame "
        "client buffer the server assumes. Lateness p50/p99/max are over all bot frames. Ticks "
        "inside a reply where the server had no audio yet (TTS still working on the next "
        "sentence) are not lateness: they are the mid-reply gap frames. End of turn (client) = "
        "last frame of the caller's sentence sent -> first bot frame received (includes the "
        "VAD's 500 ms of silence); (server) = `speech_end` -> `SPEAKING` in call-audio time. "
        "CPU: server from /proc/PID/stat (all threads + reaped espeak-ng children), clients "
        "from getrusage, both over the calls' wall time; % of one core. Client send lag = how "
        "late the callers' own 20 ms sends were (large = the client is the bottleneck).",
        "",
        "### Audio timing and end-of-turn latency",
        "",
        timing_table(res["runs"]),
        "",
        "### Cost",
        "",
        cost_table(res["runs"]),
        "",
    ]
    s = res["summary"]
    out += [
        "### Capacity",
        "",
        f"- Largest N with < 1 % late frames ({LIGHT.label}, {pin}): "
        f"**{s['max_n_late'] if s['max_n_late'] is not None else 'none'}**"
        + (f" (first N over: {s['first_bad_n']}, {s['first_bad_verdict']})"
           if s.get("first_bad_n") else " (no N tried was over the limit)")
        + ".",
        f"- Largest N that also kept the end-of-turn median under {cfg.max_eot_p50_s:g} s: "
        f"{s['max_n_all'] if s['max_n_all'] is not None else 'none'}.",
    ]  # fmt: skip
    if s.get("max_n_heavy") is not None or res.get("heavy"):
        out.append(
            f"- With {DEFAULT.label} (the default engines): largest N with < 1 % late frames "
            f"and end of turn under {cfg.max_eot_p50_s:g} s: {s.get('max_n_heavy') or 'none'} "
            "of those tried."
        )
    out.append(f"- Total run time {res['total_seconds'] / 60:.1f} min.")
    notes = notes_for(res)
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def notes_for(res: dict[str, Any]) -> list[str]:
    notes = []
    for r in res["runs"]:
        label = f"N={row_label(r)} ({r['engines']})"
        if r["connect_errors"]:
            notes.append(f"{label}: {len(r['connect_errors'])} calls failed to connect: "
                         f"{r['connect_errors'][0]}")  # fmt: skip
        if r["error_events"]:
            notes.append(f"{label}: {len(r['error_events'])} error events, e.g. "
                         f"`{r['error_events'][0]}`")  # fmt: skip
        if r["interruptions"] or r["clears"]:
            notes.append(f"{label}: {r['interruptions']} barge-ins, {r['clears']} clears")
        if r["orphan_frames"]:
            notes.append(f"{label}: {r['orphan_frames']} bot frames outside any reply")
        if r["server_log_problem_count"]:
            notes.append(f"{label}: {r['server_log_problem_count']} warning/error lines in the "
                         f"server log, e.g. `{r['server_log_problems'][0][:160]}`")  # fmt: skip
        other = {k: v for k, v in r["end_reasons"].items() if k != "caller_hangup"}
        if other:
            notes.append(f"{label}: calls ended by {other}")
        if r["expected_replies"] < r["turns_said"]:
            notes.append(f"{label}: {r['turns_said'] - r['expected_replies']} of "
                         f"{r['turns_said']} turns got another reply than the scripted one "
                         "(STT misheard, or no reply)")  # fmt: skip
    return notes


def update_results(path: Path, section: str) -> None:
    """Replace the '## Gateway concurrency (WebSocket)' section of a Markdown file (or append)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Gateway concurrency \(WebSocket\)[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    block = section.rstrip() + "\n\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")


# --------------------------------------------------------------------------- main


def wait_for_quiet(threshold: float, max_wait_s: float, log: Log) -> None:
    deadline = time.monotonic() + max_wait_s
    while True:
        load = os.getloadavg()[0]
        if load < threshold:
            log(f"load average {load:.2f} < {threshold:g}: starting")
            return
        if time.monotonic() >= deadline:
            log(f"load average still {load:.2f} after {max_wait_s:.0f} s: starting anyway")
            return
        log(f"load average {load:.2f} >= {threshold:g}: waiting")
        time.sleep(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 1 min)")
    parser.add_argument("--json", type=Path, help="write all figures as JSON here")
    parser.add_argument(
        "--results", type=Path, help="write the '## Gateway concurrency (WebSocket)' section here"
    )
    parser.add_argument("--ns", help="comma-separated N to sweep instead of the default")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and callers")
    parser.add_argument(
        "--sweep-only", action="store_true", help="no bisection, unpinned check or Piper/base runs"
    )
    parser.add_argument(
        "--wait-load",
        type=float,
        metavar="L",
        help="first wait (up to 20 min) for the 1-minute load average to drop below L",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.ns:
        cfg = Config(**{**asdict(cfg), "sweep": tuple(int(x) for x in args.ns.split(","))})
    if args.sweep_only:
        cfg = Config(
            **{**asdict(cfg), "bisect_steps": 0, "unpinned_check": False, "heavy_sweep": ()}
        )
    pinned = not args.no_pin and {0, 1} <= os.sched_getaffinity(0)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, 20 * 60, log)
        started = time.perf_counter()
    res: dict[str, Any] = {
        "config": asdict(cfg),
        "quick": args.quick,
        "pinned": pinned,
        "machine": machine_info(),
        "definitions": {"late_s": LATE_S, "late_buffer_s": LATE_BUFFER_S, "seed": SEED},
    }
    bank = caller_bank(log)
    runs = sweep(cfg, cfg.sweep, LIGHT, bank, pinned, started, log, cfg.bisect_steps)
    max_late = best_n(runs, lambda r: r["late_pct"] is not None and r["late_pct"] < 1.0)
    max_all = best_n(runs, lambda r: r["verdict"] == "ok")
    first_bad = next((r for r in runs if r["verdict"] != "ok"), None)
    summary: dict[str, Any] = {
        "max_n_late": max_late,
        "max_n_all": max_all,
        "first_bad_n": first_bad["n"] if first_bad else None,
        "first_bad_verdict": first_bad["verdict"] if first_bad else None,
    }
    extra: list[dict[str, Any]] = []
    if cfg.unpinned_check and pinned and max_all and time.perf_counter() - started < cfg.budget_s:
        for n in sorted({max_all, first_bad["n"] if first_bad else max_all}):
            if time.perf_counter() - started > cfg.budget_s:
                break
            r = run_load(n, cfg, LIGHT, bank, False, log)
            r["verdict"] = verdict(r, cfg)
            extra.append(r)
    heavy: list[dict[str, Any]] = []
    if cfg.heavy_sweep and time.perf_counter() - started < cfg.budget_s:
        heavy = sweep(cfg, cfg.heavy_sweep, DEFAULT, bank, pinned, started, log, 0)
        summary["max_n_heavy"] = best_n(heavy, lambda r: r["verdict"] == "ok")
    res["runs"] = runs + extra + heavy
    res["heavy"] = bool(heavy)
    res["summary"] = summary
    res["total_seconds"] = time.perf_counter() - started
    res["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    log("done")
    section = render(res, cfg, args.quick)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    if args.results:
        update_results(args.results, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
