"""StageTimes: when each stage of one answered turn happened, in call seconds.

Place in the flow: a turn (or the speculation that becomes it) creates one; `EngineCalls`
stamps the STT call, the `ReplyPipeline` its LLM start, first sentence and first
synthesized audio, the session the speech_end and the first frame sent. When that first
frame goes out, the session publishes them all as one `turn_latency` event, which the
metrics, the call records and the live benchmark read: the one place a turn's latency is
broken down, so what a caller waits for can be attributed to VAD, STT, LLM, TTS or playout.

Times are on the call's audio timeline (`CallSession.t`): live that is wall time since the
call began (to one 20 ms frame), in the simulator virtual time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Now = Callable[[], float]


@dataclass(eq=False)
class StageTimes:
    now: Now = field(repr=False)
    speculative: bool = False  # begun at a pause, before speech_end confirmed the turn
    vad_speech_end: float | None = None  # where the VAD says speech stopped
    speech_end: float | None = None  # when speech_end fired (after the silence rule)
    stt_start: float | None = None
    stt_end: float | None = None
    llm_start: float | None = None
    llm_first_sentence: float | None = None
    tts_start: float | None = None  # synthesis of the first sentence began
    tts_first_audio: float | None = None  # the first sentence's audio is ready
    reported: bool = False

    def mark(self, stage: str) -> None:
        """Stamp `stage` now, once (the first sentence, not every sentence)."""
        if getattr(self, stage) is None:
            setattr(self, stage, self.now())

    def as_fields(self, first_audio_sent: float) -> dict[str, object]:
        """The `turn_latency` event's payload: the stamps, and the wait for each stage
        counted from speech_end (0 when a stage was done before it, as speculation makes)."""
        end = self.speech_end if self.speech_end is not None else first_audio_sent

        def after_end(t: float | None) -> float | None:
            return None if t is None else max(0.0, t - end) * 1000

        return {
            "speculative": self.speculative,
            "vad_speech_end": self.vad_speech_end,
            "speech_end": end,
            "stt_start": self.stt_start,
            "stt_end": self.stt_end,
            "llm_start": self.llm_start,
            "llm_first_sentence": self.llm_first_sentence,
            "tts_start": self.tts_start,
            "tts_first_audio": self.tts_first_audio,
            "first_audio_sent": first_audio_sent,
            "stt_wait_ms": after_end(self.stt_end),
            "llm_wait_ms": after_end(self.llm_first_sentence),
            "tts_wait_ms": after_end(self.tts_first_audio),
            "total_ms": max(0.0, first_audio_sent - end) * 1000,
        }
