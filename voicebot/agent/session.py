"""CallSession: one call's event loop and state machine (DESIGN.md section 2).

Frames come in from the transport; each runs through the input stages and the VAD, whose
events drive the states WAITING_FOR_SPEECH -> LISTENING -> THINKING -> SPEAKING, and
SPEAKING/THINKING -> INTERRUPTED -> LISTENING on barge-in. Then one frame of the bot's speech
goes out to the sink: output is clocked by input, so the session always knows what the
caller has heard.

Barge-in is handled synchronously inside the VAD event handler: the reply tasks are
cancelled and the sink cleared in the same event-loop turn that sees `speech_start`.
Only speech segments ever reach STT. The session knows nothing of wire formats.

The session keeps the states and what moves them (VAD events, barge-in, the output tick)
and wires the parts that do each other job: `input_stages` (echo, noise, VAD windows and
levels), `endpointing` (when the caller's segment ends: fixed silence or the turn model),
`turns` (speech_end to the answer), `conversation` (history, unanswered words, the
false-interruption test), `speculation` (the reply begun at a pause), `replies` (the
reply in progress), `engine_calls` (STT, reply pipelines, engine errors), `output` (playout
to the sink, hold and cut), `call_actions` (hang-up, transfer) and `lifetime` (run modes,
end reason, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicebot.agent.audio_tap import CallAudioTap
from voicebot.agent.call_actions import CallActions, CallControl, TransferOutcome
from voicebot.agent.clock import EngineClock, LiveClock
from voicebot.agent.config import AgentConfig
from voicebot.agent.conversation import Conversation, SuspendedReply
from voicebot.agent.endpointing import Endpointer, segmenter_params
from voicebot.agent.engine_calls import EngineCalls
from voicebot.agent.events import (
    AgentState,
    BotText,
    CallEnded,
    CallStarted,
    CallTransferred,
    DtmfPressed,
    ErrorRaised,
    Event,
    EventBus,
    Interrupted,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TransferFailed,
    TurnLatency,
    VadLevel,
)
from voicebot.agent.floor_guard import FloorGuard
from voicebot.agent.input_stages import InputStages, VadLevels, check_frame
from voicebot.agent.lifetime import Lifetime
from voicebot.agent.output import SpeechOutput, heard_text
from voicebot.agent.playout import AudioSink
from voicebot.agent.replies import Replies
from voicebot.agent.speculation import Speculator
from voicebot.agent.templates import CallTemplates, call_config
from voicebot.agent.turn_timing import StageTimes
from voicebot.agent.turns import Turns
from voicebot.agent.vad_runner import InlineVad, VadRunner
from voicebot.audio.denoise import NoiseSuppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.audio.frames import FRAME_SAMPLES, SAMPLE_RATE
from voicebot.models.base import Engines
from voicebot.models.turn import TurnModel
from voicebot.models.turn.text import TextTurnModel
from voicebot.models.vad import (
    SileroVad,
    SpeechEnd,
    SpeechStart,
    VadParams,
    VadProbability,
    VadStream,
    VoiceActivityDetector,
)

__all__ = ["FRAME_SECONDS", "CallControl", "CallSession", "CallSetup", "Engines"]

log = logging.getLogger("voicebot.agent")

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE


@dataclass
class CallSetup:
    """Everything one call's session is built from.

    The transport gives the `sink` (where bot frames go), `control` (what hang-up and
    transfer mean on its wire, None if the call simply ends), `info` (published with
    `call_started`) and the input stages it needs (SIP: echo canceller, noise suppressor);
    the call manager gives the shared parts (engines, the VAD model and its batched runner,
    the settings, the event bus with its subscribers).
    """

    call_id: str
    engines: Engines
    sink: AudioSink
    bus: EventBus = field(default_factory=EventBus)
    config: AgentConfig = field(default_factory=AgentConfig)
    vad_params: VadParams | None = None
    vad_model: SileroVad | None = None
    vad_runner: VadRunner = field(default_factory=InlineVad)
    # End-of-turn model for `agent.endpointing = "smart_turn"`; None: the fixed silence rule.
    turn_model: TurnModel | None = None
    # Its second opinion from the early transcript's words (None: the audio model alone).
    text_turn_model: TextTurnModel | None = None
    clock: EngineClock = field(default_factory=LiveClock)
    control: CallControl | None = None
    info: dict[str, object] = field(default_factory=dict)
    echo_canceller: EchoCanceller | None = None
    denoiser: NoiseSuppressor | None = None
    # Both sides of the call on one timeline, for a recording (None: not recorded).
    audio_tap: CallAudioTap | None = None
    # What the caller's side knew of the call (calls/variables.py: normalised names): fills
    # `{{name}}` in the system prompt, the greeting and written replies (agent/templates.py).
    variables: dict[str, str] = field(default_factory=dict)
    # This call's own `greeting` / `system_prompt` in place of the configured ones (an
    # outbound call's API body); rendered like them.
    prompt_overrides: dict[str, str] = field(default_factory=dict)


class CallSession:
    def __init__(self, setup: CallSetup) -> None:
        self.call_id = setup.call_id
        self.info = dict(setup.info)
        self.engines = setup.engines
        self.sink = setup.sink
        self.bus = setup.bus
        self.variables = dict(setup.variables)
        self._templates = CallTemplates(self.call_id, self.variables)
        self.config = call_config(setup.config, setup.prompt_overrides, self._templates)
        self.clock = setup.clock
        self.control = setup.control
        self._vad_runner = setup.vad_runner
        vad_params = setup.vad_params or VadParams()
        vad = VoiceActivityDetector(
            setup.vad_model, segmenter_params(self.config, vad_params, setup.turn_model)
        )
        self._input = InputStages(vad, setup.echo_canceller, setup.denoiser)
        self._levels = VadLevels(self.config)
        self._engine_calls = EngineCalls(
            self.call_id, self.engines, self.config, self.clock, self._report_error,
            render=self._templates.render,
        )  # fmt: skip
        self._conversation = Conversation(self.config)
        self._speculator = Speculator(
            self.config, vad.segmenter, self._conversation, self._engine_calls, lambda: self.t
        )
        self._endpointer = Endpointer(
            self.config, vad.segmenter, setup.turn_model, self.clock,
            vad_params.min_silence_ms, self._engine_calls.error,
            text_model=setup.text_turn_model, early_text=self._speculator.early_text,
        )  # fmt: skip
        self._floor_guard = FloorGuard(self.config, vad.segmenter, self._engine_calls)
        self._tap = setup.audio_tap
        self._output = SpeechOutput(
            self.sink, on_unheard=None if self._tap is None else self._tap.unheard
        )
        self._actions = CallActions(
            self.control, self.end, self._engine_calls.error,
            on_transferred=self._transferred, on_transfer_failed=self._transfer_failed,
        )  # fmt: skip
        self._replies = Replies(self._engine_calls, self._conversation, self._output.playout)
        self._turns = Turns(
            self.config, self._conversation, self._engine_calls, self._replies,
            publish=self._publish, set_state=self._set_state,
        )  # fmt: skip
        self._lifetime = Lifetime(
            start=self._start, fail=self._report_failure, shutdown=self._shutdown,
            ended=lambda reason: self._publish(CallEnded, reason=reason),
        )  # fmt: skip
        self._state = AgentState.WAITING_FOR_SPEECH
        self._frames_in = 0
        self._frame_in: np.ndarray | None = None  # this tick's caller frame, for the tap
        # True from a speech_start the bot talked on through (barge_in off) to its speech_end.
        self._ignore_segment = False

    # -- public --------------------------------------------------------------------------
    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def t(self) -> float:
        """Seconds of call audio received so far."""
        return self._frames_in * FRAME_SECONDS

    @property
    def idle(self) -> bool:
        """Nothing to say and nothing being worked on."""
        return (
            self._replies.current is None
            and self._turns.task is None
            and self._output.playout.empty
            and self._actions.pending is None
        )

    @property
    def echo_canceller(self) -> EchoCanceller | None:
        """The leg's echo canceller (SIP); None if it has none."""
        return self._input.echo_canceller

    @property
    def denoiser(self) -> NoiseSuppressor | None:
        """The leg's noise suppressor (SIP); None if it has none."""
        return self._input.denoiser

    @property
    def stt_inputs(self) -> list[np.ndarray]:
        """Every buffer sent to STT (tests, audits)."""
        return self._engine_calls.stt_inputs

    @property
    def vad_stream(self) -> VadStream:
        """The VAD model state of this call (for runners that batch windows of many calls)."""
        return self._input.vad.stream

    def dtmf(self, digit: str) -> None:
        """A key the caller pressed (transports decode RFC 4733 / SIP INFO)."""
        self._publish(DtmfPressed, digit=digit)

    def end(self, reason: str) -> None:
        """Ask the session to end after the current frame (hang-up from outside)."""
        self._lifetime.end(reason)

    @property
    def ending(self) -> bool:
        """Asked to end (by the caller's side or the bot's): no more frames are wanted."""
        return self._lifetime.ending

    async def run(self, frames: AsyncIterator[np.ndarray]) -> str:
        """Pull `frames` until they end or the call is ended; returns the end reason."""

        async def pull() -> None:
            async for frame in frames:
                await self.process_frame(frame)
                if self.ending:
                    break

        return await self._lifetime.run(pull())

    async def run_driven(self) -> str:
        """Run while a shared clock (the SIP media clock) steps the session with
        `begin_frame` / `finish_frame`; returns once `end` or `fail` is called."""
        return await self._lifetime.run(self._lifetime.until_ended())

    def fail(self, exc: BaseException) -> None:
        """A driven session's frame step raised: report it and end the call (only this one)."""
        self._report_failure(exc)
        self.end("error")

    async def process_frame(self, frame: np.ndarray) -> None:
        """One 20 ms frame in: VAD, state machine, then one frame of bot speech out."""
        windows = self.begin_frame(frame)
        probabilities = [
            await self._vad_runner.probability(self._input.vad.stream, window) for window in windows
        ]
        self.finish_frame(windows, probabilities)

    def begin_frame(self, frame: np.ndarray) -> list[np.ndarray]:
        """First half of a frame step: input stages, then the VAD windows now due (at most
        one for 20 ms frames). The caller runs the VAD model on them (batched across calls
        if it likes) and hands the probabilities to `finish_frame`."""
        pcm = check_frame(frame)
        self._frames_in += 1
        self._frame_in = pcm
        return self._input.windows(pcm)

    def finish_frame(self, windows: list[np.ndarray], probabilities: list[float]) -> None:
        """Second half: VAD events drive the states, then this tick's bot frame goes out.
        Synchronous, so a barge-in silences the sink in this same event-loop turn."""
        for window, probability in zip(windows, probabilities, strict=True):
            for event in self._input.events(window, probability):
                self._on_vad_event(event)
            self._hold_on_candidate()
        end = self._endpointer.on_frame(judge=not self._ignore_segment)
        if end is not None:
            self._on_speech_end(end)
        noise = self._floor_guard.on_frame(windows, judge=not self._ignore_segment)
        if noise is not None:
            self._on_speech_end(noise, ended_by="no_words")
        self._speculator.on_frame(listening=self._state is AgentState.LISTENING)
        sent = self._tick_output()
        self._input.sent(sent)
        if self._tap is not None and self._frame_in is not None:
            self._tap.tick(self._frame_in, sent)

    # -- lifetime --------------------------------------------------------------------------
    def _start(self) -> None:
        self._publish(CallStarted, info=self.info)
        self._publish(StateChanged, state=self._state)
        if self.config.greeting:
            self._replies.start(texts=[self.config.greeting])

    async def _shutdown(self) -> None:
        await self._replies.stop()
        speculation_task = await self._speculator.stop()
        verdicts = self._endpointer.stop()
        check = self._floor_guard.stop()
        tasks = [t for t in (self._turns.task, speculation_task, check) if t is not None]
        tasks += verdicts
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- VAD events -> states ------------------------------------------------------------
    def _on_vad_event(self, event: VadProbability | SpeechStart | SpeechEnd) -> None:
        if isinstance(event, VadProbability):
            level = self._levels.level(event)
            if level is not None:
                self._publish(VadLevel, t=event.t, probability=level)
        elif isinstance(event, SpeechStart):
            self._on_speech_start(event)
        else:
            self._on_speech_end(event)

    def _on_speech_start(self, event: SpeechStart) -> None:
        self._publish(SpeechStarted, t=event.t, onset=event.onset)
        self._ignore_segment = False
        bot_busy = self._replies.current is not None or self._turns.task is not None
        if bot_busy or self._state in (AgentState.SPEAKING, AgentState.THINKING):
            if self.config.barge_in:
                self._barge_in(event)
            else:
                self._ignore_segment = True  # the bot talks on; this speech is not a turn
        elif self._state is AgentState.WAITING_FOR_SPEECH:
            self._set_state(AgentState.LISTENING)

    def _on_speech_end(self, event: SpeechEnd, ended_by: str | None = None) -> None:
        cause, p = self._endpointer.cause(event)
        self._publish(SpeechEnded, t=event.t, duration=event.duration,
                      ended_by=ended_by or cause, turn_probability=p)  # fmt: skip
        if self._ignore_segment:
            self._ignore_segment = False
            return
        if self._state is not AgentState.LISTENING:
            return
        self._set_state(AgentState.THINKING)
        times = StageTimes(lambda: self.t, vad_speech_end=event.end, speech_end=event.t)
        self._turns.start(event.audio, self._speculator.take(event.end), times)

    def _hold_on_candidate(self) -> None:
        """Stop talking the moment the VAD sees possible speech, before it is confirmed.

        The first window over the activation threshold pauses output (queued audio dropped
        and rewound, nothing lost); `min_speech_ms` later speech_start confirms the barge-in,
        or the candidate dies as a blip and the bot carries on from where it paused. While
        THINKING it holds back the reply's start the same way: a caller going on after a
        short pause ("Hi, what is ...") is not talked over, and their words extend the turn.
        """
        if not self.config.barge_in:
            return
        segmenter = self._input.vad.segmenter
        candidate = segmenter.speech_pending
        held = self._output.held_at is not None
        if candidate and not held and self._state in (AgentState.SPEAKING, AgentState.THINKING):
            self._output.hold(self.t)
        elif not candidate and held and not segmenter.in_speech:
            self._output.release()

    def _barge_in(self, event: SpeechStart) -> None:
        # Everything here is synchronous: no await between seeing speech and silencing output.
        was_speaking = self._state is AgentState.SPEAKING
        reply = self._replies.cancel()
        self._turns.cancel()
        remainder, stopped_at = self._output.cut(self.t)
        heard = heard_text(self._conversation.spoken, remainder) if was_speaking else ""
        if was_speaking and reply is not None:
            # Complete sentences already written are kept even if the LLM was still going:
            # a resume says them (the rest of an unfinished reply is lost with the LLM).
            self._conversation.suspended = SuspendedReply(
                utterances=remainder,
                unspoken_texts=reply.unspoken_texts,
                action=reply.action if reply.llm_done else None,
                spoken_texts=list(self._conversation.spoken),
            )
        self._publish(Interrupted, latency_ms=(stopped_at - event.onset) * 1000, heard=heard)
        self._set_state(AgentState.INTERRUPTED)
        self._set_state(AgentState.LISTENING)

    # -- output ------------------------------------------------------------------------------
    def _tick_output(self) -> np.ndarray | None:
        """Send this tick's frame of bot speech, if any; returns it."""
        if self._output.held_at is not None:
            return None  # paused on possible speech; see _hold_on_candidate
        nxt = self._output.playout.next_frame()
        if nxt is not None:
            frame, utterance = nxt
            if self._state is AgentState.LISTENING:
                return None  # the caller has the floor; nothing plays over them
            if self._state in (AgentState.THINKING, AgentState.WAITING_FOR_SPEECH):
                self._conversation.commit_user()
                self._set_state(AgentState.SPEAKING)
                self._report_turn_latency()
            if not utterance.announced:
                utterance.announced = True
                self._conversation.spoken.append(utterance.text)
                self._publish(BotText, text=utterance.text)
            self._output.write(frame, utterance)
            return frame
        reply = self._replies.finished()
        if reply is None:
            return None
        # The reply is fully played (or produced nothing).
        spoken = self._conversation.spoken
        if reply.failed and not spoken and reply.uses_llm:
            self._replies.start(texts=[self.config.fallback_text], times=reply.times)
            return None
        if spoken:
            self._conversation.commit_assistant(spoken, interrupted=False)
            self._conversation.spoken = []
            if reply.action is None:  # a hang-up or transfer follows: no next turn to read
                self._engine_calls.read_ahead(self._conversation.messages_before_turn())
        if self._state in (AgentState.SPEAKING, AgentState.THINKING):
            self._set_state(AgentState.WAITING_FOR_SPEECH)
        if reply.action is not None:
            self._actions.perform(reply.action)
        return None

    # -- transfers -----------------------------------------------------------------------------
    def _transferred(self, target: str, outcome: TransferOutcome) -> None:
        self._publish(CallTransferred, target=target, status=outcome.status,
                      reason=outcome.reason, confirmed=outcome.confirmed)  # fmt: skip

    def _transfer_failed(self, target: str, outcome: TransferOutcome) -> None:
        """The transfer did not happen: the call goes on, and the caller is told so
        (`agent.transfer_failed_message`), then heard again (WAITING_FOR_SPEECH)."""
        self._publish(TransferFailed, target=target, status=outcome.status, reason=outcome.reason)
        message = self.config.transfer_failed_message
        if self.ending or not message:
            return
        if self._replies.current is not None or self._turns.task is not None:
            # The caller spoke while the transfer was tried: that turn's answer comes next.
            log.info("call %s: transfer failed while a reply was under way", self.call_id)
            return
        self._replies.start(texts=[message])

    def _report_turn_latency(self) -> None:
        """The first frame of an answer to a turn is going out: publish its stage times."""
        reply = self._replies.current
        times = reply.times if reply is not None else None
        if times is None or times.reported or times.speech_end is None:
            return
        times.reported = True
        self._publish(TurnLatency, **times.as_fields(self.t))

    # -- helpers -------------------------------------------------------------------------------
    def _set_state(self, state: AgentState) -> None:
        if state is self._state:
            return
        self._state = state
        self._publish(StateChanged, state=state)

    def _report_failure(self, exc: BaseException) -> None:
        log.error("call %s failed", self.call_id, exc_info=exc)
        self._report_error("agent", f"agent: {type(exc).__name__}: {exc}")

    def _report_error(self, source: str, message: str) -> None:
        self._publish(ErrorRaised, source=source, message=message)

    def _publish(self, kind: type[Event], t: float | None = None, **fields: Any) -> None:
        self.bus.publish(kind(call_id=self.call_id, t=self.t if t is None else t, **fields))
