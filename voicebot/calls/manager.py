"""The calls of one gateway process: what they share, who gets in, and the drain.

`CallManager` holds what every call shares whatever its transport (engines, the Silero
model and its batched runner, settings, metrics, the JSONL event log), admits calls up to
`server.max_calls` and while the engines keep up, builds each admitted call's session
(`start`) and forgets it when it ends (`finish`). Once a shutdown starts, new calls are
refused and running ones get until the deadline to end on their own before they are ended.
Transports never call this directly: `calls.leg.run_leg` does, in one order for all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from voicebot.agent.events import Event, EventBus, Subscriber
from voicebot.agent.playout import AudioSink
from voicebot.agent.session import CallControl, CallSession, CallSetup
from voicebot.agent.vad_runner import BatchedVad
from voicebot.audio.denoise import NoiseSuppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.calls.cpu_budget import CpuBudget
from voicebot.calls.metrics import GatewayMetrics
from voicebot.calls.outbound import OutboundCalls
from voicebot.calls.records.recorder import CallRecorder
from voicebot.calls.records.recording import CallRecording
from voicebot.calls.records.service import CallRecords
from voicebot.config import Settings
from voicebot.models.base import Engines
from voicebot.models.executor import ENGINE_BACKLOG, EngineBacklog
from voicebot.models.turn import load_turn_model
from voicebot.models.turn.text import load_text_turn_model
from voicebot.models.vad import SileroVad

log = logging.getLogger("voicebot.calls")
_ids = itertools.count(1)


class Refusal(StrEnum):
    """Why a call was not admitted (the `reason` label of voicebot_calls_rejected_total);
    each transport maps it to its wire (WS close 1013, SIP 486/503, HTTP 503)."""

    SHUTTING_DOWN = "shutting_down"
    BUSY = "busy"  # the transport's own limit (`limits`), e.g. sip.max_calls
    CAPACITY = "capacity"  # the process-wide limit, server.max_calls
    ENGINE_BACKLOG = "engine_backlog"
    CPU = "cpu"  # the process's CPU would not carry one more call (calls/cpu_budget.py)
    MEDIA_OVERLOAD = "overload"


class CallRefusedError(Exception):
    def __init__(self, kind: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass
class LegMedia:
    """What a transport brings to its call's session once it is set up.

    `variables`: what the caller's side knew of the call, normalised by
    `calls.variables.call_variables` (SIP headers, stream parameters, an API body): kept
    in the record and webhooks, and filling `{{name}}` in what the bot says.
    `prompt_overrides`: this call's own `greeting` / `system_prompt` (e.g. from an
    outbound call's API body) in place of the configured texts, rendered like them."""

    sink: AudioSink
    control: CallControl | None = None
    info: dict[str, object] = field(default_factory=dict)
    subscribers: list[Subscriber] = field(default_factory=list)
    echo_canceller: EchoCanceller | None = None
    denoiser: NoiseSuppressor | None = None
    variables: dict[str, str] = field(default_factory=dict)
    prompt_overrides: dict[str, str] = field(default_factory=dict)


@dataclass
class CallHandle:
    call_id: str
    transport: str
    session: CallSession
    started: float = field(default_factory=time.monotonic)
    recorder: CallRecorder | None = None
    recording: CallRecording | None = None


