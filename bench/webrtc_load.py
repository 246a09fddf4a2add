"""WebRTC load benchmark: server CPU per aiortc call, and how many simultaneous calls one
gateway holds with < 1 % late bot frames.

The server is a real `python -m voicebot serve` (`tests/gateway_server.py`): scripted LLM,
tiny.en Whisper, espeak-ng TTS, no greeting, no `vad` events, ICE on 127.0.0.1 only
(`VOICEBOT_WEBRTC__LOOPBACK_ONLY`). One server serves every run of a layout; between runs it
must drain back to 0 calls and 0 peer connections. Admission limits are lifted (max_calls
1000, no refusal on engine backlog): the STT queue of one run would otherwise turn the next
run's callers away; this measures media capacity, and STT saturation shows as replies. Two layouts:

* `pinned` - server on CPU 1, callers on CPU 0 (affinity set before each is started, so every
  thread and child inherits it): the server has one core to itself, the callers' cost cannot
  leak into its figures. The CPU-per-call table and the headline capacity.
* `shared` - both on both CPUs, as a 2-core box that also runs its callers would be; the
  server gets `OPENBLAS_NUM_THREADS=1` (the fork/OpenBLAS deadlock found by bench/ws_load.py).

The callers are aiortc peer connections (ICE loopback-only through `use_loopback_only`) in
separate processes, up to `--calls-per-worker` calls per process, one asyncio (uvloop) loop
each; the processes live for the whole layout. Each caller offers audio + an
`events` data channel over `POST /webrtc/offer` and sends its microphone as Opus packets
encoded once up front with aiortc's own `OpusEncoder` (the server decodes exactly what a
`WavTrack` would send; the callers do not pay an encoder each). The caller's audio is a lead
of 0.2-1.0 s of silence, "What is the balance on my account?" (espeak-ng, 4 voices,
`tests/audiogen.py`), then silence; the scripted reply is about 6 s of bot speech.

Profiles (seconds are the hold time, offer to hang-up):

* `silent`  - the caller sends only silence: the bot never speaks (silence frames still flow
  both ways: Opus decode + 48->16 kHz + VAD in, Opus encode of silence out).
* `talking` - the question twice, 9.5 s apart: the bot talks about 60 % of the call (plus one
  STT + TTS per turn).
* `question` - the question once, then silence (the sweep's profile, 15 s calls).

Late frames are measured on the client. The server's `BotAudioTrack` sends one frame per 20 ms
from the call's start, speech or silence, with pts advancing 960 per frame; so each received
frame k has a schedule: the arrival of the call's first frame + (pts_k - pts_0) / 48 kHz. A
frame arriving more than 20 ms after its schedule is late; a pts never received is lost
(counted with the late ones). Measured twice per call:

* track - frames as the application gets them from `track.recv()` (after aiortc's jitter
  buffer, which holds 4 packets, and its Opus decoder thread): the figure of the verdict;
* RTP - packets as they reach `RTCRtpReceiver` (a hook in the caller processes), before the
  client's jitter buffer and decoder: the server + network part alone.

Jitter = arrival - pts / 48 kHz, relative to the call's earliest frame (so a late first frame
cannot hide later lateness); p99 over all frames. A late frame whose deadline fell inside a
stall of its own caller process's event loop is counted apart and not held against the server
in the verdict (the client may have been what was late). Client health: CPU of the caller processes
(getrusage), their event loops' stalls (a 5 ms timer waking > 5 ms late), and how late the
callers' own 20 ms sends were. Server CPU: /proc/PID/stat utime + stime (all threads) +
cutime + cstime (reaped espeak-ng children), sampled every 0.5 s; per-call figures use the
steady window (every call connected, none hung up yet), minus the idle server's rate.

Sweep: N = 1, 2, 5, 10, 15, 20, 25, 30, ... (`question` profile; `shared` from 5) until late
frames >= 1 %, a call fails, or (pinned) the callers' core saturates (>= 90 % busy); then up to
two (shared: one) bisection runs between the last good and the first bad N. Capacity = the
largest N that passed with every smaller N passing. Each run also reports which side ran out
(server CPU and its event-loop thread vs callers' CPU, lateness at RTP arrival vs at the
track). Also timed alone: each media step of a call (Opus decode/encode, resampling, VAD), to
show how much of the per-call CPU is codec work and how much is the Python around it.

`--quick` (< 1 min): N = 2 silent and talking, then N = 1 and 4, 6-9 s calls. The full run
takes 6-11 minutes (time-boxed). Before a final run on a shared machine use `--wait-load`.

The gateway process, the caller processes, CPU sampling and the sweep over N are the load
scripts' shared driver (bench/load_driver.py); this file has the aiortc caller, its timing
analysis, the component timings, verdict and tables.

    .venv/bin/python bench/webrtc_load.py --quick
    .venv/bin/python bench/webrtc_load.py --wait-load 1.0 --json /tmp/webrtc.json \\
        --results bench/RESULTS.md
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fractions
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

from bench import common
from bench import load_driver as driver
from bench.common import Log, fmt, md_table, pct, publish
from bench.load_driver import LIGHT

RTC_RATE = 48_000
RTC_FRAME = 960  # 20 ms at 48 kHz
FRAME_S = 0.02
LATE_S = 0.020  # one frame period
SPEECH_PAYLOAD_BYTES = 10  # Opus packets of digital silence are 3 bytes; speech is hundreds
CALLS_PER_WORKER = 8
CLIENT_SATURATED_PCT = 90.0  # caller processes' CPU, % of their one core
QUESTION = "What is the balance on my account?"
REPLY_PREFIX = "Your account balance"  # the scripted reply to QUESTION
CALLER_VOICES = ("en-us", "en-gb", "en-us+m4", "en-gb-x-rp+f2")
QUESTION_GAP_S = 9.5  # talking profile: second question this long after the first starts
SEED = 20261125
SERVER_CPUS = {1}
CLIENT_CPUS = {0}
SECTION = "## WebRTC load"
IDLE_BUSY_PCT = 15.0
OTHERS_RETRY_PCT = 25.0
COUNTERS = ("voicebot_engine_errors_total", "voicebot_calls_rejected_total")
PACKAGES = ("aiortc", "aioice", "av", "uvloop", "uvicorn", "faster-whisper", "onnxruntime", "numpy")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Profile:
    name: str
    questions: int  # how many times the caller asks QUESTION
    hold_s: float  # offer -> hang-up
    lead_s: tuple[float, float] = (0.2, 1.0)  # silence before the first question, uniform


@dataclass(frozen=True)
class Sweep:
    layout: str  # "pinned": server CPU 1, callers CPU 0; "shared": both free on both CPUs
    ns: tuple[int, ...]  # tried in order
    bisect_steps: int  # runs spent between the last good and the first bad N
    stop_early: bool  # stop at the first failing N
    until_s: float  # no run of this sweep starts later than this into the benchmark


@dataclass(frozen=True)
class Config:
    cpu_runs: tuple[tuple[Profile, int], ...]  # (profile, N), in the first sweep's layout
    sweep_profile: Profile
    sweeps: tuple[Sweep, ...]
    idle_baseline_s: float  # server idle CPU measured this long before each run
    idle_wait_s: float = 0.0  # before each run, wait up to this long for the machine to idle
    retry_busy: bool = False  # redo (once) a failed run during which others used > 25 %


QUICK = Config(
    cpu_runs=((Profile("silent", 0, 6.0), 2), (Profile("talking", 1, 9.0), 2)),
    sweep_profile=Profile("question", 1, 9.0),
    sweeps=(Sweep("pinned", (1, 4), 0, stop_early=False, until_s=50.0),),
    idle_baseline_s=1.0,
)
FULL_NS = (1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200)
FULL = Config(
    cpu_runs=(
        (Profile("silent", 0, 16.0), 1),
        (Profile("talking", 2, 16.0), 1),
        (Profile("silent", 0, 16.0), 10),
        (Profile("talking", 2, 16.0), 10),
    ),
    # Questions spread over the first 5 s of the call: callers do not all ask at once.
    sweep_profile=Profile("question", 1, 15.0, lead_s=(0.2, 5.0)),
    sweeps=(
        Sweep("pinned", FULL_NS, 2, stop_early=True, until_s=6.5 * 60),
        Sweep("shared", FULL_NS[2:], 1, stop_early=True, until_s=10.5 * 60),
    ),
    idle_baseline_s=2.0,
    idle_wait_s=20.0,
    retry_busy=True,
)
LAYOUTS = {
    "pinned": "server CPU 1, callers CPU 0",
    "shared": "server and callers on both CPUs",
}


@dataclass(frozen=True)
class CallSpec:
    index: int
    connect_at: float  # s after the run's common start
    lead_frames: int  # 20 ms frames of silence before the first question
    voice: int  # index into CALLER_VOICES
    questions: int
    hold_s: float


def connect_spread_s(n: int) -> float:
    """Calls connect uniformly over this window (offers + DTLS handshakes cost CPU)."""
    return 0.0 if n <= 1 else min(4.0, 0.5 + 0.04 * n)


def make_specs(n: int, profile: Profile) -> list[CallSpec]:
    rng = np.random.default_rng([SEED, n, profile.questions])
    spread = connect_spread_s(n)
    connect = np.sort(rng.uniform(0, spread, n)) if n > 1 else np.zeros(1)
    return [
        CallSpec(
            index=i,
            connect_at=float(connect[i]),
            lead_frames=round(rng.uniform(*profile.lead_s) / FRAME_S),
            voice=i % len(CALLER_VOICES),
            questions=profile.questions,
            hold_s=profile.hold_s,
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------- caller audio


@dataclass(frozen=True)
class Bank:
    """Opus payloads (48 kHz, aiortc's encoder settings) the callers send."""

    questions: list[list[bytes]]  # per voice: QUESTION then 0.3 s of silence
    silence: bytes
    speech48k: np.ndarray  # the first voice's QUESTION, 48 kHz int16 (component timings)


def encode_opus(audio48k: np.ndarray) -> list[bytes]:
    """Mono 48 kHz int16 -> one Opus payload per 20 ms, as aiortc would send them."""
    import av
    from aiortc.codecs.opus import OpusEncoder

    encoder = OpusEncoder()
    audio48k = np.concatenate([audio48k, np.zeros(-len(audio48k) % RTC_FRAME, np.int16)])
    payloads: list[bytes] = []
    for k in range(len(audio48k) // RTC_FRAME):
        frame = av.AudioFrame.from_ndarray(
            audio48k[k * RTC_FRAME : (k + 1) * RTC_FRAME].reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = RTC_RATE
        frame.pts = k * RTC_FRAME
        frame.time_base = fractions.Fraction(1, RTC_RATE)
        packets, _ = encoder.encode(frame)
        payloads += packets
    return payloads


def make_bank(log: Log) -> Bank:
    from tests.audiogen import trimmed_speech
    from voicebot.audio.resample import resample_whole

    questions = []
    speech48k = np.zeros(0, np.int16)
    for voice in CALLER_VOICES:
        q16 = trimmed_speech(QUESTION, voice)
        q48 = resample_whole(q16, 16000, RTC_RATE)
        speech48k = speech48k if len(speech48k) else q48
        questions.append(encode_opus(np.concatenate([q48, np.zeros(RTC_RATE * 3 // 10, np.int16)])))
    silence = encode_opus(np.zeros(RTC_RATE, np.int16))[-1]
    secs = [len(q) * FRAME_S for q in questions]
    log(
        f"caller audio: {QUESTION!r} in {len(questions)} voices, {min(secs):.2f}-{max(secs):.2f}"
        f" s with its 0.3 s tail; silence packet {len(silence)} bytes"
    )
    return Bank(questions, silence, speech48k)


def caller_timeline(spec: CallSpec, bank: Bank) -> tuple[list[bytes], list[int]]:
    """The call's Opus payloads from media start, and the frame index ending each question."""
    payloads = [bank.silence] * spec.lead_frames
    ends: list[int] = []
    question = bank.questions[spec.voice]
    gap = round(QUESTION_GAP_S / FRAME_S)
    for q in range(spec.questions):
        start = spec.lead_frames + q * gap
        payloads += [bank.silence] * (start - len(payloads))
        payloads += question
        ends.append(start + len(question) - round(0.3 / FRAME_S))
    return payloads, ends


# --------------------------------------------------------------------------- caller side


def install_rtp_hook() -> None:
    """Record (arrival, RTP timestamp, payload bytes) of every packet a receiver gets, when
    the receiver has a `_bench_rtp` list (callers only set it on their own receivers)."""
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    original = RTCRtpReceiver._handle_rtp_packet
    if getattr(original, "_bench_hook", False):
        return

    async def handle(self: Any, packet: Any, arrival_time_ms: int) -> None:
        log = getattr(self, "_bench_rtp", None)
        if log is not None:
            log.append((time.monotonic(), packet.timestamp, len(packet.payload)))
        await original(self, packet, arrival_time_ms)

    handle._bench_hook = True  # type: ignore[attr-defined]
    RTCRtpReceiver._handle_rtp_packet = handle  # type: ignore[method-assign]


def make_packet_track(payloads: list[bytes], silence: bytes, ends: list[int]) -> Any:
    """A live audio track of pre-encoded Opus payloads, one per 20 ms, then silence."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    time_base = fractions.Fraction(1, RTC_RATE)
    end_set = set(ends)

    class PacketTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.k = 0
            self.start: float | None = None
            self.said_at: list[float] = []  # when each question's last frame went out
            self.late_sends = 0  # sends more than 20 ms behind the caller's own clock

        async def recv(self) -> av.Packet:
            if self.readyState != "live":
                raise MediaStreamError
            now = time.monotonic()
            if self.start is None:
                self.start = now
            due = self.start + self.k * FRAME_S
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > LATE_S:
                self.late_sends += 1
            payload = payloads[self.k] if self.k < len(payloads) else silence
            if self.k in end_set:
                self.said_at.append(time.monotonic())
            packet = av.Packet(payload)
            packet.pts = self.k * RTC_FRAME
            packet.time_base = time_base
            self.k += 1
            return packet

    return PacketTrack()


def unwrap32(stamps: np.ndarray) -> np.ndarray:
    """RTP timestamps (uint32, wrapping) as increasing int64 relative to the first."""
    if stamps.size == 0:
        return stamps.astype(np.int64)
    diffs = np.diff(stamps.astype(np.int64))
    diffs = (diffs + 2**31) % 2**32 - 2**31
    return np.concatenate([[0], np.cumsum(diffs)])


def timing(arrivals: Sequence[float], stamps: np.ndarray, clock0: float) -> dict[str, Any]:
    """Lateness and jitter of frames with arrival times and 48 kHz timestamps (relative)."""
    t = np.asarray(arrivals, dtype=np.float64)
    if t.size == 0:
        empty = np.zeros(0, np.float32)
        return {
            "frames": 0,
            "expected": 0,
            "lost": 0,
            "late": 0,
            "arrival": empty,
            "lateness": empty,
            "jitter": empty,
        }
    sched = stamps.astype(np.float64) / RTC_RATE
    lateness = t - (t[0] + sched - sched[0])
    offsets = t - sched
    jitter = offsets - offsets.min()
    unique = np.unique(stamps)
    expected = int((unique[-1] - unique[0]) // RTC_FRAME) + 1
    return {
        "frames": int(t.size),
        "expected": expected,
        "lost": max(0, expected - int(unique.size)),
        "late": int((lateness > LATE_S).sum()),
        "arrival": (t - clock0).astype(np.float32),
        "lateness": lateness.astype(np.float32),
        "jitter": jitter.astype(np.float32),
    }


async def one_call(
    http: Any, base_url: str, spec: CallSpec, bank: Bank, clock0: float
) -> dict[str, Any]:
    """One aiortc caller; returns its analysed figures (times relative to `clock0`)."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    delay = clock0 + spec.connect_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    began = time.monotonic()
    payloads, ends = caller_timeline(spec, bank)
    track_out = make_packet_track(payloads, bank.silence, ends)
    pc = RTCPeerConnection()
    events: list[tuple[float, dict[str, Any]]] = []
    frames: list[tuple[float, int]] = []
    readers: list[asyncio.Task[None]] = []
    channel = pc.createDataChannel("events")

    @channel.on("message")
    def on_message(message: str) -> None:
        events.append((time.monotonic(), json.loads(message)))

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def read() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await track.recv()
                    frames.append((time.monotonic(), int(frame.pts)))

        readers.append(asyncio.create_task(read()))

    pc.addTrack(track_out)
    rtp: list[tuple[float, int, int]] = []
    for receiver in pc.getReceivers():
        receiver._bench_rtp = rtp  # type: ignore[attr-defined]
    error: str | None = None
    offer_s = math.nan
    try:
        await pc.setLocalDescription(await pc.createOffer())
        t_offer = time.monotonic()
        response = await http.post(
            f"{base_url}/webrtc/offer",
            json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
        )
        offer_s = time.monotonic() - t_offer
        if response.status_code != 200:
            raise RuntimeError(f"offer answered {response.status_code}: {response.text[:200]}")
        await pc.setRemoteDescription(RTCSessionDescription(**response.json()))
        remaining = began + spec.hold_s - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        ended = time.monotonic()
        with contextlib.suppress(Exception):
            await pc.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    track_stats = timing(
        [a for a, _ in frames], np.asarray([p for _, p in frames], dtype=np.int64), clock0
    )
    rtp_stats = timing([a for a, _, _ in rtp], unwrap32(np.asarray([s for _, s, _ in rtp])), clock0)
    speech_at = [a for a, _, size in rtp if size > SPEECH_PAYLOAD_BYTES]
    reply_latency = []
    for said in track_out.said_at:
        after = [a for a in speech_at if a > said]
        if after:
            reply_latency.append(after[0] - said)
    kinds = [e.get("type") for _, e in events]
    return {
        "index": spec.index,
        "error": error,
        "offer_s": offer_s,
        "connect_s": (rtp[0][0] - began) if rtp else None,
        "duration_s": ended - began,
        "started": began - clock0,
        "ended": ended - clock0,
        "track": track_stats,
        "rtp": rtp_stats,
        "speech_packets": len(speech_at),
        "questions_said": len(track_out.said_at),
        "said_at": [t - clock0 for t in track_out.said_at],
        "reply_latency": reply_latency,
        "replies": sum(
            1
            for _, e in events
            if e.get("type") == "bot_text" and str(e.get("text", "")).startswith(REPLY_PREFIX)
        ),
        "transcripts": [str(e.get("text", "")) for _, e in events if e.get("type") == "transcript"],
        "errors": [str(e.get("message", e))[:200] for _, e in events if e.get("type") == "error"],
        "call_started": "call_started" in kinds,
        "late_sends": track_out.late_sends,
        "sends": track_out.k,
    }


async def rtc_calls(
    bank: Bank,
    batch: tuple[str, list[CallSpec]],
    clock0: float,
    stalls: list[tuple[float, float]],
) -> list[dict[str, Any]]:
    """A caller process's share of a run (`CallerPool`): its calls, each late frame whose
    deadline fell in a stall of this process's event loop counted as `late_in_stall`."""
    import httpx

    base_url, specs = batch
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        calls = await asyncio.gather(*(one_call(http, base_url, s, bank, clock0) for s in specs))
    if stalls:
        for call in calls:
            for key in ("track", "rtp"):
                stats = call[key]
                late = stats["lateness"] > LATE_S
                deadline = (stats["arrival"] - stats["lateness"] + LATE_S)[late]
                stats["late_in_stall"] = int(driver.in_stalls(stalls, deadline).sum())
    return list(calls)


def caller_setup() -> None:
    """Once per caller process: aiortc imported (before the first run), ICE on loopback
    only, the RTP arrival hook."""
    import aiortc  # noqa: F401

    from voicebot.gateway.webrtc.signalling import use_loopback_only

    use_loopback_only()
    install_rtp_hook()


# --------------------------------------------------------------------------- components


def component_costs(bank: Bank, rounds: int = 400) -> list[dict[str, Any]]:
    """CPU time (this thread) per 20 ms frame of each media step the server runs per call,
    timed alone on the server's core: what a call costs before aiortc's and asyncio's own
    Python (RTP, SRTP, jitter buffer, thread hops) and the agent's bookkeeping."""
    import av
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    from voicebot.audio.resample import StreamingResampler
    from voicebot.gateway.webrtc.media import frame_to_mono
    from voicebot.models.vad.silero import SileroVad

    time_base = fractions.Fraction(1, RTC_RATE)
    speech48k = bank.speech48k
    speech_packets = [p for p in bank.questions[0] if len(p) > SPEECH_PAYLOAD_BYTES]
    frames48 = [
        speech48k[i : i + RTC_FRAME] for i in range(0, len(speech48k) - RTC_FRAME + 1, RTC_FRAME)
    ]
    silence48 = np.zeros(RTC_FRAME, np.int16)

    def audio_frame(samples: np.ndarray, k: int) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RTC_RATE
        frame.pts = k * RTC_FRAME
        frame.time_base = time_base
        return frame

    decoder = OpusDecoder()
    decoded = [
        decoder.decode(JitterFrame(p, k * RTC_FRAME))[0] for k, p in enumerate(speech_packets)
    ]
    down = StreamingResampler(RTC_RATE, 16000)
    up = StreamingResampler(16000, RTC_RATE)
    vad = SileroVad.shared()
    vad_stream = vad.new_stream()
    windows = vad_stream.push(down.process(np.concatenate(frames48)))
    mono16 = [down.process(f) for f in frames48]
    enc_silence, enc_speech = OpusEncoder(), OpusEncoder()

    steps: list[tuple[str, str, float, Callable[[int], object]]] = [
        (
            "in",
            "Opus decode (aiortc `OpusDecoder`, to stereo s16)",
            1.0,
            lambda k: decoder.decode(
                JitterFrame(speech_packets[k % len(speech_packets)], k * RTC_FRAME)
            ),
        ),
        (
            "in",
            "`frame_to_mono` (stereo -> mono int16)",
            1.0,
            lambda k: frame_to_mono(decoded[k % len(decoded)]),
        ),
        (
            "in",
            "resample 48 -> 16 kHz (`StreamingResampler`)",
            1.0,
            lambda k: down.process(frames48[k % len(frames48)]),
        ),
        (
            "in",
            "Silero VAD, 1 stream (32 ms window, x 20/32)",
            20 / 32,
            lambda k: vad.run_batch([vad_stream], [windows[k % len(windows)]]),
        ),
        (
            "out",
            "`av.AudioFrame.from_ndarray` (`BotAudioTrack`)",
            1.0,
            lambda k: audio_frame(silence48, k),
        ),
        (
            "out",
            "Opus encode, silence (aiortc `OpusEncoder` + its stereo resampler)",
            1.0,
            lambda k: enc_silence.encode(audio_frame(silence48, k)),
        ),
        (
            "out: talking",
            "Opus encode, speech",
            1.0,
            lambda k: enc_speech.encode(audio_frame(frames48[k % len(frames48)], k)),
        ),
        (
            "out: talking",
            "resample 16 -> 48 kHz (`BotAudioTrack.write`)",
            1.0,
            lambda k: up.process(mono16[k % len(mono16)]),
        ),
    ]
    out = []
    for side, name, scale, fn in steps:
        for k in range(20):  # warm
            fn(k)
        t0 = time.thread_time_ns()
        for k in range(rounds):
            fn(k)
        us = (time.thread_time_ns() - t0) / rounds / 1000 * scale
        out.append(
            {"side": side, "step": name, "us_per_frame": us, "core_pct_per_call": us * 50 / 1e4}
        )
    return out


# --------------------------------------------------------------------------- server side


def cpu_rate(sampler: driver.CpuSampler, t0: float, t1: float) -> dict[str, float] | None:
    """Server CPU (own, children, main thread: cores) and machine busy (cores) between t0
    and t1 (None for under a second of samples)."""
    w = sampler.window(t0, t1, min_s=1.0)
    if w is None:
        return None
    return {
        "seconds": w["seconds"],
        "server": w["own"],
        "children": w["children"],
        "machine": (os.cpu_count() or 1) * w["machine"],
        "main_thread": w["main_thread"],
    }


def scrape_metrics(http: str) -> dict[str, float]:
    """The VAD and end-of-turn figures (summed over labels, no buckets) and `COUNTERS`."""
    out: dict[str, float] = {}
    for name, samples in common.Metrics.scrape(http).samples.items():
        wanted = name.startswith(("voicebot_vad_", "voicebot_end_of_turn"))
        for labels, value in samples:
            if (wanted and "le" not in labels) or name in COUNTERS:
                out[name] = out.get(name, 0.0) + value
    return out


def healthz(http: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{http}/healthz", timeout=10, trust_env=False).json()


def wait_drained(http: str, timeout_s: float) -> tuple[dict[str, Any], float]:
    """Wait until the server has no call and no peer connection; (last health, waited s)."""
    t0 = time.monotonic()
    while True:
        h = healthz(http)
        if (h.get("active_calls", 0) == 0 and h.get("webrtc_peers", 0) == 0) or (
            time.monotonic() - t0 > timeout_s
        ):
            return h, time.monotonic() - t0
        time.sleep(0.25)


# --------------------------------------------------------------------------- one run


def ms(value: float | None) -> float | None:
    return None if value is None else 1000 * value


def timing_summary(
    calls: Sequence[dict[str, Any]], key: str, window: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Late + lost share, lateness and jitter over all calls' frames (`key`: track or rtp);
    with `window`, the late share of the frames that arrived inside it too."""
    lateness = np.concatenate([c[key]["lateness"] for c in calls] or [np.zeros(0)])
    jitter = np.concatenate([c[key]["jitter"] for c in calls] or [np.zeros(0)])
    expected = sum(c[key]["expected"] for c in calls)
    late = sum(c[key]["late"] for c in calls)
    lost = sum(c[key]["lost"] for c in calls)
    out: dict[str, Any] = {
        "frames": sum(c[key]["frames"] for c in calls),
        "expected": expected,
        "late": late,
        "lost": lost,
        "late_pct": 100 * (late + lost) / expected if expected else None,
        "lateness_ms": {
            "p50": ms(pct(lateness, 50)),
            "p99": ms(pct(lateness, 99)),
            "max": ms(float(lateness.max()) if lateness.size else None),
        },
        "jitter_ms": {
            "p50": ms(pct(jitter, 50)),
            "p99": ms(pct(jitter, 99)),
            "max": ms(float(jitter.max()) if jitter.size else None),
        },
        "jitter_over_20ms_pct": 100 * float(np.mean(jitter > LATE_S)) if jitter.size else None,
        "calls_with_late": sum(1 for c in calls if c[key]["late"] + c[key]["lost"]),
        # Late frames whose deadline fell while the caller process's own loop was stalled:
        # the client may have been what was late. Not held against the server.
        "late_in_client_stall": sum(c[key].get("late_in_stall", 0) for c in calls),
    }
    out["late_pct_server"] = (
        100 * (late + lost - out["late_in_client_stall"]) / expected if expected else None
    )
    arrival = np.concatenate([c[key]["arrival"] for c in calls] or [np.zeros(0)])
    if arrival.size:
        # When the late frames arrived: per second of the run, late frames / all frames.
        sec = np.floor(arrival).astype(np.int64)
        sec -= sec.min()
        frames_per_s = np.bincount(sec)
        late_per_s = np.bincount(sec, weights=(lateness > LATE_S).astype(np.float64))
        out["late_by_second"] = [
            [int(i + np.floor(arrival.min())), int(late_per_s[i]), int(frames_per_s[i])]
            for i in range(len(frames_per_s))
            if frames_per_s[i]
        ]
    if window is not None:
        inside = (arrival >= window[0]) & (arrival <= window[1])
        out["steady_window_s"] = list(window)
        out["steady_frames"] = int(inside.sum())
        out["steady_late_pct"] = (
            100 * float((lateness[inside] > LATE_S).mean()) if inside.any() else None
        )
    return out


def run_load(
    n: int,
    profile: Profile,
    layout: str,
    http: str,
    server_pid: int,
    log_path: Path,
    pool: driver.CallerPool,
    cfg: Config,
    calls_per_worker: int,
    log: Log,
) -> dict[str, Any]:
    """N simultaneous calls of `profile` against the running server; every figure of the run."""
    health_before, drain_wait = wait_drained(http, 30)
    workers = max(1, math.ceil(n / calls_per_worker))
    pool.ensure(workers)
    specs = make_specs(n, profile)
    load_start = common.loadavg()
    log_offset = log_path.stat().st_size
    metrics0 = scrape_metrics(http)

    # The idle server's own CPU rate, subtracted from the per-call figures.
    idle0, t_idle0 = common.proc_cpu(server_pid)[0], time.monotonic()
    time.sleep(cfg.idle_baseline_s)
    idle_rate = (common.proc_cpu(server_pid)[0] - idle0) / (time.monotonic() - t_idle0)

    self0 = resource.getrusage(resource.RUSAGE_SELF)
    t_run = time.perf_counter()
    clock0 = time.monotonic() + 0.3
    with driver.CpuSampler(server_pid, 0.5) as sampler:
        batches = [(http, specs[w::workers]) for w in range(workers)]
        results = pool.run(batches, clock0, profile.hold_s + connect_spread_s(n) + 120)
    wall = time.monotonic() - clock0
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    health_after, drain_s = wait_drained(http, 30)
    metrics1 = scrape_metrics(http)
    with log_path.open("rb") as fh:
        fh.seek(log_offset)
        log_text = fh.read().decode(errors="replace")

    calls = sorted((c for r in results for c in r["calls"]), key=lambda c: c["index"])
    failed = [c for c in calls if c["error"] or not c["track"]["frames"]]
    # Steady window: every call connected, none hung up yet.
    last_connect = max(c["started"] + (c["connect_s"] or 0.0) for c in calls)
    first_hangup = min(c["ended"] for c in calls)
    steady_rel = (last_connect + 1.0, first_hangup - 0.2)
    track = timing_summary(calls, "track", steady_rel)
    rtp = timing_summary(calls, "rtp", steady_rel)
    steady = cpu_rate(sampler, clock0 + last_connect + 1.0, clock0 + first_hangup - 0.2)
    whole = cpu_rate(sampler, clock0, clock0 + wall + 1.0)
    window = (
        steady
        or whole
        or {"seconds": wall, "server": 0.0, "children": 0.0, "machine": 0.0, "main_thread": 0.0}
    )
    call_seconds = sum(c["duration_s"] for c in calls)
    client_cpu = sum(r["cpu_s"] for r in results)
    orchestrator_cpu = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
    server_cores = window["server"] + window["children"]
    per_call_server = 100 * max(0.0, server_cores - idle_rate) / n
    client_pct = 100 * client_cpu / wall
    whole_w = whole or window
    others = 100 * max(  # sampling windows differ slightly: no negative noise
        0.0,
        whole_w["machine"]
        - whole_w["server"]
        - whole_w["children"]
        - (client_cpu + orchestrator_cpu) / wall,
    )
    sends = sum(c["sends"] for c in calls)
    speech_packets = sum(c["speech_packets"] for c in calls)
    latencies = [x for c in calls for x in c["reply_latency"]]
    said_at = sorted(x for c in calls for x in c["said_at"])
    questions = sum(c["questions_said"] for c in calls)

    def delta(name: str) -> float:
        return metrics1.get(name, 0.0) - metrics0.get(name, 0.0)

    vad_batches = delta("voicebot_vad_batch_size_count")
    vad_windows = delta("voicebot_vad_batch_size_sum")
    problems = driver.log_problems(log_text)
    res: dict[str, Any] = {
        "n": n,
        "layout": layout,
        "profile": profile.name,
        "hold_s": profile.hold_s,
        "questions_per_call": profile.questions,
        "workers": workers,
        "connect_spread_s": connect_spread_s(n),
        "loadavg_at_start": load_start,
        "loadavg_at_end": common.loadavg(),
        "wall_s": wall,
        "run_s": time.perf_counter() - t_run,
        "calls_ok": n - len(failed),
        "call_errors": [c["error"] for c in failed if c["error"]][:5],
        "mean_call_s": float(np.mean([c["duration_s"] for c in calls])),
        "offer_s": {
            "p50": pct([c["offer_s"] for c in calls], 50),
            "max": float(np.nanmax([c["offer_s"] for c in calls])),
        },
        "connect_s": {
            "p50": pct([c["connect_s"] for c in calls if c["connect_s"]], 50),
            "max": max((c["connect_s"] or 0.0 for c in calls), default=None),
        },
        "track": track,
        "rtp": rtp,
        "bot_talking_pct": 100 * speech_packets / max(1, rtp["frames"]),
        "questions_said": questions,
        "replies": sum(c["replies"] for c in calls),
        "questions_end_at_s": [round(x, 2) for x in said_at],
        "reply_latency_s": common.dist(latencies),
        "transcripts_sample": sorted({t for c in calls for t in c["transcripts"]})[:5],
        "error_events": [e for c in calls for e in c["errors"]][:5],
        "calls_without_call_started": sum(1 for c in calls if not c["call_started"]),
        "server_window": "steady" if steady else "whole run",
        "server_window_s": window["seconds"],
        "server_idle_cpu_pct": 100 * idle_rate,
        "server_cpu_pct": 100 * server_cores,
        "server_children_cpu_pct": 100 * window["children"],
        "server_loop_thread_cpu_pct": 100 * window["main_thread"],
        "server_cpu_pct_per_call": per_call_server,
        "server_cpu_s_per_call_minute": 60 * per_call_server / 100,
        "server_cpu_pct_whole_run": 100 * (whole_w["server"] + whole_w["children"]),
        "server_cpu_per_call_second_pct": 100
        * (whole_w["server"] + whole_w["children"])
        * wall
        / max(1e-9, call_seconds),
        "server_peak_rss_mb": common.proc_peak_rss_mb(server_pid),
        "client_cpu_pct": client_pct,
        "client_cpu_pct_per_call": client_pct / n,
        # Pinned, the callers have one core: near 100 % of it their timing is not to be trusted.
        "client_saturated": layout == "pinned" and client_pct >= CLIENT_SATURATED_PCT,
        "client_stalls": driver.stall_summary(results),
        "client_late_sends_pct": 100 * sum(c["late_sends"] for c in calls) / max(1, sends),
        "machine_cpu_pct": 100 * whole_w["machine"],
        "others_cpu_pct": others,
        "vad_batch_mean": vad_windows / vad_batches if vad_batches else None,
        "vad_us_per_window": 1e6
        * delta("voicebot_vad_window_seconds_sum")
        / max(1.0, delta("voicebot_vad_window_seconds_count")),
        "engine_errors": delta("voicebot_engine_errors_total"),
        "rejected": delta("voicebot_calls_rejected_total"),
        "health_before": health_before,
        "health_after": health_after,
        "drain_s": drain_s,
        "drain_wait_before_s": drain_wait,
        "server_log_problems": problems[:10],
        "server_log_problem_count": len(problems),
    }
    res["verdict"] = verdict(res)
    log(
        f"{layout} {profile.name:8} N={n:<4} late {fmt(track['late_pct'], 2)} % "
        f"(RTP {fmt(rtp['late_pct'], 2)} %, steady {fmt(track['steady_late_pct'], 2)} %) of "
        f"{track['expected']} frames, jitter p99 {fmt(track['jitter_ms']['p99'])} ms; server "
        f"{res['server_cpu_pct']:.0f} % (loop {res['server_loop_thread_cpu_pct']:.0f} %, "
        f"{per_call_server:.2f} %/call, "
        f"{res['server_window']}); clients {client_pct:.0f} %; others {others:.0f} %; "
        f"replies {res['replies']}/{questions}; {res['run_s']:.0f} s: {res['verdict']}"
    )
    return res


def verdict(res: dict[str, Any]) -> str:
    """'ok', or every reason this N is over the limit."""
    if res["calls_ok"] < res["n"]:
        return "calls failed"
    reasons = []
    late = res["track"].get("late_pct_server", res["track"]["late_pct"])
    if late is None or late >= 1.0:
        reasons.append("late >= 1 %")
    if res["client_saturated"]:
        reasons.append("clients saturated")
    return ", ".join(reasons) or "ok"


# --------------------------------------------------------------------------- report


def cpu_table(rows: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            r["profile"], r["n"], fmt(r["hold_s"], 0), fmt(r["bot_talking_pct"], 0),
            f"{r['replies']}/{r['questions_said']}", fmt(r["server_cpu_pct"], 1),
            fmt(r["server_idle_cpu_pct"], 1), fmt(r["server_loop_thread_cpu_pct"], 1),
            f"**{r['server_cpu_pct_per_call']:.2f}**", fmt(r["server_cpu_s_per_call_minute"], 2),
            fmt(r["server_children_cpu_pct"], 2), fmt(r["server_cpu_per_call_second_pct"], 2),
            fmt(r["client_cpu_pct_per_call"], 2), fmt(r["vad_batch_mean"], 1),
            fmt(r["vad_us_per_window"], 0), fmt(r["track"]["late_pct"], 2),
            fmt(r["track"]["jitter_ms"]["p99"]), fmt(r["others_cpu_pct"], 0),
        ]
        for r in rows
    ]  # fmt: skip
    return md_table(
        ["profile", "N", "call s", "bot talking %", "balance replies", "server CPU % of a core",
         "idle server %", "loop thread %", "server % / call", "CPU s / call-minute",
         "of which espeak-ng %", "server % / call (whole run)", "client % / call",
         "VAD batch mean", "VAD µs / window", "late %", "jitter p99 ms", "others %"],
        body,
    )  # fmt: skip


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        t, p = r["track"], r["rtp"]
        late = fmt(t["late_pct"], 2)
        in_stall = (
            fmt(100 * t["late_in_client_stall"] / max(1, t["expected"]), 2)
            if "late_in_client_stall" in t
            else "-"
        )
        body.append([
            r["n"], f"{r['calls_ok']}/{r['n']}", t["expected"],
            f"**{late}**" if r["verdict"] == "ok" else late, in_stall,
            fmt(t.get("steady_late_pct"), 2), t["lost"], t["calls_with_late"],
            fmt(t["lateness_ms"]["p99"]), fmt(t["lateness_ms"]["max"], 0),
            fmt(t["jitter_ms"]["p99"]), fmt(p["late_pct"], 2), fmt(p["jitter_ms"]["p99"]),
            f"{r['replies']}/{r['questions_said']}", fmt(r["reply_latency_s"]["p50"], 2),
            fmt(r["reply_latency_s"]["max"], 2), fmt(r["server_cpu_pct"], 0),
            fmt(r["server_loop_thread_cpu_pct"], 0), fmt(r["server_cpu_pct_per_call"], 2),
            fmt(r["client_cpu_pct"], 0),
            f"{r['client_stalls']['count']} / {r['client_stalls']['max_ms']:.0f}",
            fmt(r["client_late_sends_pct"], 2), fmt(r["others_cpu_pct"], 0),
            fmt(r["vad_batch_mean"], 1), r["verdict"],
        ])  # fmt: skip
    return md_table(
        ["N", "calls ok", "bot frames", "late (> 20 ms) + lost %",
         "of which due in a client stall %", "late % in the steady window", "lost",
         "calls with a late frame", "lateness p99 ms", "max ms", "jitter p99 ms", "RTP late %",
         "RTP jitter p99 ms", "balance replies", "reply latency p50 s", "max s",
         "server CPU % of a core", "loop thread %", "server % / call",
         "clients CPU % of their core", "client loop stalls / max ms", "client late sends %",
         "others %", "VAD batch mean", "verdict"],
        body,
    )  # fmt: skip


def saturation_note(rows: Sequence[dict[str, Any]], cap: int | None) -> str:
    """Which side ran out first, from the first failing N (or the largest N tried)."""
    failing = [r for r in sorted(rows, key=lambda r: r["n"]) if r["verdict"] != "ok"]
    r = failing[0] if failing else max(rows, key=lambda r: r["n"], default=None)
    if r is None:
        return "no runs"
    server, client = r["server_cpu_pct"], r["client_cpu_pct"]
    loop, machine = r["server_loop_thread_cpu_pct"], r["machine_cpu_pct"]
    track, rtp = r["track"]["late_pct"] or 0.0, r["rtp"]["late_pct"] or 0.0
    server_full = loop >= 90 or (r["layout"] == "pinned" and server >= 90)
    if not failing:
        side = "nothing failed up to the largest N tried"
    elif r["verdict"] == "calls failed":
        side = "calls failed (see call_errors in the JSON)"
    elif r["client_saturated"] and not server_full:
        side = "the callers' core saturated first"
    elif server_full and not r["client_saturated"]:
        side = (
            "the server's event-loop thread saturated first (one thread: the GIL)"
            if loop >= 90
            else "the server's core saturated first"
        )
    elif server_full:
        side = "both cores saturated"
    elif machine >= 180:
        side = f"both CPUs were busy ({machine:.0f} % of a core in all)"
    else:
        side = "no core was saturated on average (lateness from scheduling bursts)"
    where = "RTP arrival too" if rtp >= 1.0 else "not at RTP arrival (client-side delay)"
    return (
        f"At N = {r['n']}: server {server:.0f} % of a core (loop thread "
        f"{r['server_loop_thread_cpu_pct']:.0f} %), callers {client:.0f} %, "
        f"late {track:.2f} % at the track, {rtp:.2f} % at RTP arrival ({where}); {side}. "
        f"Capacity: {cap if cap is not None else 'none'}."
    )


def burst_note(r: dict[str, Any]) -> str | None:
    """Where a failing run's late frames fell in time, next to when the questions ended."""
    late_pct = r["track"]["late_pct"]
    by_second = r["track"].get("late_by_second") or []
    if late_pct is None or late_pct < 1.0 or not by_second:
        return None
    bad = [sec for sec, late, frames in by_second if frames and late / frames > 0.05]
    quiet = [sec for sec, late, frames in by_second if frames and late == 0]
    ends = r["questions_end_at_s"]
    if not bad:
        return None
    return (
        f"`{r['profile']}` N = {r['n']}: {late_pct:.1f} % late. Seconds of the run with > 5 % "
        f"late frames: {bad}; seconds with none late: {len(quiet)} of {len(by_second)}. The "
        f"callers' questions ended at {', '.join(f'{x:.1f}' for x in ends)} s; reply latency "
        f"p50 {fmt(r['reply_latency_s']['p50'], 2)} s (server CPU over the steady window "
        f"{r['server_cpu_pct']:.0f} % of its core)."
    )


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    cpu_rows = report["cpu_runs"]
    phases = report["phases"]
    pk = m["packages"]
    silent = [r for r in cpu_rows if r["profile"] == "silent"]
    talking = [r for r in cpu_rows if r["profile"] != "silent"]
    big_s = max(silent, key=lambda r: r["n"], default=None)
    big_t = max(talking, key=lambda r: r["n"], default=None)
    cpu_layout = LAYOUTS[phases[0]["layout"]] if phases else "-"
    lines = [
        SECTION,
        "",
        f"Run {m['date_utc']} by `bench/webrtc_load.py{' --quick' if report['quick'] else ''}` "
        f"in {report['run_s']:.0f} s. Machine: {m['nproc']} CPUs, {m['cpu_model']}; load average "
        f"before {' / '.join(str(x) for x in report['loadavg_before'])}"
        f"{report['load_note']}, at the end {' / '.join(str(x) for x in report['loadavg_end'])}."
        f" Python {m['python']}, aiortc {pk['aiortc']}, aioice {pk['aioice']}, av {pk['av']}, "
        f"uvloop {pk['uvloop']}.",
        "",
        "Server: `python -m voicebot serve` (tiny.en, espeak-ng, scripted LLM, no greeting, no "
        "`vad` events, ICE host candidates on 127.0.0.1 only), one process for every run of a "
        "layout. Callers: aiortc peer connections in "
        f"{report['calls_per_worker']}-call processes (one uvloop each), sending pre-encoded "
        "Opus (aiortc's encoder settings) and decoding the bot's track as a browser would. "
        f"Caller audio: a lead of silence, then {QUESTION!r} (espeak-ng, 4 voices), then "
        "silence; the scripted reply is about 6 s of bot speech. Server CPU = utime + stime + "
        "reaped children (espeak-ng) from /proc, over the steady window (all calls connected, "
        "none hung up), minus the idle server's rate; 'loop thread' = the server's main thread "
        "alone (the event loop: aiortc, pacing, the agent); 'others %' = CPU the rest of the "
        "machine used meanwhile (% of a core; the machine is shared).",
        "",
        "### Server CPU per call",
        "",
        f"Layout: {cpu_layout}. `silent`: the caller sends silence, the bot never speaks (Opus "
        "decode + 48 to 16 kHz + VAD in, Opus encode of silence out). `talking`: the question "
        + ("twice, 9.5 s apart" if big_t and big_t["questions_per_call"] > 1 else "once")
        + ", after 0.2-1.0 s of silence (with the connections spread over up to a second, the "
        "callers' questions end within about 1.5 s of each other): the bot talks for the share "
        "of frames given (plus Whisper tiny.en and espeak-ng once per turn).",
        "",
        cpu_table(cpu_rows),
        "",
    ]
    for r in cpu_rows:
        burst = burst_note(r)
        if burst:
            lines += [burst, ""]
    if big_s and big_t:
        lines += [
            f"Per call at N = {big_s['n']}: **{big_s['server_cpu_pct_per_call']:.2f} % of a "
            f"core with the bot silent, {big_t['server_cpu_pct_per_call']:.2f} % with it "
            f"talking {big_t['bot_talking_pct']:.0f} % of the time** (by CPU alone one core "
            f"would carry about {100 / max(1e-9, big_s['server_cpu_pct_per_call']):.0f} silent "
            f"or {100 / max(1e-9, big_t['server_cpu_pct_per_call']):.0f} talking calls). The "
            f"callers cost {big_s['client_cpu_pct_per_call']:.2f} % / "
            f"{big_t['client_cpu_pct_per_call']:.2f} % of a core per call.",
            "",
        ]
    comps = report["components"]
    base = sum(c["core_pct_per_call"] for c in comps if not c["side"].endswith("talking"))
    extra = sum(c["core_pct_per_call"] for c in comps if c["side"].endswith("talking"))
    lines += [
        "Where it goes: each media step of a call timed alone (thread CPU time, mean over 400 "
        "frames, on the server's core before the server starts):",
        "",
        md_table(
            ["direction", "step", "µs per 20 ms frame", "% of a core per call"],
            [
                [c["side"], c["step"], fmt(c["us_per_frame"], 1), fmt(c["core_pct_per_call"], 3)]
                for c in comps
            ],
        ),
        "",
        f"Sum: {base:.2f} % of a core per call with the bot silent, {base + extra:.2f} % "
        "while it talks.",
    ]
    if big_s:
        lines += [
            f" Measured at N = {big_s['n']} (silent): {big_s['server_cpu_pct_per_call']:.2f} % "
            f"per call, so about {big_s['server_cpu_pct_per_call'] - base:.1f} % of a core per "
            "call is the Python around these steps: aiortc's RTP/SRTP/ICE handling, its jitter "
            "buffer and a thread hop per frame each way (Opus decoding on a per-call thread, "
            "encoding through the default executor), the pacing and the agent's per-frame work."
        ]
    lines[-1] = lines[-1].lstrip()
    if len(lines) >= 2 and lines[-2].startswith("Sum:"):
        lines[-2:] = [lines[-2] + " " + lines[-1]]
    lines += [
        "",
        "### Simultaneous calls at < 1 % late frames",
        "",
        f"Profile `question`: {report['sweep_hold_s']:.0f} s calls, connecting uniformly over "
        "min(4 s, 0.5 s + 40 ms x N); each caller asks once, after "
        f"{report['sweep_lead_s'][0]:.1f}-{report['sweep_lead_s'][1]:.1f} s of silence. "
        "Late = a bot frame received from `track.recv()` more than "
        "20 ms after its schedule (first frame's arrival + (pts - first pts) / 48 kHz), lost "
        "frames counted as late; 'steady window' = the same for frames that arrived while all "
        "calls were up; 'RTP' = at packet arrival in `RTCRtpReceiver`, before the caller's "
        "jitter buffer and decoder thread. Jitter = arrival - pts / 48 kHz against the call's "
        "earliest frame. Reply latency = last frame of the question sent -> first bot speech "
        "packet received. A run fails at >= 1 % late (frames due while the caller process's own "
        "event loop was stalled - a 5 ms timer waking > 5 ms late - not counted: the client may "
        "have been what was late), a failed call, or callers' CPU >= "
        f"{CLIENT_SATURATED_PCT:.0f} % of a core.",
        "",
    ]
    for phase in phases:
        cap = phase["capacity"]
        lines += [
            f"Layout: {LAYOUTS[phase['layout']]}.",
            "",
            sweep_table(phase["rows"]),
            "",
            f"**Capacity ({phase['layout']}): {cap if cap is not None else 'none'} simultaneous "
            "WebRTC calls** at < 1 % late frames. " + phase["saturation"],
            "",
        ]
        failing = [r for r in phase["rows"] if r["verdict"] != "ok"]
        burst = burst_note(failing[0]) if failing else None
        if burst:
            lines += [burst, ""]
    if report["notes"]:
        lines += ["Notes:", ""] + [f"- {note}" for note in report["notes"]] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def load_note_after_wait(limit: float, max_wait_s: float, log: Log) -> str:
    """Wait for the 1-minute load average to drop below `limit`; what the section says of it."""
    load, waited, quiet = common.wait_for_load(limit, max_wait_s, log)
    if quiet:
        return f" (waited {waited:.0f} s for it to drop below {limit})" if waited > 1 else ""
    return (
        f" (still {load:.2f} after waiting {waited:.0f} s for < {limit}: other "
        "benchmarks were running, see 'others %')"
    )


def run_phase(
    sweep: Sweep,
    cpu_runs: Sequence[tuple[Profile, int]],
    cfg: Config,
    bank: Bank,
    calls_per_worker: int,
    t0: float,
    log: Log,
) -> dict[str, Any]:
    """Start a server and callers in `sweep.layout`, do `cpu_runs`, then the sweep."""
    pinned = sweep.layout == "pinned"
    server_cpus, client_cpus = (SERVER_CPUS, CLIENT_CPUS) if pinned else (None, None)
    env = driver.server_env(
        LIGHT, not pinned, VOICEBOT_WEBRTC__LOOPBACK_ONLY="true",
        VOICEBOT_SERVER__MAX_ENGINE_WAIT_S="0", VOICEBOT_SIP_PORT="0",
    )  # fmt: skip
    notes: list[str] = []
    discarded: list[dict[str, Any]] = []
    budget = driver.Budget(started=t0)
    t_phase = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        driver.serve(Path(tmp), env, server_cpus) as gw,
        driver.CallerPool(rtc_calls, bank, client_cpus, caller_setup) as pool,
    ):
        log(
            f"{sweep.layout}: server up in {time.perf_counter() - t_phase:.1f} s (pid "
            f"{gw.proc.pid}, CPUs {sorted(os.sched_getaffinity(gw.proc.pid))})"
        )
        with common.affinity(client_cpus):
            pool.ensure(1)

            def gate() -> dict[str, float]:
                if not cfg.idle_wait_s:
                    return {}
                return common.idle_gate(cfg.idle_wait_s, log, IDLE_BUSY_PCT, 2.0, 5.0)

            def run(n: int, profile: Profile) -> dict[str, Any]:
                return driver.retried(
                    lambda: run_load(
                        n, profile, sweep.layout, gw.http, gw.proc.pid, gw.log_path, pool, cfg,
                        calls_per_worker, log,
                    ),
                    gate, lambda r: r["others_cpu_pct"] > OTHERS_RETRY_PCT and cfg.retry_busy,
                    discarded, log,
                )  # fmt: skip

            def time_left() -> bool:
                if budget.left(sweep.until_s, sweep.layout, log):
                    return True
                notes.append(
                    f"{sweep.layout}: time budget ({sweep.until_s:.0f} s into the run) spent, "
                    "sweep stopped there"
                )
                return False

            cpu_rows = [run(n, profile) for profile, n in cpu_runs]
            rows = driver.run_sweep(
                lambda n: run(n, cfg.sweep_profile), sweep.ns, time_left=time_left,
                stop=lambda rows: sweep.stop_early and rows[-1]["verdict"] != "ok",
                bisect_steps=sweep.bisect_steps,
                next_n=lambda rows: driver.halfway(rows, time_left),
            )  # fmt: skip
        health_end = healthz(gw.http)
        problems = driver.log_problems(gw.log())
    rows.sort(key=lambda r: r["n"])
    everything = cpu_rows + rows
    tasks = [r["health_after"].get("tasks") for r in everything]
    if len(tasks) > 1 and None not in tasks and tasks[-1] > tasks[0] + 5:
        notes.append(f"{sweep.layout}: server asyncio tasks after each run grew: {tasks}")
    undrained = [
        r["n"]
        for r in everything
        if r["health_after"].get("active_calls") or r["health_after"].get("webrtc_peers")
    ]
    if undrained:
        notes.append(
            f"{sweep.layout}: the server still had calls or peers 30 s after the runs with "
            f"N = {undrained}"
        )
    if problems:
        notes.append(
            f"{sweep.layout}: server log has {len(problems)} WARNING/ERROR lines, first: "
            f"`{problems[0][:160]}`"
        )
    if discarded:
        notes.append(
            f"{sweep.layout}: runs redone because other processes used > "
            f"{OTHERS_RETRY_PCT:.0f} % of a core meanwhile and the run failed: N = "
            f"{[r['n'] for r in discarded]} (first attempts in the JSON)"
        )
    busy = [r["n"] for r in everything if r["others_cpu_pct"] > 20]
    if busy:
        notes.append(
            f"{sweep.layout}: other processes used > 20 % of a core during the runs with "
            f"N = {busy} (the machine is shared)"
        )
    cap = driver.capacity(rows)
    return {
        "layout": sweep.layout,
        "server_env": env,
        "cpu_rows": cpu_rows,
        "rows": rows,
        "discarded_busy_runs": discarded,
        "capacity": cap,
        "saturation": saturation_note(rows, cap),
        "health_end": health_end,
        "server_log_problems": problems[:20],
        "notes": notes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = driver.load_parser(__doc__, SECTION, "--report-only", wait_max="--wait-max-s")
    parser.add_argument("--wait-max-s", type=float, default=25 * 60.0)
    parser.add_argument("--calls-per-worker", type=int, default=CALLS_PER_WORKER)
    parser.add_argument("--only", choices=sorted(LAYOUTS), help="run this layout's sweep only")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(args.render, markdown, args.results)
    cfg = QUICK if args.quick else FULL
    if args.only:
        chosen = [w for w in cfg.sweeps if w.layout == args.only]
        if not chosen:  # quick has no shared sweep: run the pinned one in the shared layout
            chosen = [dataclasses.replace(cfg.sweeps[0], layout=args.only)]
        cfg = dataclasses.replace(cfg, sweeps=tuple(chosen))
    if (os.cpu_count() or 1) < 2:  # nothing to pin to: one shared layout
        cfg = dataclasses.replace(
            cfg, sweeps=tuple(dataclasses.replace(w, layout="shared") for w in cfg.sweeps[:1])
        )
    log = common.StderrLog()
    load_note = ""
    if args.wait_load is not None:
        load_note = load_note_after_wait(args.wait_load, args.wait_max_s, log)
    t0 = time.perf_counter()
    loadavg_before = common.loadavg()
    bank = make_bank(log)
    with common.affinity(SERVER_CPUS if cfg.sweeps[0].layout == "pinned" else None):
        components = component_costs(bank)
    log(
        "component timings: "
        + ", ".join(f"{c['us_per_frame']:.0f}" for c in components)
        + " µs per 20 ms frame"
    )
    phases = []
    for i, sweep in enumerate(cfg.sweeps):
        cpu_runs = cfg.cpu_runs if i == 0 else ()
        phases.append(run_phase(sweep, cpu_runs, cfg, bank, args.calls_per_worker, t0, log))
    report = {
        "quick": args.quick,
        "machine": common.machine_info(PACKAGES),
        "config": asdict(cfg),
        "calls_per_worker": args.calls_per_worker,
        "loadavg_before": loadavg_before,
        "loadavg_end": common.loadavg(),
        "load_note": load_note,
        "run_s": time.perf_counter() - t0,
        "components": components,
        "cpu_runs": phases[0]["cpu_rows"],
        "phases": phases,
        "sweep_hold_s": cfg.sweep_profile.hold_s,
        "sweep_lead_s": cfg.sweep_profile.lead_s,
        "notes": [note for p in phases for note in p["notes"]],
    }
    log(f"done in {report['run_s']:.0f} s")
    publish(markdown(report), report, args.json, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
