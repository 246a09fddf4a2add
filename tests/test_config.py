"""Settings: defaults that run offline, env vars, nested sections, a TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from voicebot.config import load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VOICEBOT_PORT", "VOICEBOT_CONFIG", "VOICEBOT_VAD__MIN_SILENCE_MS"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert (s.host, s.port, s.sip_port) == ("127.0.0.1", 8000, 5060)
    assert s.api_token is None
    assert s.vad.activation_threshold == 0.5 and s.vad.deactivation_threshold == 0.35
    assert (s.vad.min_speech_ms, s.vad.min_silence_ms, s.vad.prefix_padding_ms) == (100, 500, 200)


def test_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "voicebot.toml"
    cfg.write_text('port = 9001\nsip_allow = ["10.0.0.0/8"]\n[vad]\nmin_silence_ms = 300\n')
    monkeypatch.setenv("VOICEBOT_CONFIG", str(cfg))
    monkeypatch.setenv("VOICEBOT_SIP_PORT", "0")
    monkeypatch.setenv("VOICEBOT_VAD__MIN_SPEECH_MS", "64")
    s = load_settings()
    assert s.port == 9001 and s.sip_port == 0 and s.sip_allow == ["10.0.0.0/8"]
    assert s.vad.min_silence_ms == 300 and s.vad.min_speech_ms == 64
    monkeypatch.setenv("VOICEBOT_PORT", "9002")  # env beats the file
    assert load_settings().port == 9002


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VOICEBOT_CONFIG", raising=False)
    monkeypatch.setenv("VOICEBOT_VAD__DEACTIVATION_THRESHOLD", "0.9")
    with pytest.raises(ValidationError, match="deactivation_threshold"):
        load_settings()
    monkeypatch.delenv("VOICEBOT_VAD__DEACTIVATION_THRESHOLD")
    monkeypatch.setenv("VOICEBOT_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match=r"missing\.toml"):
        load_settings()