class CallManager:
    def __init__(
        self,
        settings: Settings,
        engines: Engines,
        metrics: GatewayMetrics,
        records: CallRecords | None = None,
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.metrics = metrics
        # Every call's record, turns, recording and webhooks (None: records are off).
        self.records = records
        self.vad_model = SileroVad.shared()
        self.vad = BatchedVad(self.vad_model, on_batch=self._on_vad_batch)
        # None (logged) if the file is missing: turns then end on the fixed silence rule.
        self.turn_model = (
            load_turn_model(on_batch=self._on_turn_batch)
            if settings.agent.endpointing == "smart_turn"
            else None
        )
        # The words' second opinion on pauses it judges unfinished (None, logged: without it).
        self.text_turn_model = (
            load_text_turn_model()
            if self.turn_model is not None and settings.agent.turn_text_threshold > 0
            else None
        )
        self.calls: dict[str, CallHandle] = {}
        # Calls admitted and still setting up (not yet in `calls`): id -> (transport, the
        # task setting it up, which the drain deadline cancels).
        self._admitted: dict[str, tuple[str, asyncio.Task[object] | None]] = {}
        # A transport's own cap on its calls (SIP: sip.max_calls), checked before the
        # process-wide one; transports without an entry have none.
        self.limits: dict[str, int] = {}
        out = settings.outbound
        self.outbound = OutboundCalls(out.max_calls, out.calls_per_second, out.burst)
        # Outbound calls dialled and not answered yet: their record exists from the dial on
        # (an unanswered call still has one, with its outcome as the end reason).
        self._early_records: dict[str, CallRecorder] = {}
        # Hang-up of calls still setting up (an outbound call ringing: CANCEL).
        self._abort: dict[str, Callable[[], None]] = {}
        self.engine_backlog: EngineBacklog = ENGINE_BACKLOG
        self.cpu = CpuBudget(settings.server.cpu_budget, settings.server.cpu_per_call)
        self._cpu_task: asyncio.Task[None] | None = None
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._events_log = (
            settings.server.events_log.open("a", encoding="utf-8", buffering=1)
            if settings.server.events_log
            else None
        )

    @property
    def active(self) -> int:
        """Calls running or admitted and still setting up: what admission counts."""
        return len(self.calls) + len(self._admitted)

    def _log_event(self, event: Event) -> None:
        if self._events_log is not None:
            self._events_log.write(event.to_json() + "\n")

    def _on_turn_batch(self, turns: int, seconds: float) -> None:
        self.metrics.turn_model_batch_size.observe(turns)
        self.metrics.turn_model_seconds.observe(seconds / max(1, turns))

    def _on_vad_batch(self, windows: int, seconds: float) -> None:
        self.metrics.vad_batch_size.observe(windows)
        self.metrics.vad_window_seconds.observe(seconds / max(1, windows))

    def new_call_id(self, transport: str) -> str:
        # Unique across gateways sharing one records store, and across restarts.
        return f"{transport}-{int(time.time())}-{next(_ids)}-{uuid.uuid4().hex[:8]}"

    def count(self, transport: str) -> int:
        """Calls of one transport running or setting up."""
        running = sum(1 for handle in self.calls.values() if handle.transport == transport)
        return running + sum(1 for kind, _ in self._admitted.values() if kind == transport)

    def admit(self, transport: str) -> None:
        """Raise CallRefusedError if a new call cannot start now (nothing is reserved)."""
        if self.draining:
            self._refuse(transport, Refusal.SHUTTING_DOWN, "shutting down")
        limit = self.limits.get(transport)
        if limit is not None and self.count(transport) >= limit:
            raise CallRefusedError(Refusal.BUSY, f"too many {transport} calls")
        if self.active >= self.settings.server.max_calls:
            self._refuse(transport, Refusal.CAPACITY, "too many calls")
        max_wait = self.settings.server.max_engine_wait_s
        if max_wait > 0 and (wait := self.engine_backlog.wait_s()) > max_wait:
            # Media stays on time under load (engines run at low priority); what suffers
            # is the time to answer a turn. Past this, another call makes every caller wait.
            log.warning("new %s call refused: engine requests waiting %.1f s", transport, wait)
            self._refuse(transport, Refusal.ENGINE_BACKLOG, "engines overloaded")
        if not self.cpu.admits(self.active + 1):
            log.warning("new %s call refused: %d calls at %.2f %% of a core each would pass"
                        " the CPU budget", transport, self.active + 1,
                        100 * self.cpu.per_call)  # fmt: skip
            self._refuse(transport, Refusal.CPU, "CPU at capacity")

    def measure_cpu(self) -> None:
        """Start measuring what a call costs (on the running loop)."""
        if self._cpu_task is None:
            self._cpu_task = asyncio.get_running_loop().create_task(
                self.cpu.run(lambda: len(self.calls)), name="cpu-budget"
            )

    def readiness(self) -> tuple[Refusal, str] | None:
        """Why a new call would be refused now, or None if one would be taken: the rule of
        `admit` without counting anything (`/readyz`, SIP OPTIONS for a dispatcher)."""
        if self.draining:
            return Refusal.SHUTTING_DOWN, "draining"
        if self.active >= self.settings.server.max_calls:
            return Refusal.CAPACITY, "full"
        max_wait = self.settings.server.max_engine_wait_s
        if max_wait > 0 and self.engine_backlog.wait_s() > max_wait:
            return Refusal.ENGINE_BACKLOG, "engines overloaded"
        if not self.cpu.admits(self.active + 1):
            return Refusal.CPU, "CPU at capacity"
        return None

    def _refuse(self, transport: str, kind: Refusal, reason: str) -> None:
        self.refused(transport, kind)
        raise CallRefusedError(kind, reason)

    def refused(self, transport: str, kind: str) -> None:
        """Count a call refused before it started (also by a transport's own rule)."""
        self.metrics.rejected_total.labels(transport, kind).inc()

    def reserve(self, call_id: str, transport: str) -> None:
        """Hold an admitted call's place while its transport sets up (no await between
        `admit` and this, so two calls cannot both take the last place)."""
        self._admitted[call_id] = (transport, asyncio.current_task())
        self._idle.clear()

    def start(self, call_id: str, transport: str, media: LegMedia) -> CallHandle:
        """Build the session of an admitted call whose transport is set up."""
        bus = EventBus()
        bus.subscribe(self.metrics.for_call(transport))
        bus.subscribe(self._log_event)
        for subscriber in media.subscribers:
            bus.subscribe(subscriber)
        recorder, recording = None, None
        if self.records is not None:
            recorder = self._early_records.pop(call_id, None)
            if recorder is None:
                recorder, recording = self.records.open_call(call_id, transport)
                recorder.opened(media.info, media.variables)
            else:  # an outbound call: its record is there since it was dialled
                recorder.set_up(media.info)
                recording = self.records.open_recording(recorder)
            bus.subscribe(recorder)
        settings = self.settings
        setup = CallSetup(
            call_id, self.engines, media.sink, bus=bus, config=settings.agent,
            vad_params=settings.vad.params(), vad_model=self.vad_model, vad_runner=self.vad,
            turn_model=self.turn_model, text_turn_model=self.text_turn_model,
            control=media.control, info=media.info,
            echo_canceller=media.echo_canceller, denoiser=media.denoiser, audio_tap=recording,
            variables=media.variables, prompt_overrides=media.prompt_overrides,
        )  # fmt: skip
        handle = CallHandle(call_id, transport, CallSession(setup), recorder=recorder,
                            recording=recording)  # fmt: skip
        self._admitted.pop(call_id, None)
        self.calls[call_id] = handle
        log.info("call %s started (%s)", call_id, transport)
        return handle

    def open_record(self, call_id: str, transport: str, info: dict[str, object], *,
                    direction: str, variables: dict[str, str],
                    webhook_url: str | None = None) -> None:  # fmt: skip
        """The record of a call from before it is set up (an outbound call, from its dial:
        `call.started` goes out as it rings, `call.answered` once answered)."""
        if self.records is None:
            return
        urls = [webhook_url] if webhook_url else []
        recorder, _ = self.records.open_call(call_id, transport, direction=direction,
                                             extra_webhook_urls=urls, recording=False)  # fmt: skip
        recorder.opened(info, variables)
        self._early_records[call_id] = recorder

    def on_abort(self, call_id: str, abort: Callable[[], None]) -> None:
        """How to hang up a call that is still setting up (see `hangup`)."""
        self._abort[call_id] = abort

    def hangup(self, call_id: str, reason: str = "api_hangup") -> bool:
        """End a live call from outside (the API): a running call's session ends (its leg
        hangs up), a call still setting up is aborted (an outbound call: CANCEL). False if
        no such call is live here."""
        handle = self.calls.get(call_id)
        if handle is not None:
            handle.session.end(reason)
            return True
        abort = self._abort.get(call_id)
        if abort is not None and call_id in self._admitted:
            abort()
            return True
        return False

    def finish(self, call_id: str, reason: str | None) -> None:
        """The call is over (or never got past set-up, `reason` None unless the leg knows
        why, e.g. an outbound call's `busy`): free its place."""
        self._admitted.pop(call_id, None)
        self._abort.pop(call_id, None)
        early = self._early_records.pop(call_id, None)
        if early is not None and self.records is not None:  # never answered
            self.records.finish_call(early, None, reason or "failed")
        handle = self.calls.pop(call_id, None)
        if handle is not None:
            log.info("call %s ended: %s after %.1f s", call_id, reason,
                     time.monotonic() - handle.started)  # fmt: skip
            if self.records is not None and handle.recorder is not None:
                ended = handle.recorder.end_reason or reason or "error"
                self.records.finish_call(handle.recorder, handle.recording, ended)
        if not self.active:
            self._idle.set()

    async def drain(self, deadline_s: float) -> None:
        """Refuse new calls; wait for running ones up to the deadline, then end them."""
        self.draining = True
        if not self.active:
            return
        log.info("draining: %d call(s) in progress, deadline %.0f s", self.active, deadline_s)
        try:
            await asyncio.wait_for(self._idle.wait(), deadline_s)
        except TimeoutError:
            log.warning("drain deadline passed: ending %d call(s)", self.active)
            for handle in list(self.calls.values()):
                handle.session.end("shutdown")
            for _, setting_up in list(self._admitted.values()):
                if setting_up is not None:  # its leg tears down (SIP: 503) as it unwinds
                    setting_up.cancel()
            try:
                await asyncio.wait_for(self._idle.wait(), 5.0)
            except TimeoutError:
                log.error("%d call(s) did not end", self.active)

    def close(self) -> None:
        if self._cpu_task is not None:
            self._cpu_task.cancel()
        self.vad.close()
        if self.turn_model is not None:
            self.turn_model.close()
        if self.text_turn_model is not None:
            self.text_turn_model.close()
        if self._events_log is not None:
            self._events_log.close()
