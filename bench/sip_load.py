"""SIP load benchmark: N concurrent SIPp calls with G.711 RTP against a real `voicebot serve`.

SIPp (`bench/sip_load.xml`) places N calls (`-m N -l N`, INVITEs spread evenly over a ramp
of up to `ramp_max_s`), each offering PCMU only. After a random pause of 0..`spread_s` (so
that the callers' turns do not all fall on the same instant; a check runs without it) each
call streams the caller's audio as RTP to the end of the call (`rtp_stream` of a mu-law WAV:
espeak-ng asking "What is the balance on my account?" at 0.5 s and, in full runs, "Please
cancel my subscription at the end of this month." at 10 s, silence elsewhere), then hangs
up with BYE `hold_s` after its audio started. The bot runs the scripted LLM (about 6 s of
speech per answer), Whisper tiny.en and espeak-ng (`tests/gateway_server.py` starts
`python -m voicebot serve`; no greeting, no `vad` events, no answer delay). Every N gets a
fresh server process, so turns still queued from one N never load the next.

Layout (default, `shared`): server, SIPp, tcpdump and this script all on both cores, as on
a 2-core box that also runs its load generator (SIPp's own CPU is measured: a few % of a
core). `pinned` (`--layout pinned`, and one of the checks): the server on CPU 1, SIPp,
tcpdump and this script on CPU 0 (affinity inherited from this process when each is
started), so the server has one core to itself, Whisper and its event loop included.

Measured per N:

* Bot RTP timing, two ways. Server: `voicebot_rtp_late_ticks_total` (20 ms media ticks that
  ran more than one frame late, i.e. bot packets sent late) / `voicebot_rtp_packets_total
  {kind="sent"}`. Wire: tcpdump on `lo` records every RTP packet from and to the server's
  RTP port range; per bot SSRC, a packet's schedule is (RTP timestamp - first timestamp) /
  8000 s after the stream's earliest-relative packet (the server never sends early: it
  sleeps until each tick's deadline), lateness = capture time - schedule. Late = more than
  20 ms (one packet) behind. Also the RFC 3550 interarrival jitter J (section 6.4.1) of each
  bot stream, and sequence gaps (packets lost on the way; on loopback only tcpdump can drop).
* Caller RTP (SIPp's sends): what the server's jitter buffer counted (received / lost /
  late / duplicate), and SIPp's own send timing from the capture (RFC 3550 jitter; p99 of
  |deviation| from the stream's median schedule offset): large values mean the load
  generator, not the server, is struggling.
* Cost: server CPU (utime + stime of all threads + reaped espeak-ng children, /proc/PID/stat)
  per call-second (= % of one core per concurrent call) and as % of a core while all N calls
  are up; SIPp's CPU (rusage); whole-machine CPU (/proc/stat).
* Turns: from the server's events log (`VOICEBOT_SERVER__EVENTS_LOG`): end-of-turn latency
  (`speech_end` -> `SPEAKING` state, in call-audio time), replies started before the
  hang-up, replies that were the scripted answer to the question asked. Whisper decodes one
  utterance at a time per process, so with many calls the turns queue: end-of-turn latency
  grows with N.
* SIP: calls SIPp completed / failed, calls the server ended, peak concurrent calls (SIPp's
  statistics file).

Bot packets never sent: when the server's 20 ms clock falls more than 1 s behind it
re-anchors and skips those ticks (no sequence or timestamp gap on the wire), so per bot
stream the packets due are (last - first capture time) / 20 ms + 1; the shortfall counts.

Verdict per N: `ok` when every call completed and the server's late-tick rate, the wire's
late-packet rate and the never-sent rate are all below 0.5 %. The sweep raises N through
`FULL.ns` until the run is clearly over (one of them >= 2 %, failed calls, or two Ns in a
row not `ok`), then bisects between the last `ok` N and the first that was not. Capacity =
the largest `ok` N with every smaller N tried `ok` too. Then `FULL.checks`, each at a
multiple of that capacity: the SIP echo canceller off (its cost), the engines' threads at
the media loop's priority (`engines.nice=0`), OpenBLAS's thread pool as shipped, the server
pinned to one core of its own, Whisper base + Piper (the default engines), and all callers
speaking at once. A full run takes about 10-13 min (each N: ~3 s server start, the ramp, the spread,
the 21 s of audio, ~3 s teardown and analysis);
`--quick` (N = 5 and 20, one question, 9 s of audio, one check) under a minute.

The gateway process, the caller processes, CPU sampling and the sweep over N are the load
scripts' shared driver (bench/load_driver.py); this file has the SIPp scenario run, the
capture and events analysis, verdict and tables.

    bench/sip_load.sh --wait-load 1.0 --json /tmp/sip.json --results bench/RESULTS.md
    bench/sip_load.sh --quick
    bench/sip_load.sh --ns 10,20 --env VOICEBOT_SIP__ECHO_CANCELLATION=false
    bench/sip_load.sh --render /tmp/sip.json --results bench/RESULTS.md  # re-render only
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

from bench import common
from bench import load_driver as driver
from bench.common import Log, cpu_flags, fmt, md_table, pct
from bench.load_driver import HEAVY, LIGHT
from bench.run_samplers import SpeedProbe, WallClockSampler, steady_times, wall_clock_drift_ms

SCENARIO = Path(__file__).resolve().with_name("sip_load.xml")
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
TCPDUMP = shutil.which("tcpdump") or "/usr/bin/tcpdump"
SECTION = "## SIP load"
RTP_MIN, RTP_MAX = 30000, 31999  # the server's RTP ports (VOICEBOT_SIP__RTP_PORT_MIN/MAX)
CLIENT_PORTS = range(40000, 50000)  # SIPp's media / SIP / control ports are picked here
SR_RTP = 8000
LATE_S = 0.020  # one packet period
GOAL_LATE = 0.005  # < 0.5 % late packets
OVER_LATE = 0.02  # clearly over: stop raising N
# The caller's questions (start in its audio, text) and the start of the scripted answer.
QUESTIONS = (
    (0.5, "What is the balance on my account?", "Your account balance"),
    (10.0, "Please cancel my subscription at the end of this month.", "I can cancel that"),
)
REPLY_S = 7.0  # a scripted answer lasts about 6 s
PACKAGES = ("faster-whisper", "ctranslate2", "onnxruntime", "numpy", "aiortc", "uvicorn")


@dataclass(frozen=True)
class Check:
    """An extra run after the sweep: another layout or other engines at some N."""

    label: str
    engines: driver.Engines
    layout: str
    n_of_capacity: float  # N = this x capacity (rounded to 5), at least `min_n`
    min_n: int
    env: tuple[tuple[str, str], ...] = ()
    spread: bool = True


@dataclass(frozen=True)
class Config:
    ns: tuple[int, ...]
    hold_s: float  # caller audio starts -> BYE
    spread_s: float  # each caller's audio starts a random 0..spread_s after the answer
    ramp_max_s: float  # INVITEs spread over min(ramp_max_s, N / min_cps)
    min_cps: float
    bisect_steps: int
    bisect_min_gap: float  # no bisection once the gap is <= max(5, this x capacity)
    checks: tuple[Check, ...]
    budget_s: float  # no new N once the sweep has run this long


ECHO_OFF = (("VOICEBOT_SIP__ECHO_CANCELLATION", "false"),)
BLAS_DEFAULT = (("OPENBLAS_NUM_THREADS", ""),)  # "": not set, OpenBLAS's own default
NICE_0 = (("VOICEBOT_ENGINES__NICE", "0"),)  # Whisper/TTS threads compete with the media loop
FULL = Config(
    ns=(10, 25, 50, 75, 100, 125, 150, 200, 250, 300),
    hold_s=21.0,
    spread_s=8.0,
    ramp_max_s=8.0,
    min_cps=10.0,
    bisect_steps=2,
    bisect_min_gap=0.2,
    checks=(
        Check("echo canceller off", LIGHT, "shared", 1.2, 15, ECHO_OFF),
        Check("engine threads at the loop's priority", LIGHT, "shared", 1.0, 10, NICE_0),
        Check("OpenBLAS threads as shipped", LIGHT, "shared", 1.0, 10, BLAS_DEFAULT),
        Check("server on one core", LIGHT, "pinned", 0.5, 10),
        Check("heavy engines", HEAVY, "shared", 0.5, 5),
        Check("turns in sync (no spread)", LIGHT, "shared", 1.0, 5, spread=False),
    ),
    budget_s=11 * 60,
)
QUICK = dataclasses.replace(
    FULL,
    ns=(5, 20), hold_s=9.0, spread_s=2.0, ramp_max_s=2.0, bisect_steps=0,
    checks=(Check("echo canceller off", LIGHT, "shared", 1.0, 5, ECHO_OFF),), budget_s=60,
)  # fmt: skip


# --------------------------------------------------------------------------- helpers


def free_udp_ports(taken: set[int], span: int = 1) -> int:
    """The first of `span` consecutive UDP ports of `CLIENT_PORTS` (starting even when
    span > 1) that all bind now on 127.0.0.1; they are added to `taken`."""
    for port in CLIENT_PORTS:
        wanted = range(port, port + span)
        if (span > 1 and port % 2) or taken.intersection(wanted):
            continue
        socks = []
        try:
            for p in wanted:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        taken.update(wanted)
        return port
    raise RuntimeError("no free UDP port for SIPp")


def proc_cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds of the main thread (the asyncio event loop), of the other threads (engine
    pool: Whisper; the VAD thread; ONNX Runtime / CTranslate2 workers) and of reaped children
    (espeak-ng)."""
    threads, children = common.proc_cpu(pid)
    loop = common.proc_cpu(pid, pid)[0]
    return {"loop": loop, "threads": threads - loop, "children": children}


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def all_up_window(sampler: driver.CpuSampler, t_a: float, t_b: float) -> dict[str, float | None]:
    """Server CPU and its event-loop thread (% of one core), machine CPU (% of all cores)
    between t_a and t_b."""
    w = sampler.window(t_a, t_b)
    if w is None:
        return {"server_core_pct": None, "loop_core_pct": None, "machine_pct": None,
                "seconds": 0.0}  # fmt: skip
    return {
        "server_core_pct": 100 * (w["own"] + w["children"]),
        "loop_core_pct": 100 * w["main_thread"],
        "machine_pct": 100 * w["machine"],
        "seconds": w["seconds"],
    }


