"""Live calls: what a caller hears, at real time, over the real transports.

A real `voicebot serve` with its default engines (no override but the ports and the events
log), and callers on the other end of a WebSocket, a SIP/RTP dialog and a WebRTC peer
(bench/live_callers.py), sending human speech (tests/human_speech.py: card names, a command,
read sentences, from the pocketsphinx sdist) and generated speech (espeak-ng: questions a
caller asks) frame by frame at 20 ms, and noting when each piece of bot audio arrives (the
WebRTC caller decodes each packet as it arrives, with no playout buffer, as the others do).

Measured from the caller's side of the wire, per turn:
- **voice-to-voice**: the true end of speech (the send time of the utterance's last voiced
  10 ms block) -> the arrival of the first audible bot audio after it (RMS > -44 dBFS);
- **barge-in**: on some turns the caller talks over the reply 1 s into it: the true onset
  (send time of the first voiced block) -> the last audible bot audio before the bot goes
  quiet (no audible audio for 0.5 s);
- **WER** of the final transcripts (the server's events log) against what was said.
Where the time goes, per turn, from the server's `turn_latency` event: the end-of-turn
rule (where the VAD puts the end of speech -> speech_end: the smart-turn pause and verdict,
or its longest wait when it judged the turn unfinished), the STT, LLM (first sentence) and
TTS (its audio) waits after speech_end, the server's whole answer (speech_end -> first frame
sent) and the rest (voice-to-voice minus those two: the VAD's own lag behind the true end,
the transport and jitter buffers, the voice's leading silence; the two clocks are aligned
only to a VAD window, so the VAD lag and the out path are not told apart).

The virtual-time bench (bench/latency_bench.py) is a lower bound of these figures.

    .venv/bin/python bench/live_bench.py --json /tmp/live.json --results bench/RESULTS.md
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.live_callers import FRAME_16K, CallEndedByBotError, CallerLink, RtcLink, SipLink, WsLink
from tests import wer
from voicebot.agent.config import AgentConfig
from voicebot.audio.frames import block_dbfs

AUDIBLE_RMS = 200.0  # int16 RMS, about -44 dBFS: the bot's voice, not its silence
QUIET_AFTER_REPLY_S = 1.2  # no audible bot audio this long: the reply is over
BARGE_AFTER_S = 1.0  # a barge-in trial starts this far into the audible reply
BARGE_QUIET_S = 0.5  # the bot has stopped when it is quiet this long
REPLY_TIMEOUT_S = 20.0
# An end-of-turn wait this long: the turn model judged the turn unfinished and its longest
# wait ended it.
LONGEST_WAIT_MS = AgentConfig().turn_max_silence_ms - 100.0
CLOSING = "No, that is all, thank you."  # a goodbye: the last turn of a call
GENERATED = (
    "What time do you open on Saturday?",
    "I would like to book an appointment for next week.",
    "Can you tell me your address please?",
    CLOSING,
)


@dataclass
class Utterance:
    key: str
    kind: str  # short / read (human) / generated (espeak-ng)
    text: str
    audio: np.ndarray = field(repr=False)
    onset: int  # first voiced sample
    end: int  # one past the last voiced sample


def voiced_bounds(x: np.ndarray, floor_db: float = -40.0) -> tuple[int, int]:
    """First and last (exclusive) sample of 10 ms blocks within 35 dB of the loudest one and
    above `floor_db` dBFS: speech, not the recording's room noise."""
    block = 160
    db = block_dbfs(x, block)
    active = np.flatnonzero(db > max(db.max() - 35.0, floor_db))
    return int(active[0] * block), int((active[-1] + 1) * block)


def utterances() -> list[Utterance]:
    from tests import audiogen, human_speech

    out = []
    for rec in human_speech.recordings():
        audio = rec.samples()
        onset, end = voiced_bounds(audio)
        out.append(Utterance(rec.key, rec.kind, rec.transcript, audio, onset, end))
    for i, text in enumerate(GENERATED):
        audio = audiogen.espeak(text, voice=("en-us", "en-gb", "en-us+f3")[i % 3])
        onset, end = voiced_bounds(audio)
        out.append(Utterance(f"espeak-{i}", "generated", text, audio, onset, end))
    return out


