"""Call admission and bookkeeping shared by every transport of one gateway process.

Holds what calls share (engines, the batched VAD, settings, metrics), admits calls up to
`server.max_calls`, and drains: once a shutdown starts, new calls are refused and running
ones get until the deadline to end on their own before they are ended.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from voicebot.agent.events import Event, EventBus
from voicebot.agent.playout import AudioSink
from voicebot.agent.session import CallControl, CallSession
from voicebot.agent.vad_runner import BatchedVad
from voicebot.audio.denoise import NoiseSuppressor
from voicebot.audio.echo import EchoCanceller
from voicebot.config import Settings
from voicebot.gateway.metrics import GatewayMetrics
from voicebot.models.base import Engines
from voicebot.models.executor import ENGINE_BACKLOG, EngineBacklog
from voicebot.models.vad import SileroVad

log = logging.getLogger("voicebot.gateway")
_ids = itertools.count(1)


class CallRefusedError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class CallHandle:
    call_id: str
    transport: str
    session: CallSession
    bus: EventBus
    started: float = field(default_factory=time.monotonic)


class CallManager:
    def __init__(self, settings: Settings, engines: Engines, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.engines = engines
        self.metrics = metrics
        self.vad_model = SileroVad.shared()
        self.vad = BatchedVad(self.vad_model, on_batch=self._on_vad_batch)
        self.calls: dict[str, CallHandle] = {}
        self.engine_backlog: EngineBacklog = ENGINE_BACKLOG
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._events_log = (
            settings.server.events_log.open("a", encoding="utf-8", buffering=1)
            if settings.server.events_log
            else None
        )

    def _log_event(self, event: Event) -> None:
        if self._events_log is not None:
            self._events_log.write(json.dumps(event) + "\n")

    def _on_vad_batch(self, windows: int, seconds: float) -> None:
        self.metrics.vad_batch_size.observe(windows)
        self.metrics.vad_window_seconds.observe(seconds / max(1, windows))

    def new_call_id(self, transport: str) -> str:
        return f"{transport}-{int(time.time())}-{next(_ids)}"

    def admit(self, transport: str) -> None:
        """Raise CallRefusedError if a new call cannot start now."""
        if self.draining:
            self.metrics.rejected_total.labels(transport, "shutting_down").inc()
            raise CallRefusedError("shutting down")
        if len(self.calls) >= self.settings.server.max_calls:
            self.metrics.rejected_total.labels(transport, "capacity").inc()
            raise CallRefusedError("too many calls")
        max_wait = self.settings.server.max_engine_wait_s
        if max_wait > 0 and (wait := self.engine_backlog.wait_s()) > max_wait:
            # Media stays on time under load (engines run at low priority); what suffers
            # is the time to answer a turn. Past this, another call makes every caller wait.
            self.metrics.rejected_total.labels(transport, "engine_backlog").inc()
            log.warning("new %s call refused: engine requests waiting %.1f s", transport, wait)
            raise CallRefusedError("engines overloaded")

    def open(
        self,
        transport: str,
        sink: AudioSink,
        subscribers: list[Callable[[Event], None]],
        control: CallControl | None = None,
        call_id: str | None = None,
        info: dict[str, object] | None = None,
        echo_canceller: EchoCanceller | None = None,
        denoiser: NoiseSuppressor | None = None,
    ) -> CallHandle:
        """Admit and create a call (not yet running)."""
        self.admit(transport)
        call_id = call_id or self.new_call_id(transport)
        bus = EventBus()
        bus.subscribe(self.metrics.for_call(transport))
        bus.subscribe(self._log_event)
        for subscriber in subscribers:
            bus.subscribe(subscriber)
        session = CallSession(
            call_id, self.engines, sink, bus=bus, config=self.settings.agent,
            vad_params=self.settings.vad.params(), vad_model=self.vad_model,
            vad_runner=self.vad, control=control, info=info,
            echo_canceller=echo_canceller, denoiser=denoiser,
        )  # fmt: skip
        handle = CallHandle(call_id, transport, session, bus)
        self.calls[call_id] = handle
        self._idle.clear()
        return handle

    def discard(self, handle: CallHandle) -> None:
        """Forget a call that was opened but never ran (its transport failed to set up)."""
        self.calls.pop(handle.call_id, None)
        if not self.calls:
            self._idle.set()

    async def run(self, handle: CallHandle, frames: AsyncIterator[np.ndarray] | None = None) -> str:
        """Run a call to its end: pulling `frames`, or driven by a media clock if None."""
        log.info("call %s started (%s)", handle.call_id, handle.transport)
        try:
            reason = await handle.session.run(frames)
        finally:
            self.calls.pop(handle.call_id, None)
            if not self.calls:
                self._idle.set()
        log.info(
            "call %s ended: %s after %.1f s",
            handle.call_id, reason, time.monotonic() - handle.started,
        )  # fmt: skip
        return reason

    async def drain(self, deadline_s: float) -> None:
        """Refuse new calls; wait for running ones up to the deadline, then end them."""
        self.draining = True
        if not self.calls:
            return
        log.info("draining: %d call(s) in progress, deadline %.0f s", len(self.calls), deadline_s)
        try:
            await asyncio.wait_for(self._idle.wait(), deadline_s)
        except TimeoutError:
            log.warning("drain deadline passed: ending %d call(s)", len(self.calls))
            for handle in list(self.calls.values()):
                handle.session.end("shutdown")
            try:
                await asyncio.wait_for(self._idle.wait(), 5.0)
            except TimeoutError:
                log.error("%d call(s) did not end", len(self.calls))

    def close(self) -> None:
        self.vad.close()
        if self._events_log is not None:
            self._events_log.close()