def scrape_metrics(http: str) -> dict[str, Any]:
    """The gateway's Prometheus figures (summed over labels unless split by one)."""
    m = common.Metrics.scrape(http)
    return {
        "rtp_packets": m.by("voicebot_rtp_packets_total", "kind"),
        "rtp_late_ticks": m.total("voicebot_rtp_late_ticks_total"),
        "active_calls": m.total("voicebot_active_calls"),
        "calls_total": m.by("voicebot_calls_total", "reason"),
        "rejected_total": m.total("voicebot_calls_rejected_total"),
        "engine_errors": m.by("voicebot_engine_errors_total", "engine"),
        "vad_batch_mean": m.mean("voicebot_vad_batch_size"),
        "vad_window_mean_s": m.mean("voicebot_vad_window_seconds"),
        "end_of_turn_mean_s": m.mean("voicebot_end_of_turn_latency_seconds"),
        "end_of_turn_count": m.total("voicebot_end_of_turn_latency_seconds_count"),
        # The end-of-turn model: how many turns it judged (one per pause) and their CPU time.
        "turn_model_runs": m.total("voicebot_turn_model_batch_size_sum"),
        "turn_model_seconds": m.total("voicebot_turn_model_seconds_sum"),
        # Python's collections, by generation: a full one holds the GIL (every call's media).
        "gc_count": m.by("voicebot_gc_seconds_count", "generation"),
        "gc_seconds": m.by("voicebot_gc_seconds_sum", "generation"),
    }


# --------------------------------------------------------------------------- caller audio


def make_caller_wav(path: Path, seconds: float, log: Log) -> list[dict[str, Any]]:
    """The questions of `QUESTIONS` that the bot can answer within `seconds` (espeak-ng,
    en-us) at their start times, silence elsewhere: 8 kHz mu-law, which SIPp's rtp_stream
    sends as PT 0."""
    from tests.audiogen import trimmed_speech
    from voicebot.audio.resample import resample_whole
    from voicebot.audio.wav import write_wav

    pcm = np.zeros(int(seconds * 16000), np.int16)
    said = []
    for start_s, text, reply in QUESTIONS:
        speech = trimmed_speech(text, "en-us")
        if start_s + len(speech) / 16000 + REPLY_S > seconds and said:
            break
        start = int(start_s * 16000)
        pcm[start : start + len(speech)] = speech
        said.append({"start_s": start_s, "seconds": len(speech) / 16000, "text": text,
                     "reply": reply})  # fmt: skip
    write_wav(path, resample_whole(pcm, 16000, SR_RTP), SR_RTP, encoding="ulaw")
    log(f"caller audio: {len(said)} question(s) in {seconds:.1f} s")
    return said


# --------------------------------------------------------------------------- capture analysis