# -- one call ------------------------------------------------------------------------------
@dataclass
class Turn:
    key: str
    kind: str
    sent_start: float  # monotonic send time of the utterance's first sample
    true_onset: float
    true_end: float
    barge_in: bool = False  # this utterance was spoken over the bot's reply
    first_audible: float | None = None
    bot_stopped: float | None = None  # barge-in trials: last audible bot audio before quiet
    transcript: str = ""
    stages: dict[str, Any] | None = None  # the server's turn_latency event
    reply: str = ""  # the bot's first sentence after this turn (events log)
    # The speech_end that ended the turn answered: what ended it, and the turn model's P.
    ended_by: str | None = None
    turn_probability: float | None = None

    @property
    def voice_to_voice_ms(self) -> float | None:
        if self.first_audible is None:
            return None
        return (self.first_audible - self.true_end) * 1000

    @property
    def barge_in_ms(self) -> float | None:
        if not self.barge_in or self.bot_stopped is None:
            return None
        return max(0.0, self.bot_stopped - self.true_onset) * 1000


@dataclass
class CallRun:
    transport: str
    index: int
    t0: float = 0.0  # monotonic send time of the first frame (server call time 0)
    turns: list[Turn] = field(default_factory=list)
    server_call_id: str | None = None
    sip_call_id: str | None = None
    ended_by_bot: bool = False
    error: str | None = None


class Caller:
    """Plays one call's script against a link, in real time, one 20 ms frame per tick."""

    def __init__(self, link: CallerLink, run: CallRun, script: list[tuple[Utterance, bool]]):
        self.link = link
        self.run = run
        self.script = script  # (utterance, spoken over the previous reply?)
        self._k = 0
        self._seen = 0  # pieces of heard audio already scanned

    async def _tick(self, frame: np.ndarray) -> float:
        """Send `frame` when its 20 ms slot comes; returns its send time."""
        due = self.run.t0 + self._k * 0.02
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.link.send(frame)
        self._k += 1
        return due

    def _audible_since(self, since: float) -> list[float]:
        return [t for t, _, rms in self.link.heard.pieces if t > since and rms > AUDIBLE_RMS]

    def _last_audible(self) -> float | None:
        pieces = [t for t, _, rms in self.link.heard.pieces if rms > AUDIBLE_RMS]
        return pieces[-1] if pieces else None

    async def _silence_until(self, done: Any, timeout_s: float) -> None:
        silence = np.zeros(FRAME_16K, np.int16)
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            await self._tick(silence)

    async def _speak(self, u: Utterance) -> Turn:
        padded = np.concatenate([u.audio, np.zeros(-len(u.audio) % FRAME_16K, np.int16)])
        start = self.run.t0 + self._k * 0.02
        turn = Turn(u.key, u.kind, start, start + u.onset / 16000, start + u.end / 16000)
        for i in range(0, len(padded), FRAME_16K):
            await self._tick(padded[i : i + FRAME_16K])
        return turn

    async def play(self) -> None:
        await self.link.open()
        self.run.t0 = time.monotonic()
        quiet = QUIET_AFTER_REPLY_S

        def reply_over(after: float) -> Any:
            def check() -> bool:
                last = self._last_audible()
                heard = last is not None and last > after
                return heard and time.monotonic() - last > quiet  # type: ignore[operator]

            return check

        try:
            await self._converse(reply_over)
        except CallEndedByBotError:
            self.run.ended_by_bot = True  # it hung up (a "bye" topic): the script stops here
            last = self.run.turns[-1] if self.run.turns else None
            if last is not None and last.first_audible is None:
                self._first_audible(last)  # its answer was the goodbye, heard before the hang-up
        for turn in self.run.turns:
            if turn.barge_in and not self._bot_audible_at(turn.true_onset):
                turn.barge_in = False  # the reply was late or over: nothing to talk over
            if turn.barge_in:
                turn.bot_stopped = self._bot_stop(turn)
        self.run.server_call_id = self._call_id()
        await self.link.close()

    async def _converse(self, reply_over: Any) -> None:
        # The greeting: silence until it has been heard and has ended.
        await self._silence_until(reply_over(self.run.t0), 15.0)
        await self._silence_until(lambda: False, 0.3)
        for i, (u, barges) in enumerate(self.script):
            turn = await self._speak(u)
            turn.barge_in = barges and i > 0
            self.run.turns.append(turn)
            next_barges = i + 1 < len(self.script) and self.script[i + 1][1]
            if next_barges:
                # Wait for the reply to be audible for BARGE_AFTER_S, then talk over it.
                def reply_under_way(turn: Turn = turn) -> bool:
                    heard = self._audible_since(turn.true_end)
                    return bool(heard) and time.monotonic() - heard[0] >= BARGE_AFTER_S

                await self._silence_until(reply_under_way, REPLY_TIMEOUT_S)
                self._first_audible(turn)
                continue
            await self._silence_until(reply_over(turn.true_end), REPLY_TIMEOUT_S)
            self._first_audible(turn)
            await self._silence_until(lambda: False, random.uniform(0.3, 0.8))

    def _first_audible(self, turn: Turn) -> None:
        heard = self._audible_since(turn.true_end - 0.02)
        turn.first_audible = heard[0] if heard else None

    def _bot_audible_at(self, t: float) -> bool:
        heard = self._audible_since(t - 0.2)
        return bool(heard) and heard[0] <= t + 0.1

    def _bot_stop(self, turn: Turn) -> float | None:
        """The last audible bot audio after the caller's onset before a quiet gap."""
        heard = self._audible_since(turn.true_onset - 0.2)
        for a, b in itertools.pairwise(heard):
            if b - a >= BARGE_QUIET_S:
                return a
        return None  # it never stopped

    def _call_id(self) -> str | None:
        for event in self.link.events:
            if event.get("call_id"):
                return str(event["call_id"])
        return None


