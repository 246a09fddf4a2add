"""`voicebot simulate`: one whole call through the real CallSession and engines, offline.

The simulator is a transport with no wire: the caller's WAV is cut into canonical frames and
fed in, the bot's frames are recorded on the same timeline. In virtual time (default) engine
work is charged at its measured wall-clock cost (see `agent.clock.VirtualClock`), so the
result is what a live call on this machine would sound like, produced faster than real time;
`realtime=True` paces the input at 1x against the wall clock instead.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from voicebot.agent.clock import FrameTicker, LiveClock, VirtualClock
from voicebot.agent.config import AgentConfig
from voicebot.agent.events import AgentState, Event, EventBus, EventLog
from voicebot.agent.session import FRAME_SECONDS, CallSession, CallSetup, Engines
from voicebot.audio.denoise import make_suppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.audio.frames import FRAME_SAMPLES, silence, split_frames
from voicebot.models.turn import TurnModel
from voicebot.models.turn.text import TextTurnModel
from voicebot.models.vad import SileroVad, VadParams


@dataclass(frozen=True)
class EchoPath:
    """A telephone line without echo cancellation: the bot's audio comes back in the
    caller's channel `delay_ms` later, `gain_db` down, over line noise at `noise_dbfs`."""

    gain_db: float = -10.0
    delay_ms: float = 120.0
    noise_dbfs: float = -60.0


class RecordingSink:
    """The simulated transport's output: frames land at the input frame they were sent in
    (and, with an echo path, come back into the caller's audio later)."""

    def __init__(self, echo: EchoPath | None = None, input_samples: int = 0) -> None:
        self.frames: dict[int, np.ndarray] = {}
        self.position = 0  # index of the input frame being processed
        self.echo = echo
        self.echo_buffer = np.zeros(input_samples + 16000, np.float64)

    def write(self, frame: np.ndarray) -> None:
        self.frames[self.position] = frame
        if self.echo is not None:
            # Sent at the end of input frame `position`; heard back delay_ms later.
            start = (self.position + 1) * FRAME_SAMPLES + int(self.echo.delay_ms * 16)
            end = min(start + FRAME_SAMPLES, len(self.echo_buffer))
            if end > start:
                gain = 10 ** (self.echo.gain_db / 20)
                self.echo_buffer[start:end] += gain * frame[: end - start]

    def clear(self) -> int:
        # Frames are "played" the moment they are written here: nothing queued to drop.
        return 0

    def audio(self, n_frames: int) -> np.ndarray:
        out = np.zeros(n_frames * FRAME_SAMPLES, np.int16)
        for index, frame in self.frames.items():
            if index < n_frames:
                out[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES] = frame
        return out


@dataclass
class SimulationResult:
    caller_audio: np.ndarray  # as fed, padded with the tail
    bot_audio: np.ndarray  # same length and timeline
    events: list[dict[str, Any]]  # as on the wire (the JSON objects of DESIGN.md section 2)
    typed_events: list[Event]  # the same, as published
    end_reason: str
    engine_seconds: float
    wall_seconds: float
    stt_inputs: list[np.ndarray]


async def simulate_call(
    caller_audio: np.ndarray,
    engines: Engines,
    *,
    config: AgentConfig | None = None,
    vad_params: VadParams | None = None,
    vad_model: SileroVad | None = None,
    realtime: bool = False,
    tail_seconds: float = 8.0,
    call_id: str = "sim",
    echo_path: EchoPath | None = None,
    echo_cancellation: bool = False,
    noise_suppression: str = "off",
    turn_model: TurnModel | None = None,
    text_turn_model: TextTurnModel | None = None,
) -> SimulationResult:
    """Run one call; after the caller's audio, up to `tail_seconds` of silence let the bot
    finish its reply (stopping early once it is idle). Without a `turn_model` turns end
    on the fixed silence rule whatever `config.endpointing` says."""
    pcm = np.asarray(caller_audio)
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise ValueError("caller audio must be mono int16 at 16 kHz")
    frames = split_frames(pcm)
    tail_frames = int(tail_seconds / FRAME_SECONDS)
    clock = LiveClock() if realtime else VirtualClock()
    total_samples = (len(frames) + tail_frames) * FRAME_SAMPLES
    sink = RecordingSink(echo_path, total_samples)
    rng = np.random.default_rng(0)
    log = EventLog()
    bus = EventBus()
    bus.subscribe(log)
    session = CallSession(
        CallSetup(
            call_id, engines, sink, bus=bus, config=config or AgentConfig(),
            vad_params=vad_params, vad_model=vad_model, clock=clock, turn_model=turn_model,
            text_turn_model=text_turn_model,
            echo_canceller=EchoCanceller() if echo_cancellation else None,
            denoiser=make_suppressor(noise_suppression),
        )
    )  # fmt: skip
    fed: list[np.ndarray] = []
    began = time.perf_counter()

    async def feed() -> AsyncIterator[np.ndarray]:
        quiet = silence()
        ticker = FrameTicker()
        total = len(frames) + tail_frames
        for k in range(total):
            if k >= len(frames) and session.state is AgentState.WAITING_FOR_SPEECH and session.idle:
                break
            if isinstance(clock, VirtualClock):
                await clock.advance_to(k * FRAME_SECONDS)
            else:
                await ticker.wait()
            sink.position = k
            frame = frames[k] if k < len(frames) else quiet
            if echo_path is not None:
                line = sink.echo_buffer[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
                noise = (
                    rng.standard_normal(FRAME_SAMPLES) * 32768 * 10 ** (echo_path.noise_dbfs / 20)
                )
                mixed = frame.astype(np.float64) + line + noise
                frame = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
            fed.append(frame)
            yield frame

    reason = await session.run(feed())
    n = len(fed)
    return SimulationResult(
        caller_audio=np.concatenate(fed) if fed else np.zeros(0, np.int16),
        bot_audio=sink.audio(n),
        events=log.as_dicts(),
        typed_events=log.events,
        end_reason=reason,
        engine_seconds=clock.engine_seconds if isinstance(clock, VirtualClock) else 0.0,
        wall_seconds=time.perf_counter() - began,
        stt_inputs=session.stt_inputs,
    )
