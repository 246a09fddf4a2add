"""CallRecorder: one call's events become its record, its turns and its webhooks.

Place in the flow: the call manager subscribes one recorder to each call's event bus. It
only builds rows and hands them to the record writer (`writes.RecordWrite`), so it never
blocks the media path. What it keeps per call:
- the call row (with the call's variables, calls/variables.py): inserted when the call is
  set up, updated when answered, on each DTMF, transfer and at the end (reason, duration,
  digits, summary, recording);
- turns: a caller's turn per final transcript (from its speech onset to its speech_end), a
  bot turn from its first sentence playing until it played out or was cut by a barge-in
  (with what the caller heard of it) and the `turn_latency` of the answer;
- the event log (every event but `vad` levels);
- webhooks (DESIGN.md section 4a): one outbox row per event and receiver URL, in order;
  a transfer's (`call.transferred`, `call.transfer_failed`) carry its outcome and the
  context for the human agent: the transcript so far and an extractive summary
  (`transfer_context.py`), with the call's variables.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from voicebot.agent.events import (
    AgentState,
    BotText,
    CallEnded,
    CallStarted,
    CallTransferred,
    DtmfPressed,
    Event,
    Interrupted,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TranscriptReady,
    TransferFailed,
    TurnLatency,
    VadLevel,
)
from voicebot.calls.records.times import iso
from voicebot.calls.records.transfer_context import TranscriptSoFar, context
from voicebot.calls.records.writes import RecordWrite, utc_now, webhook_id

Sink = Callable[[RecordWrite], None]


@dataclass
class _BotTurn:
    start_s: float
    sentences: list[str] = field(default_factory=list)
    latency: dict[str, Any] | None = None


def _party(info: dict[str, Any], key: str) -> str | None:
    value = info.get(key)
    return None if value is None else str(value)[:2000]


class CallRecorder:
    """Subscriber of one call's event bus (see the module docstring)."""

    def __init__(
        self,
        call_id: str,
        transport: str,
        gateway: str,
        sink: Sink,
        webhook_urls: list[str],
        *,
        direction: str = "inbound",
        recording_url: str | None = None,
    ) -> None:
        self.call_id = call_id
        self.transport = transport
        self._gateway = gateway
        self._sink = sink
        self._urls = webhook_urls
        self._direction = direction
        self._recording_url = recording_url
        self.started_at = utc_now()
        self.answered_at: datetime | None = None
        self.ended = False
        self.end_reason: str | None = None  # from `call_ended`, for the manager's finish
        self._event_seq = 0
        self._webhook_seq = 0
        self._turns = 0
        self._user_turns = 0
        self._bot_turns = 0
        self._interruptions = 0
        self._voice_to_voice_ms: list[float] = []
        self._dtmf = ""
        self._transfer: str | None = None
        self._transfers: list[dict[str, Any]] = []  # every attempt's outcome, in order
        self._transcript = TranscriptSoFar()
        self._user_onset: float | None = None
        self._user_end: float | None = None
        self._bot: _BotTurn | None = None
        self._pending_latency: dict[str, Any] | None = None
        self._last_t = 0.0
        self.variables: dict[str, str] = {}

    # -- lifecycle (from the call manager) ------------------------------------------------------
    def opened(self, info: dict[str, Any], variables: dict[str, str] | None = None) -> None:
        """The call is set up on its wire: its row exists from here. `variables`: what the
        caller's side knew of the call (already normalised), in the row and the webhooks."""
        self.variables = dict(variables or {})
        row = {
            "id": self.call_id, "gateway": self._gateway, "transport": self.transport,
            "direction": self._direction, "from_uri": _party(info, "from"),
            "to_uri": _party(info, "to"), "info": info, "started_at": self.started_at,
            "dtmf": "", "turns": 0, "heartbeat_at": self.started_at,
            "variables": self.variables,
        }  # fmt: skip
        self._sink(RecordWrite("calls", row))
        self._webhook("call.started", {
            "transport": self.transport, "direction": self._direction,
            "from": row["from_uri"], "to": row["to_uri"], "info": info,
            "gateway": self._gateway, "started_at": iso(self.started_at),
            "variables": self.variables,
        })  # fmt: skip

    def set_up(self, info: dict[str, Any]) -> None:
        """A call whose row was written before its set-up (an outbound call, from its dial)
        is set up: what the wire said meanwhile (the callee's To tag, early media)."""
        self._update(info=info, to_uri=_party(info, "to"))

    def finished(self, reason: str, recording: tuple[str, int] | None = None) -> None:
        """The call is over (`reason`; the recording's path and size if there is one)."""
        if self.ended:
            return
        self.ended = True
        if self._bot is not None:
            self._close_bot_turn(self._last_t, interrupted=False, heard=None)
        ended_at = utc_now()
        answered = self.answered_at
        summary = {
            "user_turns": self._user_turns, "bot_turns": self._bot_turns,
            "interruptions": self._interruptions,
            "voice_to_voice_ms_median": (
                round(statistics.median(self._voice_to_voice_ms), 1)
                if self._voice_to_voice_ms else None
            ),
        }  # fmt: skip
        if self._transfers:
            summary["transfers"] = self._transfers
        update: dict[str, Any] = {
            "id": self.call_id, "ended_at": ended_at, "end_reason": reason,
            "duration_s": round((ended_at - (answered or self.started_at)).total_seconds(), 3),
            "dtmf": self._dtmf, "turns": self._turns, "summary": summary,
            "transfer_target": self._transfer, "heartbeat_at": ended_at,
        }  # fmt: skip
        if recording is not None:
            update["recording_path"], update["recording_bytes"] = recording
        self._sink(RecordWrite("calls", update, op="update"))
        self._webhook("call.ended", {
            "reason": reason, "started_at": iso(self.started_at), "answered_at": iso(answered),
            "ended_at": iso(ended_at), "duration_s": update["duration_s"],
            "turns": self._turns, "dtmf": self._dtmf, "transfer_target": self._transfer,
            "summary": summary,
            "recording": self._recording_url if recording is not None else None,
            "variables": self.variables,
        })  # fmt: skip

    # -- events -------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        if isinstance(event, VadLevel) or self.ended:
            return
        self._last_t = event.t
        self._log(event)
        match event:
            case CallStarted():
                self.answered_at = utc_now()
                self._update(answered_at=self.answered_at)
                self._webhook("call.answered", {"answered_at": iso(self.answered_at)})
            case SpeechStarted(onset=onset):
                if self._user_onset is None:
                    self._user_onset = onset
            case SpeechEnded(t=t):
                self._user_end = t
            case TranscriptReady(final=True, text=text, t=t):
                self._user_turn(text.strip(), t)
            case TurnLatency():
                self._pending_latency = self._latency(event)
            case BotText(text=text, t=t):
                if self._bot is None:
                    self._bot = _BotTurn(t, latency=self._pending_latency)
                    self._pending_latency = None
                self._bot.sentences.append(text)
            case StateChanged(state=AgentState.WAITING_FOR_SPEECH, t=t) if self._bot:
                self._close_bot_turn(t, interrupted=False, heard=None)
            case Interrupted(t=t, heard=heard):
                self._interruptions += 1
                if self._bot is not None:
                    self._close_bot_turn(t, interrupted=True, heard=heard)
            case DtmfPressed(digit=digit, t=t):
                self._dtmf = (self._dtmf + digit)[-256:]
                self._update(dtmf=self._dtmf)
                self._webhook("dtmf", {"digit": digit, "t": round(t, 3)})
            case CallTransferred(target=target):
                self._transfer = target
                self._update(transfer_target=target)
                self._transfer_webhook("call.transferred", "transferred", event)
            case TransferFailed():
                self._transfer_webhook("call.transfer_failed", "failed", event)
            case CallEnded(reason=reason):
                self.end_reason = reason
            case _:
                pass

    def _transfer_webhook(
        self, kind: str, outcome: str, event: CallTransferred | TransferFailed
    ) -> None:
        attempt: dict[str, Any] = {
            "target": event.target, "outcome": outcome, "status": event.status,
            "reason": event.reason, "t": round(event.t, 3),
        }  # fmt: skip
        if isinstance(event, CallTransferred):
            attempt["confirmed"] = event.confirmed
        self._transfers.append(attempt)
        variables = getattr(self, "variables", None)  # the call's variables, when it has any
        self._webhook(kind, {**attempt, **context(self._transcript, self._dtmf, variables)})

    # -- turns ----------------------------------------------------------------------------------
    def _user_turn(self, text: str, t: float) -> None:
        start = self._user_onset if self._user_onset is not None else t
        end = self._user_end if self._user_end is not None else t
        self._user_onset = self._user_end = None
        if not text:
            return  # no words (a false interruption, noise): not a turn
        self._user_turns += 1
        self._turn("user", text, text, start, end, interrupted=False, latency=None)

    def _close_bot_turn(self, t: float, *, interrupted: bool, heard: str | None) -> None:
        bot, self._bot = self._bot, None
        assert bot is not None
        text = " ".join(bot.sentences)
        self._bot_turns += 1
        if bot.latency and bot.latency.get("voice_to_voice_ms") is not None:
            self._voice_to_voice_ms.append(bot.latency["voice_to_voice_ms"])
        self._turn("bot", text, text if heard is None else heard, bot.start_s, t,
                   interrupted=interrupted, latency=bot.latency)  # fmt: skip

    def _turn(self, speaker: str, text: str, heard: str, start: float, end: float, *,
              interrupted: bool, latency: dict[str, Any] | None) -> None:  # fmt: skip
        idx = self._turns
        self._turns += 1
        row = {
            "call_id": self.call_id, "idx": idx, "speaker": speaker, "text": text,
            "heard": heard, "start_s": round(start, 3), "end_s": round(end, 3),
            "interrupted": interrupted, "latency": latency,
        }  # fmt: skip
        self._sink(RecordWrite("turns", row))
        self._transcript.add(speaker, heard, row["start_s"], row["end_s"], interrupted=interrupted)
        data = {k: v for k, v in row.items() if k != "call_id"}
        if speaker == "user":
            data = {k: data[k] for k in ("idx", "text", "start_s", "end_s")}
        self._webhook(f"turn.{speaker}", data)

    @staticmethod
    def _latency(event: TurnLatency) -> dict[str, Any]:
        fields = event.payload()
        sent, vad_end = event.first_audio_sent, event.vad_speech_end
        fields["voice_to_voice_ms"] = (
            round((sent - vad_end) * 1000, 1) if sent is not None and vad_end is not None else None
        )
        return fields

    # -- rows -----------------------------------------------------------------------------------
    def _update(self, **values: Any) -> None:
        self._sink(RecordWrite("calls", {"id": self.call_id, **values}, op="update"))

    def _log(self, event: Event) -> None:
        row = {"call_id": self.call_id, "seq": self._event_seq, "type": event.type,
               "t": round(event.t, 3), "data": event.to_dict()}  # fmt: skip
        self._event_seq += 1
        self._sink(RecordWrite("call_events", row))

    def _webhook(self, kind: str, data: dict[str, Any]) -> None:
        now = utc_now()
        payload = {"type": kind, "timestamp": iso(now),
                   "data": {"call_id": self.call_id, **data}}  # fmt: skip
        seq = self._webhook_seq
        self._webhook_seq += 1
        for url in self._urls:
            self._sink(RecordWrite("webhook_outbox", {
                "id": webhook_id(), "url": url, "call_id": self.call_id, "seq": seq,
                "type": kind, "payload": payload, "created_at": now, "next_attempt_at": now,
                "attempts": 0, "status": "pending",
            }))  # fmt: skip


def stale_before(heartbeat_timeout_s: float) -> datetime:
    """Open records whose heartbeat is older than this belong to a gateway that is gone."""
    return utc_now() - timedelta(seconds=heartbeat_timeout_s)
