"""Engines from settings: one instance of each local model per process, shared by calls.

The embedded defaults (Whisper base, the front desk over SmolLM2 on llama.cpp, Piper joe)
need no network and no key. If the optional llama.cpp extra is missing, the front desk
answers its topics alone (and the "llama" engine gives way to the scripted one), with a log
line saying so, so `voicebot serve` always starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from voicebot.models.base import EngineError, Engines, LanguageModel, SpeechToText, TextToSpeech
from voicebot.models.config import EngineSettings
from voicebot.models.executor import set_engine_nice

log = logging.getLogger("voicebot.models")

_cache: dict[str, object] = {}
_lock = threading.RLock()  # re-entrant: the front desk builds its inner LLM through it


def _cached(key: str, build):  # type: ignore[no-untyped-def]
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def build_stt(cfg: EngineSettings) -> SpeechToText:
    if cfg.stt == "openai":
        from voicebot.models.stt.openai_compat import OpenAITranscriptionSpeechToText

        if not cfg.stt_url:
            raise EngineError("engines.stt_url is required for the openai STT engine")
        return OpenAITranscriptionSpeechToText(
            cfg.stt_url, cfg.stt_remote_model, api_key=cfg.stt_api_key
        )
    from voicebot.models.stt.whisper import WhisperSpeechToText

    return _cached(
        f"whisper:{cfg.stt_model}:{cfg.stt_threads}",
        lambda: WhisperSpeechToText(cfg.stt_model, threads=cfg.stt_threads),
    )


def build_llm(cfg: EngineSettings) -> LanguageModel:
    if cfg.llm == "openai":
        from voicebot.models.llm.openai_compat import OpenAIChatLanguageModel

        if not cfg.llm_url:
            raise EngineError("engines.llm_url is required for the openai LLM engine")
        return OpenAIChatLanguageModel(
            cfg.llm_url,
            cfg.llm_remote_model,
            api_key=cfg.llm_api_key,
            max_tokens=cfg.llm_max_tokens,
            tools=cfg.llm_tools,
            transfer_target=cfg.transfer_target,
        )
    if cfg.llm == "frontdesk":
        return _cached(
            f"frontdesk:{cfg.business_profile}:{cfg.frontdesk_llm}:{cfg.llm_model_path}:"
            f"{cfg.threads}:{cfg.llm_max_tokens}:{cfg.llm_max_sentences}:{cfg.llm_instances}:"
            f"{cfg.frontdesk_llm_wait_ms}",
            lambda: _frontdesk(cfg),
        )
    if cfg.llm == "llama":
        llama = _llama(cfg)
        if llama is not None:
            return llama
        log.warning("using the scripted engine instead of llama.cpp")
    from voicebot.models.llm.scripted import ScriptedLanguageModel

    return _cached(
        f"scripted:{cfg.llm_script}", lambda: ScriptedLanguageModel.from_file(cfg.llm_script)
    )


def _llama(cfg: EngineSettings) -> LanguageModel | None:
    """The in-process llama.cpp model, or None (logged) if it cannot be had."""
    try:
        from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

        key = (
            f"llama:{cfg.llm_model_path}:{cfg.threads}:{cfg.llm_max_tokens}:"
            f"{cfg.llm_max_sentences}:{cfg.llm_instances}"
        )
        return _cached(
            key,
            lambda: LlamaCppLanguageModel(
                cfg.llm_model_path, threads=cfg.threads, max_tokens=cfg.llm_max_tokens,
                max_sentences=cfg.llm_max_sentences, instances=cfg.llm_instances,
            ),
        )  # fmt: skip
    except EngineError as exc:
        log.warning("llama.cpp engine unavailable (%s)", exc)
        return None


def _frontdesk(cfg: EngineSettings) -> LanguageModel:
    from voicebot.models.llm.business_profile import BusinessProfile
    from voicebot.models.llm.frontdesk import FrontDeskLanguageModel

    profile = BusinessProfile.from_file(cfg.business_profile)
    inner: LanguageModel | None = None
    if cfg.frontdesk_llm == "llama":
        inner = _llama(cfg)
        if inner is None:
            log.warning("front desk: no LLM, questions off its topics get the fallback line")
    elif cfg.frontdesk_llm == "openai":
        inner = build_llm(cfg.model_copy(update={"llm": "openai"}))
    wait_s = cfg.frontdesk_llm_wait_ms / 1e3 or None
    return FrontDeskLanguageModel(
        profile, inner, max_sentences=cfg.llm_max_sentences or 2, llm_wait_s=wait_s
    )


def build_tts(cfg: EngineSettings) -> TextToSpeech:
    """The configured voice, behind the process's cache of sentences already said."""
    tts = _build_voice(cfg)
    if cfg.tts_cache_s <= 0:
        return tts
    from voicebot.models.tts.cache import CachedTextToSpeech

    return _cached(
        f"tts-cache:{id(tts)}:{cfg.tts_cache_s}", lambda: CachedTextToSpeech(tts, cfg.tts_cache_s)
    )


def _build_voice(cfg: EngineSettings) -> TextToSpeech:
    if cfg.tts == "openai":
        from voicebot.models.tts.openai_compat import OpenAISpeechTextToSpeech

        if not cfg.tts_url:
            raise EngineError("engines.tts_url is required for the openai TTS engine")
        return OpenAISpeechTextToSpeech(
            cfg.tts_url, cfg.tts_remote_model, cfg.tts_remote_voice, api_key=cfg.tts_api_key
        )
    if cfg.tts == "espeak":
        from voicebot.models.tts.espeak import EspeakTextToSpeech

        return _cached("espeak", EspeakTextToSpeech)
    from voicebot.models.tts.piper import PiperTextToSpeech

    return _cached(
        f"piper:{cfg.tts_voice_path}:{cfg.threads}",
        lambda: PiperTextToSpeech(cfg.tts_voice_path, threads=cfg.threads),
    )


def build_engines(cfg: EngineSettings) -> Engines:
    set_engine_nice(cfg.nice)
    return Engines(stt=build_stt(cfg), llm=build_llm(cfg), tts=build_tts(cfg))


async def warm_up(engines: Engines) -> None:
    """One small call to each engine: first calls pay for lazy initialisation (llama.cpp's
    first prompt takes seconds), which must not land on a caller's first turn."""
    import numpy as np

    from voicebot.models.base import ChatMessage

    await engines.tts.synthesize("Hello.")
    tone = (np.sin(np.arange(16000) / 8) * 3000).astype(np.int16)
    await engines.stt.transcribe(tone)
    # An in-process LLM (or a front desk over one) warms every context, the front desk with
    # its facts in the KV cache; any other LLM (a server) gets one short reply.
    warm = getattr(engines.llm, "warm_contexts", None)
    if not (callable(warm) and await asyncio.to_thread(warm)):
        async for _ in engines.llm.stream([ChatMessage("user", "Hi")]):
            pass
