"""Engine settings (the `[engines]` section of `voicebot.config.Settings`): which STT, LLM
and TTS engines calls use and where remote ones live. Kept beside the engines, as the
agent's settings are beside the agent, so `models` needs nothing from the layers above."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class EngineSettings(BaseModel):
    """Which STT / LLM / TTS engines calls use, and where remote ones live."""

    stt: Literal["whisper", "openai"] = "whisper"
    stt_model: str = Field("base", description="whisper: 'base', 'tiny.en' or a CTranslate2 dir")
    stt_url: str | None = None
    stt_api_key: str | None = None
    stt_remote_model: str = "whisper-1"

    llm: Literal["frontdesk", "llama", "scripted", "openai"] = "frontdesk"
    business_profile: Path | None = Field(
        None, description="frontdesk: YAML business profile instead of the packaged demo clinic"
    )
    frontdesk_llm: Literal["llama", "openai", "none"] = Field(
        "llama", description="frontdesk: the LLM that answers what the profile does not"
    )
    # A busy embedded LLM (every call's reply queues on one model) would leave a caller in
    # silence for seconds; past this wait for its first sentence the profile's fallback is said.
    frontdesk_llm_wait_ms: int = Field(
        1_200, ge=0, le=60_000,
        description="frontdesk: longest wait for the LLM's first sentence (0 = no limit)",
    )  # fmt: skip
    llm_model_path: Path | None = Field(None, description="GGUF file instead of SmolLM2-135M")
    # On 2 cores two contexts made every reply 2-3x slower, even one at a time: each
    # context's llama.cpp thread pool spins while idle. More contexts want more cores.
    llm_instances: int = Field(
        1, ge=1, le=16,
        description="llama: contexts of the model, so that calls' replies run side by side",
    )  # fmt: skip
    llm_script: Path | None = Field(None, description="YAML script for the scripted engine")
    llm_url: str | None = None
    llm_api_key: str | None = None
    llm_remote_model: str = "gpt-4o-mini"
    llm_tools: bool = Field(False, description="offer transfer/hang-up tools to a remote LLM")
    llm_max_tokens: int = Field(64, ge=1)
    llm_max_sentences: int = Field(
        2, ge=0, description="llama/frontdesk: a reply stops after this many sentences (0: none)"
    )

    tts: Literal["piper", "espeak", "openai"] = "piper"
    tts_voice_path: Path | None = Field(None, description="Piper .onnx voice instead of joe")
    tts_cache_s: float = Field(
        600.0, ge=0,
        description="seconds of synthesized sentences kept to be said again (0 = off)",
    )  # fmt: skip
    tts_url: str | None = None
    tts_api_key: str | None = None
    tts_remote_model: str = "tts-1"
    tts_remote_voice: str = "alloy"

    threads: int = Field(2, ge=1, description="CPU threads per local model (LLM, TTS)")
    # CTranslate2 (faster-whisper) on 2 threads took twice the time and twice the CPU of one
    # thread per decode on a 2-core Xeon (tiny.en 86 vs 44 ms, base 191 vs 99 ms; Piper and
    # llama.cpp do gain from 2): one thread by default, and concurrent calls' decodes queue.
    stt_threads: int = Field(1, ge=1, description="CPU threads of the local Whisper model")
    nice: int = Field(
        19, ge=0, le=19,
        description="local engines' threads run this much lower in priority than the media"
        " loop (Linux nice; 0 = the same)",
    )  # fmt: skip
    transfer_target: str = "sip:queue@localhost"