def read_pcap(path: Path) -> dict[str, np.ndarray]:
    """IPv4/UDP/RTP headers of a pcap (Ethernet or Linux cooked) as arrays."""
    data = path.read_bytes() if path.exists() else b""
    cols: dict[str, list[float | int]] = {
        k: [] for k in ("t", "sport", "dport", "seq", "ts", "ssrc", "pt")
    }
    if len(data) < 24:
        return {k: np.zeros(0) for k in cols}
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    scale = 1e-9 if magic in (0xA1B23C4D, 0x4D3CB2A1) else 1e-6
    link_len = {1: 14, 113: 16, 276: 20, 0: 4}.get(struct.unpack(endian + "I", data[20:24])[0], 14)
    rec = struct.Struct(endian + "IIII")
    rtp = struct.Struct("!HHxxxxBBHII")  # UDP ports (length, checksum skipped), RTP header
    pos, size = 24, len(data)
    while pos + 16 <= size:
        sec, frac, incl, _ = rec.unpack_from(data, pos)
        ip = pos + 16 + link_len
        pos += 16 + incl
        if incl < link_len + 40 or data[ip] >> 4 != 4 or data[ip + 9] != 17:
            continue
        udp = ip + (data[ip] & 0x0F) * 4
        if udp + 20 > pos:
            continue
        sport, dport, b0, b1, seq, ts, ssrc = rtp.unpack_from(data, udp)
        if b0 >> 6 != 2:
            continue
        for key, value in zip(
            cols, (sec + frac * scale, sport, dport, seq, ts, ssrc, b1 & 0x7F), strict=True
        ):
            cols[key].append(value)
    return {k: np.asarray(v, dtype=np.float64 if k == "t" else np.int64) for k, v in cols.items()}


def _rfc3550_jitter(t: np.ndarray, ts_s: np.ndarray) -> np.ndarray:
    """Running interarrival jitter J (RFC 3550 section 6.4.1), seconds, one per packet."""
    from scipy.signal import lfilter

    d = np.abs(np.diff(t) - np.diff(ts_s))
    if not d.size:
        return np.zeros(0)
    return lfilter([1 / 16], [1, -15 / 16], d)


def stream_stats(t: np.ndarray, seq: np.ndarray, ts: np.ndarray) -> dict[str, Any]:
    """Timing of one RTP stream (packets in capture order)."""
    ts_s = ((ts - ts[0] + 2**31) % 2**32 - 2**31) / SR_RTP
    seq_u = seq[0] + np.concatenate([[0], np.cumsum((np.diff(seq) + 2**15) % 2**16 - 2**15)])
    expected = int(seq_u.max() - seq_u.min() + 1)
    offset = t - ts_s
    lateness = offset - offset.min()
    # One packet per 20 ms of the stream's life is due; when the server's clock falls over a
    # second behind it re-anchors and those ticks are never sent (no sequence gap either).
    due = round(float(t[-1] - t[0]) / 0.020) + 1
    jitter = _rfc3550_jitter(t, ts_s)
    return {
        "packets": len(t),
        "due": due,
        "lost": max(0, expected - len(np.unique(seq_u))),
        "lateness": lateness,
        "deviation": np.abs(offset - np.median(offset)),
        "jitter_mean": float(jitter.mean()) if jitter.size else 0.0,
        "jitter_max": float(jitter.max()) if jitter.size else 0.0,
        "t": t,
    }


