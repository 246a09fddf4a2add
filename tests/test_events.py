"""The wire form of the typed events (DESIGN.md section 2): exact JSON, field order included."""

from __future__ import annotations

import json

from voicebot.agent.events import (
    AgentState,
    BotText,
    CallEnded,
    CallStarted,
    CallTransferred,
    DtmfPressed,
    ErrorRaised,
    Interrupted,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TranscriptReady,
    TransferFailed,
    TurnLatency,
    VadLevel,
)

WIRE = [
    (CallStarted(call_id="c1", t=0.0, info={"from": "<sip:a@b>", "sip_call_id": "x"}),
     '{"type": "call_started", "call_id": "c1", "t": 0.0, "from": "<sip:a@b>", '
     '"sip_call_id": "x"}'),
    (StateChanged(call_id="c1", t=0.12345, state=AgentState.LISTENING),
     '{"type": "state", "call_id": "c1", "t": 0.123, "state": "LISTENING"}'),
    (VadLevel(call_id="c1", t=1.0, probability=0.98765),
     '{"type": "vad", "call_id": "c1", "t": 1.0, "probability": 0.988}'),
    (SpeechStarted(call_id="c1", t=1.1, onset=0.99949),
     '{"type": "speech_start", "call_id": "c1", "t": 1.1, "onset": 0.999}'),
    (SpeechEnded(call_id="c1", t=2.5, duration=1.50049),
     '{"type": "speech_end", "call_id": "c1", "t": 2.5, "duration": 1.5, '
     '"ended_by": "silence", "turn_probability": null}'),
    (SpeechEnded(call_id="c1", t=2.5, duration=1.5, ended_by="turn_model",
                 turn_probability=0.98765),
     '{"type": "speech_end", "call_id": "c1", "t": 2.5, "duration": 1.5, '
     '"ended_by": "turn_model", "turn_probability": 0.988}'),
    (TranscriptReady(call_id="c1", t=2.6, text="ten of clubs"),
     '{"type": "transcript", "call_id": "c1", "t": 2.6, "text": "ten of clubs", "final": true}'),
    (BotText(call_id="c1", t=3.0, text="Hello."),
     '{"type": "bot_text", "call_id": "c1", "t": 3.0, "text": "Hello."}'),
    (Interrupted(call_id="c1", t=3.5, latency_ms=41.26, heard="We open at"),
     '{"type": "interrupted", "call_id": "c1", "t": 3.5, "latency_ms": 41.3, '
     '"heard": "We open at"}'),
    (CallTransferred(call_id="c1", t=5.0, target="sip:agent@example.com", status=200,
                     reason="OK", confirmed=True),
     '{"type": "transferred", "call_id": "c1", "t": 5.0, "target": "sip:agent@example.com", '
     '"status": 200, "reason": "OK", "confirmed": true}'),
    (TransferFailed(call_id="c1", t=5.0, target="sip:agent@example.com", status=486,
                    reason="Busy Here"),
     '{"type": "transfer_failed", "call_id": "c1", "t": 5.0, "target": "sip:agent@example.com", '
     '"status": 486, "reason": "Busy Here"}'),
    (DtmfPressed(call_id="c1", t=4.0, digit="#"),
     '{"type": "dtmf", "call_id": "c1", "t": 4.0, "digit": "#"}'),
    (ErrorRaised(call_id="c1", t=4.2, source="STT whisper", message="STT whisper: timed out"),
     '{"type": "error", "call_id": "c1", "t": 4.2, "message": "STT whisper: timed out"}'),
    (TurnLatency(call_id="c1", t=3.0, speculative=False, vad_speech_end=2.0, speech_end=2.5,
                 stt_start=2.5, stt_end=2.81234, llm_start=2.82, first_audio_sent=3.0,
                 stt_wait_ms=312.34, total_ms=500.0),
     '{"type": "turn_latency", "call_id": "c1", "t": 3.0, "speculative": false, '
     '"vad_speech_end": 2.0, "speech_end": 2.5, "stt_start": 2.5, "stt_end": 2.812, '
     '"llm_start": 2.82, "llm_first_sentence": null, "tts_start": null, "tts_first_audio": null, '
     '"first_audio_sent": 3.0, "stt_wait_ms": 312.3, "llm_wait_ms": null, "tts_wait_ms": null, '
     '"total_ms": 500.0}'),
    (CallEnded(call_id="c1", t=9.0, reason="bot_hangup"),
     '{"type": "call_ended", "call_id": "c1", "t": 9.0, "reason": "bot_hangup"}'),
]  # fmt: skip


def test_every_event_type_has_its_contract_json() -> None:
    assert len({type(event) for event, _ in WIRE}) == 14  # every type of section 2
    for event, wire in WIRE:
        assert event.to_json() == wire
        assert json.loads(wire) == event.to_dict()
