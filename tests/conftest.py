"""Shared fixtures: the VAD model (loaded once) and generated speech with known boundaries."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests import audiogen
from voicebot.models.vad import SileroVad


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("espeak-ng") is None:
        raise pytest.UsageError("espeak-ng is required for test audio: run `make test`")


@pytest.fixture(scope="session")
def voice():  # type: ignore[no-untyped-def]
    """Piper with noise off: the same caller speech every run (a human-like test voice)."""
    from voicebot.models.tts.piper import PiperTextToSpeech

    return PiperTextToSpeech(noise_scale=0.0, noise_w_scale=0.0)


@pytest.fixture(scope="session")
def vad_model() -> SileroVad:
    return SileroVad.shared()


@pytest.fixture(scope="session")
def utterances() -> list[np.ndarray]:
    """Four trimmed utterances, different sentences and voices."""
    return [audiogen.trimmed_speech(audiogen.SENTENCES[i], audiogen.VOICES[i]) for i in range(4)]


@pytest.fixture(scope="session")
def conversation(utterances: list[np.ndarray]) -> audiogen.Conversation:
    """~20 s: four utterances with 1.2-2 s pauses, known true segments."""
    return audiogen.compose(utterances, gaps_s=[1.5, 2.0, 1.2])


@pytest.fixture(scope="session")
def postgres_url():  # type: ignore[no-untyped-def]
    """One PostgreSQL server for the session (tests/postgres.py); each user makes its own
    database or cleans its tables."""
    from tests.postgres import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):  # type: ignore[no-untyped-def]
    """The records database of a test: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.db'}"
    from tests.postgres import fresh_database

    return fresh_database(request.getfixturevalue("postgres_url"))