def analyse_capture(
    path: Path,
    phases: tuple[float, float, float],
    clock: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Bot streams (from the server's RTP ports) and caller streams (to them).

    `clock`: the capture's WallClockSampler samples, to time packets by the monotonic clock.
    """
    p = read_pcap(path)
    p["t"] = steady_times(p["t"], clock)
    bot_mask = (p["sport"] >= RTP_MIN) & (p["sport"] <= RTP_MAX)
    caller_mask = (p["dport"] >= RTP_MIN) & (p["dport"] <= RTP_MAX) & ~bot_mask
    out: dict[str, Any] = {}
    for name, mask in (("bot", bot_mask), ("caller", caller_mask)):
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        idx = np.flatnonzero(mask)
        for i, key in zip(idx, zip(p["ssrc"][idx], p["sport"][idx], strict=True), strict=True):
            groups[(int(key[0]), int(key[1]))].append(int(i))
        streams = [
            stream_stats(p["t"][ix], p["seq"][ix], p["ts"][ix])
            for ix in (np.asarray(v) for v in groups.values())
            if len(ix) >= 2
        ]
        packets = sum(s["packets"] for s in streams)
        due = sum(s["due"] for s in streams)
        lateness = np.concatenate([s["lateness"] for s in streams]) if streams else np.zeros(0)
        times = np.concatenate([s["t"] for s in streams]) if streams else np.zeros(0)
        deviation = np.concatenate([s["deviation"] for s in streams]) if streams else np.zeros(0)
        late = lateness > LATE_S
        t0, t_full, t_bye = phases
        by_phase = {
            "ramp": int(np.sum(late & (times < t_full))),
            "all_up": int(np.sum(late & (times >= t_full) & (times < t_bye))),
            "hangup": int(np.sum(late & (times >= t_bye))),
        }
        per_second = Counter(int(x) for x in (times[late] - t0))
        out[name] = {
            "streams": len(streams),
            "packets": packets,
            "due": due,
            "missing_rate": ratio(max(0, due - packets), due),
            "lost": sum(s["lost"] for s in streams),
            "late": int(late.sum()),
            "late_rate": ratio(float(late.sum()), packets),
            "streams_with_late": sum(int((s["lateness"] > LATE_S).any()) for s in streams),
            "lateness_p99_ms": 1000 * (pct(lateness, 99) or 0.0),
            "lateness_max_ms": 1000 * float(lateness.max(initial=0.0)),
            "deviation_p99_ms": 1000 * (pct(deviation, 99) or 0.0),
            "jitter_mean_ms": 1000 * float(np.mean([s["jitter_mean"] for s in streams] or [0])),
            "jitter_max_ms": 1000 * float(max([s["jitter_max"] for s in streams] or [0])),
            "late_by_phase": by_phase,
            "late_per_second": dict(sorted(per_second.items())),
        }
    return out


# --------------------------------------------------------------------------- events, SIPp


def analyse_events(path: Path) -> dict[str, Any]:
    """End-of-turn latency and replies per call from the server's JSONL events log."""
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                calls[event.get("call_id", "?")].append(event)
    latencies, durations, reasons = [], [], Counter()
    turns = replied = understood = interrupted = 0
    for events in calls.values():
        pending: float | None = None
        for e in events:
            kind = e["type"]
            if kind == "speech_end":
                turns += 1
                pending = e["t"]
            elif kind == "state" and e.get("state") == "SPEAKING" and pending is not None:
                latencies.append(e["t"] - pending)
                replied += 1
                pending = None
            elif kind == "bot_text" and any(
                str(e.get("text", "")).startswith(q[2]) for q in QUESTIONS
            ):
                understood += 1
            elif kind == "interrupted":
                interrupted += 1
            elif kind == "call_ended":
                durations.append(float(e["t"]))
                reasons[e.get("reason", "?")] += 1
    return {
        "calls": len(calls),
        "ended": len(durations),
        "end_reasons": dict(reasons),
        "call_seconds": float(sum(durations)),
        "turns": turns,
        "replied": replied,
        "understood": understood,
        "interrupted": interrupted,
        "eot_p50_s": pct(latencies, 50),
        "eot_p95_s": pct(latencies, 95),
        "eot_max_s": max(latencies, default=None),
    }


def admitted_call_seconds(sipp: dict[str, Any], hold_s: float, offered: int) -> float:
    """Call-seconds of wall time (SIPp: INVITE sent -> BYE answered) of the admitted calls.

    Not the events' call time: that counts the server's media ticks, which an overloaded
    server skips. SIPp's mean call length is over every call, the refused ones (0 s)
    included, so times all calls it is the admitted calls' sum (times the admitted count
    alone, a run with refusals read as costing up to twice the CPU per call it did)."""
    finished = (sipp.get("successful") or 0) + (sipp.get("failed") or 0)
    return (sipp.get("call_length_mean_s") or hold_s) * (finished or offered)


def sipp_stats(path: Path) -> dict[str, Any]:
    """Final counters and peak concurrency from SIPp's `-trace_stat` CSV."""
    if not path.exists():
        return {}
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    header = lines[0].split(";")
    rows = [dict(zip(header, ln.split(";"), strict=False)) for ln in lines[1:]]
    last = rows[-1]

    def num(row: dict[str, str], key: str) -> int:
        with contextlib.suppress(ValueError, KeyError):
            return int(float(row[key]))
        return 0

    def seconds(key: str) -> float | None:
        parts = last.get(key, "").split(":")  # HH:MM:SS:microseconds
        with contextlib.suppress(ValueError):
            h, m, sec, us = (int(x) for x in parts)
            return h * 3600 + m * 60 + sec + us / 1e6
        return None

    failed_kinds = {
        k[len("Failed") : -3]: num(last, k)
        for k in header
        if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and num(last, k)
    }
    return {
        "created": num(last, "TotalCallCreated"),
        "successful": num(last, "SuccessfulCall(C)"),
        "failed": num(last, "FailedCall(C)"),
        "failed_kinds": failed_kinds,
        "retransmissions": num(last, "Retransmissions(C)"),
        "peak_concurrent": max(num(r, "CurrentCall") for r in rows),
        "call_length_mean_s": seconds("CallLength(C)"),
        "response_time_mean_s": seconds("ResponseTime1(C)"),
    }


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunSpec:
    label: str
    engines: driver.Engines
    layout: str  # "pinned" or "shared"
    n: int
    env: tuple[tuple[str, str], ...] = ()
    spread: bool = True  # False: every caller speaks right after the answer (turns in sync)


def gateway_env(spec: RunSpec, sip_port: int, events: Path) -> dict[str, str]:
    # OPENBLAS_NUM_THREADS=1 when shared: a threaded BLAS call on the event loop (the echo
    # canceller's 16000-sample dot products) waits for a busy second core, stalls of tens of
    # ms (and see `server_env`). The "OpenBLAS threads as shipped" check runs without it.
    env = driver.server_env(
        spec.engines,
        spec.layout == "shared",
        VOICEBOT_SIP_PORT=str(sip_port),
        VOICEBOT_SIP__RTP_PORT_MIN=str(RTP_MIN),
        VOICEBOT_SIP__RTP_PORT_MAX=str(RTP_MAX),
        VOICEBOT_SIP__ANSWER_DELAY_MS="0",
        VOICEBOT_SIP__MAX_CALLS="1000",
        VOICEBOT_SERVER__EVENTS_LOG=str(events),
        VOICEBOT_LOG_LEVEL="warning",
    )
    env.update(dict(spec.env))
    return {k: v for k, v in env.items() if v != ""}


@contextlib.contextmanager
def tcpdump(path: Path) -> Iterator[dict[str, Any]]:
    """Capture RTP from and to the server's RTP ports on loopback (headers only)."""
    result: dict[str, Any] = {}
    flt = f"udp and (src portrange {RTP_MIN}-{RTP_MAX} or dst portrange {RTP_MIN}-{RTP_MAX})"
    proc = subprocess.Popen(
        [TCPDUMP, "-i", "lo", "-U", "-n", "-s", "96", "-B", "16384", "-w", str(path), flt],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # let tcpdump open the device before packets flow
    clock = WallClockSampler()
    clock.start()
    try:
        yield result
    finally:
        time.sleep(0.3)
        result["clock"] = clock.stop()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        match = re.search(r"(\d+) packets dropped by kernel", err or "")
        result["dropped"] = int(match.group(1)) if match else None
        result["stderr"] = (err or "")[-400:]


def run_sipp(cmd: list[str], cwd: Path, timeout_s: float) -> tuple[int, float, float]:
    """Run SIPp to the end; (exit code, CPU seconds, wall seconds)."""
    began = time.monotonic()
    with (cwd / "sipp.out").open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, time.monotonic() - began


EMPTY_METRICS: dict[str, Any] = {
    "rtp_packets": {}, "rtp_late_ticks": 0.0, "active_calls": 0.0, "calls_total": {},
    "rejected_total": 0.0, "engine_errors": {}, "vad_batch_mean": None,
    "vad_window_mean_s": None, "end_of_turn_mean_s": None, "end_of_turn_count": 0.0,
    "gc_count": {}, "gc_seconds": {}, "turn_model_runs": 0.0, "turn_model_seconds": 0.0,
}  # fmt: skip


def wait_idle(http: str, timeout_s: float) -> dict[str, Any]:
    """Metrics once no call is active any more (or at the deadline; empty if the server
    never answered)."""
    deadline = time.monotonic() + timeout_s
    metrics = dict(EMPTY_METRICS, unreachable=True)
    while True:
        with contextlib.suppress(Exception):
            metrics = scrape_metrics(http)
            if metrics["active_calls"] == 0:
                return metrics
        if time.monotonic() > deadline:
            return metrics
        time.sleep(0.5)


def sipp_command(
    work: Path, wav: Path, cfg: Config, n: int, spread_s: float, target: str,
    ports: tuple[int, int, int],
) -> tuple[list[str], float, float]:  # fmt: skip
    """SIPp's command line for `n` calls to `target` (host:port; the gateway, or a proxy in
    front of it, bench/cluster_load.py) from 127.0.0.1's `ports` (SIP, control, media), the
    scenario written into `work` (statistics and errors there too): (command, ramp seconds,
    SIPp's timeout)."""
    local_sip, control, media_port = ports
    ramp_s = min(cfg.ramp_max_s, max(0.1, n / cfg.min_cps))
    scenario = work / "scenario.xml"
    scenario.write_text(
        SCENARIO.read_text()
        .replace("@WAV@", str(wav))
        .replace("@HOLD_MS@", str(int(cfg.hold_s * 1000)))
        .replace("@SPREAD_MS@", str(int(spread_s * 1000)))
    )
    sipp_timeout = ramp_s + spread_s + cfg.hold_s + 60
    cmd = [
        SIPP, target, "-sf", str(scenario), "-i", "127.0.0.1",
        "-p", str(local_sip), "-cp", str(control), "-mi", "127.0.0.1", "-mp", str(media_port),
        "-m", str(n), "-l", str(n), "-r", str(n), "-rp", f"{ramp_s * 1000:.0f}",
        "-timeout", f"{int(sipp_timeout)}s", "-timeout_error", "-nostdin",
        "-trace_stat", "-stf", str(work / "sipp-stat.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(work / "sipp-errors.log"),
    ]  # fmt: skip
    return cmd, ramp_s, sipp_timeout


def run_one(spec: RunSpec, cfg: Config, wav: Path, base: Path, log: Log) -> dict[str, Any]:
    work = base / f"{spec.label.replace(' ', '-')}-n{spec.n}"
    work.mkdir(parents=True, exist_ok=True)
    events = work / "events.jsonl"
    pcap = work / "rtp.pcap"
    taken: set[int] = set()
    # SIPp binds the media port (audio; rtp_stream sends from it too) and port + 2 (video).
    media_port = free_udp_ports(taken, span=4)
    local_sip, control, sip_port = (free_udp_ports(taken) for _ in range(3))
    spread_s = cfg.spread_s if spec.spread else 0.0
    cmd, ramp_s, sipp_timeout = sipp_command(
        work, wav, cfg, spec.n, spread_s, f"127.0.0.1:{sip_port}", (local_sip, control, media_port)
    )
    stat_csv = work / "sipp-stat.csv"
    pinned = spec.layout == "pinned"
    load_at_start = common.loadavg()
    log(f"{spec.label}: N={spec.n} (ramp {ramp_s:.1f} s, spread {spread_s:.0f} s), "
        f"load {load_at_start[0]:.2f}")  # fmt: skip
    probe = SpeedProbe()  # its idle baseline first, before the server loads
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        env = gateway_env(spec, sip_port, events)
        gw = stack.enter_context(driver.serve(work, env, {1} if pinned else None))
        pid = gw.proc.pid
        startup_s = time.monotonic() - began
        capture = stack.enter_context(tcpdump(pcap))
        monitor = stack.enter_context(driver.CpuSampler(pid, 0.25, clock=time.time))
        cpu_before = proc_cpu_split(pid)
        t0 = time.time()
        probe.start()
        code, sipp_cpu, sipp_wall = run_sipp(cmd, work, sipp_timeout + 15)
        machine_speed = probe.stop(t0)
        metrics = wait_idle(gw.http, 30)
        t_end = time.time()
        cpu_after = dict(cpu_before)
        with contextlib.suppress(OSError):  # the server died: no CPU figures
            cpu_after = proc_cpu_split(pid)
        cpu_split = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
        cpu_s = sum(cpu_split.values())
        server_alive = gw.proc.poll() is None
        stack.close()  # stop the monitor, tcpdump, then the server
        server_log = gw.log()
    phases = (t0, t0 + ramp_s, t0 + cfg.hold_s)
    window = all_up_window(monitor, t0 + ramp_s + 1.0, t0 + cfg.hold_s - 0.5)
    wire = analyse_capture(pcap, phases, capture.get("clock"))
    wire["wall_clock_drift_ms"] = wall_clock_drift_ms(capture.get("clock"))
    turns = analyse_events(events)
    sipp = sipp_stats(stat_csv)
    sent = metrics["rtp_packets"].get("sent", 0.0)
    errors = [ln for ln in server_log.splitlines() if "ERROR" in ln or "Traceback" in ln]
    stalls = [ln for ln in server_log.splitlines() if "event loop held" in ln]
    call_s = admitted_call_seconds(sipp, cfg.hold_s, spec.n)
    row: dict[str, Any] = {
        "label": spec.label,
        "engines": spec.engines.label,
        "layout": spec.layout,
        "n": spec.n,
        "loop_stalls": stalls[:20],
        "env": dict(spec.env),
        "ramp_s": ramp_s,
        "hold_s": cfg.hold_s,
        "spread_s": spread_s,
        "loadavg_at_start": load_at_start,
        "server_startup_s": startup_s,
        "wall_s": t_end - t0,
        "sipp_exit": code,
        "sipp_wall_s": sipp_wall,
        "sipp_cpu_s": sipp_cpu,
        "sipp": sipp,
        "server_alive": server_alive,
        "server_errors": errors[:20],
        "metrics": metrics,
        "late_rate_server": ratio(metrics["rtp_late_ticks"], sent),
        "wire": wire,
        "machine_speed": machine_speed,
        "tcpdump_dropped": capture.get("dropped"),
        "turns": turns,
        "server_cpu_s": cpu_s,
        "server_cpu_split_s": cpu_split,
        "call_seconds_wall": call_s,
        # < 1: the server's media clocks skipped ticks (re-anchored after > 1 s behind).
        "media_clock_ratio": turns["call_seconds"] / call_s if call_s else None,
        "cpu_per_call_pct": 100 * cpu_s / call_s,
        "cpu_per_call_split_pct": {k: 100 * v / call_s for k, v in cpu_split.items()},
        "all_up_window": window,
        "workdir": str(work),
    }
    row["verdict"] = verdict(row)
    log(
        f"  -> {row['verdict']}: SIPp ok {sipp.get('successful')}/{spec.n}, late server "
        f"{f_pct(row['late_rate_server'])} wire {f_pct(wire['bot']['late_rate'])}, CPU "
        f"{fmt(window['server_core_pct'], 0)} % core, EOT p50 {fmt(turns['eot_p50_s'], 2)} s"
    )
    return row


def verdict(row: dict[str, Any]) -> str:
    sipp = row["sipp"]
    failed = sipp.get("failed", 0) or (sipp.get("successful", 0) < row["n"])
    if failed or not row["server_alive"] or row["turns"]["ended"] < row["n"]:
        return "failed calls"
    if worst_late(row) >= GOAL_LATE:
        return "late"
    return "ok"


def worst_late(row: dict[str, Any]) -> float:
    """The largest of: server late ticks, wire late packets, wire packets never sent."""
    bot = row["wire"]["bot"]
    rates = (row["late_rate_server"], bot["late_rate"], bot["missing_rate"])
    return max(r or 0.0 for r in rates)


def clearly_over(row: dict[str, Any]) -> bool:
    return row["verdict"] == "failed calls" or worst_late(row) >= OVER_LATE


def next_n(rows: list[dict[str, Any]], min_gap: float) -> int | None:
    """Halfway (rounded to 5) between the capacity and the first N over it; None once they
    are within max(5, `min_gap` x capacity) or halfway was tried already."""
    ok = [r["n"] for r in rows if r["verdict"] == "ok"]
    bad = [r["n"] for r in rows if r["verdict"] != "ok"]
    good = driver.capacity(rows)
    if good is None or not bad:
        return None
    first_bad = min(n for n in bad if n > good)
    if first_bad - good <= max(5, min_gap * good):
        return None
    mid = int(round((good + first_bad) / 2 / 5) * 5)
    return None if mid in ok or mid in bad or mid in (good, first_bad) else mid


def sweep_runs(
    cfg: Config, engines: driver.Engines, layout: str, ns: Sequence[int], wav: Path, base: Path,
    started: float, log: Log, env: tuple[tuple[str, str], ...] = (),
) -> list[dict[str, Any]]:  # fmt: skip
    """The sweep's runs by N: up `ns` until clearly over (or two Ns in a row not ok), then
    `cfg.bisect_steps` bisections."""
    budget = driver.Budget(started=started)
    return driver.run_sweep(
        lambda n: run_one(RunSpec("sweep", engines, layout, n, env), cfg, wav, base, log), ns,
        time_left=lambda: budget.left(cfg.budget_s, "sweep", log),
        stop=lambda rows: clearly_over(rows[-1])
        or (len(rows) >= 2 and all(r["verdict"] != "ok" for r in rows[-2:])),
        bisect_steps=cfg.bisect_steps, next_n=lambda rows: next_n(rows, cfg.bisect_min_gap),
    )  # fmt: skip


# --------------------------------------------------------------------------- report


def sipp_version() -> str:
    out = subprocess.run([SIPP, "-v"], capture_output=True, text=True).stdout
    match = re.search(r"SIPp v?([\w.\-]+)", out)
    return match.group(1) if match else out.strip()[:40]


def f_pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f} %"


def _run_cells(r: dict[str, Any]) -> list[object]:
    settings = ", ".join(f"{k.removeprefix('VOICEBOT_')}={v}" for k, v in r["env"].items())
    return [r["label"], r["engines"], r["layout"], settings or "defaults"]


RUN_HEADER = ["run", "engines", "cores", "settings"]


def timing_table(rows: Sequence[dict[str, Any]], label: bool = False) -> str:
    header = [
        "N", "calls ok", "peak up", "bot pkts sent", "late ticks (server)",
        "late > 20 ms (wire)", "never sent (wire)", "media time / call time",
        "calls with a late pkt",
        "lateness p99 / max ms", "jitter J mean / max ms", "caller pkts rcvd / lost / late",
        "SIPp send dev p99 ms", "verdict",
    ]  # fmt: skip
    body = []
    for r in rows:
        bot, caller, m = r["wire"]["bot"], r["wire"]["caller"], r["metrics"]["rtp_packets"]
        late_server = f_pct(r["late_rate_server"])
        cells = [
            r["n"],
            f"{r['sipp'].get('successful', '-')}/{r['n']}",
            r["sipp"].get("peak_concurrent", "-"),
            f"{m.get('sent', 0):.0f}",
            f"{r['metrics']['rtp_late_ticks']:.0f} ({late_server})",
            f"{bot['late']} ({f_pct(bot['late_rate'])})",
            f_pct(bot["missing_rate"]),
            fmt(r["media_clock_ratio"], 3),
            f"{bot['streams_with_late']}/{bot['streams']}",
            f"{bot['lateness_p99_ms']:.1f} / {bot['lateness_max_ms']:.0f}",
            f"{bot['jitter_mean_ms']:.2f} / {bot['jitter_max_ms']:.1f}",
            f"{m.get('received', 0):.0f} / {m.get('lost', 0):.0f} / {m.get('late', 0):.0f}",
            f"{caller['deviation_p99_ms']:.1f}",
            f"**{r['verdict']}**" if r["verdict"] == "ok" else r["verdict"],
        ]
        body.append((_run_cells(r) if label else []) + cells)
    return md_table((RUN_HEADER if label else []) + header, body)


def cost_table(rows: Sequence[dict[str, Any]], label: bool = False) -> str:
    header = [
        "N", "server CPU, all up: total / event loop (% of a core)",
        "server CPU per call: total / loop / other threads / espeak (% of a core)",
        "machine CPU, all up", "SIPp CPU (% of a core)", "turns replied / taken",
        "scripted answers", "end-of-turn p50 / p95 / max s", "VAD batch mean",
        "load avg at start",
    ]  # fmt: skip
    body = []
    for r in rows:
        t, w, split = r["turns"], r["all_up_window"], r["cpu_per_call_split_pct"]
        cells = [
            r["n"],
            f"{fmt(w['server_core_pct'], 0)} / {fmt(w['loop_core_pct'], 0)}",
            f"{fmt(r['cpu_per_call_pct'], 2)} / {fmt(split['loop'], 2)} / "
            f"{fmt(split['threads'], 2)} / {fmt(split['children'], 2)}",
            f"{fmt(w['machine_pct'], 0)} %",
            fmt(100 * r["sipp_cpu_s"] / r["sipp_wall_s"], 0) if r["sipp_wall_s"] else "-",
            f"{t['replied']}/{t['turns']}",
            f"{t['understood']}/{t['turns']}",
            f"{fmt(t['eot_p50_s'], 2)} / {fmt(t['eot_p95_s'], 2)} / {fmt(t['eot_max_s'], 2)}",
            fmt(r["metrics"]["vad_batch_mean"], 1),
            f"{r['loadavg_at_start'][0]:.2f}",
        ]
        body.append((_run_cells(r) if label else []) + cells)
    return md_table((RUN_HEADER if label else []) + header, body)


def notes_for(rows: Sequence[dict[str, Any]]) -> list[str]:
    notes = []
    phases = [
        f"{r['label']} N={r['n']}: {ph['ramp']} / {ph['all_up']} / {ph['hangup']}"
        for r in rows
        if r["wire"]["bot"]["late"]
        for ph in [r["wire"]["bot"]["late_by_phase"]]
    ]
    if phases:
        notes.append(
            "Late bot packets (wire) while calls were starting / all up / hanging up: "
            + "; ".join(phases)
        )
    for r in rows:
        tag = f"{r['label']} N={r['n']}"
        if r["sipp"].get("failed_kinds"):
            notes.append(f"{tag}: SIPp failures {r['sipp']['failed_kinds']}")
        if r["tcpdump_dropped"]:
            notes.append(f"{tag}: tcpdump dropped {r['tcpdump_dropped']} packets")
        speed = r.get("machine_speed")
        if speed and speed["p90_x"] > 1.3:
            notes.append(f"{tag}: the machine ran fixed work slower during the run (CPU time "
                         f"x{speed['p50_x']:.2f} median, x{speed['p90_x']:.2f} p90 of its idle "
                         f"time before the run; seconds over x1.5: "
                         f"{list(speed['slow_seconds'])[:12]})")
        drift = r["wire"].get("wall_clock_drift_ms", 0.0)
        if abs(drift) >= 1.0:
            notes.append(f"{tag}: the wall clock moved {drift:+.0f} ms against the monotonic "
                         "clock during the capture (packets timed by the monotonic clock)")
        if r["server_errors"]:
            notes.append(f"{tag}: server log: {r['server_errors'][0][:160]}")
        if r["metrics"]["engine_errors"]:
            notes.append(f"{tag}: engine errors {r['metrics']['engine_errors']}")
        if not r["server_alive"]:
            notes.append(f"{tag}: the server process died")
    return notes


def compare_checks(sweep: Sequence[dict[str, Any]], checks: Sequence[dict[str, Any]]) -> list[str]:
    """Each check against the sweep's run at the same N (same calls, one setting changed)."""
    by_n = {r["n"]: r for r in sweep}
    return [check_note(c, by_n[c["n"]]) for c in checks if c["n"] in by_n]


def check_note(check: dict[str, Any], base: dict[str, Any]) -> str:
    def change(figure: Callable[[dict[str, Any]], str]) -> str:
        return f"{figure(base)} -> {figure(check)}"

    late = change(lambda r: f_pct(worst_late(r)))
    cpu = change(lambda r: fmt(r["cpu_per_call_pct"], 2))
    loop = change(lambda r: fmt(r["cpu_per_call_split_pct"]["loop"], 2))
    eot = change(lambda r: fmt(r["turns"]["eot_p95_s"], 2))
    return (
        f"{check['label']} vs the sweep at N = {check['n']}: late {late}; server CPU per call "
        f"{cpu} % of a core, of which event loop {loop}; end-of-turn p95 {eot} s."
    )


def render(res: dict[str, Any]) -> str:
    cfg, m = res["config"], res["machine"]
    sweep = res["sweep"]
    when = res["started_utc"]
    lines = [SECTION, ""]
    lines.append(
        f"Run {when} by `bench/sip_load.sh{' --quick' if res['quick'] else ''}` in "
        f"{res['total_seconds']:.0f} s. Machine: {m['nproc']} CPUs, {m['cpu']}; load average "
        f"at start {' / '.join(f'{x:.2f}' for x in res['loadavg_at_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in res['loadavg_at_end'])}"
        + (f" ({res['load_wait']})" if res.get("load_wait") else "")
        + f". SIPp {m['sipp']}, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + "."
    )
    others = res.get("other_processes_at_start") or []
    if others:
        lines[-1] += (
            " Also running at start (shared machine): "
            + "; ".join(f"`{o[:70]}`" for o in others)
            + "."
        )
    lines += [
        "",
        f"Each call: SIPp INVITE (PCMU only), answered at once; after a random 0-"
        f"{cfg['spread_s']:.0f} s pause (so that callers do not all speak at once) the "
        f"caller's RTP to the end of the call: espeak-ng saying "
        + " and ".join(
            f'"{q["text"]}" ({q["seconds"]:.1f} s) at {q["start_s"]:.1f} s' for q in res["caller"]
        )
        + f", silence elsewhere; BYE {cfg['hold_s']:.0f} s after the audio started. INVITEs "
        f"spread evenly over min({cfg['ramp_max_s']:.0f} s, N / {cfg['min_cps']:.0f} per s). "
        "Bot: scripted LLM (a ~6 s answer to each question), "
        f"**{LIGHT.label}** for the capacity figure, a fresh `voicebot serve` per N, default "
        f"settings otherwise (SIP echo canceller on). Sweep layout: "
        + (
            "server pinned to CPU 1; SIPp, tcpdump and the driver on CPU 0."
            if res["layout"] == "pinned"
            else "server, SIPp, tcpdump and the driver all on both CPUs; the server with "
            "`OPENBLAS_NUM_THREADS=1`, as bench/ws_load.py does (OpenBLAS's own thread pool "
            "lets numpy calls on the event loop wait for the other, busy core, and it could "
            "deadlock across a fork(): the check 'OpenBLAS threads as shipped' runs without "
            "it)."
        )
        + (f" Sweep settings: {res['sweep_env']}." if res["sweep_env"] else ""),
        "",
        "Late = a bot RTP packet more than 20 ms behind its schedule. Server: media ticks that "
        "ran over one frame late / packets sent (`voicebot_rtp_late_ticks_total`). Wire: "
        "tcpdump on `lo`, per SSRC, capture time vs RTP timestamp, anchored at the stream's "
        "earliest-relative packet. Never sent: packets due at 50/s over each bot stream's life "
        "but not sent (the server re-anchors its clock when over 1 s behind and skips those "
        "ticks). Media time / call time: the call time the server's media clocks covered "
        "(events) / the wall-clock call time (SIPp); 1.000 = real time. J = RFC 3550 "
        "interarrival jitter. Caller packets: the server's jitter-buffer counts; SIPp send dev "
        "= p99 of |send time - median schedule| of SIPp's own streams (its timing, not the "
        "server's). CPU per call = server CPU seconds / wall call-seconds; event loop = the "
        "main thread, other threads = Whisper, VAD and ONNX/CTranslate2 workers, espeak = "
        "reaped espeak-ng children. End-of-turn = `speech_end` -> `SPEAKING` in call-audio "
        "time (Whisper decodes one turn at a time per process: turns queue at large N).",
        "",
        f"### Sweep ({LIGHT.label}, "
        + ("server on its own core)" if res["layout"] == "pinned" else "both cores)"),
        "",
        timing_table(sweep),
        "",
        cost_table(sweep),
        "",
    ]
    cap = res["capacity"]
    first_bad = next((r for r in sweep if r["verdict"] != "ok"), None)
    cap_text = f"{cap} concurrent calls" if cap is not None else "below the smallest N tried"
    over = (
        f"first N over: {first_bad['n']} ({first_bad['verdict']})"
        if first_bad
        else "no N tried was over"
    )
    goal = "met" if cap is not None and cap >= 100 else "not met"
    eot_n = None
    for r in sweep:
        if (r["turns"]["eot_p95_s"] or 99.0) >= 2.0:
            break
        eot_n = r["n"]
    passed = [r["n"] for r in sweep if r["verdict"] == "ok"]
    above = [n for n in passed if cap is not None and n > cap]
    lines.append(
        f"**Capacity: {cap_text}** with < 0.5 % of bot packets late (server ticks, wire > 20 ms, "
        f"or never sent) and every call completed; {over}"
        + (
            f"; N = {max(above)} passed again (capacity counts only the Ns below the first "
            "failure: the boundary is noisy)"
            if above
            else ""
        )
        + f". Goal >= 100: {goal}."
        + (f" End-of-turn p95 < 2 s up to N = {eot_n}." if eot_n is not None else "")
    )
    if res["checks"]:
        lines += [
            "",
            "### Checks at other settings (N relative to the capacity found above)",
            "",
            timing_table(res["checks"], label=True),
            "",
            cost_table(res["checks"], label=True),
        ]
    notes = compare_checks(sweep, res["checks"]) + notes_for(sweep + res["checks"])
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def other_processes() -> dict[int, str]:
    """Benchmarks, test runs and servers running now that this script did not start."""
    mine = {os.getpid()}
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if re.search(r"bench/|pytest|voicebot serve|sipp |tcpdump", cmd):
                found[int(entry.name)] = cmd.strip()[:120]
    return dict(sorted(found.items()))


def busy_others(sample_s: float = 3.0, min_share: float = 0.05) -> list[str]:
    """Those of `other_processes()` that used over `min_share` of a core in `sample_s`."""
    procs = other_processes()
    before = {}
    for pid in procs:
        with contextlib.suppress(OSError):
            before[pid] = sum(common.proc_cpu(pid))
    time.sleep(sample_s)
    busy = []
    for pid, cpu in before.items():
        with contextlib.suppress(OSError):
            if sum(common.proc_cpu(pid)) - cpu > min_share * sample_s:
                busy.append(procs[pid])
    return busy


def machine() -> dict[str, Any]:
    info = common.machine_info(PACKAGES, kernel=platform.release(), sipp=sipp_version())
    # The key this script's sections read: capacity depends on the vector extensions.
    info["cpu"] = f"{info['cpu_model']} (flags {' '.join(cpu_flags()) or 'none of note'})"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = driver.load_parser(__doc__, SECTION)
    parser.add_argument("--ns", help="comma-separated N to run (no bisection, no checks)")
    parser.add_argument("--layout", choices=("pinned", "shared"), default="shared")
    parser.add_argument("--hold", type=float, help="seconds from answer to BYE")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="extra server env for the sweep (repeatable): VOICEBOT_SIP__ECHO_CANCELLATION=false",
    )  # fmt: skip
    parser.add_argument("--no-checks", action="store_true", help="only the sweep")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(args.render, render, args.results)
    cfg = QUICK if args.quick else FULL
    ns = cfg.ns
    if args.ns:
        ns = tuple(int(x) for x in args.ns.split(","))
        cfg = dataclasses.replace(cfg, bisect_steps=0, checks=(), budget_s=1e9)
    if args.no_checks:
        cfg = dataclasses.replace(cfg, checks=())
    if any("=" not in kv for kv in args.env):
        raise SystemExit("--env takes KEY=VALUE")
    sweep_env = tuple((kv.split("=", 1)[0], kv.split("=", 1)[1]) for kv in args.env)
    if args.hold:
        cfg = dataclasses.replace(cfg, hold_s=args.hold)
    if {0, 1} - os.sched_getaffinity(0):
        raise SystemExit("needs CPUs 0 and 1")
    for tool in (SIPP, TCPDUMP):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} not found")
    log = common.StderrLog()
    load_wait = None
    if args.wait_load is not None:
        # Not while another benchmark, test run or server is busy: they wait for the same
        # load average, and without this test two of them would start together.
        load, waited, quiet = common.wait_for_load(args.wait_load, 20 * 60, log, busy_others)
        limit = f"{args.wait_load:g}"
        load_wait = (
            f"waited {waited:.0f} s for load < {limit}" if quiet
            else f"load {load:.2f} after waiting {waited:.0f} s for < {limit}; ran anyway"
        )  # fmt: skip
        log.restart()
    res: dict[str, Any] = {
        "started_utc": common.utc_now(),
        "quick": args.quick,
        "layout": args.layout,
        "config": asdict(cfg),
        "machine": machine(),
        "loadavg_at_start": common.loadavg(),
        "other_processes_at_start": list(other_processes().values()),
        "load_wait": load_wait,
        "definitions": {"late_s": LATE_S, "goal_late": GOAL_LATE, "rtp_ports": [RTP_MIN, RTP_MAX]},
        "sweep_env": dict(sweep_env),
    }
    base = Path(tempfile.mkdtemp(prefix="sip_load-"))
    try:
        wav = base / "caller.wav"
        res["caller"] = make_caller_wav(wav, cfg.hold_s + 1.0, log)
        # Everything this process starts runs on CPU 0 unless it asks otherwise.
        with common.affinity({0} if args.layout == "pinned" else None):
            sweep = sweep_runs(cfg, LIGHT, args.layout, ns, wav, base, log.started, log, sweep_env)
            res["sweep"] = sweep
            res["capacity"] = driver.capacity(sweep)
            checks = []
            for check in cfg.checks:
                n = max(check.min_n, 5 * round((res["capacity"] or 0) * check.n_of_capacity / 5))
                with common.affinity({0, 1} if check.layout == "shared" else {0}):
                    spec = RunSpec(
                        check.label, check.engines, check.layout, n, check.env, check.spread
                    )
                    checks.append(run_one(spec, cfg, wav, base, log))
            res["checks"] = checks
    finally:
        if args.keep:
            log(f"work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return common.finish(res, render, args, log)


if __name__ == "__main__":
    raise SystemExit(main())
