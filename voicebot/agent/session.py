"""CallSession: one call's event loop and state machine (DESIGN.md section 2).

Frames come in from the transport; each runs through the VAD, whose events drive the
states WAITING_FOR_SPEECH -> LISTENING -> THINKING -> SPEAKING, and SPEAKING/THINKING ->
INTERRUPTED -> LISTENING on barge-in. Then one frame of the bot's speech goes out to the
sink: output is clocked by input, so the session always knows what the caller has heard.

Barge-in is handled synchronously inside the VAD event handler: the reply tasks are
cancelled and the sink cleared in the same event-loop turn that sees `speech_start`.
Only speech segments ever reach STT. The session knows nothing of wire formats.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from voicebot.agent.clock import EngineClock, EngineTimeoutError, LiveClock, with_timeout
from voicebot.agent.config import AgentConfig
from voicebot.agent.events import (
    AgentState,
    BotText,
    CallEnded,
    CallStarted,
    DtmfPressed,
    ErrorRaised,
    Event,
    EventBus,
    Interrupted,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TranscriptReady,
    VadLevel,
)
from voicebot.agent.playout import AudioSink, Playout, Utterance
from voicebot.agent.reply import ReplyPipeline
from voicebot.agent.vad_runner import InlineVad, VadRunner
from voicebot.audio.denoise import NoiseSuppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.audio.frames import FRAME_SAMPLES, SAMPLE_RATE
from voicebot.models.base import (
    CallAction,
    ChatMessage,
    Engines,
    Transcript,
)
from voicebot.models.vad import (
    SileroVad,
    SpeechEnd,
    SpeechStart,
    VadParams,
    VadProbability,
    VadStream,
    VoiceActivityDetector,
)

log = logging.getLogger("voicebot.agent")

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE


class CallControl(Protocol):
    """What a transport can do to its call when the bot asks (SIP: BYE, REFER)."""

    async def hangup(self) -> None: ...

    async def transfer(self, target: str) -> None: ...


@dataclass
class _SuspendedReply:
    """What a barge-in cut off: resumed if the interruption proves to be no words."""

    utterances: list[Utterance]
    unspoken_texts: list[str]
    action: CallAction | None
    spoken_texts: list[str]


@dataclass(eq=False)
class _Speculation:
    """Work started at a pause, before speech_end confirms the turn is over: the transcript
    of the speech so far and then, held back in a private playout, the reply to it. If the
    caller goes on talking it is thrown away; if not, speech_end adopts it ready-made."""

    end: float
    task: asyncio.Task[Transcript]
    user_text: str | None = None
    reply: ReplyPipeline | None = None
    playout: Playout = field(default_factory=Playout)

    def cancel(self) -> None:
        self.task.cancel()
        if self.reply is not None:
            self.reply.cancel()


@dataclass
class _Turn:
    """The caller's words not yet answered: a turn cut short by more speech keeps its text
    (or, if STT had not finished, its audio) to be answered together with what follows."""

    texts: list[str] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.texts and not self.audio


_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


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
    clock: EngineClock = field(default_factory=LiveClock)
    control: CallControl | None = None
    info: dict[str, object] = field(default_factory=dict)
    echo_canceller: EchoCanceller | None = None
    denoiser: NoiseSuppressor | None = None


class CallSession:
    def __init__(self, setup: CallSetup) -> None:
        self.call_id = setup.call_id
        self.info = dict(setup.info)
        # Input stages for legs without their own (SIP): echo of the bot removed, then noise.
        self.echo_canceller = setup.echo_canceller
        self.denoiser = setup.denoiser
        self.engines = setup.engines
        self.sink = setup.sink
        self.bus = setup.bus
        self.config = setup.config
        self.clock = setup.clock
        self.control = setup.control
        self._vad_runner = setup.vad_runner
        self._vad = VoiceActivityDetector(setup.vad_model, setup.vad_params)
        self._state = AgentState.WAITING_FOR_SPEECH
        self._frames_in = 0
        self._playout = Playout()
        self._last_utterance: Utterance | None = None
        self._reply: ReplyPipeline | None = None
        self._turn_task: asyncio.Task[None] | None = None
        self._turn_audio: np.ndarray | None = None
        self._suspended: _SuspendedReply | None = None
        self._unanswered = _Turn()
        self._ignore_segment = False
        self._speculation: _Speculation | None = None
        self._held_at: float | None = None  # output paused on a speech candidate, since
        self._history: list[ChatMessage] = []
        self._spoken: list[str] = []  # sentences of the current reply heard so far
        self._pending_action: CallAction | None = None
        self._end_reason: str | None = None
        self._stopped: asyncio.Future[None] | None = None  # driven mode: set by end()
        self._last_vad_event_t = -1.0
        self._vad_peak = 0.0
        self.stt_inputs: list[np.ndarray] = []  # every buffer sent to STT (tests, audits)

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
            self._reply is None
            and self._turn_task is None
            and self._playout.empty
            and self._pending_action is None
        )

    def dtmf(self, digit: str) -> None:
        """A key the caller pressed (transports decode RFC 4733 / SIP INFO)."""
        self._publish(DtmfPressed, digit=digit)

    def end(self, reason: str) -> None:
        """Ask the session to end after the current frame (hang-up from outside)."""
        self._end_reason = self._end_reason or reason
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    @property
    def ending(self) -> bool:
        """Asked to end (by the caller's side or the bot's): no more frames are wanted."""
        return self._end_reason is not None

    async def run(self, frames: AsyncIterator[np.ndarray]) -> str:
        """Pull `frames` until they end or the call is ended; returns the end reason."""

        async def pull() -> None:
            async for frame in frames:
                await self.process_frame(frame)
                if self._end_reason is not None:
                    break

        return await self._lifetime(pull())

    async def run_driven(self) -> str:
        """Run while a shared clock (the SIP media clock) steps the session with
        `begin_frame` / `finish_frame`; returns once `end` or `fail` is called."""

        async def wait_for_end() -> None:
            self._stopped = asyncio.get_running_loop().create_future()
            if self._end_reason is None:
                await self._stopped

        return await self._lifetime(wait_for_end())

    async def _lifetime(self, body: Coroutine[Any, Any, None]) -> str:
        self._publish(CallStarted, info=self.info)
        self._publish(StateChanged, state=self._state)
        if self.config.greeting:
            self._start_reply(texts=[self.config.greeting])
        reason = "caller_hangup"
        try:
            await body
            if self._end_reason is not None:
                reason = self._end_reason
        except asyncio.CancelledError:
            reason = self._end_reason or "cancelled"
            raise
        except Exception as exc:
            self._report_failure(exc)
            reason = "error"
        finally:
            # From here on the session is ending, whatever ended it (also a cancellation):
            # a media clock stops stepping it, so nothing new starts during the shutdown.
            self._end_reason = self._end_reason or reason
            await self._shutdown()
            self._publish(CallEnded, reason=reason)
        return reason

    def fail(self, exc: BaseException) -> None:
        """A driven session's frame step raised: report it and end the call (only this one)."""
        self._report_failure(exc)
        self.end("error")

    def _report_failure(self, exc: BaseException) -> None:
        log.error("call %s failed", self.call_id, exc_info=exc)
        self._publish(ErrorRaised, source="agent", message=f"agent: {type(exc).__name__}: {exc}")

    async def process_frame(self, frame: np.ndarray) -> None:
        """One 20 ms frame in: VAD, state machine, then one frame of bot speech out."""
        windows = self.begin_frame(frame)
        probabilities = [
            await self._vad_runner.probability(self._vad.stream, window) for window in windows
        ]
        self.finish_frame(windows, probabilities)

    def begin_frame(self, frame: np.ndarray) -> list[np.ndarray]:
        """First half of a frame step: input stages, then the VAD windows now due (at most
        one for 20 ms frames). The caller runs the VAD model on them (batched across calls
        if it likes) and hands the probabilities to `finish_frame`."""
        pcm = np.asarray(frame)
        if pcm.dtype != np.int16 or pcm.shape != (FRAME_SAMPLES,):
            raise ValueError(
                f"frame must be {FRAME_SAMPLES} int16 samples, got {pcm.dtype} {pcm.shape}"
            )
        self._frames_in += 1
        if self.echo_canceller is not None:
            pcm = self.echo_canceller.process(pcm)
        if self.denoiser is not None:
            segmenter = self._vad.segmenter
            quiet = not (segmenter.in_speech or segmenter.speech_pending)
            pcm = self.denoiser.process(pcm, noise_only=quiet)
        return self._vad.windows(pcm)

    def finish_frame(self, windows: list[np.ndarray], probabilities: list[float]) -> None:
        """Second half: VAD events drive the states, then this tick's bot frame goes out.
        Synchronous, so a barge-in silences the sink in this same event-loop turn."""
        for window, probability in zip(windows, probabilities, strict=True):
            for event in self._vad.on_probability(window, probability):
                self._on_vad_event(event)
            self._hold_on_candidate()
        self._maybe_speculate()
        self._tick_output()

    @property
    def vad_stream(self) -> VadStream:
        """The VAD model state of this call (for runners that batch windows of many calls)."""
        return self._vad.stream

    # -- VAD events -> states ------------------------------------------------------------
    def _on_vad_event(self, event: VadProbability | SpeechStart | SpeechEnd) -> None:
        if isinstance(event, VadProbability):
            self._on_probability(event)
        elif isinstance(event, SpeechStart):
            self._on_speech_start(event)
        else:
            self._on_speech_end(event)

    def _on_probability(self, event: VadProbability) -> None:
        interval = self.config.vad_event_interval_ms / 1000
        if interval <= 0:
            return
        self._vad_peak = max(self._vad_peak, event.probability)
        if event.t - self._last_vad_event_t >= interval:
            self._publish(VadLevel, t=event.t, probability=self._vad_peak)
            self._last_vad_event_t = event.t
            self._vad_peak = 0.0

    def _on_speech_start(self, event: SpeechStart) -> None:
        self._publish(SpeechStarted, t=event.t, onset=event.onset)
        self._ignore_segment = False
        bot_busy = self._reply is not None or self._turn_task is not None
        if bot_busy or self._state in (AgentState.SPEAKING, AgentState.THINKING):
            if self.config.barge_in:
                self._barge_in(event)
            else:
                self._ignore_segment = True  # the bot talks on; this speech is not a turn
        elif self._state is AgentState.WAITING_FOR_SPEECH:
            self._set_state(AgentState.LISTENING)

    def _on_speech_end(self, event: SpeechEnd) -> None:
        self._publish(SpeechEnded, t=event.t, duration=event.duration)
        if self._ignore_segment:
            self._ignore_segment = False
            return
        if self._state is not AgentState.LISTENING:
            return
        self._set_state(AgentState.THINKING)
        speculation, self._speculation = self._speculation, None
        reuse = speculation if speculation and abs(speculation.end - event.end) < 1e-6 else None
        if speculation is not None and reuse is None:
            speculation.cancel()
        audio = event.audio
        if self._unanswered.audio:
            # The earlier part of this turn was never transcribed: hear it all together.
            gap = np.zeros(SAMPLE_RATE // 10, np.int16)
            audio = np.concatenate([x for a in self._unanswered.audio for x in (a, gap)] + [audio])
        self._turn_audio = audio
        self._turn_task = asyncio.create_task(self._handle_turn(audio, reuse))

    def _hold_on_candidate(self) -> None:
        """Stop talking the moment the VAD sees possible speech, before it is confirmed.

        The first window over the activation threshold pauses output (queued audio dropped
        and rewound, nothing lost); `min_speech_ms` later speech_start confirms the barge-in,
        or the candidate dies as a blip and the bot carries on from where it paused.
        """
        if not self.config.barge_in:
            return
        candidate = self._vad.segmenter.speech_pending
        if candidate and self._held_at is None and self._state is AgentState.SPEAKING:
            dropped = self.sink.clear()
            self._playout.rewind(dropped, self._last_utterance)
            self._held_at = self.t
        elif not candidate and self._held_at is not None and not self._vad.segmenter.in_speech:
            self._held_at = None

    def _barge_in(self, event: SpeechStart) -> None:
        # Everything here is synchronous: no await between seeing speech and silencing output.
        was_speaking = self._state is AgentState.SPEAKING
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.cancel()
        if self._turn_task is not None:
            self._turn_task.cancel()
            self._turn_task = None
            if self._turn_audio is not None:  # cut before STT finished: keep what was said
                self._unanswered.audio = [self._turn_audio]
        self._turn_audio = None
        dropped = self.sink.clear()
        self._playout.rewind(dropped, self._last_utterance)
        remainder = self._playout.take_remainder()
        flushed_at = self._held_at if self._held_at is not None else self.t
        self._held_at = None
        latency_ms = (flushed_at - event.onset) * 1000
        if was_speaking and reply is not None:
            # Complete sentences already written are kept even if the LLM was still going:
            # a resume says them (the rest of an unfinished reply is lost with the LLM).
            self._suspended = _SuspendedReply(
                utterances=remainder,
                unspoken_texts=reply.unspoken_texts,
                action=reply.action if reply.llm_done else None,
                spoken_texts=list(self._spoken),
            )
        self._publish(Interrupted, latency_ms=latency_ms)
        self._set_state(AgentState.INTERRUPTED)
        self._set_state(AgentState.LISTENING)

    # -- turns -----------------------------------------------------------------------------
    async def _handle_turn(self, audio: np.ndarray, speculation: _Speculation | None) -> None:
        try:
            if speculation is not None:
                transcript = await asyncio.shield(speculation.task)
            else:
                transcript = await self._transcribe(audio)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._engine_error(f"STT {self.engines.stt.name}", exc)
            self._turn_task = None
            self._turn_audio = None
            self._unanswered = _Turn()
            self._suspended = None
            self._start_reply(texts=[self.config.fallback_text])
            return
        self._turn_audio = None
        self._unanswered.audio = []
        self._publish(TranscriptReady, text=transcript.text, final=True)

        suspended, self._suspended = self._suspended, None
        if suspended is not None:
            if self.config.false_interruption_resume and self._is_false_interruption(transcript):
                self._resume(suspended)
                return
            self._commit_assistant(suspended.spoken_texts, interrupted=True)

        user_text = self._user_text(transcript)
        if not user_text:
            self._turn_task = None
            self._set_state(AgentState.WAITING_FOR_SPEECH)
            return
        # Kept until the reply starts playing: more speech before then extends this turn.
        self._unanswered.texts = [user_text]
        self._turn_task = None
        if (
            speculation is not None
            and speculation.reply is not None
            and speculation.user_text == user_text
        ):
            self._adopt(speculation)
            return
        if speculation is not None:
            speculation.cancel()
        self._start_reply(messages=self._messages(user_text))

    def _user_text(self, transcript: Transcript) -> str:
        words = [*self._unanswered.texts, transcript.text.strip()]
        return " ".join(w for w in words if w and not Transcript(w).is_empty)

    def _messages(self, user_text: str) -> list[ChatMessage]:
        messages = [ChatMessage("system", self.config.system_prompt)]
        if self.config.max_history_messages:
            messages += self._history[-self.config.max_history_messages :]
        messages.append(ChatMessage("user", user_text))
        return messages

    def _adopt(self, speculation: _Speculation) -> None:
        """The speculative reply is the real one: move its held audio to the live playout."""
        assert speculation.reply is not None
        self._spoken = []
        for utterance in speculation.playout.take_remainder():
            self._playout.append(utterance)
        speculation.reply.retarget(self._playout)
        self._reply = speculation.reply

    async def _transcribe(self, audio: np.ndarray) -> Transcript:
        self.stt_inputs.append(audio)
        stt = self.engines.stt
        return await self.clock.call(with_timeout(stt.transcribe(audio), self.config.stt_timeout_s))

    def _maybe_speculate(self) -> None:
        """At a pause mid-speech, start on the reply to what was said so far."""
        if not self.config.speculative_stt or self._state is not AgentState.LISTENING:
            return
        speculation = self._speculation
        if self._vad.segmenter.trailing_silence_ms < self.config.speculative_pause_ms:
            if speculation is not None and self._vad.segmenter.trailing_silence_ms == 0:
                # The caller went on talking: what was started no longer answers the turn.
                speculation.cancel()
                self._speculation = None
            return
        segment = self._vad.segmenter.open_segment()
        if segment is None or self._unanswered.audio:
            return
        _, end, audio = segment
        if speculation is not None:
            if abs(speculation.end - end) < 1e-6:
                return
            speculation.cancel()
        task = asyncio.create_task(self._transcribe(audio))
        self._speculation = _Speculation(end, task)
        task.add_done_callback(lambda done, spec=self._speculation: self._speculate_reply(spec))

    def _speculate_reply(self, speculation: _Speculation) -> None:
        """The early transcript is in: start the LLM and TTS on it, output held back."""
        if (
            speculation is not self._speculation
            or speculation.task.cancelled()
            or speculation.task.exception() is not None
            or self._suspended is not None  # a false interruption may need to resume instead
        ):
            return
        user_text = self._user_text(speculation.task.result())
        if not user_text:
            return
        speculation.user_text = user_text
        speculation.reply = self._new_reply(speculation.playout)
        speculation.reply.start_llm(self._messages(user_text))

    def _is_false_interruption(self, transcript: Transcript) -> bool:
        text = _normalise(transcript.text)
        if not text:
            return True
        backchannels = {_normalise(b) for b in self.config.backchannels}
        if text in backchannels:
            return True
        return all(word in backchannels for word in text.split())

    def _resume(self, suspended: _SuspendedReply) -> None:
        self._spoken = suspended.spoken_texts
        for utterance in suspended.utterances:
            self._playout.append(utterance)
        self._set_state(AgentState.THINKING)
        self._start_reply(texts=suspended.unspoken_texts, action=suspended.action, keep_spoken=True)

    def _start_reply(
        self,
        *,
        texts: list[str] | None = None,
        messages: list[ChatMessage] | None = None,
        action: CallAction | None = None,
        keep_spoken: bool = False,
    ) -> None:
        if not keep_spoken:
            self._spoken = []
        reply = self._new_reply(self._playout)
        reply.action = action
        self._reply = reply
        if messages is not None:
            reply.start_llm(messages)
        else:
            reply.start_texts(texts or [])

    def _new_reply(self, playout: Playout) -> ReplyPipeline:
        return ReplyPipeline(
            tts=self.engines.tts,
            llm=self.engines.llm,
            playout=playout,
            clock=self.clock,
            tts_timeout_s=self.config.tts_timeout_s,
            llm_timeout_s=self.config.llm_timeout_s,
            on_error=self._engine_error,
        )

    def _engine_error(self, what: str, exc: BaseException) -> None:
        if isinstance(exc, EngineTimeoutError):
            message = f"{what}: {exc}"
        elif str(exc):
            message = f"{what}: {type(exc).__name__}: {exc}"
        else:
            message = f"{what}: {type(exc).__name__}"
        log.warning("call %s: %s", self.call_id, message)
        self._publish(ErrorRaised, source=what, message=message)

    # -- output ------------------------------------------------------------------------------
    def _tick_output(self) -> None:
        sent = self._tick_output_frame()
        if self.echo_canceller is not None:
            self.echo_canceller.reference(sent)

    def _tick_output_frame(self) -> np.ndarray | None:
        """Send this tick's frame of bot speech, if any; returns it."""
        reply = self._reply
        if self._held_at is not None:
            return None  # paused on possible speech; see _hold_on_candidate
        nxt = self._playout.next_frame()
        if nxt is not None:
            frame, utterance = nxt
            if self._state is AgentState.LISTENING:
                return None  # the caller has the floor; nothing plays over them
            if self._state in (AgentState.THINKING, AgentState.WAITING_FOR_SPEECH):
                self._commit_user()
                self._set_state(AgentState.SPEAKING)
            if not utterance.announced:
                utterance.announced = True
                self._spoken.append(utterance.text)
                self._publish(BotText, text=utterance.text)
            self.sink.write(frame)
            self._last_utterance = utterance
            return frame
        if reply is None or not reply.done:
            return None
        # The reply is fully played (or produced nothing).
        self._reply = None
        if reply.failed and not self._spoken and reply.uses_llm:
            self._start_reply(texts=[self.config.fallback_text])
            return None
        if self._spoken:
            self._commit_assistant(self._spoken, interrupted=False)
            self._spoken = []
        if self._state in (AgentState.SPEAKING, AgentState.THINKING):
            self._set_state(AgentState.WAITING_FOR_SPEECH)
        if reply.action is not None:
            if self.control is None:  # nobody to hand the call to: it ends here
                self.end("transferred" if reply.action.kind == "transfer" else "bot_hangup")
            else:
                self._pending_action = reply.action
                asyncio.get_running_loop().create_task(self._perform(reply.action))
        return None

    async def _perform(self, action: CallAction) -> None:
        try:
            if action.kind == "transfer":
                if self.control is not None:
                    await self.control.transfer(action.target or "")
                self.end("transferred")
            else:
                if self.control is not None:
                    await self.control.hangup()
                self.end("bot_hangup")
        except Exception as exc:
            self._engine_error(f"call control {action.kind}", exc)
        finally:
            self._pending_action = None

    def _commit_user(self) -> None:
        """The reply to the unanswered words starts playing: they become history."""
        if self._unanswered.texts:
            self._history.append(ChatMessage("user", " ".join(self._unanswered.texts)))
        self._unanswered = _Turn()

    def _commit_assistant(self, spoken: list[str], *, interrupted: bool) -> None:
        if spoken:
            text = " ".join(spoken) + (" ..." if interrupted else "")
            self._history.append(ChatMessage("assistant", text))

    # -- helpers -------------------------------------------------------------------------------
    def _set_state(self, state: AgentState) -> None:
        if state is self._state:
            return
        self._state = state
        self._publish(StateChanged, state=state)

    def _publish(self, kind: type[Event], t: float | None = None, **fields: Any) -> None:
        self.bus.publish(kind(call_id=self.call_id, t=self.t if t is None else t, **fields))

    async def _shutdown(self) -> None:
        tasks: list[asyncio.Task[object]] = []
        if self._reply is not None:
            self._reply.cancel()
            await self._reply.wait()
        if self._speculation is not None:
            self._speculation.cancel()
            if self._speculation.reply is not None:
                await self._speculation.reply.wait()
        for task in (self._turn_task, self._speculation.task if self._speculation else None):
            if task is not None:
                task.cancel()
                tasks.append(task)  # type: ignore[arg-type]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