# -- assembling the results -------------------------------------------------------------------
def read_events(path: Path) -> dict[str, list[dict[str, Any]]]:
    by_call: dict[str, list[dict[str, Any]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                by_call.setdefault(event["call_id"], []).append(event)
    return by_call


def sip_call_ids(by_call: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """SIP Call-ID -> server call id (from `call_started`'s info)."""
    out = {}
    for call_id, events in by_call.items():
        for event in events:
            if event["type"] == "call_started" and event.get("sip_call_id"):
                out[str(event["sip_call_id"])] = call_id
    return out


def attach_server_events(run: CallRun, events: list[dict[str, Any]]) -> None:
    """Final transcripts and `turn_latency` events onto the turns they belong to: the last
    one whose true onset (on the server's call clock) precedes them."""
    if not run.turns:
        return
    # Call time 0 = the first frame the server took; that is the caller's t0 up to the
    # transport's input delay (a jitter buffer for RTP). Aligned on the first speech_start:
    starts = [e for e in events if e["type"] == "speech_start"]
    first = run.turns[0]
    offset = (starts[0]["onset"] - (first.true_onset - run.t0)) if starts else 0.0

    def owner(call_t: float) -> Turn | None:
        # The turn being spoken or answered then: the last one begun before `call_t` (the
        # VAD's end may fall a window before the true end, never before the onset).
        client = run.t0 + call_t - offset
        begun = [t for t in run.turns if t.true_onset <= client + 0.05]
        return begun[-1] if begun else None

    ends = {round(e["t"], 3): e for e in events if e["type"] == "speech_end"}
    for event in events:
        if event["type"] == "transcript" and event.get("final", True):
            turn = owner(event["t"])
            if turn is not None:
                turn.transcript = (turn.transcript + " " + event["text"]).strip()
        elif event["type"] == "bot_text":
            turn = owner(event["t"])
            if turn is not None and not turn.reply and turn.transcript:
                turn.reply = event["text"]
        elif event["type"] == "turn_latency":
            turn = owner(event["vad_speech_end"] if event.get("vad_speech_end") else event["t"])
            if turn is not None and turn.stages is None:
                turn.stages = {**event, "_offset": offset}
                end = ends.get(round(event.get("speech_end") or -1.0, 3), {})
                turn.ended_by = end.get("ended_by")
                turn.turn_probability = end.get("turn_probability")


def stage_breakdown(run: CallRun, turn: Turn) -> dict[str, float] | None:
    """Where the voice-to-voice time of `turn` went (ms; sums to voice_to_voice_ms)."""
    s = turn.stages
    v2v = turn.voice_to_voice_ms
    if s is None or v2v is None or s.get("vad_speech_end") is None:
        return None
    true_end = turn.true_end - run.t0 + s["_offset"]  # on the server's call clock
    vad_lag = (s["vad_speech_end"] - true_end) * 1000
    silence = (s["speech_end"] - s["vad_speech_end"]) * 1000
    answer = s["total_ms"]
    return {
        "vad_lag": vad_lag,
        "silence_rule": silence,
        "stt_wait": s["stt_wait_ms"] or 0.0,
        "llm_wait": max(0.0, (s["llm_wait_ms"] or 0.0) - (s["stt_wait_ms"] or 0.0)),
        "tts_wait": max(0.0, (s["tts_wait_ms"] or 0.0) - (s["llm_wait_ms"] or 0.0)),
        "server_answer": answer,
        "out_path": v2v - vad_lag - silence - answer,
        "rest": v2v - silence - answer,
        "speculative": float(bool(s["speculative"])),
    }


# -- the runs ------------------------------------------------------------------------------
def make_link(transport: str, http: str, sip_port: int) -> CallerLink:
    if transport == "ws":
        return WsLink(http)
    if transport == "sip":
        return SipLink("127.0.0.1", sip_port)
    return RtcLink(http)


def call_script(pool: list[Utterance], rng: random.Random, n: int) -> list[tuple[Utterance, bool]]:
    """`n` utterances in random order; every fourth (not the first) talks over the reply."""
    order = pool[:] if n >= len(pool) else rng.sample(pool, n)
    if n >= len(pool):
        rng.shuffle(order)
    # "No, that is all, thank you." is a goodbye the front desk answers by hanging up (when
    # STT hears it so): said mid-call it would end the call and lose the turns after it.
    order.sort(key=lambda u: u.text == CLOSING)
    return [(u, i % 4 == 3) for i, u in enumerate(order)]


async def run_calls(
    transport: str,
    concurrency: int,
    http: str,
    sip_port: int,
    pool: list[Utterance],
    per_call: int,
    seed: int,
    log: common.StderrLog,
) -> list[CallRun]:
    rng = random.Random(seed)
    runs = [CallRun(transport, i) for i in range(concurrency)]

    async def one(run: CallRun) -> None:
        await asyncio.sleep(run.index * 0.7)  # calls arrive spread out, as they do
        link = make_link(transport, http, sip_port)
        run.sip_call_id = link.sip_call_id
        caller = Caller(link, run, call_script(pool, rng, per_call))
        try:
            await caller.play()
        except Exception as exc:  # a failed call is a result, not the end of the bench
            run.error = f"{type(exc).__name__}: {exc}"
            log(f"{transport} call {run.index}: {run.error}")

    await asyncio.gather(*(one(r) for r in runs))
    return runs


def call_rows(runs: list[CallRun]) -> list[dict[str, Any]]:
    """The calls as saved in the JSON: every turn with its figures and stage breakdown."""
    return [
        {
            **asdict(r),
            "turns": [
                {
                    **asdict(t),
                    "voice_to_voice_ms": t.voice_to_voice_ms,
                    "barge_in_ms": t.barge_in_ms,
                    "stages_ms": stage_breakdown(r, t),
                }
                for t in r.turns
            ],
        }
        for r in runs
    ]


def summarise(runs: list[CallRun], row: dict[str, Any]) -> dict[str, Any]:
    """A row's figures; barge-in and stages from its saved calls (`row`), as a re-render
    computes them."""
    turns = [(r, t) for r in runs for t in r.turns]
    v2v = [t.voice_to_voice_ms for _, t in turns if t.voice_to_voice_ms is not None]
    no_answer = sum(t.first_audible is None for _, t in turns)
    errors = {"words": 0, "ref": 0}
    by_kind: dict[str, dict[str, int]] = {}
    for _, t in turns:
        err, words = wer.word_errors(next(u.text for u in UTTERANCES if u.key == t.key),
                                     t.transcript)  # fmt: skip
        for bucket in (errors, by_kind.setdefault(t.kind, {"words": 0, "ref": 0})):
            bucket["words"] += err
            bucket["ref"] += words
    return {
        "calls": len(runs),
        "calls_failed": sum(r.error is not None for r in runs),
        "turns": len(turns),
        "no_answer": no_answer,
        "v2v_ms": {
            "p50": common.pct(v2v, 50),
            "p90": common.pct(v2v, 90),
            "max": max(v2v, default=None),
            "n": len(v2v),
        },
        "fallback_replies": sum(is_fallback(t.reply) for _, t in turns),
        "wer": errors["words"] / max(1, errors["ref"]),
        "wer_by_kind": {k: v["words"] / max(1, v["ref"]) for k, v in by_kind.items()},
        **barge_in_summary(row),
        **stage_summary(row),
    }


UTTERANCES: list[Utterance] = []


def is_fallback(reply: str) -> bool:
    """The front desk's "can't help" line (its LLM guarded, busy or absent), not an answer."""
    from voicebot.models.llm.business_profile import BusinessProfile

    first = BusinessProfile.from_file().fallback.split(".")[0]
    return bool(reply) and reply.startswith(first)


def barge_in_summary(row: dict[str, Any]) -> dict[str, Any]:
    """Barge-in figures from a row's turns; a trial where the bot was already quiet at the
    caller's onset (saved runs mark it by `bot_stopped` == `true_onset`) is no trial."""
    trials = [t for c in row["calls"] for t in c["turns"] if t["barge_in"]
              and t["bot_stopped"] != t["true_onset"]]  # fmt: skip
    values = [t["barge_in_ms"] for t in trials if t["barge_in_ms"] is not None]
    return {
        "barge_in_ms": {
            "p50": common.pct(values, 50),
            "p90": common.pct(values, 90),
            "max": max(values, default=None),
            "n": len(values),
        },
        "barge_in_trials": len(trials),
        "barge_in_never_stopped": sum(t["bot_stopped"] is None for t in trials),
    }


def _answered_end_causes(row: dict[str, Any]) -> list[str]:
    return [
        turn.get("ended_by") or "?"
        for call in row["calls"]
        for turn in call["turns"]
        if turn.get("stages_ms") is not None and turn.get("voice_to_voice_ms") is not None
    ]


def stage_summary(row: dict[str, Any]) -> dict[str, Any]:
    """Medians of the per-turn stages and the count of longest waits, from a row's turns
    (so a saved run renders with the current columns)."""
    stages = []
    for call in row["calls"]:
        for turn in call["turns"]:
            st = turn.get("stages_ms")
            if st is not None and turn.get("voice_to_voice_ms") is not None:
                stages.append({**st, "rest": turn["voice_to_voice_ms"] - st["silence_rule"]
                               - st["server_answer"]})  # fmt: skip
    keys = stages[0].keys() if stages else ()
    return {
        "stages_p50_ms": {k: common.pct([s[k] for s in stages], 50) for k in keys},
        "longest_waits": sum(s["silence_rule"] >= LONGEST_WAIT_MS for s in stages),
        # Of the turns answered: ended by the model's verdict, or judged unfinished (P under
        # the bar) and ended by the longest wait.
        "ended_by": dict(Counter(_answered_end_causes(row))),
        "turns_with_stages": len(stages),
        "speculative_share": (
            sum(s["speculative"] for s in stages) / len(stages) if stages else None
        ),
    }


def _triple(d: dict[str, Any]) -> str:
    """p50 / p90 / max in ms, the median in bold."""
    return f"**{common.fmt(d['p50'], 0)}** / {common.fmt(d['p90'], 0)} / {common.fmt(d['max'], 0)}"


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    for row in res["rows"]:
        # From the saved calls, so runs saved before a column existed render with it.
        row["summary"].update(barge_in_summary(row), **stage_summary(row))
    calls = [
        [
            row["transport"], s["calls"], s["turns"], _triple(s["v2v_ms"]), s["no_answer"],
            s.get("fallback_replies", "-"),
            f"{_triple(s['barge_in_ms'])} ({s['barge_in_trials']})", s["barge_in_never_stopped"],
            " / ".join(f"{w:.1%}" for w in (s["wer"], *(s["wer_by_kind"].get(k, 0)
                                                      for k in ("short", "read", "generated")))),
            s["calls_failed"],
        ]
        for row in res["rows"]
        for s in [row["summary"]]
    ]  # fmt: skip
    stage_keys = ("silence_rule", "stt_wait", "llm_wait", "tts_wait", "server_answer", "rest")
    stages = [
        [
            row["transport"], s["calls"], common.fmt(s["stages_p50_ms"].get("silence_rule"), 0),
            f"{s['longest_waits']} of {s['turns_with_stages']}",
            ", ".join(f"{k} {v}" for k, v in sorted(s.get("ended_by", {}).items())) or "-",
            *(common.fmt(s["stages_p50_ms"].get(k), 0) for k in stage_keys[1:]),
            "-" if s["speculative_share"] is None else f"{s['speculative_share']:.0%}",
        ]
        for row in res["rows"]
        for s in [row["summary"]]
    ]  # fmt: skip
    return "\n".join([
        "## Live calls",
        "",
        f"Run {m['date_utc']} by `bench/live_bench.py` in {res['total_seconds'] / 60:.1f} min. "
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']} (flags {' '.join(res['cpu_flags'])}); "
        f"load average at start {res['loadavg_at_start']}, at end {res['loadavg_at_end']}. "
        f"Server: `voicebot serve` with its default engines ({res['engines']}); callers in "
        "one process beside it (the same 2 CPUs)."
        + "".join(f" Changed from the defaults: `{k}={v}`." for k, v in
                  res.get("overrides", {}).items()),
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        __doc__.split("\n\n")[2],
        "",
        common.md_table(
            ["transport", "calls", "turns", "voice-to-voice p50 / p90 / max ms", "no answer",
             "fallback line",
             "barge-in p50 / p90 / max ms (trials)", "never stopped",
             "WER all / short / read / generated", "calls failed"], calls),
        "",
        "Where the time goes (median ms per turn, from the server's `turn_latency`; the "
        "medians of the parts need not add up to the median of the whole):",
        "",
        common.md_table(
            ["transport", "calls", "end-of-turn rule", "turns at its longest wait", "ended by",
             "STT wait",
             "LLM first sentence", "TTS first audio", "server: speech_end -> first frame",
             "rest: VAD lag + transport", "speculation adopted"], stages),
    ])  # fmt: skip


async def until_idle(base_url: str, log: common.StderrLog, timeout_s: float = 120.0) -> None:
    """Wait until the server has no call and no engine request waiting: a row must not
    start on the previous row's queue (its calls would be refused for engine backlog)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            health = (await http.get(f"{base_url}/healthz")).json()
            if not health.get("active_calls") and not health.get("engine_wait_s"):
                return
            await asyncio.sleep(0.5)
    log(f"server not idle after {timeout_s:.0f} s: starting anyway")


async def bench(args: Any, log: common.StderrLog) -> dict[str, Any]:
    from tests.gateway_server import gateway
    from tests.servers import free_port
    from voicebot.models.config import EngineSettings

    UTTERANCES[:] = utterances()
    defaults = EngineSettings()
    res: dict[str, Any] = {
        "machine": common.machine_info(
            ["faster-whisper", "llama-cpp-python", "piper-tts", "onnxruntime", "aiortc"]
        ),
        "cpu_flags": common.cpu_flags(),
        "loadavg_at_start": common.loadavg(),
        "engines": f"STT whisper {defaults.stt_model}, LLM {defaults.llm}, TTS {defaults.tts}",
        # Settings this run changed from the defaults (from the environment the server gets).
        "overrides": {k: v for k, v in os.environ.items() if k.startswith("VOICEBOT_")},
        "rows": [],
    }
    sip_port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        events_log = Path(tmp) / "events.jsonl"
        env = {
            "VOICEBOT_SIP_PORT": str(sip_port),
            "VOICEBOT_ENGINES__LLM": defaults.llm,  # the default, not the tests' scripted one
            "VOICEBOT_AGENT__GREETING": AgentConfig().greeting or "",
            "VOICEBOT_SERVER__EVENTS_LOG": str(events_log),
        }
        with gateway(Path(tmp), **env) as gw:
            log(f"gateway up on {gw.http}, SIP {sip_port}")
            for transport in args.transports:
                for concurrency in args.concurrency:
                    per_call = len(UTTERANCES) if concurrency == 1 else args.turns_per_call
                    if args.quick:
                        per_call = 4
                    log(f"{transport}: {concurrency} call(s), {per_call} turns each")
                    await until_idle(gw.http, log)
                    runs = await run_calls(
                        transport,
                        concurrency,
                        gw.http,
                        sip_port,
                        UTTERANCES,
                        per_call,
                        args.seed,
                        log,
                    )
                    await asyncio.sleep(1.0)  # the events log is written as events happen
                    by_call = read_events(events_log)
                    by_sip = sip_call_ids(by_call)
                    for run in runs:
                        call_id = run.server_call_id or by_sip.get(run.sip_call_id or "")
                        run.server_call_id = call_id
                        if call_id in by_call:
                            attach_server_events(run, by_call[call_id])
                    row = {"transport": transport, "concurrency": concurrency,
                           "calls": call_rows(runs)}  # fmt: skip
                    summary = row["summary"] = summarise(runs, row)
                    log(
                        f"  v2v p50 {common.fmt(summary['v2v_ms']['p50'], 0)} ms, barge-in p50 "
                        f"{common.fmt(summary['barge_in_ms']['p50'], 0)} ms, "
                        f"WER {summary['wer']:.1%}"
                    )
                    res["rows"].append(row)
            res["server_log_problems"] = [
                ln for ln in gw.log().splitlines() if " ERROR " in ln or "Traceback" in ln
            ][:20]
    return res


def main() -> int:
    parser = common.bench_parser(__doc__, "write the 'Live calls' section into this file")
    parser.add_argument(
        "--transports", nargs="+", default=["ws", "sip", "webrtc"], choices=["ws", "sip", "webrtc"]
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--turns-per-call", type=int, default=6, help="with more than 1 call")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", type=Path, help="keep the server's log and events here")
    parser.add_argument("--rerender", type=Path, help="render a saved --json run")
    args = parser.parse_args()
    if args.rerender:
        return common.rerender(args.rerender, render, args.results)
    log = common.StderrLog()
    res = asyncio.run(bench(args, log))
    return common.finish(res, render, args, log)


if __name__ == "__main__":
    sys.exit(main())
