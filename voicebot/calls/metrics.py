"""Prometheus metrics of the gateway process (`GET /metrics`), fed from call events.

Each call's event bus gets a `CallMetrics` subscriber, so transports need not know which
figures exist: active calls, calls by transport and end reason, barge-in and end-of-turn
latency, the per-stage wait of each answered turn (`turn_latency`), engine errors; the shared
VAD reports its window cost itself.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from voicebot.agent.events import (
    AgentState,
    CallEnded,
    CallStarted,
    ErrorRaised,
    Event,
    Interrupted,
    SpeechEnded,
    StateChanged,
    TurnLatency,
)

LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.active_calls = Gauge(
            "voicebot_active_calls", "Calls in progress", ["transport"], registry=self.registry
        )
        self.calls_total = Counter(
            "voicebot_calls_total", "Calls ended, by transport and reason",
            ["transport", "reason"], registry=self.registry,
        )  # fmt: skip
        self.rejected_total = Counter(
            "voicebot_calls_rejected_total", "Calls refused before starting",
            ["transport", "reason"], registry=self.registry,
        )  # fmt: skip
        self.outbound_calls = Counter(
            "voicebot_outbound_calls_total", "Outbound calls placed, by outcome (answered,"
            " busy, no_answer, rejected, unreachable, auth_failed, cancelled, failed)",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.outbound_limited = Counter(
            "voicebot_outbound_limited_total", "POST /v1/calls answered 429 (campaign limits)",
            registry=self.registry,
        )  # fmt: skip
        self.vad_window_seconds = Histogram(
            "voicebot_vad_window_seconds", "Model time per VAD window (batched runs / windows)",
            buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3),
            registry=self.registry,
        )  # fmt: skip
        self.vad_batch_size = Histogram(
            "voicebot_vad_batch_size", "Windows per VAD model run",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )  # fmt: skip
        self.turn_model_seconds = Histogram(
            "voicebot_turn_model_seconds", "CPU time per end-of-turn model inference",
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0), registry=self.registry,
        )  # fmt: skip
        self.turn_model_batch_size = Histogram(
            "voicebot_turn_model_batch_size", "Turns per end-of-turn model run",
            buckets=(1, 2, 4, 8), registry=self.registry,
        )  # fmt: skip
        self.barge_in_latency = Histogram(
            "voicebot_barge_in_latency_seconds", "Speech onset to bot output flushed",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.end_of_turn_latency = Histogram(
            "voicebot_end_of_turn_latency_seconds", "speech_end to first bot audio",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.turn_stage_wait = Histogram(
            "voicebot_turn_stage_wait_seconds",
            "Per answered turn: how long after speech_end each stage was done (stt, llm = "
            "first sentence written, tts = its audio ready, total = first frame sent; 0 when "
            "speculation had it ready)",
            ["stage"], buckets=(0.0, *LATENCY_BUCKETS), registry=self.registry,
        )  # fmt: skip
        self.caller_segment_ends = Counter(
            "voicebot_caller_segment_ends_total", "Caller speech segments ended, by what ended "
            "them (turn_model, transcript, longest_wait, silence, no_words)", ["ended_by"],
            registry=self.registry,
        )  # fmt: skip
        self.speculative_turns = Counter(
            "voicebot_turns_answered_total", "Answered turns, by whether speculation's reply "
            "was adopted", ["speculative"], registry=self.registry,
        )  # fmt: skip
        self.engine_errors = Counter(
            "voicebot_engine_errors_total", "Engine failures and timeouts", ["engine"],
            registry=self.registry,
        )  # fmt: skip

        self.rtp_packets = Counter(
            "voicebot_rtp_packets_total", "RTP packets of SIP calls, by kind",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        self.sip_discarded = Counter(
            "voicebot_sip_discarded_total",
            "SIP datagrams refused before dispatch: malformed, or from outside the allow-list",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        self.rtp_late_ticks = Counter(
            "voicebot_rtp_late_ticks_total",
            "20 ms media ticks that ran more than one frame late (SIP calls)",
            registry=self.registry,
        )
        self.media_tick_seconds = Histogram(
            "voicebot_media_tick_seconds",
            "Work of one 20 ms SIP media tick for all calls (VAD wait included)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.input_frames = Counter(
            "voicebot_input_frames_total",
            "Caller frames paced to 20 ms (WebSocket, WebRTC): silence inserted for a stalled"
            " peer (underrun) or dropped for one running ahead (dropped)",
            ["transport", "kind"], registry=self.registry,
        )  # fmt: skip
        self.loop_stalls = Counter(
            "voicebot_event_loop_stalls_total",
            "Times one callback held the event loop (every call's media) past server.stall_log_ms",
            registry=self.registry,
        )
        self.gc_seconds = Histogram(
            "voicebot_gc_seconds",
            "Python garbage collections, by generation (a full one pauses the thread it runs on)",
            ["generation"], buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
            registry=self.registry,
        )  # fmt: skip
        self.media_ticks_skipped = Counter(
            "voicebot_media_ticks_skipped_total",
            "SIP media ticks never run: the clock fell over 1 s behind and re-anchored",
            registry=self.registry,
        )

        # Call records and webhooks (calls/records, calls/webhooks); the gauges read their
        # source when scraped (`watch_records`, `watch_webhooks`).
        self.records_written = Counter(
            "voicebot_records_written_total",
            "Call-record rows committed to the database",
            registry=self.registry,
        )
        self.records_dropped = Counter(
            "voicebot_records_dropped_total",
            "Event-log rows shed because the records queue was full (database down too long)",
            registry=self.registry,
        )
        self.records_backlog = Gauge(
            "voicebot_records_backlog",
            "Call-record rows waiting to be written",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "voicebot_database_up",
            "1 if the last write to the records database succeeded",
            registry=self.registry,
        )
        self.recordings_bytes = Gauge(
            "voicebot_recordings_bytes", "Disk taken by call recordings", registry=self.registry
        )
        self.webhook_deliveries = Counter(
            "voicebot_webhook_deliveries_total", "Webhook delivery attempts, by outcome"
            " (delivered, failed = will retry, dead = gave up)", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.webhook_pending = Gauge(
            "voicebot_webhook_pending", "Webhook deliveries not yet made", registry=self.registry
        )
        self.webhook_oldest_pending = Gauge(
            "voicebot_webhook_oldest_pending_seconds",
            "Age of the oldest webhook delivery not yet made (0: none)", registry=self.registry,
        )  # fmt: skip
        self.webhook_latency = Histogram(
            "voicebot_webhook_delivery_seconds", "Event committed -> receiver answered 2xx",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600),
            registry=self.registry,
        )  # fmt: skip

    def for_call(self, transport: str) -> CallMetrics:
        return CallMetrics(self, transport)


class CallMetrics:
    """Event subscriber for one call."""

    def __init__(self, metrics: GatewayMetrics, transport: str) -> None:
        self.m = metrics
        self.transport = transport
        self._speech_end_t: float | None = None

    def __call__(self, event: Event) -> None:
        match event:
            case CallStarted():
                self.m.active_calls.labels(self.transport).inc()
            case CallEnded(reason=reason):
                self.m.active_calls.labels(self.transport).dec()
                self.m.calls_total.labels(self.transport, reason).inc()
            case Interrupted(latency_ms=latency_ms):
                self.m.barge_in_latency.observe(latency_ms / 1000)
            case SpeechEnded(t=t, ended_by=ended_by):
                self._speech_end_t = t
                self.m.caller_segment_ends.labels(ended_by).inc()
            case StateChanged(state=AgentState.SPEAKING, t=t) if self._speech_end_t is not None:
                self.m.end_of_turn_latency.observe(max(0.0, t - self._speech_end_t))
                self._speech_end_t = None
            case StateChanged(state=AgentState.LISTENING):
                self._speech_end_t = None
            case TurnLatency():
                self._observe_stages(event)
            case ErrorRaised(source=source):
                self.m.engine_errors.labels(source).inc()

    def _observe_stages(self, event: TurnLatency) -> None:
        self.m.speculative_turns.labels(str(event.speculative).lower()).inc()
        for stage, wait_ms in (
            ("stt", event.stt_wait_ms), ("llm", event.llm_wait_ms),
            ("tts", event.tts_wait_ms), ("total", event.total_ms),
        ):  # fmt: skip
            if wait_ms is not None:
                self.m.turn_stage_wait.labels(stage).observe(wait_ms / 1000)
