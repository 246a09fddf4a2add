"""The agent's behaviour settings (a section of `voicebot.config.Settings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

DEFAULT_BACKCHANNELS = [
    "mm-hm", "mhm", "mm", "hmm", "uh-huh", "uh huh", "yeah", "yes", "yep", "okay", "ok",
    "right", "sure", "i see", "aha", "ah", "oh",
]  # fmt: skip


class AgentConfig(BaseModel):
    system_prompt: str = (
        "You are a friendly, concise phone assistant. Answer in one or two short sentences "
        "of plain spoken English, with no lists, markup or emoji."
    )
    greeting: str | None = "Hello, thanks for calling. How can I help you today?"
    barge_in: bool = True
    false_interruption_resume: bool = True
    backchannels: list[str] = Field(default_factory=lambda: list(DEFAULT_BACKCHANNELS))
    fallback_text: str = "Sorry, could you repeat that?"
    # Said when a transfer the bot asked for fails (refused, no answer, target busy): the
    # call goes on. Empty: nothing is said.
    transfer_failed_message: str = (
        "Sorry, I couldn't transfer you. I'm still here. How else can I help?"
    )
    max_history_messages: int = Field(20, ge=0)
    stt_timeout_s: float = Field(10.0, gt=0)
    llm_timeout_s: float = Field(15.0, gt=0, description="max wait for each piece of the reply")
    tts_timeout_s: float = Field(10.0, gt=0)
    vad_event_interval_ms: int = Field(100, ge=0, description="0 disables `vad` events")
    speculative_stt: bool = True
    speculative_pause_ms: int = Field(160, ge=32, description="pause that starts an early STT")
    llm_read_ahead: bool = Field(
        True, description="when the bot stops talking, an idle LLM reads the next prompt's start"
    )
    # End of turn (agent/endpointing.py): "fixed" ends a turn after vad.min_silence_ms of
    # silence; "smart_turn" has the turn model's verdict on each pause ready when it reaches
    # turn_min_silence_ms (in whole VAD windows; asked ahead): a turn it judges complete ends
    # there, one it judges unfinished waits up to turn_max_silence_ms.
    # Defaults from bench/endpointing_bench.py: a high bar (0.9; real ends mostly score
    # ~0.98) cuts fewer callers off than 0.5, and 1.5 s bounds the wait on an end the model
    # misjudges as unfinished (the tail of end-of-turn latency).
    endpointing: Literal["fixed", "smart_turn"] = "smart_turn"
    # 280 ms (9 VAD windows: the verdict acts at 288): a comma's pause after a greeting
    # ("Hi, what is ...": 256 ms in Piper's voice, P 0.89-0.92) does not end the turn. At
    # 200 (224) it did, about half the time; the caller's next words then joined the turn
    # unless the bot had started its answer to "Hi".
    turn_min_silence_ms: int = Field(
        280, ge=32, le=5_000, description="pause at which the turn model's verdict acts"
    )
    turn_max_silence_ms: int = Field(
        1_500, ge=100, le=10_000, description="longest pause inside an unfinished turn"
    )
    turn_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="P(complete) at which the turn ends at the pause"
    )
    # Background talk or noise that the VAD takes for speech (agent/floor_guard.py): a
    # segment voiced this long (pauses not counted) is transcribed; with no words it is
    # cut, and windows no louder than it are silence until the background goes quiet.
    max_wordless_segment_ms: int = Field(
        4_000, ge=0, description="0 = off; a segment voiced this long with no words is not a turn"
    )
    noise_floor_margin_db: float = Field(
        3.0, ge=0.0, le=20.0, description="above the background's level speech must be"
    )

    # A pause the turn model judges unfinished still ends early when the early transcript's
    # words read as a finished sentence (models/turn/text.py; 0 = off): P >= this bar, once
    # the pause is turn_text_min_silence_ms long. Defaults from bench/endpointing_bench.py.
    turn_text_threshold: float = Field(
        0.1, ge=0.0, le=1.0,
        description="P(sentence over) from the early transcript that ends a pause the turn "
        "model judged unfinished (0 = off)",
    )  # fmt: skip
    turn_text_min_silence_ms: int = Field(
        500, ge=32, le=10_000, description="shortest pause the transcript rule ends a turn at"
    )

    @model_validator(mode="after")
    def _turn_silences(self) -> AgentConfig:
        if self.turn_max_silence_ms < self.turn_min_silence_ms:
            raise ValueError("agent.turn_max_silence_ms must not be below turn_min_silence_ms")
        return self
